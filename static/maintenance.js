// The global maintenance switch: while it is on no scheduled run starts
// (running jobs finish).  A banner under the header says so, with since
// when and by whom; the Tasks panel has the switch.  The live feed's
// maintenance events keep it current; it is also read at each (re)connect,
// when the tab comes back into view, and after each change.

import {get, post} from './api.js';
import {$, h, show, timeEl, visible} from './dom.js';
import {toast} from './toast.js';

let state = null;

export async function loadMaintenance() {
  try {
    render(await get('/api/maintenance'));
  } catch (error) {
    $('maintenance-state').textContent = `maintenance: unknown (${error.message})`;
  }
}

/** A maintenance event from the live feed (another tab or client switched it). */
export function maintenanceChanged(next) {
  render(next);
}

export function setupMaintenance() {
  $('maintenance-toggle').addEventListener('click', () => turn(!(state && state.on)));
  $('maintenance-off').addEventListener('click', () => turn(false));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') loadMaintenance();
  });
}

async function turn(on) {
  const buttons = [$('maintenance-toggle'), $('maintenance-off')];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    render(await post('/api/maintenance', {on}));
    toast(on ? 'Maintenance is on: no new runs start; running jobs finish.' : 'Maintenance is off: tasks run again.');
  } catch (error) {
    toast(`Could not turn maintenance ${on ? 'on' : 'off'}: ${error.message}`, {kind: 'error'});
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function render(next) {
  state = next;
  const on = Boolean(next.on);
  document.body.dataset.maintenance = on ? 'on' : 'off';
  show($('maintenance-banner'), on);
  $('maintenance-detail').replaceChildren(...(on ? [
    next.since ? h('span', {}, '· since ', timeEl(next.since)) : null,
    next.by ? h('span', {}, ` · by ${visible(next.by)}`) : null,
  ].filter(Boolean) : []));
  const toggle = $('maintenance-toggle');
  toggle.setAttribute('aria-pressed', on ? 'true' : 'false');
  toggle.textContent = on ? 'End maintenance' : 'Start maintenance';
  toggle.title = on
    ? 'Let scheduled runs start again'
    : 'Stop all scheduled runs from starting (running jobs finish)';
  $('maintenance-state').textContent = on ? 'Maintenance on' : '';
}
