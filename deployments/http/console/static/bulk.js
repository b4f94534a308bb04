// Bulk upload: many photos or a .zip become one job; its progress bar is fed by the job's event stream (resumed
// after a dropped connection from the last event seen), with the counts, each failed file's reason, a cancel
// button, and the list of the person's jobs.
import {aborted, ApiError, events, send} from './api.js';
import {append, clear, field, h} from './dom.js';
import {t, when} from './i18n.js';

const ENDED = ['succeeded', 'failed', 'cancelled', 'undone', 'deleted'];

function counts(status) {
  return t('job_counts', {done: status.done, skipped: status.skipped_duplicates, failed: status.failed,
    total: status.total});
}

async function failures(jobId, list, ctx) {
  for (let offset = 0; offset !== null;) {
    const page = await ctx.api(`/api/init/upload/${encodeURIComponent(jobId)}/errors?offset=${offset}&limit=1000`);
    append(list, page.items.map((e) => h('li', {}, h('strong', {}, e.name), ` ${e.message}`)));
    offset = page.next_offset;
  }
}

function follow(jobId, panel, ctx, onEnd) {
  const bar = h('progress', {max: 1, value: 0, 'aria-label': t('job_progress')});
  const line = h('p', {class: 'counts'});
  const state = h('p', {class: 'state', role: 'status'});
  const problems = h('ul', {class: 'problems', 'aria-label': t('failed_files')});
  const cancel = h('button', {type: 'button', class: 'danger'}, t('cancel_job'));
  const path = `/api/init/upload/${encodeURIComponent(jobId)}`;
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      await ctx.api(path, {method: 'DELETE'});
    } catch (error) {
      ctx.fail(error);
      cancel.disabled = false;
    }
  });
  let seen = 0;  // progress events shown (the tests read it from the panel)
  const show = (status) => {
    if (status.total !== undefined) {
      bar.max = Math.max(status.total, 1);
      bar.value = status.done + status.skipped_duplicates + status.failed;
      clear(line, counts(status));
    }
    clear(state, t(`state_${status.state}`));
    panel.dataset.events = String(++seen);
  };
  clear(panel, h('h2', {}, t('job_title')), bar, line, state, cancel, problems);
  (async () => {
    let last = null;
    let after = null;
    try {
      // A stream that ends before its `done` (a dropped connection, a restarted replica) is opened again after
      // the last event it sent; a few times, then the status answers.
      for (let tries = 0; tries < 5 && !(last && ENDED.includes(last.state)); tries++) {
        for await (const {event, id, data} of events(`${path}/events`, ctx.signal, after)) {
          last = data;
          if (id !== null) after = id;
          show(data);
          if (event === 'done') break;
        }
      }
      if (!last || !ENDED.includes(last.state)) {
        last = await ctx.api(path);
        show(last);
      }
      cancel.hidden = true;
      if (last.failed > 0) await failures(jobId, problems, ctx);
    } catch (error) {
      if (!aborted(error) && !(error instanceof ApiError && error.status === 401)) ctx.fail(error);
    } finally {
      if (onEnd && !ctx.signal.aborted) onEnd();
    }
  })();
}

async function jobs(table, ctx) {
  try {
    const {items} = await ctx.api('/api/init/upload');
    clear(table, items.length === 0 ? h('p', {}, t('no_jobs')) : h('table', {},
      h('caption', {}, t('jobs_title')),
      h('thead', {}, h('tr', {}, [t('started'), t('state'), t('counts')].map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, items.map((job) => h('tr', {},
        h('td', {}, when(job.created_at)), h('td', {}, t(`state_${job.state}`)), h('td', {}, counts(job)))))));
  } catch (error) {
    ctx.fail(error);
  }
}

export function bulkView(main, ctx) {
  const input = h('input', {type: 'file', multiple: true, accept: 'image/*,.zip,application/zip'});
  const start = h('button', {type: 'submit'}, t('start_job'));
  const sending = h('progress', {max: 1, value: 0, hidden: true, 'aria-label': t('sending')});
  const table = h('section', {class: 'jobs'});
  const panels = h('div', {class: 'job-panels'});
  const form = h('form', {class: 'card'}, field(t('pick_bulk'), input, t('bulk_hint')), sending, start);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!input.files.length) return ctx.say(t('pick_first'), 'error');
    const body = new FormData();
    for (const file of input.files) body.append('files', file, file.name);
    input.value = '';  // taken: files chosen while this one is sent are the next job's
    start.disabled = true;
    sending.hidden = false;
    try {
      const {body: status} = await send('/api/init/upload', body, (share) => { sending.value = share; }, ctx.signal);
      const panel = h('section', {class: 'job', 'data-job-id': status.job_id});
      panels.prepend(panel);  // each job its own panel: a second one never draws into the first's
      follow(status.job_id, panel, ctx, () => jobs(table, ctx));
    } catch (error) {
      ctx.fail(error);
    } finally {
      start.disabled = false;
      sending.hidden = true;
    }
  });
  append(main, h('h1', {}, t('bulk_title')), form, panels, table);
  jobs(table, ctx);
}
