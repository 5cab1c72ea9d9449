// The audit log page (#/audit): who did what, when and from where, newest
// first (GET /api/audit, scheduler/audit.py), filtered by who, action, task
// and since; the filters live in the address (#/audit?who=ops&task=3), as
// the job list's do, and older entries come a page at a time.  The actions
// to choose from are the API's own list (its OpenAPI contract).

import {get, getCounted, query} from './api.js';
import {$, enterSubmits, h, show, timeEl, visible} from './dom.js';
import {taskById} from './tasks.js';

const PAGE = 100;
const FILTERS = ['who', 'action', 'task', 'since'];
const DETAIL_CHARS = 300;

const view = {open: false, load: 0, entries: [], total: null, filters: {}};
const names = new Set(); // every "who" seen, for the Who field's suggestions

function filtersOf(params) {
  const filters = Object.fromEntries(FILTERS.map((key) => [key, (params.get(key) || '').trim()]));
  if (!/^\d*$/.test(filters.task)) filters.task = '';
  if (filters.since && Number.isNaN(new Date(filters.since).getTime())) filters.since = '';
  return filters;
}

/** This page's address for the filters shown now. */
function auditAddress() {
  return `#/audit${query(view.filters)}`;
}

/** An ISO time as a datetime-local input's value, in this browser's zone. */
function localInput(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60_000);
  return local.toISOString().slice(0, 16);
}

export function openAudit(backHref, params) {
  Object.assign(view, {open: true, entries: [], total: null, filters: filtersOf(params)});
  const field = (id, label, input, narrow = false) => h('div', {class: narrow ? 'field field-narrow' : 'field'},
    h('label', {for: id}, label), input);
  // The server matches the name exactly: the names seen so far are offered.
  const who = h('input', {id: 'audit-who', type: 'search', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'anyone', list: 'audit-who-names'});
  const action = h('select', {id: 'audit-action'}, h('option', {value: ''}, 'Any'));
  const task = h('input', {id: 'audit-task', type: 'number', min: 1, step: 1, inputmode: 'numeric', placeholder: 'any'});
  const since = h('input', {id: 'audit-since', type: 'datetime-local', title: 'In your browser’s time'});
  const form = h('form', {id: 'audit-filter', class: 'form audit-filter', novalidate: true, role: 'search',
    'aria-label': 'Filter the audit log'},
    h('div', {class: 'field-row'},
      field('audit-who', 'Who', [who, h('datalist', {id: 'audit-who-names'})]),
      field('audit-action', 'Action', action),
      field('audit-task', 'Task #', task, true),
      field('audit-since', 'Since', since),
      h('div', {class: 'actions audit-filter-actions'},
        h('button', {type: 'button', id: 'audit-clear'}, 'Clear'),
        h('button', {type: 'submit', class: 'primary'}, 'Filter'))));
  $('page-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: backHref}, '← Dashboard')),
    h('section', {class: 'card', 'aria-labelledby': 'audit-title'},
      h('div', {class: 'card-head'},
        h('h1', {id: 'audit-title', class: 'view-title', tabindex: -1}, 'Audit log')),
      h('p', {class: 'muted small history-intro'},
        'Who changed a task, ran or cancelled a job, changed the channels or the maintenance switch, and when; '
        + 'also changes of the tokens file and the secrets, and bursts of wrong tokens. Newest first.'),
      form,
      h('p', {id: 'audit-error', class: 'panel-error', role: 'alert', hidden: true}),
      h('table', {id: 'audit-table', class: 'jobs audit', hidden: true},
        h('thead', {}, h('tr', {},
          ['When', 'Who', 'From', 'Action', 'Task', 'Job', 'Detail'].map((name) => h('th', {scope: 'col'}, name)))),
        h('tbody', {id: 'audit-body'})),
      h('p', {id: 'audit-empty', class: 'empty'}, 'Loading…'),
      h('div', {class: 'actions table-foot'},
        h('span', {id: 'audit-shown', class: 'muted small', 'aria-live': 'polite'}),
        h('button', {type: 'button', id: 'audit-more', hidden: true}, 'Show older entries'))));
  enterSubmits(form);
  syncControls();
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    readControls();
  });
  $('audit-clear').addEventListener('click', () => {
    form.reset();
    readControls();
  });
  $('audit-more').addEventListener('click', () => loadAudit({older: true}));
  loadActions();
  loadAudit();
}

export function closeAudit() {
  view.open = false;
  view.load++;
}

/** The address changed while the page shows (a link to other filters): follow it. */
export function auditAddressChanged(params) {
  const next = filtersOf(params);
  if (FILTERS.every((key) => next[key] === view.filters[key])) return;
  view.filters = next;
  syncControls();
  loadAudit();
}

function syncControls() {
  const {filters} = view;
  $('audit-who').value = filters.who;
  const select = $('audit-action');
  if (filters.action && ![...select.options].some((option) => option.value === filters.action)) {
    select.append(h('option', {value: filters.action}, visible(filters.action)));
  }
  select.value = filters.action;
  $('audit-task').value = filters.task;
  $('audit-since').value = localInput(filters.since);
}

