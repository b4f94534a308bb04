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

function authorization(key) { return {Authorization: `Bearer ${key ?? session.key}`}; }

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

// A multipart POST with upload progress (fetch has none): resolves {status, body}, rejects with ApiError.
export function send(path, form, onProgress) {
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
    xhr.send(form);
  });
}

// Calls that a busy service refused (503, or 429 `rate_limited`) again after their Retry-After, a few times.
export async function retrying(call, onWait, tries = 3) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      const busy = error instanceof ApiError && (error.status === 503 || (error.status === 429 && error.code === 'rate_limited'));
      if (!busy || attempt >= tries) throw error;
      const seconds = Math.min(Math.max(error.retryAfter || 1, 1), 30);
      if (onWait) onWait(error, seconds);
      await new Promise((done) => setTimeout(done, seconds * 1000));
    }
  }
}

// Server-Sent Events over fetch (EventSource cannot send the key): yields {event, data} until the stream ends.
export async function* events(path, signal) {
  const res = await fetch(path, {headers: {...authorization(), Accept: 'text/event-stream'}, signal, cache: 'no-store'});
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
      const data = [];
      for (const line of chunk.split(/\r?\n/)) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield {event, data: JSON.parse(data.join('\n'))};
    }
  }
}
