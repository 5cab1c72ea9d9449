// "Run again with the same inputs" on a job's page: POST /api/jobs/{id}/rerun
// runs the job's own command again with what it ran with (environment
// included, which the job JSON does not show), for its task if it had one.
// The new job's page opens.

import {post} from './api.js';
import {h} from './dom.js';
import {jobChanged} from './job_events.js';
import {toast} from './toast.js';

function runAgain(job) {
  return post(`/api/jobs/${job.id}/rerun`, {});
}

/** The button; *current* returns the job as the page shows it now. */
export function runAgainButton(current) {
  const button = h('button', {type: 'button', class: 'run-again', 'data-needs': 'run',
    title: 'Same command, environment, working directory, timeout and target'},
    'Run again with the same inputs');
  button.addEventListener('click', async () => {
    const job = current();
    if (!job) return;
    button.disabled = true;
    try {
      const started = await runAgain(job);
      jobChanged(started);
      location.hash = `#/jobs/${started.id}`;
    } catch (error) {
      toast(`Could not run job #${job.id} again: ${error.message}`, {kind: 'error'});
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
