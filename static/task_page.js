// A task's page (#/tasks/<id>): its runs as a strip of status marks, the
// success rate and a chart of durations over the last runs, its next runs
// in its time zone, every option, and the actions that are not in the
// Tasks table.  Kept current by task and job changes.

import {ApiError, get, query} from './api.js';
import {$, formatDuration, h, sameAsViewer, show, timeEl, visible, visibleLines} from './dom.js';
import {newest} from './job_events.js';
import {isFinal, statusBadge, statusText} from './job_status.js';
import {renderTaskActions} from './task_actions.js';
import {DEFAULTS} from './task_fields.js';
import {placeTaskForm} from './task_form.js';
import {openPanelOf} from './task_panel.js';
import {healthBadge, taskById} from './tasks.js';
import {taskZone} from './zones.js';
import {loadTaskAlerts} from './task_alerts.js';

const RUNS = 50; // runs in the strip and the chart
const NEXT_RUNS = 5;

const view = {id: null, task: null, runs: [], load: 0, drawing: null};

const LABELS = {
  schedule: 'Schedule', command: 'Command', jobName: 'Job name', target: 'Target', timezone: 'Time zone',
  cwd: 'Working directory', env: 'Environment', timeout: 'Timeout', retries: 'Retries', retryDelay: 'Retry delay',
  jitter: 'Jitter', overlap: 'If still running', missed: 'Runs missed while down', missedCap: 'Most caught up',
  maxConcurrent: 'Max at once', pool: 'Pool', paused: 'Paused', pausedUntil: 'Paused until', pauseReason: 'Pause reason',
  skipNext: 'Skips next run', health: 'Health',
};
const SECONDS = new Set(['timeout', 'retryDelay', 'jitter']);
const NOT_OPTIONS = new Set(['id', 'description', 'nextRun', 'lastJob']);

export function openTaskPage(id, backHref) {
  Object.assign(view, {id, task: null, runs: []});
  const known = taskById(id);
  $('task-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: backHref}, '← Dashboard')),
    h('section', {class: 'card', 'aria-labelledby': 'task-title'},
      h('div', {class: 'job-head'},
        h('h1', {id: 'task-title', class: 'view-title', tabindex: -1}, known ? `${visible(known.jobName)} (#${id})` : `Task #${id}`),
        h('span', {id: 'task-badges'}),
        h('div', {id: 'task-actions', class: 'task-actions job-actions'})),
      h('p', {id: 'task-page-error', class: 'panel-error', role: 'alert', hidden: true}),
      h('div', {id: 'task-panel'}),
      h('div', {id: 'task-form-slot'}),
      h('div', {class: 'task-summary'},
        h('div', {class: 'stat'}, h('span', {class: 'stat-label'}, 'Success rate'), h('span', {id: 'task-rate', class: 'stat-value'}, '…')),
        h('div', {class: 'stat'}, h('span', {class: 'stat-label'}, 'Last run'), h('span', {id: 'task-last', class: 'stat-value'}, '…')),
        h('div', {class: 'stat'}, h('span', {class: 'stat-label'}, 'Next run'), h('span', {id: 'task-next', class: 'stat-value'}, '…')))),
    h('section', {class: 'card', 'aria-labelledby': 'runs-title'},
      h('div', {class: 'card-head'},
        h('h2', {id: 'runs-title'}, 'Last runs'),
        h('a', {href: `#/?task=${id}`, id: 'task-all-runs'}, 'All runs in the job list')),
      h('ol', {id: 'run-strip', class: 'run-strip', 'aria-label': 'Status of the last runs, oldest first'}),
      h('figure', {class: 'chart'},
        h('div', {id: 'duration-chart'}),
        h('figcaption', {id: 'chart-caption', class: 'muted small'})),
      h('table', {id: 'task-runs', class: 'jobs', hidden: true},
        h('thead', {}, h('tr', {},
          h('th', {scope: 'col'}, 'Job'), h('th', {scope: 'col'}, 'Status'), h('th', {scope: 'col'}, 'Worker'),
          h('th', {scope: 'col'}, 'Duration'), h('th', {scope: 'col'}, 'Started'))),
        h('tbody', {id: 'task-runs-body'})),
      h('p', {id: 'task-runs-empty', class: 'empty'}, 'Loading…')),
    h('div', {class: 'task-page-cols'},
      h('section', {class: 'card', 'aria-labelledby': 'next-title'},
        h('h2', {id: 'next-title'}, 'Next runs'),
        h('ol', {id: 'task-next-runs', class: 'next-runs'}, h('li', {class: 'empty'}, 'Loading…'))),
      h('section', {class: 'card', 'aria-labelledby': 'options-title'},
        h('h2', {id: 'options-title'}, 'Options'),
        h('dl', {id: 'task-options', class: 'details options'}))),
    h('section', {class: 'card', id: 'alerts-card', 'aria-labelledby': 'alerts-title', hidden: true},
      h('h2', {id: 'alerts-title'}, 'Alerts sent'),
      h('div', {id: 'task-alerts'})));
  placeTaskForm($('task-form-slot'));
  if (known) renderTask(known);
  loadTaskPage();
}

