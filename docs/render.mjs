// Renders docs/openapi.yaml and docs/asyncapi.yaml (with the shared
// docs/schemas/stackpulse.json) into one self-contained static HTML page,
// docs/dist/index.html, which the binary embeds and serves at GET /docs
// (crates/stackpulse/src/http/docs.rs). The page has inline CSS only: no scripts, no
// external fetches. The output is deterministic (sorted, no timestamps), so
// `--check` can compare it with the checked-in file (scripts/test-specs.sh).
// YAML is read with js-yaml, which docs/package-lock.json already installs (through
// @asyncapi/parser).
// Usage: node docs/render.mjs          writes docs/dist/index.html
//        node docs/render.mjs --check  exit 1 when docs/dist/index.html is stale
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import yaml from 'js-yaml';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, 'dist', 'index.html');
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

const openapi = yaml.load(readFileSync(join(here, 'openapi.yaml'), 'utf8'));
const asyncapi = yaml.load(readFileSync(join(here, 'asyncapi.yaml'), 'utf8'));
const schemas = JSON.parse(readFileSync(join(here, 'schemas', 'stackpulse.json'), 'utf8'));

// ---- references -------------------------------------------------------------------

/** The $defs name of a reference into schemas/stackpulse.json, or null. */
function defName(ref) {
  const m = /(?:^|stackpulse\.json)#\/\$defs\/([^/]+)$/.exec(ref);
  return m ? m[1] : null;
}

/** Follows `#/...` references inside `doc` (a spec) until a non-reference. */
function follow(doc, node) {
  const seen = new Set();
  while (node && typeof node.$ref === 'string' && node.$ref.startsWith('#/') && !seen.has(node.$ref)) {
    seen.add(node.$ref);
    let target = doc;
    for (const part of node.$ref.slice(2).split('/')) {
      target = target?.[part.replace(/~1/g, '/').replace(/~0/g, '~')];
    }
    if (target === undefined) throw new Error(`dangling $ref ${node.$ref}`);
    node = target;
  }
  return node;
}

/** A schema with references to the shared schemas resolved (one level). */
function schemaOf(node) {
  if (node && typeof node.$ref === 'string') {
    const name = defName(node.$ref);
    if (name) {
      const def = schemas.$defs[name];
      if (!def) throw new Error(`${node.$ref} names no $defs`);
      return { name, schema: def };
    }
  }
  return { name: null, schema: node ?? {} };
}

// ---- HTML helpers -----------------------------------------------------------------

function esc(s) {
  return String(s)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;');
}

