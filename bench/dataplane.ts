// Data-plane benchmarks, all inside network namespaces made by the test harness (the root namespace is
// never touched; everything is torn down in `finally`, processes are ended by PID):
//  1. cold start with N peers: N leases written straight into etcd, ONE real agent started in a fresh
//     host namespace, time until every route/neighbour/FDB entry is in the kernel — side by side with a
//     raw `bridge -batch` + `ip -batch` of the very same lines in another fresh namespace, and with
//     twill's own executor (runBatch, with its marker lines) — plus the agent's peak RSS;
//  2. peer event → kernel programmed: put→route latency over single events (p50/p99), and bursts;
//  3. steady state: CPU used by the periodic resync at N peers.
// Prints medians and ratios (the machine is shared and noisy) and writes bench/results/dataplane.json.
// BENCH_QUICK=1 is a small smoke run; BENCH_RUNS overrides the repetitions, BENCH_WINDOW the CPU window (s).
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { cpus, release } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { parseNetworkConfig } from "../src/config/network-config.js";
import { desiredFor, vxlanDeviceName } from "../src/dataplane/backends.js";
import { toBatches, type OpBatch } from "../src/dataplane/batch-lines.js";
import { runBatch } from "../src/dataplane/kernel/batch.js";
import { readFdb, readNeighbours, readRoutes } from "../src/dataplane/kernel/read.js";
import type { CommandRunner } from "../src/dataplane/kernel/runner.js";
import { TWILL_ROUTE_PROTOCOL } from "../src/dataplane/model.js";
import { plan } from "../src/dataplane/planner.js";
import { formatCidr, formatIPv4, parseCidr, parseIPv4 } from "../src/ip/ipv4.js";
import { encodeLeaseAttrs, vxlanBackendData } from "../src/lease/attrs.js";
import type { Lease } from "../src/lease/lease.js";
import { startAgent, type AgentProcess } from "../test/helpers/agent.js";
import type { EtcdServer } from "../test/helpers/etcd.js";
import { createUnderlay, type Cluster, type Host } from "../test/helpers/netns.js";
import type { Started } from "../test/helpers/processes.js";
import { subnetLine } from "../test/helpers/twill-cluster.js";
import type { WriterAnswer, WriterRequest } from "./etcd-writer.js";
import { median, percentile, round, writeResult, tearDownOnSignal } from "./lib.js";

const quick = process.env.BENCH_QUICK === "1";
const runs = Number(process.env.BENCH_RUNS ?? (quick ? 1 : 3));
const coldSizes = quick ? [100, 500] : [1000, 5000];
const eventBasePeers = 100;
const singleEvents = quick ? 100 : 1000;
const burstSize = quick ? 100 : 1000;
const bursts = quick ? 1 : 3;
const steadyPeers = coldSizes[coldSizes.length - 1] ?? 5000;
const steadyWindowS = Number(process.env.BENCH_WINDOW ?? (quick ? 8 : 30));
const steadyIntervalS = 2;

// 65,536 /24s: room for 5,000 cold peers and every event lease. The VNI is flannel's default, 1.
const NETWORK_CONFIG = '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}';
const config = parseNetworkConfig(NETWORK_CONFIG).config;
const VXLAN_DEV = vxlanDeviceName(1);
const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
const here = dirname(fileURLToPath(import.meta.url));

// ---- fake peers ---------------------------------------------------------------------------------

interface Peer {
  readonly key: string;
  readonly value: string;
  readonly lease: Lease;
  /** The route's dst as `ip route` prints it. */
  readonly dst: string;
}

const hex = (n: number): string => (n & 255).toString(16).padStart(2, "0");

/** Peer number `index` (0 … 65,533): subnet 10.0.0.0 + (index+1)·256, a distinct MAC and PublicIP. */
function peer(prefix: string, index: number): Peer {
  const subnet = { ip: (parseIPv4("10.0.0.0") + (index + 1) * 256) >>> 0, prefixLen: 24 };
  // PublicIPs in 198.18.1.1 … (never a harness host's 198.18.0.x); vxlan does not need them on-link.
  const publicIP = parseIPv4(`198.18.${1 + Math.floor(index / 250)}.${1 + (index % 250)}`);
  const mac = `02:00:${hex(index >> 16)}:${hex(index >> 8)}:${hex(index)}:01`;
  const attrs = {
    publicIP,
    publicIPv6: null,
    backendType: "vxlan",
    backendData: vxlanBackendData(1, mac),
    backendV6Data: undefined,
  };
  const key = `${prefix}/subnets/${formatIPv4(subnet.ip)}-24`;
  const lease: Lease = { subnet, attrs, key, etcdLeaseId: "0", createRevision: 0, modRevision: 0 };
  return { key, value: encodeLeaseAttrs(attrs), lease, dst: formatCidr(subnet) };
}

