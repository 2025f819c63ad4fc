// Time and waiting, injectable so that the loops can be driven by tests without real clocks.

/** Resolves after `ms`, or early (without error) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Exponential backoff: 1 s doubling to `capMs`, with ±20 % jitter so a fleet does not retry in step. */
export class Backoff {
  private attempt = 0;
  constructor(
    private readonly initialMs = 1000,
    private readonly capMs = 30_000,
  ) {}

  next(): number {
    const base = Math.min(this.capMs, this.initialMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** A promise with its resolve exposed: used to wake a loop from an event handler. */
export class Wakeup {
  private resolveCurrent: (() => void) | undefined;
  private pending = false;

  /** Wakes the current (or next) wait(). */
  wake(): void {
    this.pending = true;
    this.resolveCurrent?.();
  }

  /** Resolves on wake(), after `ms`, or on abort — whichever comes first. */
  async wait(ms: number, signal?: AbortSignal): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return;
    }
    const controller = new AbortController();
    const onAbort = (): void => controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    this.resolveCurrent = () => controller.abort();
    await sleep(ms, controller.signal);
    this.resolveCurrent = undefined;
    signal?.removeEventListener("abort", onAbort);
    this.pending = false;
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
