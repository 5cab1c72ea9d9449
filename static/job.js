// A job's page (#/jobs/<id>): its details, a Cancel button while it runs,
// and its output, the log so far and then the live feed's output events.

import {ApiError, get, post, request} from './api.js';
import {$, formatDuration, h, show, timeEl, visible} from './dom.js';
import {jobChanged} from './job_events.js';
import {isFinal, statusBadge} from './job_status.js';
import {notStarted} from './jobs.js';
import {runAgainButton} from './run_again.js';
import {taskById} from './tasks.js';
import {toast} from './toast.js';
import {triggerText} from './triggers.js';

const OUTPUT_CAP = 2_000_000; // characters kept in the output box

let feed = null;

const jobView = {
  id: null,
  job: null,
  seq: 0, // highest output seq shown
  loading: false,
  buffer: [], // output events that arrived while the log was loading
  fromEvent: null,
  load: 0,
  size: 0,
  follow: true,
};

/** The live feed whose state the page reports ("live", "paused"). */
export function setupJobPage(liveFeed) {
  feed = liveFeed;
}

/** Build the page for job *id* (empty until loadJobPage). */
export function openJobPage(id) {
  Object.assign(jobView, {id, job: null, seq: 0, loading: false, buffer: [], fromEvent: null, size: 0, follow: true});
  buildJobView(id);
}

export function closeJobPage() {
  jobView.id = null;
  jobView.load++;
}

/** The live feed went down or came back. */
export function feedStateChanged() {
  if (jobView.id !== null) setOutputState();
}

function buildJobView(id) {
  const output = h('pre', {id: 'output', class: 'output', tabindex: 0, 'aria-label': `Output of job ${id}`});
  const jump = h('button', {type: 'button', id: 'jump-end', class: 'jump', hidden: true}, 'Jump to end ↓');
  output.addEventListener('scroll', () => {
    jobView.follow = atEnd(output);
    if (jobView.follow) show(jump, false);
  });
  jump.addEventListener('click', () => {
    output.scrollTop = output.scrollHeight;
    jobView.follow = true;
    show(jump, false);
    output.focus();
  });
  $('job-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: '#/'}, '← Dashboard')),
    h('section', {class: 'card', 'aria-labelledby': 'job-title'},
      h('div', {class: 'job-head'},
        h('h2', {id: 'job-title'}, `Job #${id}`),
        h('span', {id: 'job-status'}),
        h('div', {id: 'job-actions', class: 'job-actions'})),
      h('p', {id: 'job-error', class: 'panel-error', role: 'alert', hidden: true}),
      h('dl', {id: 'job-details', class: 'details'}, h('div', {}, h('dt', {}, 'Loading…')))),
    h('section', {class: 'card output-card', 'aria-labelledby': 'output-title'},
      h('div', {class: 'card-head'},
        h('h2', {id: 'output-title'}, 'Output'),
        h('span', {id: 'output-state', class: 'muted small'})),
      h('div', {class: 'output-wrap'}, output, jump)));
}

/** Load the open job's details and log (nothing when no job page is open). */
export async function loadJobPage() {
  const id = jobView.id;
  if (id === null) return;
  const mine = ++jobView.load;
  jobView.loading = true;
  jobView.buffer = [];
  jobView.fromEvent = null;
  try {
    const [data, log] = await Promise.all([
      get(`/api/jobs/${id}`),
      request('GET', `/api/jobs/${id}/log`, {headers: {Accept: 'text/plain'}}),
    ]);
    const text = await log.text();
    if (mine !== jobView.load) return;
    show($('job-error'), false);
    renderJobDetails(jobView.fromEvent || data);
    setOutput(text);
    // Output events that came in while the log was on its way: skip what the
    // log already holds.  X-Output-Seq (if the server sends it) says exactly;
    // otherwise match the chunks against the end of the log.
    const buffered = jobView.buffer.sort((a, b) => a.seq - b.seq);
    const header = log.headers.get('X-Output-Seq');
    jobView.seq = header !== null && /^\d+$/.test(header) ? Number(header) : overlap(text, buffered);
    jobView.loading = false;
    jobView.buffer = [];
    for (const chunk of buffered) showOutput(chunk);
  } catch (error) {
    if (mine !== jobView.load) return;
    jobView.loading = false;
    const message = error instanceof ApiError && error.status === 404
      ? `There is no job #${id}.`
      : `Could not load job #${id}: ${error.message}`;
    $('job-error').textContent = message;
    show($('job-error'), true);
    if (!jobView.job) $('job-details').replaceChildren();
  }
}

