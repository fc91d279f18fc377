// The client against a server with authentication on (RS256 tokens, JWKS from a
// local issuer): token on connect, in-band refresh before expiry, reconnect with a
// fresh token after the server closes an expired connection (4001).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { StackPulseClient, jwtExpiry } from '../dist/index.js';
import { startIssuer } from './support/auth.mjs';
import { startServer, waitFor } from './support/server.mjs';

function record(client, types) {
  const log = Object.fromEntries(types.map((t) => [t, []]));
  for (const t of types) client.on(t, (e) => log[t].push(e));
  return log;
}

describe('with authentication on', () => {
  let issuer;
  let server;
  before(async () => {
    issuer = await startIssuer();
    server = await startServer({ args: issuer.serverArgs });
  });
  after(async () => {
    await server?.kill();
    await issuer?.close();
  });

  test('jwtExpiry reads exp', () => {
    const t = issuer.token('u', 100);
    const exp = jwtExpiry(t);
    assert.ok(Math.abs(exp - (Date.now() + 100_000)) < 2_000);
    assert.equal(jwtExpiry('not-a-jwt'), null);
    assert.equal(jwtExpiry('a.b.c'), null);
  });

  test('no token: refused (401) and retried; a valid token: live', async () => {
    const refused = new StackPulseClient({ endpoint: server.wsUrl, backoff: { initialDelay: 20, maxDelay: 50 } });
    const got = record(refused, ['reconnecting', 'open']);
    void refused.connect();
    await waitFor(() => got.reconnecting.length >= 2, { message: 'two refused attempts' });
    refused.disconnect();
    assert.equal(got.open.length, 0);

    const client = new StackPulseClient({ endpoint: server.wsUrl, token: () => issuer.token('alice') });
    const events = record(client, ['*']);
    await client.connect();
    await client.subscribe('D-auth');
    await server.publish('D-auth', 'deployment.status', { status: 'deploying' });
    await waitFor(() => events['*'].length === 1, { message: 'event' });
    client.disconnect();
  });

  test('refreshes the token in-band before it expires: the connection outlives it', async () => {
    let calls = 0;
    const client = new StackPulseClient({
      endpoint: server.wsUrl,
      pingInterval: 0,
      token: () => {
        calls++;
        return issuer.token('bob', 2);
      },
    });
    const got = record(client, ['authenticated', 'reconnecting', '*']);
    await client.connect();
    await client.subscribe('D-refresh');
    const firstExpiry = Date.now() + 2_000;
    await waitFor(() => got.authenticated.length >= 2 && Date.now() > firstExpiry + 1_000, {
      message: 'two in-band refreshes past the first token\u2019s expiry',
      timeout: 15_000,
    });
    assert.equal(got.reconnecting.length, 0, 'never dropped');
    assert.ok(calls >= 3, `provider asked for each refresh (${calls})`);
    assert.ok(Date.parse(got.authenticated.at(-1).expires_at) > firstExpiry);
    await server.publish('D-refresh', 'myci.step', { n: 1 });
    await waitFor(() => got['*'].length === 1, { message: 'event after refresh' });
    client.disconnect();
  });

  test('after the server closes an expired connection (4001) it reconnects with a fresh token and resumes', async () => {
    const tokens = [];
    const client = new StackPulseClient({
      endpoint: server.wsUrl,
      pingInterval: 0,
      refreshMargin: 0, // no in-band refresh: let the token expire
      backoff: { initialDelay: 20, maxDelay: 100 },
      token: () => {
        const t = issuer.token('carol', 2);
        tokens.push(t);
        return t;
      },
    });
    const got = record(client, ['reconnecting', 'open', '*', 'resync']);
    await client.connect();
    await client.subscribe('D-expire');
    await server.publish('D-expire', 'myci.step', { n: 1 });
    await waitFor(() => got.reconnecting.length >= 1, { message: 'close at expiry', timeout: 10_000 });
    assert.equal(got.reconnecting[0].code, 4001);
    assert.equal(got.reconnecting[0].reason, 'token expired');
    await server.publish('D-expire', 'myci.step', { n: 2 });
    await waitFor(() => got.open.length >= 2 && got['*'].length >= 2, { message: 'reopened with a fresh token' });
    assert.ok(tokens.length >= 2 && tokens[0] !== tokens[1]);
    assert.deepEqual(got['*'].slice(0, 2).map((e) => e.seq), [1, 2]);
    assert.equal(got.resync.length, 0);
    client.disconnect();
  });
});
