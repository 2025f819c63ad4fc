// Pod-to-pod TCP throughput (iperf3) through twill's data path, all in network namespaces made by the
// test harness, in one run and interleaved so a noisy moment hits every path alike:
//   underlay       host namespace → host namespace over eth0 (198.18.0.1 → 198.18.0.2): the ceiling;
//   twill vxlan    pod → pod, two real agents with the vxlan backend (startTwillCluster);
//   manual vxlan   pod → pod, the same data path set up by hand (bridge, vxlan device, neigh, fdb, route);
//   twill host-gw  pod → pod, two real agents with the host-gw backend;
//   manual host-gw pod → pod, bridge and a route via the peer host, by hand;
//   twill udp      pod → pod, two real agents with the udp backend (TUN + the agent's proxy thread).
// Per path: TCP Gbit/s, the machine's CPU (all cores, from /proc/stat) per Gbit/s, the agents' own CPU
// (the udp proxy runs in them; the kernel paths cost the agents nothing), and packets per second of
// 64-byte UDP datagrams as received (iperf3 -u -b 0: the sender overruns, the receiver's count is what
// the path carried). Prints medians and ratios vs underlay, vs manual and udp vs vxlan; writes
// bench/results/throughput.json.
// Needs iperf3 (Debian package iperf3). BENCH_QUICK=1: one 2 s run per path; BENCH_RUNS, BENCH_SECONDS
// override the repetitions (default 3) and seconds per run (default 5).
import { readFileSync } from "node:fs";
import { cpus, release } from "node:os";
import { execa } from "execa";
import { createUnderlay, type Cluster, type Host, type Pod } from "../test/helpers/netns.js";
import { waitFor } from "../test/helpers/processes.js";
import { startTwillCluster, type TwillCluster } from "../test/helpers/twill-cluster.js";
import { median, percentile, round, writeResult, tearDownOnSignal } from "./lib.js";

const quick = process.env.BENCH_QUICK === "1";
const runs = Number(process.env.BENCH_RUNS ?? (quick ? 1 : 3));
const seconds = Number(process.env.BENCH_SECONDS ?? (quick ? 2 : 5));
const PORT = "5201";

interface PathSpec {
  readonly name: string;
  /** The sending node's host namespace, whose agent's /healthz response time is probed during runs. */
  readonly agentNs?: string;
  /** The agents on this path, whose CPU time is counted (none for the underlay and manual paths). */
  readonly agentPids: () => readonly number[];
  readonly net: Cluster;
  readonly clientNs: string;
  readonly serverNs: string;
  readonly serverIp: string;
  readonly mtu: number;
}

interface Sample {
  /** The sending node's agent's /healthz response times during the run (ms), when it has one. */
  readonly healthzMs: readonly number[];
  readonly gbps: number;
  readonly retransmits: number;
  /** The whole machine's busy cores during the run, per Gbit/s carried. */
  readonly coresPerGbps: number;
  /** The path's agents' CPU seconds per second of the run (0 without agents). */
  readonly agentCores: number;
}

/** Busy and total jiffies of all CPUs so far (/proc/stat's first line). */
function cpuTimes(): { busy: number; total: number } {
  const fields = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "")
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

