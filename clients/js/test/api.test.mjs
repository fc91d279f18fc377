// The client's API edges in Node against the real stackpulse binary: invalid
// arguments, handlers that throw, reconnect(), an in-band auth refused by a server
// without authentication; and the frame parser on what a server never sends.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { isControlMessage, parseServerMessage, StackPulseClient } from '../dist/index.js';
import { startServer, waitFor } from './support/server.mjs';

describe('against one server', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.kill();
  });

  test('rejects a missing endpoint and an empty topic', async () => {
    assert.throws(() => new StackPulseClient({}), TypeError);
    assert.throws(() => new StackPulseClient(undefined), TypeError);
    const client = new StackPulseClient({ endpoint: server.wsUrl });
    await assert.rejects(client.subscribe(''), TypeError);
    await assert.rejects(client.subscribe(undefined), TypeError);
    assert.deepEqual(client.subscriptions, []);
  });

  test('a throwing or rejecting handler is reported and the other handlers still run', async (t) => {
    const reported = [];
    t.mock.method(console, 'error', (...args) => reported.push(args));
    const client = new StackPulseClient({ endpoint: server.wsUrl });
    const seen = [];
    client.on('deployment.status', () => {
      throw new Error('sync handler bug');
    });
    client.on('deployment.status', async () => {
      throw new Error('async handler bug');
    });
    client.on('deployment.status', (e) => seen.push(e.seq));
    try {
      await client.connect();
      await client.subscribe('D-handlers');
      await server.publish('D-handlers', 'deployment.status', { status: 'one' });
      await server.publish('D-handlers', 'deployment.status', { status: 'two' });
      await waitFor(() => seen.length === 2 && reported.length === 4, { message: 'two events, four reports' });
      assert.deepEqual(seen, [1, 2]);
      const messages = reported.map(([prefix, e]) => `${prefix} ${e.message}`).sort();
      assert.deepEqual(messages, [
        'stackpulse: deployment.status handler failed: async handler bug',
        'stackpulse: deployment.status handler failed: async handler bug',
        'stackpulse: deployment.status handler failed: sync handler bug',
        'stackpulse: deployment.status handler failed: sync handler bug',
      ]);
      assert.equal(client.state, 'open');
    } finally {
      client.disconnect();
    }
  });

  test('reconnect() opens a new connection and resumes every topic without a gap', async () => {
    const client = new StackPulseClient({ endpoint: server.wsUrl });
    const seqs = [];
    const states = [];
    const subscribed = [];
    client.on('deployment.status', (e) => seqs.push(e.seq));
    client.on('state', (s) => states.push(s.state));
    client.on('subscribed', (m) => subscribed.push(m));
    try {
      await client.connect();
      await client.subscribe('D-reconnect');
      await server.publish('D-reconnect', 'deployment.status', { status: 'one' });
      await waitFor(() => seqs.length === 1, { message: 'the first event' });
      await client.reconnect();
      assert.equal(client.state, 'open');
      assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'open']);
      await waitFor(() => subscribed.length === 2, { message: 'the resubscribe' });
      assert.equal(subscribed[1].recovered, true, 'resumed with since, not resynced');
      await server.publish('D-reconnect', 'deployment.status', { status: 'two' });
      await waitFor(() => seqs.length === 2, { message: 'the event after reconnect()' });
      assert.deepEqual(seqs, [1, 2]);
    } finally {
      client.disconnect();
    }
  });

  test('authenticate() is refused by a server without authentication', async () => {
    const client = new StackPulseClient({ endpoint: server.wsUrl });
    const errors = [];
    client.on('error', (e) => errors.push(e));
    try {
      await client.connect();
      await assert.rejects(client.authenticate('some-token'), /auth refused \(400\): Authentication is not enabled/);
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, 400);
      // The connection stays usable.
      const pong = await client.ping();
      assert.equal(pong.type, 'pong');
    } finally {
      client.disconnect();
    }
  });
});

test('parseServerMessage keeps JSON objects with a type, and events with a topic and seq', () => {
  assert.equal(parseServerMessage('not json'), null);
  assert.equal(parseServerMessage('[1, 2]'), null);
  assert.equal(parseServerMessage('null'), null);
  assert.equal(parseServerMessage('{"seq": 1}'), null);
  assert.equal(parseServerMessage('{"type": "deployment.status", "seq": 1}'), null, 'an event needs deployment_id');
  assert.equal(parseServerMessage('{"type": "deployment.status", "deployment_id": "D"}'), null, 'an event needs seq');
  const pong = parseServerMessage('{"type": "pong", "timestamp": "t"}');
  assert.deepEqual(pong, { type: 'pong', timestamp: 't' });
  assert.equal(isControlMessage(pong), true);
  const event = parseServerMessage('{"type": "deployment.status", "deployment_id": "D", "seq": 3, "data": {}}');
  assert.equal(event.seq, 3);
  assert.equal(isControlMessage(event), false);
});
