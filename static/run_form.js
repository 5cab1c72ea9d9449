// The "Run a command now" form.

import {post} from './api.js';
import {$, showError} from './dom.js';
import {jobChanged} from './job_events.js';
import {announceJobs} from './jobs.js';

export function setupRunForm() {
  const form = $('run-form');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const command = $('run-command').value;
    if (!command.trim()) {
      showError('run-error', 'Enter a command to run.');
      $('run-command').focus();
      return;
    }
    const body = {command, target: $('run-target').value || 'any'};
    const timeout = $('run-timeout').value.trim();
    if (timeout) {
      const seconds = Number(timeout);
      if (!(seconds > 0)) {
        showError('run-error', 'The timeout is a number of seconds above 0 (or leave it empty).');
        $('run-timeout').focus();
        return;
      }
      body.timeout = seconds;
    }
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
    } finally {
      button.disabled = false;
    }
  });
}
