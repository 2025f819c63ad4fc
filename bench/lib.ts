// Shared benchmark helpers: statistics, and writing results as JSON under bench/results/.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? Number.NaN;
}

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

export function round(value: number, digits = 2): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

export function writeResult(name: string, result: unknown): string {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "results");
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.json`);
  writeFileSync(
    path,
    `${JSON.stringify({ benchmark: name, at: new Date().toISOString(), ...(result as object) }, null, 2)}\n`,
  );
  return path;
}

/**
 * Runs `teardown` on Ctrl-C or SIGTERM, then exits 130. `on`, not `once`: execa's signal-exit
 * re-raises a signal no other listener handles, which would kill the benchmark mid-teardown.
 */
export function tearDownOnSignal(teardown: () => Promise<void>): void {
  let started = false;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      if (started) return;
      started = true;
      console.error(`\n${signal}: tearing down`);
      void teardown().finally(() => process.exit(130));
    });
  }
}
