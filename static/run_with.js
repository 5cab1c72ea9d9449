// "Run with…": run a task once now with other inputs (environment, working
// directory, timeout, target), through POST /api/tasks/{id}/run's overrides.
// The form starts from the task's own; only what differs is sent.

import {h, visible} from './dom.js';
import {runTask} from './task_actions.js';
import {FieldError, envText, parseEnv, same} from './task_fields.js';
import {closeTaskPanel} from './task_panel.js';
import {renderTargetChoices} from './workers.js';

let forms = 0;

export function runWithForm(task) {
  const n = ++forms;
  const env = h('textarea', {id: `runwith-env-${n}`, class: 'mono', rows: 3, spellcheck: 'false', placeholder: 'KEY=value'});
  env.value = envText(task.env);
  const cwd = h('input', {id: `runwith-cwd-${n}`, class: 'mono', type: 'text', autocomplete: 'off', placeholder: "the worker's"});
  cwd.value = task.cwd || '';
  const timeout = h('input', {id: `runwith-timeout-${n}`, type: 'number', min: 0, step: 'any', inputmode: 'decimal', placeholder: 'none'});
  timeout.value = task.timeout ?? '';
  const target = h('select', {id: `runwith-target-${n}`, class: 'target-select'}, h('option', {value: task.target}, task.target));
  const error = h('p', {class: 'form-error', role: 'alert', hidden: true});
  const cancel = h('button', {type: 'button'}, 'Cancel');
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Run once');
  const form = h('form', {class: 'form panel-form', novalidate: true, 'aria-label': `Run ${visible(task.jobName)} with other inputs`},
    h('h3', {}, `Run ${visible(task.jobName)} once with…`),
    h('p', {class: 'muted small'}, 'Changes here apply to this run only; the task keeps its own settings.'),
    h('div', {class: 'field'},
      h('label', {for: env.id}, 'Environment ', h('span', {class: 'optional'}, '(KEY=value, one a line)')), env),
    h('div', {class: 'field-row'},
      h('div', {class: 'field field-wide'}, h('label', {for: cwd.id}, 'Working directory'), cwd),
      h('div', {class: 'field field-narrow'}, h('label', {for: timeout.id}, 'Timeout (s)'), timeout),
      h('div', {class: 'field'}, h('label', {for: target.id}, 'Target'), target)),
    error,
    h('div', {class: 'actions'}, cancel, submit));
  // Fill the target choices once the select is on the page.
  queueMicrotask(renderTargetChoices);

  const fail = (message) => {
    error.textContent = message;
    error.hidden = false;
  };
  cancel.addEventListener('click', () => closeTaskPanel(task.id, form));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const overrides = {};
    try {
      const wanted = parseEnv(env.value);
      if (!same(wanted, task.env || {})) overrides.env = wanted;
    } catch (problem) {
      if (!(problem instanceof FieldError)) throw problem;
      fail(problem.message);
      env.focus();
      return;
    }
    if (cwd.value.trim() && cwd.value !== (task.cwd || '')) overrides.cwd = cwd.value;
    if (timeout.value.trim()) {
      const seconds = Number(timeout.value);
      if (!(seconds > 0)) {
        fail('The timeout is a number of seconds above 0 (or leave it empty).');
        timeout.focus();
        return;
      }
      if (seconds !== task.timeout) overrides.timeout = seconds;
    }
    if (target.value && target.value !== task.target) overrides.target = target.value;
    submit.disabled = true;
    try {
      await runTask(task, overrides);
      closeTaskPanel(task.id, form);
    } catch (problem) {
      fail(problem.message);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