/** Minimal inline Markdown: `code`, **bold**; paragraphs on blank lines. */
function md(text) {
  if (!text) return '';
  const inline = (s) =>
    esc(s)
      .replace(/`([^`]+)`/g, '<code>$1</code>')
      .replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>');
  return String(text)
    .trim()
    .split(/\n\s*\n/)
    .map((p) => `<p>${inline(p.replace(/\s*\n\s*/g, ' '))}</p>`)
    .join('\n');
}

function slug(s) {
  return String(s)
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '');
}

// ---- schema shapes ------------------------------------------------------------------

/** A one-line type of a schema: `string`, `integer ≥ 0`, `Topic (string)`, `"a" | "b"`. */
function typeOf(node, depth = 0) {
  if (node === true || node === undefined) return 'any';
  if (node === false) return 'never';
  const { name, schema } = schemaOf(node);
  if (name) {
    const inner = depth < 2 ? typeOf(schema, depth + 1) : '';
    return inner && inner !== 'object' && !inner.startsWith(name) ? `${name} (${inner})` : name;
  }
  const s = schema;
  if ('const' in s) return JSON.stringify(s.const);
  if (Array.isArray(s.enum)) return s.enum.map((v) => JSON.stringify(v)).join(' | ');
  for (const key of ['oneOf', 'anyOf']) {
    if (Array.isArray(s[key])) return s[key].map((v) => typeOf(v, depth + 1)).join(' | ');
  }
  if (s.not) return `not ${typeOf(s.not, depth + 1)}`;
  if (Array.isArray(s.allOf) && !s.type && !s.properties) {
    return s.allOf.map((v) => typeOf(v, depth + 1)).join(' & ');
  }
  let t = Array.isArray(s.type) ? s.type.join(' | ') : s.type ?? (s.properties ? 'object' : '');
  if (t === 'array') t = `array of ${typeOf(s.items, depth + 1)}`;
  const limits = [];
  if (s.minimum !== undefined) limits.push(`≥ ${s.minimum}`);
  if (s.maximum !== undefined) limits.push(`≤ ${s.maximum}`);
  if (s.maxLength !== undefined) limits.push(`≤ ${s.maxLength} chars`);
  if (s.pattern) limits.push(`/${s.pattern}/`);
  if (s.format) limits.push(s.format);
  return [t || 'any', ...limits].join(' ');
}

/** The properties and required names of an object schema, allOf members merged. */
function objectShape(node, seen = new Set()) {
  const { name, schema } = schemaOf(node);
  if (name) {
    if (seen.has(name)) return { props: {}, required: [] };
    seen = new Set(seen).add(name);
  }
  const props = {};
  const required = new Set();
  for (const part of schema.allOf ?? []) {
    const inner = objectShape(part, seen);
    Object.assign(props, inner.props);
    inner.required.forEach((r) => required.add(r));
  }
  for (const [k, v] of Object.entries(schema.properties ?? {})) {
    // A refinement (`type: {const: …}`) over an allOf member's property wins.
    props[k] = v;
  }
  (schema.required ?? []).forEach((r) => required.add(r));
  return { props, required: [...required] };
}

/** Whether the schema (after $defs) is an object with properties worth a row each. */
function hasFields(node) {
  const { schema } = schemaOf(node);
  return Boolean(schema.properties || (schema.allOf ?? []).some((p) => hasFields(p)));
}

/** Field rows `[path, type, required, description]`, nested objects two levels deep. */
function fieldRows(node, prefix = '', depth = 0) {
  const { props, required } = objectShape(node);
  const rows = [];
  for (const key of Object.keys(props).sort(fieldOrder(required))) {
    const prop = props[key];
    const { schema } = schemaOf(prop);
    const desc = prop.description ?? schema.description ?? '';
    rows.push([prefix + key, typeOf(prop), required.includes(key), desc]);
    if (depth < 2 && hasFields(prop)) {
      rows.push(...fieldRows(prop, `${prefix}${key}.`, depth + 1));
    }
  }
  return rows;
}

/** Required fields first, then by name. */
function fieldOrder(required) {
  return (a, b) => {
    const ra = required.includes(a) ? 0 : 1;
    const rb = required.includes(b) ? 0 : 1;
    return ra - rb || (a < b ? -1 : a > b ? 1 : 0);
  };
}

/** The body shape of a schema: its name, description and a field table. */
function shape(node) {
  const { name, schema } = schemaOf(node);
  const parts = [];
  const label = name ? `<code class="def">${esc(name)}</code>` : '';
  const desc = schema.description ? md(schema.description) : '';
  if (hasFields(node)) {
    const rows = fieldRows(node);
    parts.push(label, desc);
    parts.push(
      '<table class="fields"><thead><tr><th>field</th><th>type</th><th>description</th></tr></thead><tbody>',
      ...rows.map(
        ([path, type, req, d]) =>
          `<tr><td><code>${esc(path)}</code>${req ? ' <span class="req">required</span>' : ''}</td>` +
          `<td><code>${esc(type)}</code></td><td>${md(d)}</td></tr>`,
      ),
      '</tbody></table>',
    );
  } else {
    parts.push(`${label ? `${label} ` : ''}<code>${esc(name ? typeOf(schema) : typeOf(node))}</code>`, desc);
  }
  return parts.filter(Boolean).join('\n');
}

// ---- HTTP -------------------------------------------------------------------------

function statusSort(a, b) {
  return String(a).localeCompare(String(b), 'en', { numeric: true });
}

function renderContent(content) {
  if (!content) return '';
  return Object.keys(content)
    .sort()
    .map((type) => {
      const media = content[type];
      const body = media.schema ? shape(media.schema) : '';
      return `<div class="media"><span class="mt">${esc(type)}</span>\n${body}</div>`;
    })
    .join('\n');
}

function renderOperation(path, method, op) {
  const id = `http-${method}-${slug(path) || 'root'}`;
  const parts = [`<section class="op" id="${id}">`];
  parts.push(
    `<h3><span class="method ${method}">${method.toUpperCase()}</span> <code>${esc(path)}</code></h3>`,
  );
  if (op.summary) parts.push(`<p class="summary">${esc(op.summary)}</p>`);
  if (op.description) parts.push(md(op.description));
  const security = (op.security ?? openapi.security ?? [])
    .map((req) => Object.keys(req).sort().join(' + ') || 'none')
    .join(', ');
  if (security) parts.push(`<p class="auth">Credentials: ${esc(security)}</p>`);
  const params = (op.parameters ?? []).map((p) => follow(openapi, p));
  if (params.length) {
    parts.push('<h4>Parameters</h4><table class="fields"><thead><tr><th>name</th><th>in</th><th>type</th></tr></thead><tbody>');
    for (const p of params) {
      parts.push(
        `<tr><td><code>${esc(p.name)}</code>${p.required ? ' <span class="req">required</span>' : ''}</td>` +
          `<td>${esc(p.in)}</td><td><code>${esc(typeOf(p.schema))}</code></td></tr>`,
      );
    }
    parts.push('</tbody></table>');
  }
  if (op.requestBody) {
    const body = follow(openapi, op.requestBody);
    parts.push(`<h4>Request body${body.required ? '' : ' (optional)'}</h4>`, renderContent(body.content));
  }
  parts.push('<h4>Responses</h4><dl class="responses">');
  for (const status of Object.keys(op.responses ?? {}).sort(statusSort)) {
    const ref = op.responses[status].$ref ?? '';
    const shared = /^#\/components\/responses\/([^/]+)$/.exec(ref);
    const res = follow(openapi, op.responses[status]);
    const body = shared
      ? `<p>${esc(firstSentence(res.description))} <a href="#response-${slug(shared[1])}">${esc(shared[1])}</a></p>`
      : `${md(res.description)}${renderContent(res.content)}`;
    parts.push(`<dt><span class="status s${esc(status[0])}">${esc(status)}</span></dt>`, `<dd>${body}</dd>`);
  }
  parts.push('</dl></section>');
  return parts.join('\n');
}

/** The first sentence of a description (up to the first period or colon). */
function firstSentence(text) {
  const t = String(text ?? '').trim();
  const m = /^(.*?[.:])(\s|$)/.exec(t);
  return (m ? m[1] : t).replace(/:$/, '.');
}

/** The responses under components.responses, referenced by name from the endpoints. */
function renderSharedResponses() {
  const names = Object.keys(openapi.components?.responses ?? {}).sort();
  if (!names.length) return '';
  const parts = ['<section class="op" id="responses"><h3>Shared responses</h3><dl class="responses">'];
  for (const name of names) {
    const res = openapi.components.responses[name];
    parts.push(
      `<dt id="response-${slug(name)}"><strong>${esc(name)}</strong></dt>`,
      `<dd>${md(res.description)}${renderContent(res.content)}</dd>`,
    );
  }
  parts.push('</dl></section>');
  return parts.join('\n');
}

function renderHttp() {
  const ops = [];
  for (const path of Object.keys(openapi.paths ?? {}).sort()) {
    const item = openapi.paths[path];
    for (const method of METHODS) {
      if (item[method]) ops.push([path, method, item[method]]);
    }
  }
  const toc = ops
    .map(
      ([path, method]) =>
        `<li><a href="#http-${method}-${slug(path) || 'root'}">${method.toUpperCase()} ${esc(path)}</a></li>`,
    )
    .join('\n');
  return [
    '<section id="http"><h2>HTTP endpoints</h2>',
    md(openapi.info?.description),
    `<ul class="toc">\n${toc}\n</ul>`,
    ...ops.map(([path, method, op]) => renderOperation(path, method, op)),
    renderSharedResponses(),
    '</section>',
  ].join('\n');
}

// ---- sockets ------------------------------------------------------------------------

/** The message ids of `channelId` that clients send and that the server sends. */
function directions(channelId) {
  const client = new Set();
  const server = new Set();
  const idOf = (ref) => {
    const m = new RegExp(`^#/channels/${channelId}/messages/(.+)$`).exec(ref.$ref ?? '');
    return m ? m[1] : null;
  };
  for (const op of Object.values(asyncapi.operations ?? {})) {
    if (op.channel?.$ref !== `#/channels/${channelId}`) continue;
    const into = op.action === 'receive' ? client : server;
    for (const m of op.messages ?? []) {
      const id = idOf(m);
      if (id) into.add(id);
    }
    for (const m of op.reply?.messages ?? []) {
      const id = idOf(m);
      if (id) (op.action === 'receive' ? server : client).add(id);
    }
  }
  return { client, server };
}

