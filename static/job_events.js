// "A job changed", from the live feed or from the answer to a request that
// made or cancelled it: every panel showing jobs hears it the same way.
// app.js registers the panels, in the order they are brought up to date.

const listeners = [];

export function onJobChange(listener) {
  listeners.push(listener);
}

export function jobChanged(job) {
  for (const listener of listeners) listener(job);
}
