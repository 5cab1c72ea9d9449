// Running clocks: every element .elapsed[data-since] (an ISO time) shows
// how long ago that was, updated once a second while any is on the page.

let timer = null;

/** "0:07", "12:30", "2:03:09". */
export function clockText(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${rest}` : `${m}:${rest}`;
}

function tick() {
  const clocks = document.querySelectorAll('.elapsed[data-since]');
  if (!clocks.length) {
    clearInterval(timer);
    timer = null;
    return;
  }
  const now = Date.now();
  for (const el of clocks) {
    const since = Date.parse(el.dataset.since);
    if (!Number.isNaN(since)) el.textContent = clockText((now - since) / 1000);
  }
}

/** Start the clocks (call after adding .elapsed elements). */
export function startClocks() {
  tick();
  if (!timer && document.querySelector('.elapsed[data-since]')) timer = setInterval(tick, 1000);
}
