// The console's only way to the service: the public /api routes with the signed-in key. The key lives in this
// tab's sessionStorage (gone when the tab closes, never in a URL or a cookie); a 401 anywhere signs the tab out.

const KEY = 'atelier.key';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  forget() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.field = error.field || null;
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
  }
}

let unauthorized = () => {};
export function whenUnauthorized(handler) { unauthorized = handler; }

function failed(status, body, retryAfter) {
  const error = new ApiError(status, body, retryAfter);
  if (status === 401) unauthorized(error);
  return error;
}

async function answer(res) {
  if (res.status === 204) return null;
  const json = (res.headers.get('content-type') || '').includes('json');
  const body = json ? await res.json() : null;
  if (!res.ok) throw failed(res.status, body, res.headers.get('retry-after'));
  return body;
}

function authorization(key) {
  const k = key ?? session.key;
  if (!k) throw new DOMException('signed out', 'AbortError');  // never a call without a key (after sign-out)
  return {Authorization: `Bearer ${k}`};
}

export async function api(path, {method = 'GET', json, form, headers = {}, signal, key} = {}) {
  const all = {...authorization(key), ...headers};
  let body;
  if (json !== undefined) {
    all['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const res = await fetch(path, {method, headers: all, body, signal, cache: 'no-store', credentials: 'omit'});
  return answer(res);
}

// A multipart POST with upload progress (fetch has none): resolves {status, body}, rejects with ApiError (or an
// AbortError when `signal` stops it).
export function send(path, form, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    xhr.setRequestHeader('Authorization', authorization().Authorization);
    xhr.responseType = 'json';
    xhr.upload.addEventListener('progress', (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total); });
    xhr.addEventListener('load', () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve({status: xhr.status, body: xhr.response});
      else reject(failed(xhr.status, xhr.response, xhr.getResponseHeader('retry-after')));
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, null, null)));
    xhr.addEventListener('abort', () => reject(new DOMException('stopped', 'AbortError')));
    if (signal) {
      if (signal.aborted) return reject(new DOMException('stopped', 'AbortError'));
      signal.addEventListener('abort', () => xhr.abort(), {once: true});
    }
    xhr.send(form);
  });
}

export const aborted = (error) => error && error.name === 'AbortError';

export function wait(seconds, signal) {
  return new Promise((done, fail) => {
    const timer = setTimeout(done, seconds * 1000);
    if (signal) signal.addEventListener('abort', () => { clearTimeout(timer); fail(new DOMException('stopped', 'AbortError')); }, {once: true});
  });
}

// Calls that a busy service refused (503, or 429 `rate_limited`) again after their Retry-After (up to a minute),
// a few times; `onWait(error, seconds)` says so meanwhile.
export async function retrying(call, onWait, signal, tries = 3) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      const busy = error instanceof ApiError && (error.status === 503 || (error.status === 429 && error.code === 'rate_limited'));
      const seconds = Math.max(error.retryAfter || 1, 1);
      if (!busy || attempt >= tries || seconds > 60) throw error;
      if (onWait) onWait(error, seconds);
      await wait(seconds, signal);
    }
  }
}

// Server-Sent Events over fetch (EventSource cannot send the key): yields {event, id, data} until the stream ends.
// `after` is the id of the last event seen (a reconnection resumes after it).
export async function* events(path, signal, after = null) {
  const headers = {...authorization(), Accept: 'text/event-stream'};
  if (after !== null) headers['Last-Event-ID'] = String(after);
  const res = await fetch(path, {headers, signal, cache: 'no-store'});
  if (!res.ok) await answer(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
      let event = 'message';
      let id = null;
      const data = [];
      for (const line of chunk.split(/\r?\n/)) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('id:')) id = line.slice(3).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (!data.length) continue;
      const parsed = JSON.parse(data.join('\n'));
      if (event === 'error') {  // the stream's own refusal (a key revoked while it ran)
        const error = new ApiError(parsed.error && parsed.error.code === 'key_revoked' ? 401 : 500, parsed, null);
        if (error.status === 401) unauthorized(error);
        throw error;
      }
      yield {event, id, data: parsed};
    }
  }
}
