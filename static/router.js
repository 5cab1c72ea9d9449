// Which page shows: the dashboard (#/) or a job's page (#/jobs/<id>), and
// which job's output the live feed follows.

import {$, clear, show} from './dom.js';
import {closeJobPage, loadJobPage, openJobPage} from './job.js';

let feed = null;
let view = {name: 'dashboard'};
let booted = false;

function openJob(id) {
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

function openDashboard() {
  const wasJob = view.name === 'job';
  view = {name: 'dashboard'};
  document.title = 'Job scheduler';
  closeJobPage();
  show($('job-view'), false);
  clear($('job-view'));
  show($('dashboard'), true);
  feed.watch(null);
  if (wasJob) window.scrollTo(0, 0);
}

function route() {
  const match = /^#\/jobs\/(\d{1,18})$/.exec(location.hash);
  if (match) openJob(Number(match[1]));
  else if (view.name !== 'dashboard' || !booted) openDashboard();
}

/** Show the page the address names, and follow the address from now on. */
export function startRouter(liveFeed) {
  feed = liveFeed;
  window.addEventListener('hashchange', route);
  route();
  booted = true;
}