export function closeTaskPage() {
  view.id = null;
  view.load++;
}

export function taskPageId() {
  return view.id;
}

/** Load the task, its last runs and next runs (nothing when no task page is open). */
export async function loadTaskPage() {
  const id = view.id;
  if (id === null) return;
  const mine = ++view.load;
  const [task, runs] = await Promise.allSettled([
    get(`/api/tasks/${id}`),
    get(`/api/jobs${query({task: id, limit: RUNS})}`),
  ]);
  if (mine !== view.load) return;
  if (task.status === 'rejected') {
    const error = task.reason;
    $('task-page-error').textContent = error instanceof ApiError && error.status === 404
      ? `There is no task #${id}. Its history may still be there.`
      : `Could not load task #${id}: ${error.message}`;
    $('task-page-error').append(' ', h('a', {href: `#/tasks/${id}/history`}, 'History'));
    show($('task-page-error'), true);
    return;
  }
  show($('task-page-error'), false);
  if (runs.status === 'fulfilled') view.runs = runs.value.map(newest);
  renderTask(task.value);
  drawRuns();
  loadNextRuns(task.value);
  loadTaskAlerts(id);
}

/** A task changed (live feed): if it is this page's, show it. */
export function showPageTask(task) {
  if (view.id !== null && task && task.id === view.id) {
    const before = view.task;
    renderTask(task);
    if (!before || before.schedule !== task.schedule || before.timezone !== task.timezone
        || before.nextRun !== task.nextRun || before.jobName !== task.jobName) loadNextRuns(task);
  }
}

/** A task was removed (live feed): if it is this page's, say so. */
export function taskPageRemoved(id) {
  if (view.id !== id) return;
  $('task-page-error').replaceChildren(`This task was deleted. `, h('a', {href: `#/tasks/${id}/history`}, 'Its history'),
    ' is kept.');
  show($('task-page-error'), true);
  $('task-actions').replaceChildren();
}

/** A job changed: if it is one of this task's runs, show it. */
export function showTaskPageJob(job) {
  if (view.id === null || job.taskId !== view.id) return;
  const at = view.runs.findIndex((run) => run.id === job.id);
  if (at >= 0) view.runs[at] = job;
  else view.runs = [job, ...view.runs].sort((a, b) => b.id - a.id).slice(0, RUNS);
  if (!view.drawing) {
    view.drawing = requestAnimationFrame(() => {
      view.drawing = null;
      drawRuns();
    });
  }
}

