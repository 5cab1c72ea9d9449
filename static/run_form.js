// The "Run a command now" form.  The command is a textarea: a pasted
// script keeps its newlines; Ctrl+Enter (or Cmd+Enter) runs it, and Enter
// on the Target choice submits the form as it would on a text field.

import {post} from './api.js';
import {$, enterSubmits, showError} from './dom.js';
import {jobChanged} from './job_events.js';
import {announceJobs} from './jobs.js';

export function setupRunForm() {
  const form = $('run-form');
  enterSubmits(form);
  $('run-command').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const command = $('run-command').value;
    if (!command.trim()) {
      showError('run-error', 'Enter a command to run.');
      $('run-command').setAttribute('aria-invalid', 'true');
      $('run-command').focus();
      return;
    }
    $('run-command').removeAttribute('aria-invalid');
    const body = {command, target: $('run-target').value || 'any'};
    const timeout = $('run-timeout').value.trim();
    if (timeout) {
      const seconds = Number(timeout);
      if (!(seconds > 0)) {
        showError('run-error', 'The timeout is a number of seconds above 0 (or leave it empty).');
        $('run-timeout').setAttribute('aria-invalid', 'true');
        $('run-timeout').focus();
        return;
      }
      body.timeout = seconds;
    }
    $('run-timeout').removeAttribute('aria-invalid');
    showError('run-error', null);
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const result = await post('/api/jobs', body);
      const jobs = Array.isArray(result) ? result : [result];
      jobs.forEach(jobChanged);
      $('run-command').value = '';
      if (jobs.length === 1) location.hash = `#/jobs/${jobs[0].id}`;
      else announceJobs(jobs, 'the command');
    } catch (error) {
      showError('run-error', error.message);
      $('run-command').focus();
    } finally {
      button.disabled = false;
    }
  });
}