function peers(prefix: string, from: number, count: number): Peer[] {
  return Array.from({ length: count }, (_, i) => peer(prefix, from + i));
}

// ---- etcd writer (a child inside the switch namespace; see etcd-writer.ts) -------------------------

class Writer {
  private readonly child: ChildProcess;
  private readonly waiting = new Map<number, (answer: WriterAnswer) => void>();
  private nextId = 1;
  private stderr = "";
  readonly ready: Promise<void>;

  constructor(ns: string, endpoint: string) {
    // tsx's loader flags are in execArgv, so the child runs the .ts file the same way this one runs.
    const args = ["netns", "exec", ns, process.execPath, ...process.execArgv, join(here, "etcd-writer.ts")];
    this.child = spawn("ip", [...args, endpoint], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stderr?.on(
      "data",
      (chunk: Buffer) => (this.stderr = (this.stderr + chunk.toString()).slice(-4000)),
    );
    let hello: (() => void) | undefined;
    this.ready = new Promise((resolve, reject) => {
      hello = resolve;
      this.child.once("exit", (code) => reject(new Error(`etcd writer exited (${code}): ${this.stderr}`)));
    });
    this.ready.catch(() => undefined);
    const stdout = this.child.stdout;
    if (stdout === null) throw new Error("etcd writer has no stdout");
    createInterface({ input: stdout }).on("line", (line) => {
      const answer = JSON.parse(line) as WriterAnswer;
      if (answer.id === 0) hello?.();
      this.waiting.get(answer.id)?.(answer);
      this.waiting.delete(answer.id);
    });
  }

  private async send(
    op: WriterRequest["op"],
    kvs: WriterRequest["kvs"],
    concurrency: number,
  ): Promise<WriterAnswer> {
    const id = this.nextId++;
    const request: WriterRequest = { id, op, kvs, concurrency };
    const answer = new Promise<WriterAnswer>((resolve) => this.waiting.set(id, resolve));
    this.child.stdin?.write(`${JSON.stringify(request)}\n`);
    const result = await answer;
    if (result.error !== undefined) throw new Error(`etcd ${op} failed: ${result.error}`);
    return result;
  }

  put(kvs: readonly (readonly [string, string])[], concurrency = 64): Promise<WriterAnswer> {
    return this.send("put", kvs, concurrency);
  }

  delete(keys: readonly string[], concurrency = 64): Promise<WriterAnswer> {
    return this.send(
      "delete",
      keys.map((k) => [k, ""] as const),
      concurrency,
    );
  }

  /** Ends the child by the PID we started. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 3000);
    await gone;
    clearTimeout(timer);
  }
}

// ---- /proc readers ------------------------------------------------------------------------------

/**
 * The node process of an agent. `ip netns exec` execs node in place, but right after the spawn the
 * PID may still be `ip`; wait for the exec (or, with another ip, for a node child) rather than assume.
 */
async function nodePid(pid: number): Promise<number> {
  const comm = (p: number): string => readFileSync(`/proc/${p}/comm`, "utf8").trim();
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (comm(pid) === "node") return pid;
    const child = childPids(pid).find((c) => comm(c) === "node");
    if (child !== undefined) return child;
    if (Date.now() > deadline) throw new Error(`no node process at or under PID ${pid}`);
    await sleep(5);
  }
}

function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    const text = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim();
    if (text !== "") out.push(...text.split(/\s+/).map(Number));
  }
  return out;
}

interface Cpu {
  /** utime + stime of the process itself, seconds. */
  readonly self: number;
  /** cutime + cstime: children it has reaped (the ip/bridge/sysctl it runs), seconds. */
  readonly children: number;
}

function readCpu(pid: number): Cpu {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after "(comm)": state is field 3, so utime (14) … cstime (17) are at 11 … 14 here.
  const f = stat
    .slice(stat.lastIndexOf(")") + 2)
    .split(" ")
    .map(Number);
  const at = (i: number): number => f[i] ?? 0;
  return { self: (at(11) + at(12)) / CLK_TCK, children: (at(13) + at(14)) / CLK_TCK };
}

/** Peak resident set size (VmHWM) in MiB. */
function peakRssMiB(pid: number): number {
  const match = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match?.[1] === undefined ? Number.NaN : Number(match[1]) / 1024;
}

