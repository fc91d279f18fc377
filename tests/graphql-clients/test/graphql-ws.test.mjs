// The graphql-ws npm client (graphql-transport-ws protocol), unmodified, over wss
// to the real binary, with real Cognito access tokens from moto.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

import { cognitoPool, KEY, publish, request, selfSignedCert, startMoto, startServer, SUB, subscribers, waitFor } from './support.mjs';

let moto;
let pool;
let server;

before(async () => {
  moto = await startMoto();
  pool = await cognitoPool(moto, { alice: [], eve: [] });
  server = await startServer(pool.serverArgs, selfSignedCert());
});

after(async () => {
  await server?.stop();
  moto?.stop();
});

function client(token) {
  const ca = server.ca;
  class TrustingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  }
  return createClient({
    url: `wss://127.0.0.1:${server.port}/graphql`,
    webSocketImpl: TrustingWebSocket,
    connectionParams: { Authorization: token },
    retryAttempts: 0,
  });
}

test('graphql-ws subscribes, receives a published update, completes', async () => {
  const alice = pool.tokens.alice;
  const c = client(alice);
  try {
    const it = c.iterate({ query: SUB, variables: { deploymentId: 'dep-gws' } });
    const first = it.next();
    await waitFor(async () => (await subscribers(server, 'dep-gws', alice)) === 1, { message: 'the subscription' });
    await publish(server, 'dep-gws', { status: 'deploying' });
    const { value } = await first;
    assert.equal(value.errors, undefined, JSON.stringify(value));
    assert.equal(value.data.onDeploymentUpdated.deployment_id, 'dep-gws');
    assert.equal(value.data.onDeploymentUpdated.status, 'deploying');
    assert.match(value.data.onDeploymentUpdated.updated_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    await it.return();
    await waitFor(async () => (await subscribers(server, 'dep-gws', alice)) === 0, { message: 'the complete' });
  } finally {
    await c.dispose();
  }
});

test('graphql-ws with a refused token is closed with 4403', async () => {
  const c = client('not.a.token');
  try {
    const it = c.iterate({ query: SUB, variables: { deploymentId: 'dep-gws' } });
    await assert.rejects(it.next(), (e) => e.code === 4403);
  } finally {
    await c.dispose();
  }
});

test('graphql-ws subscribing to a forbidden topic gets errors, not data', async () => {
  const { status } = await request(server, 'POST', '/v1/events', {
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: { type: 'deployment.status', deployment_id: 'dep-ops', data: { status: 'x' }, acl: { groups: ['ops'] } },
  });
  assert.equal(status, 202);
  const c = client(pool.tokens.eve);
  try {
    const it = c.iterate({ query: SUB, variables: { deploymentId: 'dep-ops' } });
    const { value } = await it.next();
    assert.equal(value.data ?? null, null);
    assert.match(value.errors[0].message, /Not Authorized to access onDeploymentUpdated/);
  } finally {
    await c.dispose();
  }
});
