// A job's output box, cheap at any size.  Chunks are queued and drawn once
// per animation frame, each frame's complete lines as a new block of their
// own (so the browser lays out only the new block, never the whole log
// again), the unfinished last line in a small tail block redrawn with the
// next frame.  Whether to follow the end is decided from scroll events, not
// by measuring the log on every chunk, and the box is scrolled to its end
// at the start of the next frame, when the browser's own layout of the last
// one is still clean, rather than forcing a layout of its own right after
// each append.  Past a size cap the oldest blocks
// go, whatever their stream.  stdout and stderr stay apart as spans.
// Search uses the CSS Custom Highlight API where the browser has it.

import {h} from './dom.js';

export const OUTPUT_CAP = 2_000_000; // characters kept in the box
const INITIAL_BLOCK = 64 * 1024; // a loaded log is split into blocks of about this
const FRAME_CHARS = 32 * 1024; // most live output drawn in one animation frame

export class OutputView {
  constructor(box, {onFollowChange = () => {}, onTrim = () => {}} = {}) {
    this.box = box;
    this.onFollowChange = onFollowChange;
    this.onTrim = onTrim;
    this.queue = []; // [stream, text] waiting for the next frame
    this.frame = null;
    this.tail = null; // the block holding the unfinished last line
    this.tailSegments = [];
    this.size = 0;
    this.trimmed = 0;
    this.follow = true;
    this.scrollOwed = false;
    this.scrolledTo = 0; // where the box was last scrolled to its end
    box.addEventListener('scroll', () => {
      // Our own scroll to the end can be reported after more was appended:
      // only a move above that point is the reader leaving the end.
      const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 8;
      const follow = atEnd || (this.follow && box.scrollTop >= this.scrolledTo - 2);
      if (follow !== this.follow) {
        this.follow = follow;
        this.onFollowChange(follow);
      }
    }, {passive: true});
  }

  /** Empty the box (and drop what is queued). */
  clear() {
    this.queue = [];
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.frame = null;
    this.box.replaceChildren();
    this.tail = null;
    this.tailSegments = [];
    this.size = 0;
    this.trimmed = 0;
    this.setFollow(true);
  }

  /** Show a whole log at once (the box is emptied first). */
  load(text) {
    this.clear();
    if (!text) return;
    const blocks = [];
    for (let at = 0; at < text.length;) {
      let end = Math.min(text.length, at + INITIAL_BLOCK);
      const newline = text.indexOf('\n', end - 1);
      end = newline < 0 ? text.length : newline + 1;
      blocks.push(this.block([['log', text.slice(at, end)]]));
      at = end;
    }
    this.box.append(...blocks);
    this.size = text.length;
    this.trim();
    this.toEnd();
  }

  /**
   * Show a finished job's stored output with its streams apart (the box is
   * emptied first): *parts* as GET /api/jobs/{id}/output gives them, runs of
   * one stream each; *dropped* bytes the cap dropped before them.
   */
  loadParts(parts, dropped = 0) {
    this.clear();
    const all = dropped ? [['log', `[... ${dropped} bytes of earlier output dropped ...]\n`]] : [];
    for (const {stream, text} of parts) if (text) all.push([stream, text]);
    const blocks = [];
    let segments = [];
    let size = 0;
    for (const [stream, text] of all) {
      for (let at = 0; at < text.length;) {
        const piece = text.slice(at, at + INITIAL_BLOCK - size);
        segments.push([stream, piece]);
        size += piece.length;
        at += piece.length;
        if (size >= INITIAL_BLOCK) {
          blocks.push(this.block(segments));
          segments = [];
          size = 0;
        }
      }
    }
    if (segments.length) blocks.push(this.block(segments));
    this.box.append(...blocks);
    this.size = blocks.reduce((sum, block) => sum + block.size, 0);
    this.trim();
    this.toEnd();
  }

  /** Queue a chunk of *stream*; it is drawn with the next frame. */
  push(stream, text) {
    if (!text) return;
    this.queue.push([stream, text]);
    this.schedule();
  }

