/**
 * The stackpulse WebSocket client (browsers and Node 20+).
 *
 * Keeps the seed's public shape (`new CloudWebSocketClient({endpoint, token})`,
 * `connect`, `disconnect`, `subscribe`, `unsubscribe`, `on(type, handler)`) and fixes
 * what the seed got wrong:
 *
 * - reconnects with exponential backoff and jitter instead of a fixed 5 s loop;
 * - resumes every subscription after a reconnect with `since` = the last seq seen and
 *   the topic's `epoch`, so handlers see each event exactly once and in order;
 * - drops any event whose seq it has already delivered;
 * - reports `recovered:false` (history gone, or the server restarted) as a `resync`
 *   event so the application can refetch state (a snapshot follows from the server);
 * - asks a token provider for a fresh token on every (re)connect and sends it as
 *   the subprotocol `base64url.bearer.authorization.k8s.io.<token>` beside
 *   `stackpulse.v1` (browsers cannot set headers on a WebSocket, and a token in the
 *   URL ends up in proxy and load-balancer access logs);
 * - pings, and treats a connection that stays silent after a ping as dead;
 * - before a JWT expires, asks the provider for a fresh one and sends it in-band
 *   (`{"action":"auth"}`), so the connection outlives the token; a server close 4001
 *   (token expired) reconnects with a fresh token.
 */

import { BackoffOptions, backoffDelay } from './backoff.js';
import {
  AuthenticatedMessage,
  ClientMessage,
  ErrorMessage,
  KnownEvents,
  PongMessage,
  ServerEvent,
  ServerMessage,
  SubscribedMessage,
  UnsubscribedMessage,
  isSnapshot,
  parseServerMessage,
} from './messages.js';

/** Returns the token to connect with; called before every (re)connect. */
export type TokenProvider = () =>
  | string
  | null
  | undefined
  | Promise<string | null | undefined>;

/** The part of the WebSocket API the client uses (the browser's, Node's, or `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string[]) => WebSocketLike;

export interface StackPulseClientOptions {
  /**
   * `ws://host:8000/ws` (or `wss://…`). An `http(s)://` URL is turned into
   * `ws(s)://`, and an empty path becomes `/ws`.
   */
  endpoint: string;
  /** A fixed token, or a (possibly async) function called on every (re)connect. */
  token?: string | TokenProvider | null;
  /** Reconnect when the connection drops. Default `true`. */
  autoReconnect?: boolean;
  /** Milliseconds between pings; 0 turns pinging off. Default 30 000. */
  pingInterval?: number;
  /** A connection silent this long after a ping is closed and re-opened. Default 10 000. */
  pongTimeout?: number;
  /** A connection attempt not open after this many ms is abandoned. Default 10 000. */
  connectTimeout?: number;
  /**
   * With a token provider and a JWT carrying `exp`: refresh in-band this many ms
   * before the connection's token expires (at most half its remaining lifetime).
   * Default 60 000; 0 turns in-band refresh off.
   */
  refreshMargin?: number;
  /** Reconnect delays (see {@link BackoffOptions}). */
  backoff?: BackoffOptions;
  /** Source of randomness for the jitter (tests). Default `Math.random`. */
  random?: () => number;
  /** WebSocket implementation. Default: the global `WebSocket`, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The topic's history could not be resumed; its state must be refetched. */
export interface ResyncInfo {
  deployment_id: string;
  /** The topic's latest seq now; events continue after it. */
  seq: number;
  epoch: string;
  /** The position the client had (null: none). */
  previousSeq: number | null;
  previousEpoch: string | null;
}

/** Events about the connection itself (not sent by the server). */
export interface ConnectionEvents {
  /** A connection attempt starts (1 = the first after `connect()` or a drop). */
  connecting: { attempt: number; state: ConnectionState };
  open: { attempt: number };
  /** The connection dropped (or an attempt failed); the next attempt is in `delay` ms. */
  reconnecting: { attempt: number; delay: number; code?: number; reason?: string };
  /** The client stopped: `disconnect()`, or a drop with `autoReconnect: false`. */
  closed: { code?: number; reason?: string };
  /** Every change of {@link ConnectionState}. */
  state: { state: ConnectionState; previous: ConnectionState };
  resync: ResyncInfo;
  /** An event's seq skipped ahead (the server promises this never happens). */
  gap: { deployment_id: string; expected: number; received: number };
}

