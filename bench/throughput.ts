// Pod-to-pod TCP throughput (iperf3) through twill's data path, all in network namespaces made by the
// test harness, in one run and interleaved so a noisy moment hits every path alike:
//   underlay       host namespace → host namespace over eth0 (198.18.0.1 → 198.18.0.2): the ceiling;
//   twill vxlan    pod → pod, two real agents with the vxlan backend (startTwillCluster);
//   manual vxlan   pod → pod, the same data path set up by hand (bridge, vxlan device, neigh, fdb, route);
//   twill host-gw  pod → pod, two real agents with the host-gw backend;
//   manual host-gw pod → pod, bridge and a route via the peer host, by hand;
//   twill udp      pod → pod, two real agents with the udp backend (TUN + the agent's proxy thread);
//   twill wireguard pod → pod, two real agents with the wireguard backend (wireguard-go: this kernel has
//                  no WireGuard module), each host in a mount namespace of its own;
//   manual wireguard pod → pod, the same by hand: wireguard-go started on flannel-wg in each host's own
//                  mount namespace, in a session of its own as twill starts it, keys from `wg genkey`,
//                  `wg set` with the peer, its endpoint and allowed IPs, the device's address and
//                  route, a bridge and a pod;
//   manual wireguard (bench session) the same with wireguard-go left in the benchmark's session: the
//                  scheduler's autogroups (one per session) share the CPUs out differently.
// Per path: TCP Gbit/s, the machine's CPU (all cores, from /proc/stat) per Gbit/s, the agents' own CPU
// (the udp proxy runs in them; the kernel paths cost the agents nothing), and packets per second of
// 64-byte UDP datagrams as received (iperf3 -u -b 0: the sender overruns, the receiver's count is what
// the path carried). Prints medians and ratios vs underlay, vs manual and udp/wireguard vs vxlan; writes
// bench/results/throughput.json (throughput-<BENCH_ONLY>.json for a subset).
// Needs iperf3 (Debian package iperf3), and wireguard-go and wg for the wireguard paths. BENCH_QUICK=1:
// one 2 s run per path; BENCH_RUNS, BENCH_SECONDS override the repetitions (default 3) and seconds per
// run (default 5); BENCH_ONLY=vxlan,host-gw,udp,wireguard measures a subset (the underlay always, and
// twill vxlan too with udp or wireguard, which are compared with it).
import { readFileSync } from "node:fs";
import { recordedWireGuardGoPid, processStartTicks } from "../src/backends/wireguard/wireguard-go.js";
import { cpus, release } from "node:os";
import { execa } from "execa";
import { createUnderlay, type Cluster, type Host, type Pod } from "../test/helpers/netns.js";
import { waitFor } from "../test/helpers/processes.js";
import { startTwillCluster, type TwillCluster } from "../test/helpers/twill-cluster.js";
import { startMountNamespace, type MountNamespace } from "../test/helpers/wireguard.js";
import type { Started } from "../test/helpers/processes.js";
import { median, percentile, round, writeResult, tearDownOnSignal } from "./lib.js";
import {
  assertIsWireGuardGo,
  privateFile,
  startWireGuardGo,
  uapiSocket,
  waitForUapi,
  wgIn,
  wgKeyPair,
} from "./wireguard.js";

const quick = process.env.BENCH_QUICK === "1";
const runs = Number(process.env.BENCH_RUNS ?? (quick ? 1 : 3));
const seconds = Number(process.env.BENCH_SECONDS ?? (quick ? 2 : 5));
const PORT = "5201";
const GROUPS = ["vxlan", "host-gw", "udp", "wireguard"] as const;
type Group = (typeof GROUPS)[number];
const selected = new Set(
  (process.env.BENCH_ONLY ?? GROUPS.join(","))
    .split(",")
    .map((g) => g.trim())
    .filter((g) => g !== ""),
);
for (const g of selected) {
  if (!(GROUPS as readonly string[]).includes(g))
    throw new Error(`BENCH_ONLY: unknown path group "${g}"; one of ${GROUPS.join(", ")}`);
}
const want = (g: Group): boolean => selected.has(g);
const WG_DEV = "flannel-wg";
const WG_PORT = 51820;

