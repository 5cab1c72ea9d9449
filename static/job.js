// A job's page (#/jobs/<id>): its details, Cancel while it runs, and its
// output: the log so far, then the output events of a feed of its own
// (/api/events?job=N), opened when the page opens so the dashboard's feed
// never reconnects for it.  The output box (job_output.js) has wrap,
// search, copy and download; a polite live region says when the status
// changes.

import {ApiError, get, request} from './api.js';
import {$, formatDuration, h, show, timeEl, visible, visibleLines} from './dom.js';
import {startClocks} from './elapsed.js';
import {Feed} from './feed.js';
import {cancelButton, isCancelling} from './job_cancel.js';
import {newest} from './job_events.js';
import {OutputView, highlight} from './job_output.js';
import {isFinal, statusBadge, statusText} from './job_status.js';
import {notStarted, taskLink} from './jobs.js';
import {runAgainButton} from './run_again.js';
import {triggerText} from './triggers.js';

const jobView = {
  id: null,
  job: null,
  seq: 0, // highest output seq shown
  loading: false,
  buffer: [], // output events that arrived while the log was loading
  fromEvent: null,
  load: 0,
  output: null,
  feed: null,
  said: null, // the status last announced
  matches: [],
  match: -1,
};

/** Build the page for job *id*, open its output feed and load it. */
export function openJobPage(id, backHref) {
  closeJobPage();
  Object.assign(jobView, {id, job: null, seq: 0, loading: false, buffer: [], fromEvent: null, said: null,
    matches: [], match: -1});
  buildJobView(id, backHref);
  const mine = jobView.load;
  const feed = new Feed({
    onEvent: (name, data) => {
      if (name === 'output') showOutput(data);
    },
    // The log is read once the feed is subscribed, so no output falls between them.
    onOpen: () => {
      if (mine === jobView.load) loadJobPage();
      setOutputState();
    },
    onDown: () => setOutputState(),
  });
  feed.job = id;
  jobView.feed = feed;
  feed.start();
}

export function closeJobPage() {
  jobView.id = null;
  jobView.load++;
  jobView.feed?.stop();
  jobView.feed = null;
  highlight([], null);
}

function toolButton(text, attrs, onClick) {
  const button = h('button', {type: 'button', class: 'tool', ...attrs}, text);
  button.addEventListener('click', () => onClick(button));
  return button;
}

function buildJobView(id, backHref) {
  const box = h('div', {id: 'output', class: 'output', tabindex: 0, role: 'region', 'aria-label': `Output text of job ${id}`});
  const jump = h('button', {type: 'button', id: 'jump-end', class: 'jump', hidden: true}, 'Jump to end ↓');
  const trimmed = h('p', {id: 'output-trimmed', class: 'muted small', hidden: true});
  jobView.output = new OutputView(box, {
    onFollowChange: (follow) => show(jump, !follow),
    onTrim: (chars) => {
      trimmed.textContent = `The first ${chars.toLocaleString()} characters are no longer shown here; Download has them all.`;
      show(trimmed, true);
    },
  });
  jump.addEventListener('click', () => {
    jobView.output.toEnd();
    box.focus();
  });
  const search = h('input', {id: 'output-search', type: 'search', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'Find in output'});
  const found = h('span', {id: 'output-found', class: 'muted small', 'aria-live': 'polite'});
  search.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') {
      event.preventDefault();
      findNext(search.value, event.shiftKey ? -1 : 1);
    }
  });
  search.addEventListener('input', () => {
    jobView.matches = [];
    jobView.match = -1;
    found.textContent = '';
    highlight([], null);
  });
  const wrap = toolButton('Wrap lines', {id: 'output-wrap', 'aria-pressed': 'false'}, (button) => {
    const on = button.getAttribute('aria-pressed') !== 'true';
    button.setAttribute('aria-pressed', on ? 'true' : 'false');
    box.classList.toggle('wrap', on);
  });
  const copy = toolButton('Copy', {id: 'output-copy'}, async () => {
    try {
      await navigator.clipboard.writeText(jobView.output.text());
      say('Output copied.');
    } catch {
      say('Could not copy: this browser does not allow it here.');
    }
  });
  const download = toolButton('Download', {id: 'output-download'}, downloadLog);

  $('job-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: backHref}, '← Dashboard')),
    h('section', {class: 'card', 'aria-labelledby': 'job-title'},
      h('div', {class: 'job-head'},
        h('h1', {id: 'job-title', class: 'view-title', tabindex: -1}, `Job #${id}`),
        h('span', {id: 'job-status'}),
        h('span', {id: 'job-elapsed', class: 'muted small'}),
        h('div', {id: 'job-actions', class: 'job-actions'})),
      h('p', {id: 'job-error', class: 'panel-error', role: 'alert', hidden: true}),
      h('dl', {id: 'job-details', class: 'details'}, h('div', {}, h('dt', {}, 'Loading…')))),
    h('section', {class: 'card output-card', 'aria-labelledby': 'output-title'},
      h('div', {class: 'card-head'},
        h('h2', {id: 'output-title'}, 'Output'),
        h('span', {id: 'output-state', class: 'muted small'}),
        h('div', {class: 'output-tools'},
          h('label', {for: 'output-search', class: 'visually-hidden'}, 'Find in output'),
          search, found, wrap, copy, download)),
      trimmed,
      h('div', {class: 'output-wrap'}, box, jump)));
}

