// The Tasks panel: a compact table, one row a task (its name linking to its
// page, schedule with its time zone, next run, last result, health), with a
// filter and "Run now" / "Edit" on each row.  The other actions are on the
// task's own page (task_page.js).  A row is rebuilt whenever its task changes.

import {ApiError, get, query} from './api.js';
import {$, debounce, h, show, showError, timeEl, visible} from './dom.js';
import {newest} from './job_events.js';
import {statusBadge} from './job_status.js';
import {renderTaskActions} from './task_actions.js';
import {taskZone} from './zones.js';

// Rows shown before "Show all", unless a filter is set: fewer on a phone,
// where each row is a small card.
const ROWS = window.matchMedia('(max-width: 640px)').matches ? 5 : 10;

const tasks = new Map(); // id -> task
const lastResult = new Map(); // task id -> newest job of that task
const changeListeners = [];
let filterText = '';
let notUpOnly = false;
let showAll = false;

export function taskById(id) {
  return tasks.get(id);
}

export function allTasks() {
  return [...tasks.values()].sort((a, b) => a.id - b.id);
}

/** *listener*(task or null) after any task is added, changed or removed. */
export function onTasksChange(listener) {
  changeListeners.push(listener);
}

function changed(task) {
  for (const listener of changeListeners) listener(task);
}

export function setupTasksPanel() {
  const filter = $('tasks-filter');
  filter.addEventListener('input', debounce(() => {
    filterText = filter.value.trim().toLowerCase();
    render();
  }, 120));
  $('tasks-not-up').addEventListener('change', (event) => {
    notUpOnly = event.target.checked;
    render();
  });
  $('tasks-all').addEventListener('click', () => {
    showAll = !showAll;
    render();
  });
}

/**
 * Load the list again.  Each task carries its newest job (`lastJob`); from
 * a scheduler that does not send it, *recentJobs* (a promise) and then one
 * query per task still missing fill it in.
 */
export async function loadTasks(recentJobs) {
  let list;
  try {
    list = await get('/api/tasks');
  } catch (error) {
    showError('tasks-error', `Could not load the tasks: ${error.message}`);
    return;
  }
  if (list.length && !list.some((task) => 'lastJob' in task)) {
    let known = [];
    try {
      known = await recentJobs;
    } catch {
      // the per-task queries below cover it
    }
    await loadLastResults(list, known);
  }
  tasks.clear();
  for (const task of list) remember(task);
  showError('tasks-error', null);
  render();
  changed(null);
}

async function loadLastResults(list, known) {
  const found = new Map();
  for (const job of known) {
    if (job.taskId !== null && !(found.get(job.taskId)?.id > job.id)) found.set(job.taskId, job);
  }
  await Promise.all(list.map(async (task) => {
    if (found.has(task.id)) return;
    try {
      const [job] = await get(`/api/jobs${query({task: task.id, limit: 1})}`);
      if (job) found.set(task.id, job);
    } catch {
      // Leave it unknown; the next job event fills it in.
    }
  }));
  for (const [taskId, job] of found) rememberResult(taskId, job);
}

function remember(task) {
  tasks.set(task.id, task);
  if (task.lastJob) rememberResult(task.id, task.lastJob);
}

function rememberResult(taskId, job) {
  const before = lastResult.get(taskId);
  if (before && before.id > job.id) return false;
  lastResult.set(taskId, newest(job));
  return true;
}

/** The newest job known of task *id* (or undefined). */
export function lastJobOf(id) {
  return lastResult.get(id);
}

/** A job changed: its task's last result, and its next run once it has fired. */
export function showTaskJob(job) {
  if (job.taskId === null || job.taskId === undefined) return;
  const isNew = (lastResult.get(job.taskId)?.id ?? 0) < job.id;
  if (rememberResult(job.taskId, job)) {
    const cell = $('tasks-body').querySelector(`tr[data-id="${job.taskId}"] .last-result`);
    if (cell) cell.replaceChildren(lastResultEl(job.taskId));
  }
  if (isNew && tasks.has(job.taskId)) refreshTaskSoon(job.taskId);
}

export function upsertTask(task) {
  remember(task);
  render();
  changed(task);
}

export function removeTask(id) {
  tasks.delete(id);
  rowCache.delete(id);
  render();
  changed(null);
}

function matches(task) {
  if (notUpOnly && (!task.health || task.health === 'up')) return false;
  if (!filterText) return true;
  const words = [task.jobName, task.command, task.target, task.pool, task.schedule, task.description,
    task.health, task.timezone, `#${task.id}`, ...(task.labels || [])];
  // As typed, or as shown (a control character as its escape, "\u202e").
  return words.some((word) => word && (String(word).toLowerCase().includes(filterText)
    || visible(String(word)).toLowerCase().includes(filterText)));
}

