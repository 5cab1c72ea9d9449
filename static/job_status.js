// Job statuses as the page shows them, derived from the status string
// itself so that a status added to JobStatus (scheduler/jobs.py) needs no
// change here: its label is its name ("timed_out" reads "timed out"), its
// badge is styled by [data-status] in style.css (neutral until it gets a
// colour there), and the Jobs filter lists it from the API's own contract.

import {get} from './api.js';
import {h} from './dom.js';

// A status whose name does not read well with spaces for underscores.
const LABELS = {};

// As JobStatus.final: every status but these two is a finished job's.
const ACTIVE = new Set(['queued', 'running']);

export function isFinal(status) {
  return !ACTIVE.has(status);
}

/** "timed_out" → "timed out". */
export function statusText(status) {
  return LABELS[status] || String(status).replaceAll('_', ' ');
}

/** "timed_out" → "Timed out", for a list of choices. */
export function statusTitle(status) {
  const text = statusText(status);
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function statusBadge(status, attrs = {}) {
  return h('span', {...attrs, class: 'badge', 'data-status': status}, statusText(status));
}

let known = null;

/** Every job status, in JobStatus order, from /api/openapi.json (read once). */
export async function jobStatuses() {
  if (!known) {
    const contract = await get('/api/openapi.json');
    known = contract.components.schemas.Job.properties.status.enum;
  }
  return known;
}
