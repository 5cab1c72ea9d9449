// The Jobs panel: the newest jobs, or a page of older ones (before=), by
// status, task and worker, kept current by job changes.  The filters and
// the page live in the address (#/?status=failed&task=3&before=120), so a
// reload or a shared link shows the same list.  Also what the other
// panels say about jobs: a job's "not started yet" text, a task link, and
// the notice after jobs were started.

import {getCounted, query} from './api.js';
import {$, formatDuration, h, show, showError, timeEl, visible} from './dom.js';
import {newest} from './job_events.js';
import {jobStatuses, statusBadge, statusText, statusTitle} from './job_status.js';
import {taskById} from './tasks.js';
import {toast} from './toast.js';

const JOB_LIMIT = 100;
const FILTERS = ['status', 'task', 'worker'];

const jobs = new Map(); // id -> job shown
const jobRows = new Map(); // id -> <tr>
let filters = {status: '', task: '', worker: '', before: ''};
let total = null; // jobs matching the filters in all (X-Total-Count), null: not said
let jobsRequest = 0;

/** The panel's filters and page, as the address gives them (URLSearchParams). */
export function setJobsFilters(params) {
  const next = {status: '', task: '', worker: '', before: ''};
  for (const key of [...FILTERS, 'before']) next[key] = params.get(key) || '';
  if (!/^\d*$/.test(next.task)) next.task = '';
  if (!/^\d*$/.test(next.before)) next.before = '';
  const same = Object.keys(next).every((key) => next[key] === filters[key]);
  filters = next;
  syncControls();
  return !same;
}

/** The dashboard's address for the filters and page shown now. */
export function jobsAddress() {
  return `#/${query(filters)}`;
}

function syncControls() {
  $('jobs-filter').value = filters.status;
  ensureChoice($('jobs-task'), filters.task, (id) => `#${id}`);
  ensureChoice($('jobs-worker'), filters.worker, (name) => name);
}

function ensureChoice(select, value, label) {
  if (value && ![...select.options].some((option) => option.value === value)) {
    select.append(h('option', {value}, label(value)));
  }
  select.value = value;
}

function setFilter(key, value) {
  filters = {...filters, [key]: value, before: ''};
  history.replaceState(null, '', jobsAddress());
  loadJobs();
}

/** The newest jobs whatever the filters, when the panel shows exactly those (else null). */
export function unfilteredJobs() {
  return FILTERS.every((key) => !filters[key]) && !filters.before ? [...jobs.values()] : null;
}

/** Load the panel again. */
export async function loadJobs() {
  const mine = ++jobsRequest;
  const wanted = {...filters};
  try {
    const {data, total: count} = await getCounted(`/api/jobs${query({...wanted, limit: JOB_LIMIT})}`);
    if (mine !== jobsRequest) return;
    total = count;
    setJobs(data.map(newest));
    showError('jobs-error', null);
  } catch (error) {
    if (mine !== jobsRequest) return;
    showError('jobs-error', `Could not load the jobs: ${error.message}`);
  }
}

export function setupJobsFilter() {
  $('jobs-filter').addEventListener('change', (event) => setFilter('status', event.target.value));
  $('jobs-task').addEventListener('change', (event) => setFilter('task', event.target.value));
  $('jobs-worker').addEventListener('change', (event) => setFilter('worker', event.target.value));
  $('jobs-older').addEventListener('click', () => {
    const oldest = Math.min(...jobs.keys());
    filters = {...filters, before: String(oldest)};
    history.replaceState(null, '', jobsAddress());
    loadJobs().then(() => $('jobs-title').scrollIntoView({block: 'start'}));
  });
  $('jobs-newest').addEventListener('click', () => {
    filters = {...filters, before: ''};
    history.replaceState(null, '', jobsAddress());
    loadJobs();
  });
}

let statusChoices = false;

/** The filter's choices: every status the scheduler has, once. */
export async function loadStatusChoices() {
  if (statusChoices) return;
  const statuses = await jobStatuses();
  const select = $('jobs-filter');
  select.append(...statuses.filter((status) => ![...select.options].some((o) => o.value === status))
    .map((status) => h('option', {value: status}, statusTitle(status))));
  select.value = filters.status;
  statusChoices = true;
}

/** The Task filter's choices: every task (and the one chosen, if gone). */
let taskNames = '';

export function renderTaskChoices(tasks) {
  const names = JSON.stringify(tasks.map((task) => [task.id, task.jobName]));
  if (names === taskNames) return; // a next run moved on: nothing to redraw here
  taskNames = names;
  const select = $('jobs-task');
  select.replaceChildren(h('option', {value: ''}, 'All'),
    ...tasks.map((task) => h('option', {value: String(task.id)}, `${visible(task.jobName)} (#${task.id})`)));
  ensureChoice(select, filters.task, (id) => `#${id}`);
  redrawRows();
}

