// The top of the dashboard: what runs now (with its worker, how long it
// has run, and Cancel) and the recent failures, kept current by job changes.

import {get, query} from './api.js';
import {$, h, show, timeEl, visible} from './dom.js';
import {newest} from './job_events.js';
import {isFinal, statusBadge} from './job_status.js';
import {cancelButton} from './job_cancel.js';
import {startClocks} from './elapsed.js';
import {taskLink} from './jobs.js';

const FAILURES = 5; // rows in Recent failures
const ACTIVE_LIMIT = 100;
// A finished job that did not succeed and was not cancelled by someone; a
// missed record is a time that never ran, not a run that failed.
const NOT_FAILURES = new Set(['succeeded', 'cancelled', 'missed']);

const active = new Map(); // id -> job queued or running
let failures = []; // newest first

export function isFailure(job) {
  return isFinal(job.status) && !NOT_FAILURES.has(job.status);
}

/** Load both panels; *recentJobs* (a promise of the newest jobs) gives the failures. */
export async function loadJobsNow(recentJobs) {
  const lists = await Promise.allSettled([
    get(`/api/jobs${query({status: 'running', limit: ACTIVE_LIMIT})}`),
    get(`/api/jobs${query({status: 'queued', limit: ACTIVE_LIMIT})}`),
    recentJobs,
  ]);
  const [running, queued, recent] = lists.map((result) => (result.status === 'fulfilled' ? result.value || [] : null));
  if (running && queued) {
    active.clear();
    for (const job of [...running, ...queued].map(newest)) if (!isFinal(job.status)) active.set(job.id, job);
    renderRunning();
  } else {
    $('running-empty').textContent = 'Could not load the jobs running now.';
  }
  if (recent) {
    failures = recent.map(newest).filter(isFailure).sort((a, b) => b.id - a.id).slice(0, FAILURES);
    renderFailures();
  }
}

/** A job changed: it starts or stops running, or is a new failure. */
export function showJobNow(job) {
  const was = active.has(job.id);
  if (!isFinal(job.status)) {
    active.set(job.id, job);
    renderRunning();
  } else if (was) {
    active.delete(job.id);
    renderRunning();
  }
  if (isFailure(job) && !failures.some((f) => f.id === job.id)) {
    failures = [job, ...failures].sort((a, b) => b.id - a.id).slice(0, FAILURES);
    renderFailures();
  }
}

function what(job) {
  return h('div', {class: 'what'},
    job.taskId !== null && job.taskId !== undefined ? [taskLink(job.taskId), ' '] : null,
    h('code', {title: visible(job.command)}, visible(job.command)));
}

function renderRunning() {
  const jobs = [...active.values()].sort((a, b) => a.id - b.id);
  const body = $('running-body');
  const focused = body.contains(document.activeElement) ? document.activeElement.closest('tr')?.dataset.id : null;
  body.replaceChildren(...jobs.map((job) => h('tr', {class: 'job-row', 'data-id': job.id, 'data-status': job.status},
    h('td', {}, h('a', {href: `#/jobs/${job.id}`}, `#${job.id}`)),
    h('td', {class: 'cmd'}, what(job)),
    h('td', {}, job.worker ? visible(job.worker) : h('span', {class: 'muted'}, '—')),
    h('td', {class: 'num'}, job.status === 'queued'
      ? statusBadge('queued')
      : (job.startedAt ? h('span', {class: 'elapsed', 'data-since': job.startedAt}) : h('span', {class: 'muted'}, 'starting'))),
    h('td', {class: 'actions-cell'}, cancelButton(job, {compact: true})))));
  if (focused) body.querySelector(`tr[data-id="${focused}"] button`)?.focus();
  $('running-count').textContent = jobs.length ? String(jobs.length) : '';
  show($('running-table'), jobs.length > 0);
  show($('running-empty'), jobs.length === 0);
  $('running-empty').textContent = 'Nothing is running.';
  startClocks();
}

function renderFailures() {
  $('failures-body').replaceChildren(...failures.map((job) => h('tr', {class: 'job-row', 'data-id': job.id, 'data-status': job.status},
    h('td', {}, h('a', {href: `#/jobs/${job.id}`}, `#${job.id}`)),
    h('td', {class: 'cmd'}, what(job)),
    h('td', {}, statusBadge(job.status)),
    h('td', {}, timeEl(job.finishedAt || job.createdAt)))));
  $('failures-count').textContent = '';
  show($('failures-table'), failures.length > 0);
  show($('failures-empty'), failures.length === 0);
  $('failures-empty').textContent = 'No failures among the recent jobs.';
}

/** Draw again (the time zone the times show in changed). */
export function redrawJobsNow() {
  renderRunning();
  renderFailures();
}
