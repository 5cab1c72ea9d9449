// The task form: "Add task" opens it at the top of the Tasks panel, and
// the same form edits a task in place (on the dashboard, or on the task's
// page, where it moves).
// An edit sends only the fields that changed, as a PATCH with If-Match (the
// ETag read when the edit began): if the task was changed elsewhere since,
// the server answers 412 and nothing is overwritten.  The schedule is
// checked, in the task's time zone, while it is typed.

import {ApiError, get, getVersioned, patch, post, query} from './api.js';
import {$, debounce, enterSubmits, h, show, showError, timeEl, visible} from './dom.js';
import {
  FieldError, changes, clearFields, fillFields, inputOf, nonDefaults, optionsSummary, readFields,
} from './task_fields.js';
import {upsertTask} from './tasks.js';
import {toast} from './toast.js';

const STALE = 'This task was changed elsewhere; reload it to see the change. Nothing was saved.';

// The task being edited, as read, with its ETag; null while adding.
let editing = null;
let checkSchedule = () => {};

/** Keep the form in *host* (the dashboard's Tasks panel, or a task's page); it closes. */
export function placeTaskForm(host) {
  const form = $('task-form');
  if (form.parentElement === host) return;
  if (editing || !form.hidden) closeForm();
  host.append(form);
}

let closeForm = () => {};

/** Open the empty form to add a task, its first field focused. */
export function openAddForm() {
  const form = $('task-form');
  placeTaskForm($('task-form-home'));
  if (editing) closeForm();
  show(form, true);
  $('task-add').setAttribute('aria-expanded', 'true');
  form.scrollIntoView({block: 'nearest'});
  $('task-schedule').focus();
}

// A server error names a field: the first input it names gets the focus.
const ERROR_FIELDS = [
  [/schedule|cron|minute|hour|day|month|weekday|field|@/i, 'task-schedule'],
  [/time ?zone/i, 'task-timezone'],
  [/command/i, 'task-command'],
  [/job ?name|name/i, 'task-name'],
  [/target|worker|label/i, 'task-target'],
  [/env/i, 'task-env'],
  [/cwd|directory/i, 'task-cwd'],
  [/retry ?delay|retryDelay/i, 'task-retry-delay'],
  [/retries/i, 'task-retries'],
  [/timeout/i, 'task-timeout'],
  [/jitter/i, 'task-jitter'],
  [/missedCap|caught/i, 'task-missed-cap'],
  [/missed/i, 'task-missed'],
  [/overlap/i, 'task-overlap'],
  [/maxConcurrent|at once/i, 'task-max-concurrent'],
  [/pool/i, 'task-pool'],
];

