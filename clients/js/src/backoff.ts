/**
 * Reconnect delays: exponential growth, a ceiling, and random jitter so that many
 * clients dropped at once (a server restart) do not all come back at the same instant.
 */

export interface BackoffOptions {
  /** Delay before the first retry, in ms. Default 500. */
  initialDelay?: number;
  /** Ceiling, in ms. Default 30 000. */
  maxDelay?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /**
   * Fraction of the delay that is random, 0…1. Default 0.5: attempt n waits between
   * half and all of `min(maxDelay, initialDelay × factor^(n-1))`.
   */
  jitter?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = {
  initialDelay: 500,
  maxDelay: 30_000,
  factor: 2,
  jitter: 0.5,
};

/** The un-jittered delay of `attempt` (1 = first retry), capped at `maxDelay`. */
export function backoffCeiling(attempt: number, options: BackoffOptions = {}): number {
  const o = { ...DEFAULT_BACKOFF, ...options };
  const n = Math.max(1, Math.floor(attempt));
  // Math.pow overflows to Infinity for large n; min() caps it.
  return Math.min(o.maxDelay, o.initialDelay * Math.pow(o.factor, n - 1));
}

/**
 * The delay before retry number `attempt` (1-based), in ms:
 * `ceiling × (1 − jitter + jitter × random())`.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const o = { ...DEFAULT_BACKOFF, ...options };
  const jitter = Math.min(1, Math.max(0, o.jitter));
  const ceiling = backoffCeiling(attempt, o);
  return Math.round(ceiling * (1 - jitter + jitter * random()));
}
