// "A job changed", from the live feed or from the answer to a request that
// made or cancelled it: every panel showing jobs hears it the same way.
// app.js registers the panels, in the order they are brought up to date.
//
// Answers and events can arrive out of order (a cancel's reply, "still
// running", can land after the feed's "cancelled"), so each job's newest
// record is kept here and an older one is never passed on: a record with a
// lower `version` loses, and a finished job never goes back to queued or
// running (the only rule left when the server sends no version).

import {isFinal} from './job_status.js';

const listeners = [];
const latest = new Map(); // id -> newest record seen
const KEEP = 5000; // records remembered; the oldest ids are forgotten first

export function onJobChange(listener) {
  listeners.push(listener);
}

/** Is *job* older than a record of it already seen? */
function stale(job, known) {
  if (!known) return false;
  if (Number.isInteger(job.version) && Number.isInteger(known.version)) {
    if (job.version < known.version) return true;
    if (job.version > known.version) return false;
  }
  return isFinal(known.status) && !isFinal(job.status);
}

/**
 * The newest record of *job* seen so far: *job* itself when it is no older
 * than what was seen (and it is remembered), else the newer one seen.
 */
export function newest(job) {
  const known = latest.get(job.id);
  if (stale(job, known)) return known;
  latest.set(job.id, job);
  if (latest.size > KEEP) {
    const ids = [...latest.keys()].sort((a, b) => a - b);
    for (const id of ids.slice(0, latest.size - KEEP)) latest.delete(id);
  }
  return job;
}

/** Tell every panel, unless an equal or newer record was told already. */
export function jobChanged(job) {
  const known = latest.get(job.id);
  if (stale(job, known)) return;
  newest(job);
  for (const listener of listeners) listener(job);
}
