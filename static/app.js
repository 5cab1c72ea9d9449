// The dashboard's wiring: one live-feed connection keeps every panel
// current.  The panels load at once, alongside the feed's connect (not
// after it), and again after the first open and each reconnect, when
// events may have been missed; moving between pages reloads nothing (a
// job page's output comes over a feed of its own).  Each panel is a module:
//
//   jobs_now.js   Running now and Recent failures (job_cancel.js: Cancel)
//   tasks.js      the Tasks table and its filter (task_actions.js: a task's buttons)
//   task_form.js  "Add task", and editing one in place (task_fields.js: its fields)
//   task_page.js  a task's page: runs, success rate, durations, next runs, options
//                 (task_pause.js "Pause…", run_with.js "Run with…", task_panel.js, task_alerts.js)
//   task_history.js  a task's changes, with a diff each, and "Restore this version"
//   jobs.js       the Jobs panel: filters and paging in the address
//   job.js        a job's page (job_output.js: the output box; run_again.js: "Run again…")
//   workers.js    the Workers panel and the forms' Target choices
//   maintenance.js   the maintenance switch and its banner
//   channels.js   the alert channels page;  audit.js  the audit log page
//   access.js     who is signed in and what the token may do (GET /api/me):
//                 controls name the scope they need (data-needs), style.css hides the rest
//   run_form.js   "Run a command now"
//   router.js     which page shows;  shortcuts.js  the keys and the "?" list
//   zones.js      the scheduler's time zone;  elapsed.js  running clocks
//   job_status.js how a job status reads and looks;  job_events.js  "a job changed"
//   api.js, feed.js, dom.js, toast.js   REST calls, the live feed, DOM building, notices
//
// Data only ever reaches the page through textContent / text nodes /
// attribute values (see dom.js): a command like <img src=x onerror=...>
// shows as text.  Commands, names and labels go through visible() first,
// so control and bidi characters show as escapes instead of reordering or
// hiding what the operator reads.

import {loadAccess} from './access.js';
import {get, query, setTokenPrompt} from './api.js';
import {$, formatTime, show} from './dom.js';
import {offerChannels} from './channels.js';
import {loadCluster, setupCluster} from './cluster.js';
import {Feed} from './feed.js';
import {showPageJob} from './job.js';
import {jobChanged, onJobChange} from './job_events.js';
import {loadJobs, loadStatusChoices, redrawJobs, renderTaskChoices, setupJobsFilter, showJob, unfilteredJobs} from './jobs.js';
import {loadJobsNow, redrawJobsNow, showJobNow} from './jobs_now.js';
import {loadMaintenance, maintenanceChanged, setupMaintenance} from './maintenance.js';
import {startRouter} from './router.js';
import {setupRunForm} from './run_form.js';
import {setupShortcuts} from './shortcuts.js';
import {setupTaskForm} from './task_form.js';
import {loadTaskHistory, taskHistoryChanged} from './task_history.js';
import {loadTaskPage, showPageTask, showTaskPageJob, taskPageRemoved} from './task_page.js';
import {allTasks, loadTasks, onTasksChange, redrawTasks, removeTask, setupTasksPanel, showTaskJob, upsertTask} from './tasks.js';
import {loadWorkers, refreshWorkersSoon, renderTargetChoices} from './workers.js';
import {loadHealth} from './zones.js';

// Running now, the Jobs panel, the task's last result, the task page, the job page.
onJobChange(showJobNow);
onJobChange(showJob);
onJobChange(showTaskJob);
onJobChange(showTaskPageJob);
onJobChange(showPageJob);
onTasksChange((task) => {
  renderTaskChoices(allTasks());
  if (task) showPageTask(task);
});

let recording = null; // events seen while a full load is in flight

const feed = new Feed({
  onEvent: (name, data) => {
    if (recording) recording.push([name, data]);
    applyEvent(name, data);
  },
  onOpen: () => {
    setConnection('live', 'Live');
    show($('banner'), false);
    // Subscribed now: a load from here on misses nothing.
    loadAll();
  },
  onDown: ({reason, delay}) => {
    const needsToken = reason && /token/.test(String(reason.message));
    setConnection('down', needsToken ? 'Token needed' : 'Reconnecting…');
    $('banner-detail').textContent = needsToken
      ? 'An API token is needed: reload the page to enter it.'
      : `Trying again in ${Math.round(delay / 1000)} s.`;
    show($('banner'), true);
  },
});

function applyEvent(name, data) {
  switch (name) {
    case 'task':
      if (data.change === 'removed') {
        removeTask(data.task.id);
        taskPageRemoved(data.task.id);
      } else {
        upsertTask(data.task);
      }
      taskHistoryChanged(data.task.id);
      break;
    case 'job':
      jobChanged(data);
      break;
    case 'worker':
      refreshWorkersSoon();
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
// (/api/health's lastClockStep), as a muted note by the status; read with
// each load, hidden when there has been none.
function showClockStep(health) {
  if (!health) return;
  const step = health.lastClockStep || null;
  const note = $('clock-step');
  note.textContent = step
    ? `clock stepped ${step.direction} ${Math.round(step.seconds)} s at ${formatTime(step.at)}`
    : '';
  note.title = step ? `The scheduler's wall clock stepped ${step.direction} ${step.seconds} s (seen ${step.at})` : '';
  show(note, Boolean(step));
}

let loading = null;
let loadAgain = false;
let zoneShown = null;

function loadAll() {
  if (loading) {
    loadAgain = true;
    return loading;
  }
  loading = (async () => {
    do {
      loadAgain = false;
      recording = [];
      // Who this is, alongside: a token given at a prompt, or changed, shows here.
      const access = loadAccess();
      // The time zone first (a small answer), so times are drawn once, in it.
      const health = await loadHealth();
      showClockStep(health);
      const zone = health && health.timezone;
      if (zone !== zoneShown) {
        zoneShown = zone;
        redrawTasks();
        redrawJobs();
        redrawJobsNow();
      }
      const jobsPanel = loadJobs();
      const recent = jobsPanel.then(() => unfilteredJobs() || get(`/api/jobs${query({limit: 100})}`));
      await Promise.allSettled([
        loadWorkers(), jobsPanel, loadTasks(recent), loadJobsNow(recent), loadStatusChoices(), loadMaintenance(),
        loadTaskPage(), loadTaskHistory(), access, loadCluster(),
      ]);
      const recorded = recording;
      recording = null;
      // Events that raced the snapshot are newer than it: apply them again.
      for (const [name, data] of recorded) applyEvent(name, data);
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
  setupRunForm();
  setupTaskForm();
  setupTasksPanel();
  setupMaintenance();
  setupJobsFilter();
  setupShortcuts();
  setupCluster();
  renderTargetChoices();
  startRouter();
  // Load now, alongside the feed's connect; its open loads again (cheaply:
  // a handful of requests) so nothing between the two is missed.
  feed.start();
  loadAll();
  offerChannels();
}

boot();