/** Everything `on()` can listen to. */
export interface ClientEventMap extends KnownEvents, ConnectionEvents {
  subscribed: SubscribedMessage;
  unsubscribed: UnsubscribedMessage;
  pong: PongMessage;
  authenticated: AuthenticatedMessage;
  /** An error reply from the server (the connection stays usable). */
  error: ErrorMessage;
  /** Every event delivered to the application (after de-duplication). */
  '*': ServerEvent;
  /** Every decoded frame, before any processing. */
  message: ServerMessage;
}

export type Handler<T> = (message: T) => void | Promise<void>;

/** A `subscribe()` the server refused (e.g. 403 Forbidden, 429 too many). */
export class SubscribeError extends Error {
  constructor(
    readonly deployment_id: string,
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = 'SubscribeError';
  }
}

interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (error: Error) => void;
}

interface TopicState {
  /** Consecutive 5xx refusals (server-side trouble, e.g. the backplane is down). */
  failures: number;
  retryTimer: ReturnType<typeof setTimeout> | null;
  /** The last seq delivered (or covered by a snapshot); null: no position yet. */
  lastSeq: number | null;
  epoch: string | null;
  /** The server confirmed the subscription on the current connection. */
  confirmed: boolean;
  last: SubscribedMessage | null;
  waiters: Waiter<SubscribedMessage>[];
}

const OPEN = 1;

let wsPackage: Promise<WebSocketConstructor> | null = null;

/** The global WebSocket (browsers, Node 22+), else the `ws` package, imported on demand. */
async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (typeof g === 'function') return g as WebSocketConstructor;
  if (!wsPackage) {
    // A non-literal specifier keeps browser bundlers from trying to resolve `ws`.
    const name = 'ws';
    wsPackage = import(name).then(
      (m: { WebSocket?: unknown; default?: unknown }) =>
        (m.WebSocket ?? m.default) as WebSocketConstructor,
    );
  }
  return wsPackage;
}

/** The URL to open: `ws(s)://…/ws` (the token is never put in it). */
export function buildUrl(endpoint: string): string {
  const u = new URL(endpoint);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '' || u.pathname === '/') u.pathname = '/ws';
  return u.toString();
}

/** The server's subprotocol, which it selects when a client offers it. */
export const SUBPROTOCOL = 'stackpulse.v1';
/** Kubernetes' convention for a bearer token in `Sec-WebSocket-Protocol`. */
export const BEARER_SUBPROTOCOL_PREFIX = 'base64url.bearer.authorization.k8s.io.';

/** Unpadded base64url of a string's UTF-8 bytes. */
function base64url(text: string): string {
  let bin = '';
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The subprotocols to offer: none without a token, else `stackpulse.v1` and the token. */
export function buildProtocols(token?: string | null): string[] | undefined {
  if (!token) return undefined;
  return [SUBPROTOCOL, BEARER_SUBPROTOCOL_PREFIX + base64url(token)];
}

/** Milliseconds since the epoch at which a JWT expires (its `exp`), or null. */
export function jwtExpiry(token: string): number | null {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes)) as { exp?: unknown };
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** Marks a promise as handled (a caller may still await it and see the rejection). */
function quiet<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

function textOf(data: unknown): string {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return String(data);
}

export class StackPulseClient {
  private readonly endpoint: string;
  private readonly tokenSource: string | TokenProvider | null;
  private readonly autoReconnect: boolean;
  private readonly pingInterval: number;
  private readonly pongTimeout: number;
  private readonly connectTimeout: number;
  private readonly refreshMargin: number;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private readonly wsImpl: WebSocketConstructor | undefined;

