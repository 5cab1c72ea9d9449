// Short notices in the corner: what just happened, with an optional link.

import {$, h} from './dom.js';

export function toast(message, {kind = 'info', link = null} = {}) {
  const close = h('button', {type: 'button', class: 'toast-close', 'aria-label': 'Dismiss'}, '×');
  const el = h('div', {class: `toast toast-${kind}`},
    h('span', {}, message),
    link ? h('a', {href: link[0]}, link[1]) : null,
    close);
  const remove = () => el.remove();
  close.addEventListener('click', remove);
  el.querySelector('a')?.addEventListener('click', remove);
  $('toasts').append(el);
  setTimeout(remove, kind === 'error' ? 10000 : 6000);
}
