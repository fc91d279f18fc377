// The client against a scripted fake WebSocket (the `WebSocket` option): server
// replies that are hard to provoke from a real server on demand.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { StackPulseClient, SubscribeError } from '../dist/index.js';

/** A WebSocket whose "server" is `respond(frame, socket)`. */
function fakeWebSocket(respond) {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onclose = this.onmessage = this.onerror = null;
      sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      }, 0);
    }
    send(data) {
      const frame = JSON.parse(data);
      this.sent.push(frame);
      for (const reply of respond(frame, this) ?? []) {
        setTimeout(() => this.onmessage?.({ data: JSON.stringify(reply) }), 0);
      }
    }
    close() {
      this.readyState = 3;
    }
  }
  return { FakeSocket, sockets };
}

test('a 5xx subscribe reply keeps the topic and retries with backoff; a 4xx rejects', async () => {
  let refusals = 2;
  const { FakeSocket, sockets } = fakeWebSocket((f) => {
    if (f.action !== 'subscribe') return [];
    if (f.deployment_id === 'forbidden') {
      return [{ type: 'error', code: 403, message: 'Forbidden: forbidden', deployment_id: 'forbidden' }];
    }
    if (refusals-- > 0) {
      return [{ type: 'error', code: 503, message: 'Backplane unavailable', deployment_id: f.deployment_id }];
    }
    return [{ type: 'subscribed', deployment_id: f.deployment_id, seq: 0, epoch: 'e1', recovered: true }];
  });
  const client = new StackPulseClient({
    endpoint: 'ws://fake/ws',
    WebSocket: FakeSocket,
    pingInterval: 0,
    backoff: { initialDelay: 10, maxDelay: 40 },
  });
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  await client.connect();
  const sub = await client.subscribe('D-retry');
  assert.equal(sub.type, 'subscribed');
  assert.deepEqual(errors, [503, 503]);
  assert.deepEqual(
    sockets[0].sent.filter((f) => f.action === 'subscribe').map((f) => f.deployment_id),
    ['D-retry', 'D-retry', 'D-retry'],
    'asked again after each 503, on the same connection',
  );
  await assert.rejects(client.subscribe('forbidden'), (e) => e instanceof SubscribeError && e.code === 403);
  assert.deepEqual(client.subscriptions, ['D-retry']);
  assert.equal(sockets.length, 1);
  client.disconnect();
});

test('drops replayed duplicates and reports a gap', async () => {
  const { FakeSocket } = fakeWebSocket((f) => {
    if (f.action !== 'subscribe') return [];
    const ev = (seq) => ({ type: 'myci.step', deployment_id: 'D', seq, timestamp: '2025-01-01T00:00:00.000Z', data: { seq } });
    return [
      { type: 'subscribed', deployment_id: 'D', seq: 0, epoch: 'e', recovered: true },
      ev(1), ev(2), ev(2), ev(1), ev(3), ev(5),
      { type: 'deployment.snapshot', deployment_id: 'D', seq: 5, timestamp: 't', data: {} },
      ev(5), ev(6),
    ];
  });
  const client = new StackPulseClient({ endpoint: 'ws://fake/ws', WebSocket: FakeSocket, pingInterval: 0 });
  const seen = [];
  const gaps = [];
  client.on('*', (e) => seen.push(`${e.type}:${e.seq}`));
  client.on('gap', (g) => gaps.push([g.expected, g.received]));
  await client.connect();
  await client.subscribe('D');
  await new Promise((resolve) => {
    const off = client.on('myci.step', (e) => e.seq === 6 && (off(), resolve()));
  });
  assert.deepEqual(seen, ['myci.step:1', 'myci.step:2', 'myci.step:3', 'myci.step:5', 'deployment.snapshot:5', 'myci.step:6']);
  assert.deepEqual(gaps, [[4, 5]]);
  assert.equal(client.duplicatesDropped, 3);
  client.disconnect();
});
