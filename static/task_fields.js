// A task's fields as the add/edit form shows them, and back: what the
// inputs hold, the defaults an empty input stands for, and the environment
// as "KEY=value" lines.  The server checks every value again (ranges, names).

import {$} from './dom.js';

// The task options an empty input stands for (scheduler/tasks.py, TaskOptions).
export const DEFAULTS = {
  target: 'any', timezone: null, cwd: null, env: {}, timeout: null, retries: 0, retryDelay: 10,
  jitter: 0, overlap: 'allow', missed: 'skip', missedCap: 10, maxConcurrent: null, pool: null,
};

// field -> [input id, kind]
const INPUTS = {
  schedule: ['task-schedule', 'text'],
  command: ['task-command', 'raw'],
  jobName: ['task-name', 'text'],
  target: ['task-target', 'select'],
  timezone: ['task-timezone', 'text'],
  cwd: ['task-cwd', 'raw'],
  env: ['task-env', 'env'],
  timeout: ['task-timeout', 'number'],
  retries: ['task-retries', 'integer'],
  retryDelay: ['task-retry-delay', 'number'],
  jitter: ['task-jitter', 'number'],
  overlap: ['task-overlap', 'select'],
  missed: ['task-missed', 'select'],
  missedCap: ['task-missed-cap', 'integer'],
  maxConcurrent: ['task-max-concurrent', 'integer'],
  pool: ['task-pool', 'text'],
};

// Shown under "More options" (the others are always in view).
export const MORE = ['timezone', 'cwd', 'env', 'timeout', 'retries', 'retryDelay', 'jitter',
  'overlap', 'missed', 'missedCap', 'maxConcurrent', 'pool'];

export class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

/** {"A": "1"} -> "A=1" lines. */
export function envText(env) {
  return Object.entries(env || {}).map(([key, value]) => `${key}=${value}`).join('\n');
}

/** "KEY=value" lines -> {KEY: "value"}; blank lines and # comments are skipped. */
export function parseEnv(text) {
  const env = {};
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/\r$/, '');
    if (!line.trim() || line.trimStart().startsWith('#')) return;
    const at = line.indexOf('=');
    const key = at > 0 ? line.slice(0, at).trim() : '';
    if (!key) throw new FieldError('env', `Environment line ${index + 1}: write it as KEY=value.`);
    env[key] = line.slice(at + 1);
  });
  return env;
}

function readInput(field) {
  const [id, kind] = INPUTS[field];
  const raw = $(id).value;
  const text = raw.trim();
  const empty = field in DEFAULTS ? DEFAULTS[field] : '';
  if (kind === 'raw') return text ? raw : empty;
  if (kind === 'env') return parseEnv(raw);
  if (kind === 'number' || kind === 'integer') {
    if (!text) return empty;
    const value = Number(text);
    if (!Number.isFinite(value) || (kind === 'integer' && !Number.isInteger(value))) {
      throw new FieldError(field, `${$(id).labels[0]?.textContent.trim() || field}: enter ${kind === 'integer' ? 'a whole number' : 'a number'}.`);
    }
    return value;
  }
  return text || empty;
}

/** Every field as the form holds it (empty inputs read as the defaults). */
export function readFields() {
  const fields = {};
  for (const field of Object.keys(INPUTS)) fields[field] = readInput(field);
  return fields;
}

/** Show *task* in the form (empty inputs where it has the defaults). */
export function fillFields(task) {
  for (const [field, [id, kind]] of Object.entries(INPUTS)) {
    const value = task[field];
    const el = $(id);
    if (kind === 'env') el.value = envText(value);
    else if (kind === 'select') el.value = value ?? DEFAULTS[field];
    else if ((kind === 'number' || kind === 'integer') && value === DEFAULTS[field]) el.value = '';
    else el.value = value === null || value === undefined ? '' : String(value);
  }
}

export function clearFields() {
  fillFields({...DEFAULTS, schedule: '', command: '', jobName: '', target: $('task-target').value || 'any'});
}

export function inputOf(field) {
  return $(INPUTS[field][0]);
}

// Objects (env) compare by their entries, whatever their order.
const canonical = (value) => (value && typeof value === 'object' && !Array.isArray(value)
  ? Object.keys(value).sort().map((key) => [key, value[key]])
  : value);

export function same(a, b) {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

/** The options of *fields* that differ from the defaults (what a new task sends). */
export function nonDefaults(fields) {
  return Object.fromEntries(Object.entries(fields).filter(([field, value]) => !(field in DEFAULTS) || !same(value, DEFAULTS[field])));
}

/** The fields of *fields* that differ from *task* (what an edit sends). */
export function changes(fields, task) {
  return Object.fromEntries(Object.entries(fields).filter(([field, value]) => {
    if (field === 'jobName' && !value) return false; // an emptied name keeps the old one
    return !same(value, task[field] ?? DEFAULTS[field] ?? null);
  }));
}

/** "Europe/Berlin, 2 env, cwd /srv" — which options a task sets, in short. */
export function optionsSummary(fields) {
  const set = MORE.filter((field) => !same(fields[field], DEFAULTS[field]) && fields[field] !== undefined);
  return set.length ? `(${set.length} set: ${set.join(', ')})` : '';
}