// ---- kernel polling -------------------------------------------------------------------------------

const nowNs = (): bigint => process.hrtime.bigint();
const msSince = (start: bigint, end: bigint = nowNs()): number => Number(end - start) / 1e6;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * twill's routes in `ns`. Plain text and `ip -n` (a setns, no mount namespace like `ip netns exec`):
 * the cheapest dump there is, because this runs in a loop next to the agent on a 2-core machine.
 */
async function countRoutes(ns: string): Promise<number> {
  const { stdout } = await execa("ip", [
    "-n",
    ns,
    "-4",
    "route",
    "show",
    "proto",
    String(TWILL_ROUTE_PROTOCOL),
  ]);
  return stdout.split("\n").filter((l) => l.trim() !== "").length;
}

/** Polls until `ns` holds exactly `count` twill routes; returns the hrtime at the end of that dump. */
async function waitRouteCount(
  ns: string,
  count: number,
  timeoutMs: number,
  intervalMs = 25,
): Promise<bigint> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const last = await countRoutes(ns);
    if (last === count) return nowNs();
    if (Date.now() > deadline)
      throw new Error(`${ns}: ${last} twill routes after ${timeoutMs} ms, want ${count}`);
    await sleep(intervalMs);
  }
}

interface Objects {
  routes: number;
  neighbours: number;
  fdb: number;
}

/** Everything of ours in the kernel, read with twill's own readers. */
async function readObjects(host: Host): Promise<Objects> {
  const [routes, neighbours, fdb] = await Promise.all([
    readRoutes(host.runner, { protocol: TWILL_ROUTE_PROTOCOL }),
    readNeighbours(host.runner, VXLAN_DEV),
    readFdb(host.runner, VXLAN_DEV),
  ]);
  return {
    routes: routes.length,
    neighbours: neighbours.filter((n) => n.state.includes("PERMANENT")).length,
    fdb: fdb.filter((e) => e.dst !== undefined).length,
  };
}

function checkObjects(what: string, got: Objects, n: number): void {
  if (got.routes !== n || got.neighbours !== n || got.fdb !== n)
    throw new Error(`${what}: want ${n} of each, kernel has ${JSON.stringify(got)}`);
}

// ---- the cluster and its bookkeeping ----------------------------------------------------------------

let net: Cluster | undefined;
let etcd: EtcdServer | undefined;
let writer: Writer | undefined;
const agents = new Set<AgentProcess>();
let hostCounter = 0;

async function freshHost(): Promise<Host> {
  if (!net) throw new Error("no cluster");
  hostCounter += 1;
  return net.addHost(hostCounter);
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`internal: no ${what}`);
  return value;
}

async function writeConfigAndPeers(prefix: string, list: readonly Peer[]): Promise<void> {
  const w = need(writer, "writer");
  await w.put([[`${prefix}/config`, NETWORK_CONFIG]], 1);
  await w.put(list.map((p) => [p.key, p.value] as const));
}

interface RunningAgent {
  readonly agent: AgentProcess;
  readonly host: Host;
  readonly pid: number;
  readonly startNs: bigint;
  readonly startWall: number;
}

function launchAgent(host: Host, prefix: string, extra: readonly string[] = []): RunningAgent {
  const startNs = nowNs();
  const startWall = Date.now();
  const agent = startAgent({
    netns: host.ns,
    etcdEndpoint: need(etcd, "etcd").endpoint,
    prefix,
    args: ["--iface=eth0", ...extra],
  });
  agents.add(agent);
  return { agent, host, pid: agent.process.pid, startNs, startWall };
}

/** Stops the agent and deletes its own lease, so the next agent on this prefix sees only the fake peers. */
async function stopAgent(running: RunningAgent, prefix: string): Promise<void> {
  const env = running.agent.subnetEnv();
  await running.agent.destroy();
  agents.delete(running.agent);
  if (env !== undefined) {
    const { network, prefixLen } = subnetLine(env);
    await need(writer, "writer").delete([`${prefix}/subnets/${network}-${prefixLen}`], 1);
  }
}

function logTime(agent: RunningAgent, msg: string): number | undefined {
  const line = agent.agent.logs().find((l) => l.msg === msg);
  return typeof line?.time === "string" ? Date.parse(line.time) - agent.startWall : undefined;
}

// ---- 1. cold start ----------------------------------------------------------------------------------