function renderTask(task) {
  view.task = task;
  $('task-title').textContent = `${visible(task.jobName)} (#${task.id})`;
  document.title = `${task.jobName} · Job scheduler`;
  $('task-badges').replaceChildren(...[
    healthBadge(task.health),
    task.paused ? h('span', {class: 'badge badge-paused'}, 'Paused') : null,
    task.skipNext ? h('span', {class: 'badge badge-skip'}, 'skips next run') : null,
  ].filter(Boolean));
  const actions = $('task-actions');
  const focusKey = actions.contains(document.activeElement) ? document.activeElement.dataset.action : null;
  renderTaskActions(task, actions);
  if (focusKey) actions.querySelector(`[data-action="${focusKey}"]`)?.focus();
  const panel = openPanelOf(task.id);
  if (panel && !panel.isConnected) $('task-panel').replaceChildren(panel);
  const zone = taskZone(task);
  $('task-next').replaceChildren(task.paused
    ? h('span', {class: 'muted'}, task.pausedUntil ? ['paused until ', timeEl(task.pausedUntil)] : 'paused until resumed')
    : timeEl(task.nextRun, 'not scheduled', {zone, withZone: true}));
  renderOptions(task);
}

function optionValue(key, value, task) {
  if (key === 'env') {
    const entries = Object.entries(value || {});
    return entries.length ? h('code', {class: 'wrap'}, visible(entries.map(([k, v]) => `${k}=${v}`).join('\n'))) : 'none';
  }
  if (key === 'command') return h('code', {class: 'wrap'}, visibleLines(value));
  if (key === 'schedule') {
    const zone = taskZone(task);
    return h('span', {}, h('code', {}, value), ' ', task.description ? `(${task.description})` : '',
      zone ? h('span', {class: 'chip'}, visible(zone)) : null);
  }
  if (key === 'timezone' && !value) {
    const zone = taskZone(task);
    return zone ? `the scheduler's (${zone})` : "the scheduler's";
  }
  if (key === 'pausedUntil') return timeEl(typeof value === 'number' ? new Date(value * 1000).toISOString() : value);
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (value === null || value === undefined || value === '') {
    return h('span', {class: 'muted'}, key in DEFAULTS && DEFAULTS[key] !== null ? `${DEFAULTS[key]} (default)` : 'none');
  }
  if (SECONDS.has(key)) return `${value} s`;
  if (key === 'cwd') return h('code', {}, visible(value));
  return visible(typeof value === 'object' ? JSON.stringify(value) : String(value));
}

function renderOptions(task) {
  const keys = [...Object.keys(LABELS).filter((key) => key in task || key in DEFAULTS),
    ...Object.keys(task).filter((key) => !(key in LABELS) && !NOT_OPTIONS.has(key)).sort()];
  const rows = keys.filter((key) => !['pausedUntil', 'pauseReason'].includes(key) || task[key])
    .map((key) => h('div', {}, h('dt', {}, LABELS[key] || key), h('dd', {}, optionValue(key, task[key] ?? DEFAULTS[key], task))));
  $('task-options').replaceChildren(...rows);
}

async function loadNextRuns(task) {
  const list = $('task-next-runs');
  if (task.paused) {
    list.replaceChildren(h('li', {class: 'muted'}, 'None while paused.'));
    return;
  }
  const zone = taskZone(task);
  try {
    const result = await get(`/api/schedules/check${query({
      expr: task.schedule, timezone: task.timezone || '', jobName: task.jobName, count: NEXT_RUNS,
    })}`);
    if (view.id !== task.id) return;
    const runZone = result.timezone || zone;
    const runs = result.runs || (result.next || []).map((at) => ({at, shifted: null}));
    list.replaceChildren(...(runs.length ? runs.map((run) => h('li', {},
      timeEl(run.at, '', {zone: runZone, withZone: true}),
      run.shifted ? h('span', {class: 'dst-flag'}, ' ⚠ ', visible(String(run.shifted))) : null))
      : [h('li', {class: 'muted'}, 'None.')]));
    if (runZone) {
      list.append(h('li', {class: 'muted small zone-line'}, `In ${runZone}${sameAsViewer(runZone) ? '' : ', with your time in brackets'}.`));
    }
  } catch (error) {
    list.replaceChildren(h('li', {class: 'muted'}, `Could not read the next runs: ${error.message}`));
  }
}

