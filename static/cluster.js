// The Cluster panel: the scheduler nodes sharing one PostgreSQL (--db), who
// leads, since which epoch, and each node's workers (GET /api/cluster). A
// single node (embedded mode, or a cluster of one) shows no panel: there is
// nothing to choose between. Nodes send no feed events, so the panel reads
// the cluster again every few seconds while the tab is visible.

import {get} from './api.js';
import {$, clear, h, show, timeEl, visible} from './dom.js';

const EVERY_MS = 5000;
let timer = null;

export async function loadCluster() {
  let cluster;
  try {
    cluster = await get('/api/cluster');
  } catch (error) {
    // A token without the read scope, or a node that cannot read the rows:
    // the panel says so only if it was showing something.
    if (!$('cluster-card').hidden) $('cluster-state').textContent = `Could not read the cluster: ${error.message}`;
    return;
  }
  render(cluster);
}

export function setupCluster() {
  const again = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (document.visibilityState === 'visible') await loadCluster();
      again();
    }, EVERY_MS);
  };
  again();
}

function render(cluster) {
  const nodes = Array.isArray(cluster.nodes) ? cluster.nodes : [];
  show($('cluster-card'), nodes.length > 1);
  $('cluster-count').textContent = String(nodes.length);
  const state = clear($('cluster-state'));
  if (cluster.leader) {
    state.append(`${cluster.leader} leads, epoch ${cluster.epoch}`);
    if (cluster.leaderSince) state.append(', since ', timeEl(cluster.leaderSince));
  } else {
    state.append(`no leader at the moment (epoch ${cluster.epoch})`);
  }
  const list = clear($('cluster-list'));
  // The answering node lists itself first: this page is served by it.
  nodes.forEach((node, index) => {
    list.append(h('li', {class: 'worker node', 'data-name': node.name, 'data-leader': String(node.leader)},
      h('div', {class: 'worker-top'},
        h('span', {},
          h('span', {class: 'worker-name'}, visible(node.name)), ' ',
          node.leader ? h('span', {class: 'badge badge-leader'}, 'leader') : null,
          index === 0 ? h('span', {class: 'muted small'}, ' (this page)') : null),
        h('span', {class: 'worker-slots'}, `${node.workers} worker${node.workers === 1 ? '' : 's'}`)),
      h('div', {class: 'muted small'}, visible(node.address), ' · seen ', timeEl(node.lastSeen))));
  });
}
