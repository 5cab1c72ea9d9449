// The dashboard: workers, tasks, jobs, a run-now form and a job page with
// live output.  One live-feed connection keeps it all current; the panels
// are loaded in full only at start and after each (re)connect.
//
// Data only ever reaches the page through textContent / text nodes /
// attribute values (see dom.js): a command like <img src=x onerror=...>
// shows as text.  Commands, names and labels go through visible() first,
// so control and bidi characters show as escapes instead of reordering or
// hiding what the operator reads.

import {ApiError, del, get, post, query, request, setTokenPrompt} from './api.js';
import {FINAL, clear, debounce, formatDuration, h, show, statusBadge, timeEl, visible} from './dom.js';
import {Feed} from './feed.js';

const JOB_LIMIT = 100;
const OUTPUT_CAP = 2_000_000; // characters kept in the output box

const $ = (id) => document.getElementById(id);

const state = {
  workers: [],
  tasks: new Map(), // id -> task
  taskRows: new Map(), // id -> <li>
  lastResult: new Map(), // task id -> newest job of that task
  jobs: new Map(), // id -> job shown in the Jobs panel
  jobRows: new Map(), // id -> <tr>
  filter: '',
  loadedOnce: false,
  recording: null, // events seen while a full load is in flight
  view: {name: 'dashboard'},
};

// =============================================================================
// Live feed
// =============================================================================

const feed = new Feed({
  onEvent: (name, data) => {
    if (state.recording && name !== 'output') state.recording.push([name, data]);
    applyEvent(name, data);
  },
  onOpen: () => {
    setConnection('live', 'Live');
    show($('banner'), false);
    refreshVisible();
  },
  onDown: ({reason, delay}) => {
    const needsToken = reason && /token/.test(String(reason.message));
    setConnection('down', needsToken ? 'Token needed' : 'Reconnecting…');
    $('banner-detail').textContent = needsToken
      ? 'An API token is needed: reload the page to enter it.'
      : `Trying again in ${Math.round(delay / 1000)} s.`;
    show($('banner'), true);
    if (jobView.view) setOutputState();
    if (!state.loadedOnce) refreshVisible();
  },
});

function applyEvent(name, data) {
  switch (name) {
    case 'task':
      if (data.change === 'removed') removeTask(data.task.id);
      else upsertTask(data.task);
      break;
    case 'job':
      onJob(data);
      break;
    case 'worker':
      refreshWorkersSoon();
      break;
    case 'output':
      onOutput(data);
      break;
    default:
      break;
  }
}

function setConnection(kind, text) {
  $('conn').dataset.state = kind;
  $('conn-text').textContent = text;
}

function refreshVisible() {
  loadAll();
  if (state.view.name === 'job') loadJobView();
}

// =============================================================================
// Full loads
// =============================================================================

let loading = null;
let loadAgain = false;

function loadAll() {
  if (loading) {
    loadAgain = true;
    return loading;
  }
  loading = (async () => {
    do {
      loadAgain = false;
      state.recording = [];
      await Promise.allSettled([loadWorkers(), loadTasksAndJobs()]);
      const recorded = state.recording;
      state.recording = null;
      // Events that raced the snapshot are newer than it: apply them again.
      for (const [name, data] of recorded) applyEvent(name, data);
      state.loadedOnce = true;
    } while (loadAgain);
  })().finally(() => {
    loading = null;
  });
  return loading;
}

function panelError(panel, error) {
  const el = $(`${panel}-error`);
  el.textContent = error ? `Could not load the ${panel}: ${error.message}` : '';
  show(el, Boolean(error));
}

// =============================================================================
// Workers
// =============================================================================

async function loadWorkers() {
  try {
    state.workers = await get('/api/workers');
    panelError('workers', null);
  } catch (error) {
    panelError('workers', error);
    return;
  }
  renderWorkers();
}

const refreshWorkersSoon = debounce(loadWorkers, 250);