function renderMessage(channelId, id) {
  const msg = follow(asyncapi, asyncapi.channels[channelId].messages[id]);
  const name = msg.name ?? id;
  const parts = [`<div class="msg" id="ws-${slug(channelId)}-${slug(id)}">`];
  parts.push(`<h5><code>${esc(name)}</code>${msg.title && msg.title !== name ? ` — ${esc(msg.title)}` : ''}</h5>`);
  if (msg.summary) parts.push(md(msg.summary));
  if (msg.description) parts.push(md(msg.description));
  if (msg.payload) parts.push(shape(msg.payload));
  parts.push('</div>');
  return parts.join('\n');
}

function byMessageName(channelId) {
  return (a, b) => {
    const na = follow(asyncapi, asyncapi.channels[channelId].messages[a]).name ?? a;
    const nb = follow(asyncapi, asyncapi.channels[channelId].messages[b]).name ?? b;
    return na < nb ? -1 : na > nb ? 1 : a < b ? -1 : a > b ? 1 : 0;
  };
}

function renderChannel(channelId) {
  const ch = asyncapi.channels[channelId];
  const { client, server } = directions(channelId);
  const all = Object.keys(ch.messages ?? {});
  const other = all.filter((id) => !client.has(id) && !server.has(id));
  const parts = [`<section class="channel" id="ws-${slug(channelId)}">`];
  parts.push(`<h3><span class="method ws">WS</span> <code>${esc(ch.address)}</code></h3>`);
  if (ch.title) parts.push(`<p class="summary">${esc(ch.title)} <span class="muted">(channel <code>${esc(channelId)}</code>)</span></p>`);
  if (ch.description) parts.push(md(ch.description));
  const query = ch.bindings?.ws?.query?.properties;
  if (query) {
    parts.push('<h4>Query parameters</h4><table class="fields"><thead><tr><th>name</th><th>type</th><th>description</th></tr></thead><tbody>');
    for (const k of Object.keys(query).sort()) {
      parts.push(`<tr><td><code>${esc(k)}</code></td><td><code>${esc(typeOf(query[k]))}</code></td><td>${md(query[k].description)}</td></tr>`);
    }
    parts.push('</tbody></table>');
  }
  for (const [title, ids] of [
    ['Client messages', [...client]],
    ['Server messages', [...server]],
    ['Other messages', other],
  ]) {
    if (!ids.length) continue;
    parts.push(`<h4>${title}</h4>`, ...ids.sort(byMessageName(channelId)).map((id) => renderMessage(channelId, id)));
  }
  const events = ch['x-event-types'];
  if (Array.isArray(events) && events.length) {
    parts.push(
      '<h4>Event types</h4>',
      `<p>${[...events].sort().map((t) => `<code>${esc(t)}</code>`).join(', ')}</p>`,
    );
  }
  const codes = ch['x-close-codes'];
  if (Array.isArray(codes) && codes.length) {
    parts.push('<h4>Close codes</h4><table class="codes"><thead><tr><th>code</th><th>when</th></tr></thead><tbody>');
    for (const c of [...codes].sort((a, b) => a.code - b.code)) {
      parts.push(`<tr><td><code>${esc(c.code)}</code></td><td>${md(c.when)}</td></tr>`);
    }
    parts.push('</tbody></table>');
  }
  parts.push('</section>');
  return parts.join('\n');
}

