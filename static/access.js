// What the token (or the person a proxy names) may do, from GET /api/me, so
// the page hides what it cannot: run buttons need "run", task changes
// "write", the maintenance switch "admin".  Elements say what they need
// with data-needs="<scope>"; style.css hides them once body[data-can] is set
// and lacks it.  Until /api/me answers nothing is hidden, and the server
// refuses anything beyond the scopes (403) whatever the page shows.

import {get} from './api.js';

const ALL = ['read', 'run', 'write', 'admin'];

let me = null;

/** Ask the scheduler who this is; on failure show everything (the server still decides). */
export async function loadAccess() {
  try {
    me = await get('/api/me');
  } catch {
    me = null;
  }
  const scopes = me ? me.scopes : ALL;
  document.body.dataset.can = scopes.join(' ');
  const who = document.getElementById('who');
  if (who) {
    who.textContent = me && me.name ? `${me.name} · ${scopes.join(', ')}` : '';
    who.hidden = !(me && me.name);
  }
}

/** May this page do what *scope* allows, as far as it knows? */
export function can(scope) {
  return !me || me.scopes.includes(scope);
}
