// Time as a seam. The loops (lease lifecycle, data plane, masquerade) never read the global clock or
// timers themselves: they take a Clock, so unit tests drive them with a FakeClock
// (test/helpers/fake-clock.ts) at unit speed and without real waits.

export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Wall-clock time, ms since the epoch (lease expiry, status timestamps). */
  now(): number;
  /** Monotonic time in ms (durations and latencies; never jumps). */
  monotonic(): number;
  /** Calls `fn` once after `ms`, unless cancelled. The timer does not keep the process alive. */
  setTimer(ms: number, fn: () => void): Timer;
  /** Resolves after `ms`, or early (without error) when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** The largest delay Node's timers accept; longer waits are clamped (about 24.8 days). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimer(ms, fn) {
    const timer = setTimeout(fn, Math.max(0, Math.min(ms, MAX_TIMER_MS)));
    timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
  sleep(ms, signal) {
    return new Promise((resolve) => {
      if (signal?.aborted) {
        resolve();
        return;
      }
      const timer = setTimeout(done, Math.max(0, Math.min(ms, MAX_TIMER_MS)));
      function done(): void {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      }
      signal?.addEventListener("abort", done, { once: true });
    });
  },
};
