// The live feed: Server-Sent Events on GET /api/events, read with fetch()
// (not EventSource) so that the Authorization header can be sent.
//
// One connection at a time.  watch(jobId) moves it to /api/events?job=N,
// which adds that job's output events.  When the connection drops the feed
// reports it (onDown) and reconnects after 1 s, 2 s, 4 s ... up to 15 s;
// every successful (re)connect is reported with onOpen.

import {authHeaders, currentToken, tokenRejected} from './api.js';

const FIRST_DELAY = 1000;
const MAX_DELAY = 15000;
// A connection that lasted this long starts the backoff afresh.
const STABLE_AFTER = 5000;

export class Feed {
  constructor({onEvent, onOpen, onDown}) {
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onDown = onDown;
    this.job = null;
    this.phase = 'idle'; // connecting | open | waiting
    this.delay = FIRST_DELAY;
    this.controller = null;
    this.switching = false;
    this.wake = null;
    this.stopped = false;
  }

  start() {
    if (this.phase === 'idle') this.loop();
  }

  /** Close the connection for good (a job page's feed, when the page closes). */
  stop() {
    this.stopped = true;
    this.controller?.abort();
    this.wake?.();
  }

  get url() {
    return this.job === null ? '/api/events' : `/api/events?job=${encodeURIComponent(this.job)}`;
  }

  /** Follow this job's output too (null: no job). */
  watch(job) {
    if (job === this.job) return;
    this.job = job;
    if (this.phase === 'connecting' || this.phase === 'open') {
      this.switching = true;
      this.controller.abort();
    }
    // While waiting to reconnect, the next attempt simply uses the new URL.
  }

  /** Skip the rest of the backoff wait and try now. */
  retryNow() {
    if (this.wake) this.wake();
  }

  async loop() {
    for (;;) {
      if (this.stopped) return;
      const controller = new AbortController();
      this.controller = controller;
      this.phase = 'connecting';
      const job = this.job;
      const used = currentToken();
      let openedAt = null;
      let reason = null;
      try {
        const response = await fetch(this.url, {
          headers: {Accept: 'text/event-stream', ...authHeaders()},
          cache: 'no-store',
          signal: controller.signal,
        });
        if (response.status === 401) {
          if (await tokenRejected(used)) continue;
          throw new Error('an API token is needed');
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        this.phase = 'open';
        openedAt = Date.now();
        this.safely(() => this.onOpen({job}));
        await this.read(response.body);
        reason = new Error('the live feed ended');
      } catch (error) {
        reason = error;
      }
      if (this.stopped) return;
      if (openedAt !== null && Date.now() - openedAt >= STABLE_AFTER) this.delay = FIRST_DELAY;
      if (controller.signal.aborted && this.switching) {
        this.switching = false;
        continue; // a deliberate move to another URL, not a drop
      }
      this.switching = false;
      this.phase = 'waiting';
      this.safely(() => this.onDown({reason, delay: this.delay}));
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, this.delay);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
      this.delay = Math.min(this.delay * 2, MAX_DELAY);
    }
  }

  /** Parse SSE frames until the body ends (resolves) or fails (rejects). */
  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = '';
    let event = '';
    let data = [];
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        pending += value;
        const lines = pending.split('\n');
        pending = lines.pop();
        for (let line of lines) {
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (data.length) this.dispatch(event || 'message', data.join('\n'));
            event = '';
            data = [];
            continue;
          }
          if (line.startsWith(':')) continue; // a comment (": connected", ": keepalive")
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? '' : line.slice(colon + 1);
          if (text.startsWith(' ')) text = text.slice(1);
          if (field === 'event') event = text;
          else if (field === 'data') data.push(text);
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  dispatch(event, text) {
    let payload;
    try {
      payload = JSON.parse(text);
    } catch {
      console.warn('live feed: a frame that is not JSON', event, text);
      return;
    }
    this.safely(() => this.onEvent(event, payload));
  }

  safely(fn) {
    try {
      fn();
    } catch (error) {
      console.error('live feed handler failed', error);
    }
  }
}
