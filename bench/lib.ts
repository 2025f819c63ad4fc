// Shared benchmark helpers: statistics, and writing results as JSON under bench/results/.
import { mkdirSync, writeFileSync } from "node:fs";
import { execa } from "execa";
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

/**
 * Pings `toAddress` from network namespace `fromNs` every `intervalMs` (`count` in all) while `during`
 * runs, half a second after the pings started; returns the pings lost and the slowest reply (a pause
 * that holds packets, as WireGuard's handshake does, shows as delay rather than loss).
 */
export async function pingWhile(
  fromNs: string,
  toAddress: string,
  options: { readonly intervalMs: number; readonly count: number },
  during: () => Promise<void>,
): Promise<{ lost: number; maxRttMs: number }> {
  const args = ["-n", "-q", "-i", String(options.intervalMs / 1000), "-c", String(options.count), "-W", "1"];
  const ping = execa("ip", ["netns", "exec", fromNs, "ping", ...args, toAddress], { reject: false });
  await new Promise((resolve) => setTimeout(resolve, 500));
  await during();
  const result = await ping;
  const match = /(\d+) packets transmitted, (\d+) received/.exec(result.stdout);
  const rtt = /rtt min\/avg\/max\/mdev = [\d.]+\/[\d.]+\/([\d.]+)\//.exec(result.stdout);
  if (!match) throw new Error(`no ping summary: ${result.stdout}`);
  return { lost: Number(match[1]) - Number(match[2]), maxRttMs: rtt ? Number(rtt[1]) : Number.NaN };
}
