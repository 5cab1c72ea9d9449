// The Tasks panel: each task with its schedule, next run and last result,
// whether it is paused (until when, why) or skips its next run, and its
// buttons (task_actions.js).  A row is rebuilt whenever its task changes; a
// form opened in it (pause, run with...) is carried over to the new row.

import {ApiError, get, query} from './api.js';
import {$, clear, debounce, h, showError, timeEl, visible} from './dom.js';
import {statusBadge} from './job_status.js';
import {renderTaskActions} from './task_actions.js';
import {editingId} from './task_form.js';

const tasks = new Map(); // id -> task
const taskRows = new Map(); // id -> <li>
const lastResult = new Map(); // task id -> newest job of that task
const panels = new Map(); // task id -> the form open under its row

export function taskById(id) {
  return tasks.get(id);
}

/** Load the list again; *recentJobs* (a promise) spares a query per task for the newest job. */
export async function loadTasks(recentJobs) {
  const [list, known] = await Promise.allSettled([get('/api/tasks'), recentJobs]);
  if (list.status === 'fulfilled') {
    await loadLastResults(list.value, known.status === 'fulfilled' ? known.value : []);
    setTasks(list.value);
    showError('tasks-error', null);
  } else {
    showError('tasks-error', `Could not load the tasks: ${list.reason.message}`);
  }
}

/** The newest job of each task: from *known* jobs, else one query per task. */
async function loadLastResults(list, known) {
  const newest = new Map();
  for (const job of known) {
    if (job.taskId !== null && !(newest.get(job.taskId)?.id > job.id)) newest.set(job.taskId, job);
  }
  await Promise.all(list.map(async (task) => {
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
  const before = lastResult.get(taskId);
  if (before && before.id > job.id) return false;
  lastResult.set(taskId, job);
  return true;
}

/** A job changed: its task's last result, and its next run once it has fired. */
export function showTaskJob(job) {
  if (job.taskId === null || job.taskId === undefined) return;
  const isNew = (lastResult.get(job.taskId)?.id ?? 0) < job.id;
  if (rememberResult(job.taskId, job)) {
    const cell = taskRows.get(job.taskId)?.querySelector('.last-result');
    if (cell) cell.replaceChildren(lastResultEl(job.taskId));
  }
  if (isNew && tasks.has(job.taskId)) refreshTaskSoon(job.taskId);
}

function setTasks(list) {
  tasks.clear();
  taskRows.clear();
  clear($('tasks-list'));
  for (const task of list) upsertTask(task);
  renderTasksEmpty();
}

function renderTasksEmpty() {
  const list = $('tasks-list');
  list.querySelector(':scope > .empty')?.remove();
  $('tasks-count').textContent = String(tasks.size);
  if (!tasks.size) list.append(h('li', {class: 'empty'}, 'No tasks yet. Add one below.'));
}

export function upsertTask(task) {
  tasks.set(task.id, task);
  const row = taskRow(task);
  const old = taskRows.get(task.id);
  taskRows.set(task.id, row);
  if (old) {
    old.replaceWith(row);
  } else {
    const list = $('tasks-list');
    const after = [...taskRows.keys()].filter((id) => id > task.id && id !== task.id)
      .sort((a, b) => a - b)[0];
    const next = after === undefined ? null : taskRows.get(after);
    list.insertBefore(row, next && next.isConnected ? next : null);
  }
  renderTasksEmpty();
}

export function removeTask(id) {
  tasks.delete(id);
  taskRows.get(id)?.remove();
  taskRows.delete(id);
  panels.delete(id);
  renderTasksEmpty();
}

/** Show *form* under task *id*'s row (replacing any other form there). */
export function openTaskPanel(id, form) {
  const row = taskRows.get(id);
  if (!row) return;
  row.querySelector(':scope > .task-panel')?.remove();
  panels.set(id, form);
  form.classList.add('task-panel');
  row.append(form);
  form.querySelector('input, textarea, select, button')?.focus();
}

export function closeTaskPanel(id, form = null) {
  const open = panels.get(id);
  if (!open || (form && open !== form)) return;
  panels.delete(id);
  open.remove();
}

function taskRow(task) {
  const actions = h('div', {class: 'task-actions'});
  const pausedNote = task.paused
    ? h('div', {class: 'pause-note'},
      h('span', {class: 'badge badge-paused'}, 'Paused'),
      task.pausedUntil ? h('span', {}, ' until ', timeEl(task.pausedUntil)) : h('span', {class: 'muted'}, ' until resumed'),
      task.pauseReason ? h('span', {class: 'pause-reason'}, ' — ', visible(task.pauseReason)) : null)
    : null;
  const row = h('li', {
    class: 'task', 'data-id': task.id, 'data-paused': task.paused ? 'true' : null,
    'data-editing': editingId() === task.id ? 'true' : null,
  },
  h('div', {class: 'task-body'},
    h('div', {class: 'task-main'},
      h('div', {class: 'task-title'},
        h('span', {class: 'task-name'}, visible(task.jobName)),
        h('span', {class: 'muted small'}, ` #${task.id}`),
        task.target && task.target !== 'any' ? h('span', {class: 'chip'}, visible(task.target)) : null,
        task.timezone ? h('span', {class: 'chip', title: 'Time zone of the schedule'}, visible(task.timezone)) : null,
        task.pool ? h('span', {class: 'chip', title: 'Pool'}, `pool ${visible(task.pool)}`) : null,
        task.skipNext ? h('span', {class: 'badge badge-skip'}, 'skips next run') : null),
      pausedNote,
      h('code', {class: 'task-command', title: visible(task.command)}, visible(task.command)),
      h('div', {class: 'task-schedule'},
        h('code', {class: 'cron'}, task.schedule),
        h('span', {class: 'task-desc'}, task.description || '')),
      h('dl', {class: 'task-meta'},
        h('div', {},
          h('dt', {}, task.paused ? 'Next run, once resumed' : 'Next run'),
          h('dd', {class: 'next-run'}, timeEl(task.nextRun, 'not scheduled'))),
        h('div', {}, h('dt', {}, 'Last result'), h('dd', {class: 'last-result'}, lastResultEl(task.id))))),
    actions));
  renderTaskActions(task, actions);
  const panel = panels.get(task.id);
  if (panel) row.append(panel);
  return row;
}

function lastResultEl(taskId) {
  const job = lastResult.get(taskId);
  if (!job) return h('span', {class: 'muted'}, 'not run yet');
  return h('a', {href: `#/jobs/${job.id}`, class: 'result-link'},
    statusBadge(job.status), ' ',
    h('span', {class: 'muted small'}, `#${job.id} `),
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
