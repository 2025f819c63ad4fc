// What a pod sees during the wireguard backend's operations, with wireguard-go (no kernel module
// here): a continuous ping (every 5 ms) between pods on two nodes while (1) the receiving node's agent
// restarts (SIGTERM and SIGKILL; wireguard-go outlives the agent, so the limit is 0), (2) that node
// rotates its key (`twill wireguard rotate-key`; both sides must shake hands anew), and (3) how long a
// peer removed by hand (`wg set … remove`) stays missing before the agent restores it (read with
// `wg show` every 10 ms). Prints medians; writes bench/results/wireguard-ops.json.
// BENCH_QUICK=1: 2 runs each; BENCH_RUNS overrides (default 5).
import { median, pingWhile, round, tearDownOnSignal, writeResult } from "./lib.js";
import { startTwillCluster, type TwillCluster } from "../test/helpers/twill-cluster.js";
import { runTwill } from "../test/helpers/agent.js";
import { waitFor } from "../test/helpers/processes.js";
import type { Pod } from "../test/helpers/netns.js";

const quick = process.env.BENCH_QUICK === "1";
const runs = Number(process.env.BENCH_RUNS ?? (quick ? 2 : 5));
const INTERVAL_MS = 5;
const PINGS = 600;

const clusters: TwillCluster[] = [];
tearDownOnSignal(async () => {
  await Promise.allSettled(clusters.map((c) => c.destroy()));
});

/** Pings from pod `a` to pod `b` while `during` runs (see pingWhile). */
function lostDuring(
  a: Pod,
  b: Pod,
  during: () => Promise<void>,
): Promise<{ lost: number; maxRttMs: number }> {
  return pingWhile(a.ns, b.address, { intervalMs: INTERVAL_MS, count: PINGS }, during);
}

async function wgDump(cluster: TwillCluster, i: number): Promise<string> {
  const n = cluster.nodes[i - 1];
  if (n?.mountNs === undefined) throw new Error(`no node ${i}`);
  const result = await n.mountNs.exec(n.host.ns, ["wg", "show", "flannel-wg", "dump"]);
  return result.stdout;
}

const startedAt = Date.now();
const results: Record<string, { samples: number[]; median: number; unit: string }> = {};
const record = (name: string, samples: number[], unit: string): void => {
  results[name] = { samples, median: median(samples), unit };
  console.log(`  ${name}: median ${median(samples)} ${unit} (${samples.join(", ")})`);
};
try {
  const cluster = await startTwillCluster({ backend: "wireguard", hosts: 2, agentArgs: ["--ip-masq"] });
  clusters.push(cluster);
  const a = await cluster.addPod(1, "a", 2);
  const b = await cluster.addPod(2, "b", 2);
  await waitFor(
    "pods reach each other",
    async () => (await cluster.net.ping(a.ns, b.address, { count: 1 })).ok,
    30_000,
  );
  const node2 = cluster.nodes[1];
  if (node2 === undefined) throw new Error("no node 2");

  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    const samples: number[] = [];
    const slowest: number[] = [];
    for (let run = 0; run < runs; run++) {
      const { lost, maxRttMs } = await lostDuring(a, b, async () => {
        if (signal === "SIGKILL") {
          node2.agent.process.kill("SIGKILL");
          await node2.agent.process.exited();
        }
        await node2.agent.restart();
      });
      samples.push(lost * INTERVAL_MS);
      slowest.push(maxRttMs);
    }
    record(`restart ${signal} (ms lost)`, samples, "ms");
    record(`restart ${signal} (slowest reply, ms)`, slowest, "ms");
  }

  const rotation: number[] = [];
  const rotationSlowest: number[] = [];
  for (let run = 0; run < runs; run++) {
    const { lost, maxRttMs } = await lostDuring(a, b, async () => {
      const rotated = await runTwill(["wireguard", "rotate-key", `--state-dir=${node2.agent.stateDir}`], {
        netns: node2.host.ns,
      });
      if (rotated.code !== 0) throw new Error(`rotate-key: ${rotated.stderr}`);
    });
    rotation.push(lost * INTERVAL_MS);
    rotationSlowest.push(maxRttMs);
    await waitFor(
      "pods reach each other",
      async () => (await cluster.net.ping(a.ns, b.address, { count: 1 })).ok,
      30_000,
    );
  }
  record("key rotation (ms lost)", rotation, "ms");
  record("key rotation (slowest reply, ms)", rotationSlowest, "ms");

  const drift: number[] = [];
  for (let run = 0; run < runs; run++) {
    const key = (await wgDump(cluster, 2)).split("\n")[1]?.split("\t")[0] ?? "";
    const n = cluster.nodes[1];
    if (n?.mountNs === undefined || key === "") throw new Error("no peer on node 2");
    await n.mountNs.exec(n.host.ns, ["wg", "set", "flannel-wg", "peer", key, "remove"]);
    const removedAt = Date.now();
    for (;;) {
      if ((await wgDump(cluster, 2)).includes(key)) break;
      if (Date.now() - removedAt > 10_000) throw new Error("the peer was not restored in 10 s");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    drift.push(Date.now() - removedAt);
  }
  record("peer removed by hand until restored (ms)", drift, "ms");

  const path = writeResult("wireguard-ops", {
    quick,
    runs,
    intervalMs: INTERVAL_MS,
    implementation: "userspace (wireguard-go)",
    results,
    totalSeconds: round((Date.now() - startedAt) / 1000, 1),
  });
  console.log(`written ${path}`);
} finally {
  await Promise.allSettled(clusters.map((c) => c.destroy()));
}