/** CPU seconds (user + system) a process has used so far; 0 once it is gone. */
function processCpuSeconds(pid: number): number {
  try {
    const fields = (readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

const agentCpu = (pids: readonly number[]): number =>
  pids.reduce((sum, pid) => sum + processCpuSeconds(pid), 0);

/** A number at `path` inside iperf3's JSON report, or undefined. */
function numberAt(value: unknown, path: readonly string[]): number | undefined {
  let at = value;
  for (const key of path) {
    if (typeof at !== "object" || at === null) return undefined;
    at = (at as Record<string, unknown>)[key];
  }
  return typeof at === "number" ? at : undefined;
}

/**
 * Asks the agent in `ns` for /healthz every 20 ms for `forSeconds` and returns each response time:
 * its event loop answers at once unless something blocks it (udp's packets run on a worker thread).
 */
async function healthzTimes(ns: string, forSeconds: number): Promise<number[]> {
  const script =
    `const end=Date.now()+Number(process.argv[1])*1000;const out=[];` +
    `(async()=>{while(Date.now()<end){const t=performance.now();` +
    `try{await (await fetch("http://127.0.0.1:9102/healthz")).text();out.push(performance.now()-t);}catch{}` +
    `await new Promise(r=>setTimeout(r,20));}console.log(JSON.stringify(out));})();`;
  const result = await execa(
    "ip",
    ["netns", "exec", ns, process.execPath, "-e", script, String(forSeconds)],
    {
      reject: false,
    },
  );
  return result.exitCode === 0 ? (JSON.parse(result.stdout) as number[]) : [];
}

async function iperf(path: PathSpec): Promise<Sample> {
  // iperf3 as a direct child of `ip netns exec` (which execs it): execa's timeout ends it by PID.
  const args = ["netns", "exec", path.clientNs, "iperf3", "-c", path.serverIp, "-p", PORT];
  args.push("-t", String(seconds), "-O", "1", "-J");
  const cpuBefore = cpuTimes();
  const agentsBefore = agentCpu(path.agentPids());
  const startedRun = Date.now();
  const probe = path.agentNs === undefined ? Promise.resolve([]) : healthzTimes(path.agentNs, seconds);
  const result = await execa("ip", args, { reject: false, timeout: (seconds + 30) * 1000 });
  const cpuAfter = cpuTimes();
  const healthzMs = await probe;
  const agentSeconds = agentCpu(path.agentPids()) - agentsBefore;
  const elapsed = (Date.now() - startedRun) / 1000;
  let report: unknown;
  try {
    report = JSON.parse(result.stdout);
  } catch {
    throw new Error(`${path.name}: iperf3 gave no JSON (exit ${result.exitCode ?? "?"}): ${result.stderr}`);
  }
  const bps = numberAt(report, ["end", "sum_received", "bits_per_second"]);
  if (bps === undefined) {
    const error = typeof report === "object" && report !== null ? (report as { error?: unknown }).error : "";
    throw new Error(`${path.name}: iperf3 failed: ${String(error)}`);
  }
  const cores =
    (cpus().length * (cpuAfter.busy - cpuBefore.busy)) / Math.max(1, cpuAfter.total - cpuBefore.total);
  return {
    healthzMs,
    gbps: bps / 1e9,
    retransmits: numberAt(report, ["end", "sum_sent", "retransmits"]) ?? 0,
    coresPerGbps: cores / (bps / 1e9),
    agentCores: agentSeconds / elapsed,
  };
}

/** Packets per second of 64-byte UDP datagrams the path delivered (iperf3 -u -b 0). */
async function packetsPerSecond(path: PathSpec): Promise<number> {
  const args = ["netns", "exec", path.clientNs, "iperf3", "-c", path.serverIp, "-p", PORT, "-u", "-b", "0"];
  args.push("-l", "64", "-t", String(Math.max(2, Math.round(seconds / 2))), "-J");
  const result = await execa("ip", args, { reject: false, timeout: (seconds + 30) * 1000 });
  const report: unknown = JSON.parse(result.stdout || "{}");
  const packets = numberAt(report, ["end", "sum", "packets"]);
  const lost = numberAt(report, ["end", "sum", "lost_packets"]);
  const took = numberAt(report, ["end", "sum", "seconds"]);
  if (packets === undefined || lost === undefined || took === undefined)
    throw new Error(`${path.name}: iperf3 -u gave no totals: ${result.stderr}`);
  return (packets - lost) / took;
}

async function startServer(net: Cluster, ns: string): Promise<void> {
  // Tracked by the harness and ended by PID in destroy().
  net.spawn(ns, "iperf3", ["-s", "-p", PORT]);
  await waitFor(
    `iperf3 server in ${ns}`,
    async () => (await net.exec(ns, ["ss", "-Hltn", `sport = :${PORT}`])).stdout.includes(PORT),
    10_000,
  );
}

async function pingable(net: Cluster, from: Pod, to: Pod): Promise<void> {
  await waitFor(
    `${from.ns} → ${to.address}`,
    async () => (await net.ping(from.ns, to.address, { count: 1 })).ok,
    30_000,
    200,
  );
}

/** Pods on two twill nodes (one each), reachable both ways. */
async function twillPods(cluster: TwillCluster): Promise<[Pod, Pod]> {
  const a = await cluster.addPod(1, "a", 2);
  const b = await cluster.addPod(2, "b", 2);
  await pingable(cluster.net, a, b);
  await pingable(cluster.net, b, a);
  return [a, b];
}

/**
 * The data path twill builds, by hand: a bridge with the pod gateway, and either the vxlan device
 * (flannel.1, VNI 1, port 8472, nolearning, MTU 1450, <subnet>.0/32) with neighbour, FDB entry and an
 * onlink route per peer — or, for host-gw, a plain route to the peer's subnet via its host.
 */
async function manualPods(
  net: Cluster,
  [h1, h2]: readonly [Host, Host],
  mode: "vxlan" | "host-gw",
  second: number,
): Promise<[Pod, Pod]> {
  const mtu = mode === "vxlan" ? 1450 : 1500;
  const subnet = (h: Host): string => `10.${second}.${h.index}`;
  const mac = (h: Host): string =>
    `02:00:00:00:${second.toString(16).padStart(2, "0")}:${h.index.toString(16).padStart(2, "0")}`;
  for (const [self, other] of [
    [h1, h2],
    [h2, h1],
  ] as const) {
    const ip = (args: string[]): Promise<string> => net.run(self.ns, ["ip", ...args]);
    await ip(["link", "add", "cni0", "type", "bridge"]);
    await ip(["address", "add", `${subnet(self)}.1/24`, "dev", "cni0"]);
    await ip(["link", "set", "cni0", "mtu", String(mtu), "up"]);
    if (mode === "vxlan") {
      await ip(
        ["link", "add", "flannel.1", "address", mac(self), "type", "vxlan", "id", "1"].concat([
          "local",
          self.address,
          "dev",
          "eth0",
          "dstport",
          "8472",
          "nolearning",
        ]),
      );
      await ip(["link", "set", "flannel.1", "mtu", String(mtu), "up"]);
      await ip(["address", "add", `${subnet(self)}.0/32`, "dev", "flannel.1"]);
      await ip([
        "neigh",
        "replace",
        `${subnet(other)}.0`,
        "lladdr",
        mac(other),
        "dev",
        "flannel.1",
        "nud",
        "permanent",
      ]);
      await net.run(self.ns, [
        "bridge",
        "fdb",
        "replace",
        mac(other),
        "dev",
        "flannel.1",
        "self",
        "dst",
        other.address,
        "permanent",
      ]);
      await ip([
        "route",
        "replace",
        `${subnet(other)}.0/24`,
        "via",
        `${subnet(other)}.0`,
        "dev",
        "flannel.1",
        "onlink",
      ]);
    } else {
      await ip(["route", "replace", `${subnet(other)}.0/24`, "via", other.address, "dev", "eth0"]);
    }
  }
  const pod = (h: Host, name: string): Promise<Pod> =>
    net.addPod(h, name, { bridge: "cni0", address: `${subnet(h)}.2/24`, gateway: `${subnet(h)}.1`, mtu });
  const a = await pod(h1, "a");
  const b = await pod(h2, "b");
  await pingable(net, a, b);
  await pingable(net, b, a);
  return [a, b];
}

// ---- main ----------------------------------------------------------------------------------------

const clusters: TwillCluster[] = [];
let manual: Cluster | undefined;

async function teardown(): Promise<void> {
  await Promise.allSettled(clusters.map((c) => c.destroy()));
  await manual?.destroy();
}

// Ctrl-C still tears down (the harness's exit hook alone would only SIGKILL and delete namespaces).
tearDownOnSignal(teardown);

const startedAt = Date.now();
try {
  const version = await execa("iperf3", ["--version"], { reject: false });
  if (version.exitCode !== 0)
    throw new Error("iperf3 not found: apt-get install -y --no-install-recommends iperf3");
  const iperfVersion = version.stdout.split("\n")[0] ?? "iperf3";
  console.log(
    `throughput benchmark${quick ? " (quick)" : ""}: ${runs} run(s) × ${seconds} s per path, ${iperfVersion}`,
  );

  const vx = await startTwillCluster({ backend: "vxlan", hosts: 2 });
  clusters.push(vx);
  const hg = await startTwillCluster({ backend: "host-gw", hosts: 2 });
  clusters.push(hg);
  // --ip-masq as deployed, so that pod-to-pod traffic is not masqueraded by the bridge plugin.
  const ud = await startTwillCluster({ backend: "udp", hosts: 2, agentArgs: ["--ip-masq"] });
  clusters.push(ud);
  manual = await createUnderlay();
  const m = manual;
  const mh = [await m.addHost(1), await m.addHost(2), await m.addHost(3), await m.addHost(4)] as const;

  const [vxA, vxB] = await twillPods(vx);
  const [hgA, hgB] = await twillPods(hg);
  const [udA, udB] = await twillPods(ud);
  const [mvA, mvB] = await manualPods(m, [mh[0], mh[1]], "vxlan", 245);
  const [mhA, mhB] = await manualPods(m, [mh[2], mh[3]], "host-gw", 246);
  const vxHost = (i: number): Host => {
    const host = vx.net.hosts.get(i);
    if (!host) throw new Error(`no host ${i}`);
    return host;
  };

  const paths: PathSpec[] = [
    {
      name: "underlay",
      net: vx.net,
      clientNs: vxHost(1).ns,
      serverNs: vxHost(2).ns,
      serverIp: vxHost(2).address,
      mtu: 1500,
      agentPids: () => [],
    },
    {
      name: "twill vxlan",
      net: vx.net,
      clientNs: vxA.ns,
      serverNs: vxB.ns,
      serverIp: vxB.address,
      mtu: 1450,
      agentPids: () => vx.nodes.map((n) => n.agent.process.pid),
      agentNs: vxHost(1).ns,
    },
    {
      name: "manual vxlan",
      net: m,
      clientNs: mvA.ns,
      serverNs: mvB.ns,
      serverIp: mvB.address,
      mtu: 1450,
      agentPids: () => [],
    },
    {
      name: "twill host-gw",
      net: hg.net,
      clientNs: hgA.ns,
      serverNs: hgB.ns,
      serverIp: hgB.address,
      mtu: 1500,
      agentPids: () => hg.nodes.map((n) => n.agent.process.pid),
    },
    {
      name: "manual host-gw",
      net: m,
      clientNs: mhA.ns,
      serverNs: mhB.ns,
      serverIp: mhB.address,
      mtu: 1500,
      agentPids: () => [],
    },
    {
      name: "twill udp",
      net: ud.net,
      clientNs: udA.ns,
      serverNs: udB.ns,
      serverIp: udB.address,
      mtu: 1472,
      agentPids: () => ud.nodes.map((n) => n.agent.process.pid),
      agentNs: ud.nodes[0]?.host.ns ?? "",
    },
  ];
  for (const path of paths) await startServer(path.net, path.serverNs);

  const samples = new Map<string, Sample[]>(paths.map((p) => [p.name, []]));
  for (let run = 0; run < runs; run++) {
    for (const path of paths) {
      const sample = await iperf(path);
      samples.get(path.name)?.push(sample);
      console.log(
        `  run ${run + 1}/${runs} ${path.name}: ${round(sample.gbps, 2)} Gbit/s (${sample.retransmits} retransmits), ` +
          `${round(sample.coresPerGbps, 2)} cores per Gbit/s, agents ${round(sample.agentCores, 2)} cores`,
      );
    }
  }
  const pps = new Map<string, number[]>(paths.map((p) => [p.name, []]));
  for (let run = 0; run < runs; run++) {
    for (const path of paths) {
      const value = await packetsPerSecond(path);
      pps.get(path.name)?.push(value);
      console.log(`  run ${run + 1}/${runs} ${path.name}: ${Math.round(value)} packets/s of 64-byte UDP`);
    }
  }

  const med = (name: string): number => median((samples.get(name) ?? []).map((s) => s.gbps));
  const medOf = (name: string, pick: (s: Sample) => number): number =>
    median((samples.get(name) ?? []).map(pick));
  const medPps = (name: string): number => median(pps.get(name) ?? []);
  /** The sending agent's /healthz response times over every run of a path: its event loop's freedom. */
  const healthzSummary = (name: string): Record<string, number> => {
    const times = (samples.get(name) ?? []).flatMap((s) => s.healthzMs);
    if (times.length === 0) return {};
    return {
      healthzProbes: times.length,
      healthzMedianMs: round(median(times), 2),
      healthzP99Ms: round(percentile(times, 99), 2),
      healthzMaxMs: round(Math.max(...times), 2),
    };
  };
  const results = Object.fromEntries(
    paths.map((p) => {
      const list = samples.get(p.name) ?? [];
      return [
        p.name,
        {
          mtu: p.mtu,
          runsGbps: list.map((s) => round(s.gbps, 3)),
          retransmits: list.map((s) => s.retransmits),
          medianGbps: round(med(p.name), 3),
          medianCoresPerGbps: round(
            medOf(p.name, (s) => s.coresPerGbps),
            3,
          ),
          medianAgentCores: round(
            medOf(p.name, (s) => s.agentCores),
            3,
          ),
          packetsPerSecond64: (pps.get(p.name) ?? []).map((v) => Math.round(v)),
          medianPacketsPerSecond64: Math.round(medPps(p.name)),
          ...healthzSummary(p.name),
        },
      ];
    }),
  );
  const ratio = (a: string, b: string): number => round(med(a) / med(b), 3);
  const ratios = {
    "twill vxlan / underlay": ratio("twill vxlan", "underlay"),
    "twill vxlan / manual vxlan": ratio("twill vxlan", "manual vxlan"),
    "manual vxlan / underlay": ratio("manual vxlan", "underlay"),
    "twill host-gw / underlay": ratio("twill host-gw", "underlay"),
    "twill host-gw / manual host-gw": ratio("twill host-gw", "manual host-gw"),
    "manual host-gw / underlay": ratio("manual host-gw", "underlay"),
    "twill udp / twill vxlan": ratio("twill udp", "twill vxlan"),
    "twill udp / underlay": ratio("twill udp", "underlay"),
    "twill udp / twill vxlan, packets/s": round(medPps("twill udp") / medPps("twill vxlan"), 3),
  };
  console.log("medians:");
  for (const p of paths) {
    console.log(
      `  ${p.name.padEnd(15)} ${round(med(p.name), 2)} Gbit/s (MTU ${p.mtu}), ` +
        `${round(
          medOf(p.name, (s) => s.coresPerGbps),
          2,
        )} cores/Gbit/s, agents ${round(
          medOf(p.name, (s) => s.agentCores),
          2,
        )} cores, ` +
        `${Math.round(medPps(p.name))} packets/s (64 B)`,
    );
  }
  for (const p of paths) {
    const h = healthzSummary(p.name);
    if (h.healthzProbes !== undefined) {
      console.log(
        `  ${p.name.padEnd(15)} its agent's /healthz during the runs: median ${h.healthzMedianMs} ms, ` +
          `p99 ${h.healthzP99Ms} ms, max ${h.healthzMaxMs} ms (${h.healthzProbes} probes)`,
      );
    }
  }
  console.log("ratios:");
  for (const [name, value] of Object.entries(ratios)) console.log(`  ${name.padEnd(36)} ${value}`);

  const path = writeResult("throughput", {
    quick,
    runs,
    secondsPerRun: seconds,
    iperf3: iperfVersion,
    machine: { cpus: cpus().length, kernel: release() },
    paths: results,
    ratios,
    totalSeconds: round((Date.now() - startedAt) / 1000, 1),
  });
  console.log(`written ${path} (${round((Date.now() - startedAt) / 1000, 1)} s)`);
} finally {
  await teardown();
}