function renderWorkers() {
  const list = clear($('workers-list'));
  $('workers-count').textContent = String(state.workers.length);
  if (!state.workers.length) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    list.append(h('li', {class: 'empty'},
      'No workers online. Start one with:',
      h('code', {class: 'block'}, `twistd -n worker --url ${scheme}://${location.host}/ws/worker`)));
  }
  for (const worker of state.workers) {
    const busy = Math.min(worker.running, worker.slots);
    const bar = h('span', {class: 'slot-fill'});
    bar.style.width = `${worker.slots ? (100 * busy) / worker.slots : 0}%`;
    list.append(h('li', {class: 'worker', 'data-name': worker.name},
      h('div', {class: 'worker-top'},
        h('span', {class: 'worker-name'}, visible(worker.name)),
        h('span', {class: 'worker-slots', title: 'jobs running / slots'},
          `${worker.running}/${worker.slots} slots in use`)),
      h('div', {
        class: 'slot-bar', role: 'meter', 'aria-label': `${worker.name} slots in use`,
        'aria-valuemin': 0, 'aria-valuemax': worker.slots, 'aria-valuenow': worker.running,
      }, bar),
      worker.labels.length
        ? h('div', {class: 'labels'}, worker.labels.map((label) => h('span', {class: 'chip'}, visible(label))))
        : null,
      h('div', {class: 'muted small'}, 'connected since ', timeEl(worker.connectedAt))));
  }
  renderTargetChoices();
}

/** Fill every target <select> from the workers list, keeping the choice. */
function renderTargetChoices() {
  const names = state.workers.map((w) => w.name);
  const labels = [...new Set(state.workers.flatMap((w) => w.labels))].sort();
  for (const select of document.querySelectorAll('select.target-select')) {
    const chosen = select.value || 'any';
    const options = [
      h('option', {value: 'any'}, 'Any worker'),
      h('option', {value: 'all'}, 'All workers'),
    ];
    if (names.length) {
      options.push(h('optgroup', {label: 'Worker'},
        names.map((name) => h('option', {value: `worker:${name}`}, name))));
    }
    if (labels.length) {
      options.push(h('optgroup', {label: 'Label'},
        labels.map((label) => h('option', {value: `label:${label}`}, `label: ${label}`))));
    }
    const values = ['any', 'all', ...names.map((n) => `worker:${n}`), ...labels.map((l) => `label:${l}`)];
    if (!values.includes(chosen)) {
      // A worker that went away: keep the choice rather than change it silently.
      options.push(h('option', {value: chosen}, `${chosen} (offline)`));
    }
    select.replaceChildren(...options);
    select.value = chosen;
  }
}

// =============================================================================
// Tasks and jobs
// =============================================================================

let jobsRequest = 0;

async function loadTasksAndJobs() {
  const filter = state.filter;
  const mine = ++jobsRequest;
  const [tasks, jobs] = await Promise.allSettled([
    get('/api/tasks'),
    get(`/api/jobs${query({status: filter, limit: JOB_LIMIT})}`),
  ]);
  if (jobs.status === 'fulfilled') {
    if (mine === jobsRequest) setJobs(jobs.value);
    panelError('jobs', null);
  } else {
    panelError('jobs', jobs.reason);
  }
  if (tasks.status === 'fulfilled') {
    await loadLastResults(tasks.value, !filter && jobs.status === 'fulfilled' ? jobs.value : []);
    setTasks(tasks.value);
    panelError('tasks', null);
  } else {
    panelError('tasks', tasks.reason);
  }
}

async function loadJobs() {
  const filter = state.filter;
  const mine = ++jobsRequest;
  try {
    const jobs = await get(`/api/jobs${query({status: filter, limit: JOB_LIMIT})}`);
    if (mine === jobsRequest) setJobs(jobs);
    panelError('jobs', null);
  } catch (error) {
    panelError('jobs', error);
  }
}

/** The newest job of each task: from *known* jobs, else one query per task. */
async function loadLastResults(tasks, known) {
  const newest = new Map();
  for (const job of known) {
    if (job.taskId !== null && !(newest.get(job.taskId)?.id > job.id)) newest.set(job.taskId, job);
  }
  await Promise.all(tasks.map(async (task) => {
    if (newest.has(task.id)) return;
    try {
      const [job] = await get(`/api/jobs${query({task: task.id, limit: 1})}`);
      if (job) newest.set(task.id, job);
    } catch {
      // Leave it unknown; the next job event fills it in.
    }
  }));
  for (const [taskId, job] of newest) rememberResult(taskId, job);
}

function rememberResult(taskId, job) {
  const before = state.lastResult.get(taskId);
  if (before && before.id > job.id) return false;
  state.lastResult.set(taskId, job);
  return true;
}

// -- tasks ------------------------------------------------------------------------