function readControls() {
  const since = $('audit-since').value ? new Date($('audit-since').value) : null; // the browser's local time
  view.filters = {
    who: $('audit-who').value.trim(),
    action: $('audit-action').value,
    task: /^\d+$/.test($('audit-task').value.trim()) ? $('audit-task').value.trim() : '',
    since: since && !Number.isNaN(since.getTime()) ? since.toISOString() : '',
  };
  history.replaceState(null, '', auditAddress());
  loadAudit();
}

let actions = null;

/** The Action choices: every audit action the scheduler records, read once. */
async function loadActions() {
  try {
    if (!actions) {
      const contract = await get('/api/openapi.json');
      const parameter = contract.paths['/api/audit'].get.parameters.find((p) => p.name === 'action');
      actions = parameter.schema.enum;
    }
  } catch {
    return; // the filter still takes the address's action; the list waits for another visit
  }
  if (!view.open) return;
  const select = $('audit-action');
  select.append(...actions.filter((name) => ![...select.options].some((o) => o.value === name))
    .map((name) => h('option', {value: name}, name)));
  select.value = view.filters.action;
}

export async function loadAudit({older = false} = {}) {
  if (!view.open) return;
  const mine = ++view.load;
  const before = older && view.entries.length ? view.entries[view.entries.length - 1].id : null;
  let page;
  try {
    page = await getCounted(`/api/audit${query({...view.filters, limit: PAGE, before})}`);
  } catch (error) {
    if (mine !== view.load) return;
    $('audit-error').textContent = `Could not load the audit log: ${error.message}`;
    show($('audit-error'), true);
    if (!older) {
      view.entries = [];
      render(false);
    }
    return;
  }
  if (mine !== view.load) return;
  show($('audit-error'), false);
  view.entries = older ? view.entries.concat(page.data) : page.data;
  view.total = page.total;
  render(page.data.length === PAGE);
}

function render(more) {
  const {entries, total} = view;
  $('audit-body').replaceChildren(...entries.map(row));
  for (const entry of entries) names.add(entry.who);
  $('audit-who-names').replaceChildren(...[...names].sort().map((name) => h('option', {value: name})));
  show($('audit-table'), entries.length > 0);
  show($('audit-empty'), entries.length === 0);
  const filtered = FILTERS.some((key) => view.filters[key]);
  $('audit-empty').textContent = filtered ? 'No entries match these filters.' : 'Nothing recorded yet.';
  const count = total !== null && total > entries.length ? total : entries.length;
  const of = count > entries.length ? `${entries.length.toLocaleString()} of ` : '';
  const noun = count === 1 ? 'entry' : 'entries';
  $('audit-shown').textContent = entries.length
    ? `Showing ${of}${count.toLocaleString()} ${noun}${filtered ? ` that ${count === 1 ? 'matches' : 'match'}` : ''}.`
    : '';
  show($('audit-more'), more);
}

function row(entry) {
  const task = entry.taskId === null || entry.taskId === undefined ? null : taskById(entry.taskId);
  return h('tr', {class: 'audit-row', 'data-action': entry.action},
    h('td', {class: 'audit-when'}, timeEl(entry.at)),
    h('td', {class: 'audit-who'}, visible(entry.who)),
    h('td', {class: 'audit-from muted'}, entry.address ? visible(entry.address) : '—'),
    h('td', {class: 'audit-action'}, h('span', {class: 'badge badge-action'}, visible(entry.action))),
    h('td', {class: 'audit-task'}, entry.taskId === null || entry.taskId === undefined ? h('span', {class: 'muted'}, '—')
      : h('a', {href: `#/tasks/${entry.taskId}`}, task ? `${visible(task.jobName)} (#${entry.taskId})` : `#${entry.taskId}`)),
    h('td', {class: 'audit-job'}, entry.jobId === null || entry.jobId === undefined ? h('span', {class: 'muted'}, '—')
      : h('a', {href: `#/jobs/${entry.jobId}`}, `#${entry.jobId}`)),
    h('td', {class: 'audit-detail small'}, detailText(entry.detail)));
}

function short(value) {
  const text = typeof value === 'string' ? value : JSON.stringify(value ?? null);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

/** A task change as the fields it changed; anything else as its keys and values. */
function detailText(detail) {
  if (!detail || typeof detail !== 'object') return '';
  let parts;
  if ('before' in detail || 'after' in detail) {
    const {before, after} = detail;
    const keys = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])].filter((key) => key !== 'id');
    if (before && after) {
      parts = keys.filter((key) => JSON.stringify(before[key] ?? null) !== JSON.stringify(after[key] ?? null))
        .map((key) => `${key}: ${short(before[key])} → ${short(after[key])}`);
    } else {
      const record = after || before;
      parts = keys.map((key) => `${key}: ${short(record[key])}`);
    }
  } else {
    parts = Object.entries(detail).map(([key, value]) => `${key}: ${short(value)}`);
  }
  const text = visible(parts.join(' · '));
  return text.length > DETAIL_CHARS ? `${text.slice(0, DETAIL_CHARS - 1)}…` : text;
}
