// Test support: the real `stackpulse` binary, a publisher, a TCP proxy that can cut
// connections, and a polling `waitFor`. Shared by the client and dashboard tests.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const KEY = 'test-publisher-key';

export function serverBinary() {
  return process.env.STACKPULSE_BIN ?? join(ROOT, 'target', 'debug', 'stackpulse');
}

/**
 * Starts `stackpulse serve` on 127.0.0.1 (port 0 = any) and waits for its
 * "stackpulse listening on http://…" line.
 */
export async function startServer({ port = 0, args = [] } = {}) {
  const proc = spawn(
    serverBinary(),
    ['serve', '--bind', `127.0.0.1:${port}`, '--publisher-key', KEY, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, STACKPULSE_LOG: 'warn', AWS_EC2_METADATA_DISABLED: 'true' } },
  );
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 20_000) stderr = stderr.slice(-20_000);
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
  const m = /^stackpulse listening on (http:\/\/127\.0\.0\.1:(\d+))$/.exec(first);
  if (!m) throw new Error(`unexpected first line: ${first}`);
  const httpUrl = m[1];
  const exited = once(proc, 'exit');
  return {
    proc,
    port: Number(m[2]),
    httpUrl,
    wsUrl: `ws://127.0.0.1:${m[2]}/ws`,
    stderr: () => stderr,
    publish: (topic, type, data) => publish(httpUrl, topic, type, data),
    /** Kills the process (SIGKILL: a crash) and waits until it is gone. */
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** POST /v1/events; returns the seq. */
export async function publish(httpUrl, topic, type, data) {
  const res = await fetch(`${httpUrl}/v1/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ type, deployment_id: topic, data }),
  });
  const body = await res.json();
  if (res.status !== 202) throw new Error(`publish ${type} → ${res.status} ${JSON.stringify(body)}`);
  return body.seq;
}

/**
 * A TCP proxy in front of the server. `dropAll()` cuts every connection at once (the
 * client sees an abrupt close, no close frame); `blackhole = true` keeps new and
 * existing connections open but stops forwarding (a dead network path).
 * `requests` holds the first line of every HTTP request that came through, and
 * `protocols` the `Sec-WebSocket-Protocol` header of each (null when absent).
 */
export async function startProxy(targetPort) {
  const sockets = new Set();
  const requests = [];
  const protocols = [];
  const state = { blackhole: false };
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    let first = true;
    client.on('data', (chunk) => {
      if (first) {
        first = false;
        const lines = chunk.toString('latin1').split('\r\n');
        requests.push(lines[0]);
        const header = lines.find((l) => l.toLowerCase().startsWith('sec-websocket-protocol:'));
        protocols.push(header ? header.slice(header.indexOf(':') + 1).trim() : null);
      }
      if (!state.blackhole) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!state.blackhole) client.write(chunk);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', close);
    upstream.on('error', close);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = server.address().port;
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    requests,
    protocols,
    state,
    get connections() {
      return sockets.size / 2;
    },
    dropAll() {
      for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
      sockets.clear();
    },
    async close() {
      this.dropAll();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Polls `predicate` every 10 ms until it returns a truthy value; fails after `timeout`. */
export async function waitFor(predicate, { timeout = 10_000, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves with the next `type` event the client emits (optionally matching `filter`). */
export function nextEvent(client, type, filter = () => true, timeout = 10_000) {
  return new Promise((resolveEvent, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${type}`));
    }, timeout);
    const off = client.on(type, (e) => {
      if (!filter(e)) return;
      clearTimeout(timer);
      off();
      resolveEvent(e);
    });
  });
}