function drawRuns() {
  const runs = [...view.runs].sort((a, b) => a.id - b.id); // oldest first
  // Runs that ended: not cancelled ones, nor missed times, which never ran.
  const finished = runs.filter((run) => isFinal(run.status) && run.status !== 'cancelled' && run.status !== 'missed');
  const good = finished.filter((run) => run.status === 'succeeded').length;
  $('task-rate').textContent = finished.length
    ? `${Math.round((100 * good) / finished.length)}% (${good} of ${finished.length} finished)`
    : 'no finished runs yet';
  const last = runs[runs.length - 1];
  $('task-last').replaceChildren(last
    ? h('a', {href: `#/jobs/${last.id}`, class: 'result-link'}, statusBadge(last.status), ' ', `#${last.id} `,
      timeEl(last.finishedAt || last.startedAt || last.createdAt, ''))
    : h('span', {class: 'muted'}, 'not run yet'));
  $('run-strip').replaceChildren(...runs.map((run) => h('li', {},
    h('a', {href: `#/jobs/${run.id}`, class: 'mark', 'data-status': run.status, tabindex: -1,
      title: `#${run.id} ${statusText(run.status)}${run.duration !== null && run.duration !== undefined ? `, ${formatDuration(run.duration)}` : ''}`},
    h('span', {class: 'visually-hidden'}, `Job ${run.id} ${statusText(run.status)}`)))));
  drawChart(runs);
  const newestFirst = [...runs].reverse().slice(0, 10);
  $('task-runs-body').replaceChildren(...newestFirst.map((run) => h('tr', {class: 'job-row', 'data-id': run.id, 'data-status': run.status},
    h('td', {}, h('a', {href: `#/jobs/${run.id}`}, `#${run.id}`)),
    h('td', {}, statusBadge(run.status)),
    h('td', {}, run.worker ? visible(run.worker) : h('span', {class: 'muted'}, '—')),
    h('td', {class: 'num'}, formatDuration(run.duration)),
    h('td', {}, timeEl(run.startedAt, run.status === 'queued' ? 'waiting' : '—')))));
  show($('task-runs'), runs.length > 0);
  show($('task-runs-empty'), runs.length === 0);
  $('task-runs-empty').textContent = 'No runs yet.';
}

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  el.append(...children);
  return el;
}

/** Bars of the finished runs' durations, oldest left, coloured by status. */
function drawChart(runs) {
  const timed = runs.filter((run) => typeof run.duration === 'number');
  const host = $('duration-chart');
  if (!timed.length) {
    host.replaceChildren();
    $('chart-caption').textContent = 'Durations show here once runs finish.';
    return;
  }
  const width = 600;
  const height = 120;
  const pad = 4;
  const longest = Math.max(...timed.map((run) => run.duration), 0.001);
  const step = (width - 2 * pad) / Math.max(timed.length, 10);
  const sorted = [...timed].map((run) => run.duration).sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  const summary = `Durations of the last ${timed.length} finished runs: median ${formatDuration(median)}, longest ${formatDuration(longest)}.`;
  const bars = timed.map((run, i) => {
    const barHeight = Math.max(2, ((height - 2 * pad) * run.duration) / longest);
    return svg('rect', {
      class: 'bar', 'data-status': run.status, x: (pad + i * step + step * 0.15).toFixed(1),
      y: (height - pad - barHeight).toFixed(1), width: Math.max(1, step * 0.7).toFixed(1), height: barHeight.toFixed(1),
    }, svg('title', {}, `#${run.id}: ${formatDuration(run.duration)}, ${statusText(run.status)}`));
  });
  host.replaceChildren(svg('svg', {
    viewBox: `0 0 ${width} ${height}`, class: 'duration-chart', role: 'img', 'aria-label': summary,
    preserveAspectRatio: 'none',
  }, svg('line', {class: 'axis', x1: 0, y1: height - pad, x2: width, y2: height - pad}), ...bars));
  $('chart-caption').textContent = `${summary} Each bar is one run, oldest on the left.`;
}

export function currentTaskOnPage() {
  return view.task;
}
