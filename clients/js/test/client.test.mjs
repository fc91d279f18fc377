// The TypeScript client (compiled to dist/) in Node against the real stackpulse binary.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { CloudWebSocketClient, StackPulseClient, SubscribeError } from '../dist/index.js';
import { nextEvent, startProxy, startServer, waitFor } from './support/server.mjs';

const FAST = { initialDelay: 20, maxDelay: 200 };

/** Collects everything a client emits, by type. */
function record(client, types) {
  const log = Object.fromEntries(types.map((t) => [t, []]));
  for (const t of types) client.on(t, (e) => log[t].push(e));
  return log;
}

describe('against one server', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.kill();
  });

  test('subscribes and receives typed events in order; a late joiner gets a snapshot first', async () => {
    const client = new StackPulseClient({ endpoint: server.wsUrl });
    const got = record(client, ['deployment.status', '*', 'state']);
    await client.connect();
    assert.equal(client.state, 'open');
    const sub = await client.subscribe('D-basic');
    assert.equal(sub.type, 'subscribed');
    assert.equal(sub.deployment_id, 'D-basic');
    assert.equal(sub.seq, 0);
    assert.equal(sub.recovered, true);
    assert.match(sub.epoch, /.+/);

    assert.equal(await server.publish('D-basic', 'deployment.status', { status: 'deploying', current_layer: 1, total_layers: 2 }), 1);
    assert.equal(await server.publish('D-basic', 'myci.step', { step: 'lint' }), 2);
    await waitFor(() => got['*'].length === 2, { message: 'two events' });
    assert.deepEqual(got['*'].map((e) => [e.type, e.seq]), [['deployment.status', 1], ['myci.step', 2]]);
    const status = got['deployment.status'][0];
    assert.equal(status.deployment_id, 'D-basic');
    assert.deepEqual(status.data, { status: 'deploying', current_layer: 1, total_layers: 2 });
    assert.match(status.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual(client.position('D-basic'), { seq: 2, epoch: sub.epoch });
    assert.deepEqual(got.state.map((s) => s.state), ['connecting', 'open']);

    // The seed's class name and handler style work unchanged.
    const late = new CloudWebSocketClient({ endpoint: server.wsUrl, token: 'ignored-without-auth' });
    const lateGot = record(late, ['deployment.snapshot', 'deployment.status', '*']);
    await late.connect();
    const lateSub = await late.subscribe('D-basic');
    assert.equal(lateSub.seq, 2);
    await waitFor(() => lateGot['deployment.snapshot'].length === 1, { message: 'snapshot' });
    const snap = lateGot['deployment.snapshot'][0];
    assert.equal(snap.seq, 2);
    assert.equal(snap.data.status, 'deploying');
    assert.equal(snap.data.total_layers, 2);

    await server.publish('D-basic', 'deployment.status', { status: 'deployed', current_layer: 2, total_layers: 2 });
    await waitFor(() => lateGot['deployment.status'].length === 1 && got['*'].length === 3, { message: 'live event on both' });
    assert.deepEqual(lateGot['*'].map((e) => [e.type, e.seq]), [['deployment.snapshot', 2], ['deployment.status', 3]]);
    client.disconnect();
    late.disconnect();
    assert.equal(client.state, 'closed');
    assert.equal(got.state.at(-1).state, 'closed');
  });

  test('ping() gets a pong; periodic pings keep arriving', async () => {
    const client = new StackPulseClient({ endpoint: server.wsUrl, pingInterval: 50 });
    const got = record(client, ['pong']);
    await client.connect();
    const pong = await client.ping();
    assert.equal(pong.type, 'pong');
    assert.match(pong.timestamp, /Z$/);
    await waitFor(() => got.pong.length >= 4, { message: 'periodic pongs' });
    client.disconnect();
  });

  test('unsubscribe stops delivery; a refused subscribe rejects with the server error', async () => {
    const limited = await startServer({ args: ['--max-subscriptions', '1'] });
    try {
      const client = new StackPulseClient({ endpoint: limited.wsUrl });
      const got = record(client, ['*', 'error']);
      await client.connect();
      await client.subscribe('T-a');
      await assert.rejects(client.subscribe('T-b'), (e) => {
        assert.ok(e instanceof SubscribeError);
        assert.equal(e.code, 429);
        assert.equal(e.deployment_id, 'T-b');
        assert.match(e.message, /Too many subscriptions/);
        return true;
      });
      assert.deepEqual(client.subscriptions, ['T-a'], 'a refused topic is not retried');
      assert.equal(got.error.length, 1);

      await client.unsubscribe('T-a');
      assert.deepEqual(client.subscriptions, []);
      await client.subscribe('T-b'); // room again
      await limited.publish('T-a', 'myci.step', { n: 1 });
      await limited.publish('T-b', 'myci.step', { n: 2 });
      await waitFor(() => got['*'].length >= 1, { message: 'event on T-b' });
      assert.deepEqual(got['*'].map((e) => e.deployment_id), ['T-b'], 'nothing from the unsubscribed topic');
      client.disconnect();
    } finally {
      await limited.kill();
    }
  });

  test('reconnects after abrupt drops and resumes gap-free while events keep coming', async () => {
    const proxy = await startProxy(server.port);
    const client = new StackPulseClient({ endpoint: proxy.wsUrl, backoff: FAST, pingInterval: 0 });
    const got = record(client, ['*', 'reconnecting', 'open', 'resync', 'subscribed']);
    await client.connect();
    await client.subscribe('D-resume');

    const N = 400;
    let published = 0;
    const publisher = (async () => {
      for (let i = 1; i <= N; i++) {
        assert.equal(await server.publish('D-resume', 'deployment.status', { status: 'deploying', i }), i);
        published = i;
      }
    })();

    // Cut the connection three times while the publisher is running.
    for (let drop = 1; drop <= 3; drop++) {
      const target = Math.floor((N * drop) / 5);
      await waitFor(() => got['*'].length >= target, { message: `${target} events before drop ${drop}` });
      proxy.dropAll();
      await waitFor(() => got.open.length === drop + 1, { message: `reopen ${drop}` });
    }
    await publisher;
    await waitFor(() => got['*'].length >= N, { message: `all ${N} events`, timeout: 20_000 });

    const seqs = got['*'].map((e) => e.seq);
    assert.deepEqual(seqs, Array.from({ length: N }, (_, i) => i + 1), 'every seq exactly once, in order');
    assert.deepEqual(got['*'].map((e) => e.data.i), seqs);
    assert.ok(published === N);
    assert.ok(got.reconnecting.length >= 3, 'reconnected after each drop');
    assert.equal(got.resync.length, 0, 'history covered every gap');
    const resumed = got.subscribed.slice(1);
    assert.equal(resumed.length, 3);
    assert.ok(resumed.every((s) => s.recovered === true));
    // Each drop happened mid-stream: something was replayed after the reconnect.
    assert.ok(proxy.requests.length === 4 && proxy.requests.every((r) => r.startsWith('GET /ws ')));
    client.disconnect();
    await proxy.close();
  });

  test('calls the token provider on every (re)connect and sends the token as a subprotocol, never in the URL', async () => {
    const proxy = await startProxy(server.port);
    let calls = 0;
    const client = new StackPulseClient({
      endpoint: proxy.wsUrl,
      backoff: FAST,
      pingInterval: 0,
      token: async () => {
        calls++;
        await new Promise((r) => setTimeout(r, 5)); // async providers are awaited
        return `tok ${calls}/x`;
      },
    });
    const got = record(client, ['open']);
    await client.connect();
    for (let i = 2; i <= 3; i++) {
      proxy.dropAll();
      await waitFor(() => got.open.length === i, { message: `open ${i}` });
    }
    assert.equal(calls, 3);
    // Access logs record URLs: the token travels in Sec-WebSocket-Protocol instead.
    assert.deepEqual(proxy.requests, ['GET /ws HTTP/1.1', 'GET /ws HTTP/1.1', 'GET /ws HTTP/1.1']);
    const b64url = (t) => Buffer.from(t).toString('base64url');
    assert.deepEqual(
      proxy.protocols.map((p) => p.split(',').map((x) => x.trim())),
      [1, 2, 3].map((n) => ['stackpulse.v1', `base64url.bearer.authorization.k8s.io.${b64url(`tok ${n}/x`)}`]),
    );
    client.disconnect();
    await proxy.close();
  });

  test('a silent connection (no pong) is detected and replaced', async () => {
    const proxy = await startProxy(server.port);
    const client = new StackPulseClient({
      endpoint: proxy.wsUrl,
      backoff: FAST,
      pingInterval: 50,
      pongTimeout: 200,
    });
    const got = record(client, ['reconnecting', 'open', '*']);
    await client.connect();
    await client.subscribe('D-silent');
    proxy.state.blackhole = true; // the TCP connection stays up, nothing gets through
    await server.publish('D-silent', 'myci.step', { n: 1 });
    const r = await nextEvent(client, 'reconnecting', (e) => e.reason === 'pong timeout');
    assert.equal(r.attempt, 1);
    proxy.state.blackhole = false;
    await waitFor(() => got.open.length === 2, { message: 'reopened' });
    await waitFor(() => got['*'].length === 1, { message: 'the event sent while silent' });
    assert.equal(got['*'][0].seq, 1);
    client.disconnect();
    await proxy.close();
  });
});