interface AgentColdRun {
  /** Agent start → every route in the kernel (and then neighbours and FDB, checked). */
  totalMs: number;
  /** Sum of the agent's own "data plane reconciled" round durations (the programming work itself). */
  roundsMs: number;
  rounds: number;
  /** Agent start → "subnet file written" (node start-up, etcd connect, lease) from its log. */
  leaseMs: number | undefined;
  cpuSeconds: number;
  childCpuSeconds: number;
  peakRssMiB: number;
}

async function coldAgent(prefix: string, n: number): Promise<AgentColdRun> {
  const host = await freshHost();
  const running = launchAgent(host, prefix);
  try {
    const pid = await nodePid(running.pid);
    const done = await waitRouteCount(host.ns, n, 300_000);
    const totalMs = msSince(running.startNs, done);
    const cpu = readCpu(pid);
    const rss = peakRssMiB(pid);
    checkObjects(`agent ${host.ns}`, await readObjects(host), n);
    const rounds = running.agent.logs().filter((l) => l.msg === "data plane reconciled");
    const roundsMs = rounds.reduce(
      (sum, l) => sum + (typeof l.durationMs === "number" ? l.durationMs : 0),
      0,
    );
    return {
      totalMs,
      roundsMs,
      rounds: rounds.length,
      leaseMs: logTime(running, "subnet file written"),
      cpuSeconds: cpu.self,
      childCpuSeconds: cpu.children,
      peakRssMiB: rss,
    };
  } finally {
    await stopAgent(running, prefix);
  }
}

/** The lines the agent would run for these peers on an empty kernel: desiredFor → plan → toBatches. */
function batchesFor(list: readonly Peer[]): OpBatch[] {
  const own = parseCidr("10.255.255.0/24");
  const ip = parseIPv4("198.18.0.250");
  const facts = {
    external: { name: "eth0", index: 2, mtu: 1500, ifaceIp: ip, publicIp: ip },
    connected: [parseCidr("198.18.0.0/24")],
  };
  const { desired } = desiredFor(
    config.backend,
    own,
    list.map((p) => p.lease),
    facts,
  );
  const ops = plan(
    desired,
    { routes: [], neighbours: [], fdb: [] },
    { routeProtocol: TWILL_ROUTE_PROTOCOL, vxlanDev: VXLAN_DEV },
  );
  return toBatches(ops, TWILL_ROUTE_PROTOCOL);
}

/** A host namespace with the VXLAN device the agent would create (created before the clock starts). */
async function vxlanHost(): Promise<Host> {
  const host = await freshHost();
  const ip = async (args: string[]): Promise<void> => {
    await execa("ip", ["-n", host.ns, ...args]);
  };
  await ip(
    ["link", "add", VXLAN_DEV, "address", "02:ff:ff:ff:ff:01", "type", "vxlan", "id", "1"].concat([
      "local",
      host.address,
      "dev",
      "eth0",
      "dstport",
      "8472",
      "nolearning",
    ]),
  );
  await ip(["link", "set", VXLAN_DEV, "mtu", "1450", "up"]);
  await ip(["address", "add", "10.255.255.0/32", "dev", VXLAN_DEV]);
  return host;
}

/** Runs ip/bridge with `-n <ns>`, as the agent runs them in its own namespace (no `ip netns exec`). */
function nsFlagRunner(ns: string): CommandRunner {
  return {
    where: `-n ${ns}`,
    run: async (cmd, args, input) => {
      const r = await execa(cmd, ["-n", ns, ...args], {
        reject: false,
        ...(input === undefined ? {} : { input }),
      });
      return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 };
    },
    start: () => {
      throw new Error("not needed here");
    },
  };
}

/** The same lines: "raw" = plain `-force -batch -`; "runBatch" = twill's executor (marker lines, parsing). */
async function coldBatch(
  batches: readonly OpBatch[],
  n: number,
  mode: "raw" | "runBatch",
): Promise<{ ms: number; bridgeMs: number; ipMs: number }> {
  const host = await vxlanHost();
  const runner = nsFlagRunner(host.ns);
  const start = nowNs();
  const perTool = { bridge: 0, ip: 0 };
  for (const batch of batches) {
    const batchStart = nowNs();
    if (mode === "raw") {
      const input = `${batch.lines.join("\n")}\n`;
      const r = await execa(batch.tool, ["-n", host.ns, "-force", "-batch", "-"], { input, reject: false });
      if (r.exitCode !== 0) throw new Error(`${batch.tool} -batch failed: ${r.stderr.slice(0, 500)}`);
    } else {
      const r = await runBatch(runner, batch.tool, batch.lines);
      if (r.failed.length > 0)
        throw new Error(`runBatch: ${r.failed.length} failed, first: ${r.failed[0]?.error ?? ""}`);
    }
    perTool[batch.tool] += msSince(batchStart);
  }
  const ms = msSince(start);
  checkObjects(`${mode} ${host.ns}`, await readObjects(host), n);
  return { ms, bridgeMs: perTool.bridge, ipMs: perTool.ip };
}

