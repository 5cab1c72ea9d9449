// The "Add a task" form, which checks the schedule while it is typed.

import {get, post, query} from './api.js';
import {$, debounce, h, showError, timeEl} from './dom.js';
import {upsertTask} from './tasks.js';
import {toast} from './toast.js';

export function setupTaskForm() {
  const form = $('task-form');
  const schedule = $('task-schedule');
  const hint = $('schedule-hint');
  const defaultHint = [...hint.childNodes].map((n) => n.cloneNode(true));
  let checks = 0;

  const resetHint = () => {
    hint.dataset.state = '';
    hint.replaceChildren(...defaultHint.map((n) => n.cloneNode(true)));
    schedule.removeAttribute('aria-invalid');
  };

  const check = debounce(async () => {
    const expr = schedule.value.trim();
    const mine = ++checks;
    if (!expr) {
      resetHint();
      return;
    }
    try {
      const result = await get(`/api/schedules/check${query({expr})}`);
      if (mine !== checks) return;
      if (result.valid) {
        hint.dataset.state = 'valid';
        schedule.setAttribute('aria-invalid', 'false');
        hint.replaceChildren(
          h('span', {class: 'hint-ok'}, '✓ ', result.description),
          h('span', {class: 'hint-next'}, ' · next: ',
            result.next.map((iso, i) => [i ? ', ' : '', timeEl(iso)])));
      } else {
        hint.dataset.state = 'invalid';
        schedule.setAttribute('aria-invalid', 'true');
        hint.replaceChildren(h('span', {class: 'hint-error'}, result.error));
      }
    } catch (error) {
      if (mine !== checks) return;
      hint.dataset.state = 'invalid';
      hint.replaceChildren(h('span', {class: 'hint-error'}, `Could not check the schedule: ${error.message}`));
    }
  }, 300);

  schedule.addEventListener('input', () => {
    checks++; // any answer in flight is for older text
    hint.dataset.state = 'checking';
    check();
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {
      schedule: schedule.value.trim(),
      command: $('task-command').value,
      target: $('task-target').value || 'any',
    };
    const name = $('task-name').value.trim();
    if (name) body.jobName = name;
    if (!body.schedule || !body.command.trim()) {
      showError('task-error', 'A task needs a schedule and a command.');
      (body.schedule ? $('task-command') : schedule).focus();
      return;
    }
    showError('task-error', null);
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const task = await post('/api/tasks', body);
      upsertTask(task);
      for (const id of ['task-schedule', 'task-command', 'task-name']) $(id).value = '';
      check.cancel();
      checks++;
      resetHint();
      toast(`Added ${task.jobName}: ${task.description}.`);
    } catch (error) {
      showError('task-error', error.message);
    } finally {
      button.disabled = false;
    }
  });
}
