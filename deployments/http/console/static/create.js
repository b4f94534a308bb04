// Search (text in Chinese or English, or an image), generate (idea -> enhanced prompt -> image), describe (a photo
// -> its description and a Chinese post text), and the account (usage; delete everything).
import {retrying, send} from './api.js';
import {append, clear, field, h, imageSrc} from './dom.js';
import {t, when} from './i18n.js';
import {openRecord, thumb} from './gallery.js';

function results(list, items, ctx) {
  clear(list, items.length === 0 ? h('li', {}, t('no_results')) : items.map((hit) =>
    thumb(hit, async (r) => {
      try {
        openRecord(await ctx.api(`/api/images/${encodeURIComponent(r.img_id)}`), ctx, list);  // the whole record
      } catch (error) {
        ctx.fail(error);
      }
    }, h('span', {class: 'score'}, t('score', {score: hit.score.toFixed(4)})))));
}

export function searchView(main, ctx) {
  const q = h('input', {type: 'search', name: 'q', required: true, maxlength: 500});
  const byText = h('form', {class: 'card', role: 'search'}, field(t('search_label'), q, t('search_hint')),
    h('button', {type: 'submit'}, t('search')));
  const file = h('input', {type: 'file', accept: 'image/*'});
  const byImage = h('form', {class: 'card'}, field(t('search_image_label'), file), h('button', {type: 'submit'}, t('search_image')));
  const list = h('ul', {class: 'grid', 'aria-label': t('results')});
  const notes = h('div', {});
  // One search (by text or by an image): retried while the service is busy, its results shown with their notes.
  const run = async (call) => {
    try {
      const answer = await retrying(call, (e, s) => ctx.say(t('retry_wait', {seconds: s})), ctx.signal);
      clear(notes, ctx.provenance(answer));
      results(list, answer.results, ctx);
      ctx.say(t('found', {n: answer.results.length}));
    } catch (error) {
      ctx.fail(error);
    }
  };
  byText.addEventListener('submit', (event) => {
    event.preventDefault();
    run(() => ctx.api(`/api/search?${new URLSearchParams({q: q.value, k: '24'})}`));
  });
  byImage.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!file.files.length) return ctx.say(t('pick_first'), 'error');
    const body = new FormData();
    body.append('file', file.files[0], file.files[0].name);
    body.append('k', '24');
    run(() => send('/api/search/by-image', body, null, ctx.signal).then((r) => r.body));
  });
  append(main, h('h1', {}, t('search_title')), byText, byImage, notes, list);
}

function dataUriBlob(uri) {
  const [head, data] = uri.split(',');
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], {type: head.slice(5).split(';')[0]});
}

export function generateView(main, ctx) {
  const idea = h('textarea', {name: 'text', rows: 3, required: true, maxlength: 2000});
  const size = h('select', {name: 'size'}, ['small', 'medium', 'large'].map((s) => h('option', {value: s}, t(`size_${s}`))));
  const seed = h('input', {type: 'number', name: 'seed', min: 0, max: 4294967295, step: 1, inputmode: 'numeric'});
  const keep = h('input', {type: 'checkbox', name: 'keep', checked: true});
  const go = h('button', {type: 'submit'}, t('generate'));
  const out = h('section', {class: 'result', 'aria-live': 'polite'});
  const form = h('form', {class: 'card'}, field(t('idea_label'), idea, t('idea_hint')), field(t('size'), size),
    field(t('seed_label'), seed, t('seed_hint')), h('div', {class: 'check'}, keep, h('label', {for: 'keep'}, t('keep_label'))), go);
  keep.id = 'keep';
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    go.disabled = true;
    clear(out, h('p', {}, t('generating')));
    const body = {text: idea.value, size: size.value, enhance: true, save_to_gallery: keep.checked};
    if (seed.value !== '') body.seed = Number(seed.value);
    const started = performance.now();
    const headers = {'Idempotency-Key': crypto.randomUUID()};  // a retry after a 503 is the same request
    try {
      const answer = await retrying(() => ctx.api('/api/generate/image', {method: 'POST', json: body, headers}),
        (e, s) => clear(out, h('p', {}, t('retry_wait', {seconds: s}))), ctx.signal);
      const took = ((performance.now() - started) / 1000).toFixed(1);
      const saved = h('p', {class: 'saved'}, answer.img_id ? t('kept') : '');
      const keepNow = answer.img_id ? null : h('button', {type: 'button', class: 'secondary'}, t('keep_now'));
      if (keepNow) keepNow.addEventListener('click', async () => {
        keepNow.disabled = true;
        const file = new FormData();
        file.append('file', dataUriBlob(answer.image_url), 'generated.png');
        try {
          await send('/api/images', file, null, ctx.signal);
          keepNow.remove();
          clear(saved, t('kept'));
        } catch (error) {
          keepNow.disabled = false;
          ctx.fail(error);
        }
      });
      clear(out, h('h2', {}, t('result')), ctx.provenance(answer),
        h('p', {}, h('strong', {}, t('prompt_used')), ' ', h('span', {class: 'prompt'}, answer.prompt.used)),
        h('img', {src: imageSrc(answer.image_url), alt: answer.prompt.used, class: 'large'}),
        h('p', {class: 'meta'}, t('generated_meta', {size: answer.size, seed: answer.seed,
          seconds: Number(answer.generation_time).toFixed(2), total: took})),
        saved, keepNow);
      ctx.say(t('generated'));
    } catch (error) {
      clear(out);
      ctx.fail(error);
    } finally {
      go.disabled = false;
    }
  });
  append(main, h('h1', {}, t('generate_title')), form, out);
}

