// A task's buttons in the Tasks panel: Run now, Run with..., Pause... or
// Resume, Skip next (or keep it), Edit, History and Delete (which asks first).

import {ApiError, del, patch, post} from './api.js';
import {h} from './dom.js';
import {jobChanged} from './job_events.js';
import {announceJobs} from './jobs.js';
import {runWithForm} from './run_with.js';
import {editTask} from './task_form.js';
import {pauseForm} from './task_pause.js';
import {openTaskPanel, removeTask, upsertTask} from './tasks.js';
import {toast} from './toast.js';

function button(text, label, onClick, extra = {}) {
  const el = h('button', {type: 'button', 'aria-label': label, ...extra}, text);
  el.addEventListener('click', () => onClick(el));
  return el;
}

/** Run *fn* with *el* disabled; a failure becomes an error notice "Could not <what>: ...". */
async function busy(el, what, fn) {
  el.disabled = true;
  try {
    await fn();
  } catch (error) {
    toast(`Could not ${what}: ${error.message}`, {kind: 'error'});
  } finally {
    el.disabled = false;
  }
}

/** POST /api/tasks/{id}/run (with *overrides*), and say which jobs started. */
export async function runTask(task, overrides) {
  const result = await post(`/api/tasks/${task.id}/run`, overrides);
  const started = Array.isArray(result) ? result : [result];
  started.forEach(jobChanged);
  announceJobs(started, task.jobName);
  return started;
}

export function renderTaskActions(task, actions) {
  const name = task.jobName;
  // data-needs: hidden when the token lacks that scope (access.js).
  const run = button('Run now', `Run ${name} now`, (el) => busy(el, `run ${name}`, () => runTask(task)),
    {'data-needs': 'run'});
  const runWith = button('Run with…', `Run ${name} with other inputs`,
    () => openTaskPanel(task.id, runWithForm(task)), {'data-needs': 'run'});
  const pause = task.paused
    ? button('Resume', `Resume ${name}`, (el) => busy(el, `resume ${name}`, async () => {
      upsertTask(await post(`/api/tasks/${task.id}/resume`));
      toast(`Resumed ${name}.`);
    }), {'data-needs': 'write'})
    : button('Pause…', `Pause ${name}`, () => openTaskPanel(task.id, pauseForm(task)), {'data-needs': 'write'});
  const skip = button(task.skipNext ? 'Don’t skip' : 'Skip next',
    task.skipNext ? `Run ${name}'s next run after all` : `Skip ${name}'s next run`,
    (el) => busy(el, `change ${name}`, async () => {
      const {data} = await patch(`/api/tasks/${task.id}`, {skipNext: !task.skipNext});
      upsertTask(data);
      toast(data.skipNext ? `${name} skips its next run only.` : `${name} runs next time as usual.`);
    }), {'aria-pressed': task.skipNext ? 'true' : 'false', 'data-needs': 'write'});
  const edit = button('Edit', `Edit ${name}`, () => editTask(task.id), {'data-needs': 'write'});
  const history = h('a', {href: `#/tasks/${task.id}/history`, class: 'button-link', 'aria-label': `History of ${name}`},
    'History');
  const remove = button('Delete', `Delete ${name}`, () => confirmDelete(task, actions), {class: 'danger-quiet', 'data-needs': 'write'});
  actions.replaceChildren(run, runWith, pause, skip, edit, history, remove);
}

function confirmDelete(task, actions) {
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
}