test('backs off exponentially with jitter while the server is unreachable', async () => {
  // A port with nothing listening: take one and close it.
  const proxy = await startProxy(1);
  const port = proxy.port;
  await proxy.close();
  const randoms = [0, 1, 0.5, 0.25, 0.75];
  let r = 0;
  const client = new StackPulseClient({
    endpoint: `ws://127.0.0.1:${port}/ws`,
    backoff: { initialDelay: 20, maxDelay: 1000, factor: 2, jitter: 0.5 },
    random: () => randoms[r++ % randoms.length],
  });
  const got = record(client, ['reconnecting', 'state']);
  const connecting = client.connect();
  await waitFor(() => got.reconnecting.length >= 5, { message: '5 retries' });
  client.disconnect();
  await assert.rejects(connecting, /disconnected/);
  const delays = got.reconnecting.slice(0, 5).map((e) => [e.attempt, e.delay]);
  // ceiling 20·2^(n-1), delay = ceiling·(0.5 + 0.5·random)
  assert.deepEqual(delays, [[1, 10], [2, 40], [3, 60], [4, 100], [5, 280]]);
  assert.equal(got.state[0].state, 'connecting');
  assert.ok(!got.state.some((s) => s.state === 'open'));
  assert.equal(got.state.at(-1).state, 'closed');
});

