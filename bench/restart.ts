// What a pod sees while its node's agent restarts: a continuous ping (every 5 ms) between pods on two
// nodes while the receiving node's agent is stopped (SIGTERM, or SIGKILL) and started again, for the
// udp backend (the agent's proxy thread moves the packets: they stop while no agent runs) and, in the
// same run, vxlan (the kernel moves them: the limit, 0 lost). The interruption is the lost pings times
// the interval; the agent's start-up is measured beside it, from process start to the first
// data-plane round (its log), which bounds what udp can reach without a process that outlives the
// agent. Prints medians; writes bench/results/restart.json.
// BENCH_QUICK=1: 2 restarts per path and signal; BENCH_RUNS overrides (default 5).
import { median, pingWhile, round, tearDownOnSignal, writeResult } from "./lib.js";
import { startTwillCluster, type TwillCluster } from "../test/helpers/twill-cluster.js";
import { waitFor } from "../test/helpers/processes.js";
import type { Pod } from "../test/helpers/netns.js";

const quick = process.env.BENCH_QUICK === "1";
const runs = Number(process.env.BENCH_RUNS ?? (quick ? 2 : 5));
const INTERVAL_MS = 5;
const PINGS = 600;

interface Sample {
  readonly lost: number;
  readonly interruptionMs: number;
  readonly startupMs: number | undefined;
}

const clusters: TwillCluster[] = [];
tearDownOnSignal(async () => {
  await Promise.allSettled(clusters.map((c) => c.destroy()));
});

async function pods(cluster: TwillCluster): Promise<[Pod, Pod]> {
  const a = await cluster.addPod(1, "a", 2);
  const b = await cluster.addPod(2, "b", 2);
  await waitFor(
    "pods reach each other",
    async () => (await cluster.net.ping(a.ns, b.address, { count: 1 })).ok,
  );
  return [a, b];
}

/**
 * ms from the new agent's first log record to the moment its data path works again, from its log: the
 * udp proxy resumed from the state dir (or, without one, started); vxlan's is never interrupted.
 */
function startupMs(cluster: TwillCluster, since: number, backend: string): number | undefined {
  const logs = cluster.nodes[1]?.agent.logs().slice(since) ?? [];
  const at = (record: Record<string, unknown> | undefined): number | undefined =>
    typeof record?.time === "string" ? Date.parse(record.time) : undefined;
  const first = at(logs[0]);
  const pattern =
    backend === "udp" ? /^resumed udp proxy on |^udp proxy on .* started$/ : /data plane reconciled/;
  const done = at(logs.find((l) => typeof l.msg === "string" && pattern.test(l.msg)));
  return first === undefined || done === undefined ? undefined : done - first;
}

async function restartOnce(
  cluster: TwillCluster,
  [a, b]: [Pod, Pod],
  signal: "SIGTERM" | "SIGKILL",
  backend: string,
): Promise<Sample> {
  const node = cluster.nodes[1];
  if (node === undefined) throw new Error("no node 2");
  const { lost } = await pingWhile(a.ns, b.address, { intervalMs: INTERVAL_MS, count: PINGS }, async () => {
    if (signal === "SIGKILL") {
      node.agent.process.kill("SIGKILL");
      await node.agent.process.exited();
    }
    await node.agent.restart();
  });
  await waitFor(
    "the agent ready again",
    async () => (await cluster.net.ping(a.ns, b.address, { count: 1 })).ok,
  );
  // restart() starts a new process: its log is the new one's alone.
  return { lost, interruptionMs: lost * INTERVAL_MS, startupMs: startupMs(cluster, 0, backend) };
}

const startedAt = Date.now();
const results: Record<string, unknown> = {};
try {
  for (const backend of ["udp", "vxlan"] as const) {
    const cluster = await startTwillCluster({ backend, hosts: 2, agentArgs: ["--ip-masq"] });
    clusters.push(cluster);
    const pair = await pods(cluster);
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      const samples: Sample[] = [];
      for (let run = 0; run < runs; run++) {
        const sample = await restartOnce(cluster, pair, signal, backend);
        samples.push(sample);
        console.log(
          `  ${backend} ${signal} ${run + 1}/${runs}: ${sample.lost} pings lost = ${sample.interruptionMs} ms; ` +
            `agent start to first round ${sample.startupMs ?? "?"} ms`,
        );
      }
      const startups = samples.map((s) => s.startupMs).filter((v): v is number => v !== undefined);
      results[`${backend} ${signal}`] = {
        samples,
        medianInterruptionMs: median(samples.map((s) => s.interruptionMs)),
        medianStartupMs: startups.length === 0 ? null : median(startups),
      };
    }
    await cluster.destroy();
    clusters.splice(clusters.indexOf(cluster), 1);
  }
  console.log("medians (interruption seen by a 5 ms ping; the agent's start to its first round):");
  for (const [name, value] of Object.entries(results)) {
    const v = value as { medianInterruptionMs: number; medianStartupMs: number | null };
    console.log(
      `  ${name.padEnd(14)} ${v.medianInterruptionMs} ms lost, start-up ${v.medianStartupMs ?? "?"} ms`,
    );
  }
  const path = writeResult("restart", {
    quick,
    runs,
    intervalMs: INTERVAL_MS,
    results,
    totalSeconds: round((Date.now() - startedAt) / 1000, 1),
  });
  console.log(`written ${path}`);
} finally {
  await Promise.allSettled(clusters.map((c) => c.destroy()));
}