interface ColdResult {
  peers: number;
  runs: { agent: AgentColdRun; rawMs: number; rawBridgeMs: number; rawIpMs: number; runBatchMs: number }[];
  median: {
    agentTotalMs: number;
    agentRoundsMs: number;
    agentLeaseMs: number;
    rawMs: number;
    /** The raw figure split: `bridge -batch` (FDB) and `ip -batch` (neighbours, then routes). */
    rawBridgeMs: number;
    rawIpMs: number;
    runBatchMs: number;
    agentCpuSeconds: number;
    agentChildCpuSeconds: number;
  };
  /** The figures: agent start → all programmed, and the agent's rounds alone, over the raw batch. */
  ratioTotalToRaw: number;
  ratioRoundsToRaw: number;
  ratioRunBatchToRaw: number;
  peakRssMiB: number;
  objects: { routes: number; neighbours: number; fdb: number; batchLines: number };
}

async function coldStart(n: number): Promise<ColdResult> {
  const prefix = `/bench-cold-${n}/network`;
  const list = peers(prefix, 0, n);
  await writeConfigAndPeers(prefix, list);
  const batches = batchesFor(list);
  const result: ColdResult["runs"] = [];
  for (let run = 0; run < runs; run++) {
    // Interleaved, so a noisy moment hits all three alike.
    const agent = await coldAgent(prefix, n);
    const raw = await coldBatch(batches, n, "raw");
    const rawMs = raw.ms;
    const runBatchMs = (await coldBatch(batches, n, "runBatch")).ms;
    result.push({ agent, rawMs, rawBridgeMs: raw.bridgeMs, rawIpMs: raw.ipMs, runBatchMs });
    console.log(
      `  cold start N=${n} run ${run + 1}/${runs}: agent ${round(agent.totalMs)} ms (rounds ${round(agent.roundsMs)} ms), ` +
        `raw batch ${round(rawMs)} ms, runBatch ${round(runBatchMs)} ms, RSS ${round(agent.peakRssMiB, 1)} MiB`,
    );
  }
  const med = (f: (r: ColdResult["runs"][number]) => number | undefined): number =>
    round(median(result.map(f).filter((v): v is number => v !== undefined)));
  const m = {
    agentTotalMs: med((r) => r.agent.totalMs),
    agentRoundsMs: med((r) => r.agent.roundsMs),
    agentLeaseMs: med((r) => r.agent.leaseMs),
    rawMs: med((r) => r.rawMs),
    rawBridgeMs: med((r) => r.rawBridgeMs),
    rawIpMs: med((r) => r.rawIpMs),
    runBatchMs: med((r) => r.runBatchMs),
    agentCpuSeconds: med((r) => r.agent.cpuSeconds),
    agentChildCpuSeconds: med((r) => r.agent.childCpuSeconds),
  };
  return {
    peers: n,
    runs: result.map((r) => ({
      agent: {
        ...r.agent,
        totalMs: round(r.agent.totalMs),
        roundsMs: round(r.agent.roundsMs),
        peakRssMiB: round(r.agent.peakRssMiB, 1),
      },
      rawMs: round(r.rawMs),
      rawBridgeMs: round(r.rawBridgeMs),
      rawIpMs: round(r.rawIpMs),
      runBatchMs: round(r.runBatchMs),
    })),
    median: m,
    ratioTotalToRaw: round(m.agentTotalMs / m.rawMs, 1),
    ratioRoundsToRaw: round(m.agentRoundsMs / m.rawMs, 1),
    ratioRunBatchToRaw: round(m.runBatchMs / m.rawMs, 2),
    peakRssMiB: round(Math.max(...result.map((r) => r.agent.peakRssMiB)), 1),
    objects: {
      routes: n,
      neighbours: n,
      fdb: n,
      batchLines: batches.reduce((s, b) => s + b.lines.length, 0),
    },
  };
}

// ---- 2. peer events --------------------------------------------------------------------------------

/**
 * Route arrivals from `ip monitor route` in the host namespace. The kernel multicasts each route the
 * moment it is inserted and `ip monitor` flushes every event, so the timestamp taken here is late only
 * by a pipe hop (well under a millisecond). Polling a dump instead would add its period plus a process
 * start per poll (several ms) to every sample, and its load would compete with the agent for the CPUs.
 */
