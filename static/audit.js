// The audit log page (#/audit): who did what, when and from where, newest
// first, with filters on who and what, and older entries a page at a time
// (GET /api/audit, scheduler/audit.py).

import {get, query} from './api.js';
import {$, h, show, timeEl, visible} from './dom.js';

const PAGE = 100;
const view = {open: false, load: 0, entries: []};

export function openAudit() {
  Object.assign(view, {open: true, entries: []});
  const who = h('input', {id: 'audit-who', type: 'text', autocomplete: 'off', placeholder: 'any'});
  const action = h('input', {id: 'audit-action', type: 'text', autocomplete: 'off', placeholder: 'e.g. task.edit'});
  $('audit-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: '#/'}, '← Dashboard')),
    h('section', {class: 'card', 'aria-labelledby': 'audit-title'},
      h('div', {class: 'card-head'},
        h('h2', {id: 'audit-title'}, 'Audit log'),
        h('form', {id: 'audit-filter', class: 'filter'},
          h('label', {for: 'audit-who'}, 'Who'), who,
          h('label', {for: 'audit-action'}, 'Action'), action,
          h('button', {type: 'submit'}, 'Filter'))),
      h('p', {id: 'audit-error', class: 'panel-error', role: 'alert', hidden: true}),
      h('table', {class: 'jobs audit'},
        h('thead', {}, h('tr', {},
          ['When', 'Who', 'From', 'Action', 'Task', 'Job', 'Detail'].map((name) => h('th', {scope: 'col'}, name)))),
        h('tbody', {id: 'audit-body'})),
      h('div', {class: 'actions'}, h('button', {type: 'button', id: 'audit-more', hidden: true}, 'Show older entries'))));
  $('audit-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    loadAudit();
  });
  $('audit-more').addEventListener('click', () => loadAudit({older: true}));
  loadAudit();
}

export function closeAudit() {
  view.open = false;
  view.load++;
}

export async function loadAudit({older = false} = {}) {
  if (!view.open) return;
  const mine = ++view.load;
  const before = older && view.entries.length ? view.entries[view.entries.length - 1].id : null;
  let entries;
  try {
    entries = await get(`/api/audit${query({who: $('audit-who').value.trim(), action: $('audit-action').value.trim(), limit: PAGE, before})}`);
  } catch (error) {
    if (mine !== view.load) return;
    $('audit-error').textContent = `Could not load the audit log: ${error.message}`;
    show($('audit-error'), true);
    return;
  }
  if (mine !== view.load) return;
  show($('audit-error'), false);
  view.entries = older ? view.entries.concat(entries) : entries;
  $('audit-body').replaceChildren(...view.entries.map(row));
  show($('audit-more'), entries.length === PAGE);
}

function row(entry) {
  return h('tr', {},
    h('td', {}, timeEl(entry.at)),
    h('td', {}, visible(entry.who)),
    h('td', {class: 'muted'}, entry.address ? visible(entry.address) : '—'),
    h('td', {class: 'mono'}, entry.action),
    h('td', {}, entry.taskId === null ? '—' : h('a', {href: `#/tasks/${entry.taskId}/history`}, `#${entry.taskId}`)),
    h('td', {}, entry.jobId === null ? '—' : h('a', {href: `#/jobs/${entry.jobId}`}, `#${entry.jobId}`)),
    h('td', {class: 'mono small'}, entry.detail ? visible(JSON.stringify(entry.detail)).slice(0, 300) : ''));
}
