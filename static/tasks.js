// The Tasks panel: each task with its schedule, next run and last result,
// and its Run now and Delete buttons.

import {ApiError, del, get, post, query} from './api.js';
import {$, clear, debounce, h, showError, timeEl, visible} from './dom.js';
import {jobChanged} from './job_events.js';
import {statusBadge} from './job_status.js';
import {announceJobs} from './jobs.js';
import {toast} from './toast.js';

const tasks = new Map(); // id -> task
const taskRows = new Map(); // id -> <li>
const lastResult = new Map(); // task id -> newest job of that task

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
  const job = lastResult.get(taskId);
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
      const started = Array.isArray(result) ? result : [result];
      started.forEach(jobChanged);
      announceJobs(started, `${task.jobName}`);
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
