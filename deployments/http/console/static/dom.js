// Elements made from data, never from HTML text: a string child becomes a text node, so a caption such as
// `<img src=x onerror=alert(1)>` shows as those characters and runs nothing.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (name === 'value' || name === 'checked' || name === 'disabled' || name === 'hidden') el[name] = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, ...children);
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 10)}`;
  control.id = id;
  return h('div', {class: 'field'}, h('label', {for: id}, label), control, hint ? h('p', {class: 'hint'}, hint) : null);
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

// An image URL the API gave, as this page loads it: a signed /api/images/... URL by its path (the service that
// signed it serves this page too, whatever host name the browser used), a data: URI as it is.
export function imageSrc(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.pathname + parsed.search : url;
  } catch {
    return url;
  }
}