  schedule() {
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Draw what is queued now (tests and the end of a job call it too). */
  flush() {
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.frame = null;
    if (this.scrollOwed) {
      this.scrollOwed = false;
      if (this.follow) this.scrollToEnd(); // laid out already: cheap
    }
    if (!this.queue.length) return;
    // At most FRAME_CHARS of the queue per frame (a single larger chunk
    // alone): a page that fell behind -- a busy machine, a tab in the
    // background -- catches up over a few frames, not in one long task.
    let take = 1;
    let chars = this.queue[0][1].length;
    while (take < this.queue.length && chars + this.queue[take][1].length <= FRAME_CHARS) {
      chars += this.queue[take][1].length;
      take += 1;
    }
    const drawn = this.queue.slice(0, take);
    this.queue = this.queue.slice(take);
    // Merge the tail's segments and what is drawn now, neighbours of one stream joined.
    const segments = [];
    for (const [stream, text] of [...this.tailSegments, ...drawn]) {
      const last = segments[segments.length - 1];
      if (last && last[0] === stream) last[1] += text;
      else segments.push([stream, text]);
    }
    this.size += chars;
    // Complete lines go in a new block; what follows the last newline stays in the tail.
    let cut = -1;
    for (let i = segments.length - 1; i >= 0 && cut < 0; i--) {
      const at = segments[i][1].lastIndexOf('\n');
      if (at >= 0) cut = i;
    }
    let done = [];
    let rest = segments;
    if (cut >= 0) {
      const [stream, text] = segments[cut];
      const at = text.lastIndexOf('\n') + 1;
      done = [...segments.slice(0, cut), [stream, text.slice(0, at)]];
      rest = at < text.length ? [[stream, text.slice(at)], ...segments.slice(cut + 1)] : segments.slice(cut + 1);
    }
    if (this.tail) {
      this.tail.remove();
      this.tail = null;
    }
    if (done.length) this.box.append(this.block(done));
    this.tailSegments = rest;
    if (rest.length) {
      this.tail = this.block(rest);
      this.tail.classList.add('tail');
      this.box.append(this.tail);
    }
    this.trim();
    if (this.follow) this.scrollOwed = true;
    if (this.follow || this.queue.length) this.schedule();
  }

  /** Draw everything queued now, whatever it costs (before a search reads the box). */
  drain() {
    do this.flush(); while (this.queue.length);
  }

  block(segments) {
    const el = h('div', {class: 'out-block'},
      segments.map(([stream, text]) => (stream === 'stderr' || stream === 'log'
        ? h('span', {class: `stream-${stream}`}, text)
        : text)));
    el.size = segments.reduce((sum, [, text]) => sum + text.length, 0);
    return el;
  }

  trim() {
    let removed = 0;
    while (this.size > OUTPUT_CAP && this.box.firstElementChild && this.box.firstElementChild !== this.tail) {
      const first = this.box.firstElementChild;
      this.size -= first.size || first.textContent.length;
      removed += first.size || 0;
      first.remove();
    }
    if (removed) {
      this.trimmed += removed;
      this.onTrim(this.trimmed);
    }
  }

  scrollToEnd() {
    this.box.scrollTop = this.box.scrollHeight;
    this.scrolledTo = this.box.scrollTop;
  }

  toEnd() {
    this.scrollToEnd();
    this.setFollow(true);
  }

  setFollow(follow) {
    if (follow === this.follow) return;
    this.follow = follow;
    this.onFollowChange(follow);
  }

  text() {
    this.drain();
    return this.box.textContent;
  }

  /** Every match of *needle* (case-insensitive), as Ranges, at most *limit*. */
  find(needle, limit = 1000) {
    const ranges = [];
    if (!needle) return ranges;
    const lower = needle.toLowerCase();
    const walker = document.createTreeWalker(this.box, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node && ranges.length < limit; node = walker.nextNode()) {
      const text = node.data.toLowerCase();
      for (let at = text.indexOf(lower); at >= 0 && ranges.length < limit; at = text.indexOf(lower, at + lower.length)) {
        const range = document.createRange();
        range.setStart(node, at);
        range.setEnd(node, at + needle.length);
        ranges.push(range);
      }
    }
    return ranges;
  }
}

/** Mark *ranges* (all, and *current* apart) with the Highlight API, when the browser has it. */
export function highlight(ranges, current) {
  if (!globalThis.CSS?.highlights || typeof Highlight === 'undefined') return false;
  CSS.highlights.delete('output-match');
  CSS.highlights.delete('output-current');
  if (ranges.length) CSS.highlights.set('output-match', new Highlight(...ranges));
  if (current) CSS.highlights.set('output-current', new Highlight(current));
  return true;
}
