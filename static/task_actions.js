// A task's buttons: in the Tasks table "Run now" and "Edit"; on the task's
// page also Run with..., Pause... or Resume, Skip next (or keep it), History,
// Audit (its entries in the audit log) and Delete (which asks first).  Each button's accessible name starts with
// its visible text and ends with the task's name ("Run now backup").
// Each names the scope it needs in data-needs, and is hidden when the
// token lacks it (access.js); History and Audit need only reading.

import {ApiError, del, patch, post} from './api.js';
import {h, visible} from './dom.js';
import {jobChanged} from './job_events.js';
import {announceJobs} from './jobs.js';
import {runWithForm} from './run_with.js';
import {editTask} from './task_form.js';
import {openTaskPanel} from './task_panel.js';
import {pauseForm} from './task_pause.js';
import {removeTask, upsertTask} from './tasks.js';
import {toast} from './toast.js';

function button(key, text, name, onClick, extra = {}) {
  const el = h('button', {type: 'button', 'data-action': key, ...extra},
    text, h('span', {class: 'visually-hidden'}, ` ${name}`));
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
  announceJobs(started, visible(task.jobName));
  return started;
}

export function renderTaskActions(task, actions, {compact = false} = {}) {
  const name = visible(task.jobName);
  const run = button('run', 'Run now', name, (el) => busy(el, `run ${name}`, () => runTask(task)), {'data-needs': 'run'});
  const edit = button('edit', 'Edit', name, () => editTask(task.id), {'data-needs': 'write'});
  if (compact) {
    actions.replaceChildren(run, edit);
    return;
  }
  const runWith = button('run-with', 'Run with…', name, () => openTaskPanel(task.id, runWithForm(task)), {'data-needs': 'run'});
  const pause = task.paused
    ? button('resume', 'Resume', name, (el) => busy(el, `resume ${name}`, async () => {
      upsertTask(await post(`/api/tasks/${task.id}/resume`));
      toast(`Resumed ${name}.`);
    }), {'data-needs': 'write'})
    : button('pause', 'Pause…', name, () => openTaskPanel(task.id, pauseForm(task)), {'data-needs': 'write'});
  const skip = button('skip', task.skipNext ? 'Don’t skip' : 'Skip next', `${name}'s next run`,
    (el) => busy(el, `change ${name}`, async () => {
      const {data} = await patch(`/api/tasks/${task.id}`, {skipNext: !task.skipNext});
      upsertTask(data);
      toast(data.skipNext ? `${name} skips its next run only.` : `${name} runs next time as usual.`);
    }), {'aria-pressed': task.skipNext ? 'true' : 'false', 'data-needs': 'write'});
  const history = h('a', {href: `#/tasks/${task.id}/history`, class: 'button-link', 'data-action': 'history'},
    'History', h('span', {class: 'visually-hidden'}, ` of ${name}`));
  const audit = h('a', {href: `#/audit?task=${task.id}`, class: 'button-link', 'data-action': 'audit', 'data-needs': 'read'},
    'Audit', h('span', {class: 'visually-hidden'}, ` log of ${name}`));
  const remove = button('delete', 'Delete', name, () => confirmDelete(task, actions), {class: 'danger-quiet', 'data-needs': 'write'});
  actions.replaceChildren(run, runWith, pause, skip, edit, history, audit, remove);
}

function confirmDelete(task, actions) {
  const yes = h('button', {type: 'button', class: 'danger'}, 'Delete');
  const no = h('button', {type: 'button'}, 'Cancel');
  const question = h('div', {class: 'confirm', role: 'group', 'aria-label': `Confirm deleting ${visible(task.jobName)}`},
    h('span', {}, `Delete ${visible(task.jobName)}?`), yes, no);
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
      toast(`Deleted ${visible(task.jobName)}.`);
      location.hash = '#/';
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) removeTask(task.id);
      else {
        toast(`Could not delete ${visible(task.jobName)}: ${error.message}`, {kind: 'error'});
        renderTaskActions(task, actions);
      }
    }
  });
  no.focus();
}
