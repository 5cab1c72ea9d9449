// Keyboard shortcuts, listed in the "?" dialog: ? this list, / filter the
// tasks, n add a task, r run a command, j the job list, Escape closes what
// is open or goes back up a page.  Letters act only outside text fields,
// and n and r only for a token that may add a task or run (access.js).

import {can} from './access.js';
import {$} from './dom.js';
import {parentHref} from './router.js';
import {openAddForm} from './task_form.js';

function typing(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
}

function onDashboard() {
  return !$('dashboard').hidden;
}

function toDashboard(then) {
  if (!onDashboard()) {
    location.hash = parentHref() || '#/';
    requestAnimationFrame(then);
  } else {
    then();
  }
}

export function setupShortcuts() {
  const dialog = $('shortcuts');
  $('shortcuts-open').addEventListener('click', () => dialog.showModal());
  // The skip link moves the focus without changing the address (the router's).
  $('skip-link').addEventListener('click', (event) => {
    event.preventDefault();
    const heading = document.querySelector('main > :not([hidden]) h1') || $('main');
    heading.focus();
  });
  document.addEventListener('keydown', (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (document.querySelector('dialog[open]')) return; // the dialog's own keys
    if (event.key === 'Escape') {
      if (typing(event.target)) {
        event.target.blur?.();
        return;
      }
      const up = parentHref();
      if (up) {
        event.preventDefault();
        location.hash = up;
      }
      return;
    }
    if (typing(event.target)) return;
    const actions = {
      '?': () => dialog.showModal(),
      '/': () => toDashboard(() => $('tasks-filter').focus()),
      n: () => can('write') && toDashboard(openAddForm),
      r: () => can('run') && toDashboard(() => $('run-command').focus()),
      j: () => toDashboard(() => {
        $('jobs-title').scrollIntoView({block: 'start'});
        $('jobs-filter').focus();
      }),
    };
    const action = actions[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });
}
