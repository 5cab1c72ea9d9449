// Short notices in the corner: what just happened, with an optional link.
// They stay until dismissed (a link in one must be reachable by keyboard);
// only the newest few are kept.

import {$, h} from './dom.js';

const KEEP = 4;

export function toast(message, {kind = 'info', link = null} = {}) {
  const close = h('button', {type: 'button', class: 'toast-close', 'aria-label': 'Dismiss'}, '×');
  const el = h('div', {class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : null},
    h('span', {}, message),
    link ? h('a', {href: link[0]}, link[1]) : null,
    close);
  const remove = () => {
    const hadFocus = el.contains(document.activeElement);
    el.remove();
    if (hadFocus) (document.querySelector('.toast:last-child .toast-close') || document.querySelector('main h1:not([hidden])'))?.focus();
  };
  close.addEventListener('click', remove);
  el.querySelector('a')?.addEventListener('click', () => el.remove());
  const box = $('toasts');
  box.append(el);
  while (box.children.length > KEEP) box.firstElementChild.remove();
}
