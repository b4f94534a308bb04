// Bulk upload: many photos or a .zip become one job; its progress bar is fed by the job's event stream, with the
// counts, each failed file's reason, a cancel button, and the list of the person's jobs.
import {api, events, send} from './api.js';
import {append, clear, field, h} from './dom.js';
import {t, when} from './i18n.js';

function counts(status) {
  return t('job_counts', {done: status.done, skipped: status.skipped_duplicates, failed: status.failed,
    total: status.total});
}

function follow(jobId, panel, ctx, onEnd) {
  const bar = h('progress', {max: 1, value: 0, 'aria-label': t('job_progress')});
  const line = h('p', {class: 'counts', 'aria-live': 'polite'});
  const state = h('p', {class: 'state'});
  const problems = h('ul', {class: 'problems', 'aria-label': t('failed_files')});
  const cancel = h('button', {type: 'button', class: 'danger'}, t('cancel_job'));
  const stream = new AbortController();
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      await api(`/api/init/upload/${jobId}`, {method: 'DELETE'});
    } catch (error) {
      ctx.fail(error);
      cancel.disabled = false;
    }
  });
  const show = (status) => {
    bar.max = Math.max(status.total, 1);
    bar.value = status.done + status.skipped_duplicates + status.failed;
    clear(line, counts(status));
    clear(state, t(`state_${status.state}`));
  };
  clear(panel, h('h2', {}, t('job_title')), bar, line, state, cancel, problems);
  (async () => {
    let last = null;
    try {
      for await (const {event, data} of events(`/api/init/upload/${jobId}/events`, stream.signal)) {
        last = data;
        show(data);
        if (event === 'done') break;
      }
      if (!last || !['succeeded', 'failed', 'cancelled', 'undone'].includes(last.state)) {
        last = await api(`/api/init/upload/${jobId}`);
        show(last);
      }
      cancel.hidden = true;
      if (last.failed > 0) {
        const page = await api(`/api/init/upload/${jobId}/errors?limit=1000`);
        append(problems, page.items.map((e) => h('li', {}, h('strong', {}, e.name), ` ${e.message}`)));
      }
    } catch (error) {
      ctx.fail(error);
    } finally {
      if (onEnd) onEnd();
    }
  })();
}

async function jobs(table, ctx) {
  try {
    const {items} = await api('/api/init/upload');
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
  const panel = h('section', {class: 'job', 'aria-live': 'polite'});
  const table = h('section', {class: 'jobs'});
  const form = h('form', {class: 'card'}, field(t('pick_bulk'), input, t('bulk_hint')), sending, start);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!input.files.length) return ctx.say(t('pick_first'), 'error');
    const body = new FormData();
    for (const file of input.files) body.append('files', file, file.name);
    start.disabled = true;
    sending.hidden = false;
    try {
      const {body: status} = await send('/api/init/upload', body, (share) => { sending.value = share; });
      input.value = '';
      follow(status.job_id, panel, ctx, () => jobs(table, ctx));
    } catch (error) {
      ctx.fail(error);
    } finally {
      start.disabled = false;
      sending.hidden = true;
    }
  });
  append(main, h('h1', {}, t('bulk_title')), form, panel, table);
  jobs(table, ctx);
}
