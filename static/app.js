// The dashboard's wiring: one live-feed connection keeps every panel
// current; the panels are loaded in full only at start and after each
// (re)connect.  Each panel is a module of its own:
//
//   workers.js    the Workers panel and the forms' Target choices
//   tasks.js      the Tasks panel (next run, last result, paused or not)
//   task_actions.js  a task's buttons;  task_pause.js "Pause…";  run_with.js "Run with…"
//   task_form.js  "Add a task", and editing one in place (task_fields.js: its fields)
//   task_history.js  a task's changes, with a diff each, and "Restore this version"
//   maintenance.js   the maintenance switch and its banner
//   jobs.js       the Jobs panel and its status filter
//   job.js        a job's page with its live output (run_again.js: "Run again…")
//   run_form.js   "Run a command now"
//   router.js     which page shows (#/, #/jobs/<id>, #/tasks/<id>/history or #/audit)
//   access.js     what the token may do (GET /api/me): hides what it cannot;  audit.js  the audit log page
//   job_status.js how a job status reads and looks;  job_events.js  "a job changed"
//   api.js, feed.js, dom.js, toast.js   REST calls, the live feed, DOM building, notices
//
// Data only ever reaches the page through textContent / text nodes /
// attribute values (see dom.js): a command like <img src=x onerror=...>
// shows as text.  Commands, names and labels go through visible() first,
// so control and bidi characters show as escapes instead of reordering or
// hiding what the operator reads.

import {loadAccess} from './access.js';
import {get, setTokenPrompt} from './api.js';
import {$, formatTime, show} from './dom.js';
import {Feed} from './feed.js';
import {feedStateChanged, loadJobPage, setupJobPage, showOutput, showPageJob} from './job.js';
import {jobChanged, onJobChange} from './job_events.js';
import {loadJobs, loadStatusChoices, setupJobsFilter, showJob} from './jobs.js';
import {loadMaintenance, maintenanceChanged, setupMaintenance} from './maintenance.js';
import {startRouter} from './router.js';
import {setupRunForm} from './run_form.js';
import {setupTaskForm} from './task_form.js';
import {loadTaskHistory, taskHistoryChanged} from './task_history.js';
import {loadTasks, removeTask, showTaskJob, upsertTask} from './tasks.js';
import {loadWorkers, refreshWorkersSoon, renderTargetChoices} from './workers.js';

// The Jobs panel, then the task's last result and next run, then the job page.
onJobChange(showJob);
onJobChange(showTaskJob);
onJobChange(showPageJob);

let loadedOnce = false;
let recording = null; // events seen while a full load is in flight

const feed = new Feed({
  onEvent: (name, data) => {
    if (recording && name !== 'output') recording.push([name, data]);
    applyEvent(name, data);
  },
  onOpen: () => {
    setConnection('live', 'Live');
    show($('banner'), false);
    refreshVisible();
    loadClockStep();
  },
  onDown: ({reason, delay}) => {
    const needsToken = reason && /token/.test(String(reason.message));
    setConnection('down', needsToken ? 'Token needed' : 'Reconnecting…');
    $('banner-detail').textContent = needsToken
      ? 'An API token is needed: reload the page to enter it.'
      : `Trying again in ${Math.round(delay / 1000)} s.`;
    show($('banner'), true);
    feedStateChanged();
    if (!loadedOnce) refreshVisible();
  },
});

function applyEvent(name, data) {
  switch (name) {
    case 'task':
      if (data.change === 'removed') removeTask(data.task.id);
      else upsertTask(data.task);
      taskHistoryChanged(data.task.id);
      break;
    case 'job':
      jobChanged(data);
      break;
    case 'worker':
      refreshWorkersSoon();
      break;
    case 'output':
      showOutput(data);
      break;
    case 'maintenance':
      maintenanceChanged(data);
      break;
    default:
      break;
  }
}

function setConnection(kind, text) {
  $('conn').dataset.state = kind;
  $('conn-text').textContent = text;
}

// The last wall clock step the scheduler's cron tick saw since it started
// (/api/health's lastClockStep), as a muted note by the status; read on each
// (re)connect, hidden when there has been none.
async function loadClockStep() {
  let step = null;
  try {
    step = (await get('/api/health')).lastClockStep || null;
  } catch {
    return; // the note stays as it was; the next connect tries again
  }
  const note = $('clock-step');
  note.textContent = step
    ? `clock stepped ${step.direction} ${Math.round(step.seconds)} s at ${formatTime(step.at)}`
    : '';
  note.title = step ? `The scheduler's wall clock stepped ${step.direction} ${step.seconds} s (seen ${step.at})` : '';
  show(note, Boolean(step));
}

function refreshVisible() {
  loadAccess();
  loadAll();
  loadJobPage();
  loadTaskHistory();
}

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
      recording = [];
      const recentJobs = loadJobs();
      await Promise.allSettled([
        loadWorkers(), recentJobs, loadTasks(recentJobs), loadStatusChoices(), loadMaintenance(),
      ]);
      const recorded = recording;
      recording = null;
      // Events that raced the snapshot are newer than it: apply them again.
      for (const [name, data] of recorded) applyEvent(name, data);
      loadedOnce = true;
    } while (loadAgain);
  })().finally(() => {
    loading = null;
  });
  return loading;
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

function boot() {
  setupJobPage(feed);
  setupRunForm();
  setupTaskForm();
  setupMaintenance();
  setupJobsFilter();
  renderTargetChoices();
  startRouter(feed);
  // The first onOpen (or, if the feed cannot connect, the first onDown) loads
  // the panels; from then on the feed keeps them current.
  feed.start();
}

boot();
