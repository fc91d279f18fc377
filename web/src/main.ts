/**
 * The stackpulse dashboard: watch CloudFormation stacks and deployments live.
 *
 * One {@link StackPulseClient} carries every watched topic. Each topic gets a card
 * whose state ({@link TopicState}) is folded from the topic's events and re-rendered
 * on the next animation frame. Everything server-provided goes into the DOM through
 * `textContent`, never as HTML.
 */
import {
  ConnectionState,
  DeploymentSnapshotData,
  ResourceSummary,
  RootCause,
  ServerEvent,
  SnapshotStackEntry,
  StackOutput,
  StackPulseClient,
  StackSnapshotData,
  StackSummary,
} from '../../clients/js/src/index.js';
import { foldTiming, TimedResource, TimedStack } from './estimate.js';
import { statusClass } from './status.js';
import { anchorId, StackTimeline } from './timeline.js';

type Kind = 'stack' | 'deployment';

interface ResourceRow extends ResourceSummary, TimedResource {
  nestedStack?: string;
  updatedAt?: string;
}

interface TimelineEntry {
  seq: number | null;
  timestamp: string;
  type: string;
  text: string;
  status?: string;
}

interface TopicState {
  topic: string;
  kind: Kind;
  resources: Map<string, ResourceRow>;
  stack: (StackSummary & TimedStack) | null;
  /** The timeline chart (stack cards only), kept across re-renders. */
  chart: StackTimeline | null;
  stacks: Map<string, SnapshotStackEntry>;
  deployment: { status?: string; current_layer?: number; total_layers?: number } | null;
  timeline: TimelineEntry[];
  error: string | null;
  /** The stack tracker's last problem (AWS unreachable, stack not found…), until it recovers. */
  trackerError: { message: string; retrying: boolean; final: boolean } | null;
  subscribed: boolean;
  el: HTMLElement;
  dirty: boolean;
}

const MAX_TIMELINE = 300;
const STACK_PREFIX = 'stack:';

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

/** Creates an element with a class and text. */
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls?: string | null,
  text?: string | number | null,
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== undefined && text !== null) el.textContent = String(text);
  return el;
}

/** The topic for what the person typed: `stack:` prefix kept, else by the toggle. */
export function topicFor(input: string, kind: Kind): string {
  const v = input.trim();
  if (v === '') return '';
  if (v.toLowerCase().startsWith(STACK_PREFIX)) return STACK_PREFIX + v.slice(STACK_PREFIX.length).trim();
  return kind === 'stack' ? STACK_PREFIX + v : v;
}

function kindOf(topic: string): Kind {
  return topic.startsWith(STACK_PREFIX) ? 'stack' : 'deployment';
}