  private ws: WebSocketLike | null = null;
  /** Bumped whenever the current socket is abandoned; stale callbacks check it. */
  private generation = 0;
  private wanted = false;
  private attempt = 0;
  private current: ConnectionState = 'idle';
  private hasBeenOpen = false;
  private readonly topics = new Map<string, TopicState>();
  private readonly handlers = new Map<string, Set<Handler<never>>>();
  private connectWaiters: Waiter<void>[] = [];
  private unsubscribeWaiters = new Map<string, Array<() => void>>();
  private pingWaiters: Waiter<PongMessage>[] = [];
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private authWaiters: Waiter<AuthenticatedMessage>[] = [];
  /** The token the current connection was opened (or last re-authenticated) with. */
  private token: string | null = null;
  private duplicates = 0;

  constructor(options: StackPulseClientOptions) {
    if (!options || typeof options.endpoint !== 'string') {
      throw new TypeError('StackPulseClient: options.endpoint is required');
    }
    buildUrl(options.endpoint); // throws early on a malformed endpoint
    this.endpoint = options.endpoint;
    this.tokenSource = options.token ?? null;
    this.autoReconnect = options.autoReconnect ?? true;
    this.pingInterval = options.pingInterval ?? 30_000;
    this.pongTimeout = options.pongTimeout ?? 10_000;
    this.connectTimeout = options.connectTimeout ?? 10_000;
    this.refreshMargin = options.refreshMargin ?? 60_000;
    this.backoff = options.backoff ?? {};
    this.random = options.random ?? Math.random;
    this.wsImpl = options.WebSocket;
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.current;
  }

  /** The topics this client is subscribed to (or will subscribe to once connected). */
  get subscriptions(): string[] {
    return [...this.topics.keys()];
  }

  /** Events dropped because their seq had already been delivered. */
  get duplicatesDropped(): number {
    return this.duplicates;
  }

  /** Where a topic stands: the last seq delivered and its epoch (undefined: not subscribed). */
  position(deploymentId: string): { seq: number | null; epoch: string | null } | undefined {
    const t = this.topics.get(deploymentId);
    return t ? { seq: t.lastSeq, epoch: t.epoch } : undefined;
  }

  /**
   * Opens the connection. Resolves once it is open. With `autoReconnect` (the
   * default) a failed attempt is retried with backoff and the promise waits; it
   * rejects only if `disconnect()` is called first. Without it, a failed attempt rejects.
   */
  connect(): Promise<void> {
    if (this.current === 'open') return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (!this.wanted) {
      this.wanted = true;
      this.attempt = 0;
      void this.open();
    }
    return quiet(p);
  }

  /**
   * Closes the connection and stops reconnecting. Subscriptions and their positions
   * are kept: a later `connect()` resumes them without gap.
   */
  disconnect(): void {
    const wasActive = this.wanted || this.ws !== null;
    this.wanted = false;
    this.abandonSocket(1000, 'client disconnect');
    this.clearTimer('reconnect');
    for (const t of this.topics.values()) t.confirmed = false;
    this.failWaiters(new Error('Client disconnected'));
    if (wasActive) {
      this.setState('closed');
      this.emit('closed', { code: 1000, reason: 'client disconnect' });
    }
  }

  /**
   * Drops the current connection and opens a new one at once (asking the token
   * provider again), resuming every subscription. Use it after a token change.
   */
  reconnect(): Promise<void> {
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    this.wanted = true;
    this.abandonSocket(1000, 'client reconnect');
    this.clearTimer('reconnect');
    this.attempt = 0;
    for (const t of this.topics.values()) t.confirmed = false;
    this.rejectPings(new Error('Connection replaced'));
    if (this.hasBeenOpen) this.setState('reconnecting');
    void this.open();
    return quiet(p);
  }

