// Short notices in the corner: what just happened, with an optional link.
// They stay until dismissed (a link in one must be reachable by keyboard);
// only the newest few are kept, and "Dismiss all" clears them at once.

import {$, h} from './dom.js';

const KEEP = 3;

function notices() {
  return [...$('toasts').querySelectorAll(':scope > .toast')];
}

function refocus() {
  (document.querySelector('.toast:last-of-type .toast-close') || document.querySelector('main > :not([hidden]) h1'))?.focus();
}

function drawDismissAll() {
  const box = $('toasts');
  let all = box.querySelector(':scope > .toast-all');
  if (notices().length < 2) {
    all?.remove();
    return;
  }
  if (!all) {
    all = h('button', {type: 'button', class: 'toast-all'}, 'Dismiss all');
    all.addEventListener('click', () => {
      for (const el of notices()) el.remove();
      all.remove();
      refocus();
    });
    box.prepend(all);
  }
}

export function toast(message, {kind = 'info', link = null} = {}) {
  const close = h('button', {type: 'button', class: 'toast-close', 'aria-label': 'Dismiss'}, '×');
  const el = h('div', {class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : null},
    h('span', {}, message),
    link ? h('a', {href: link[0]}, link[1]) : null,
    close);
  const remove = () => {
    const hadFocus = el.contains(document.activeElement);
    el.remove();
    drawDismissAll();
    if (hadFocus) refocus();
  };
  close.addEventListener('click', remove);
  el.querySelector('a')?.addEventListener('click', () => {
    el.remove();
    drawDismissAll();
  });
  $('toasts').append(el);
  const shown = notices();
  for (const old of shown.slice(0, Math.max(0, shown.length - KEEP))) old.remove();
  drawDismissAll();
}
