// Waiting: sleeps, backoff and wake-ups. Each takes an optional Clock (util/clock.ts), so the loops
// can be driven by a FakeClock in unit tests; without one they use the system clock.
import { systemClock, type Clock } from "./clock.js";

/** Resolves after `ms`, or early (without error) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal, clock: Clock = systemClock): Promise<void> {
  return clock.sleep(ms, signal);
}

/** Exponential backoff: 1 s doubling to `capMs`, with ±20 % jitter so a fleet does not retry in step. */
export class Backoff {
  private attempt = 0;
  constructor(
    private readonly initialMs = 1000,
    private readonly capMs = 30_000,
    /** Uniform in [0,1): the jitter's source, injectable so tests get exact delays. */
    private readonly random: () => number = Math.random,
  ) {}

  next(): number {
    const base = Math.min(this.capMs, this.initialMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(base * (0.8 + this.random() * 0.4));
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** A flag a loop waits on and an event handler raises; a wake before the wait is not lost. */
export class Wakeup {
  private pending = false;
  private readonly waiters = new Set<() => void>();

  constructor(private readonly clock: Clock = systemClock) {}

  /** Wakes the current (or next) wait(). */
  wake(): void {
    this.pending = true;
    for (const waiter of [...this.waiters]) waiter();
  }

  /** Resolves on wake(), after `ms`, or on abort — whichever comes first. */
  wait(ms: number, signal?: AbortSignal): Promise<void> {
    return Wakeup.any([this], ms, signal, this.clock);
  }

  /**
   * Resolves when any of `wakeups` is woken, after `ms`, or on abort — whichever comes first. Every
   * wake raised so far is consumed: the caller then looks at the state each wakeup stands for.
   */
  static async any(
    wakeups: readonly Wakeup[],
    ms: number,
    signal?: AbortSignal,
    clock: Clock = systemClock,
  ): Promise<void> {
    if (!wakeups.some((w) => w.pending)) {
      const woken = new AbortController();
      const wake = (): void => woken.abort();
      signal?.addEventListener("abort", wake, { once: true });
      for (const w of wakeups) w.waiters.add(wake);
      try {
        if (!signal?.aborted) await clock.sleep(ms, woken.signal);
      } finally {
        for (const w of wakeups) w.waiters.delete(wake);
        signal?.removeEventListener("abort", wake);
      }
    }
    for (const w of wakeups) w.pending = false;
  }
}

/**
 * Whether `signal` has aborted. A function rather than `signal.aborted` inline: TypeScript narrows
 * the property after one check and does not see that an await in between can change it.
 */
export function stopped(signal: AbortSignal): boolean {
  return signal.aborted;
}

/**
 * Resolves with `promise`'s value, or with `onAbort` as soon as `signal` aborts. The abort listener is
 * removed either way, so a loop that races every round does not pile up listeners.
 */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal, onAbort: T): Promise<T> {
  if (signal.aborted) return Promise.resolve(onAbort);
  return new Promise<T>((resolve, reject) => {
    const listener = (): void => resolve(onAbort);
    signal.addEventListener("abort", listener, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", listener);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", listener);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
