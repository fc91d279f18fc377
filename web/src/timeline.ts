/**
 * The timeline chart of one stack card, drawn by hand in SVG (no charting library:
 * a Gantt chart of a few hundred bars needs rects and text, nothing more).
 *
 * One row per resource that has started: its name above a bar from `startedAt` to
 * `finishedAt` (to now while in progress), coloured by status; behind it a ghost bar
 * of its usual duration (`expectedSeconds`); `slow` when it ran more than twice as
 * long; `critical` on the critical path. The root stack's resources come first;
 * each nested stack is a collapsible `<details>` group with its aggregate progress.
 * Horizontal positions are percentages of a time axis shared by every group, so the
 * chart fits any width without measuring; rows have a fixed height, so a live update
 * changes attributes only (elements are kept by resource key), never the layout.
 *
 * Data flow: `main.ts` calls {@link StackTimeline.update} with the card's resources
 * and stack summary after each event, and {@link StackTimeline.tick} every second
 * while something runs, so running bars grow and the ETA counts down.
 */
import { Bar, TimedResource, TimedStack, bars, clockTime, criticalPath, duration, etaText, ms, usualText } from './estimate.js';
import { statusClass } from './status.js';

const SVG = 'http://www.w3.org/2000/svg';
/** Height of one row (label + bar), px. */
export const ROW = 30;
const BAR_Y = 15;
const BAR_H = 11;

interface RowEls {
  g: SVGGElement;
  ghost: SVGRectElement;
  bar: SVGRectElement;
  label: SVGTextElement;
  title: SVGTitleElement;
  /** What the texts were drawn from: unchanged (a finished bar), nothing to redo. */
  drawn: string;
}

interface Group {
  name: string;
  /** `null` for the root group (always open, no summary). */
  details: HTMLDetailsElement | null;
  summary: HTMLElement | null;
  svg: SVGSVGElement;
  rows: Map<string, RowEls>;
}

function svg<K extends keyof SVGElementTagNameMap>(tag: K, cls?: string): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  if (cls) el.setAttribute('class', cls);
  return el;
}