function setTasks(tasks) {
  state.tasks.clear();
  state.taskRows.clear();
  clear($('tasks-list'));
  for (const task of tasks) upsertTask(task);
  renderTasksEmpty();
}

function renderTasksEmpty() {
  const list = $('tasks-list');
  list.querySelector(':scope > .empty')?.remove();
  $('tasks-count').textContent = String(state.tasks.size);
  if (!state.tasks.size) list.append(h('li', {class: 'empty'}, 'No tasks yet. Add one below.'));
}

function upsertTask(task) {
  state.tasks.set(task.id, task);
  const row = taskRow(task);
  const old = state.taskRows.get(task.id);
  state.taskRows.set(task.id, row);
  if (old) {
    old.replaceWith(row);
  } else {
    const list = $('tasks-list');
    const after = [...state.taskRows.keys()].filter((id) => id > task.id && id !== task.id)
      .sort((a, b) => a - b)[0];
    const next = after === undefined ? null : state.taskRows.get(after);
    list.insertBefore(row, next && next.isConnected ? next : null);
  }
  renderTasksEmpty();
}

function removeTask(id) {
  state.tasks.delete(id);
  state.taskRows.get(id)?.remove();
  state.taskRows.delete(id);
  renderTasksEmpty();
}

function taskRow(task) {
  const actions = h('div', {class: 'task-actions'});
  const row = h('li', {class: 'task', 'data-id': task.id},
    h('div', {class: 'task-main'},
      h('div', {class: 'task-title'},
        h('span', {class: 'task-name'}, visible(task.jobName)),
        h('span', {class: 'muted small'}, ` #${task.id}`),
        task.target && task.target !== 'any' ? h('span', {class: 'chip'}, visible(task.target)) : null),
      h('code', {class: 'task-command', title: visible(task.command)}, visible(task.command)),
      h('div', {class: 'task-schedule'},
        h('code', {class: 'cron'}, task.schedule),
        h('span', {class: 'task-desc'}, task.description || '')),
      h('dl', {class: 'task-meta'},
        h('div', {}, h('dt', {}, 'Next run'), h('dd', {class: 'next-run'}, timeEl(task.nextRun, 'not scheduled'))),
        h('div', {}, h('dt', {}, 'Last result'), h('dd', {class: 'last-result'}, lastResultEl(task.id))))),
    actions);
  renderTaskActions(task, actions);
  return row;
}

function lastResultEl(taskId) {
  const job = state.lastResult.get(taskId);
  if (!job) return h('span', {class: 'muted'}, 'not run yet');
  return h('a', {href: `#/jobs/${job.id}`, class: 'result-link'},
    statusBadge(job.status), ' ',
    h('span', {class: 'muted small'}, `#${job.id} `),
    timeEl(job.finishedAt || job.startedAt || job.createdAt, ''));
}

function renderTaskActions(task, actions) {
  const run = h('button', {type: 'button', 'aria-label': `Run ${task.jobName} now`}, 'Run now');
  const remove = h('button', {type: 'button', class: 'danger-quiet', 'aria-label': `Delete ${task.jobName}`}, 'Delete');
  run.addEventListener('click', async () => {
    run.disabled = true;
    try {
      const result = await post(`/api/tasks/${task.id}/run`);
      const jobs = Array.isArray(result) ? result : [result];
      jobs.forEach(onJob);
      announceJobs(jobs, `${task.jobName}`);
    } catch (error) {
      toast(`Could not run ${task.jobName}: ${error.message}`, {kind: 'error'});
    } finally {
      run.disabled = false;
    }
  });
  remove.addEventListener('click', () => {
    const yes = h('button', {type: 'button', class: 'danger'}, 'Delete');
    const no = h('button', {type: 'button'}, 'Cancel');
    const question = h('div', {class: 'confirm', role: 'group', 'aria-label': `Confirm deleting ${task.jobName}`},
      h('span', {}, `Delete ${task.jobName}?`), yes, no);
    actions.replaceChildren(question);
    no.addEventListener('click', () => {
      renderTaskActions(task, actions);
      actions.querySelector('button')?.focus();
    });
    yes.addEventListener('click', async () => {
      yes.disabled = no.disabled = true;
      try {
        await del(`/api/tasks/${task.id}`);
        removeTask(task.id);
        toast(`Deleted ${task.jobName}.`);
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) removeTask(task.id);
        else {
          toast(`Could not delete ${task.jobName}: ${error.message}`, {kind: 'error'});
          renderTaskActions(task, actions);
        }
      }
    });
    no.focus();
  });
  actions.replaceChildren(run, remove);
}

