/**
 * Timing of a stack's operation, as the timeline draws it: one bar per resource
 * from its first `*_IN_PROGRESS` to its terminal status, the expected duration
 * learned by the server from earlier operations (`expectedSeconds`), the slow flag,
 * the critical path and the ETA text.
 *
 * Pure functions over the `/ws` data (`startedAt`, `finishedAt`, `expectedSeconds`
 * of a resource; `startedAt`, `expectedSeconds`, `etaAt` of the stack); times are
 * epoch milliseconds, `now` is passed in, so tests and the live ticker agree.
 */

/** What the timeline needs of a resource row (fields as on the wire). */
export interface TimedResource {
  logicalId: string;
  type: string;
  status: string;
  statusReason?: string;
  nestedStack?: string;
  startedAt?: string;
  finishedAt?: string;
  expectedSeconds?: number;
}

/** What the timeline needs of the stack summary. */
export interface TimedStack {
  name?: string;
  status?: string;
  startedAt?: string;
  expectedSeconds?: number;
  etaAt?: string;
}

export interface Bar {
  key: string;
  logicalId: string;
  type: string;
  status: string;
  reason: string;
  /** `''` for the root stack, else the nested stack's name. */
  group: string;
  start: number;
  /** `null` while in progress. */
  end: number | null;
  expectedMs: number | null;
  slow: boolean;
}

/** A resource running (or having run) more than this many times its usual time is slow. */
export const SLOW_FACTOR = 2;

/** Epoch ms of an RFC 3339 string, or `null`. */
export function ms(ts: string | undefined | null): number | null {
  if (!ts) return null;
  const t = Date.parse(ts);
  return Number.isNaN(t) ? null : t;
}

function terminal(status: string): boolean {
  return /_(COMPLETE|FAILED)$/.test(status) || status === 'DELETE_SKIPPED';
}

/**
 * Keeps `startedAt`/`finishedAt` for a server that does not send them: the first
 * `*_IN_PROGRESS` seen starts the bar, a terminal status ends it, a new
 * `*_IN_PROGRESS` (a rollback) reopens it.
 */
export function foldTiming<T extends TimedResource>(prev: TimedResource | undefined, next: T, at: string): T {
  const out = { ...next };
  if (!out.startedAt) {
    if (prev?.startedAt) out.startedAt = prev.startedAt;
    else if (next.status.endsWith('_IN_PROGRESS')) out.startedAt = at;
  }
  if (!out.finishedAt && !next.status.endsWith('_IN_PROGRESS') && terminal(next.status) && out.startedAt) {
    out.finishedAt = prev?.finishedAt && prev.status === next.status ? prev.finishedAt : at;
  }
  if (out.expectedSeconds === undefined && prev?.expectedSeconds !== undefined) out.expectedSeconds = prev.expectedSeconds;
  return out;
}

/** `true` when a resource runs (or ran) more than {@link SLOW_FACTOR} times its usual time. */
export function isSlow(start: number, end: number | null, expectedMs: number | null, now: number): boolean {
  if (expectedMs === null || expectedMs <= 0) return false;
  return (end ?? now) - start > SLOW_FACTOR * expectedMs;
}

/** The bars of resources that have started, ordered by start (then key). */
export function bars(rows: Array<[string, TimedResource]>, now: number): Bar[] {
  const out: Bar[] = [];
  for (const [key, r] of rows) {
    const start = ms(r.startedAt);
    if (start === null) continue;
    let end = ms(r.finishedAt);
    if (end !== null && end < start) end = start;
    const expectedMs = typeof r.expectedSeconds === 'number' && Number.isFinite(r.expectedSeconds) ? r.expectedSeconds * 1000 : null;
    out.push({
      key,
      logicalId: r.logicalId,
      type: r.type,
      status: r.status,
      reason: r.statusReason ?? '',
      group: r.nestedStack ?? '',
      start,
      end,
      expectedMs,
      slow: isSlow(start, end, expectedMs, now),
    });
  }
  out.sort((a, b) => a.start - b.start || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return out;
}

/**
 * The critical path of one group: the bar that ends last (running bars end now),
 * then, going back, the bar that finished last no later than the current one
 * started (what it most likely waited for), down to the first. Without the
 * template's dependency graph this is an inference from the times alone.
 */
export function criticalPath(group: Bar[], now: number, slackMs = 1000): Set<string> {
  const path = new Set<string>();
  if (group.length === 0) return path;
  let cur = group.reduce((a, b) => ((b.end ?? now) >= (a.end ?? now) ? b : a));
  path.add(cur.key);
  for (;;) {
    let pred: Bar | null = null;
    for (const b of group) {
      if (b.end === null || path.has(b.key) || b.start >= cur.start) continue;
      if (b.end > cur.start + slackMs) continue;
      if (!pred || (pred.end ?? 0) < b.end) pred = b;
    }
    if (!pred) return path;
    path.add(pred.key);
    cur = pred;
  }
}

/** `850 ms`, `12.5 s`, `3m 05s`, `1h 02m`. */
export function duration(msec: number): string {
  const m = Math.max(0, msec);
  if (m < 1000) return `${Math.round(m)} ms`;
  if (m < 60_000) return `${(m / 1000).toFixed(m < 10_000 ? 1 : 0)} s`;
  const s = Math.round(m / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

// One formatter: `toLocaleTimeString` builds one per call, too slow for 500 rows a second.
const CLOCK = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });

export function clockTime(t: number): string {
  return CLOCK.format(t);
}

/** `ETA 10:50:32 · in 12 s`, `… · overdue by 3.0 s`; `null` without an ETA. */
export function etaText(stack: TimedStack | null | undefined, now: number): string | null {
  const eta = ms(stack?.etaAt);
  if (eta === null) return null;
  const left = eta - now;
  return `ETA ${clockTime(eta)} · ${left >= 0 ? `in ${duration(left)}` : `overdue by ${duration(-left)}`}`;
}

/** `usual 30 s` for the stack's expected duration, if known. */
export function usualText(expectedSeconds: number | undefined): string | null {
  return typeof expectedSeconds === 'number' && Number.isFinite(expectedSeconds) ? `usually ${duration(expectedSeconds * 1000)}` : null;
}