function focusBadField(message) {
  for (const [pattern, id] of ERROR_FIELDS) {
    if (pattern.test(message)) {
      const input = $(id);
      if ($('task-more').contains(input)) $('task-more').open = true;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
  }
  $('task-error').focus();
}

export function setupTaskForm() {
  const form = $('task-form');
  enterSubmits(form);
  $('task-error').setAttribute('tabindex', '-1');
  $('task-add').setAttribute('aria-expanded', 'false');
  $('task-add').setAttribute('aria-controls', 'task-form');
  $('task-add').addEventListener('click', () => {
    if (!form.hidden && !editing && form.parentElement === $('task-form-home')) closeForm();
    else openAddForm();
  });
  const schedule = $('task-schedule');
  const timezone = $('task-timezone');
  const hint = $('schedule-hint');
  const defaultHint = [...hint.childNodes].map((n) => n.cloneNode(true));
  let checks = 0;

  fillTimezones();

  const resetHint = () => {
    checks++; // any answer in flight is for older text
    hint.dataset.state = '';
    hint.replaceChildren(...defaultHint.map((n) => n.cloneNode(true)));
    schedule.removeAttribute('aria-invalid');
  };

  const check = debounce(async () => {
    const expr = schedule.value.trim();
    const mine = ++checks;
    if (!expr) {
      resetHint();
      return;
    }
    try {
      const params = {expr, timezone: timezone.value.trim(), jobName: $('task-name').value.trim()};
      const result = await get(`/api/schedules/check${query(params)}`);
      if (mine !== checks) return;
      if (result.valid) {
        hint.dataset.state = 'valid';
        schedule.setAttribute('aria-invalid', 'false');
        const zone = result.timezone || timezone.value.trim() || null;
        const runs = result.runs || result.next.map((at) => ({at, shifted: null}));
        hint.replaceChildren(
          h('span', {class: 'hint-ok'}, '✓ ', result.description),
          h('span', {class: 'hint-next'}, ' · next: ', runs.map((run, i) => [i ? ', ' : '', nextRunEl(run, zone)])));
      } else {
        hint.dataset.state = 'invalid';
        schedule.setAttribute('aria-invalid', 'true');
        hint.replaceChildren(h('span', {class: 'hint-error'}, result.error));
      }
    } catch (error) {
      if (mine !== checks) return;
      hint.dataset.state = 'invalid';
      hint.replaceChildren(h('span', {class: 'hint-error'}, `Could not check the schedule: ${error.message}`));
    }
  }, 300);

  checkSchedule = () => {
    checks++;
    hint.dataset.state = 'checking';
    check();
  };
  schedule.addEventListener('input', checkSchedule);
  $('task-name').addEventListener('input', () => {
    if (/H/.test(schedule.value)) checkSchedule(); // H is hashed from the name
  });
  timezone.addEventListener('change', () => {
    if (schedule.value.trim()) checkSchedule();
  });
  form.addEventListener('input', () => {
    $('task-more-summary').textContent = summary();
  });

  const reset = () => {
    check.cancel();
    clearFields();
    resetHint();
    $('task-more-summary').textContent = '';
  };

  closeForm = () => {
    const wasEditing = editing ? editing.task.id : null;
    endEdit(reset);
    show(form, false);
    $('task-add').setAttribute('aria-expanded', 'false');
    for (const el of form.querySelectorAll('[aria-invalid="true"]')) el.removeAttribute('aria-invalid');
    return wasEditing;
  };
  $('task-form-cancel').addEventListener('click', () => {
    const id = closeForm();
    const back = id !== null
      ? document.querySelector(`#tasks-body tr[data-id="${id}"] [data-action="edit"], #task-actions [data-action="edit"]`)
      : $('task-add');
    back?.focus();
  });
  form.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      event.stopPropagation();
      $('task-form-cancel').click();
    }
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let fields;
    try {
      fields = readFields();
    } catch (error) {
      if (!(error instanceof FieldError)) throw error;
      showError('task-error', error.message);
      $('task-more').open = true;
      inputOf(error.field).setAttribute('aria-invalid', 'true');
      inputOf(error.field).focus();
      return;
    }
    if (!fields.schedule || !fields.command.trim()) {
      showError('task-error', 'A task needs a schedule and a command.');
      (fields.schedule ? $('task-command') : schedule).focus();
      return;
    }
    showError('task-error', null);
    const button = $('task-submit');
    button.disabled = true;
    try {
      if (editing) await saveEdit(fields, reset);
      else await add(fields, reset);
    } finally {
      button.disabled = false;
    }
  });
}

async function add(fields, reset) {
  const body = nonDefaults(fields);
  if (!body.jobName) delete body.jobName;
  body.target = fields.target; // as the form always sent it
  try {
    const task = await post('/api/tasks', body);
    upsertTask(task);
    reset();
    closeForm();
    toast(`Added ${visible(task.jobName)}: ${task.description}.`, {link: [`#/tasks/${task.id}`, 'Open']});
    $('task-add').focus();
  } catch (error) {
    showError('task-error', error.message);
    focusBadField(error.message);
  }
}

async function saveEdit(fields, reset) {
  const {task, etag} = editing;
  const body = changes(fields, task);
  if (!Object.keys(body).length) {
    toast(`Nothing changed in ${visible(task.jobName)}.`);
    closeForm();
    return;
  }
  try {
    const {data} = await patch(`/api/tasks/${task.id}`, body, etag);
    upsertTask(data);
    closeForm();
    toast(`Saved ${visible(data.jobName)}: ${Object.keys(body).join(', ')} changed.`);
    document.querySelector(`#tasks-body tr[data-id="${data.id}"] [data-action="edit"], #task-actions [data-action="edit"]`)?.focus();
  } catch (error) {
    if (error instanceof ApiError && error.status === 412) showStale(task.id);
    else if (error instanceof ApiError && error.status === 404) {
      showError('task-error', `${task.jobName} was deleted elsewhere; nothing was saved.`);
    } else {
      showError('task-error', error.message);
      focusBadField(error.message);
    }
  }
}