function say(text) {
  $('announce').textContent = text;
}

function findNext(needle, step) {
  const found = $('output-found');
  jobView.output.drain();
  if (!jobView.matches.length || jobView.needle !== needle) {
    jobView.needle = needle;
    jobView.matches = jobView.output.find(needle);
    jobView.match = step > 0 ? -1 : 0;
  }
  const {matches} = jobView;
  if (!matches.length) {
    found.textContent = needle ? 'no match' : '';
    highlight([], null);
    return;
  }
  jobView.match = (jobView.match + step + matches.length) % matches.length;
  const current = matches[jobView.match];
  highlight(matches, current);
  found.textContent = `${jobView.match + 1} of ${matches.length}${matches.length >= 1000 ? '+' : ''}`;
  const block = current.startContainer.parentElement.closest('.out-block');
  if (block) {
    const box = $('output');
    const rect = current.getBoundingClientRect();
    const boxRect = box.getBoundingClientRect();
    box.scrollTop += rect.top - boxRect.top - box.clientHeight / 2;
  }
}

async function downloadLog() {
  const id = jobView.id;
  let text;
  try {
    const response = await request('GET', `/api/jobs/${id}/log`, {headers: {Accept: 'text/plain'}});
    text = await response.text();
  } catch {
    text = jobView.output.text(); // what the page has, then
  }
  const url = URL.createObjectURL(new Blob([text], {type: 'text/plain'}));
  const link = h('a', {href: url, download: `job-${id}.log`, hidden: true});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
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
    // A finished job's stored output keeps stderr apart (the log is one text).
    const parts = isFinal(data.status) ? await storedParts(id) : null;
    if (mine !== jobView.load) return;
    show($('job-error'), false);
    renderJobDetails(newest(jobView.fromEvent || data));
    if (parts) jobView.output.loadParts(parts.parts, parts.dropped);
    else jobView.output.load(text);
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

/** GET /api/jobs/{id}/output, or null where it cannot be had (the plain log is shown then). */
async function storedParts(id) {
  try {
    const stored = await get(`/api/jobs/${id}/output`);
    return stored && Array.isArray(stored.parts) ? stored : null;
  } catch {
    return null;
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
  const cancelling = isCancelling(data);
  $('job-status').replaceChildren(cancelling
    ? h('span', {class: 'badge', 'data-status': 'cancelling'}, 'cancelling…')
    : statusBadge(data.status));
  const spoken = cancelling ? 'cancelling' : statusText(data.status);
  if (jobView.said !== null && jobView.said !== spoken) say(`Job #${data.id} is ${spoken}.`);
  jobView.said = spoken;
  const elapsed = $('job-elapsed');
  if (!isFinal(data.status) && data.startedAt) {
    elapsed.replaceChildren('running for ', h('span', {class: 'elapsed', 'data-since': data.startedAt}));
    startClocks();
  } else {
    elapsed.replaceChildren();
  }
  const rows = [
    ['Command', h('code', {id: 'job-command', class: 'wrap'}, visibleLines(data.command))],
    ['Worker', data.worker ? visible(data.worker) : h('span', {class: 'muted'}, 'not assigned yet')],
    ['Target', visible(data.target)],
    ['Task', taskLink(data.taskId)],
    data.exitCode !== null && data.exitCode !== undefined && ['Exit code', String(data.exitCode)],
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
  const old = actions.querySelector('.cancel');
  const hadFocus = old && old === document.activeElement;
  old?.remove();
  if (!isFinal(data.status)) {
    const cancel = cancelButton(data);
    actions.prepend(cancel);
    if (hadFocus) cancel.focus();
  } else if (hadFocus) {
    $('job-title').focus();
  }
  if (!actions.querySelector('.run-again')) actions.append(runAgainButton(() => jobView.job));
  if (isFinal(data.status)) jobView.output.flush();
  setOutputState();
}

function setOutputState() {
  const el = $('output-state');
  if (!el || !jobView.job) return;
  const status = jobView.job.status;
  if (isFinal(status)) el.textContent = 'finished';
  else if (!jobView.feed || jobView.feed.phase !== 'open') el.textContent = 'live view paused: reconnecting';
  else el.textContent = status === 'queued' ? 'waiting for a worker' : 'live';
}

/** An output event from the job's feed. */
function showOutput(chunk) {
  if (jobView.id !== chunk.job) return;
  if (jobView.loading) {
    jobView.buffer.push(chunk);
    return;
  }
  if (chunk.seq <= jobView.seq) return; // shown already
  jobView.seq = chunk.seq;
  jobView.output.push(chunk.stream, chunk.data);
}
