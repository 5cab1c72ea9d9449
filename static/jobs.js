// The Jobs panel: the newest jobs, filtered by status, kept current by job
// changes.  Also what the other panels say about jobs: a job's "not started
// yet" text and the notice after jobs were started.

import {get, query} from './api.js';
import {$, clear, formatDuration, h, show, showError, timeEl, visible} from './dom.js';
import {jobStatuses, statusBadge, statusText, statusTitle} from './job_status.js';
import {toast} from './toast.js';

const JOB_LIMIT = 100;

const jobs = new Map(); // id -> job shown
const jobRows = new Map(); // id -> <tr>
let filter = '';
let jobsRequest = 0;

/**
 * Load the panel again.  Resolves to the jobs read when no filter is set
 * (the newest of every kind, which the task list reuses), else to [].
 */
export async function loadJobs() {
  const chosen = filter;
  const mine = ++jobsRequest;
  try {
    const newest = await get(`/api/jobs${query({status: chosen, limit: JOB_LIMIT})}`);
    if (mine === jobsRequest) setJobs(newest);
    showError('jobs-error', null);
    return chosen ? [] : newest;
  } catch (error) {
    showError('jobs-error', `Could not load the jobs: ${error.message}`);
    return [];
  }
}

export function setupJobsFilter() {
  $('jobs-filter').addEventListener('change', (event) => {
    filter = event.target.value;
    loadJobs();
  });
}

let statusChoices = false;

/** The filter's choices: every status the scheduler has, once. */
export async function loadStatusChoices() {
  if (statusChoices) return;
  const statuses = await jobStatuses();
  $('jobs-filter').append(...statuses.map((status) => h('option', {value: status}, statusTitle(status))));
  statusChoices = true;
}

function setJobs(list) {
  jobs.clear();
  jobRows.clear();
  const body = clear($('jobs-body'));
  for (const job of [...list].sort((a, b) => b.id - a.id).slice(0, JOB_LIMIT)) {
    const row = jobRow(job);
    jobs.set(job.id, job);
    jobRows.set(job.id, row);
    body.append(row);
  }
  renderJobsEmpty();
}

function renderJobsEmpty() {
  const empty = jobs.size === 0;
  show($('jobs-table'), !empty);
  show($('jobs-empty'), empty);
  $('jobs-empty').textContent = filter
    ? `No ${statusText(filter)} jobs.`
    : 'No jobs yet. Run a command or add a task.';
}

/** A job changed: show, move or drop its row. */
export function showJob(job) {
  const matches = !filter || job.status === filter;
  const old = jobRows.get(job.id);
  if (matches) {
    const row = jobRow(job);
    jobs.set(job.id, job);
    jobRows.set(job.id, row);
    if (old) {
      old.replaceWith(row);
    } else {
      const body = $('jobs-body');
      const next = [...body.children].find((tr) => Number(tr.dataset.id) < job.id) || null;
      body.insertBefore(row, next);
      while (body.children.length > JOB_LIMIT) {
        const last = body.lastElementChild;
        jobs.delete(Number(last.dataset.id));
        jobRows.delete(Number(last.dataset.id));
        last.remove();
      }
    }
  } else if (old) {
    old.remove();
    jobs.delete(job.id);
    jobRows.delete(job.id);
  }
  renderJobsEmpty();
}

// What the Started column says before a job has started: queued, or sent
// to its worker, which starts a cron job on its second (up to 50 ms later).
export function notStarted(status, queuedText) {
  if (status === 'queued') return queuedText;
  return status === 'running' ? 'starting' : '—';
}

function jobRow(job) {
  const row = h('tr', {class: 'job-row', 'data-id': job.id, 'data-status': job.status},
    h('td', {'data-label': 'Job'}, h('a', {href: `#/jobs/${job.id}`, 'aria-label': `Job ${job.id}`}, `#${job.id}`)),
    h('td', {'data-label': 'Status'}, statusBadge(job.status)),
    h('td', {'data-label': 'Command', class: 'cmd'}, h('code', {title: visible(job.command)}, visible(job.command))),
    h('td', {'data-label': 'Worker'}, job.worker ? visible(job.worker) : h('span', {class: 'muted'}, '—')),
    h('td', {'data-label': 'Duration', class: 'num'}, formatDuration(job.duration)),
    h('td', {'data-label': 'Started'}, timeEl(job.startedAt, notStarted(job.status, 'waiting'))));
  row.addEventListener('click', (event) => {
    if (event.target.closest('a')) return;
    location.hash = `#/jobs/${job.id}`;
  });
  return row;
}

/** The notice after a request started *jobs* (one per worker for target all). */
export function announceJobs(started, what) {
  if (!started.length) {
    toast(`No workers are online, so ${what} did not run anywhere.`, {kind: 'error'});
  } else if (started.length === 1) {
    toast(`Job #${started[0].id} (${what}) is ${started[0].status}.`, {link: [`#/jobs/${started[0].id}`, 'Open']});
  } else {
    toast(`Started ${started.length} jobs for ${what}: ${started.map((j) => `#${j.id}`).join(', ')}.`);
  }
}
