/**
 * The stackpulse `/ws` protocol as TypeScript types.
 *
 * Every server frame is a JSON object with a `type`. Five types are control replies
 * (`subscribed`, `unsubscribed`, `pong`, `authenticated`, `error`); every other type is an event of a
 * topic, stamped with `deployment_id`, `seq` and `timestamp`. See `DESIGN.md`.
 */

/** Client → server frames. */
export type ClientMessage =
  | { action: 'subscribe'; deployment_id: string; since?: number; epoch?: string }
  | { action: 'unsubscribe'; deployment_id: string }
  | { action: 'ping' }
  | { action: 'auth'; token: string };

// ---------------------------------------------------------------------------
// Control replies

/** The subscription is in place. `seq` is the topic's latest seq (0: no events yet). */
export interface SubscribedMessage {
  type: 'subscribed';
  deployment_id: string;
  seq: number;
  /** Opaque; changes when the server lost the topic's counter (e.g. a restart). */
  epoch: string;
  /** `false` when a resume with `since` could not be honoured: refetch state. */
  recovered: boolean;
}

export interface UnsubscribedMessage {
  type: 'unsubscribed';
  deployment_id: string;
}

export interface PongMessage {
  type: 'pong';
  timestamp: string;
}

/** An in-band `auth` was accepted; the connection now lasts until `expires_at`. */
export interface AuthenticatedMessage {
  type: 'authenticated';
  expires_at: string;
}

/** An error reply; the connection stays usable. */
export interface ErrorMessage {
  type: 'error';
  code: number;
  message: string;
  /** The topic the error is about, when there is one (e.g. 403 Forbidden). */
  deployment_id?: string;
}

export type ControlMessage =
  | SubscribedMessage
  | UnsubscribedMessage
  | PongMessage
  | AuthenticatedMessage
  | ErrorMessage;

// ---------------------------------------------------------------------------
// Events

/** The envelope every event shares. */
export interface EventEnvelope<T extends string = string, D = Record<string, unknown>> {
  type: T;
  deployment_id: string;
  /** Per topic: 1, 2, 3… without gaps. For snapshots: the seq they are current to. */
  seq: number;
  /** RFC 3339, UTC, milliseconds: `2025-10-23T10:05:00.123Z`. */
  timestamp: string;
  data: D;
}

/** CloudFormation resource summary (camelCase, as the tracker sends it). */
export interface ResourceSummary {
  logicalId: string;
  type: string;
  status: string;
  physicalId?: string;
  statusReason?: string;
  progress?: number;
}

/** Summary of the tracked (root) stack. */
export interface StackSummary {
  name: string;
  status: string;
  totalResources: number;
  completedResources: number;
  inProgressResources: number;
  failedResources: number;
  /** floor(100 × completed / total), 0…100. */
  progress: number;
}

export interface StackOutput {
  key: string;
  value: string;
  description?: string;
}

export interface RootCause {
  logicalId: string;
  type: string;
  status: string;
  reason: string;
}

export interface DeploymentStatusData {
  status: string;
  current_layer?: number;
  total_layers?: number;
  [key: string]: unknown;
}

export interface StackDeployedData {
  stack_name: string;
  environment?: string;
  duration_seconds?: number;
  resource_count?: number;
  outputs?: StackOutput[];
  [key: string]: unknown;
}

export interface StackFailedData {
  stack_name: string;
  environment?: string;
  error_message?: string;
  root_cause?: RootCause | null;
  [key: string]: unknown;
}

export interface LogCreatedData {
  level?: string;
  message: string;
  stack_name?: string;
  environment?: string;
  [key: string]: unknown;
}

export interface ResourceStatusData {
  resource: ResourceSummary;
  stack: StackSummary;
  /** Name of the nested stack the event came from; absent for the root stack. */
  nestedStack?: string;
  [key: string]: unknown;
}

/** `last_event` of a snapshot. */
export interface LastEvent {
  type: string;
  seq: number;
  timestamp: string;
}

/** A stack's entry in a deployment snapshot (`stack.deployed`/`stack.failed` folded). */
export interface SnapshotStackEntry {
  status: string;
  environment?: string;
  duration_seconds?: number;
  resource_count?: number;
  error_message?: string;
  outputs?: StackOutput[];
  root_cause?: RootCause | null;
  updated_at?: string;
  [key: string]: unknown;
}

export interface DeploymentSnapshotData {
  status?: string;
  current_layer?: number;
  total_layers?: number;
  stacks?: Record<string, SnapshotStackEntry>;
  logs?: Array<LogCreatedData & { timestamp?: string }>;
  last_event?: LastEvent;
  [key: string]: unknown;
}

export interface StackSnapshotData {
  resources?: Record<string, ResourceSummary>;
  stack?: StackSummary;
  stacks?: Record<string, SnapshotStackEntry>;
  logs?: Array<LogCreatedData & { timestamp?: string }>;
  last_event?: LastEvent;
  [key: string]: unknown;
}

export type DeploymentStatusEvent = EventEnvelope<'deployment.status', DeploymentStatusData>;
export type StackDeployedEvent = EventEnvelope<'stack.deployed', StackDeployedData>;
export type StackFailedEvent = EventEnvelope<'stack.failed', StackFailedData>;
export type LogCreatedEvent = EventEnvelope<'log.created', LogCreatedData>;
export type ResourceStatusEvent = EventEnvelope<'resource.status', ResourceStatusData>;
export type DeploymentSnapshotEvent = EventEnvelope<'deployment.snapshot', DeploymentSnapshotData>;
export type StackSnapshotEvent = EventEnvelope<'stack.snapshot', StackSnapshotData>;

/** The event types this package knows the `data` of. */
export interface KnownEvents {
  'deployment.status': DeploymentStatusEvent;
  'stack.deployed': StackDeployedEvent;
  'stack.failed': StackFailedEvent;
  'log.created': LogCreatedEvent;
  'resource.status': ResourceStatusEvent;
  'deployment.snapshot': DeploymentSnapshotEvent;
  'stack.snapshot': StackSnapshotEvent;
}

export type KnownEvent = KnownEvents[keyof KnownEvents];
export type SnapshotEvent = DeploymentSnapshotEvent | StackSnapshotEvent;

/** Any event: a known one, or a custom dotted type (`myci.step`) with object data. */
export type ServerEvent = KnownEvent | EventEnvelope;

/** Any frame the server sends. */
export type ServerMessage = ControlMessage | ServerEvent;

const CONTROL_TYPES = new Set(['subscribed', 'unsubscribed', 'pong', 'authenticated', 'error']);

/** Whether a decoded frame is a control reply (as opposed to an event). */
export function isControlMessage(m: ServerMessage): m is ControlMessage {
  return CONTROL_TYPES.has(m.type);
}

/** Whether an event is a snapshot (`*.snapshot`, not part of the numbered stream). */
export function isSnapshot(e: { type: string }): boolean {
  return e.type.endsWith('.snapshot');
}

/**
 * Decodes one text frame. Returns `null` for anything that is not a JSON object
 * with a string `type` (or an event without `deployment_id`/`seq`).
 */
export function parseServerMessage(text: string): ServerMessage | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.type !== 'string') return null;
  if (CONTROL_TYPES.has(o.type)) return o as unknown as ControlMessage;
  if (typeof o.deployment_id !== 'string' || typeof o.seq !== 'number') return null;
  return o as unknown as ServerEvent;
}
