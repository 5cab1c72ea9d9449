// The one small form (Pause..., Run with...) open on a task's page, under
// its buttons.

import {$} from './dom.js';

let open = null; // {id, form}

/** Show *form* on task *id*'s page (replacing any other form there). */
export function openTaskPanel(id, form) {
  const host = $('task-panel');
  if (!host) return;
  open = {id, form};
  form.classList.add('task-panel');
  if (!form.dataset.escapes) {
    form.dataset.escapes = 'true';
    form.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') {
        event.stopPropagation();
        closeTaskPanel(id, form);
      }
    });
  }
  host.replaceChildren(form);
  form.querySelector('input, textarea, select, button')?.focus();
}

export function closeTaskPanel(id, form = null) {
  if (!open || open.id !== id || (form && open.form !== form)) return;
  open.form.remove();
  open = null;
  $('task-actions')?.querySelector('button')?.focus();
}

/** The form open for task *id*, if any (kept when the page is redrawn). */
export function openPanelOf(id) {
  return open && open.id === id ? open.form : null;
}