function clock(ts: string): string {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return ts;
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

function str(v: unknown): string {
  return v === undefined || v === null ? '' : String(v);
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

// ---------------------------------------------------------------------------
// Connection

const connEl = $('conn');
const connText = $('conn-text');
const tokenInput = $<HTMLInputElement>('token');
const TOKEN_KEY = 'stackpulse.token';
let usedToken = '';
try {
  // Per tab, gone when the tab closes; lets a reload re-watch the topics in the URL.
  tokenInput.value = sessionStorage.getItem(TOKEN_KEY) ?? '';
} catch {
  // storage disabled
}

const client = new StackPulseClient({
  endpoint: `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`,
  token: () => {
    usedToken = tokenInput.value.trim();
    return usedToken || null;
  },
  pingInterval: 20_000,
  pongTimeout: 10_000,
  backoff: { initialDelay: 500, maxDelay: 10_000 },
});

function showConnection(state: ConnectionState, detail = ''): void {
  connEl.dataset.state = state;
  const text: Record<ConnectionState, string> = {
    idle: 'Not connected',
    connecting: 'Connecting…',
    open: 'Live',
    reconnecting: 'Reconnecting…',
    closed: 'Disconnected',
  };
  connText.textContent = text[state] + (detail ? ` ${detail}` : '');
  document.body.dataset.conn = state;
}

client.on('state', ({ state }) => showConnection(state));
let everOpen = false;
client.on('open', () => {
  everOpen = true;
});
client.on('reconnecting', ({ attempt, delay }) => {
  // Browsers do not expose why an upgrade failed; a server that wants a token answers 401.
  const hint = !everOpen && attempt >= 2 ? ' — does the server need a token?' : '';
  showConnection(client.state, `(attempt ${attempt}, next in ${(delay / 1000).toFixed(1)} s)${hint}`);
});

// ---------------------------------------------------------------------------
// Topics

const topicsEl = $('topics');
const emptyEl = $('empty');
const views = new Map<string, TopicState>();

function saveHash(): void {
  const list = [...views.keys()].map(encodeURIComponent).join(',');
  const next = list ? `#watch=${list}` : ' ';
  if (location.hash !== next.trim()) history.replaceState(null, '', next === ' ' ? location.pathname + location.search : next);
}

function loadHash(): string[] {
  const m = /^#watch=(.*)$/.exec(location.hash);
  if (!m) return [];
  return m[1]
    .split(',')
    .map((s) => {
      try {
        return decodeURIComponent(s).trim();
      } catch {
        return '';
      }
    })
    .filter(Boolean);
}

function watch(topic: string): void {
  if (!topic) return;
  const existing = views.get(topic);
  if (existing) {
    existing.el.scrollIntoView({ behavior: 'smooth', block: 'start' });
    return;
  }
  const el = h('section', 'card');
  el.dataset.topic = topic;
  const view: TopicState = {
    topic,
    kind: kindOf(topic),
    resources: new Map(),
    stack: null,
    chart: kindOf(topic) === 'stack' ? new StackTimeline(topic) : null,
    stacks: new Map(),
    deployment: null,
    timeline: [],
    error: null,
    trackerError: null,
    subscribed: false,
    el,
    dirty: true,
  };
  views.set(topic, view);
  topicsEl.prepend(el);
  emptyEl.hidden = true;
  schedule(view);
  saveHash();
  if (client.state === 'idle' || client.state === 'closed') void client.connect();
  client.subscribe(topic).then(
    () => {
      view.subscribed = true;
      schedule(view);
    },
    (e: Error) => {
      view.error = e.message;
      schedule(view);
    },
  );
}

function unwatch(topic: string): void {
  const view = views.get(topic);
  if (!view) return;
  views.delete(topic);
  view.el.remove();
  void client.unsubscribe(topic);
  emptyEl.hidden = views.size > 0;
  saveHash();
}

client.on('subscribed', (m) => {
  const view = views.get(m.deployment_id);
  if (!view) return;
  view.subscribed = true;
  view.error = null;
  schedule(view);
});

client.on('state', ({ state }) => {
  if (state === 'open') return;
  for (const v of views.values()) {
    if (v.subscribed) {
      v.subscribed = false;
      schedule(v);
    }
  }
});

client.on('resync', (r) => {
  const view = views.get(r.deployment_id);
  if (!view) return;
  addTimeline(view, {
    seq: null,
    timestamp: new Date().toISOString(),
    type: 'resync',
    text:
      r.previousEpoch !== null && r.previousEpoch !== r.epoch
        ? 'The server lost this topic\u2019s history (restarted?). Showing what is known; new events follow.'
        : 'History no longer reaches back; state was refreshed.',
  });
  schedule(view);
});

client.on('error', (e) => {
  if (e.deployment_id === undefined) return;
  const view = views.get(e.deployment_id);
  if (!view) return;
  view.error = `${e.code}: ${e.message}`;
  schedule(view);
});

client.on('*', (e) => {
  const view = views.get(e.deployment_id);
  if (!view) return;
  apply(view, e);
  schedule(view);
});

// ---------------------------------------------------------------------------
// Folding events into a topic's state

function resourceKey(r: { logicalId: string }, nested?: string): string {
  return nested ? `${nested}/${r.logicalId}` : r.logicalId;
}

function addTimeline(view: TopicState, entry: TimelineEntry): void {
  view.timeline.push(entry);
  if (view.timeline.length > MAX_TIMELINE) view.timeline.splice(0, view.timeline.length - MAX_TIMELINE);
}

function stackLabel(name: string, env?: unknown): string {
  return env ? `${name} (${str(env)})` : name;
}

function apply(view: TopicState, e: ServerEvent): void {
  const d = (e.data ?? {}) as Record<string, unknown>;
  const at = { seq: e.seq, timestamp: e.timestamp, type: e.type };
  if (e.type !== 'tracker.error' && e.type !== 'log.created' && !e.type.endsWith('.snapshot')) view.trackerError = null;
  // A stack.deployed / stack.failed from the tracker carries the final stack summary.
  if ((e.type === 'stack.deployed' || e.type === 'stack.failed') && d.stack && typeof d.stack === 'object' && view.kind === 'stack') {
    view.stack = d.stack as StackSummary;
  }
  switch (e.type) {
    case 'resource.status': {
      const r = d.resource as ResourceSummary | undefined;
      const nested = typeof d.nestedStack === 'string' ? d.nestedStack : undefined;
      if (r && typeof r.logicalId === 'string') {
        const key = resourceKey(r, nested);
        const when = typeof d.eventTimestamp === 'string' ? d.eventTimestamp : e.timestamp;
        view.resources.set(key, foldTiming(view.resources.get(key), { ...r, nestedStack: nested, updatedAt: e.timestamp }, when));
        addTimeline(view, {
          ...at,
          // When CloudFormation recorded it (the envelope's time is when the hub stamped it).
          timestamp: typeof d.eventTimestamp === 'string' ? d.eventTimestamp : e.timestamp,
          status: r.status,
          text: `${nested ? `${nested} / ` : ''}${r.logicalId} ${r.status}${r.statusReason ? ` — ${r.statusReason}` : ''}`,
        });
      }
      if (d.stack && typeof d.stack === 'object') view.stack = d.stack as StackSummary;
      return;
    }
    case 'stack.snapshot': {
      const s = d as StackSnapshotData;
      view.resources.clear();
      for (const [id, r] of Object.entries(s.resources ?? {})) view.resources.set(id, { ...r, logicalId: r.logicalId ?? id });
      if (s.stack) view.stack = s.stack;
      foldStacks(view, s.stacks);
      addTimeline(view, { ...at, text: `Snapshot: ${view.resources.size} resources${s.stack ? `, stack ${s.stack.status}` : ''}` });
      return;
    }
    case 'deployment.snapshot': {
      const s = d as DeploymentSnapshotData;
      view.deployment = { status: s.status, current_layer: num(s.current_layer), total_layers: num(s.total_layers) };
      foldStacks(view, s.stacks);
      for (const log of s.logs ?? []) {
        addTimeline(view, {
          seq: null,
          timestamp: str(log.timestamp) || e.timestamp,
          type: 'log.created',
          status: log.level === 'error' ? 'failed' : undefined,
          text: `[${str(log.level) || 'info'}] ${str(log.message)}`,
        });
      }
      addTimeline(view, { ...at, status: s.status, text: `Snapshot: deployment ${str(s.status) || 'unknown'}` });
      return;
    }
    case 'deployment.status': {
      view.deployment = {
        status: str(d.status),
        current_layer: num(d.current_layer),
        total_layers: num(d.total_layers),
      };
      const layers = view.deployment.total_layers !== undefined ? ` — layer ${str(d.current_layer)}/${str(d.total_layers)}` : '';
      addTimeline(view, { ...at, status: str(d.status), text: `Deployment ${str(d.status)}${layers}` });
      return;
    }
    case 'stack.deployed': {
      const name = str(d.stack_name);
      view.stacks.set(name, { ...(d as SnapshotStackEntry), status: 'deployed', updated_at: e.timestamp });
      const dur = num(d.duration_seconds);
      const count = num(d.resource_count);
      addTimeline(view, {
        ...at,
        status: 'deployed',
        text: `Stack ${stackLabel(name, d.environment)} deployed${dur !== undefined ? ` in ${dur}s` : ''}${count !== undefined ? ` (${count} resources)` : ''}`,
      });
      return;
    }
    case 'stack.failed': {
      const name = str(d.stack_name);
      view.stacks.set(name, { ...(d as SnapshotStackEntry), status: 'failed', updated_at: e.timestamp });
      addTimeline(view, {
        ...at,
        status: 'failed',
        text: `Stack ${stackLabel(name, d.environment)} failed${d.error_message ? `: ${str(d.error_message)}` : ''}`,
      });
      return;
    }
    case 'log.created': {
      // The tracker follows each resource.status with a log line saying the same thing.
      const prev = view.timeline[view.timeline.length - 1];
      if (view.kind === 'stack' && prev && prev.type === 'resource.status' && prev.seq === e.seq - 1) return;
      const level = str(d.level) || 'info';
      addTimeline(view, {
        ...at,
        status: level === 'error' ? 'failed' : level === 'warning' || level === 'warn' ? 'rollback' : undefined,
        text: `[${level}]${d.stack_name ? ` ${stackLabel(str(d.stack_name), d.environment)}:` : ''} ${str(d.message)}`,
      });
      return;
    }
    case 'tracker.error': {
      const final = d.final === true;
      const retrying = d.retrying === true && !final;
      view.trackerError = { message: str(d.message), retrying, final };
      addTimeline(view, {
        ...at,
        status: final ? 'failed' : 'rollback',
        text: `Tracker ${final ? 'stopped' : 'problem'}: ${str(d.message)}${retrying ? ' (retrying)' : ''}`,
      });
      return;
    }
    default: {
      let json = JSON.stringify(d);
      if (json.length > 200) json = `${json.slice(0, 199)}…`;
      addTimeline(view, { ...at, status: str(d.status) || undefined, text: json });
    }
  }
}

function foldStacks(view: TopicState, stacks: Record<string, SnapshotStackEntry> | undefined): void {
  if (!stacks) return;
  for (const [name, entry] of Object.entries(stacks)) view.stacks.set(name, { ...entry });
}

// ---------------------------------------------------------------------------
// Rendering

const pending = new Set<TopicState>();
let frame = 0;

function schedule(view: TopicState): void {
  view.dirty = true;
  pending.add(view);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush(): void {
  frame = 0;
  for (const v of pending) if (views.get(v.topic) === v) render(v);
  pending.clear();
}

/** The failure (if any) to highlight: the failed stack entry with its root cause. */
function failure(view: TopicState): { name: string; entry: SnapshotStackEntry } | null {
  for (const [name, entry] of view.stacks) if (entry.status === 'failed') return { name, entry };
  return null;
}

function overallStatus(view: TopicState): string {
  if (view.stack?.status) return view.stack.status;
  if (view.deployment?.status) return view.deployment.status;
  const f = failure(view);
  if (f) return 'failed';
  for (const e of view.stacks.values()) return e.status;
  return 'waiting';
}

function progressBar(label: string, percent: number, status: string, detail: string): HTMLElement {
  const p = Math.max(0, Math.min(100, Math.floor(percent)));
  const wrap = h('div', `progress-block ${statusClass(status)}`);
  const top = h('div', 'progress-label');
  top.append(h('span', 'progress-name', label), h('span', 'progress-value', `${p}%`));
  const bar = h('div', 'progress');
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-valuenow', String(p));
  bar.setAttribute('aria-label', `${label} progress`);
  const fill = h('div', 'bar');
  fill.style.width = `${p}%`;
  bar.append(fill);
  wrap.append(top, bar, h('div', 'progress-detail', detail));
  return wrap;
}

function badge(status: string): HTMLElement {
  const b = h('span', `badge ${statusClass(status)}`, status || 'unknown');
  b.dataset.status = status;
  return b;
}

function isRootStack(view: TopicState, r: ResourceRow): boolean {
  return !r.nestedStack && r.type === 'AWS::CloudFormation::Stack' && view.stack !== null && r.logicalId === view.stack.name;
}

/** A table cell with one child (so the phone layout can put its label beside it). */
function cell(label: string, cls: string, content: HTMLElement): HTMLTableCellElement {
  const td = h('td', content.textContent === '' ? `${cls} blank` : cls);
  td.dataset.label = label;
  td.append(content);
  return td;
}

function render(view: TopicState): void {
  view.dirty = false;
  const el = view.el;
  const status = overallStatus(view);
  el.className = `card kind-${view.kind} ${statusClass(status)}`;
  el.replaceChildren();

  // Header
  const head = h('header', 'card-head');
  const title = h('h2', 'card-title');
  title.append(h('span', 'kind-tag', view.kind === 'stack' ? 'stack' : 'deployment'), h('span', 'topic-name', view.kind === 'stack' ? view.topic.slice(STACK_PREFIX.length) : view.topic));
  const right = h('div', 'card-actions');
  const state = h('span', `sub-state ${view.subscribed ? 'on' : 'off'}`, view.subscribed ? 'live' : 'waiting');
  const close = h('button', 'close', '×');
  close.type = 'button';
  close.title = `Stop watching ${view.topic}`;
  close.setAttribute('aria-label', `Stop watching ${view.topic}`);
  close.addEventListener('click', () => unwatch(view.topic));
  right.append(badge(status), state, close);
  head.append(title, right);
  el.append(head);

  if (view.error) el.append(h('p', 'topic-error', view.error));
  if (view.trackerError) {
    const t = view.trackerError;
    const box = h('div', `tracker-error ${t.final ? 'st-failed' : 'st-rollback'}`);
    box.setAttribute('role', 'status');
    box.append(h('strong', null, t.final ? 'Tracking stopped' : 'Tracking trouble'));
    const msg = t.message.length > 400 ? `${t.message.slice(0, 399)}…` : t.message;
    const p = h('p', 'tracker-message', msg);
    p.title = t.message;
    box.append(p);
    if (t.retrying) box.append(h('span', 'muted', 'The server keeps retrying.'));
    el.append(box);
  }

  // Progress: the tracked stack, the deployment's layers, and each stack of a deployment.
  const progress = h('div', 'progress-list');
  if (view.stack) {
    const s = view.stack;
    progress.append(
      progressBar(
        view.kind === 'stack' && s.name === view.topic.slice(STACK_PREFIX.length) ? 'Progress' : s.name || view.topic,
        num(s.progress) ?? 0,
        s.status,
        `${s.completedResources ?? 0} of ${s.totalResources ?? 0} complete · ${s.inProgressResources ?? 0} in progress · ${s.failedResources ?? 0} failed`,
      ),
    );
  }
  const dep = view.deployment;
  if (dep && dep.total_layers) {
    const done = dep.status === 'deployed' ? dep.total_layers : Math.max(0, (dep.current_layer ?? 1) - 1);
    progress.append(progressBar('Layers', (100 * done) / dep.total_layers, dep.status ?? '', `layer ${dep.current_layer ?? 0} of ${dep.total_layers} · ${dep.status ?? ''}`));
  }
  if (view.kind === 'deployment') {
    for (const [name, entry] of view.stacks) {
      const pct = entry.status === 'deployed' ? 100 : entry.status === 'failed' ? 100 : 0;
      const parts = [entry.status];
      if (entry.duration_seconds !== undefined) parts.push(`${entry.duration_seconds}s`);
      if (entry.resource_count !== undefined) parts.push(`${entry.resource_count} resources`);
      progress.append(progressBar(stackLabel(name, entry.environment), pct, entry.status, parts.join(' · ')));
    }
  }
  if (progress.childElementCount) el.append(progress);
  else el.append(h('p', 'muted', view.subscribed ? 'Waiting for the first event…' : 'Subscribing…'));

  // Failure and root cause
  const f = failure(view);
  let rootCauseKey: string | null = null;
  if (f) {
    const box = h('div', 'failure');
    box.setAttribute('role', 'alert');
    box.append(h('strong', null, `Stack ${stackLabel(f.name, f.entry.environment)} failed`));
    const rc = f.entry.root_cause as RootCause | null | undefined;
    // The tracker's error_message is the root cause's reason: say it once.
    const message = f.entry.error_message ?? '';
    if (message && !(rc?.reason && message.includes(rc.reason))) box.append(h('p', 'failure-message', message));
    if (rc && rc.logicalId) {
      const rcEl = h('div', 'root-cause');
      rcEl.append(h('span', 'rc-label', 'Root cause'), h('code', 'rc-id', rc.logicalId), h('span', 'rc-type', rc.type), badge(rc.status));
      if (rc.reason) rcEl.append(h('p', 'rc-reason', rc.reason));
      const key = view.resources.has(rc.logicalId) ? rc.logicalId : [...view.resources.keys()].find((k) => k.endsWith(`/${rc.logicalId}`));
      if (key) {
        const links = h('p', 'rc-links');
        links.append(jumpLink('rc-row-link', 'Show its row', anchorId('row', view.topic, key)));
        if (view.chart && view.resources.get(key)?.startedAt) links.append(jumpLink('rc-bar-link', 'Show its bar', anchorId('bar', view.topic, key)));
        rcEl.append(links);
      }
      box.append(rcEl);
      rootCauseKey = rc.logicalId;
    }
    el.append(box);
  }

  // Where the time goes: one bar per resource (the tracked stack's own row left out).
  if (view.chart) {
    view.chart.update(
      [...view.resources].filter(([, r]) => !isRootStack(view, r)),
      view.stack,
    );
    el.append(view.chart.el);
    if (view.chart.live) startTicker();
  }

  // Outputs of deployed stacks
  for (const [name, entry] of view.stacks) {
    const outputs = (entry.outputs ?? []) as StackOutput[];
    if (entry.status !== 'deployed' || outputs.length === 0) continue;
    const sec = h('section', 'outputs');
    sec.append(h('h3', null, view.stacks.size > 1 || view.kind === 'deployment' ? `Outputs of ${name}` : 'Outputs'));
    const dl = h('dl', 'output-list');
    for (const o of outputs) {
      const row = h('div', 'output');
      row.dataset.key = str(o.key);
      const dd = h('dd');
      dd.append(h('code', 'output-value', str(o.value)));
      if (o.description) dd.append(h('span', 'output-desc', o.description));
      row.append(h('dt', null, str(o.key)), dd);
      dl.append(row);
    }
    sec.append(dl);
    el.append(sec);
  }

  // Resources (the tracked stack's own events are its progress bar, not a row)
  const rows = [...view.resources].filter(([, r]) => !isRootStack(view, r));
  if (rows.length > 0) {
    const sec = h('section', 'resources');
    sec.append(h('h3', null, `Resources (${rows.length})`));
    const table = h('table', 'resource-table');
    const thead = h('thead');
    const hr = h('tr');
    for (const c of ['Resource', 'Type', 'Status', 'Reason', 'Physical id']) hr.append(h('th', null, c));
    thead.append(hr);
    const tbody = h('tbody');
    for (const [key, r] of rows) {
      const tr = h('tr', `resource ${statusClass(r.status)}`);
      tr.dataset.logicalId = r.logicalId;
      tr.dataset.key = key;
      tr.id = anchorId('row', view.topic, key);
      const isRoot = rootCauseKey !== null && (key === rootCauseKey || r.logicalId === rootCauseKey) && (f !== null);
      if (isRoot) tr.classList.add('root-cause-row');
      const id = h('div', 'v');
      if (r.nestedStack) id.append(h('span', 'nested', `${r.nestedStack} /`));
      id.append(h('span', 'logical-id', r.logicalId));
      if (isRoot) id.append(h('span', 'rc-tag', 'root cause'));
      const st = h('div', 'v');
      st.append(badge(r.status));
      const idCell = cell('Resource', 'c-id', id);
      const typeCell = cell('Type', 'c-type', h('div', 'v', r.type));
      const stCell = cell('Status', 'c-status', st);
      const reason = cell('Reason', 'c-reason', h('div', 'v', r.statusReason ?? ''));
      const phys = cell('Physical id', 'c-physical', h('div', 'v', r.physicalId ?? ''));
      tr.append(idCell, typeCell, stCell, reason, phys);
      tbody.append(tr);
    }
    table.append(thead, tbody);
    sec.append(table);
    el.append(sec);
  }

  // Timeline (newest first)
  const tl = h('section', 'timeline');
  tl.append(h('h3', null, `Timeline (${view.timeline.length})`));
  const ol = h('ol', 'timeline-list');
  for (let i = view.timeline.length - 1; i >= 0; i--) {
    const t = view.timeline[i];
    const li = h('li', `tl-entry ${t.status ? statusClass(t.status) : ''}`);
    li.dataset.type = t.type;
    if (t.seq !== null) li.dataset.seq = String(t.seq);
    const time = h('time', 'tl-time', clock(t.timestamp));
    time.dateTime = t.timestamp;
    const text = h('span', 'tl-text', t.text.length > 300 ? `${t.text.slice(0, 299)}…` : t.text);
    if (t.text.length > 300) text.title = t.text;
    li.append(time, h('span', 'tl-type', t.type), text);
    ol.append(li);
  }
  tl.append(ol);
  el.append(tl);
}

/**
 * A link that scrolls to an element of the card and flashes it (not a `#hash`
 * link: the hash holds the watched topics).
 */
function jumpLink(cls: string, text: string, target: string): HTMLAnchorElement {
  const a = h('a', cls, text);
  a.href = `#${target}`;
  a.dataset.target = target;
  a.addEventListener('click', (ev) => {
    ev.preventDefault();
    const t = document.getElementById(target);
    if (!t) return;
    t.scrollIntoView({ behavior: 'smooth', block: 'center' });
    t.classList.remove('flash');
    // Restart the animation.
    void (t as HTMLElement).getBoundingClientRect();
    t.classList.add('flash');
  });
  return a;
}

/** Running bars grow and ETAs count down: one tick a second while any chart is live. */
let ticker = 0;
function startTicker(): void {
  if (ticker) return;
  ticker = window.setInterval(() => {
    let live = false;
    for (const v of views.values()) {
      if (v.chart?.live) {
        v.chart.tick();
        live = true;
      }
    }
    if (!live) {
      window.clearInterval(ticker);
      ticker = 0;
    }
  }, 1000);
}

// ---------------------------------------------------------------------------
// The form

const form = $<HTMLFormElement>('watch-form');
const input = $<HTMLInputElement>('topic');
const preview = $('topic-preview');

function currentKind(): Kind {
  const checked = form.querySelector<HTMLInputElement>('input[name="kind"]:checked');
  return checked?.value === 'deployment' ? 'deployment' : 'stack';
}

function updatePreview(): void {
  const kind = currentKind();
  const t = topicFor(input.value, kind);
  preview.textContent = t || (kind === 'stack' ? 'stack:<StackName>' : '<deployment id>');
  input.placeholder = kind === 'stack' ? 'Stack name, e.g. my-app-prod' : 'Deployment id, e.g. D1BRV40';
}

input.addEventListener('input', updatePreview);
form.addEventListener('change', updatePreview);
form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const topic = topicFor(input.value, currentKind());
  const token = tokenInput.value.trim();
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled
  }
  // A changed token only takes effect on a new connection.
  if (token !== usedToken && client.state !== 'idle' && client.state !== 'closed') {
    void client.reconnect();
  }
  if (!topic) return;
  watch(topic);
  input.value = '';
  updatePreview();
});

updatePreview();
for (const t of loadHash()) watch(t);

// ---------------------------------------------------------------------------
// The demo: a `serve --demo` server says so on /healthz; one click watches it.

export const DEMO_TOPICS = ['demo', 'stack:demo-network', 'stack:demo-database', 'stack:demo-app'];
const demoOffer = $('demo-offer');
$('watch-demo').addEventListener('click', () => {
  for (const t of DEMO_TOPICS) watch(t);
  demoOffer.hidden = true;
});
void fetch('/healthz')
  .then((r) => (r.ok ? r.json() : null))
  .then((health: { demo?: boolean } | null) => {
    const watched = DEMO_TOPICS.every((t) => views.has(t));
    if (health?.demo === true && !watched) demoOffer.hidden = false;
  })
  .catch(() => {
    // No offer when the server cannot be asked.
  })
  .finally(() => {
    demoOffer.dataset.checked = 'true';
  });

// For tests and the curious: the client in the console.
(window as unknown as { stackpulse: unknown }).stackpulse = { client, views };
