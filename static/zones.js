// The scheduler's time zone (/api/health's `timezone`), which every time on
// the page is shown in, and the note under the heading that says so.

import {get} from './api.js';
import {$, sameAsViewer, setDisplayZone, viewerZone} from './dom.js';

let schedulerZone = null;

/** The scheduler's zone, null while unknown. */
export function schedulerTimeZone() {
  return schedulerZone;
}

/** Read /api/health: set the zone times show in; resolves to the answer (null if it failed). */
export async function loadHealth() {
  let health = null;
  try {
    health = await get('/api/health');
  } catch {
    return null;
  }
  const zone = typeof health.timezone === 'string' && health.timezone ? health.timezone : null;
  if (zone) {
    try {
      new Intl.DateTimeFormat(undefined, {timeZone: zone});
      schedulerZone = zone;
    } catch {
      schedulerZone = null; // a name this browser does not know: its own times, then
    }
  }
  setDisplayZone(schedulerZone);
  const note = $('zone-note');
  if (note) {
    if (!schedulerZone) note.textContent = `Times in your time zone, ${viewerZone}.`;
    else if (sameAsViewer(schedulerZone)) note.textContent = `Times in ${schedulerZone}, the scheduler's and yours.`;
    else note.textContent = `Times in ${schedulerZone}, the scheduler's time zone (yours: ${viewerZone}).`;
  }
  return health;
}

/** The zone a task's schedule runs in: its own, else the scheduler's. */
export function taskZone(task) {
  return task.timezone || schedulerZone;
}