  /**
   * Subscribes to a topic (a deployment id, or `stack:<StackName>`). Resolves with
   * the server's `subscribed` reply; rejects with {@link SubscribeError} if the
   * server refuses. Before `connect()` (or while reconnecting) the subscription is
   * recorded and sent once the connection is open.
   *
   * `since`/`epoch` resume from a position the application kept (e.g. across page
   * loads); normally the client tracks them itself.
   */
  subscribe(
    deploymentId: string,
    options: { since?: number; epoch?: string } = {},
  ): Promise<SubscribedMessage> {
    if (typeof deploymentId !== 'string' || deploymentId === '') {
      return quiet(Promise.reject(new TypeError('deployment id must be a non-empty string')));
    }
    let t = this.topics.get(deploymentId);
    if (t && t.confirmed && t.last) return Promise.resolve(t.last);
    const isNew = !t;
    if (!t) {
      t = {
        failures: 0,
        retryTimer: null,
        lastSeq: options.since ?? null,
        epoch: options.epoch ?? null,
        confirmed: false,
        last: null,
        waiters: [],
      };
      this.topics.set(deploymentId, t);
    }
    const topic = t;
    const p = new Promise<SubscribedMessage>((resolve, reject) =>
      topic.waiters.push({ resolve, reject }),
    );
    if (isNew && this.isOpen()) this.sendSubscribe(deploymentId, topic);
    return quiet(p);
  }

  /** Unsubscribes; resolves when the server confirms (at once when not connected). */
  unsubscribe(deploymentId: string): Promise<void> {
    const t = this.topics.get(deploymentId);
    if (!t) return Promise.resolve();
    this.topics.delete(deploymentId);
    if (t.retryTimer) clearTimeout(t.retryTimer);
    for (const w of t.waiters) w.reject(new Error(`Unsubscribed from ${deploymentId}`));
    if (!this.isOpen()) return Promise.resolve();
    const p = new Promise<void>((resolve) => {
      const list = this.unsubscribeWaiters.get(deploymentId) ?? [];
      list.push(resolve);
      this.unsubscribeWaiters.set(deploymentId, list);
    });
    this.send({ action: 'unsubscribe', deployment_id: deploymentId });
    return p;
  }

  /** Sends a ping now; resolves with the `pong`. */
  ping(): Promise<PongMessage> {
    if (!this.isOpen()) return quiet(Promise.reject(new Error('Not connected')));
    const p = new Promise<PongMessage>((resolve, reject) => this.pingWaiters.push({ resolve, reject }));
    this.sendPing();
    return quiet(p);
  }

  /**
   * Sends a fresh token in-band (`{"action":"auth"}`) so the connection outlives its
   * current one; without an argument, asks the token provider. Resolves with the
   * server's `authenticated` reply; rejects on an `error` reply (401/403/400).
   * The client does this by itself before a JWT's `exp` when it has a provider.
   */
  async authenticate(token?: string): Promise<AuthenticatedMessage> {
    const fresh = token ?? (await this.resolveToken());
    if (!fresh) throw new Error('No token to authenticate with');
    if (!this.isOpen()) throw new Error('Not connected');
    const p = new Promise<AuthenticatedMessage>((resolve, reject) =>
      this.authWaiters.push({ resolve, reject }),
    );
    this.send({ action: 'auth', token: fresh });
    const reply = await p;
    this.token = fresh;
    return reply;
  }

  /**
   * Registers a handler for a server message type (`deployment.status`,
   * `resource.status`, `stack.snapshot`, any custom dotted type, `subscribed`,
   * `error`, …), for `*` (every event), `message` (every frame), or a connection
   * event (`connecting`, `open`, `reconnecting`, `closed`, `state`, `resync`, `gap`).
   * Handlers may be async; several per type are allowed. Returns a function that
   * removes the handler.
   */
  on<K extends keyof ClientEventMap>(type: K, handler: Handler<ClientEventMap[K]>): () => void;
  on(type: string, handler: Handler<ServerEvent>): () => void;
  on(type: string, handler: Handler<never>): () => void {
    let set = this.handlers.get(type);
    if (!set) {
      set = new Set();
      this.handlers.set(type, set);
    }
    set.add(handler);
    return () => this.off(type, handler);
  }

  /** Removes a handler registered with `on`. */
  off(type: string, handler: Handler<never>): void {
    this.handlers.get(type)?.delete(handler);
  }

  // -------------------------------------------------------------------------