/** The 412 notice, with a button that reads the task again (dropping the edits). */
function showStale(id) {
  const reload = h('button', {type: 'button', class: 'inline-button'}, 'Reload');
  reload.addEventListener('click', () => editTask(id));
  const el = $('task-error');
  el.replaceChildren(h('span', {}, STALE, ' '), reload);
  show(el, true);
  el.dataset.stale = 'true';
  toast(STALE, {kind: 'error'});
}

/** Open the form on task *id*, as it is now on the server. */
export async function editTask(id) {
  let read;
  try {
    read = await getVersioned(`/api/tasks/${id}`);
  } catch (error) {
    toast(`Could not read task #${id}: ${error.message}`, {kind: 'error'});
    return;
  }
  const task = read.data;
  const form = $('task-form');
  const slot = $('task-form-slot');
  placeTaskForm(slot && slot.isConnected && !$('task-view').hidden ? slot : $('task-form-home'));
  editing = {task, etag: read.etag};
  markEditing();
  show(form, true);
  form.dataset.mode = 'edit';
  $('task-form-title').textContent = `Edit ${visible(task.jobName)} (#${task.id})`;
  const note = $('task-form-note');
  note.textContent = 'Saved in place: the task keeps its id and its job history. '
    + 'If someone changes it meanwhile, nothing is overwritten.';
  show(note, true);
  $('task-submit').textContent = 'Save changes';
  showError('task-error', null);
  delete $('task-error').dataset.stale;
  ensureTarget(task.target);
  fillFields(task);
  const more = summary();
  $('task-more-summary').textContent = more;
  $('task-more').open = Boolean(more);
  checkSchedule();
  form.scrollIntoView({block: 'nearest'});
  $('task-schedule').focus({preventScroll: true});
}

/** The task being edited, if any (tasks.js marks its row). */
export function editingId() {
  return editing ? editing.task.id : null;
}

/** Mark the row of the task being edited (and only it). */
function markEditing() {
  for (const row of document.querySelectorAll('#tasks-body tr.task')) {
    if (editing && Number(row.dataset.id) === editing.task.id) row.dataset.editing = 'true';
    else delete row.dataset.editing;
  }
}

function endEdit(reset) {
  editing = null;
  markEditing();
  const form = $('task-form');
  delete form.dataset.mode;
  $('task-form-title').textContent = 'Add a task';
  show($('task-form-note'), false);
  $('task-submit').textContent = 'Add task';
  showError('task-error', null);
  delete $('task-error').dataset.stale;
  reset();
}

function summary() {
  try {
    return optionsSummary(readFields());
  } catch {
    return '';
  }
}

/** A target no worker offers now (an offline one) still shows as chosen. */
function ensureTarget(target) {
  const select = $('task-target');
  if (![...select.options].some((option) => option.value === target)) {
    select.append(h('option', {value: target}, `${target} (offline)`));
  }
}

/**
 * One of the next runs ({at, shifted}) in the zone the schedule runs in
 * (the task's own, else the scheduler's), with that zone's short name and,
 * where this browser's zone differs, its time too; flagged when a change of
 * clocks moves it (*shifted* says how).
 */
function nextRunEl(run, zone) {
  return h('span', {class: 'next-run-at'}, timeEl(run.at, '', {zone, withZone: true}),
    run.shifted ? h('span', {class: 'dst-flag', title: visible(String(run.shifted))}, ' ⚠ ', visible(String(run.shifted))) : null);
}

function fillTimezones() {
  let zones = [];
  try {
    zones = Intl.supportedValuesOf('timeZone');
  } catch {
    return; // older browsers: the field still takes any name
  }
  $('timezones').replaceChildren(...zones.map((zone) => h('option', {value: zone})));
}
