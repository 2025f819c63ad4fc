// Liveness: the agent's loops beat here and /healthz reads it. Kept apart from the HTTP server so the
// loops need not import metrics to report that they are alive.

/**
 * Liveness by heartbeat: each loop beats and says by when it will beat again at the latest. A loop
 * that misses its own deadline is stuck (e.g. a kernel or etcd call that never returns). A loop that is
 * legitimately waiting on the outside world (etcd down) beats with Infinity: liveness must not restart
 * a process that restarting cannot help.
 */
export class Heartbeats {
  private readonly loops = new Map<string, { at: number; withinMs: number }>();

  /** `now`: wall-clock ms (a Clock's now in the agent, a fixed value in tests). */
  constructor(private readonly now: () => number = Date.now) {}

  /** `loop` is alive now and beats again within `withinMs` (Infinity: no deadline). */
  beat(loop: string, withinMs: number): void {
    this.loops.set(loop, { at: this.now(), withinMs });
  }

  /** The loop ended normally; forget it. */
  end(loop: string): void {
    this.loops.delete(loop);
  }

  /** Why the process is unhealthy: one line per stuck loop; empty when healthy. */
  problems(): string[] {
    const now = this.now();
    const problems: string[] = [];
    for (const [loop, { at, withinMs }] of this.loops) {
      const silentMs = now - at;
      if (silentMs > withinMs) {
        problems.push(
          `${loop} loop stuck: last heartbeat ${formatSeconds(silentMs)} ago, expected within ${formatSeconds(withinMs)}`,
        );
      }
    }
    return problems.sort();
  }

  /** Last beat per loop, ms since the epoch. */
  snapshot(): Record<string, number> {
    return Object.fromEntries([...this.loops].map(([loop, { at }]) => [loop, at]));
  }
}

function formatSeconds(ms: number): string {
  return `${Math.round(ms / 1000)}s`;
}

/** The deadline for the data-plane loop: it runs a round at least every resync interval. */
export function dataplaneDeadlineMs(resyncIntervalMs: number): number {
  return 3 * resyncIntervalMs + 30_000;
}