  private isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === OPEN && this.current === 'open';
  }

  private setState(next: ConnectionState): void {
    const previous = this.current;
    if (previous === next) return;
    this.current = next;
    this.emit('state', { state: next, previous });
  }

  private emit(type: string, payload: unknown): void {
    const set = this.handlers.get(type);
    if (!set) return;
    for (const h of [...set]) {
      try {
        const r = (h as Handler<unknown>)(payload);
        if (r && typeof (r as Promise<void>).catch === 'function') {
          (r as Promise<void>).catch((e) => console.error(`stackpulse: ${type} handler failed:`, e));
        }
      } catch (e) {
        console.error(`stackpulse: ${type} handler failed:`, e);
      }
    }
  }

  private async resolveToken(): Promise<string | null> {
    const src = this.tokenSource;
    if (src === null) return null;
    if (typeof src === 'string') return src;
    return (await src()) ?? null;
  }

  private async open(): Promise<void> {
    const gen = ++this.generation;
    this.ws = null;
    this.setState(this.hasBeenOpen ? 'reconnecting' : 'connecting');
    this.emit('connecting', { attempt: this.attempt + 1, state: this.current });
    let ws: WebSocketLike;
    try {
      const token = await this.resolveToken();
      const Impl = this.wsImpl ?? (await defaultWebSocket());
      if (gen !== this.generation || !this.wanted) return;
      const protocols = buildProtocols(token);
      ws = protocols ? new Impl(buildUrl(this.endpoint), protocols) : new Impl(buildUrl(this.endpoint));
      this.token = token;
    } catch (e) {
      if (gen !== this.generation || !this.wanted) return;
      this.dropped(undefined, e instanceof Error ? e.message : String(e));
      return;
    }
    this.ws = ws;
    this.connectTimer = setTimeout(() => {
      if (gen !== this.generation) return;
      this.abandonSocket(4002, 'connect timeout', true);
      this.dropped(undefined, 'connect timeout');
    }, this.connectTimeout);
    ws.onopen = () => {
      if (gen !== this.generation) return;
      this.clearTimer('connect');
      const attempt = this.attempt + 1;
      this.attempt = 0;
      this.hasBeenOpen = true;
      this.setState('open');
      this.emit('open', { attempt });
      this.startPing();
      this.scheduleRefresh(this.token ? jwtExpiry(this.token) : null);
      for (const [id, t] of this.topics) {
        t.confirmed = false;
        this.sendSubscribe(id, t);
      }
      const waiters = this.connectWaiters;
      this.connectWaiters = [];
      for (const w of waiters) w.resolve();
    };
    ws.onmessage = (ev) => {
      if (gen !== this.generation) return;
      this.handleFrame(textOf(ev.data));
    };
    ws.onerror = () => {
      // A close event follows; it decides what happens next.
    };
    ws.onclose = (ev) => {
      if (gen !== this.generation) return;
      this.generation++;
      this.ws = null;
      this.clearTimer('connect');
      this.stopPing();
      this.dropped(ev.code, ev.reason);
    };
  }

  /** The socket is gone (or never opened): retry with backoff, or stop. */
  private dropped(code?: number, reason?: string): void {
    for (const t of this.topics.values()) t.confirmed = false;
    this.rejectPings(new Error('Connection lost'));
    for (const [, list] of this.unsubscribeWaiters) for (const done of list) done();
    this.unsubscribeWaiters.clear();
    if (!this.wanted) return;
    if (!this.autoReconnect) {
      this.wanted = false;
      const err = new Error(`Connection closed${code !== undefined ? ` (${code})` : ''}`);
      const waiters = this.connectWaiters;
      this.connectWaiters = [];
      for (const w of waiters) w.reject(err);
      this.setState('closed');
      this.emit('closed', { code, reason });
      return;
    }
    this.attempt++;
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.setState(this.hasBeenOpen ? 'reconnecting' : 'connecting');
    this.emit('reconnecting', { attempt: this.attempt, delay, code, reason });
    this.clearTimer('reconnect');
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.wanted) void this.open();
    }, delay);
  }

  /** Detaches and closes the current socket without triggering a reconnect. */
  private abandonSocket(code: number, reason: string, hard = false): void {
    this.generation++;
    this.clearTimer('connect');
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => undefined; // `ws` emits an error when closing a CONNECTING socket
    try {
      // A dead connection cannot carry a close handshake: `ws` can drop it at once.
      const terminate = (ws as { terminate?: () => void }).terminate;
      if (hard && typeof terminate === 'function') terminate.call(ws);
      else ws.close(code, reason);
    } catch {
      // closing a socket that never opened may throw in some implementations
    }
  }

  private failWaiters(err: Error): void {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(err);
    for (const t of this.topics.values()) {
      const ws = t.waiters;
      t.waiters = [];
      for (const w of ws) w.reject(err);
    }
    this.rejectPings(err);
    for (const [, list] of this.unsubscribeWaiters) for (const done of list) done();
    this.unsubscribeWaiters.clear();
  }

  private rejectPings(err: Error): void {
    const pings = this.pingWaiters;
    this.pingWaiters = [];
    for (const w of pings) w.reject(err);
    const auths = this.authWaiters;
    this.authWaiters = [];
    for (const w of auths) w.reject(err);
  }

  private clearTimer(which: 'reconnect' | 'connect' | 'pong' | 'refresh'): void {
    if (which === 'reconnect' && this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    } else if (which === 'connect' && this.connectTimer) {
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
    } else if (which === 'pong' && this.pongTimer) {
      clearTimeout(this.pongTimer);
      this.pongTimer = null;
    } else if (which === 'refresh' && this.refreshTimer) {
      clearTimeout(this.refreshTimer);
      this.refreshTimer = null;
    }
  }

  private send(message: ClientMessage): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  private sendSubscribe(id: string, t: TopicState): void {
    const msg: ClientMessage = { action: 'subscribe', deployment_id: id };
    if (t.lastSeq !== null) {
      msg.since = t.lastSeq;
      if (t.epoch !== null) msg.epoch = t.epoch;
    }
    this.send(msg);
  }

  private startPing(): void {
    this.stopPing();
    if (this.pingInterval <= 0) return;
    this.pingTimer = setInterval(() => this.sendPing(), this.pingInterval);
  }

  private stopPing(): void {
    if (this.pingTimer) {
      clearInterval(this.pingTimer);
      this.pingTimer = null;
    }
    this.clearTimer('pong');
    this.clearTimer('refresh');
  }

  /** Plans an in-band token refresh ahead of `expiresAt` (ms since the epoch). */
  private scheduleRefresh(expiresAt: number | null): void {
    this.clearTimer('refresh');
    if (expiresAt === null || !Number.isFinite(expiresAt)) return;
    if (typeof this.tokenSource !== 'function' || this.refreshMargin <= 0) return;
    const remaining = expiresAt - Date.now();
    const delay = Math.max(0, remaining - Math.min(this.refreshMargin, remaining / 2));
    const gen = this.generation;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (gen !== this.generation || !this.isOpen()) return;
      void this.resolveToken()
        .then((fresh) => {
          // The same token again cannot extend anything; at expiry the server closes
          // with 4001 and the reconnect asks the provider once more.
          if (gen === this.generation && fresh && fresh !== this.token) return this.authenticate(fresh);
          return undefined;
        })
        .catch(() => undefined);
    }, Math.min(delay, 2_147_000_000));
  }

  private sendPing(): void {
    if (!this.send({ action: 'ping' })) return;
    if (this.pongTimer || this.pongTimeout <= 0) return;
    const gen = this.generation;
    this.pongTimer = setTimeout(() => {
      this.pongTimer = null;
      if (gen !== this.generation) return;
      // Nothing came back: the connection is dead even if the socket does not know yet.
      this.abandonSocket(4003, 'pong timeout', true);
      this.dropped(undefined, 'pong timeout');
    }, this.pongTimeout);
  }

  private handleFrame(text: string): void {
    // Any frame proves the connection is alive.
    this.clearTimer('pong');
    const msg = parseServerMessage(text);
    if (!msg) return;
    this.emit('message', msg);
    switch (msg.type) {
      case 'subscribed':
        this.onSubscribed(msg as SubscribedMessage);
        return;
      case 'unsubscribed': {
        const id = (msg as UnsubscribedMessage).deployment_id;
        const list = this.unsubscribeWaiters.get(id);
        this.unsubscribeWaiters.delete(id);
        for (const done of list ?? []) done();
        this.emit('unsubscribed', msg);
        return;
      }
      case 'authenticated': {
        const a = msg as AuthenticatedMessage;
        const auths = this.authWaiters;
        this.authWaiters = [];
        for (const w of auths) w.resolve(a);
        this.scheduleRefresh(Date.parse(a.expires_at));
        this.emit('authenticated', a);
        return;
      }
      case 'pong': {
        const pings = this.pingWaiters;
        this.pingWaiters = [];
        for (const w of pings) w.resolve(msg as PongMessage);
        this.emit('pong', msg);
        return;
      }
      case 'error': {
        const err = msg as ErrorMessage;
        const id = err.deployment_id;
        const t = id !== undefined ? this.topics.get(id) : undefined;
        if (id !== undefined && t && !t.confirmed && err.code >= 500) {
          // Trouble on the server's side (e.g. its backplane is down): keep the topic
          // and ask again after a backoff delay; the subscribe() promise keeps waiting.
          this.retrySubscribe(id, t);
        } else if (id !== undefined && t && !t.confirmed) {
          // The server refused the subscription: forget it so it is not retried.
          this.topics.delete(id);
          for (const w of t.waiters) w.reject(new SubscribeError(id, err.code, err.message));
        } else if (id === undefined && this.authWaiters.length > 0) {
          // Replies come in order: an untargeted error while an `auth` is pending
          // answers it (401 invalid, 403 another user, 400 auth not enabled).
          const auths = this.authWaiters;
          this.authWaiters = [];
          for (const w of auths) w.reject(new Error(`auth refused (${err.code}): ${err.message}`));
        }
        this.emit('error', err);
        return;
      }
      default:
        this.onEvent(msg as ServerEvent);
    }
  }

  private retrySubscribe(id: string, t: TopicState): void {
    t.failures++;
    if (t.retryTimer) clearTimeout(t.retryTimer);
    const gen = this.generation;
    t.retryTimer = setTimeout(() => {
      t.retryTimer = null;
      // A reconnect resubscribes by itself; only retry on the same connection.
      if (gen !== this.generation || this.topics.get(id) !== t || t.confirmed) return;
      this.sendSubscribe(id, t);
    }, backoffDelay(t.failures, this.backoff, this.random));
  }

  private onSubscribed(msg: SubscribedMessage): void {
    const t = this.topics.get(msg.deployment_id);
    if (!t) return; // unsubscribed meanwhile
    t.failures = 0;
    const previousSeq = t.lastSeq;
    const previousEpoch = t.epoch;
    t.epoch = msg.epoch;
    t.confirmed = true;
    t.last = msg;
    if (!msg.recovered) {
      // Our position means nothing any more: continue after the topic's current seq
      // (the server sends a snapshot of the state first when there is one).
      t.lastSeq = msg.seq;
    } else if (t.lastSeq === null) {
      t.lastSeq = msg.seq;
    }
    const waiters = t.waiters;
    t.waiters = [];
    for (const w of waiters) w.resolve(msg);
    this.emit('subscribed', msg);
    if (!msg.recovered) {
      this.emit('resync', {
        deployment_id: msg.deployment_id,
        seq: msg.seq,
        epoch: msg.epoch,
        previousSeq,
        previousEpoch,
      });
    }
  }

  private onEvent(e: ServerEvent): void {
    const t = this.topics.get(e.deployment_id);
    if (!t) return; // not (or no longer) subscribed
    if (isSnapshot(e)) {
      if (t.lastSeq === null || e.seq > t.lastSeq) t.lastSeq = e.seq;
    } else {
      if (t.lastSeq !== null && e.seq <= t.lastSeq) {
        this.duplicates++;
        return;
      }
      if (t.lastSeq !== null && e.seq !== t.lastSeq + 1) {
        this.emit('gap', { deployment_id: e.deployment_id, expected: t.lastSeq + 1, received: e.seq });
      }
      t.lastSeq = e.seq;
    }
    this.emit(e.type, e);
    this.emit('*', e);
  }
}

/** The seed's name for the client. */
export const CloudWebSocketClient = StackPulseClient;
export type CloudWebSocketClient = StackPulseClient;
export type CloudWebSocketOptions = StackPulseClientOptions;
