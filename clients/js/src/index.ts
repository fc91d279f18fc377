/**
 * `@stackpulse/client`: the stackpulse WebSocket protocol for browsers and Node 20+.
 *
 * ```ts
 * import { StackPulseClient } from '@stackpulse/client';
 * const client = new StackPulseClient({ endpoint: 'ws://127.0.0.1:8000/ws' });
 * client.on('deployment.status', (e) => console.log(e.seq, e.data.status));
 * await client.connect();
 * await client.subscribe('D1BRV40');
 * ```
 */
export * from './messages.js';
export * from './backoff.js';
export * from './client.js';
