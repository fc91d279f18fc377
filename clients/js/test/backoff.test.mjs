// Unit tests of the reconnect delays: exponential growth, ceiling, jitter.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { backoffCeiling, backoffDelay, DEFAULT_BACKOFF } from '../dist/index.js';

test('the ceiling doubles per attempt from the initial delay and stops at maxDelay', () => {
  const o = { initialDelay: 100, maxDelay: 5000, factor: 2 };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7, 8].map((n) => backoffCeiling(n, o)),
    [100, 200, 400, 800, 1600, 3200, 5000, 5000],
  );
  assert.equal(backoffCeiling(10_000, o), 5000, 'no overflow for huge attempt numbers');
  assert.equal(backoffCeiling(0, o), 100, 'attempt < 1 counts as the first');
});

test('defaults: 500 ms, doubling, 30 s ceiling, half of it random', () => {
  assert.deepEqual(DEFAULT_BACKOFF, { initialDelay: 500, maxDelay: 30_000, factor: 2, jitter: 0.5 });
  assert.equal(backoffDelay(1, {}, () => 1), 500);
  assert.equal(backoffDelay(1, {}, () => 0), 250);
  assert.equal(backoffDelay(20, {}, () => 1), 30_000);
});

test('jitter spreads the delay between (1 - jitter) and 1 times the ceiling', () => {
  const o = { initialDelay: 1000, maxDelay: 60_000, jitter: 0.5 };
  assert.equal(backoffDelay(3, o, () => 0), 2000);
  assert.equal(backoffDelay(3, o, () => 0.5), 3000);
  assert.equal(backoffDelay(3, o, () => 1), 4000);
  const samples = Array.from({ length: 200 }, () => backoffDelay(3, o));
  for (const d of samples) assert.ok(d >= 2000 && d <= 4000, `${d} within [2000, 4000]`);
  assert.ok(new Set(samples).size > 50, 'real randomness: many distinct delays');
});

test('delays grow with the attempt number even with jitter', () => {
  const o = { initialDelay: 100, maxDelay: 100_000, jitter: 0.5 };
  for (let n = 1; n < 10; n++) {
    // The smallest delay of attempt n+1 is at least the largest of attempt n.
    assert.ok(backoffDelay(n + 1, o, () => 0) >= backoffDelay(n, o, () => 1));
  }
});

test('jitter 0 is deterministic; jitter is clamped to [0, 1]', () => {
  assert.equal(backoffDelay(2, { initialDelay: 100, jitter: 0 }, Math.random), 200);
  assert.equal(backoffDelay(2, { initialDelay: 100, jitter: 5 }, () => 0), 0);
  assert.equal(backoffDelay(2, { initialDelay: 100, jitter: -1 }, () => 0), 200);
});