function renderSockets() {
  const ids = Object.keys(asyncapi.channels ?? {}).sort((a, b) => {
    const x = asyncapi.channels[a].address;
    const y = asyncapi.channels[b].address;
    return x < y ? -1 : x > y ? 1 : a < b ? -1 : a > b ? 1 : 0;
  });
  const toc = ids
    .map((id) => `<li><a href="#ws-${slug(id)}">WS ${esc(asyncapi.channels[id].address)}</a></li>`)
    .join('\n');
  return [
    '<section id="sockets"><h2>WebSocket channels</h2>',
    md(asyncapi.info?.description),
    `<ul class="toc">\n${toc}\n</ul>`,
    ...ids.map(renderChannel),
    '</section>',
  ].join('\n');
}

// ---- page -------------------------------------------------------------------------

const CSS = `
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--muted:#59636e;--line:#d1d9e0;--code:#f2f4f7;--accent:#0b63c5}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;--line:#30363d;--code:#161b22;--accent:#4493f8}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:72rem;padding:1.5rem;font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
h1{margin:.2rem 0}h2{border-bottom:2px solid var(--line);padding-bottom:.3rem;margin-top:2.5rem}
h3{margin:0 0 .4rem}h4{margin:1rem 0 .3rem;font-size:.95rem}h5{margin:.4rem 0;font-size:.95rem}
a{color:var(--accent)}code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--code);padding:0 .25em;border-radius:3px;overflow-wrap:anywhere}
.op,.channel{border:1px solid var(--line);border-radius:6px;padding:1rem;margin:1rem 0}
.msg{border-left:3px solid var(--line);padding-left:.8rem;margin:.6rem 0}
.method{display:inline-block;min-width:4.2em;text-align:center;border-radius:4px;padding:0 .4em;color:#fff;font-size:.8rem;vertical-align:middle}
.get{background:#1f7a3a}.post{background:#0b63c5}.put,.patch{background:#9a6700}.delete{background:#b42318}.ws{background:#6e40c9}
.status{font-weight:600;font-family:ui-monospace,monospace}.s1,.s2{color:#1f7a3a}.s3{color:var(--muted)}.s4{color:#9a6700}.s5{color:#b42318}
.summary{font-weight:600;margin:.2rem 0}.muted,.auth{color:var(--muted)}.auth{font-size:.85rem}
.req{font-size:.7rem;color:#b42318;text-transform:uppercase}
.mt{font-size:.8rem;color:var(--muted)}.def{font-weight:600}
table{border-collapse:collapse;width:100%;margin:.3rem 0}th,td{border:1px solid var(--line);padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:var(--code);font-size:.85rem}td p{margin:0}
dl.responses{display:grid;grid-template-columns:auto 1fr;gap:.3rem .8rem}dl.responses dd{margin:0}dl.responses dd p{margin:0 0 .2rem}
.toc{columns:2 18rem;font-size:.9rem}
`.trim();