// A task fired: its next run moved on.  Fetch that one task again.
const taskRefreshers = new Map();

function refreshTaskSoon(id) {
  if (!taskRefreshers.has(id)) {
    taskRefreshers.set(id, debounce(async () => {
      taskRefreshers.delete(id);
      try {
        upsertTask(await get(`/api/tasks/${id}`));
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) removeTask(id);
      }
    }, 500));
  }
  taskRefreshers.get(id)();
}

// -- jobs -------------------------------------------------------------------------

function setJobs(jobs) {
  state.jobs.clear();
  state.jobRows.clear();
  const body = clear($('jobs-body'));
  for (const job of [...jobs].sort((a, b) => b.id - a.id).slice(0, JOB_LIMIT)) {
    const row = jobRow(job);
    state.jobs.set(job.id, job);
    state.jobRows.set(job.id, row);
    body.append(row);
  }
  renderJobsEmpty();
}

function renderJobsEmpty() {
  const empty = state.jobs.size === 0;
  show($('jobs-table'), !empty);
  show($('jobs-empty'), empty);
  $('jobs-empty').textContent = state.filter
    ? `No ${state.filter.replace('_', ' ')} jobs.`
    : 'No jobs yet. Run a command or add a task.';
}

function onJob(job) {
  // The Jobs panel.
  const matches = !state.filter || job.status === state.filter;
  const old = state.jobRows.get(job.id);
  if (matches) {
    const row = jobRow(job);
    state.jobs.set(job.id, job);
    state.jobRows.set(job.id, row);
    if (old) {
      old.replaceWith(row);
    } else {
      const body = $('jobs-body');
      const next = [...body.children].find((tr) => Number(tr.dataset.id) < job.id) || null;
      body.insertBefore(row, next);
      while (body.children.length > JOB_LIMIT) {
        const last = body.lastElementChild;
        state.jobs.delete(Number(last.dataset.id));
        state.jobRows.delete(Number(last.dataset.id));
        last.remove();
      }
    }
  } else if (old) {
    old.remove();
    state.jobs.delete(job.id);
    state.jobRows.delete(job.id);
  }
  renderJobsEmpty();

  // The task's last result, and its next run once it has fired.
  if (job.taskId !== null && job.taskId !== undefined) {
    const isNew = (state.lastResult.get(job.taskId)?.id ?? 0) < job.id;
    if (rememberResult(job.taskId, job)) {
      const cell = state.taskRows.get(job.taskId)?.querySelector('.last-result');
      if (cell) cell.replaceChildren(lastResultEl(job.taskId));
    }
    if (isNew && state.tasks.has(job.taskId)) refreshTaskSoon(job.taskId);
  }

  // The job page.
  if (jobView.id === job.id) {
    if (jobView.loading) jobView.fromEvent = job;
    renderJobDetails(job);
  }
}

