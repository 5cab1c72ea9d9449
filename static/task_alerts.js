// "Alerts sent" on a task's page: the alert deliveries for this task
// (GET /api/tasks/{id}/alerts: event, channel, state, its times, reply).  The
// card stays hidden on a scheduler without alerts (the route answers 404).

import {ApiError, get} from './api.js';
import {$, h, show, timeEl, visible} from './dom.js';

export async function loadTaskAlerts(id) {
  const card = $('alerts-card');
  if (!card) return;
  let deliveries;
  try {
    deliveries = await get(`/api/tasks/${id}/alerts`);
  } catch (error) {
    if (!(error instanceof ApiError && (error.status === 404 || error.status === 405))) {
      $('task-alerts').replaceChildren(h('p', {class: 'panel-error'}, `Could not load the alerts: ${error.message}`));
      show(card, true);
    }
    return;
  }
  if (!$('alerts-card')) return;
  const list = Array.isArray(deliveries) ? deliveries : (deliveries?.deliveries || []);
  show(card, true);
  if (!list.length) {
    $('task-alerts').replaceChildren(h('p', {class: 'empty'}, 'No alerts sent for this task.'));
    return;
  }
  $('task-alerts').replaceChildren(h('table', {class: 'jobs alerts'},
    h('thead', {}, h('tr', {},
      ...['When', 'Event', 'Channel', 'State', 'Reply'].map((title) => h('th', {scope: 'col'}, title)))),
    h('tbody', {}, list.map((delivery) => h('tr', {},
      h('td', {}, timeEl(delivery.sentAt || delivery.lastAttemptAt || delivery.createdAt)),
      h('td', {}, visible(String(delivery.event ?? ''))),
      h('td', {}, visible(String(delivery.channel ?? ''))),
      h('td', {}, h('span', {class: 'badge', 'data-state': delivery.state}, visible(String(delivery.state ?? ''))),
        delivery.attempts > 1 ? h('span', {class: 'muted small'}, ` ${delivery.attempts} tries`) : null),
      h('td', {class: 'cmd'}, h('code', {}, visible(String(delivery.reply ?? '')))))))));
}