function render() {
  const title = 'stackpulse API reference';
  const versions = `HTTP API ${openapi.info?.version ?? ''} (OpenAPI ${openapi.openapi}) · sockets ${asyncapi.info?.version ?? ''} (AsyncAPI ${asyncapi.asyncapi})`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<style>${CSS}</style>
</head>
<body>
<!-- Generated by docs/render.mjs from docs/openapi.yaml, docs/asyncapi.yaml and docs/schemas/stackpulse.json; do not edit. -->
<header>
<h1>${title}</h1>
<p class="muted">${esc(versions)}. Generated from <code>docs/openapi.yaml</code>, <code>docs/asyncapi.yaml</code> and <code>docs/schemas/stackpulse.json</code>.</p>
<nav><a href="#http">HTTP endpoints</a> · <a href="#sockets">WebSocket channels</a></nav>
</header>
<main>
${renderHttp()}
${renderSockets()}
</main>
</body>
</html>
`;
}

const html = render();
if (process.argv.includes('--check')) {
  let current = null;
  try {
    current = readFileSync(out, 'utf8');
  } catch {
    // missing: stale
  }
  if (current !== html) {
    console.error(`${relative(process.cwd(), out) || out} is out of date with the specs; run \`node docs/render.mjs\` and commit it`);
    process.exit(1);
  }
  console.log(`${relative(process.cwd(), out)}: up to date`);
} else {
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, html);
  console.log(`wrote ${relative(process.cwd(), out)} (${html.length} bytes)`);
}
