// A Clock for unit tests of the loops: time stands still until the test advances it, and timers and
// sleeps fire in due order as it does, with the promise jobs they trigger run in between.
import type { Clock, Timer } from "../../src/util/clock.js";

interface Pending {
  readonly at: number;
  readonly seq: number;
  readonly fn: () => void;
  cancelled: boolean;
}

/** Lets queued promise callbacks (and the ones they queue) run. */
export async function settle(rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

export class FakeClock implements Clock {
  private wall: number;
  private mono = 0;
  private seq = 0;
  private pending: Pending[] = [];

  constructor(startWallMs = Date.UTC(2026, 0, 1)) {
    this.wall = startWallMs;
  }

  now(): number {
    return this.wall;
  }

  monotonic(): number {
    return this.mono;
  }

  setTimer(ms: number, fn: () => void): Timer {
    const entry: Pending = { at: this.mono + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.pending.push(entry);
    return { cancel: () => (entry.cancelled = true) };
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) {
        resolve();
        return;
      }
      const onAbort = (): void => {
        timer.cancel();
        resolve();
      };
      const timer = this.setTimer(ms, () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Timers still waiting to fire. */
  get waiting(): number {
    return this.pending.filter((p) => !p.cancelled).length;
  }

  /** Moves time forward by `ms`, firing due timers in order and settling promises after each. */
  async advance(ms: number): Promise<void> {
    const target = this.mono + ms;
    await settle();
    for (;;) {
      const next = this.pending
        .filter((p) => !p.cancelled && p.at <= target)
        .sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (next === undefined) break;
      this.pending = this.pending.filter((p) => p !== next);
      this.wall += next.at - this.mono;
      this.mono = next.at;
      next.fn();
      await settle();
    }
    this.wall += target - this.mono;
    this.mono = target;
    this.pending = this.pending.filter((p) => !p.cancelled);
    await settle();
  }
}
