// DOM building and formatting.  Every piece of data reaches the page as a
// text node or an attribute value: nothing here parses HTML.

/**
 * h('a', {href: '#/', class: 'x', onclick: fn}, 'text', childNode, [more])
 * Strings become text nodes; null, undefined and false are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

// Characters a page acts on instead of showing: C0 and C1 controls, DEL,
// bidi embeddings, overrides and isolates (which reorder what is shown, so
// "rm -rf /tmp/x" could read as something else), invisible marks, line
// separators and lone surrogates.  The same set and escapes as LIST on the
// command port (scheduler/tcp_commands.py, _HIDDEN).
const HIDDEN = /[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]/gu;
const NAMED = {'\t': '\\t', '\n': '\\n', '\r': '\\r'};

/** *text* with each control or bidi character shown as an escape (\x1b, \u202e). */
export function visible(text) {
  return String(text).replace(HIDDEN, (char) => {
    if (NAMED[char]) return NAMED[char];
    const code = char.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** Like visible(), but newlines stay line breaks (a multi-line command or script). */
export function visibleLines(text) {
  return String(text).split('\n').map(visible).join('\n');
}

export const $ = (id) => document.getElementById(id);

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function show(el, visible) {
  el.hidden = !visible;
}

/** Show *message* in the error line with this id, or hide it (no message). */
export function showError(id, message) {
  const el = $(id);
  el.textContent = message || '';
  show(el, Boolean(message));
}

// -- times and durations ------------------------------------------------------
//
// Times show in the scheduler's time zone (its /api/health says which), so
// they read the same as its schedules; where this browser's zone differs,
// the tooltip gives the browser's time too.  Until the zone is known (or if
// the scheduler does not say), times are the browser's.

export const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
let displayZone = null; // null: this browser's

const formats = new Map(); // "zone|kind" -> Intl.DateTimeFormat
const KINDS = {
  time: {hour: '2-digit', minute: '2-digit', second: '2-digit'},
  hm: {hour: '2-digit', minute: '2-digit'},
  dayTime: {weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit'},
  date: {year: 'numeric', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit'},
  full: {dateStyle: 'full', timeStyle: 'long'},
  day: {year: 'numeric', month: '2-digit', day: '2-digit'},
  zoneName: {timeZoneName: 'short'},
};

function format(kind, zone) {
  const key = `${zone || ''}|${kind}`;
  let made = formats.get(key);
  if (!made) {
    try {
      made = new Intl.DateTimeFormat(undefined, {...KINDS[kind], timeZone: zone || undefined});
    } catch {
      made = new Intl.DateTimeFormat(undefined, KINDS[kind]); // a zone this browser does not know
    }
    formats.set(key, made);
  }
  return made;
}

/** Show times in *zone* (an IANA name; null: this browser's). */
export function setDisplayZone(zone) {
  displayZone = zone || null;
}

/** The zone times show in, and whether it is the scheduler's. */
export function shownZone() {
  return {zone: displayZone || viewerZone, scheduler: Boolean(displayZone)};
}

/** Does *zone* read the same as this browser's zone at this moment? */
export function sameAsViewer(zone, at = new Date()) {
  if (!zone || zone === viewerZone) return true;
  return format('full', zone).format(at) === format('full', viewerZone).format(at);
}

function dayNumber(date, zone) {
  const parts = Object.fromEntries(format('day', zone).formatToParts(date).map((p) => [p.type, p.value]));
  return Math.floor(Date.UTC(Number(parts.year), Number(parts.month) - 1, Number(parts.day)) / 86400000);
}

/** "CET", "GMT-5": the short name of *zone* at *date*. */
export function zoneAbbreviation(date, zone) {
  const part = format('zoneName', zone).formatToParts(date).find((p) => p.type === 'timeZoneName');
  return part ? part.value : (zone || '');
}

const todays = new Map(); // zone -> [day number, valid until (ms)]

function today(zone) {
  const now = Date.now();
  const known = todays.get(zone || '');
  if (known && now < known[1]) return known[0];
  const day = dayNumber(new Date(now), zone);
  todays.set(zone || '', [day, now + 60_000 - (now % 60_000)]);
  return day;
}

/** A short rendering in *zone* (default: the shown zone): "14:05:09", "tomorrow 00:00", "Thu 27 Nov, 09:00". */
export function formatTime(iso, zone = displayZone) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const days = dayNumber(date, zone) - today(zone);
  if (days === 0) return format(date.getUTCSeconds() || date.getUTCMilliseconds() ? 'time' : 'hm', zone).format(date);
  const hm = format('hm', zone).format(date);
  if (days === 1) return `tomorrow ${hm}`;
  if (days === -1) return `yesterday ${hm}`;
  if (Math.abs(days) < 180) return format('dayTime', zone).format(date);
  return format('date', zone).format(date);
}

/** The full date in *zone*, and in this browser's zone too where that differs. */
export function fullTime(iso, zone = displayZone) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const text = format('full', zone).format(date);
  if (sameAsViewer(zone || viewerZone, date)) return text;
  return `${text} · your time: ${format('full', viewerZone).format(date)}`;
}

/**
 * A <time> element with the short text and the full date as a tooltip;
 * *withZone* adds the zone's short name ("02:00 CET") and, where this
 * browser's zone differs, its time as well.
 */
export function timeEl(iso, fallback = '—', {zone = displayZone, withZone = false} = {}) {
  if (!iso) return h('span', {class: 'muted'}, fallback);
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h('time', {datetime: iso}, String(iso));
  let text = formatTime(iso, zone);
  let yours = null;
  if (withZone) {
    text += ` ${zoneAbbreviation(date, zone)}`;
    if (!sameAsViewer(zone || viewerZone, date)) {
      yours = h('span', {class: 'yours'}, ` (${formatTime(iso, viewerZone)} yours)`);
    }
  }
  return h('time', {datetime: iso, title: fullTime(iso, zone)}, text, yours);
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  const rest = Math.round(seconds % 60);
  if (minutes < 60) return `${minutes} min ${rest} s`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${minutes % 60} min`;
}

/** Calls fn once, *wait* ms after the last call. */
export function debounce(fn, wait) {
  let timer = null;
  const debounced = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, wait);
  };
  debounced.cancel = () => clearTimeout(timer);
  return debounced;
}

/** Enter on a <select> in *form* submits it, as Enter in a text field does. */
export function enterSubmits(form) {
  form.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && event.target instanceof HTMLSelectElement) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}