test('without autoReconnect a failed connect rejects', async () => {
  const proxy = await startProxy(1);
  const port = proxy.port;
  await proxy.close();
  const client = new StackPulseClient({ endpoint: `http://127.0.0.1:${port}`, autoReconnect: false });
  await assert.rejects(client.connect(), /Connection closed/);
  assert.equal(client.state, 'closed');
});

test('after a server restart (new epoch) it resyncs and keeps receiving', async () => {
  let server = await startServer();
  const port = server.port;
  const client = new StackPulseClient({ endpoint: server.wsUrl, backoff: FAST, pingInterval: 0 });
  const got = record(client, ['*', 'resync', 'state', 'subscribed']);
  try {
    await client.connect();
    const first = await client.subscribe('D-restart');
    for (let i = 1; i <= 3; i++) await server.publish('D-restart', 'deployment.status', { status: 'deploying', i });
    await waitFor(() => got['*'].length === 3, { message: '3 events' });

    await server.kill();
    await waitFor(() => client.state === 'reconnecting', { message: 'reconnecting state' });
    server = await startServer({ port });
    const resync = await nextEvent(client, 'resync');
    assert.equal(resync.deployment_id, 'D-restart');
    assert.equal(resync.previousSeq, 3);
    assert.equal(resync.previousEpoch, first.epoch);
    assert.notEqual(resync.epoch, first.epoch);
    assert.equal(resync.seq, 0);
    assert.equal(got.subscribed.at(-1).recovered, false);

    // The new server numbers from 1 again; the client must not drop that as a duplicate.
    await server.publish('D-restart', 'deployment.status', { status: 'deployed', i: 4 });
    await waitFor(() => got['*'].length === 4, { message: 'event after restart' });
    assert.deepEqual(got['*'].map((e) => [e.seq, e.data.i]), [[1, 1], [2, 2], [3, 3], [1, 4]]);
    assert.deepEqual(
      got.state.map((s) => s.state),
      ['connecting', 'open', 'reconnecting', 'open'],
    );
  } finally {
    client.disconnect();
    await server.kill();
  }
});
