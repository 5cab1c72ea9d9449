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

const timeOnly = new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit', second: '2-digit'});
const dayAndTime = new Intl.DateTimeFormat(undefined, {
  weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit',
});
const fullDate = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit',
});
const full = new Intl.DateTimeFormat(undefined, {dateStyle: 'full', timeStyle: 'long'});

function dayNumber(date) {
  return Math.floor((date.getTime() - date.getTimezoneOffset() * 60000) / 86400000);
}

/** A short local rendering: "14:05:09", "tomorrow 00:00", "Thu 27 Nov, 09:00". */
export function formatTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const now = new Date();
  const days = dayNumber(date) - dayNumber(now);
  if (days === 0) return timeOnly.format(date);
  const hm = date.toLocaleTimeString(undefined, {hour: '2-digit', minute: '2-digit'});
  if (days === 1) return `tomorrow ${hm}`;
  if (days === -1) return `yesterday ${hm}`;
  if (date.getFullYear() === now.getFullYear()) return dayAndTime.format(date);
  return fullDate.format(date);
}

/** A <time> element with the short text and the full date as a tooltip. */
export function timeEl(iso, fallback = '—') {
  if (!iso) return h('span', {class: 'muted'}, fallback);
  const date = new Date(iso);
  return h('time', {datetime: iso, title: Number.isNaN(date.getTime()) ? iso : full.format(date)},
    formatTime(iso));
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
