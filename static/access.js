// What the token (or the person a proxy names) may do, from GET /api/me, so
// the page hides what it cannot: running and cancelling need "run", task
// changes "write", the maintenance switch and the channels "admin".
// Elements say what they need with data-needs="<scope>"; style.css hides
// them once body[data-can] is set and lacks it, so a control drawn later
// (a table row, a task's page) needs no call here.  Until /api/me answers
// nothing is hidden, and the server refuses anything beyond the scopes
// (403) whatever the page shows.  The header says who is signed in.

import {get} from './api.js';
import {$, h, visible} from './dom.js';

let me = null;

/** Ask the scheduler who this is; on failure show everything (the server still decides). */
export async function loadAccess() {
  try {
    me = await get('/api/me');
  } catch {
    me = null;
  }
  if (me && Array.isArray(me.scopes)) document.body.dataset.can = me.scopes.join(' ');
  else delete document.body.dataset.can;
  const who = $('who');
  const name = me && me.name ? visible(me.name) : '';
  who.replaceChildren(...(name ? [h('span', {class: 'visually-hidden'}, 'Signed in as '), name,
    h('span', {class: 'who-scopes'}, ` · ${me.scopes.join(', ')}`)] : []));
  who.title = name ? `Signed in as ${name}${me.person ? ' (through the proxy)' : ''}; may ${me.scopes.join(', ')}` : '';
  who.hidden = !name;
}

/** May this page do what *scope* allows, as far as it knows? */
export function can(scope) {
  return !me || !Array.isArray(me.scopes) || me.scopes.includes(scope);
}
