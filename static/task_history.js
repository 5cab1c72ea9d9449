// A task's history page (#/tasks/<id>/history): every change to the task,
// newest first — when, what (add, edit, pause...), by whom, and a
// field-by-field diff of the task before and after — with "Restore this
// version" on each earlier one.

import {ApiError, get, post, query} from './api.js';
import {$, debounce, h, show, timeEl, visible} from './dom.js';
import {DEFAULTS} from './task_fields.js';
import {upsertTask} from './tasks.js';
import {toast} from './toast.js';
import {triggerText} from './triggers.js';

const PAGE = 100;

// The order fields are listed in; any other field follows.
const ORDER = ['schedule', 'command', 'jobName', 'target', 'timezone', 'env', 'cwd', 'timeout', 'retries',
  'retryDelay', 'overlap', 'missed', 'missedCap', 'maxConcurrent', 'pool', 'jitter', 'paused', 'pausedUntil',
  'pauseReason', 'skipNext'];
const LABELS = {
  jobName: 'job name', timezone: 'time zone', env: 'environment', cwd: 'working directory',
  retryDelay: 'retry delay', missedCap: 'most missed runs caught up', maxConcurrent: 'max at once',
  pausedUntil: 'paused until', pauseReason: 'pause reason', skipNext: 'skip next run',
};
const ACTIONS = {add: 'added', edit: 'edited', pause: 'paused', resume: 'resumed', remove: 'removed',
  load: 'loaded from tasks.db', clear: 'cleared', restore: 'restored'};

const view = {id: null, load: 0, revisions: []};

export function openTaskHistory(id, backHref) {
  Object.assign(view, {id, revisions: []});
  const list = h('ol', {id: 'revisions', class: 'revisions', 'aria-live': 'polite'}, h('li', {class: 'empty'}, 'Loading…'));
  $('task-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: backHref}, '← Task')),
    h('section', {class: 'card', 'aria-labelledby': 'history-title'},
      h('div', {class: 'card-head'},
        h('h1', {id: 'history-title', class: 'view-title', tabindex: -1}, `History of task #${id}`)),
      h('p', {class: 'muted small history-intro'},
        'Every change to this task, newest first. Restoring a version changes the task back to it, '
        + 'in place, and is kept here as a change of its own.'),
      h('p', {id: 'history-error', class: 'panel-error', role: 'alert', hidden: true}),
      list,
      h('div', {class: 'actions'}, h('button', {type: 'button', id: 'history-more', hidden: true}, 'Show older changes'))));
  $('history-more').addEventListener('click', () => loadTaskHistory({older: true}));
  loadTaskHistory();
}

export function closeTaskHistory() {
  view.id = null;
  view.load++;
}

/** A task changed (live feed): if its history shows, read it again. */
export const taskHistoryChanged = debounce((id) => {
  if (view.id === id) loadTaskHistory();
}, 300);

export async function loadTaskHistory({older = false} = {}) {
  const id = view.id;
  if (id === null) return;
  const mine = ++view.load;
  const before = older && view.revisions.length ? view.revisions[view.revisions.length - 1].id : null;
  try {
    const page = await get(`/api/tasks/${id}/revisions${query({limit: PAGE, before})}`);
    if (mine !== view.load) return;
    view.revisions = older ? [...view.revisions, ...page] : page;
    show($('history-error'), false);
    render(page.length === PAGE);
  } catch (error) {
    if (mine !== view.load) return;
    $('history-error').textContent = error instanceof ApiError && error.status === 404
      ? `There is no task #${id}, and no history of one.`
      : `Could not load the history: ${error.message}`;
    show($('history-error'), true);
    if (!view.revisions.length) $('revisions').replaceChildren();
  }
}

function render(more) {
  const {revisions} = view;
  const newest = revisions[0];
  const record = newest ? newest.after || newest.before : null;
  if (record) $('history-title').textContent = `History of ${visible(record.jobName)} (#${view.id})`;
  show($('history-more'), more);
  $('revisions').replaceChildren(...(revisions.length
    ? revisions.map((revision, index) => revisionItem(revision, index === 0))
    : [h('li', {class: 'empty'}, 'No changes recorded yet.')]));
}

