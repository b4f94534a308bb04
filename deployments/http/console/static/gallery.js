// The gallery (a grid of the user's photos, newest first, paged by the cursor as the person scrolls; each photo
// opens its record) and the upload of single photos with a caption each.
import {aborted, ApiError, send} from './api.js';
import {append, clear, field, h, imageSrc} from './dom.js';
import {t, when} from './i18n.js';

const PAGE = 24;

function label(record) {
  if (record.caption) return record.caption;
  if (record.created_at) return t('photo_of', {date: when(record.created_at)});
  return t('photo');
}

export function thumb(record, onOpen, extra) {
  return h('li', {class: 'tile', 'data-img-id': record.img_id},
    h('button', {type: 'button', class: 'thumb', onclick: () => onOpen(record)},
      h('img', {src: imageSrc(record.image_url), alt: label(record), loading: 'lazy', width: 160, height: 160})),
    extra || null);
}

export function galleryView(main, ctx) {
  const grid = h('ul', {class: 'grid', 'aria-label': t('gallery_title')});
  const more = h('button', {type: 'button', class: 'secondary', hidden: true}, t('load_more'));
  const empty = h('p', {hidden: true}, t('gallery_empty'));
  let cursor = null;
  let loading = false;
  const inView = () => { const box = more.getBoundingClientRect(); return box.top < window.innerHeight && box.bottom > 0; };

  async function load() {
    if (loading) return;
    loading = true;
    more.disabled = true;
    try {
      const query = new URLSearchParams({limit: String(PAGE)});
      if (cursor) query.set('cursor', cursor);
      const page = await ctx.api(`/api/images?${query}`);
      append(grid, page.items.map((record) => thumb(record, (r) => openRecord(r, ctx, grid))));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      empty.hidden = grid.children.length > 0;
    } catch (error) {
      ctx.fail(error);
      cursor = null;
    } finally {
      loading = false;
      more.disabled = false;
    }
    if (cursor && !ctx.signal.aborted && inView()) load();  // a tall screen: the end is still in view
  }

  more.addEventListener('click', load);
  // The next page as the end of the grid comes into view (the button does the same by keyboard).
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && cursor && !loading) load();
  });
  observer.observe(more);
  ctx.signal.addEventListener('abort', () => observer.disconnect(), {once: true});
  append(main, h('h1', {}, t('gallery_title')), empty, grid, more);
  load();
}

export function openRecord(record, ctx, grid) {
  const opener = document.activeElement;
  const dialog = h('dialog', {class: 'record', 'aria-labelledby': 'record-title'});
  const done = (next) => {
    dialog.close();
    dialog.remove();
    const target = next || (opener && opener.isConnected ? opener : null) || document.querySelector('main h1');
    if (target) {
      if (target.tagName === 'H1') target.tabIndex = -1;
      target.focus();
    }
  };
  const rows = [
    [t('caption'), record.caption || '—'],
    [t('description'), record.description || '—'],
    [t('post_text'), record.post_text || '—'],
    [t('size'), `${record.width}×${record.height}`],
    [t('date'), when(record.created_at)],
    [t('source'), t(`source_${record.source}`)],
  ];
  const remove = h('button', {type: 'button', class: 'danger'}, t('delete_photo'));
  const confirm = h('button', {type: 'button', class: 'danger', hidden: true}, t('delete_photo_confirm'));
  remove.addEventListener('click', () => { remove.hidden = true; confirm.hidden = false; confirm.focus(); });
  confirm.addEventListener('click', async () => {
    confirm.disabled = true;
    try {
      await ctx.api(`/api/images/${encodeURIComponent(record.img_id)}`, {method: 'DELETE'});
      const tile = grid && grid.querySelector(`[data-img-id="${CSS.escape(record.img_id)}"]`);
      const neighbour = tile && (tile.nextElementSibling || tile.previousElementSibling);
      if (tile) tile.remove();
      done(neighbour ? neighbour.querySelector('button') : null);
      ctx.say(t('photo_deleted'));
    } catch (error) {
      confirm.disabled = false;
      ctx.fail(error);
    }
  });
  append(dialog,
    h('h2', {id: 'record-title'}, label(record)),
    h('img', {src: imageSrc(record.image_url), alt: label(record), class: 'large'}),
    h('dl', {}, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('div', {class: 'actions'},
      h('button', {type: 'button', class: 'secondary',
        onclick: () => { done(); ctx.go('describe', `?img=${encodeURIComponent(record.img_id)}`); }}, t('describe_this')),
      remove, confirm,
      h('button', {type: 'button', onclick: () => done()}, t('close'))));
  dialog.addEventListener('cancel', (event) => { event.preventDefault(); done(); });
  document.body.append(dialog);
  dialog.showModal();
}

export function uploadView(main, ctx) {
  const input = h('input', {type: 'file', multiple: true, accept: 'image/*'});
  const list = h('ul', {class: 'files', 'aria-label': t('chosen_files')});
  const go = h('button', {type: 'submit', disabled: true}, t('upload'));
  const chosen = [];

  function add(files) {
    for (const file of files) {
      const caption = h('input', {type: 'text', maxlength: 2000});
      const progress = h('progress', {max: 1, value: 0, 'aria-label': t('progress_of', {name: file.name})});
      const outcome = h('span', {class: 'outcome'});
      const item = h('li', {class: 'file'}, h('span', {class: 'name'}, file.name),
        field(t('caption_for', {name: file.name}), caption), progress, outcome);
      chosen.push({file, caption, progress, outcome, item});
      list.append(item);
    }
    go.disabled = chosen.length === 0;
  }

  input.addEventListener('change', () => { add(input.files); input.value = ''; });
  const zone = h('div', {class: 'drop'}, field(t('pick_photos'), input, t('drop_hint')));
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => { e.preventDefault(); zone.classList.remove('over'); add(e.dataTransfer.files); });

  const form = h('form', {class: 'card'}, zone, list, go);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    go.disabled = true;
    let stored = 0;
    let refused = 0;
    for (const entry of chosen.splice(0)) {
      if (ctx.signal.aborted) return;
      const body = new FormData();
      body.append('file', entry.file, entry.file.name);
      if (entry.caption.value) body.append('caption', entry.caption.value);
      entry.caption.disabled = true;
      try {
        const {status} = await send('/api/images', body, (share) => { entry.progress.value = share; }, ctx.signal);
        entry.progress.value = 1;
        clear(entry.outcome, status === 201 ? t('stored') : t('already_there'));
        entry.item.classList.add(status === 201 ? 'ok' : 'same');
        stored += 1;
      } catch (error) {
        if (aborted(error) || (error instanceof ApiError && error.status === 401)) return;
        clear(entry.outcome, t('refused', {message: ctx.explain(error)}));
        entry.item.classList.add('bad');
        refused += 1;
      }
    }
    ctx.say(t('upload_done', {stored, refused}), refused ? 'error' : 'info');
  });
  append(main, h('h1', {}, t('upload_title')), form);
}
