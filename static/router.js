// Which page shows: the dashboard (#/, its job filters in the address:
// #/?status=failed&task=3), a job's page (#/jobs/<id>), a task's page
// (#/tasks/<id>), a task's history (#/tasks/<id>/history), the alert
// channels (#/channels) or the audit log (#/audit, its filters in the
// address too: #/audit?who=ops&task=3).  On each change the new view's
// heading takes the focus, so a keyboard or screen reader user starts at
// the top of it.

import {auditAddressChanged, closeAudit, openAudit} from './audit.js';
import {$, show} from './dom.js';
import {closeJobPage, openJobPage} from './job.js';
import {jobsAddress, loadJobs, setJobsFilters} from './jobs.js';
import {closeChannels, openChannels} from './channels.js';
import {placeTaskForm} from './task_form.js';
import {closeTaskHistory, openTaskHistory} from './task_history.js';
import {closeTaskPage, openTaskPage} from './task_page.js';

let view = {name: null};
let booted = false;
let dashboardHash = '#/';

const VIEWS = {dashboard: 'dashboard', job: 'job-view', task: 'task-view', history: 'task-view', channels: 'page-view', audit: 'page-view'};

function leave() {
  if (view.name === 'job') closeJobPage();
  else if (view.name === 'task') closeTaskPage();
  else if (view.name === 'history') closeTaskHistory();
  else if (view.name === 'channels') closeChannels();
  else if (view.name === 'audit') closeAudit();
  if (view.name && view.name !== 'dashboard') {
    placeTaskForm($('task-form-home'));
    $(VIEWS[view.name]).replaceChildren();
  }
  for (const id of new Set(Object.values(VIEWS))) show($(id), false);
}

/** Where "← Dashboard" and Escape lead: the dashboard as it was left. */
export function backHref() {
  return dashboardHash;
}

/** The page "up" from the one showing (null on the dashboard). */
export function parentHref() {
  if (view.name === 'history') return `#/tasks/${view.id}`;
  return view.name === 'dashboard' ? null : dashboardHash;
}

function enter(name, id, open, title) {
  const same = view.name === name && view.id === id;
  if (same) return;
  if (view.name === 'dashboard') dashboardHash = jobsAddress();
  leave();
  view = {name, id};
  document.title = title;
  open();
  show($(VIEWS[name]), true);
  window.scrollTo(0, 0);
  focusHeading();
}

function focusHeading() {
  if (!booted) return; // the first page of a visit keeps the browser's own start
  const heading = $(VIEWS[view.name]).querySelector('h1');
  heading?.focus({preventScroll: true});
}

function paramsOf(hash) {
  const at = hash.indexOf('?');
  return new URLSearchParams(at >= 0 ? hash.slice(at + 1) : '');
}

function route() {
  const hash = location.hash || '#/';
  const job = /^#\/jobs\/(\d{1,18})$/.exec(hash);
  const task = /^#\/tasks\/(\d{1,18})$/.exec(hash);
  const history = /^#\/tasks\/(\d{1,18})\/history$/.exec(hash);
  if (job) {
    const id = Number(job[1]);
    enter('job', id, () => openJobPage(id, dashboardHash), `Job #${id} · Job scheduler`);
  } else if (task) {
    const id = Number(task[1]);
    enter('task', id, () => openTaskPage(id, dashboardHash), `Task #${id} · Job scheduler`);
  } else if (history) {
    const id = Number(history[1]);
    enter('history', id, () => openTaskHistory(id, `#/tasks/${id}`), `Task #${id} history · Job scheduler`);
  } else if (hash === '#/channels') {
    enter('channels', null, () => openChannels(dashboardHash), 'Alert channels · Job scheduler');
  } else if (/^#\/audit(\?|$)/.test(hash)) {
    const params = paramsOf(hash);
    if (view.name === 'audit') auditAddressChanged(params);
    else enter('audit', null, () => openAudit(dashboardHash, params), 'Audit log · Job scheduler');
  } else {
    const params = paramsOf(hash);
    const changed = setJobsFilters(params);
    dashboardHash = jobsAddress();
    if (view.name !== 'dashboard') {
      enter('dashboard', null, () => {}, 'Job scheduler');
      if (changed && booted) loadJobs();
    } else if (changed) {
      loadJobs();
    }
  }
}

/** Show the page the address names, and follow the address from now on. */
export function startRouter() {
  window.addEventListener('hashchange', route);
  route();
  booted = true;
}

/** The view showing: {name, id}. */
export function currentView() {
  return view;
}