// What the Started column says before a job has started: queued, or sent
// to its worker, which starts a cron job on its second (up to 50 ms later).
function notStarted(status, queuedText) {
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

function announceJobs(jobs, what) {
  if (!jobs.length) {
    toast(`No workers are online, so ${what} did not run anywhere.`, {kind: 'error'});
  } else if (jobs.length === 1) {
    toast(`Job #${jobs[0].id} (${what}) is ${jobs[0].status}.`, {link: [`#/jobs/${jobs[0].id}`, 'Open']});
  } else {
    toast(`Started ${jobs.length} jobs for ${what}: ${jobs.map((j) => `#${j.id}`).join(', ')}.`);
  }
}

// =============================================================================
// The job page
// =============================================================================

const jobView = {
  id: null,
  job: null,
  seq: 0, // highest output seq shown
  loading: false,
  buffer: [], // output events that arrived while the log was loading
  fromEvent: null,
  load: 0,
  size: 0,
  follow: true,
  get view() {
    return this.id !== null;
  },
};

function openJob(id) {
  state.view = {name: 'job', id};
  document.title = `Job #${id} · Job scheduler`;
  show($('dashboard'), false);
  Object.assign(jobView, {id, job: null, seq: 0, loading: false, buffer: [], fromEvent: null, size: 0, follow: true});
  buildJobView(id);
  show($('job-view'), true);
  window.scrollTo(0, 0);
  const willReconnect = feed.phase === 'connecting' || feed.phase === 'open';
  feed.watch(id);
  // A reconnect reports onOpen, which loads the page after subscribing (so no
  // output falls between the log and the feed); otherwise load it now.
  if (!willReconnect && booted) loadJobView();
}

function openDashboard() {
  const wasJob = state.view.name === 'job';
  state.view = {name: 'dashboard'};
  document.title = 'Job scheduler';
  jobView.id = null;
  jobView.load++;
  show($('job-view'), false);
  clear($('job-view'));
  show($('dashboard'), true);
  feed.watch(null);
  if (wasJob) window.scrollTo(0, 0);
}

function buildJobView(id) {
  const output = h('pre', {id: 'output', class: 'output', tabindex: 0, 'aria-label': `Output of job ${id}`});
  const jump = h('button', {type: 'button', id: 'jump-end', class: 'jump', hidden: true}, 'Jump to end ↓');
  output.addEventListener('scroll', () => {
    jobView.follow = atEnd(output);
    if (jobView.follow) show(jump, false);
  });
  jump.addEventListener('click', () => {
    output.scrollTop = output.scrollHeight;
    jobView.follow = true;
    show(jump, false);
    output.focus();
  });
  $('job-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: '#/'}, '← Dashboard')),
    h('section', {class: 'card', 'aria-labelledby': 'job-title'},
      h('div', {class: 'job-head'},
        h('h2', {id: 'job-title'}, `Job #${id}`),
        h('span', {id: 'job-status'}),
        h('div', {id: 'job-actions', class: 'job-actions'})),
      h('p', {id: 'job-error', class: 'panel-error', role: 'alert', hidden: true}),
      h('dl', {id: 'job-details', class: 'details'}, h('div', {}, h('dt', {}, 'Loading…')))),
    h('section', {class: 'card output-card', 'aria-labelledby': 'output-title'},
      h('div', {class: 'card-head'},
        h('h2', {id: 'output-title'}, 'Output'),
        h('span', {id: 'output-state', class: 'muted small'})),
      h('div', {class: 'output-wrap'}, output, jump)));
}

async function loadJobView() {
  const id = jobView.id;
  if (id === null) return;
  const mine = ++jobView.load;
  jobView.loading = true;
  jobView.buffer = [];
  jobView.fromEvent = null;
  try {
    const [data, log] = await Promise.all([
      get(`/api/jobs/${id}`),
      request('GET', `/api/jobs/${id}/log`, {headers: {Accept: 'text/plain'}}),
    ]);
    const text = await log.text();
    if (mine !== jobView.load) return;
    show($('job-error'), false);
    renderJobDetails(jobView.fromEvent || data);
    setOutput(text);
    // Output events that came in while the log was on its way: skip what the
    // log already holds.  X-Output-Seq (if the server sends it) says exactly;
    // otherwise match the chunks against the end of the log.
    const buffered = jobView.buffer.sort((a, b) => a.seq - b.seq);
    const header = log.headers.get('X-Output-Seq');
    jobView.seq = header !== null && /^\d+$/.test(header) ? Number(header) : overlap(text, buffered);
    jobView.loading = false;
    jobView.buffer = [];
    for (const chunk of buffered) onOutput(chunk);
  } catch (error) {
    if (mine !== jobView.load) return;
    jobView.loading = false;
    const message = error instanceof ApiError && error.status === 404
      ? `There is no job #${id}.`
      : `Could not load job #${id}: ${error.message}`;
    $('job-error').textContent = message;
    show($('job-error'), true);
    if (!jobView.job) $('job-details').replaceChildren();
  }
}

/** The seq of the last buffered chunk that the log text already ends with. */
function overlap(text, chunks) {
  for (let last = chunks.length - 1; last >= 0; last--) {
    const joined = chunks.slice(0, last + 1).map((c) => c.data).join('');
    if (joined && text.endsWith(joined)) return chunks[last].seq;
  }
  return 0;
}

function renderJobDetails(data) {
  if (jobView.id !== data.id) return;
  jobView.job = data;
  $('job-status').replaceChildren(statusBadge(data.status));
  const task = data.taskId !== null ? state.tasks.get(data.taskId) : null;
  const rows = [
    ['Command', h('code', {id: 'job-command', class: 'wrap'}, visible(data.command))],
    ['Worker', data.worker ? visible(data.worker) : h('span', {class: 'muted'}, 'not assigned yet')],
    ['Target', visible(data.target)],
    data.taskId !== null && ['Task', task ? `${visible(task.jobName)} (#${data.taskId})` : `#${data.taskId}`],
    data.exitCode !== null && ['Exit code', String(data.exitCode)],
    data.signal !== null && data.signal !== undefined && ['Signal', String(data.signal)],
    data.reason && ['Reason', data.reason],
    data.attempt > 1 && ['Attempt', String(data.attempt)],
    ['Created', timeEl(data.createdAt)],
    data.scheduledAt && ['Scheduled for', timeEl(data.scheduledAt)],
    ['Started', timeEl(data.startedAt, notStarted(data.status, 'waiting for a worker'))],
    ['Finished', timeEl(data.finishedAt, FINAL.has(data.status) ? '—' : 'still running')],
    ['Duration', formatDuration(data.duration)],
    data.timeout !== null && data.timeout !== undefined && ['Timeout', `${data.timeout} s`],
    data.cwd && ['Working directory', h('code', {}, data.cwd)],
  ].filter(Boolean);
  $('job-details').replaceChildren(...rows.map(([term, value]) =>
    h('div', {}, h('dt', {}, term), h('dd', {}, value))));

  const actions = $('job-actions');
  if (!FINAL.has(data.status)) {
    if (!actions.querySelector('.cancel')) {
      const cancel = h('button', {type: 'button', class: 'cancel danger-quiet'}, 'Cancel job');
      cancel.addEventListener('click', async () => {
        cancel.disabled = true;
        try {
          onJob(await post(`/api/jobs/${data.id}/cancel`));
        } catch (error) {
          toast(`Could not cancel job #${data.id}: ${error.message}`, {kind: 'error'});
          cancel.disabled = false;
        }
      });
      actions.replaceChildren(cancel);
    }
  } else {
    actions.replaceChildren();
  }
  setOutputState();
}

function setOutputState() {
  const el = $('output-state');
  if (!el || !jobView.job) return;
  const status = jobView.job.status;
  if (FINAL.has(status)) el.textContent = 'finished';
  else if (feed.phase !== 'open') el.textContent = 'live view paused: reconnecting';
  else el.textContent = status === 'queued' ? 'waiting for a worker' : 'live';
}

function atEnd(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 8;
}

function setOutput(text) {
  const output = $('output');
  output.replaceChildren();
  jobView.size = 0;
  if (text) appendOutput('log', text, true);
  output.scrollTop = output.scrollHeight;
  jobView.follow = true;
  show($('jump-end'), false);
}

function onOutput(chunk) {
  if (jobView.id !== chunk.job) return;
  if (jobView.loading) {
    jobView.buffer.push(chunk);
    return;
  }
  if (chunk.seq <= jobView.seq) return; // shown already
  jobView.seq = chunk.seq;
  appendOutput(chunk.stream, chunk.data);
}

function appendOutput(stream, data, initial = false) {
  const output = $('output');
  if (!output) return;
  const follow = initial || atEnd(output);
  const last = output.lastElementChild;
  if (last && last.dataset.stream === stream) {
    last.firstChild.appendData(data);
  } else {
    output.append(h('span', {class: `stream-${stream}`, 'data-stream': stream}, data));
  }
  jobView.size += data.length;
  while (jobView.size > OUTPUT_CAP && output.childElementCount > 1) {
    jobView.size -= output.firstElementChild.textContent.length;
    output.firstElementChild.remove();
  }
  if (follow) {
    output.scrollTop = output.scrollHeight;
  } else {
    show($('jump-end'), true);
  }
}

// =============================================================================
// Forms
// =============================================================================

function formError(id, message) {
  const el = $(id);
  el.textContent = message || '';
  show(el, Boolean(message));
}

function setupRunForm() {
  const form = $('run-form');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const command = $('run-command').value;
    if (!command.trim()) {
      formError('run-error', 'Enter a command to run.');
      $('run-command').focus();
      return;
    }
    const body = {command, target: $('run-target').value || 'any'};
    const timeout = $('run-timeout').value.trim();
    if (timeout) {
      const seconds = Number(timeout);
      if (!(seconds > 0)) {
        formError('run-error', 'The timeout is a number of seconds above 0 (or leave it empty).');
        $('run-timeout').focus();
        return;
      }
      body.timeout = seconds;
    }
    formError('run-error', null);
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const result = await post('/api/jobs', body);
      const jobs = Array.isArray(result) ? result : [result];
      jobs.forEach(onJob);
      $('run-command').value = '';
      if (jobs.length === 1) location.hash = `#/jobs/${jobs[0].id}`;
      else announceJobs(jobs, 'the command');
    } catch (error) {
      formError('run-error', error.message);
    } finally {
      button.disabled = false;
    }
  });
}

