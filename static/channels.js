// The alert channels (#/channels): where alerts go (GET /api/channels),
// a form to add one, and on each "Send a test" (showing the reply) and
// "Delete".  On a scheduler without alerts the page says so.

import {ApiError, del, get, post} from './api.js';
import {$, h, show, visible} from './dom.js';
import {toast} from './toast.js';

const view = {open: false, load: 0};
// The kinds the form adds (email, with its SMTP settings, is added through the API).
const KINDS = ['webhook', 'slack', 'discord', 'ntfy'];
const HIDDEN_FIELDS = /secret|password|token/i;

export function openChannels(backHref) {
  view.open = true;
  const name = h('input', {id: 'channel-name', type: 'text', autocomplete: 'off', spellcheck: 'false', required: true});
  const kind = h('select', {id: 'channel-kind'}, KINDS.map((k) => h('option', {value: k}, k)));
  const target = h('input', {id: 'channel-target', type: 'url', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'https://hooks.example.com/…', 'aria-describedby': 'channel-target-hint'});
  const secret = h('input', {id: 'channel-secret', type: 'password', autocomplete: 'off', spellcheck: 'false'});
  const error = h('p', {id: 'channel-error', class: 'form-error', role: 'alert', hidden: true, tabindex: -1});
  const form = h('form', {id: 'channel-form', class: 'form', novalidate: true, 'aria-labelledby': 'channel-form-title'},
    h('h2', {id: 'channel-form-title'}, 'Add a channel'),
    h('div', {class: 'field-row'},
      h('div', {class: 'field'}, h('label', {for: 'channel-name'}, 'Name'), name),
      h('div', {class: 'field field-narrow'}, h('label', {for: 'channel-kind'}, 'Kind'), kind),
      h('div', {class: 'field field-wide'}, h('label', {for: 'channel-target'}, 'URL'), target),
      h('div', {class: 'field'}, h('label', {for: 'channel-secret'}, 'Secret ', h('span', {class: 'optional'}, '(webhook, ntfy)')), secret)),
    h('span', {id: 'channel-target-hint', class: 'muted small'}, 'Where the alert is posted: the webhook, Slack, Discord or ntfy URL.'),
    error,
    h('div', {class: 'actions'}, h('button', {type: 'submit', class: 'primary'}, 'Add channel')));
  $('page-view').replaceChildren(
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: backHref}, '← Dashboard')),
    h('section', {class: 'card', 'aria-labelledby': 'channels-title'},
      h('h1', {id: 'channels-title', class: 'view-title', tabindex: -1}, 'Alert channels'),
      h('p', {id: 'channels-error', class: 'panel-error', role: 'alert', hidden: true}),
      h('ul', {id: 'channels-list', class: 'channels'}, h('li', {class: 'empty'}, 'Loading…'))),
    h('section', {class: 'card', id: 'channel-form-card', 'data-needs': 'admin'}, form));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const fail = (message, field) => {
      error.textContent = message;
      show(error, true);
      (field || error).focus();
    };
    if (!name.value.trim()) return fail('A channel needs a name.', name);
    if (!target.value.trim()) return fail('A channel needs a URL to send to.', target);
    const body = {name: name.value.trim(), kind: kind.value, url: target.value.trim()};
    if (secret.value) body.secret = secret.value;
    try {
      await post('/api/channels', body);
      show(error, false);
      toast(`Added channel ${name.value.trim()}.`);
      form.reset();
      loadChannels();
    } catch (problem) {
      fail(problem.message, /name/i.test(problem.message) ? name : (/url|address/i.test(problem.message) ? target : null));
    }
    return undefined;
  });
  loadChannels();
}

/** Show the header's link to this page when the scheduler has alert channels. */
export async function offerChannels() {
  try {
    await get('/api/channels');
    show($('channels-link'), true);
  } catch (error) {
    show($('channels-link'), !(error instanceof ApiError && error.status === 404));
  }
}

export function closeChannels() {
  view.open = false;
  view.load++;
}

async function loadChannels() {
  const mine = ++view.load;
  let channels;
  try {
    channels = await get('/api/channels');
  } catch (error) {
    if (mine !== view.load) return;
    const missing = error instanceof ApiError && error.status === 404;
    $('channels-error').textContent = missing
      ? 'This scheduler has no alert channels (it is older than alerts).'
      : `Could not load the channels: ${error.message}`;
    show($('channels-error'), true);
    $('channels-list').replaceChildren();
    if (missing) show($('channel-form-card'), false);
    return;
  }
  if (mine !== view.load) return;
  show($('channels-error'), false);
  const list = Array.isArray(channels) ? channels : [];
  $('channels-list').replaceChildren(...(list.length ? list.map(channelItem)
    : [h('li', {class: 'empty'}, 'No channels yet: alerts go nowhere.',
      h('span', {'data-needs': 'admin'}, ' Add one below.'))]));
}

function channelItem(channel) {
  const reply = h('p', {class: 'channel-reply small', 'aria-live': 'polite'});
  const test = h('button', {type: 'button', 'data-action': 'test', 'data-needs': 'admin'}, 'Send a test',
    h('span', {class: 'visually-hidden'}, ` to ${channel.name}`));
  const remove = h('button', {type: 'button', class: 'danger-quiet', 'data-action': 'delete', 'data-needs': 'admin'}, 'Delete',
    h('span', {class: 'visually-hidden'}, ` ${channel.name}`));
  test.addEventListener('click', async () => {
    test.disabled = true;
    reply.textContent = 'Sending…';
    try {
      const answer = await post(`/api/channels/${encodeURIComponent(channel.name)}/test`);
      // {outcome, status, reply}: how it went, the receiver's status and what it said.
      const said = [answer?.outcome, answer?.status, answer?.reply].filter((part) => part !== null && part !== undefined && part !== '');
      reply.textContent = `Test: ${visible(said.length ? said.join(' · ') : JSON.stringify(answer))}`;
    } catch (error) {
      reply.textContent = `Failed: ${error.message}`;
    } finally {
      test.disabled = false;
    }
  });
  remove.addEventListener('click', async () => {
    remove.disabled = true;
    try {
      await del(`/api/channels/${encodeURIComponent(channel.name)}`);
      toast(`Deleted channel ${channel.name}.`);
      loadChannels();
    } catch (error) {
      toast(`Could not delete ${channel.name}: ${error.message}`, {kind: 'error'});
      remove.disabled = false;
    }
  });
  const details = Object.entries(channel).filter(([key]) => !['name', 'kind'].includes(key) && !HIDDEN_FIELDS.test(key))
    .map(([key, value]) => `${key}: ${typeof value === 'object' ? JSON.stringify(value) : value}`).join(' · ');
  return h('li', {class: 'channel', 'data-name': channel.name},
    h('div', {class: 'channel-head'},
      h('strong', {}, visible(channel.name)), ' ', h('span', {class: 'chip'}, visible(String(channel.kind || ''))),
      h('span', {class: 'actions'}, test, remove)),
    details ? h('div', {class: 'muted small'}, visible(details)) : null,
    reply);
}
