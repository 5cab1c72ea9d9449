// The Workers panel, and the target choices (any, all, each worker, each
// label) it feeds to the forms' Target lists.

import {get} from './api.js';
import {$, clear, debounce, h, showError, timeEl, visible} from './dom.js';
import {renderWorkerChoices} from './jobs.js';

let workers = [];

export async function loadWorkers() {
  try {
    workers = await get('/api/workers');
    showError('workers-error', null);
  } catch (error) {
    showError('workers-error', `Could not load the workers: ${error.message}`);
    return;
  }
  renderWorkers();
}

// A worker event says only that the list changed: read it again, once for a burst.
export const refreshWorkersSoon = debounce(loadWorkers, 250);

function renderWorkers() {
  const list = clear($('workers-list'));
  $('workers-count').textContent = String(workers.length);
  if (!workers.length) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    list.append(h('li', {class: 'empty'},
      'No workers online. Start one with:',
      h('code', {class: 'block'}, `twistd -n worker --url ${scheme}://${location.host}/ws/worker`)));
  }
  for (const worker of workers) {
    const busy = Math.min(worker.running, worker.slots);
    const bar = h('span', {class: 'slot-fill'});
    bar.style.width = `${worker.slots ? (100 * busy) / worker.slots : 0}%`;
    list.append(h('li', {class: 'worker', 'data-name': worker.name},
      h('div', {class: 'worker-top'},
        h('span', {class: 'worker-name'}, visible(worker.name)),
        h('span', {class: 'worker-slots', title: 'jobs running / slots'},
          `${worker.running}/${worker.slots} slots in use`)),
      h('div', {
        class: 'slot-bar', role: 'meter', 'aria-label': `${worker.name} slots in use`,
        'aria-valuemin': 0, 'aria-valuemax': worker.slots, 'aria-valuenow': worker.running,
      }, bar),
      worker.labels.length
        ? h('div', {class: 'labels'}, worker.labels.map((label) => h('span', {class: 'chip'}, visible(label))))
        : null,
      h('div', {class: 'muted small'}, 'connected since ', timeEl(worker.connectedAt)),
      clockNote(worker.clockOffset)));
  }
  renderTargetChoices();
  renderWorkerChoices(workers.map((w) => w.name));
}

// The scheduler corrects a worker's times by its clock offset; past this
// the worker's own logs and files carry wrong times, worth telling.
const CLOCK_NOTE_SECONDS = 1;

/** A note on a worker whose clock is off (seconds our clock is ahead of it). */
function clockNote(offset) {
  if (!(Math.abs(offset) > CLOCK_NOTE_SECONDS)) return null;
  const direction = offset > 0 ? 'behind' : 'ahead of';
  return h('div', {class: 'small warn-text', title: 'Job times from this worker are corrected for it'},
    `clock ${Math.abs(offset).toFixed(1)} s ${direction} the scheduler's`);
}

/** Fill every target <select> from the workers list, keeping the choice. */
export function renderTargetChoices() {
  const names = workers.map((w) => w.name);
  const labels = [...new Set(workers.flatMap((w) => w.labels))].sort();
  for (const select of document.querySelectorAll('select.target-select')) {
    const chosen = select.value || 'any';
    const options = [
      h('option', {value: 'any'}, 'Any worker'),
      h('option', {value: 'all'}, 'All workers'),
    ];
    if (names.length) {
      options.push(h('optgroup', {label: 'Worker'},
        names.map((name) => h('option', {value: `worker:${name}`}, name))));
    }
    if (labels.length) {
      options.push(h('optgroup', {label: 'Label'},
        labels.map((label) => h('option', {value: `label:${label}`}, `label: ${label}`))));
    }
    const values = ['any', 'all', ...names.map((n) => `worker:${n}`), ...labels.map((l) => `label:${l}`)];
    if (!values.includes(chosen)) {
      // A worker that went away: keep the choice rather than change it silently.
      options.push(h('option', {value: chosen}, `${chosen} (offline)`));
    }
    select.replaceChildren(...options);
    select.value = chosen;
  }
}