interface PathSpec {
  readonly name: string;
  /** The sending node's host namespace, whose agent's /healthz response time is probed during runs. */
  readonly agentNs?: string;
  /** The agents on this path, whose CPU time is counted (none for the underlay and manual paths). */
  readonly agentPids: () => readonly number[];
  /** Processes outside the agents that carry the packets (wireguard-go), whose CPU is counted apart. */
  readonly userspacePids?: () => readonly number[];
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
  /** The same for the path's wireguard-go processes (0 on other paths). */
  readonly userspaceCores: number;
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
  const userspacePids = path.userspacePids?.() ?? [];
  const userspaceBefore = agentCpu(userspacePids);
  const startedRun = Date.now();
  const probe = path.agentNs === undefined ? Promise.resolve([]) : healthzTimes(path.agentNs, seconds);
  const result = await execa("ip", args, { reject: false, timeout: (seconds + 30) * 1000 });
  const cpuAfter = cpuTimes();
  const healthzMs = await probe;
  const agentSeconds = agentCpu(path.agentPids()) - agentsBefore;
  const userspaceSeconds = agentCpu(userspacePids) - userspaceBefore;
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
    userspaceCores: userspaceSeconds / elapsed,
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

/** Mount namespaces and wireguard-go processes of the manual wireguard path, for teardown. */
const mountNamespaces: MountNamespace[] = [];
const handStarted: Started[] = [];

/**
 * twill's wireguard data path, by hand: each host in a mount namespace of its own (a private
 * /run/wireguard for wireguard-go's socket), wireguard-go in the foreground on flannel-wg, a key pair
 * from `wg genkey`, `wg set` with listen port 51820, the private key and the other host as peer
 * (endpoint <host>:51820, allowed IPs its /24), flannel-wg with <subnet>.0/32, MTU 1420 (1500 − 80) and
 * the whole /16 routed into it — what the agent makes — then a bridge with the pod gateway and a pod.
 */
async function manualWireGuard(
  net: Cluster,
  [h1, h2]: readonly [Host, Host],
  second: number,
  ownSession: boolean,
): Promise<{ pods: [Pod, Pod]; wireguardGo: Started[] }> {
  const mtu = 1500 - 80;
  const subnet = (h: Host): string => `10.${second}.${h.index}`;
  const start = async (h: Host) => {
    const mountNs = await startMountNamespace();
    mountNamespaces.push(mountNs);
    const wg = startWireGuardGo(mountNs, h.ns, WG_DEV, { ownSession });
    handStarted.push(wg);
    await waitForUapi(uapiSocket(mountNs, WG_DEV), `wireguard-go in ${h.ns}`).catch((error: unknown) => {
      throw new Error(`${String(error)}: ${wg.output()}`, { cause: error });
    });
    assertIsWireGuardGo(wg);
    return { host: h, mountNs, wg, keys: await wgKeyPair() };
  };
  const side = await Promise.all([start(h1), start(h2)]);
  for (const [self, other] of [
    [side[0], side[1]],
    [side[1], side[0]],
  ] as const) {
    const ns = self.host.ns;
    const ip = (args: string[]): Promise<string> => net.run(ns, ["ip", ...args]);
    const keyFile = privateFile(self.mountNs, "private.key", `${self.keys.privateKey}\n`);
    await wgIn(self.mountNs, ns, [
      "set",
      WG_DEV,
      "listen-port",
      String(WG_PORT),
      "private-key",
      keyFile,
      "peer",
      other.keys.publicKey,
      "endpoint",
      `${other.host.address}:${WG_PORT}`,
      "allowed-ips",
      `${subnet(other.host)}.0/24`,
    ]);
    await ip(["link", "set", WG_DEV, "mtu", String(mtu), "up"]);
    await ip(["address", "add", `${subnet(self.host)}.0/32`, "dev", WG_DEV]);
    await ip(["route", "add", `10.${second}.0.0/16`, "dev", WG_DEV]);
    await ip(["link", "add", "cni0", "type", "bridge"]);
    await ip(["address", "add", `${subnet(self.host)}.1/24`, "dev", "cni0"]);
    await ip(["link", "set", "cni0", "mtu", String(mtu), "up"]);
  }
  const pod = (h: Host, name: string): Promise<Pod> =>
    net.addPod(h, name, { bridge: "cni0", address: `${subnet(h)}.2/24`, gateway: `${subnet(h)}.1`, mtu });
  const a = await pod(h1, "a");
  const b = await pod(h2, "b");
  await pingable(net, a, b);
  await pingable(net, b, a);
  return { pods: [a, b], wireguardGo: side.map((s) => s.wg) };
}

/** twill's wireguard-go processes (they outlive their agents by design): checked gone after teardown. */
const twillWireGuardGo: { pid: number; ticks: number | undefined }[] = [];

function wireGuardGoPids(cluster: TwillCluster): number[] {
  return cluster.nodes
    .map((n) => recordedWireGuardGoPid(n.agent.stateDir, WG_DEV))
    .filter((pid): pid is number => pid !== undefined);
}

// ---- main ----------------------------------------------------------------------------------------

const clusters: TwillCluster[] = [];
let manual: Cluster | undefined;

async function teardown(): Promise<void> {
  await Promise.allSettled(clusters.map((c) => c.destroy()));
  await Promise.allSettled(handStarted.map((p) => p.stop(3000)));
  await Promise.allSettled(mountNamespaces.map((m) => m.stop()));
  await manual?.destroy();
  // The cluster's teardown ends each agent's wireguard-go by the PID in its state dir; should one be
  // left (an agent killed before it recorded it), it is ended here by the PID seen during the run.
  for (const { pid, ticks } of twillWireGuardGo) {
    if (ticks === undefined || processStartTicks(pid) !== ticks) continue;
    console.warn(`twill's wireguard-go (pid ${pid}) outlived the teardown; ending it`);
    process.kill(pid, "SIGKILL");
  }
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

  console.log(`paths: underlay, ${[...selected].join(", ")}`);
  const agentsOf = (c: TwillCluster) => (): number[] => c.nodes.map((n) => n.agent.process.pid);
  const paths: PathSpec[] = [];
  const vx =
    want("vxlan") || want("udp") || want("wireguard")
      ? await startTwillCluster({ backend: "vxlan", hosts: 2 })
      : undefined;
  if (vx !== undefined) clusters.push(vx);
  const hg = want("host-gw") ? await startTwillCluster({ backend: "host-gw", hosts: 2 }) : undefined;
  if (hg !== undefined) clusters.push(hg);
  // --ip-masq as deployed, so that pod-to-pod traffic is not masqueraded by the bridge plugin.
  const ud = want("udp")
    ? await startTwillCluster({ backend: "udp", hosts: 2, agentArgs: ["--ip-masq"] })
    : undefined;
  if (ud !== undefined) clusters.push(ud);
  // The same for wireguard: the pods' traffic carries the agents' masquerade chain, not the plugin's NAT.
  const wg = want("wireguard")
    ? await startTwillCluster({ backend: "wireguard", hosts: 2, agentArgs: ["--ip-masq"] })
    : undefined;
  if (wg !== undefined) {
    clusters.push(wg);
    for (const pid of wireGuardGoPids(wg)) twillWireGuardGo.push({ pid, ticks: processStartTicks(pid) });
  }
  manual = await createUnderlay();
  const m = manual;
  const mh = [await m.addHost(1), await m.addHost(2), await m.addHost(3), await m.addHost(4)] as const;
  const mw = want("wireguard") ? ([await m.addHost(5), await m.addHost(6)] as const) : undefined;
  const ms = want("wireguard") ? ([await m.addHost(7), await m.addHost(8)] as const) : undefined;

  const underlayNet = (vx ?? hg ?? ud ?? wg)?.net;
  if (underlayNet === undefined) throw new Error("no cluster started");
  const underlayHost = (i: number): Host => {
    const host = underlayNet.hosts.get(i);
    if (!host) throw new Error(`no host ${i}`);
    return host;
  };
  paths.push({
    name: "underlay",
    net: underlayNet,
    clientNs: underlayHost(1).ns,
    serverNs: underlayHost(2).ns,
    serverIp: underlayHost(2).address,
    mtu: 1500,
    agentPids: () => [],
  });
  if (vx !== undefined) {
    const [vxA, vxB] = await twillPods(vx);
    paths.push({
      name: "twill vxlan",
      net: vx.net,
      clientNs: vxA.ns,
      serverNs: vxB.ns,
      serverIp: vxB.address,
      mtu: 1450,
      agentPids: agentsOf(vx),
      agentNs: vxA.host.ns,
    });
  }
  if (want("vxlan")) {
    const [mvA, mvB] = await manualPods(m, [mh[0], mh[1]], "vxlan", 245);
    paths.push({
      name: "manual vxlan",
      net: m,
      clientNs: mvA.ns,
      serverNs: mvB.ns,
      serverIp: mvB.address,
      mtu: 1450,
      agentPids: () => [],
    });
  }
  if (hg !== undefined) {
    const [hgA, hgB] = await twillPods(hg);
    const [mhA, mhB] = await manualPods(m, [mh[2], mh[3]], "host-gw", 246);
    paths.push(
      {
        name: "twill host-gw",
        net: hg.net,
        clientNs: hgA.ns,
        serverNs: hgB.ns,
        serverIp: hgB.address,
        mtu: 1500,
        agentPids: agentsOf(hg),
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
    );
  }
  if (ud !== undefined) {
    const [udA, udB] = await twillPods(ud);
    paths.push({
      name: "twill udp",
      net: ud.net,
      clientNs: udA.ns,
      serverNs: udB.ns,
      serverIp: udB.address,
      mtu: 1472,
      agentPids: agentsOf(ud),
      agentNs: udA.host.ns,
    });
  }
  if (wg !== undefined && mw !== undefined && ms !== undefined) {
    const [wgA, wgB] = await twillPods(wg);
    // Read again: a wireguard-go started anew meanwhile (it exited) is the one carrying the packets.
    const wgPids = (): number[] => wireGuardGoPids(wg);
    const hand = await manualWireGuard(m, mw, 247, true);
    const [mwA, mwB] = hand.pods;
    const shared = await manualWireGuard(m, ms, 248, false);
    const [msA, msB] = shared.pods;
    paths.push(
      {
        name: "twill wireguard",
        net: wg.net,
        clientNs: wgA.ns,
        serverNs: wgB.ns,
        serverIp: wgB.address,
        mtu: 1420,
        agentPids: agentsOf(wg),
        userspacePids: wgPids,
        agentNs: wgA.host.ns,
      },
      {
        name: "manual wireguard",
        net: m,
        clientNs: mwA.ns,
        serverNs: mwB.ns,
        serverIp: mwB.address,
        mtu: 1420,
        agentPids: () => [],
        userspacePids: () => hand.wireguardGo.map((p) => p.pid),
      },
      {
        name: "manual wireguard (bench session)",
        net: m,
        clientNs: msA.ns,
        serverNs: msB.ns,
        serverIp: msB.address,
        mtu: 1420,
        agentPids: () => [],
        userspacePids: () => shared.wireguardGo.map((p) => p.pid),
      },
    );
  }
  for (const path of paths) await startServer(path.net, path.serverNs);

  const samples = new Map<string, Sample[]>(paths.map((p) => [p.name, []]));
  for (let run = 0; run < runs; run++) {
    for (const path of paths) {
      const sample = await iperf(path);
      samples.get(path.name)?.push(sample);
      console.log(
        `  run ${run + 1}/${runs} ${path.name}: ${round(sample.gbps, 2)} Gbit/s (${sample.retransmits} retransmits), ` +
          `${round(sample.coresPerGbps, 2)} cores per Gbit/s, agents ${round(sample.agentCores, 2)} cores` +
          (path.userspacePids === undefined ? "" : `, wireguard-go ${round(sample.userspaceCores, 2)} cores`),
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
          ...(p.userspacePids === undefined
            ? {}
            : {
                wireguardGoCores: list.map((s) => round(s.userspaceCores, 3)),
                medianWireguardGoCores: round(
                  medOf(p.name, (s) => s.userspaceCores),
                  3,
                ),
              }),
          packetsPerSecond64: (pps.get(p.name) ?? []).map((v) => Math.round(v)),
          medianPacketsPerSecond64: Math.round(medPps(p.name)),
          ...healthzSummary(p.name),
        },
      ];
    }),
  );
  const measured = new Set(paths.map((p) => p.name));
  const ratios: Record<string, number> = {};
  /** Ratio of the medians, for the paths this run measured. */
  const ratio = (a: string, b: string): void => {
    if (measured.has(a) && measured.has(b)) ratios[`${a} / ${b}`] = round(med(a) / med(b), 3);
  };
  const ppsRatio = (a: string, b: string): void => {
    if (measured.has(a) && measured.has(b))
      ratios[`${a} / ${b}, packets/s`] = round(medPps(a) / medPps(b), 3);
  };
  /** Median of the run-by-run ratios: each pair measured one right after the other. */
  const pairedRatio = (a: string, b: string): void => {
    const as = samples.get(a) ?? [];
    const bs = samples.get(b) ?? [];
    if (as.length === 0 || as.length !== bs.length) return;
    ratios[`${a} / ${b}, median of run-by-run ratios`] = round(
      median(as.map((s, i) => s.gbps / (bs[i]?.gbps ?? Number.NaN))),
      3,
    );
  };
  ratio("twill vxlan", "underlay");
  ratio("twill vxlan", "manual vxlan");
  ratio("manual vxlan", "underlay");
  ratio("twill host-gw", "underlay");
  ratio("twill host-gw", "manual host-gw");
  ratio("manual host-gw", "underlay");
  ratio("twill udp", "twill vxlan");
  ratio("twill udp", "underlay");
  ppsRatio("twill udp", "twill vxlan");
  ratio("twill wireguard", "manual wireguard");
  pairedRatio("twill wireguard", "manual wireguard");
  ratio("twill wireguard", "manual wireguard (bench session)");
  ratio("manual wireguard", "manual wireguard (bench session)");
  ratio("twill wireguard", "twill vxlan");
  ratio("twill wireguard", "underlay");
  ratio("manual wireguard", "underlay");
  ppsRatio("twill wireguard", "manual wireguard");
  ppsRatio("twill wireguard", "manual wireguard (bench session)");
  ppsRatio("manual wireguard", "manual wireguard (bench session)");
  ppsRatio("twill wireguard", "twill vxlan");
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
        (p.userspacePids === undefined
          ? ""
          : `wireguard-go ${round(
              medOf(p.name, (s) => s.userspaceCores),
              2,
            )} cores, `) +
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

  // A subset goes to its own file, so it does not replace a full run's.
  const all = GROUPS.every((g) => selected.has(g));
  const path = writeResult(all ? "throughput" : `throughput-${[...selected].join("-")}`, {
    quick,
    only: [...selected],
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