function copyable(label, text, ctx) {
  const id = `copy-${Math.random().toString(36).slice(2, 8)}`;
  const copy = h('button', {type: 'button', class: 'secondary', 'aria-label': t('copy_what', {what: label})}, t('copy'));
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
      ctx.say(t('copied', {what: label}));
    } catch {
      ctx.say(t('copy_failed'), 'error');
    }
  });
  return h('div', {class: 'copyable'}, h('h3', {id}, label), h('p', {class: 'text'}, text), copy);  // named by its heading
}

export async function describeView(main, ctx, params) {
  const pick = h('select', {name: 'img'}, h('option', {value: ''}, t('choose_photo')));
  const file = h('input', {type: 'file', accept: 'image/*'});
  const go = h('button', {type: 'submit'}, t('describe'));
  const out = h('section', {class: 'result', 'aria-live': 'polite'});
  const form = h('form', {class: 'card'}, field(t('from_gallery'), pick), field(t('or_file'), file), go);
  append(main, h('h1', {}, t('describe_title')), form, out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!pick.value && !file.files.length) return ctx.say(t('pick_first'), 'error');
    go.disabled = true;
    clear(out, h('p', {}, t('describing')));
    try {
      let call;  // a file if one was picked, else the gallery photo
      if (file.files.length) {
        const body = new FormData();
        body.append('file', file.files[0], file.files[0].name);
        call = () => send('/api/describe', body, null, ctx.signal).then((r) => r.body);
      } else {
        call = () => ctx.api('/api/describe', {method: 'POST', json: {img_id: pick.value}});
      }
      const answer = await retrying(call, (e, s) => clear(out, h('p', {}, t('retry_wait', {seconds: s}))), ctx.signal);
      clear(out, ctx.provenance(answer), copyable(t('description'), answer.description, ctx),
        copyable(t('post_text'), answer.caption_zh, ctx), answer.img_id ? h('p', {}, t('saved_on_record')) : null);
      ctx.say(t('described'));
    } catch (error) {
      clear(out);
      ctx.fail(error);
    } finally {
      go.disabled = false;
    }
  });
  try {
    const page = await ctx.api('/api/images?limit=100');
    const wanted = params && params.get('img');
    const records = page.items;
    if (wanted && !records.some((r) => r.img_id === wanted)) {  // an older photo than the list's first 100
      records.unshift(await ctx.api(`/api/images/${encodeURIComponent(wanted)}`));
    }
    append(pick, records.map((r) => h('option', {value: r.img_id}, r.caption || t('photo_of', {date: when(r.created_at)}))));
    if (wanted) pick.value = wanted;
  } catch (error) {
    ctx.fail(error);
  }
}

export async function accountView(main, ctx) {
  const usage = h('section', {class: 'card'}, h('h2', {}, t('usage_title')));
  const what = h('ul', {}, ['erase_photos', 'erase_texts', 'erase_vectors', 'erase_jobs'].map((k) => h('li', {}, t(k))));
  const understood = h('input', {type: 'checkbox', id: 'understood'});
  const erase = h('button', {type: 'button', class: 'danger', disabled: true}, t('delete_all_confirm'));
  const ask = h('button', {type: 'button', class: 'danger'}, t('delete_all'));
  const confirm = h('div', {class: 'confirm', hidden: true}, h('p', {}, t('delete_all_intro')), what,
    h('div', {class: 'check'}, understood, h('label', {for: 'understood'}, t('delete_all_understood'))), erase);
  understood.addEventListener('change', () => { erase.disabled = !understood.checked; });
  ask.addEventListener('click', () => { ask.hidden = true; confirm.hidden = false; understood.focus(); });
  erase.addEventListener('click', async () => {
    erase.disabled = true;
    try {
      await ctx.api('/api/me', {method: 'DELETE'});
      ctx.say(t('deleted_all'));
      confirm.hidden = true;
      ask.hidden = false;
      understood.checked = false;
    } catch (error) {
      erase.disabled = false;
      ctx.fail(error);
    }
  });
  append(main, h('h1', {}, t('account_title')), usage,
    h('section', {class: 'card'}, h('h2', {}, t('danger_title')), ask, confirm));
  try {
    const answer = await ctx.api('/api/me/usage');
    append(usage, h('p', {}, t('plan', {plan: answer.plan})), h('table', {},
      h('thead', {}, h('tr', {}, [t('limit'), t('used'), t('quota')].map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, answer.limits.map((l) => h('tr', {}, h('td', {}, l.limit), h('td', {}, String(l.used)),
        h('td', {}, `${l.quota} ${l.unit}`))))));
  } catch (error) {
    ctx.fail(error);
  }
}
