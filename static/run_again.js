// "Run again with the same inputs" on a job's page: a task's job runs its
// task again (POST /api/tasks/{id}/run) with the job's environment, working
// directory, timeout and target as overrides; a one-off job is posted again
// (POST /api/jobs).  Either way the new job's page opens.

import {ApiError, post} from './api.js';
import {h} from './dom.js';
import {jobChanged} from './job_events.js';
import {announceJobs} from './jobs.js';
import {taskById} from './tasks.js';
import {toast} from './toast.js';

/** What *job* ran with, as the run routes take it (only what it recorded). */
function inputs(job) {
  const body = {};
  if (job.env && Object.keys(job.env).length) body.env = job.env;
  if (job.cwd) body.cwd = job.cwd;
  if (job.timeout !== null && job.timeout !== undefined) body.timeout = job.timeout;
  if (job.target) body.target = job.target;
  return body;
}

async function runAgain(job) {
  const body = inputs(job);
  if (job.taskId !== null && job.taskId !== undefined) {
    const task = taskById(job.taskId);
    try {
      const result = await post(`/api/tasks/${job.taskId}/run`, body);
      if (task && task.command !== job.command) {
        toast(`The task's command has changed since job #${job.id}; the new run uses the current one.`);
      }
      return result;
    } catch (error) {
      // The task is gone: run the same command as a one-off instead.
      if (!(error instanceof ApiError && error.status === 404)) throw error;
      toast(`Task #${job.taskId} no longer exists; running the command as a one-off job.`);
    }
  }
  return post('/api/jobs', {command: job.command, ...body});
}

/** The button; *current* returns the job as the page shows it now. */
export function runAgainButton(current) {
  const button = h('button', {type: 'button', class: 'run-again', title: 'Same command, environment, working directory, timeout and target'},
    'Run again with the same inputs');
  button.addEventListener('click', async () => {
    const job = current();
    if (!job) return;
    button.disabled = true;
    try {
      const result = await runAgain(job);
      const started = Array.isArray(result) ? result : [result];
      started.forEach(jobChanged);
      if (started.length === 1) location.hash = `#/jobs/${started[0].id}`;
      else announceJobs(started, `job #${job.id} again`);
    } catch (error) {
      toast(`Could not run job #${job.id} again: ${error.message}`, {kind: 'error'});
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