function render() {
  const all = allTasks();
  const hasHealth = all.some((task) => task.health);
  show($('tasks-not-up').closest('label'), hasHealth);
  if (!hasHealth) notUpOnly = false;
  const matching = all.filter(matches);
  const filtered = Boolean(filterText || notUpOnly);
  const shown = filtered || showAll ? matching : matching.slice(0, ROWS);
  const body = $('tasks-body');
  // A rebuilt row keeps the keyboard focus where it was (same task, same button).
  const focused = body.contains(document.activeElement) ? document.activeElement : null;
  const focusRow = focused?.closest('tr')?.dataset.id;
  const focusKey = focused?.dataset.action || (focused?.matches('a.task-name') ? 'name' : null);
  body.replaceChildren(...shown.map(rowOf));
  if (focusRow && focusKey) {
    const again = body.querySelector(`tr[data-id="${focusRow}"] ${focusKey === 'name' ? 'a.task-name' : `[data-action="${focusKey}"]`}`);
    again?.focus();
  }
  $('tasks-count').textContent = String(all.length);
  show($('tasks-table'), shown.length > 0);
  show($('tasks-empty'), shown.length === 0);
  $('tasks-empty').textContent = all.length ? 'No task matches the filter.' : 'No tasks yet. Add one with “Add task”.';
  const more = !filtered && matching.length > ROWS;
  show($('tasks-all'), more);
  $('tasks-all').textContent = showAll ? `Show the first ${ROWS}` : `Show all ${matching.length} tasks`;
  $('tasks-shown').textContent = filtered
    ? `${matching.length} of ${all.length} tasks match.`
    : (more && !showAll ? `Showing ${ROWS} of ${matching.length} tasks.` : '');
}

export function healthBadge(health) {
  if (!health) return null;
  return h('span', {class: 'badge badge-health', 'data-health': health}, health);
}

const rowCache = new Map(); // id -> [task, row]: a row is rebuilt only when its task changed

function rowOf(task) {
  const cached = rowCache.get(task.id);
  if (cached && cached[0] === task && cached[2] === lastResult.get(task.id)) return cached[1];
  const row = taskRow(task);
  rowCache.set(task.id, [task, row, lastResult.get(task.id)]);
  return row;
}

function taskRow(task) {
  const zone = taskZone(task);
  const actions = h('div', {class: 'task-actions'});
  const row = h('tr', {class: 'task', 'data-id': task.id, 'data-paused': task.paused ? 'true' : null},
    h('td', {class: 'task-cell'},
      h('a', {href: `#/tasks/${task.id}`, class: 'task-name'}, visible(task.jobName)),
      h('span', {class: 'muted small'}, ` #${task.id} `),
      healthBadge(task.health),
      task.paused ? h('span', {class: 'badge badge-paused'}, 'Paused') : null,
      task.skipNext ? h('span', {class: 'badge badge-skip'}, 'skips next run') : null,
      h('code', {class: 'task-command', title: visible(task.command)}, visible(task.command)),
      task.target && task.target !== 'any' ? h('span', {class: 'chip'}, visible(task.target)) : null,
      task.pool ? h('span', {class: 'chip'}, `pool ${visible(task.pool)}`) : null),
    h('td', {class: 'schedule-cell'},
      // A zone of its own is named; the scheduler's is the page's (its note
      // says which), and the next run names both.
      h('code', {class: 'cron', title: zone ? `in ${zone}` : null}, task.schedule),
      task.timezone ? h('span', {class: 'chip', title: 'Time zone of the schedule'}, visible(task.timezone)) : null,
      h('div', {class: 'task-desc small'}, task.description || '')),
    h('td', {class: 'next-run'}, task.paused
      ? h('span', {class: 'muted'}, 'paused')
      : timeEl(task.nextRun, 'not scheduled', {zone, withZone: true})),
    h('td', {class: 'last-result'}, lastResultEl(task.id)),
    h('td', {class: 'actions-cell'}, actions));
  renderTaskActions(task, actions, {compact: true});
  return row;
}

export function lastResultEl(taskId) {
  const job = lastResult.get(taskId);
  if (!job) return h('span', {class: 'muted'}, 'not run yet');
  return h('a', {href: `#/jobs/${job.id}`, class: 'result-link'},
    statusBadge(job.status), ' ',
    h('span', {class: 'small'}, `#${job.id} `),
    timeEl(job.finishedAt || job.startedAt || job.createdAt, ''));
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

/** Draw every row again (the time zone the times show in changed). */
export function redrawTasks() {
  rowCache.clear();
  render();
}
