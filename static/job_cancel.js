// "Cancel" for a job that is queued or running, on the job's page and in
// Running now.  Once clicked, the job reads "cancelling…" until a record
// saying it finished arrives (the reply to the cancel says "still running":
// job_events.js keeps it from undoing a finish that came first).

import {ApiError, get, post} from './api.js';
import {h} from './dom.js';
import {jobChanged, newest} from './job_events.js';
import {isFinal} from './job_status.js';
import {toast} from './toast.js';

const cancelling = new Set(); // ids asked to cancel, not yet seen finished

/** Has a cancel been asked for this job, which has not finished yet? */
export function isCancelling(job) {
  if (isFinal(job.status)) {
    cancelling.delete(job.id);
    return false;
  }
  return cancelling.has(job.id);
}

export async function cancelJob(job) {
  cancelling.add(job.id);
  jobChanged({...newest(job)}); // redraw as "cancelling…" (the newest record seen, so never older)
  try {
    jobChanged(await post(`/api/jobs/${job.id}/cancel`));
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) {
      // It finished meanwhile: show how.
      try {
        jobChanged(await get(`/api/jobs/${job.id}`));
      } catch {
        // the feed brings it
      }
      return;
    }
    cancelling.delete(job.id);
    jobChanged({...newest(job)});
    toast(`Could not cancel job #${job.id}: ${error.message}`, {kind: 'error'});
  }
}

/** The button (*compact*: "Cancel" in a table row, else "Cancel job"). */
export function cancelButton(job, {compact = false} = {}) {
  const asked = isCancelling(job);
  const button = h('button', {type: 'button', class: 'cancel danger-quiet', 'data-action': 'cancel', 'data-needs': 'run', disabled: asked},
    asked ? 'Cancelling…' : (compact ? 'Cancel' : 'Cancel job'),
    compact ? h('span', {class: 'visually-hidden'}, ` job ${job.id}`) : null);
  button.addEventListener('click', () => {
    button.disabled = true;
    cancelJob(job);
  });
  return button;
}
