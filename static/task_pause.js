// "Pause…": the small form under a task's row, with an optional time to
// resume at (the task then resumes by itself) and an optional reason.

import {post} from './api.js';
import {h, visible} from './dom.js';
import {closeTaskPanel} from './task_panel.js';
import {upsertTask} from './tasks.js';
import {toast} from './toast.js';

let forms = 0;

export function pauseForm(task) {
  const n = ++forms;
  const until = h('input', {id: `pause-until-${n}`, type: 'datetime-local', name: 'until'});
  const reason = h('input', {
    id: `pause-reason-${n}`, type: 'text', name: 'reason', maxlength: 200, autocomplete: 'off',
    placeholder: 'e.g. database migration',
  });
  const error = h('p', {class: 'form-error', role: 'alert', hidden: true});
  const cancel = h('button', {type: 'button'}, 'Cancel');
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Pause');
  const form = h('form', {class: 'form panel-form', novalidate: true, 'aria-label': `Pause ${visible(task.jobName)}`},
    h('h3', {}, `Pause ${visible(task.jobName)}`),
    h('p', {class: 'muted small'}, 'It does not fire while paused; its next run stays computed for when it resumes.'),
    h('div', {class: 'field-row'},
      h('div', {class: 'field'},
        h('label', {for: until.id}, 'Resume by itself at ', h('span', {class: 'optional'}, '(optional)')), until),
      h('div', {class: 'field field-wide'},
        h('label', {for: reason.id}, 'Reason ', h('span', {class: 'optional'}, '(optional)')), reason)),
    error,
    h('div', {class: 'actions'}, cancel, submit));

  const fail = (message) => {
    error.textContent = message;
    error.hidden = false;
  };
  cancel.addEventListener('click', () => closeTaskPanel(task.id, form));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {};
    if (until.value) {
      const at = new Date(until.value); // the browser's local time
      if (Number.isNaN(at.getTime())) return fail('Enter a date and time to resume at, or leave it empty.');
      if (at <= new Date()) return fail('The time to resume at is already past.');
      body.until = at.toISOString();
    }
    if (reason.value.trim()) body.reason = reason.value.trim();
    submit.disabled = true;
    try {
      const paused = await post(`/api/tasks/${task.id}/pause`, body);
      closeTaskPanel(task.id, form);
      upsertTask(paused);
      toast(`Paused ${visible(paused.jobName)}${body.until ? ' until the time set' : ''}.`);
    } catch (problem) {
      fail(problem.message);
    } finally {
      submit.disabled = false;
    }
    return undefined;
  });
  return form;
}