class RouteMonitor {
  private readonly seen = new Map<string, bigint>();
  private readonly waiters = new Map<string, () => void>();
  private readonly started: Started;

  constructor(cluster: Cluster, ns: string) {
    const started = cluster.spawn(ns, "ip", ["monitor", "route"]);
    this.started = started;
    createInterface({ input: started.child.stdout ?? process.stdin }).on("line", (line) => {
      const at = nowNs();
      if (line.startsWith("Deleted")) {
        const dst = line.split(" ")[1];
        if (dst !== undefined) this.seen.delete(dst);
        return;
      }
      const dst = line.split(" ")[0];
      if (dst === undefined || this.seen.has(dst)) return;
      this.seen.set(dst, at);
      this.waiters.get(dst)?.();
      this.waiters.delete(dst);
    });
  }

  /** hrtime at which `dst` appeared, waiting for it up to `timeoutMs`; undefined on timeout. */
  async arrival(dst: string, timeoutMs: number): Promise<bigint | undefined> {
    const known = this.seen.get(dst);
    if (known !== undefined) return known;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.waiters.set(dst, () => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.waiters.delete(dst);
    return this.seen.get(dst);
  }

  has(dst: string): bigint | undefined {
    return this.seen.get(dst);
  }

  stop(): Promise<void> {
    return this.started.stop(2000);
  }
}

interface EventResult {
  basePeers: number;
  single: { events: number; p50Ms: number; p99Ms: number; maxMs: number; minMs: number; method: string };
  burst: {
    leases: number;
    runs: { ms: number; putMs: number; method: string }[];
    medianMs: number;
    medianPutMs: number;
  };
}

async function peerEvents(): Promise<EventResult> {
  const w = need(writer, "writer");
  const cluster = need(net, "cluster");
  const prefix = "/bench-events/network";
  await writeConfigAndPeers(prefix, peers(prefix, 0, eventBasePeers));
  const host = await freshHost();
  const running = launchAgent(host, prefix);
  let monitor: RouteMonitor | undefined;
  try {
    await waitRouteCount(host.ns, eventBasePeers, 120_000);
    const mon = new RouteMonitor(cluster, host.ns);
    monitor = mon;
    // Warm-up events until the monitor has demonstrably subscribed (it prints nothing when ready).
    let expected = eventBasePeers;
    let warm = false;
    for (let i = 0; i < 20 && !warm; i++) {
      const p = peer(prefix, 20_000 + i);
      await w.put([[p.key, p.value]], 1);
      expected += 1;
      warm = (await mon.arrival(p.dst, 3000)) !== undefined;
    }
    if (!warm) throw new Error("ip monitor route never reported a route");

    const latencies: number[] = [];
    const singles = peers(prefix, 30_000, singleEvents);
    for (const p of singles) {
      const answer = await w.put([[p.key, p.value]], 1);
      const seen = await mon.arrival(p.dst, 30_000);
      if (seen === undefined) throw new Error(`route ${p.dst} not seen within 30 s`);
      latencies.push(msSince(BigInt(answer.startNs), seen));
    }
    expected += singleEvents;
    console.log(
      `  ${singleEvents} single events: p50 ${round(percentile(latencies, 50))} ms, p99 ${round(percentile(latencies, 99))} ms`,
    );
    // Back to the base set (plus warm-up peers) before the bursts.
    await w.delete(singles.map((p) => p.key));
    expected -= singleEvents;
    await waitRouteCount(host.ns, expected, 120_000, 100);

    const burstRuns: EventResult["burst"]["runs"] = [];
    for (let b = 0; b < bursts; b++) {
      const list = peers(prefix, 40_000 + b * burstSize, burstSize);
      const target = expected + burstSize;
      // A dump poll runs alongside as a fallback, should the monitor drop events (ENOBUFS) in a burst.
      const polled = waitRouteCount(host.ns, target, 120_000, 50);
      const answer = await w.put(
        list.map((p) => [p.key, p.value] as const),
        burstSize,
      );
      const polledAt = await polled;
      const start = BigInt(answer.startNs);
      const arrivals = list.map((p) => mon.has(p.dst)).filter((a): a is bigint => a !== undefined);
      const complete = arrivals.length === list.length;
      const last = complete ? arrivals.reduce((m, a) => (a > m ? a : m), 0n) : polledAt;
      burstRuns.push({
        ms: round(msSince(start, last)),
        putMs: round(msSince(start, BigInt(answer.endNs))),
        method: complete ? "ip monitor" : "dump poll (monitor missed events)",
      });
      console.log(`  burst of ${burstSize}: ${round(msSince(start, last))} ms until all routes present`);
      await w.delete(list.map((p) => p.key));
      await waitRouteCount(host.ns, expected, 120_000, 100);
    }
    return {
      basePeers: eventBasePeers,
      single: {
        events: singleEvents,
        p50Ms: round(percentile(latencies, 50)),
        p99Ms: round(percentile(latencies, 99)),
        maxMs: round(Math.max(...latencies)),
        minMs: round(Math.min(...latencies)),
        method: "etcd put start (writer hrtime) → line from `ip monitor route` (bench hrtime)",
      },
      burst: {
        leases: burstSize,
        runs: burstRuns,
        medianMs: round(median(burstRuns.map((r) => r.ms))),
        medianPutMs: round(median(burstRuns.map((r) => r.putMs))),
      },
    };
  } finally {
    await monitor?.stop();
    await stopAgent(running, prefix);
  }
}

// ---- 3. steady state -----------------------------------------------------------------------------

/**
 * Counts reconcile rounds by the route dump each one runs (`ip -N -j -4 route show table 254`), seen
 * as a child of the agent. No-op rounds log nothing, so this is the only outside view of them.
 */
function countRounds(pid: number): { stop: () => number } {
  const seen = new Set<number>();
  const timer = setInterval(() => {
    try {
      for (const child of childPids(pid)) {
        if (seen.has(child)) continue;
        const cmdline = readFileSync(`/proc/${child}/cmdline`, "utf8");
        if (cmdline.includes("route\0show")) seen.add(child);
      }
    } catch {
      // a child exited between the two reads
    }
  }, 5);
  return {
    stop: () => {
      clearInterval(timer);
      return seen.size;
    },
  };
}

interface SteadyRun {
  name: string;
  args: string[];
  windowS: number;
  rounds: number;
  cpuSeconds: number;
  childCpuSeconds: number;
  percentOfCore: number;
  peakRssMiB: number;
}

async function steadyRun(name: string, args: string[]): Promise<SteadyRun> {
  const prefix = `/bench-cold-${steadyPeers}/network`;
  const host = await freshHost();
  const running = launchAgent(host, prefix, args);
  try {
    const pid = await nodePid(running.pid);
    await waitRouteCount(host.ns, steadyPeers, 300_000, 100);
    await sleep(3000); // let start-up rounds and the first GCs pass
    const counter = countRounds(pid);
    const before = readCpu(pid);
    const start = nowNs();
    await sleep(steadyWindowS * 1000);
    const after = readCpu(pid);
    const windowS = msSince(start) / 1000;
    const rounds = counter.stop();
    const cpuSeconds = after.self - before.self;
    const childCpuSeconds = after.children - before.children;
    const result = {
      name,
      args,
      windowS: round(windowS, 1),
      rounds,
      cpuSeconds: round(cpuSeconds, 3),
      childCpuSeconds: round(childCpuSeconds, 3),
      percentOfCore: round(((cpuSeconds + childCpuSeconds) / windowS) * 100, 2),
      peakRssMiB: round(peakRssMiB(pid), 1),
    };
    console.log(
      `  ${name}: ${rounds} rounds in ${result.windowS} s, agent ${result.cpuSeconds} s + children ${result.childCpuSeconds} s CPU ` +
        `(${result.percentOfCore}% of one core), RSS ${result.peakRssMiB} MiB`,
    );
    return result;
  } finally {
    await stopAgent(running, prefix);
  }
}

interface SteadyResult {
  peers: number;
  intervalS: number;
  runs: SteadyRun[];
  /** (CPU with resync − idle CPU) / rounds; agent process and its children (ip, bridge, sysctl) apart. */
  perResync: Record<string, { agentMs: number; childrenMs: number; totalMs: number }>;
  /** Extra CPU of the resync as % of one core at 2 s and at the default 30 s interval. */
  percentOfCoreAt2s: Record<string, number>;
  percentOfCoreAt30s: Record<string, number>;
}

async function steadyState(): Promise<SteadyResult> {
  // Forward rules off in all three, so the iptables check every 5 s does not blur the resync figure.
  const common = ["--iptables-forward-rules=false"];
  const idle = await steadyRun("idle (resync 3600s, no kernel watch)", [
    "--resync-interval=3600s",
    "--kernel-watch=false",
    ...common,
  ]);
  const noWatch = await steadyRun(`resync ${steadyIntervalS}s, no kernel watch`, [
    `--resync-interval=${steadyIntervalS}s`,
    "--kernel-watch=false",
    ...common,
  ]);
  const watch = await steadyRun(`resync ${steadyIntervalS}s, kernel watch`, [
    `--resync-interval=${steadyIntervalS}s`,
    ...common,
  ]);
  const perResync: SteadyResult["perResync"] = {};
  const at2: Record<string, number> = {};
  const at30: Record<string, number> = {};
  for (const run of [noWatch, watch]) {
    const scale = run.windowS / idle.windowS;
    const agentS = run.cpuSeconds - idle.cpuSeconds * scale;
    const childrenS = run.childCpuSeconds - idle.childCpuSeconds * scale;
    const rounds = Math.max(1, run.rounds - idle.rounds);
    const totalMs = ((agentS + childrenS) / rounds) * 1000;
    perResync[run.name] = {
      agentMs: round((agentS / rounds) * 1000, 1),
      childrenMs: round((childrenS / rounds) * 1000, 1),
      totalMs: round(totalMs, 1),
    };
    at2[run.name] = round(((agentS + childrenS) / run.windowS) * 100, 2);
    at30[run.name] = round((totalMs / 1000 / 30) * 100, 2);
  }
  return {
    peers: steadyPeers,
    intervalS: steadyIntervalS,
    runs: [idle, noWatch, watch],
    perResync,
    percentOfCoreAt2s: at2,
    percentOfCoreAt30s: at30,
  };
}

// ---- main ----------------------------------------------------------------------------------------

async function teardown(): Promise<void> {
  await Promise.allSettled([...agents].map((a) => a.destroy()));
  agents.clear();
  await writer?.stop();
  await net?.destroy();
}

// Ctrl-C still tears down (the harness's exit hook alone would only SIGKILL and delete namespaces).
tearDownOnSignal(teardown);

const startedAt = Date.now();
try {
  console.log(
    `dataplane benchmark${quick ? " (quick)" : ""}: ${runs} run(s), cold start N = ${coldSizes.join(", ")}, ` +
      `${singleEvents} single events, ${bursts} burst(s) of ${burstSize}, steady state at ${steadyPeers} peers`,
  );
  net = await createUnderlay();
  etcd = await net.startEtcd();
  writer = new Writer(net.switchNs, etcd.endpoint);
  await writer.ready;

  const cold: Record<string, ColdResult> = {};
  for (const n of coldSizes) {
    console.log(`cold start, ${n} peers:`);
    const r = await coldStart(n);
    cold[String(n)] = r;
    console.log(
      `cold start, ${n} peers: agent ${r.median.agentTotalMs} ms (its rounds ${r.median.agentRoundsMs} ms), ` +
        `raw ip/bridge -batch ${r.median.rawMs} ms → ratio ${r.ratioTotalToRaw}× (rounds ${r.ratioRoundsToRaw}×); ` +
        `runBatch ${r.median.runBatchMs} ms; peak RSS ${r.peakRssMiB} MiB`,
    );
  }

  console.log(`peer events (${eventBasePeers} peers synced):`);
  const events = await peerEvents();
  console.log(
    `peer event → route: p50 ${events.single.p50Ms} ms, p99 ${events.single.p99Ms} ms over ${events.single.events}; ` +
      `burst of ${events.burst.leases}: median ${events.burst.medianMs} ms`,
  );

  console.log(`steady state, ${steadyPeers} peers, ${steadyWindowS} s windows:`);
  const steady = await steadyState();
  for (const [name, r] of Object.entries(steady.perResync)) {
    console.log(
      `resync CPU (${name}): ${r.totalMs} ms per resync (agent ${r.agentMs} + children ${r.childrenMs}); ` +
        `${steady.percentOfCoreAt2s[name] ?? Number.NaN}% of a core at ${steadyIntervalS} s, ` +
        `${steady.percentOfCoreAt30s[name] ?? Number.NaN}% at 30 s`,
    );
  }

  const path = writeResult("dataplane", {
    quick,
    runs,
    machine: { cpus: cpus().length, kernel: release() },
    networkConfig: NETWORK_CONFIG,
    coldStart: cold,
    peerEvents: events,
    steadyState: steady,
    totalSeconds: round((Date.now() - startedAt) / 1000, 1),
  });
  console.log(`written ${path} (${round((Date.now() - startedAt) / 1000, 1)} s)`);
} finally {
  await teardown();
}
