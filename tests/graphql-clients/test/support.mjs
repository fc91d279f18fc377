// Test support for the GraphQL client tests: a self-signed certificate (openssl),
// a moto server with a Cognito user pool and users (real access tokens), and the
// real `stackpulse` binary on TLS. Nothing is skipped: a missing tool fails the test.
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const KEY = 'test-publisher-key';
export const SUB = `subscription OnDeploymentUpdated($deploymentId: ID!) {
  onDeploymentUpdated(deployment_id: $deploymentId) {
    deployment_id
    status
    updated_at
  }
}`;

export function serverBinary() {
  return process.env.STACKPULSE_BIN ?? join(ROOT, 'target', 'debug', 'stackpulse');
}

/** A self-signed leaf certificate for 127.0.0.1; returns {dir, cert, key}. */
export function selfSignedCert() {
  const dir = mkdtempSync(join(tmpdir(), 'stackpulse-gql-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '-addext', 'basicConstraints=critical,CA:FALSE',
    '-addext', 'extendedKeyUsage=serverAuth',
    '-keyout', key, '-out', cert,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  return { dir, cert, key };
}

async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/** Starts moto (installed by scripts/ensure-moto.sh) on a free port. */
export async function startMoto() {
  const exe = process.env.STACKPULSE_MOTO_SERVER
    || execFileSync('bash', [join(ROOT, 'scripts', 'ensure-moto.sh')], { stdio: ['ignore', 'pipe', 'inherit'] })
      .toString().trim().split('\n').pop();
  const port = await freePort();
  const proc = spawn(exe, ['-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  const endpoint = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await fetch(`${endpoint}/`);
      break;
    } catch {
      if (proc.exitCode !== null) throw new Error(`moto_server exited (${proc.exitCode})`);
      if (Date.now() > deadline) throw new Error('moto_server did not start in 60 s');
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { endpoint, stop: () => proc.kill('SIGKILL') };
}

/** A Cognito user pool in moto with one app client and users in groups. */
export async function cognitoPool(moto, users) {
  const call = async (action, body) => {
    const res = await fetch(`${moto.endpoint}/`, {
      method: 'POST',
      headers: {
        'x-amz-target': `AWSCognitoIdentityProviderService.${action}`,
        'content-type': 'application/x-amz-json-1.1',
        authorization: 'AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/cognito-idp/aws4_request, SignedHeaders=host, Signature=0',
      },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${action}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : {};
  };
  const pool = (await call('CreateUserPool', { PoolName: 'stackpulse' })).UserPool.Id;
  const client = (await call('CreateUserPoolClient', {
    UserPoolId: pool, ClientName: 'web', ExplicitAuthFlows: ['USER_PASSWORD_AUTH'],
  })).UserPoolClient.ClientId;
  const groups = new Set(Object.values(users).flat());
  for (const g of groups) await call('CreateGroup', { UserPoolId: pool, GroupName: g });
  const tokens = {};
  for (const [name, userGroups] of Object.entries(users)) {
    await call('AdminCreateUser', {
      UserPoolId: pool, Username: name, TemporaryPassword: 'Tmp-Passw0rd!', MessageAction: 'SUPPRESS',
    });
    await call('AdminSetUserPassword', { UserPoolId: pool, Username: name, Password: 'Passw0rd!xx', Permanent: true });
    for (const g of userGroups) await call('AdminAddUserToGroup', { UserPoolId: pool, Username: name, GroupName: g });
    const auth = await call('InitiateAuth', {
      ClientId: client, AuthFlow: 'USER_PASSWORD_AUTH', AuthParameters: { USERNAME: name, PASSWORD: 'Passw0rd!xx' },
    });
    tokens[name] = auth.AuthenticationResult.AccessToken;
  }
  return {
    pool,
    client,
    tokens,
    serverArgs: [
      '--cognito-region', 'us-east-1', '--cognito-user-pool-id', pool, '--cognito-client-id', client,
      '--jwks-url', `${moto.endpoint}/${pool}/.well-known/jwks.json`,
    ],
  };
}

/**
 * An HTTP(S) request to the server, trusting `ca` (this process cannot use
 * NODE_EXTRA_CA_CERTS: the certificate is made after it started). Returns
 * {status, body} with the body parsed as JSON.
 */
export function request(server, method, path, { headers = {}, body } = {}) {
  const url = new URL(path, server.base);
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolveReq, reject) => {
    const req = lib.request(url, { method, headers, ca: server.ca }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let parsed = null;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = text;
        }
        resolveReq({ status: res.statusCode, body: parsed });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.end(typeof body === 'string' ? body : JSON.stringify(body));
    else req.end();
  });
}

/**
 * Starts `stackpulse serve` (with a publisher key) and waits for its listening
 * line; with `tls` ({cert, key}) it serves HTTPS/WSS.
 */
export async function startServer(args = [], tls = null) {
  if (tls) args = [...args, '--tls-cert', tls.cert, '--tls-key', tls.key];
  const proc = spawn(serverBinary(), ['serve', '--bind', '127.0.0.1:0', '--publisher-key', KEY, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, AWS_EC2_METADATA_DISABLED: 'true' },
  });
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-20_000);
  });
  const lines = createInterface({ input: proc.stdout });
  const first = await new Promise((resolveLine, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 30 s: ${stderr}`)), 30_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      resolveLine(line);
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}) before listening: ${stderr}`));
    });
  });
  const m = /^stackpulse listening on (https?):\/\/127\.0\.0\.1:(\d+)$/.exec(first);
  if (!m) throw new Error(`unexpected first line: ${first}`);
  const exited = once(proc, 'exit');
  const base = `${m[1]}://127.0.0.1:${m[2]}`;
  return {
    port: Number(m[2]),
    base,
    ca: tls ? readFileSync(tls.cert) : undefined,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** POST /v1/events with the publisher key; returns the seq. */
export async function publish(server, topic, data, type = 'deployment.status') {
  const { status, body } = await request(server, 'POST', '/v1/events', {
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: { type, deployment_id: topic, data },
  });
  if (status !== 202) throw new Error(`publish → ${status} ${JSON.stringify(body)}`);
  return body.seq;
}

/** The server's count of local subscribers of `topic` (0 for an unknown topic). */
export async function subscribers(server, topic, token) {
  const { status, body } = await request(server, 'GET', `/v1/topics/${encodeURIComponent(topic)}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (status === 404) return 0;
  if (status !== 200) throw new Error(`GET /v1/topics/${topic} → ${status} ${JSON.stringify(body)}`);
  return body.local_subscribers;
}

/** Polls `predicate` every 20 ms until it returns a truthy value; fails after `timeout`. */
export async function waitFor(predicate, { timeout = 15_000, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
