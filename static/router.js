// Which page shows: the dashboard (#/), a job's page (#/jobs/<id>), a
// task's history (#/tasks/<id>/history) or the audit log (#/audit), and
// which job's output the live feed follows.

import {closeAudit, openAudit} from './audit.js';
import {$, clear, show} from './dom.js';
import {closeJobPage, loadJobPage, openJobPage} from './job.js';
import {closeTaskHistory, openTaskHistory} from './task_history.js';

let feed = null;
let view = {name: 'dashboard'};
let booted = false;

function leave() {
  if (view.name === 'job') {
    closeJobPage();
    show($('job-view'), false);
    clear($('job-view'));
  } else if (view.name === 'history') {
    closeTaskHistory();
    show($('task-view'), false);
    clear($('task-view'));
  } else if (view.name === 'audit') {
    closeAudit();
    show($('audit-view'), false);
    clear($('audit-view'));
  }
}

function openAuditPage() {
  leave();
  view = {name: 'audit'};
  document.title = 'Audit log · Job scheduler';
  show($('dashboard'), false);
  openAudit();
  show($('audit-view'), true);
  window.scrollTo(0, 0);
  feed.watch(null);
}

function openJob(id) {
  leave();
  view = {name: 'job', id};
  document.title = `Job #${id} · Job scheduler`;
  show($('dashboard'), false);
  openJobPage(id);
  show($('job-view'), true);
  window.scrollTo(0, 0);
  const willReconnect = feed.phase === 'connecting' || feed.phase === 'open';
  feed.watch(id);
  // A reconnect reports onOpen, which loads the page after subscribing (so no
  // output falls between the log and the feed); otherwise load it now.
  if (!willReconnect && booted) loadJobPage();
}

function openHistory(id) {
  leave();
  view = {name: 'history', id};
  document.title = `Task #${id} history · Job scheduler`;
  show($('dashboard'), false);
  openTaskHistory(id);
  show($('task-view'), true);
  window.scrollTo(0, 0);
  feed.watch(null);
}

function openDashboard() {
  const wasPage = view.name !== 'dashboard';
  leave();
  view = {name: 'dashboard'};
  document.title = 'Job scheduler';
  closeJobPage();
  show($('dashboard'), true);
  feed.watch(null);
  if (wasPage) window.scrollTo(0, 0);
}

function route() {
  const job = /^#\/jobs\/(\d{1,18})$/.exec(location.hash);
  const history = /^#\/tasks\/(\d{1,18})\/history$/.exec(location.hash);
  if (job) openJob(Number(job[1]));
  else if (history) openHistory(Number(history[1]));
  else if (location.hash === '#/audit') openAuditPage();
  else if (view.name !== 'dashboard' || !booted) openDashboard();
}

/** Show the page the address names, and follow the address from now on. */
export function startRouter(liveFeed) {
  feed = liveFeed;
  window.addEventListener('hashchange', route);
  route();
  booted = true;
}
