// aws-amplify 6 (unmodified, Node 20 with --experimental-websocket) against the real
// binary on TLS with a self-signed certificate trusted through NODE_EXTRA_CA_CERTS,
// with real Cognito access tokens from moto (defaultAuthMode 'userPool').
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';

import { cognitoPool, KEY, publish, request, ROOT, selfSignedCert, startMoto, startServer, subscribers, waitFor } from './support.mjs';

let moto;
let pool;
let server;
let cert;

before(async () => {
  cert = selfSignedCert();
  moto = await startMoto();
  pool = await cognitoPool(moto, { alice: ['publishers'], eve: [] });
  server = await startServer(pool.serverArgs, cert);
});

after(async () => {
  await server?.stop();
  moto?.stop();
});

/** Starts the amplify app; `next(pred)` resolves with its next output line matching `pred`. */
function amplify(token, deploymentId) {
  const proc = spawn(process.execPath, ['--experimental-websocket', join(ROOT, 'tests/graphql-clients/amplify-subscriber.mjs')], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: {
      ...process.env,
      NODE_EXTRA_CA_CERTS: cert.cert,
      NODE_NO_WARNINGS: '1',
      STACKPULSE_ENDPOINT: `https://127.0.0.1:${server.port}/graphql`,
      STACKPULSE_TOKEN: token,
      STACKPULSE_DEPLOYMENT: deploymentId,
    },
  });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr = (stderr + d).slice(-10_000)));
  const lines = [];
  const waiters = [];
  createInterface({ input: proc.stdout }).on('line', (line) => {
    const msg = JSON.parse(line);
    lines.push(msg);
    for (const w of [...waiters]) w();
  });
  return {
    lines,
    send: (cmd) => proc.stdin.write(`${cmd}\n`),
    next(pred, timeout = 20_000) {
      return new Promise((resolveNext, reject) => {
        let from = 0;
        const check = () => {
          for (; from < lines.length; from++) {
            if (pred(lines[from])) {
              clearTimeout(timer);
              waiters.splice(waiters.indexOf(check), 1);
              resolveNext(lines[from++]);
              return;
            }
          }
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(check), 1);
          reject(new Error(`amplify: no matching line in ${timeout} ms; saw ${JSON.stringify(lines)}; stderr: ${stderr}`));
        }, timeout);
        waiters.push(check);
        check();
      });
    },
    kill: () => proc.kill('SIGKILL'),
  };
}

test('amplify subscribes over wss, gets updates from POST /v1/events and its own mutation, unsubscribes', async () => {
  const alice = pool.tokens.alice;
  const app = amplify(alice, 'dep-amplify');
  try {
    await waitFor(async () => (await subscribers(server, 'dep-amplify', alice)) === 1, { message: 'the amplify subscription' });
    const seq = await publish(server, 'dep-amplify', { status: 'deploying' });
    assert.equal(seq, 1);
    const { next } = await app.next((m) => m.next);
    const update = next.onDeploymentUpdated;
    assert.deepEqual(Object.keys(update).sort(), ['deployment_id', 'status', 'updated_at']);
    assert.equal(update.deployment_id, 'dep-amplify');
    assert.equal(update.status, 'deploying');
    const { body } = await request(server, 'POST', '/graphql', {
      headers: { authorization: alice, 'content-type': 'application/json' },
      body: { query: '{ deployment(deployment_id: "dep-amplify") { recent_events { timestamp } } }' },
    });
    assert.equal(update.updated_at, body.data.deployment.recent_events[0].timestamp);

    // Alice is a publisher: amplify's own mutation over HTTPS (Authorization: <raw jwt>).
    app.send('publish deployed');
    const { published } = await app.next((m) => m.published || m.publishError);
    assert.deepEqual(published, { deployment_id: 'dep-amplify', status: 'deployed', seq: 2 });
    const second = await app.next((m) => m.next && m.next.onDeploymentUpdated.status === 'deployed');
    assert.equal(second.next.onDeploymentUpdated.deployment_id, 'dep-amplify');

    app.send('unsubscribe');
    await waitFor(async () => (await subscribers(server, 'dep-amplify', alice)) === 0, { message: 'the stop' });
    assert.equal(app.lines.filter((l) => l.error).length, 0, JSON.stringify(app.lines));
  } finally {
    app.kill();
  }
});

test('amplify with a token the server refuses gets the final UnauthorizedException', async () => {
  const parts = pool.tokens.eve.split('.');
  const sig = parts[2];
  const forged = `${parts[0]}.${parts[1]}.${sig.slice(0, -4)}${sig.slice(-4) === 'AAAA' ? 'BBBB' : 'AAAA'}`;
  const app = amplify(forged, 'dep-x');
  try {
    const { error } = await app.next((m) => m.error);
    assert.match(error, /UnauthorizedException/);
  } finally {
    app.kill();
  }
});

test('amplify subscribing to a topic its user may not see gets an error, not data', async () => {
  const { status } = await request(server, 'POST', '/v1/events', {
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: { type: 'deployment.status', deployment_id: 'dep-ops', data: { status: 'secret' }, acl: { groups: ['ops'] } },
  });
  assert.equal(status, 202);
  const app = amplify(pool.tokens.eve, 'dep-ops');
  try {
    const first = await app.next((m) => m.error || m.next);
    assert.ok(first.error, JSON.stringify(first));
    assert.match(first.error, /Not Authorized to access onDeploymentUpdated/);
  } finally {
    app.kill();
  }
});
