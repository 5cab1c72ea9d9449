// What started a job or changed a task (a job's triggeredBy, a revision's
// by), in a few words: the same words as TriggeredBy.text in
// scheduler/triggers.py, with a retry linking to the job it re-runs.

import {h, visible} from './dom.js';

/** {kind: "retry", job: 17} → "retry of job 17" (a link); null → "—". */
export function triggerText(by) {
  if (!by) return '—';
  const name = by.name ? visible(by.name) : null;
  switch (by.kind) {
    case 'retry':
      return by.job === null || by.job === undefined
        ? 'retry'
        : h('span', {}, 'retry of ', h('a', {href: `#/jobs/${by.job}`}, `job ${by.job}`));
    case 'missed':
      return 'missed run caught up';
    case 'tcp':
      return name ? `TCP from ${name}` : 'TCP';
    case 'api':
      return name ? `API (token ${name})` : 'API';
    case 'dashboard':
      return name ? `dashboard (${name})` : 'dashboard';
    default:
      return visible(String(by.kind));
  }
}