function revisionItem(revision, isNewest) {
  const item = h('li', {class: 'revision', 'data-action': revision.action, 'data-id': revision.id},
    h('div', {class: 'revision-head'},
      h('span', {class: 'badge badge-action'}, ACTIONS[revision.action] || visible(revision.action)),
      timeEl(revision.at),
      h('span', {class: 'muted'}, 'by ', triggerText(revision.by)),
      h('span', {class: 'muted small'}, `revision ${revision.id}`)),
    diffEl(revision.before, revision.after));
  // The newest version is the task as it stands, unless it was removed since.
  if (!isNewest || !revision.after) {
    const restore = h('button', {type: 'button', class: 'restore', 'data-needs': 'write'},
      revision.after ? 'Restore this version' : 'Restore as it was before removal');
    restore.addEventListener('click', async () => {
      restore.disabled = true;
      try {
        const task = await post(`/api/tasks/${view.id}/revisions/${revision.id}/restore`);
        upsertTask(task);
        toast(`Restored ${task.jobName} to revision ${revision.id}.`);
        await loadTaskHistory();
      } catch (error) {
        toast(`Could not restore revision ${revision.id}: ${error.message}`, {kind: 'error'});
        restore.disabled = false;
      }
    });
    item.querySelector('.revision-head').append(restore);
  }
  return item;
}

/** The fields that differ between two task records (null: none, as before an add). */
function diffEl(before, after) {
  const keys = new Set([...Object.keys(before || {}), ...Object.keys(after || {})]);
  keys.delete('id');
  const fields = [...ORDER.filter((key) => keys.has(key)), ...[...keys].filter((key) => !ORDER.includes(key)).sort()];
  const changed = fields.filter((key) => !before || !after
    || JSON.stringify(before[key] ?? null) !== JSON.stringify(after[key] ?? null));
  if (!changed.length) return h('p', {class: 'muted small'}, 'No field changed.');
  const rows = changed.map((key) => h('tr', {},
    h('th', {scope: 'row'}, LABELS[key] || key),
    h('td', {class: 'diff-old'}, before ? valueEl(key, before[key]) : null),
    h('td', {class: 'diff-arrow', 'aria-hidden': 'true'}, before && after ? '→' : ''),
    h('td', {class: 'diff-new'}, after ? valueEl(key, after[key]) : null)));
  return h('table', {class: 'diff'},
    h('thead', {class: 'visually-hidden'}, h('tr', {},
      h('th', {scope: 'col'}, 'Field'), h('th', {scope: 'col'}, before ? 'Before' : 'Before (none)'),
      h('th', {scope: 'col'}, 'Change'), h('th', {scope: 'col'}, after ? 'After' : 'Removed'))),
    h('tbody', {}, rows));
}

function valueEl(key, value) {
  if (value === undefined || value === null) {
    // Records keep only what differs from the defaults.
    const fallback = {...DEFAULTS, paused: false, skipNext: false}[key];
    let text = 'none';
    if (typeof fallback === 'boolean') text = 'no';
    else if (typeof fallback === 'string' || typeof fallback === 'number') text = `${fallback} (default)`;
    return h('span', {class: 'muted'}, text);
  }
  if (key === 'pausedUntil') {
    const iso = typeof value === 'number' ? new Date(value * 1000).toISOString() : String(value);
    return timeEl(iso);
  }
  if (key === 'env') {
    const entries = Object.entries(value);
    return entries.length ? h('code', {}, visible(entries.map(([k, v]) => `${k}=${v}`).join(' '))) : h('span', {class: 'muted'}, 'none');
  }
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (key === 'command' || key === 'schedule' || key === 'cwd') return h('code', {}, visible(String(value)));
  return visible(typeof value === 'object' ? JSON.stringify(value) : String(value));
}