/** The seq of the last buffered chunk that the log text already ends with. */
function overlap(text, chunks) {
  for (let last = chunks.length - 1; last >= 0; last--) {
    const joined = chunks.slice(0, last + 1).map((c) => c.data).join('');
    if (joined && text.endsWith(joined)) return chunks[last].seq;
  }
  return 0;
}

/** A job changed: if it is this page's, show it. */
export function showPageJob(job) {
  if (jobView.id === job.id) {
    if (jobView.loading) jobView.fromEvent = job;
    renderJobDetails(job);
  }
}

function renderJobDetails(data) {
  if (jobView.id !== data.id) return;
  jobView.job = data;
  $('job-status').replaceChildren(statusBadge(data.status));
  const task = data.taskId !== null ? taskById(data.taskId) : null;
  const rows = [
    ['Command', h('code', {id: 'job-command', class: 'wrap'}, visible(data.command))],
    ['Worker', data.worker ? visible(data.worker) : h('span', {class: 'muted'}, 'not assigned yet')],
    ['Target', visible(data.target)],
    data.taskId !== null && ['Task', task ? `${visible(task.jobName)} (#${data.taskId})` : `#${data.taskId}`],
    data.exitCode !== null && ['Exit code', String(data.exitCode)],
    data.signal !== null && data.signal !== undefined && ['Signal', String(data.signal)],
    data.triggeredBy && ['Triggered by', triggerText(data.triggeredBy)],
    data.reason && ['Reason', data.reason],
    data.waiting && ['Waiting', data.waiting],
    data.attempt > 1 && ['Attempt', String(data.attempt)],
    ['Created', timeEl(data.createdAt)],
    data.scheduledAt && ['Scheduled for', timeEl(data.scheduledAt)],
    ['Started', timeEl(data.startedAt, notStarted(data.status, 'waiting for a worker'))],
    ['Finished', timeEl(data.finishedAt, isFinal(data.status) ? '—' : 'still running')],
    ['Duration', formatDuration(data.duration)],
    data.timeout !== null && data.timeout !== undefined && ['Timeout', `${data.timeout} s`],
    data.cwd && ['Working directory', h('code', {}, data.cwd)],
  ].filter(Boolean);
  $('job-details').replaceChildren(...rows.map(([term, value]) =>
    h('div', {}, h('dt', {}, term), h('dd', {}, value))));

  const actions = $('job-actions');
  if (!isFinal(data.status)) {
    if (!actions.querySelector('.cancel')) {
      const cancel = h('button', {type: 'button', class: 'cancel danger-quiet'}, 'Cancel job');
      cancel.addEventListener('click', async () => {
        cancel.disabled = true;
        try {
          jobChanged(await post(`/api/jobs/${data.id}/cancel`));
        } catch (error) {
          toast(`Could not cancel job #${data.id}: ${error.message}`, {kind: 'error'});
          cancel.disabled = false;
        }
      });
      actions.prepend(cancel);
    }
  } else {
    actions.querySelector('.cancel')?.remove();
  }
  if (!actions.querySelector('.run-again')) actions.append(runAgainButton(() => jobView.job));
  setOutputState();
}

function setOutputState() {
  const el = $('output-state');
  if (!el || !jobView.job) return;
  const status = jobView.job.status;
  if (isFinal(status)) el.textContent = 'finished';
  else if (feed.phase !== 'open') el.textContent = 'live view paused: reconnecting';
  else el.textContent = status === 'queued' ? 'waiting for a worker' : 'live';
}

function atEnd(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 8;
}

function setOutput(text) {
  const output = $('output');
  output.replaceChildren();
  jobView.size = 0;
  if (text) appendOutput('log', text, true);
  output.scrollTop = output.scrollHeight;
  jobView.follow = true;
  show($('jump-end'), false);
}

/** An output event from the live feed. */
export function showOutput(chunk) {
  if (jobView.id !== chunk.job) return;
  if (jobView.loading) {
    jobView.buffer.push(chunk);
    return;
  }
  if (chunk.seq <= jobView.seq) return; // shown already
  jobView.seq = chunk.seq;
  appendOutput(chunk.stream, chunk.data);
}

function appendOutput(stream, data, initial = false) {
  const output = $('output');
  if (!output) return;
  const follow = initial || atEnd(output);
  const last = output.lastElementChild;
  if (last && last.dataset.stream === stream) {
    last.firstChild.appendData(data);
  } else {
    output.append(h('span', {class: `stream-${stream}`, 'data-stream': stream}, data));
  }
  jobView.size += data.length;
  while (jobView.size > OUTPUT_CAP && output.childElementCount > 1) {
    jobView.size -= output.firstElementChild.textContent.length;
    output.firstElementChild.remove();
  }
  if (follow) {
    output.scrollTop = output.scrollHeight;
  } else {
    show($('jump-end'), true);
  }
}