function setupTaskForm() {
  const form = $('task-form');
  const schedule = $('task-schedule');
  const hint = $('schedule-hint');
  const defaultHint = [...hint.childNodes].map((n) => n.cloneNode(true));
  let checks = 0;

  const resetHint = () => {
    hint.dataset.state = '';
    hint.replaceChildren(...defaultHint.map((n) => n.cloneNode(true)));
    schedule.removeAttribute('aria-invalid');
  };

  const check = debounce(async () => {
    const expr = schedule.value.trim();
    const mine = ++checks;
    if (!expr) {
      resetHint();
      return;
    }
    try {
      const result = await get(`/api/schedules/check${query({expr})}`);
      if (mine !== checks) return;
      if (result.valid) {
        hint.dataset.state = 'valid';
        schedule.setAttribute('aria-invalid', 'false');
        hint.replaceChildren(
          h('span', {class: 'hint-ok'}, '✓ ', result.description),
          h('span', {class: 'hint-next'}, ' · next: ',
            result.next.map((iso, i) => [i ? ', ' : '', timeEl(iso)])));
      } else {
        hint.dataset.state = 'invalid';
        schedule.setAttribute('aria-invalid', 'true');
        hint.replaceChildren(h('span', {class: 'hint-error'}, result.error));
      }
    } catch (error) {
      if (mine !== checks) return;
      hint.dataset.state = 'invalid';
      hint.replaceChildren(h('span', {class: 'hint-error'}, `Could not check the schedule: ${error.message}`));
    }
  }, 300);

  schedule.addEventListener('input', () => {
    checks++; // any answer in flight is for older text
    hint.dataset.state = 'checking';
    check();
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {
      schedule: schedule.value.trim(),
      command: $('task-command').value,
      target: $('task-target').value || 'any',
    };
    const name = $('task-name').value.trim();
    if (name) body.jobName = name;
    if (!body.schedule || !body.command.trim()) {
      formError('task-error', 'A task needs a schedule and a command.');
      (body.schedule ? $('task-command') : schedule).focus();
      return;
    }
    formError('task-error', null);
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const task = await post('/api/tasks', body);
      upsertTask(task);
      for (const id of ['task-schedule', 'task-command', 'task-name']) $(id).value = '';
      check.cancel();
      checks++;
      resetHint();
      toast(`Added ${task.jobName}: ${task.description}.`);
    } catch (error) {
      formError('task-error', error.message);
    } finally {
      button.disabled = false;
    }
  });
}

function setupJobsFilter() {
  $('jobs-filter').addEventListener('change', (event) => {
    state.filter = event.target.value;
    loadJobs();
  });
}

// =============================================================================
// Toasts, token prompt, routing, start
// =============================================================================

function toast(message, {kind = 'info', link = null} = {}) {
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

setTokenPrompt(() => new Promise((resolve) => {
  const dialog = $('token-dialog');
  const input = $('token-input');
  input.value = '';
  dialog.returnValue = '';
  dialog.addEventListener('close', () => {
    resolve(dialog.returnValue === 'ok' ? input.value : null);
  }, {once: true});
  dialog.showModal();
  input.focus();
}));

let booted = false;

function route() {
  const match = /^#\/jobs\/(\d{1,18})$/.exec(location.hash);
  if (match) openJob(Number(match[1]));
  else if (state.view.name !== 'dashboard' || !booted) openDashboard();
}

function boot() {
  setupRunForm();
  setupTaskForm();
  setupJobsFilter();
  renderTargetChoices();
  window.addEventListener('hashchange', route);
  route();
  booted = true;
  // The first onOpen (or, if the feed cannot connect, the first onDown) loads
  // the panels; from then on the feed keeps them current.
  feed.start();
}

boot();