/** The Worker filter's choices: the workers online (and the one chosen). */
export function renderWorkerChoices(names) {
  const select = $('jobs-worker');
  select.replaceChildren(h('option', {value: ''}, 'All'),
    ...names.map((name) => h('option', {value: name}, visible(name))));
  ensureChoice(select, filters.worker, (name) => name);
}

function setJobs(list) {
  jobs.clear();
  jobRows.clear();
  const rows = [];
  for (const job of [...list].sort((a, b) => b.id - a.id).slice(0, JOB_LIMIT)) {
    const row = jobRow(job);
    jobs.set(job.id, job);
    jobRows.set(job.id, row);
    rows.push(row);
  }
  $('jobs-body').replaceChildren(...rows);
  renderJobsFoot();
}

/** Task names may arrive after the jobs: draw the rows again. */
function redrawRows() {
  for (const [id, job] of jobs) {
    const row = jobRow(job);
    jobRows.get(id).replaceWith(row);
    jobRows.set(id, row);
  }
}

function renderJobsFoot() {
  const count = jobs.size;
  show($('jobs-table'), count > 0);
  show($('jobs-empty'), count === 0);
  const what = [filters.status && statusText(filters.status), 'jobs'].filter(Boolean).join(' ');
  const scope = [filters.task && `of task #${filters.task}`, filters.worker && `on ${filters.worker}`]
    .filter(Boolean).join(' ');
  $('jobs-empty').textContent = filters.before
    ? `No ${what} older than #${filters.before}.`
    : (FILTERS.some((key) => filters[key]) ? `No ${what} ${scope}.`.replace(' .', '.') : 'No jobs yet. Run a command or add a task.');
  const of = total === null ? '' : ` of ${total.toLocaleString()}`;
  let shown = '';
  if (count) {
    shown = filters.before
      ? `Showing ${count} ${count === 1 ? 'job' : 'jobs'} older than #${filters.before}${of}.`
      : `Showing ${count === JOB_LIMIT || total !== null ? `${count} newest` : `all ${count}`}${of}.`;
  }
  $('jobs-shown').textContent = shown;
  show($('jobs-newest'), Boolean(filters.before));
  const more = total === null ? count >= JOB_LIMIT : count > 0 && olderCount() > 0;
  show($('jobs-older'), more);
}

function olderCount() {
  // Without before=, the jobs not shown are all older; with it, the total
  // counts every match, so the older ones are unknown: offer the button
  // while a full page came back.
  if (!filters.before) return total - jobs.size;
  return jobs.size >= JOB_LIMIT ? 1 : 0;
}

function matchesFilters(job) {
  if (filters.status && job.status !== filters.status) return false;
  if (filters.task && String(job.taskId) !== filters.task) return false;
  if (filters.worker && job.worker !== filters.worker) return false;
  return true;
}

/** A job changed: show, move or drop its row. */
export function showJob(job) {
  const old = jobRows.get(job.id);
  const matching = matchesFilters(job);
  if (matching && old) {
    const row = jobRow(job);
    jobs.set(job.id, job);
    jobRows.set(job.id, row);
    old.replaceWith(row);
  } else if (matching && !filters.before) {
    // A job new to this list: only the first page takes it.
    const row = jobRow(job);
    const body = $('jobs-body');
    const next = [...body.children].find((tr) => Number(tr.dataset.id) < job.id) || null;
    if (!next && jobs.size >= JOB_LIMIT) return; // older than every row shown
    jobs.set(job.id, job);
    jobRows.set(job.id, row);
    body.insertBefore(row, next);
    if (total !== null && !(filters.status)) total += 1;
    while (body.children.length > JOB_LIMIT) {
      const last = body.lastElementChild;
      jobs.delete(Number(last.dataset.id));
      jobRows.delete(Number(last.dataset.id));
      last.remove();
    }
  } else if (!matching && old) {
    old.remove();
    jobs.delete(job.id);
    jobRows.delete(job.id);
  } else {
    return;
  }
  renderJobsFoot();
}

// What the Started column says before a job has started: queued, or sent
// to its worker, which starts a cron job on its second (up to 50 ms later).
export function notStarted(status, queuedText) {
  if (status === 'queued') return queuedText;
  return status === 'running' ? 'starting' : '—';
}

/** A link to the job's task ("backup #3"), or "ad hoc" for a command run now. */
export function taskLink(taskId) {
  if (taskId === null || taskId === undefined) return h('span', {class: 'muted'}, 'ad hoc');
  const task = taskById(taskId);
  return h('a', {href: `#/tasks/${taskId}`}, task ? visible(task.jobName) : `task #${taskId}`);
}

function jobRow(job) {
  const row = h('tr', {class: 'job-row', 'data-id': job.id, 'data-status': job.status},
    h('td', {'data-label': 'Job'}, h('a', {href: `#/jobs/${job.id}`}, `#${job.id}`)),
    h('td', {'data-label': 'Status'}, statusBadge(job.status)),
    h('td', {'data-label': 'Task', class: 'task-col'}, taskLink(job.taskId)),
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

/** Draw every row again (the time zone the times show in changed). */
export function redrawJobs() {
  redrawRows();
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