function h<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A DOM id for a resource's bar (`row` for its table row): stable, safe characters only. */
export function anchorId(kind: 'bar' | 'row', topic: string, key: string): string {
  return `${kind}-${`${topic}/${key}`.replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.charCodeAt(0).toString(16)}`)}`;
}

/** Sets an attribute only when it changes (a tick leaves most of them as they are). */
function set(el: Element, name: string, value: string): void {
  if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

function text(el: Element, value: string): void {
  if (el.textContent !== value) el.textContent = value;
}

function pct(x: number): string {
  return `${Math.max(0, Math.min(100, x)).toFixed(3)}%`;
}

export class StackTimeline {
  /** The chart's root element, kept across re-renders of the card. */
  readonly el: HTMLElement;
  private readonly head: HTMLElement;
  private readonly eta: HTMLElement;
  private readonly span: HTMLElement;
  private readonly body: HTMLElement;
  private readonly groups = new Map<string, Group>();
  private rows: Array<[string, TimedResource]> = [];
  private stack: TimedStack | null = null;
  private running = false;
  private axis: { start: number; end: number } | null = null;

  constructor(private readonly topic: string) {
    this.el = h('section', 'gantt');
    this.head = h('div', 'gantt-head');
    const title = h('h3', undefined, 'Where the time goes');
    this.span = h('span', 'gantt-span');
    this.eta = h('span', 'gantt-eta');
    this.head.append(title, this.span, this.eta);
    this.body = h('div', 'gantt-body');
    this.el.append(this.head, this.body);
    this.el.hidden = true;
  }

  /** `true` while a bar grows (the card's ticker calls {@link tick}). */
  get live(): boolean {
    return this.running;
  }

  /** New data: the card's resources (key → row; the root stack's own row left out) and stack. */
  update(rows: Array<[string, TimedResource]>, stack: TimedStack | null, now = Date.now()): void {
    this.rows = rows;
    this.stack = stack;
    this.tick(now);
  }

  /** Redraws positions for `now` (running bars grow, the axis and the ETA move). */
  tick(now = Date.now()): void {
    const all = bars(this.rows, now);
    this.el.hidden = all.length === 0;
    this.running = all.some((b) => b.end === null);
    if (all.length === 0) return;

    // The time axis, shared by every group.
    let t0 = Math.min(...all.map((b) => b.start));
    const stackStart = ms(this.stack?.startedAt);
    if (stackStart !== null) t0 = Math.min(t0, stackStart);
    let t1 = t0 + 1000;
    for (const b of all) {
      t1 = Math.max(t1, b.end ?? now);
      if (b.expectedMs !== null) t1 = Math.max(t1, b.start + b.expectedMs);
    }
    const eta = ms(this.stack?.etaAt);
    if (eta !== null) t1 = Math.max(t1, eta);
    // While bars grow, the axis ends a little beyond what is needed and stays put
    // until a bar reaches its end: a tick then moves the running bars only.
    if (this.running) {
      const a = this.axis;
      if (!a || a.start !== t0 || t1 > a.end || t1 < a.end - (a.end - t0) / 2) this.axis = { start: t0, end: t1 + (t1 - t0) / 10 };
      t1 = this.axis?.end ?? t1;
    } else {
      this.axis = null;
    }
    const x = (t: number): number => (100 * (t - t0)) / (t1 - t0);
    this.el.dataset.t0 = String(t0);
    this.el.dataset.t1 = String(t1);

    this.span.textContent = `${clockTime(t0)} → ${this.running ? 'now' : clockTime(Math.max(...all.map((b) => b.end ?? now)))} · ${duration(
      (this.running ? now : Math.max(...all.map((b) => b.end ?? now))) - t0,
    )}${usualText(this.stack?.expectedSeconds) ? ` (${usualText(this.stack?.expectedSeconds)})` : ''}`;
    const etaLine = this.running ? etaText(this.stack, now) : null;
    this.eta.textContent = etaLine ?? '';
    this.eta.hidden = etaLine === null;

    // Groups: the root first, then nested stacks in order of their first start.
    const byGroup = new Map<string, Bar[]>();
    byGroup.set('', []);
    for (const b of all) {
      if (!byGroup.has(b.group)) byGroup.set(b.group, []);
      byGroup.get(b.group)?.push(b);
    }
    const order: Element[] = [];
    for (const [name, list] of byGroup) {
      const g = this.group(name);
      this.drawGroup(g, list, now, x);
      order.push(g.details ?? g.svg);
    }
    for (const [name, g] of this.groups) {
      if (!byGroup.has(name)) {
        (g.details ?? g.svg).remove();
        this.groups.delete(name);
      }
    }
    // Keep the DOM order without moving nodes that are already in place.
    order.forEach((node, i) => {
      if (this.body.children[i] !== node) this.body.insertBefore(node, this.body.children[i] ?? null);
    });
  }

  private group(name: string): Group {
    const found = this.groups.get(name);
    if (found) return found;
    const s = svg('svg', 'gantt-svg');
    s.setAttribute('width', '100%');
    s.setAttribute('role', 'img');
    let details: HTMLDetailsElement | null = null;
    let summary: HTMLElement | null = null;
    if (name) {
      details = h('details', 'gantt-group');
      details.open = true;
      details.dataset.nested = name;
      summary = h('summary', 'gantt-group-head');
      details.append(summary, s as unknown as Node);
      s.setAttribute('aria-label', `Timeline of nested stack ${name}`);
    } else {
      s.classList.add('gantt-root');
      s.setAttribute('aria-label', 'Timeline of the stack\u2019s resources');
    }
    const g: Group = { name, details, summary, svg: s, rows: new Map() };
    this.groups.set(name, g);
    return g;
  }

  private drawGroup(g: Group, list: Bar[], now: number, x: (t: number) => number): void {
    const critical = criticalPath(list, now);
    set(g.svg, 'height', String(list.length * ROW));
    // Through the CSSOM: the page's CSP refuses `style` attributes.
    const height = `${list.length * ROW}px`;
    if (g.svg.style.height !== height) g.svg.style.height = height;
    if (g.summary) {
      const done = list.filter((b) => statusClass(b.status) === 'st-ok' && b.end !== null).length;
      const failed = list.filter((b) => statusClass(b.status) === 'st-failed').length;
      const p = list.length ? Math.floor((100 * done) / list.length) : 0;
      g.summary.replaceChildren();
      const bar = h('span', 'gantt-group-progress');
      bar.setAttribute('role', 'progressbar');
      bar.setAttribute('aria-valuemin', '0');
      bar.setAttribute('aria-valuemax', '100');
      bar.setAttribute('aria-valuenow', String(p));
      bar.setAttribute('aria-label', `${g.name} progress`);
      const fill = h('span', 'fill');
      fill.style.width = `${p}%`;
      bar.append(fill);
      g.summary.append(
        h('span', 'gantt-group-name', g.name),
        bar,
        h('span', 'gantt-group-count', `${done} of ${list.length} complete${failed ? ` · ${failed} failed` : ''} · ${p}%`),
      );
    }
    const seen = new Set<string>();
    list.forEach((b, i) => {
      seen.add(b.key);
      let r = g.rows.get(b.key);
      if (!r) {
        r = this.row(b);
        g.rows.set(b.key, r);
      }
      if (g.svg.childNodes[i] !== r.g) g.svg.insertBefore(r.g, g.svg.childNodes[i] ?? null);
      this.drawRow(r, b, i, now, x, critical.has(b.key));
    });
    for (const [key, r] of g.rows) {
      if (!seen.has(key)) {
        r.g.remove();
        g.rows.delete(key);
      }
    }
  }

  private row(b: Bar): RowEls {
    const g = svg('g', 'gantt-row');
    g.id = anchorId('bar', this.topic, b.key);
    g.dataset.key = b.key;
    g.dataset.logicalId = b.logicalId;
    const title = svg('title');
    const ghost = svg('rect', 'ghost');
    const bar = svg('rect', 'bar');
    const label = svg('text', 'label');
    g.append(title, ghost, bar, label);
    return { g, ghost, bar, label, title, drawn: '' };
  }

  private drawRow(r: RowEls, b: Bar, i: number, now: number, x: (t: number) => number, critical: boolean): void {
    const y = i * ROW;
    const end = b.end ?? now;
    const cls = ['gantt-row', statusClass(b.status)];
    if (b.end === null) cls.push('running');
    if (b.slow) cls.push('slow');
    if (critical) cls.push('critical');
    set(r.g, 'class', cls.join(' '));
    set(r.g, 'data-status', b.status);
    set(r.g, 'data-start', String(b.start));
    set(r.g, 'data-end', b.end === null ? '' : String(b.end));
    set(r.g, 'data-duration-ms', String(end - b.start));

    const x0 = x(b.start);
    set(r.bar, 'x', pct(x0));
    set(r.bar, 'y', String(y + BAR_Y));
    // At least a sliver, so that an instant resource is still visible.
    set(r.bar, 'width', pct(Math.max(0.3, x(end) - x0)));
    set(r.bar, 'height', String(BAR_H));
    set(r.bar, 'rx', '2');
    if (b.expectedMs !== null) {
      set(r.ghost, 'x', pct(x0));
      set(r.ghost, 'y', String(y + BAR_Y - 2));
      set(r.ghost, 'width', pct(x(b.start + b.expectedMs) - x0));
      set(r.ghost, 'height', String(BAR_H + 4));
      set(r.ghost, 'rx', '3');
      r.ghost.removeAttribute('display');
    } else {
      set(r.ghost, 'display', 'none');
    }

    // Labels start at the bar, or end at it in the right half.
    if (x0 > 55) {
      set(r.label, 'x', pct(Math.max(x(end), x0)));
      set(r.label, 'text-anchor', 'end');
    } else {
      set(r.label, 'x', pct(x0));
      set(r.label, 'text-anchor', 'start');
    }
    set(r.label, 'y', String(y + 11));

    // The texts depend on the data only (and on now while running).
    const drawn = [b.status, b.start, end, b.expectedMs, b.slow, critical, b.reason, b.type].join('|');
    if (drawn === r.drawn) return;
    r.drawn = drawn;
    const took = duration(end - b.start);
    const usual = b.expectedMs !== null ? ` · usually ${duration(b.expectedMs)}` : '';
    const flag = b.slow ? ' · slow' : '';
    text(r.label, `${b.logicalId} · ${took}${b.end === null ? '…' : ''}${usual}${flag}`);

    const lines = [
      `${b.logicalId} (${b.type})`,
      b.status,
      `started ${clockTime(b.start)}${b.end !== null ? ` · finished ${clockTime(b.end)}` : ' · running'} · ${took}`,
    ];
    if (b.expectedMs !== null) lines.push(`usually ${duration(b.expectedMs)}${b.slow ? ' — more than twice as long' : ''}`);
    if (critical) lines.push('on the critical path');
    if (b.reason) lines.push(b.reason);
    text(r.title, lines.join('\n'));
  }
}
