// Data-plane benchmarks: every figure of the data-plane issue, for one agent build, inside network
// namespaces made by the test harness (the root namespace is never touched; everything is torn down in
// `finally` and on Ctrl-C, processes are ended by PID). See bench/README.md for what each figure is.
//
//   npx tsx bench/dataplane.ts                                          # this checkout's dist/
//   AGENT_CLI=/work/baseline/dist/cli/main.js npx tsx bench/dataplane.ts  # another build
//   npx tsx bench/dataplane.ts compare baseline main                    # the two result files side by side
//
// Writes bench/results/dataplane-<label>.json (BENCH_LABEL, default: the build's checkout directory).
// BENCH_QUICK=1 is a small smoke run; BENCH_ONLY=cold,events,drift,memory,idle,wireguard,dualstack runs a
// subset; BENCH_RUNS, BENCH_WINDOW, BENCH_EVENTS override repetitions, the CPU window (s) and the single
// events; BENCH_WG_PEERS, BENCH_WG_WINDOW the wireguard cold start's peers (1,000) and idle window (20 s);
// BENCH_DS_PEERS the dual-stack cold start's peers (1,000).
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";
import { cpus, loadavg, release } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createUnderlay, type Cluster, type Host } from "../test/helpers/netns.js";
import type { EtcdServer } from "../test/helpers/etcd.js";
import { startMountNamespace, type MountNamespace } from "../test/helpers/wireguard.js";
import { recordedWireGuardGoPid } from "../src/backends/wireguard/wireguard-go.js";
import { decodeLeaseAttrs } from "../src/lease/attrs.js";
import {
  EXTRA_NODE_FLAGS,
  logWall,
  metricSum,
  num,
  readCpu,
  readRss,
  readTreeCpu,
  readThreadCpu,
  threadCpuDelta,
  resolveBuild,
  RunningAgent,
  scrapeMetrics,
  str,
  type AgentBuild,
  type AgentOptions,
  type LogLine,
} from "./agent-under-test.js";
import { median, percentile, round, tearDownOnSignal, writeResult } from "./lib.js";
import {
  DUALSTACK_NETWORK_CONFIG,
  dualStackPeers,
  kv,
  NETWORK_CONFIG,
  peer,
  peers,
  VXLAN_DEV,
  WIREGUARD_DEV,
  WIREGUARD_NETWORK_CONFIG,
  WIREGUARD_PORT,
  wireguardPeers,
  Writer,
  type DualStackPeer,
  type Peer,
  type WireGuardPeer,
} from "./peers.js";
import {
  assertIsWireGuardGo,
  hexKey,
  peersMatching,
  privateFile,
  startWireGuardGo,
  uapiPeers,
  uapiSocket,
  waitForUapi,
  wgConfig,
  wgIn,
  wgKeyPair,
} from "./wireguard.js";
import {
  added,
  batchLines,
  countRoutes,
  dualStackBatchLines,
  makeVxlanV6Device,
  routesPresent,
  KernelMonitor,
  type MonitorPriority,
  type WatchKind,
  kernelVsEtcd,
  makeVxlanDevice,
  MASQ_CHAIN,
  msSince,
  neighGone,
  neighIs,
  nowNs,
  rawBatch,
  removed,
  RulePoller,
  sleep,
  waitRouteCount,
  type KindDiff,
  type StateCheck,
} from "./witness.js";

const here = dirname(fileURLToPath(import.meta.url));
const quick = process.env.BENCH_QUICK === "1";
const envNumber = (name: string, fallback: number): number => {
  const value = process.env[name];
  return value === undefined || value === "" ? fallback : Number(value);
};

/** Sizes and lengths; BENCH_QUICK shrinks them all. */
const cfg = {
  runs: envNumber("BENCH_RUNS", quick ? 1 : 3),
  coldSizes: quick ? [100, 300] : [1000, 5000],
  eventBases: quick ? [20, 300] : [100, 5000],
  /** Peers for memory and idle CPU. */
  bigPeers: quick ? 300 : 5000,
  singleEvents: envNumber("BENCH_EVENTS", quick ? 30 : 1000),
  /** Single events stop after this long even if fewer were done (a slow agent at 5,000 peers). */
  singleMaxS: quick ? 15 : 180,
  /** Pause after each single event's route is seen, before the next put. */
  eventGapMs: 20,
  burstSize: quick ? 100 : 1000,
  bursts: quick ? 1 : 3,
  churnOps: quick ? 150 : 2000,
  churnSeconds: quick ? 5 : 60,
  driftSamples: quick ? 3 : 10,
  /** A drift sample not repaired in this time counts as not repaired (≥ the baseline's 30 s resync). */
  driftTimeoutS: quick ? 10 : 40,
  windowS: envNumber("BENCH_WINDOW", quick ? 8 : 60),
  fastResyncS: 2,
  memoryHoldS: quick ? 3 : 10,
  /** WireGuard cold start: peers, and the idle window after it (agent and wireguard-go CPU). */
  wireguardPeers: envNumber("BENCH_WG_PEERS", quick ? 100 : 1000),
  wireguardWindowS: envNumber("BENCH_WG_WINDOW", quick ? 5 : 20),
  /** How often the device is read while waiting for the WireGuard peers (UAPI get, ms). */
  wireguardPollMs: 10,
  /** Dual-stack cold start: peers (each with an IPv4 and an IPv6 subnet: 6 kernel objects). */
  dualStackPeers: envNumber("BENCH_DS_PEERS", quick ? 100 : 1000),
  /** The issue's targets. */
  target: {
    singleP99Ms: 15,
    burstMs: 300,
    programmingToRaw: 1.0,
    totalToRaw: 1.5,
    rssMiB: 100,
    idlePercent: 0.5,
  },
};
const only = new Set(
  (process.env.BENCH_ONLY ?? "cold,events,drift,memory,idle,wireguard,dualstack").split(","),
);

const load = (): number => round(loadavg()[0] ?? Number.NaN, 2);

// ---- figures ------------------------------------------------------------------------------------------

interface Figure {
  readonly what: string;
  readonly value: number;
  readonly unit: string;
  /** The issue's target, in the same unit; ofTarget = value ÷ target. */
  readonly target?: number;
  readonly ofTarget?: number;
  /** A limit measured in the same run (what), its value and value ÷ it. */
  readonly limit?: string;
  readonly limitValue?: number;
  readonly ofLimit?: number;
  /** 1-minute load average when the measurement ended. */
  readonly load: number;
}

const figures: Record<string, Figure> = {};

function figure(
  id: string,
  what: string,
  value: number,
  unit: string,
  extra: { target?: number; limit?: string; limitValue?: number; load?: number } = {},
): void {
  const f: Figure = {
    what,
    value: round(value, unit === "%" ? 3 : 2),
    unit,
    ...(extra.target === undefined ? {} : { target: extra.target, ofTarget: round(value / extra.target, 2) }),
    ...(extra.limit === undefined || extra.limitValue === undefined
      ? {}
      : {
          limit: extra.limit,
          limitValue: round(extra.limitValue, 2),
          ofLimit: round(value / extra.limitValue, 2),
        }),
    load: extra.load ?? load(),
  };
  figures[id] = f;
}

// ---- the cluster and its bookkeeping ----------------------------------------------------------------

let build: AgentBuild;
let net: Cluster | undefined;
let etcd: EtcdServer | undefined;
let writer: Writer | undefined;
const agents = new Set<RunningAgent>();
const stoppables = new Set<{ stop(): Promise<void> }>();
let hostCounter = 0;

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`internal: no ${what}`);
  return value;
}

async function freshHost(): Promise<Host> {
  hostCounter += 1;
  return need(net, "cluster").addHost(hostCounter);
}

/** One etcd prefix per peer count, holding the config and exactly that many fake peers between uses. */
const prefixes = new Map<number, { prefix: string; list: Peer[] }>();

async function prefixFor(n: number): Promise<{ prefix: string; list: Peer[] }> {
  const known = prefixes.get(n);
  if (known !== undefined) return known;
  const prefix = `/bench-${n}/network`;
  const list = peers(prefix, 0, n);
  const w = need(writer, "writer");
  await w.put([[`${prefix}/config`, NETWORK_CONFIG]], 1);
  await w.put(list.map(kv));
  const entry = { prefix, list };
  prefixes.set(n, entry);
  return entry;
}

/** Deletes every key of the prefix that is not one of its base peers (leftovers of a measurement). */
async function restorePrefix(n: number): Promise<void> {
  const { prefix, list } = await prefixFor(n);
  const w = need(writer, "writer");
  const keep = new Set([`${prefix}/config`, ...list.map((p) => p.key)]);
  const extra = (await w.list(`${prefix}/`)).map(([k]) => k).filter((k) => !keep.has(k));
  if (extra.length > 0) await w.delete(extra);
}

async function launch(prefix: string, options: AgentOptions = {}, on?: Host): Promise<RunningAgent> {
  const host = on ?? (await freshHost());
  const agent = new RunningAgent(
    need(net, "cluster"),
    host,
    build,
    need(etcd, "etcd").endpoint,
    prefix,
    options,
  );
  agents.add(agent);
  return agent;
}

/** Stops the agent and deletes its own lease, so the next agent on this prefix sees only the fake peers. */
async function stopAgent(agent: RunningAgent): Promise<void> {
  const key = agent.leaseKey();
  await agent.stop();
  agents.delete(agent);
  if (key !== undefined) await need(writer, "writer").delete([key], 1);
}

async function waitSynced(agent: RunningAgent, n: number): Promise<void> {
  try {
    await waitRouteCount(agent.host.ns, n, 300_000, 100);
  } catch (error) {
    throw new Error(`${String(error)}\nagent output (tail):\n${agent.tail()}`, { cause: error });
  }
}

/** Monitors in the agent's host namespace, torn down with the benchmark; `settle()`d before use. */
async function openMonitor(
  host: Host,
  kinds: readonly Exclude<WatchKind, "addr">[],
  priority: MonitorPriority,
): Promise<KernelMonitor> {
  const mon = new KernelMonitor(need(net, "cluster"), host.ns, kinds, priority);
  stoppables.add(mon);
  await mon.settle();
  return mon;
}

async function closeMonitor(mon: KernelMonitor | undefined): Promise<void> {
  if (mon === undefined) return;
  await mon.stop();
  stoppables.delete(mon);
}

/** The agent's reconcile rounds logged in a wall-clock window, by trigger. */
function roundStats(
  agent: RunningAgent,
  sinceWall: number,
  untilWall = Number.POSITIVE_INFINITY,
): Record<string, { rounds: number; ops: number; p50Ms: number; maxMs: number; sumMs: number }> {
  const byTrigger = new Map<string, LogLine[]>();
  for (const line of agent.lines("data plane reconciled", sinceWall, untilWall)) {
    const trigger = str(line, "trigger") ?? "?";
    byTrigger.set(trigger, [...(byTrigger.get(trigger) ?? []), line]);
  }
  const out: Record<string, { rounds: number; ops: number; p50Ms: number; maxMs: number; sumMs: number }> =
    {};
  for (const [trigger, lines] of byTrigger) {
    const durations = lines.map((l) => num(l, "durationMs") ?? 0);
    out[trigger] = {
      rounds: lines.length,
      ops: lines.reduce((s, l) => s + (num(l, "ops") ?? 0), 0),
      p50Ms: round(median(durations)),
      maxMs: round(Math.max(...durations)),
      sumMs: round(durations.reduce((s, d) => s + d, 0)),
    };
  }
  return out;
}

/**
 * Lists the prefix and compares the kernel with it until they are equal or `timeoutMs` passes (with
 * `ipv6`, flannel-v6.1's objects too).
 */
async function converge(
  agent: RunningAgent,
  timeoutMs: number,
  options: { readonly ipv6?: boolean } = {},
): Promise<{ check: StateCheck; afterMs: number }> {
  const start = nowNs();
  const w = need(writer, "writer");
  for (;;) {
    const leases = await w.list(`${agent.prefix}/subnets/`);
    const check = await kernelVsEtcd(agent.host, leases, agent.leaseKey(), options);
    if (check.equal || msSince(start) > timeoutMs) return { check, afterMs: round(msSince(start)) };
    await sleep(250);
  }
}

const stats = (values: readonly number[]) => ({
  n: values.length,
  meanMs: round(values.reduce((s, v) => s + v, 0) / Math.max(1, values.length)),
  p50Ms: round(percentile(values, 50)),
  p99Ms: round(percentile(values, 99)),
  maxMs: round(values.length === 0 ? Number.NaN : Math.max(...values)),
});

// ---- 1. cold start ---------------------------------------------------------------------------------------

interface ColdAgentRun {
  /** Process start → every route in the kernel (then routes, neighbours and FDB checked against etcd). */
  totalMs: number;
  /** How the last route was seen: "ip monitor", or a dump poll if the monitor dropped events. */
  method: string;
  /** Dual-stack: process start → the last IPv4 route, and → the last IPv6 route (totalMs is the later). */
  ipv4RoutesMs?: number;
  ipv6RoutesMs?: number;
  /** Dual-stack: the agent's FLANNEL_IPV6_SUBNET. */
  ipv6Subnet?: string | undefined;
  /** What the check against etcd compared (and found equal), e.g. "100 leases; IPv4: 100 routes, …". */
  checked: string;
  /** Sum of the agent's own "data plane reconciled" durations until then: the programming phase. */
  programmingMs: number;
  rounds: { trigger: string; ops: number; durationMs: number }[];
  subnetFileMs: number | undefined;
  /** The agent's first log lines as "<ms after start> ms <msg>": where the time before programming goes. */
  timeline: string[];
  cpuSeconds: number;
  childCpuSeconds: number;
  peakRssMiB: number;
  load: number;
  /** With `idleS`: the agent's CPU (its own and its children's) over that window after the start. */
  idle?: IdleWindow;
}

interface IdleWindow {
  windowS: number;
  /** % of one core: the agent process (with its reaped children: ip, iptables…). */
  agentPercent: number;
  /** % of one core: its wireguard-go (wireguard only). */
  wireguardGoPercent?: number;
}

/** The agent's CPU over `seconds` (and its wireguard-go's, given its PID), after a 3 s settle. */
async function idleWindow(agentPid: number, seconds: number, wireguardGoPid?: number): Promise<IdleWindow> {
  await sleep(3000);
  const a0 = readCpu(agentPid);
  const w0 = wireguardGoPid === undefined ? undefined : readCpu(wireguardGoPid);
  const start = nowNs();
  await sleep(seconds * 1000);
  const a1 = readCpu(agentPid);
  const w1 = wireguardGoPid === undefined ? undefined : readCpu(wireguardGoPid);
  const windowS = msSince(start) / 1000;
  const pct = (cpuSeconds: number): number => round((cpuSeconds / windowS) * 100, 3);
  return {
    windowS: round(windowS, 1),
    agentPercent: pct(a1.self + a1.children - a0.self - a0.children),
    ...(w0 === undefined || w1 === undefined ? {} : { wireguardGoPercent: pct(w1.self - w0.self) }),
  };
}

async function coldAgent(n: number, idleS?: number): Promise<ColdAgentRun> {
  const { prefix, list } = await prefixFor(n);
  const host = await freshHost();
  return coldAgentOn(host, prefix, `cold start N=${n}`, { v4: list.map((p) => p.dst) }, idleS);
}

/** What a passed check compared: the leases, and per family the routes, neighbours and FDB entries. */
function checkedObjects(check: StateCheck): string {
  const family = (routes: KindDiff, neighbours: KindDiff, fdb: KindDiff): string =>
    `${routes.actual} routes, ${neighbours.actual} neighbours, ${fdb.actual} FDB entries`;
  const v6 =
    check.routes6 === undefined || check.neighbours6 === undefined || check.fdb6 === undefined
      ? ""
      : `; IPv6: ${family(check.routes6, check.neighbours6, check.fdb6)}`;
  return `${check.leases} leases; IPv4: ${family(check.routes, check.neighbours, check.fdb)}${v6}`;
}

/** The agent's warnings and errors (pino level ≥ 40) so far, for a failure's message. */
function complaints(agent: RunningAgent): string {
  return agent
    .logs()
    .filter((l) => (num(l, "level") ?? 0) >= 40)
    .slice(0, 10)
    .map((l) => JSON.stringify(l))
    .join("\n");
}

/**
 * One agent started in `host` on `prefix`; process start → every route of `dsts` (IPv4, and IPv6 with
 * `v6`: a dual-stack agent) in the kernel, then routes, neighbours and FDB entries of those families
 * checked against etcd. Figure 1's measurement, and the dual-stack one's.
 */
async function coldAgentOn(
  host: Host,
  prefix: string,
  what: string,
  dsts: { readonly v4: readonly string[]; readonly v6?: readonly string[] },
  idleS?: number,
  /** Runs after the check against etcd, before the agent stops (a throw fails the run). */
  beforeStop?: (agent: RunningAgent) => Promise<void>,
): Promise<ColdAgentRun> {
  const v6 = dsts.v6;
  const timeoutMs = v6 === undefined ? 300_000 : 120_000;
  // The route monitor rather than a dump poll: a poll of thousands of routes every few ms would compete
  // with the agent for the CPUs, and the raw batch it is compared with has no such company.
  const mon = await openMonitor(host, v6 === undefined ? ["route"] : ["route", "route6"], "normal");
  const agent = await launch(prefix, {}, host);
  try {
    const pid = await agent.pid();
    const exited = agent.process.exited().then((code) => ({ exited: code }));
    const families = await Promise.race([
      Promise.all([
        routesPresent(mon, host.ns, dsts.v4, agent.startNs, timeoutMs, 4),
        v6 === undefined ? undefined : routesPresent(mon, host.ns, v6, agent.startNs, timeoutMs, 6),
      ]),
      exited,
    ]);
    if (!Array.isArray(families))
      throw new Error(
        `${what}: the agent exited (${families.exited}) before every route was there\n${agent.tail()}`,
      );
    const [present4, present6] = families;
    if (present4 === undefined || (v6 !== undefined && present6 === undefined)) {
      const missing = [
        present4 === undefined ? "IPv4" : "",
        v6 !== undefined && present6 === undefined ? "IPv6" : "",
      ]
        .filter((f) => f !== "")
        .join(" and ");
      throw new Error(
        `${what}: ${missing} routes not all present in ${timeoutMs / 1000} s; the agent's warnings:\n` +
          `${complaints(agent) || "(none)"}\nagent output (tail):\n${agent.tail()}`,
      );
    }
    const done = present6 !== undefined && present6.at > present4.at ? present6.at : present4.at;
    const doneWall = Date.now() - msSince(done);
    const totalMs = msSince(agent.startNs, done);
    const cpu = readCpu(pid);
    const rss = readRss(pid);
    const { check } = await converge(agent, 10_000, { ipv6: v6 !== undefined });
    if (!check.equal) throw new Error(`${what}: kernel ≠ etcd: ${JSON.stringify(check)}`);
    await beforeStop?.(agent);
    await closeMonitor(mon); // not left running through an idle window
    const idle = idleS === undefined ? undefined : await idleWindow(pid, idleS);
    // A round is logged as it ends, which can be just after the poll saw the last route: rounds that
    // started before then count (the log has had time to arrive during the check above).
    const rounds = agent
      .lines("data plane reconciled")
      .filter((l) => (logWall(l) ?? 0) - (num(l, "durationMs") ?? 0) <= doneWall)
      .map((l) => ({
        trigger: str(l, "trigger") ?? "?",
        ops: num(l, "ops") ?? 0,
        durationMs: num(l, "durationMs") ?? 0,
      }));
    return {
      totalMs,
      method: present6 === undefined ? present4.method : `IPv4: ${present4.method}; IPv6: ${present6.method}`,
      ...(present6 === undefined
        ? {}
        : {
            ipv4RoutesMs: msSince(agent.startNs, present4.at),
            ipv6RoutesMs: msSince(agent.startNs, present6.at),
            ipv6Subnet: agent.ipv6Subnet(),
          }),
      programmingMs: rounds.reduce((s, r) => s + r.durationMs, 0),
      rounds,
      checked: checkedObjects(check),
      subnetFileMs: agent.msTo("subnet file written"),
      // Without the per-peer "peer added" lines (one per lease).
      timeline: agent
        .logs()
        .filter((l) => l.msg !== "peer added")
        .slice(0, 40)
        .map((l) => `${Math.round((logWall(l) ?? 0) - agent.startWall)} ms ${str(l, "msg") ?? "?"}`),
      cpuSeconds: cpu.self,
      childCpuSeconds: cpu.children,
      peakRssMiB: rss.peakMiB,
      load: load(),
      ...(idle === undefined ? {} : { idle }),
    };
  } finally {
    await closeMonitor(mon);
    await stopAgent(agent);
  }
}

/** The same objects fed to `bridge -batch` then `ip -batch` in a fresh host with flannel.1 made. */
async function coldRaw(list: readonly Peer[]): Promise<{ ms: number; bridgeMs: number; ipMs: number }> {
  const host = await freshHost();
  await makeVxlanDevice(host, "10.255.255.0");
  const lines = batchLines(list);
  const bridgeMs = await rawBatch("bridge", host.ns, lines.bridge);
  const ipMs = await rawBatch("ip", host.ns, lines.ip);
  const routes = await countRoutes(host.ns);
  if (routes !== list.length) throw new Error(`raw batch: ${routes} routes, want ${list.length}`);
  return { ms: bridgeMs + ipMs, bridgeMs, ipMs };
}

async function coldStart(n: number): Promise<object> {
  const { list } = await prefixFor(n);
  const runs: { agent: ColdAgentRun; raw: { ms: number; bridgeMs: number; ipMs: number } }[] = [];
  for (let run = 0; run < cfg.runs; run++) {
    // Interleaved, so a noisy moment hits both alike.
    const agent = await coldAgent(n);
    const raw = await coldRaw(list);
    runs.push({ agent, raw });
    console.log(
      `  N=${n} run ${run + 1}/${cfg.runs}: agent ${round(agent.totalMs)} ms (programming ${round(agent.programmingMs)} ms ` +
        `in ${agent.rounds.length} round(s)), raw ${round(raw.ms)} ms, RSS ${round(agent.peakRssMiB, 1)} MiB, load ${agent.load}`,
    );
  }
  const med = (f: (r: (typeof runs)[number]) => number | undefined): number =>
    median(runs.map(f).filter((v): v is number => v !== undefined));
  const m = {
    totalMs: round(med((r) => r.agent.totalMs)),
    programmingMs: round(med((r) => r.agent.programmingMs)),
    subnetFileMs: round(med((r) => r.agent.subnetFileMs)),
    rawMs: round(med((r) => r.raw.ms)),
    rawBridgeMs: round(med((r) => r.raw.bridgeMs)),
    rawIpMs: round(med((r) => r.raw.ipMs)),
    cpuSeconds: round(
      med((r) => r.agent.cpuSeconds),
      3,
    ),
    childCpuSeconds: round(
      med((r) => r.agent.childCpuSeconds),
      3,
    ),
    peakRssMiB: round(
      med((r) => r.agent.peakRssMiB),
      1,
    ),
    load: round(med((r) => r.agent.load)),
  };
  const limit = `raw bridge+ip -batch of the same ${3 * n} objects`;
  figure(`cold.${n}.programmingMs`, `cold start ${n}: programming phase`, m.programmingMs, "ms", {
    target: cfg.target.programmingToRaw * m.rawMs,
    limit,
    limitValue: m.rawMs,
    load: m.load,
  });
  figure(`cold.${n}.totalMs`, `cold start ${n}: process start → all routes`, m.totalMs, "ms", {
    target: cfg.target.totalToRaw * m.rawMs,
    limit,
    limitValue: m.rawMs,
    load: m.load,
  });
  return {
    peers: n,
    median: m,
    ratioProgrammingToRaw: round(m.programmingMs / m.rawMs, 2),
    ratioTotalToRaw: round(m.totalMs / m.rawMs, 2),
    runs: runs.map((r) => ({
      agent: {
        ...r.agent,
        totalMs: round(r.agent.totalMs),
        programmingMs: round(r.agent.programmingMs),
        peakRssMiB: round(r.agent.peakRssMiB, 1),
      },
      raw: { ms: round(r.raw.ms), bridgeMs: round(r.raw.bridgeMs), ipMs: round(r.raw.ipMs) },
    })),
  };
}

// ---- 1b. cold start with WireGuard peers ----------------------------------------------------------------
//
// The wireguard backend on wireguard-go (this kernel has no WireGuard module). Each agent start gets a
// fresh host namespace and a mount namespace of its own (a private /run/wireguard for wireguard-go's
// socket); the device is read from here through /proc/<holder>/root, straight from wireguard-go's socket.

const execFileP = promisify(execFile);
const mountNamespaces = new Set<MountNamespace>();
const WG_MTU = 1500 - 80;

async function withMountNamespace<T>(body: (mountNs: MountNamespace) => Promise<T>): Promise<T> {
  const mountNs = await startMountNamespace();
  mountNamespaces.add(mountNs);
  try {
    return await body(mountNs);
  } finally {
    await mountNs.stop();
    mountNamespaces.delete(mountNs);
  }
}

/**
 * Every process still in the host's network namespace after its agent stopped (a wireguard-go the
 * agent had not yet recorded in its state dir would be one) is ended by PID, and named: there should
 * be none.
 */
async function endLeftovers(host: Host): Promise<string[]> {
  const { stdout } = await execFileP("ip", ["netns", "pids", host.ns]);
  const left: string[] = [];
  for (const pid of stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map(Number)) {
    try {
      const what = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
      process.kill(pid, "SIGKILL");
      left.push(`${pid} ${what}`);
    } catch {
      continue; // gone meanwhile
    }
  }
  if (left.length > 0)
    console.warn(`  left in ${host.ns} after its agent stopped, ended: ${left.join("; ")}`);
  return left;
}

const wireguardPrefixes = new Map<number, { prefix: string; list: WireGuardPeer[] }>();

async function wireguardPrefixFor(n: number): Promise<{ prefix: string; list: WireGuardPeer[] }> {
  const known = wireguardPrefixes.get(n);
  if (known !== undefined) return known;
  const prefix = `/bench-wg-${n}/network`;
  const list = wireguardPeers(prefix, 0, n);
  if (new Set(list.map((p) => p.publicKey)).size !== n) throw new Error("wireguard peers: keys not distinct");
  const w = need(writer, "writer");
  await w.put([[`${prefix}/config`, WIREGUARD_NETWORK_CONFIG]], 1);
  await w.put(list.map(kv));
  const entry = { prefix, list };
  wireguardPrefixes.set(n, entry);
  return entry;
}

/** hex public key → endpoint and allowed IP, as the device should have each peer. */
const wantedOnDevice = (
  list: readonly WireGuardPeer[],
): Map<string, { endpoint: string; allowedIp: string }> =>
  new Map(list.map((p) => [hexKey(p.publicKey), { endpoint: p.endpoint, allowedIp: p.dst }]));

/** `wg show flannel-wg dump` inside the host: the peers, checked against the leases by another tool. */
async function checkWithWg(
  mountNs: MountNamespace,
  host: Host,
  list: readonly WireGuardPeer[],
): Promise<{ listenPort: string; peers: number; matching: number; routeIntoDevice: boolean }> {
  const lines = (await wgIn(mountNs, host.ns, ["show", WIREGUARD_DEV, "dump"])).trim().split("\n");
  const byKey = new Map(
    lines.slice(1).map((line) => {
      const [key = "", , endpoint, allowed] = line.split("\t");
      return [key, `${endpoint ?? ""} ${allowed ?? ""}`] as const;
    }),
  );
  const matching = list.filter((p) => byKey.get(p.publicKey) === `${p.endpoint} ${p.dst}`).length;
  const routes = await execFileP("ip", ["-n", host.ns, "-4", "route", "show", "dev", WIREGUARD_DEV]);
  return {
    listenPort: lines[0]?.split("\t")[2] ?? "",
    peers: byKey.size,
    matching,
    routeIntoDevice: routes.stdout.split("\n").some((l) => l.startsWith("10.0.0.0/8 ")),
  };
}

interface WireGuardColdRun {
  /** Process start → the first read of the device that had every peer, exactly (key, endpoint, allowed IP). */
  totalMs: number;
  /** The read before that one started this long before it: the figure's resolution. */
  resolutionMs: number;
  /** Process start → wireguard-go first answered on its socket. */
  wireguardGoAnsweredMs: number | undefined;
  /** Process start → the first read that showed any peer. */
  firstPeersMs: number | undefined;
  /** wireguard-go answering → every peer there. */
  peersAfterAnswerMs: number | undefined;
  reads: number;
  subnetFileMs: number | undefined;
  /** The agent's own log: "started wireguard-go", "… started", its rounds. */
  startedWireguardGoLogMs: number | undefined;
  rounds: { trigger: string; ops: number; durationMs: number }[];
  timeline: string[];
  wgCheck: { listenPort: string; peers: number; matching: number; routeIntoDevice: boolean };
  cpuSeconds: number;
  wireguardGoCpuSeconds: number;
  peakRssMiB: number;
  wireguardGoPeakRssMiB: number;
  idle?: IdleWindow;
  leftovers: string[];
  load: number;
}

async function coldWireGuardAgent(n: number, idleS?: number): Promise<WireGuardColdRun> {
  const { prefix, list } = await wireguardPrefixFor(n);
  const wanted = wantedOnDevice(list);
  const host = await freshHost();
  return withMountNamespace(async (mountNs) => {
    const socket = uapiSocket(mountNs, WIREGUARD_DEV);
    const agent = await launch(prefix, { mountNamespaceOf: mountNs.pid }, host);
    let stopped = false;
    try {
      const pid = await agent.pid();
      let answered: bigint | undefined;
      let firstPeers: bigint | undefined;
      let previous = agent.startNs;
      let reads = 0;
      let done: bigint | undefined;
      while (done === undefined) {
        const readStart = nowNs();
        const have = await uapiPeers(socket, 5_000);
        reads++;
        if (have !== undefined) {
          answered ??= readStart;
          if (have.size > 0) firstPeers ??= readStart;
          if (have.size === n && peersMatching(have, wanted) === n) {
            done = nowNs();
            break;
          }
        }
        if (msSince(agent.startNs) > 300_000)
          throw new Error(
            `wireguard cold start N=${n}: peers not all on the device in 300 s\n${agent.tail()}`,
          );
        previous = readStart;
        await sleep(cfg.wireguardPollMs);
      }
      const totalMs = msSince(agent.startNs, done);
      const doneWall = Date.now() - msSince(done);
      const cpu = readCpu(pid);
      const rss = readRss(pid);
      const wgPid = recordedWireGuardGoPid(agent.stateDir, WIREGUARD_DEV);
      const wgCpu = wgPid === undefined ? undefined : readCpu(wgPid);
      const wgRss = wgPid === undefined ? undefined : readRss(wgPid);
      const wgCheck = await checkWithWg(mountNs, host, list);
      if (wgCheck.matching !== n || wgCheck.peers !== n)
        throw new Error(`wireguard cold start N=${n}: wg show dump disagrees: ${JSON.stringify(wgCheck)}`);
      const idle = idleS === undefined ? undefined : await idleWindow(pid, idleS, wgPid);
      const rounds = agent
        .lines("data plane reconciled")
        .filter((l) => (logWall(l) ?? 0) - (num(l, "durationMs") ?? 0) <= doneWall)
        .map((l) => ({
          trigger: str(l, "trigger") ?? "?",
          ops: num(l, "ops") ?? 0,
          durationMs: num(l, "durationMs") ?? 0,
        }));
      const ms = (t: bigint | undefined): number | undefined =>
        t === undefined ? undefined : round(msSince(agent.startNs, t));
      const result: WireGuardColdRun = {
        totalMs,
        resolutionMs: round(msSince(previous, done)),
        wireguardGoAnsweredMs: ms(answered),
        firstPeersMs: ms(firstPeers),
        peersAfterAnswerMs: answered === undefined ? undefined : round(msSince(answered, done)),
        reads,
        subnetFileMs: agent.msTo("subnet file written"),
        startedWireguardGoLogMs: agent.msTo("started wireguard-go"),
        rounds,
        // Without the per-peer "peer added" lines (one per lease).
        timeline: agent
          .logs()
          .filter((l) => l.msg !== "peer added")
          .slice(0, 40)
          .map((l) => `${Math.round((logWall(l) ?? 0) - agent.startWall)} ms ${str(l, "msg") ?? "?"}`),
        wgCheck,
        cpuSeconds: cpu.self,
        wireguardGoCpuSeconds: wgCpu?.self ?? Number.NaN,
        peakRssMiB: rss.peakMiB,
        wireguardGoPeakRssMiB: wgRss?.peakMiB ?? Number.NaN,
        ...(idle === undefined ? {} : { idle }),
        leftovers: [],
        load: load(),
      };
      await stopAgent(agent); // ends its wireguard-go too, by the PID in its state dir
      stopped = true;
      result.leftovers = await endLeftovers(host);
      return result;
    } finally {
      if (!stopped) {
        await stopAgent(agent);
        await endLeftovers(host);
      }
    }
  });
}

interface HandBuiltRun {
  /** wireguard-go started → answering on its socket. */
  startMs: number;
  /** flannel-wg up with MTU, address and the network's route (one `ip -batch`). */
  ipMs: number;
  /** One `wg setconf` of the private key, port and every peer. */
  setconfMs: number;
  totalMs: number;
}

/**
 * The floor: a fresh wireguard-go started by hand in a fresh host (its own mount namespace and, as the
 * agent starts it, its own session), the device's MTU, address and route in one `ip -batch`, then one
 * `wg setconf` with the private key (`wg genkey`), port 51820 and every peer — what the agent has to
 * get onto the device, done in one go.
 */
async function coldHandBuiltWireGuard(list: readonly WireGuardPeer[]): Promise<HandBuiltRun> {
  const host = await freshHost();
  const wanted = wantedOnDevice(list);
  return withMountNamespace(async (mountNs) => {
    const socket = uapiSocket(mountNs, WIREGUARD_DEV);
    const keys = await wgKeyPair();
    const conf = privateFile(
      mountNs,
      `${WIREGUARD_DEV}.conf`,
      wgConfig(
        keys.privateKey,
        WIREGUARD_PORT,
        list.map((p) => ({ publicKey: p.publicKey, endpoint: p.endpoint, allowedIps: p.dst })),
      ),
    );
    const t0 = nowNs();
    // In a session of its own, as the agent starts it.
    const wg = startWireGuardGo(mountNs, host.ns, WIREGUARD_DEV, { ownSession: true });
    stoppables.add(wg);
    try {
      await waitForUapi(socket, `wireguard-go in ${host.ns}`);
      assertIsWireGuardGo(wg);
      const t1 = nowNs();
      await rawBatch(
        "ip",
        host.ns,
        `link set ${WIREGUARD_DEV} mtu ${WG_MTU} up\naddress add 10.255.255.0/32 dev ${WIREGUARD_DEV}\n` +
          `route add 10.0.0.0/8 dev ${WIREGUARD_DEV}\n`,
      );
      const t2 = nowNs();
      await wgIn(mountNs, host.ns, ["setconf", WIREGUARD_DEV, conf]);
      const t3 = nowNs();
      const have = await uapiPeers(socket);
      const matching = have === undefined ? 0 : peersMatching(have, wanted);
      if (matching !== list.length)
        throw new Error(`hand-built: ${matching} of ${list.length} peers on the device`);
      return {
        startMs: msSince(t0, t1),
        ipMs: msSince(t1, t2),
        setconfMs: msSince(t2, t3),
        totalMs: msSince(t0, t3),
      };
    } finally {
      await wg.stop(3000);
      stoppables.delete(wg);
      await endLeftovers(host);
    }
  });
}

async function wireguardColdStart(): Promise<object> {
  const n = cfg.wireguardPeers;
  const { list } = await wireguardPrefixFor(n);
  const { list: vxlanList } = await prefixFor(n);
  const runs: {
    wireguard: WireGuardColdRun;
    handBuilt: HandBuiltRun;
    vxlan: ColdAgentRun;
    vxlanRaw: { ms: number; bridgeMs: number; ipMs: number };
  }[] = [];
  for (let run = 0; run < cfg.runs; run++) {
    // Interleaved, so a noisy moment hits all alike; the order turns each run.
    const order = ["wireguard", "handBuilt", "vxlan", "vxlanRaw"] as const;
    const turned = [...order.slice(run % order.length), ...order.slice(0, run % order.length)];
    const r: Partial<(typeof runs)[number]> = {};
    for (const what of turned) {
      if (what === "wireguard") r.wireguard = await coldWireGuardAgent(n, cfg.wireguardWindowS);
      else if (what === "handBuilt") r.handBuilt = await coldHandBuiltWireGuard(list);
      else if (what === "vxlan") r.vxlan = await coldAgent(n, cfg.wireguardWindowS);
      else r.vxlanRaw = await coldRaw(vxlanList);
    }
    const { wireguard, handBuilt, vxlan, vxlanRaw } = r;
    if (wireguard === undefined || handBuilt === undefined || vxlan === undefined || vxlanRaw === undefined)
      throw new Error("internal: a measurement is missing");
    runs.push({ wireguard, handBuilt, vxlan, vxlanRaw });
    console.log(
      `  N=${n} run ${run + 1}/${cfg.runs}: wireguard agent ${round(wireguard.totalMs)} ms ` +
        `(wireguard-go answering at ${round(wireguard.wireguardGoAnsweredMs ?? Number.NaN)} ms, every peer ` +
        `${round(wireguard.peersAfterAnswerMs ?? Number.NaN)} ms later; ±${round(wireguard.resolutionMs)} ms), ` +
        `hand-built ${round(handBuilt.totalMs)} ms (start ${round(handBuilt.startMs)}, ip ${round(handBuilt.ipMs)}, ` +
        `setconf ${round(handBuilt.setconfMs)}), vxlan agent ${round(vxlan.totalMs)} ms (raw ${round(vxlanRaw.ms)} ms); ` +
        `idle: wireguard agent ${wireguard.idle?.agentPercent ?? "—"}% + wireguard-go ` +
        `${wireguard.idle?.wireguardGoPercent ?? "—"}%, vxlan agent ${vxlan.idle?.agentPercent ?? "—"}% of a core; load ${load()}`,
    );
  }
  const med = (f: (r: (typeof runs)[number]) => number | undefined): number =>
    median(runs.map(f).filter((v): v is number => v !== undefined && !Number.isNaN(v)));
  const m = {
    wireguardTotalMs: round(med((r) => r.wireguard.totalMs)),
    wireguardGoAnsweredMs: round(med((r) => r.wireguard.wireguardGoAnsweredMs)),
    wireguardPeersAfterAnswerMs: round(med((r) => r.wireguard.peersAfterAnswerMs)),
    wireguardSubnetFileMs: round(med((r) => r.wireguard.subnetFileMs)),
    wireguardResolutionMs: round(med((r) => r.wireguard.resolutionMs)),
    wireguardCpuSeconds: round(
      med((r) => r.wireguard.cpuSeconds),
      3,
    ),
    wireguardGoCpuSeconds: round(
      med((r) => r.wireguard.wireguardGoCpuSeconds),
      3,
    ),
    wireguardPeakRssMiB: round(
      med((r) => r.wireguard.peakRssMiB),
      1,
    ),
    wireguardGoPeakRssMiB: round(
      med((r) => r.wireguard.wireguardGoPeakRssMiB),
      1,
    ),
    handBuiltTotalMs: round(med((r) => r.handBuilt.totalMs)),
    handBuiltStartMs: round(med((r) => r.handBuilt.startMs)),
    handBuiltIpMs: round(med((r) => r.handBuilt.ipMs)),
    handBuiltSetconfMs: round(med((r) => r.handBuilt.setconfMs)),
    vxlanTotalMs: round(med((r) => r.vxlan.totalMs)),
    vxlanRawMs: round(med((r) => r.vxlanRaw.ms)),
    vxlanCpuSeconds: round(
      med((r) => r.vxlan.cpuSeconds),
      3,
    ),
    idleWireguardAgentPercent: round(
      med((r) => r.wireguard.idle?.agentPercent),
      3,
    ),
    idleWireguardGoPercent: round(
      med((r) => r.wireguard.idle?.wireguardGoPercent),
      3,
    ),
    idleVxlanAgentPercent: round(
      med((r) => r.vxlan.idle?.agentPercent),
      3,
    ),
    load: round(med((r) => r.wireguard.load)),
  };
  const ratios = {
    wireguardToHandBuilt: round(m.wireguardTotalMs / m.handBuiltTotalMs, 2),
    wireguardToVxlan: round(m.wireguardTotalMs / m.vxlanTotalMs, 2),
    /** Run by run (each pair measured back to back), then the median. */
    wireguardToVxlanPaired: round(median(runs.map((r) => r.wireguard.totalMs / r.vxlan.totalMs)), 2),
    peersAfterAnswerToSetconf: round(m.wireguardPeersAfterAnswerMs / m.handBuiltSetconfMs, 2),
    vxlanToRaw: round(m.vxlanTotalMs / m.vxlanRawMs, 2),
  };
  const hand = `hand-built: wireguard-go start + ip + one wg setconf of the ${n} peers`;
  figure(
    `wireguard.cold.${n}.totalMs`,
    `wireguard cold start ${n}: process start → every peer on flannel-wg`,
    m.wireguardTotalMs,
    "ms",
    {
      limit: hand,
      limitValue: m.handBuiltTotalMs,
      load: m.load,
    },
  );
  figure(
    `wireguard.cold.${n}.peersAfterAnswerMs`,
    `wireguard cold start ${n}: wireguard-go answering → every peer on it`,
    m.wireguardPeersAfterAnswerMs,
    "ms",
    {
      limit: `one wg setconf of the ${n} peers into a fresh wireguard-go`,
      limitValue: m.handBuiltSetconfMs,
      load: m.load,
    },
  );
  figure(
    `wireguard.cold.${n}.vxlanTotalMs`,
    `vxlan cold start ${n} in the same run: process start → all routes`,
    m.vxlanTotalMs,
    "ms",
    {
      limit: `raw bridge+ip -batch of the same ${3 * n} objects`,
      limitValue: m.vxlanRawMs,
      load: m.load,
    },
  );
  figure(
    `wireguard.cold.${n}.ofVxlan`,
    `wireguard cold start ${n} ÷ vxlan's, same run (run by run, median)`,
    ratios.wireguardToVxlanPaired,
    "×",
    {
      load: m.load,
    },
  );
  figure(
    `wireguard.idle.${n}.agentPercent`,
    `idle CPU of the wireguard agent at ${n} peers (${cfg.wireguardWindowS} s)`,
    m.idleWireguardAgentPercent,
    "%",
    {
      limit: `the vxlan agent at ${n} peers, same window`,
      limitValue: m.idleVxlanAgentPercent,
      load: m.load,
    },
  );
  figure(
    `wireguard.idle.${n}.wireguardGoPercent`,
    `idle CPU of its wireguard-go at ${n} peers`,
    m.idleWireguardGoPercent,
    "%",
    {
      load: m.load,
    },
  );
  return {
    peers: n,
    pollMs: cfg.wireguardPollMs,
    idleWindowS: cfg.wireguardWindowS,
    median: m,
    ratios,
    runs: runs.map((r) => ({
      wireguard: {
        ...r.wireguard,
        totalMs: round(r.wireguard.totalMs),
        peakRssMiB: round(r.wireguard.peakRssMiB, 1),
      },
      handBuilt: {
        startMs: round(r.handBuilt.startMs),
        ipMs: round(r.handBuilt.ipMs),
        setconfMs: round(r.handBuilt.setconfMs),
        totalMs: round(r.handBuilt.totalMs),
      },
      vxlan: { ...r.vxlan, totalMs: round(r.vxlan.totalMs), programmingMs: round(r.vxlan.programmingMs) },
      vxlanRaw: {
        ms: round(r.vxlanRaw.ms),
        bridgeMs: round(r.vxlanRaw.bridgeMs),
        ipMs: round(r.vxlanRaw.ipMs),
      },
    })),
  };
}

// ---- 1c. dual-stack cold start -------------------------------------------------------------------------
//
// The vxlan backend with EnableIPv6: per peer an FDB entry, a neighbour and an onlink route on flannel.1
// and the same on flannel-v6.1. The agent's host gets an IPv6 address on eth0 (the agent takes it as
// its PublicIPv6); so does the raw limit's host, for flannel-v6.1's local address.

const dualStackPrefixes = new Map<number, { prefix: string; list: DualStackPeer[] }>();

async function dualStackPrefixFor(n: number): Promise<{ prefix: string; list: DualStackPeer[] }> {
  const known = dualStackPrefixes.get(n);
  if (known !== undefined) return known;
  const prefix = `/bench-ds-${n}/network`;
  const list = dualStackPeers(prefix, 0, n);
  const w = need(writer, "writer");
  await w.put([[`${prefix}/config`, DUALSTACK_NETWORK_CONFIG]], 1);
  await w.put(list.map(kv));
  const entry = { prefix, list };
  dualStackPrefixes.set(n, entry);
  return entry;
}

/**
 * A fresh host with an IPv6 address on eth0 as well: 2001:db8:18::<i in hex>/64 (host i; the
 * documentation prefix the dual-stack test underlay uses), `nodad` so it is usable at once. Only in the
 * host's own namespace; nothing on the switch (the fake peers are never reached).
 */
async function freshDualStackHost(): Promise<{ host: Host; address6: string }> {
  const host = await freshHost();
  const address6 = `2001:db8:18::${host.index.toString(16)}`;
  await execFileP("ip", ["-n", host.ns, "-6", "address", "add", `${address6}/64`, "dev", "eth0", "nodad"]);
  return { host, address6 };
}

interface RawRun {
  ms: number;
  bridgeMs: number;
  ipMs: number;
}

/**
 * The limit: the same 6·N objects as `bridge -batch` (both devices' FDB entries) then one `ip -batch`
 * (both families' neighbours, then routes) in a fresh host with flannel.1 and flannel-v6.1 made by hand.
 */
async function coldRawDualStack(list: readonly DualStackPeer[]): Promise<RawRun> {
  const { host, address6 } = await freshDualStackHost();
  await makeVxlanDevice(host, "10.255.255.0");
  await makeVxlanV6Device(host, address6, "fd00:10:0:ffff::");
  const lines = dualStackBatchLines(list);
  const bridgeMs = await rawBatch("bridge", host.ns, lines.bridge);
  const ipMs = await rawBatch("ip", host.ns, lines.ip);
  const [routes4, routes6] = [await countRoutes(host.ns, 4), await countRoutes(host.ns, 6)];
  if (routes4 !== list.length || routes6 !== list.length)
    throw new Error(
      `raw dual-stack batch: ${routes4} IPv4 and ${routes6} IPv6 routes, want ${list.length} each`,
    );
  return { ms: bridgeMs + ipMs, bridgeMs, ipMs };
}

interface DualStackAgentRun extends ColdAgentRun {
  /** The agent's own lease value in etcd (its PublicIPv6 must be the host's eth0 IPv6 address). */
  ownLease: string;
}

async function coldDualStackAgent(n: number): Promise<DualStackAgentRun> {
  const { prefix, list } = await dualStackPrefixFor(n);
  const { host, address6 } = await freshDualStackHost();
  let ownLease = "";
  const run = await coldAgentOn(
    host,
    prefix,
    `dual-stack cold start N=${n}`,
    { v4: list.map((p) => p.dst), v6: list.map((p) => p.dst6) },
    undefined,
    async (agent) => {
      // Before the agent stops (its lease is deleted then): did it publish the host's address?
      const key = agent.leaseKey();
      const own = (await need(writer, "writer").list(`${prefix}/subnets/`)).find(([k]) => k === key);
      if (own === undefined)
        throw new Error(`dual-stack cold start: the agent's lease ${key} is not in etcd`);
      ownLease = own[1];
      const publicIPv6 = decodeLeaseAttrs(own[1]).publicIPv6;
      if (publicIPv6 !== address6)
        throw new Error(
          `dual-stack cold start: the agent published PublicIPv6 ${publicIPv6}, want ${address6}`,
        );
    },
  );
  return { ...run, ownLease };
}

async function dualStackColdStart(): Promise<object> {
  const n = cfg.dualStackPeers;
  const { list } = await dualStackPrefixFor(n);
  const { list: ipv4List } = await prefixFor(n);
  const runs: { dualStack: DualStackAgentRun; raw: RawRun; ipv4: ColdAgentRun; ipv4Raw: RawRun }[] = [];
  for (let run = 0; run < cfg.runs; run++) {
    // Interleaved, so a noisy moment hits all alike; the order turns each run.
    const order = ["dualStack", "raw", "ipv4", "ipv4Raw"] as const;
    const turned = [...order.slice(run % order.length), ...order.slice(0, run % order.length)];
    const r: Partial<(typeof runs)[number]> = {};
    for (const what of turned) {
      if (what === "dualStack") r.dualStack = await coldDualStackAgent(n);
      else if (what === "raw") r.raw = await coldRawDualStack(list);
      else if (what === "ipv4") r.ipv4 = await coldAgent(n);
      else r.ipv4Raw = await coldRaw(ipv4List);
    }
    const { dualStack, raw, ipv4, ipv4Raw } = r;
    if (dualStack === undefined || raw === undefined || ipv4 === undefined || ipv4Raw === undefined)
      throw new Error("internal: a measurement is missing");
    runs.push({ dualStack, raw, ipv4, ipv4Raw });
    console.log(
      `  N=${n} run ${run + 1}/${cfg.runs}: dual-stack agent ${round(dualStack.totalMs)} ms (last IPv4 route ` +
        `${round(dualStack.ipv4RoutesMs ?? Number.NaN)} ms, last IPv6 route ${round(dualStack.ipv6RoutesMs ?? Number.NaN)} ms; ` +
        `programming ${round(dualStack.programmingMs)} ms in ${dualStack.rounds.length} round(s)), raw ${round(raw.ms)} ms ` +
        `(bridge ${round(raw.bridgeMs)}, ip ${round(raw.ipMs)}); IPv4-only agent ${round(ipv4.totalMs)} ms ` +
        `(programming ${round(ipv4.programmingMs)} ms), raw ${round(ipv4Raw.ms)} ms; ` +
        `RSS ${round(dualStack.peakRssMiB, 1)} / ${round(ipv4.peakRssMiB, 1)} MiB, load ${dualStack.load}`,
    );
  }
  const med = (f: (r: (typeof runs)[number]) => number | undefined): number =>
    median(runs.map(f).filter((v): v is number => v !== undefined && !Number.isNaN(v)));
  const m = {
    totalMs: round(med((r) => r.dualStack.totalMs)),
    ipv4RoutesMs: round(med((r) => r.dualStack.ipv4RoutesMs)),
    ipv6RoutesMs: round(med((r) => r.dualStack.ipv6RoutesMs)),
    programmingMs: round(med((r) => r.dualStack.programmingMs)),
    subnetFileMs: round(med((r) => r.dualStack.subnetFileMs)),
    rawMs: round(med((r) => r.raw.ms)),
    rawBridgeMs: round(med((r) => r.raw.bridgeMs)),
    rawIpMs: round(med((r) => r.raw.ipMs)),
    cpuSeconds: round(
      med((r) => r.dualStack.cpuSeconds),
      3,
    ),
    childCpuSeconds: round(
      med((r) => r.dualStack.childCpuSeconds),
      3,
    ),
    peakRssMiB: round(
      med((r) => r.dualStack.peakRssMiB),
      1,
    ),
    ipv4TotalMs: round(med((r) => r.ipv4.totalMs)),
    ipv4ProgrammingMs: round(med((r) => r.ipv4.programmingMs)),
    ipv4SubnetFileMs: round(med((r) => r.ipv4.subnetFileMs)),
    ipv4RawMs: round(med((r) => r.ipv4Raw.ms)),
    ipv4CpuSeconds: round(
      med((r) => r.ipv4.cpuSeconds),
      3,
    ),
    ipv4PeakRssMiB: round(
      med((r) => r.ipv4.peakRssMiB),
      1,
    ),
    load: round(med((r) => r.dualStack.load)),
  };
  const ratios = {
    programmingToRaw: round(m.programmingMs / m.rawMs, 2),
    totalToRaw: round(m.totalMs / m.rawMs, 2),
    /** Run by run (each pair measured back to back), then the median. */
    totalToIpv4Paired: round(median(runs.map((r) => r.dualStack.totalMs / r.ipv4.totalMs)), 2),
    programmingToIpv4Paired: round(
      median(runs.map((r) => r.dualStack.programmingMs / r.ipv4.programmingMs)),
      2,
    ),
    rawToIpv4Raw: round(m.rawMs / m.ipv4RawMs, 2),
    ipv4TotalToIpv4Raw: round(m.ipv4TotalMs / m.ipv4RawMs, 2),
  };
  const limit = `raw bridge+ip -batch of the same ${6 * n} objects (both families)`;
  figure(
    `dualstack.cold.${n}.programmingMs`,
    `dual-stack cold start ${n}: programming phase`,
    m.programmingMs,
    "ms",
    { target: cfg.target.programmingToRaw * m.rawMs, limit, limitValue: m.rawMs, load: m.load },
  );
  figure(
    `dualstack.cold.${n}.totalMs`,
    `dual-stack cold start ${n}: process start → all IPv4 and IPv6 routes`,
    m.totalMs,
    "ms",
    { target: cfg.target.totalToRaw * m.rawMs, limit, limitValue: m.rawMs, load: m.load },
  );
  figure(
    `dualstack.cold.${n}.ipv4TotalMs`,
    `IPv4-only cold start ${n} in the same run: process start → all routes`,
    m.ipv4TotalMs,
    "ms",
    { limit: `raw bridge+ip -batch of the same ${3 * n} objects`, limitValue: m.ipv4RawMs, load: m.load },
  );
  figure(
    `dualstack.cold.${n}.ofIpv4`,
    `dual-stack cold start ${n} ÷ IPv4-only's, same run (run by run, median)`,
    ratios.totalToIpv4Paired,
    "×",
    { load: m.load },
  );
  const rawRun = (x: RawRun) => ({ ms: round(x.ms), bridgeMs: round(x.bridgeMs), ipMs: round(x.ipMs) });
  const agentRun = <T extends ColdAgentRun>(x: T) => ({
    ...x,
    totalMs: round(x.totalMs),
    programmingMs: round(x.programmingMs),
    peakRssMiB: round(x.peakRssMiB, 1),
    ...(x.ipv4RoutesMs === undefined ? {} : { ipv4RoutesMs: round(x.ipv4RoutesMs) }),
    ...(x.ipv6RoutesMs === undefined ? {} : { ipv6RoutesMs: round(x.ipv6RoutesMs) }),
  });
  return {
    peers: n,
    networkConfig: DUALSTACK_NETWORK_CONFIG,
    median: m,
    ratios,
    runs: runs.map((r) => ({
      dualStack: agentRun(r.dualStack),
      raw: rawRun(r.raw),
      ipv4: agentRun(r.ipv4),
      ipv4Raw: rawRun(r.ipv4Raw),
    })),
  };
}

// ---- 2. peer events: single, burst, churn -----------------------------------------------------------

/** A small deterministic PRNG (mulberry32), so every run churns the same way. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function singleEvents(
  agent: RunningAgent,
  mon: KernelMonitor,
  prefix: string,
  base: number,
): Promise<object> {
  const w = need(writer, "writer");
  const latencies: number[] = [];
  const readHere: number[] = [];
  const acks: number[] = [];
  const sinceWall = Date.now();
  const deadline = Date.now() + cfg.singleMaxS * 1000;
  const done: Peer[] = [];
  for (let i = 0; i < cfg.singleEvents && Date.now() < deadline; i++) {
    const p = peer(prefix, 30_000 + i);
    const answer = await w.put([kv(p)], 1);
    done.push(p);
    const start = BigInt(answer.startNs);
    const seen = await mon.next("route", p.dst, start, added, 30_000);
    if (seen === undefined) throw new Error(`route ${p.dst} not seen within 30 s`);
    latencies.push(msSince(start, seen.at));
    readHere.push(msSince(start, seen.readAt));
    acks.push(msSince(start, BigInt(answer.endNs)));
    await sleep(cfg.eventGapMs);
  }
  const untilWall = Date.now();
  const endLoad = load();
  await w.delete(done.map((p) => p.key));
  await waitRouteCount(agent.host.ns, base, 120_000, 100);
  const s = stats(latencies);
  const ack = stats(acks);
  console.log(
    `  ${s.n} single events: p50 ${s.p50Ms} ms, p99 ${s.p99Ms} ms (etcd put ack p50 ${ack.p50Ms}, p99 ${ack.p99Ms} ms), load ${endLoad}`,
  );
  return {
    events: s.n,
    latency: s,
    /** The same, to when the line arrived in this process rather than the monitor's own stamp. */
    latencyReadHere: stats(readHere),
    putAck: ack,
    agentRounds: roundStats(agent, sinceWall, untilWall),
    load: endLoad,
    method:
      "etcd put start (writer hrtime) → the route's line from `ip monitor route` in the host (bench hrtime)",
  };
}

async function bursts(
  agent: RunningAgent,
  mon: KernelMonitor,
  prefix: string,
  base: number,
): Promise<object> {
  const w = need(writer, "writer");
  const rawHost = await freshHost();
  await makeVxlanDevice(rawHost, "10.255.255.0");
  const runs: { ms: number; putMs: number; rawMs: number; method: string; load: number }[] = [];
  for (let b = 0; b < cfg.bursts; b++) {
    const list = peers(prefix, 40_000 + b * cfg.burstSize, cfg.burstSize);
    // A dump poll runs alongside as a fallback, should a monitor drop events (ENOBUFS) in the burst.
    const polled = waitRouteCount(agent.host.ns, base + cfg.burstSize, 120_000, 250);
    const sinceWall = Date.now();
    const answer = await w.put(list.map(kv), cfg.burstSize);
    const polledAt = await polled;
    const start = BigInt(answer.startNs);
    const seen = await mon.all(
      "route",
      list.map((p) => p.dst),
      start,
      added,
      1000,
    );
    const last = seen.last ?? polledAt;
    const lines = batchLines(list);
    const rawMs =
      (await rawBatch("bridge", rawHost.ns, lines.bridge)) + (await rawBatch("ip", rawHost.ns, lines.ip));
    const run = {
      ms: round(msSince(start, last)),
      putMs: round(msSince(start, BigInt(answer.endNs))),
      rawMs: round(rawMs),
      method: seen.last !== undefined ? "ip monitor" : `dump poll (monitor missed ${seen.missing})`,
      agentRounds: roundStats(agent, sinceWall),
      load: load(),
    };
    runs.push(run);
    console.log(
      `  burst of ${cfg.burstSize}: ${run.ms} ms until all routes present (etcd acked all puts in ${run.putMs} ms; ` +
        `raw batch ${run.rawMs} ms), load ${run.load}`,
    );
    await w.delete(list.map((p) => p.key));
    await waitRouteCount(agent.host.ns, base, 120_000, 100);
  }
  return {
    leases: cfg.burstSize,
    medianMs: round(median(runs.map((r) => r.ms))),
    medianPutMs: round(median(runs.map((r) => r.putMs))),
    /** After etcd acknowledged the last put: the part of the burst that is the agent's alone. */
    medianAfterAckMs: round(median(runs.map((r) => r.ms - r.putMs))),
    medianRawMs: round(median(runs.map((r) => r.rawMs))),
    load: round(median(runs.map((r) => r.load))),
    runs,
  };
}

interface ChurnOp {
  readonly type: "add" | "delete" | "change";
  readonly peer: Peer;
  /** For "change": the MAC it replaces. */
  readonly oldMac?: string;
  answer?: Promise<{ startNs: string; endNs: string }>;
}

/**
 * cfg.churnOps single-key puts and deletes, open loop at an even pace over cfg.churnSeconds: adds of new
 * peers (45 %), deletes (40 %) and changes of a peer's VtepMAC (15 %), a peer touched again only 2 s after
 * its last change. Each change's latency: etcd put/delete start → the last of its kernel notifications
 * (add: route, neighbour, FDB entry; delete: their removals; change: the new neighbour, the new FDB
 * entry and the old one's removal). Then the kernel is compared with the leases in etcd.
 */
async function churn(agent: RunningAgent, mon: KernelMonitor, prefix: string): Promise<object> {
  const w = need(writer, "writer");
  const random = prng(20_261_202);
  const live = new Map<number, { version: number; at: number; mac: string }>();
  const ops: ChurnOp[] = [];
  let nextIndex = 50_000;
  const interval = (cfg.churnSeconds * 1000) / cfg.churnOps;
  const startWall = Date.now();
  const startLoad = load();
  for (let k = 0; k < cfg.churnOps; k++) {
    const wait = startWall + k * interval - Date.now();
    if (wait > 0) await sleep(wait);
    const now = Date.now();
    const eligible = [...live].filter(([, s]) => now - s.at >= 2000);
    const r = random();
    let op: ChurnOp;
    const pick = (): [number, { version: number; at: number; mac: string }] | undefined =>
      eligible[Math.floor(random() * eligible.length)];
    const chosen = live.size < 20 || r < 0.45 ? undefined : pick();
    if (chosen === undefined) {
      const p = peer(prefix, nextIndex++);
      live.set(p.index, { version: 0, at: now, mac: p.mac });
      op = { type: "add", peer: p };
      op.answer = w.put([kv(p)], 1);
    } else if (r < 0.85) {
      const [index, state] = chosen;
      const p = peer(prefix, index, state.version);
      live.delete(index);
      op = { type: "delete", peer: p };
      op.answer = w.delete([p.key], 1);
    } else {
      const [index, state] = chosen;
      const p = peer(prefix, index, state.version + 1);
      live.set(index, { version: state.version + 1, at: now, mac: p.mac });
      op = { type: "change", peer: p, oldMac: state.mac };
      op.answer = w.put([kv(p)], 1);
    }
    ops.push(op);
  }
  const answers = await Promise.all(ops.map((o) => need(o.answer, "answer")));
  const issuedMs = Date.now() - startWall;
  // Every op's last notification; what has not arrived 30 s after the last op never will.
  const deadline = Date.now() + 30_000;
  const latencies: number[] = [];
  const byType: Record<string, number[]> = { add: [], delete: [], change: [] };
  const acks: number[] = [];
  let missed = 0;
  for (const [i, op] of ops.entries()) {
    const answer = need(answers[i], "answer");
    const start = BigInt(answer.startNs);
    acks.push(msSince(start, BigInt(answer.endNs)));
    const left = (): number => Math.max(0, deadline - Date.now());
    const p = op.peer;
    const wanted =
      op.type === "add"
        ? [
            mon.next("route", p.dst, start, added, left()),
            mon.next("neigh", p.gateway, start, neighIs(p.mac), left()),
            mon.next("fdb", p.mac, start, added, left()),
          ]
        : op.type === "delete"
          ? [
              mon.next("route", p.dst, start, removed, left()),
              mon.next("neigh", p.gateway, start, neighGone, left()),
              mon.next("fdb", p.mac, start, removed, left()),
            ]
          : [
              mon.next("neigh", p.gateway, start, neighIs(p.mac), left()),
              mon.next("fdb", p.mac, start, added, left()),
              mon.next("fdb", need(op.oldMac, "old MAC"), start, removed, left()),
            ];
    const seen = await Promise.all(wanted);
    if (seen.some((e) => e === undefined)) {
      missed++;
      continue;
    }
    const last = seen.reduce((m, e) => (e !== undefined && e.at > m ? e.at : m), start);
    const ms = msSince(start, last);
    latencies.push(ms);
    byType[op.type]?.push(ms);
  }
  const { check, afterMs } = await converge(agent, 30_000);
  const s = stats(latencies);
  const endLoad = load();
  console.log(
    `  churn: ${ops.length} ops in ${round(issuedMs / 1000, 1)} s: mean ${s.meanMs} ms, p99 ${s.p99Ms} ms` +
      `${missed > 0 ? `, ${missed} never fully seen` : ""}; kernel = etcd: ${check.equal} (checked ${afterMs} ms after), load ${endLoad}`,
  );
  return {
    ops: ops.length,
    seconds: round(issuedMs / 1000, 1),
    mix: Object.fromEntries(Object.keys(byType).map((t) => [t, ops.filter((o) => o.type === t).length])),
    latency: s,
    latencyByType: Object.fromEntries(Object.entries(byType).map(([t, v]) => [t, stats(v)])),
    putAck: stats(acks),
    missed,
    monitorOverflows: mon.overflows(),
    state: { ...check, checkedAfterMs: afterMs },
    agentRounds: roundStats(agent, startWall),
    load: { start: startLoad, end: endLoad },
  };
}

async function peerEvents(base: number): Promise<object> {
  const { prefix } = await prefixFor(base);
  const agent = await launch(prefix);
  let mon: KernelMonitor | undefined;
  try {
    await waitSynced(agent, base);
    const kinds = ["route", "neigh", "fdb"] as const;
    // Real-time monitors for one change at a time, normal ones for the bursts (see MonitorPriority).
    mon = await openMonitor(agent.host, kinds, "realtime");
    // Warm-up events until the monitor has demonstrably subscribed (it prints nothing when ready).
    const w = need(writer, "writer");
    let warm = 0;
    for (; warm < 20; warm++) {
      const p = peer(prefix, 20_000 + warm);
      const answer = await w.put([kv(p)], 1);
      if ((await mon.next("route", p.dst, BigInt(answer.startNs), added, 3000)) !== undefined) break;
    }
    if (warm === 20) throw new Error("ip monitor route never reported a route");
    const synced = base + warm + 1;

    const single = await singleEvents(agent, mon, prefix, synced);
    await closeMonitor(mon);
    mon = await openMonitor(agent.host, kinds, "normal");
    const burst = await bursts(agent, mon, prefix, synced);
    await closeMonitor(mon);
    mon = await openMonitor(agent.host, kinds, "realtime");
    const churned = await churn(agent, mon, prefix);
    return { basePeers: base, single, burst, churn: churned };
  } finally {
    await closeMonitor(mon);
    await stopAgent(agent);
    await restorePrefix(base);
  }
}

function eventFigures(base: number, r: Record<string, unknown>): void {
  const single = r.single as {
    latency: ReturnType<typeof stats>;
    putAck: ReturnType<typeof stats>;
    load: number;
  };
  figure(
    `single.${base}.p50Ms`,
    `single peer event at ${base} peers: put → route, p50`,
    single.latency.p50Ms,
    "ms",
    {
      limit: "etcd put ack p50",
      limitValue: single.putAck.p50Ms,
      load: single.load,
    },
  );
  figure(
    `single.${base}.p99Ms`,
    `single peer event at ${base} peers: put → route, p99`,
    single.latency.p99Ms,
    "ms",
    {
      target: cfg.target.singleP99Ms,
      limit: "etcd put ack p99",
      limitValue: single.putAck.p99Ms,
      load: single.load,
    },
  );
  const burst = r.burst as {
    medianMs: number;
    medianRawMs: number;
    medianAfterAckMs: number;
    load: number;
  };
  figure(
    `burst.${base}.ms`,
    `burst of ${cfg.burstSize} puts at ${base} peers → all routes`,
    burst.medianMs,
    "ms",
    {
      target: cfg.target.burstMs,
      limit: `raw bridge+ip -batch of those ${cfg.burstSize} peers`,
      limitValue: burst.medianRawMs,
      load: burst.load,
    },
  );
  figure(
    `burst.${base}.afterAckMs`,
    `burst at ${base} peers: etcd acked the last put → all routes`,
    burst.medianAfterAckMs,
    "ms",
    {
      limit: `raw bridge+ip -batch of those ${cfg.burstSize} peers`,
      limitValue: burst.medianRawMs,
      load: burst.load,
    },
  );
  const churned = r.churn as {
    latency: ReturnType<typeof stats>;
    putAck: ReturnType<typeof stats>;
    state: StateCheck;
    load: { end: number };
  };
  figure(
    `churn.${base}.meanMs`,
    `churn at ${base} peers: change → kernel, mean`,
    churned.latency.meanMs,
    "ms",
    {
      limit: "etcd ack mean",
      limitValue: churned.putAck.meanMs,
      load: churned.load.end,
    },
  );
  figure(`churn.${base}.p99Ms`, `churn at ${base} peers: change → kernel, p99`, churned.latency.p99Ms, "ms", {
    limit: "etcd ack p99",
    limitValue: churned.putAck.p99Ms,
    load: churned.load.end,
  });
  figure(
    `churn.${base}.kernelEqualsEtcd`,
    `churn at ${base} peers: kernel = etcd afterwards (1 = yes)`,
    churned.state.equal ? 1 : 0,
    "bool",
    {
      target: 1,
      load: churned.load.end,
    },
  );
}

// ---- 3. drift repair -----------------------------------------------------------------------------------

/** The agents' default --iptables-resync (flannel's 5 s): the masquerade deletions are spread over it. */
const MASQ_CHECK_MS = 5000;

interface DriftKind {
  samples: number[];
  timeouts: number;
  /** Triggers of the agent's repair log lines during the samples ("kernel" = from notifications). */
  triggers: Record<string, number>;
  note?: string;
}

function repairTriggers(agent: RunningAgent, sinceWall: number, into: Record<string, number>): void {
  const lines = [
    ...agent.lines("drift repaired", sinceWall),
    ...agent.lines("device repaired", sinceWall),
    ...agent.lines("masquerade/forward rules were missing; restored", sinceWall),
  ];
  for (const l of lines) {
    const trigger =
      str(l, "trigger") ?? (l.msg === "masquerade/forward rules were missing; restored" ? "masq check" : "?");
    into[trigger] = (into[trigger] ?? 0) + 1;
  }
}

async function ipIn(ns: string, tool: "ip" | "bridge", args: string[]): Promise<void> {
  const r = await need(net, "cluster").exec(ns, [tool, ...args]);
  if (r.exitCode !== 0) throw new Error(`${tool} ${args.join(" ")}: ${r.stderr.trim()}`);
}

/**
 * Deletes by hand, waits for the repair, `cfg.driftSamples` times; gives up on a kind after two
 * samples that were not repaired within cfg.driftTimeoutS.
 */
async function sampleDrift(
  agent: RunningAgent,
  name: string,
  jitterMs: number,
  sample: (i: number, timeoutMs: number) => Promise<number | undefined>,
): Promise<DriftKind> {
  const kind: DriftKind = { samples: [], timeouts: 0, triggers: {} };
  const random = prng(jitterMs + 1);
  for (let i = 0; i < cfg.driftSamples && kind.timeouts < 2; i++) {
    // A random pause first: deletions must not fall in step with a periodic check of the agent's.
    await sleep(random() * jitterMs);
    const sinceWall = Date.now();
    const ms = await sample(i, cfg.driftTimeoutS * 1000);
    if (ms === undefined) kind.timeouts++;
    else kind.samples.push(round(ms));
    await sleep(300); // the echo rounds of the repair
    repairTriggers(agent, sinceWall, kind.triggers);
  }
  const s = stats(kind.samples);
  console.log(
    `  ${name}: median ${s.p50Ms} ms, max ${s.maxMs} ms over ${s.n}${kind.timeouts > 0 ? `, ${kind.timeouts} not repaired in ${cfg.driftTimeoutS} s` : ""}; ` +
      `repairs by trigger ${JSON.stringify(kind.triggers)}`,
  );
  return kind;
}

async function drift(base: number): Promise<object> {
  const { prefix, list } = await prefixFor(base);
  const cluster = need(net, "cluster");
  const agent = await launch(prefix, { args: ["--ip-masq"] });
  let mon: KernelMonitor | undefined;
  let poller: RulePoller | undefined;
  let overflows = 0;
  try {
    await waitSynced(agent, base);
    const ns = agent.host.ns;
    // Real-time monitors for one object at a time, normal ones for the device's replay (MonitorPriority).
    mon = await openMonitor(agent.host, ["route", "neigh", "fdb", "link"], "realtime");
    const m = mon;
    const result: Record<string, DriftKind | string> = {};
    const victims = (i: number): Peer => need(list[(i * 7) % list.length], "peer");

    result.route = await sampleDrift(agent, "route", 250, async (i, timeoutMs) => {
      const p = victims(i);
      const before = nowNs();
      await ipIn(ns, "ip", ["route", "del", p.dst, "proto", "151"]);
      const gone = await m.next("route", p.dst, before, removed, 5000);
      if (gone === undefined) throw new Error(`route ${p.dst}: deletion not seen`);
      const back = await m.next("route", p.dst, gone.at, added, timeoutMs);
      return back === undefined ? undefined : msSince(gone.at, back.at);
    });
    result.neighbour = await sampleDrift(agent, "neighbour", 250, async (i, timeoutMs) => {
      const p = victims(i);
      const before = nowNs();
      await ipIn(ns, "ip", ["neigh", "del", p.gateway, "dev", VXLAN_DEV]);
      const gone = await m.next("neigh", p.gateway, before, neighGone, 5000);
      if (gone === undefined) throw new Error(`neighbour ${p.gateway}: deletion not seen`);
      const back = await m.next("neigh", p.gateway, gone.at, neighIs(p.mac), timeoutMs);
      return back === undefined ? undefined : msSince(gone.at, back.at);
    });
    result.fdb = await sampleDrift(agent, "FDB entry", 250, async (i, timeoutMs) => {
      const p = victims(i);
      const before = nowNs();
      await ipIn(ns, "bridge", ["fdb", "del", p.mac, "dev", VXLAN_DEV, "dst", p.publicIP, "self"]);
      const gone = await m.next("fdb", p.mac, before, removed, 5000);
      if (gone === undefined) throw new Error(`FDB ${p.mac}: deletion not seen`);
      const back = await m.next("fdb", p.mac, gone.at, added, timeoutMs);
      return back === undefined ? undefined : msSince(gone.at, back.at);
    });

    const subnet = agent.subnet();
    const bridgeKey = subnet === undefined ? undefined : `cni0 ${subnet}`;
    const hasAddress =
      subnet !== undefined &&
      (await cluster.exec(ns, ["ip", "-o", "-4", "addr", "show", "dev", "cni0"])).stdout.includes(subnet);
    if (bridgeKey === undefined || subnet === undefined || !hasAddress) {
      const note = `skipped: cni0 has no address ${subnet ?? "?"} (the agent did not make it)`;
      result.bridgeAddress = note;
      console.log(`  bridge address: ${note}`);
    } else {
      result.bridgeAddress = await sampleDrift(agent, "bridge address", 250, async (_i, timeoutMs) => {
        const before = nowNs();
        await ipIn(ns, "ip", ["addr", "del", subnet, "dev", "cni0"]);
        const gone = await m.next("addr", bridgeKey, before, removed, 5000);
        if (gone === undefined) throw new Error(`${bridgeKey}: deletion not seen`);
        const back = await m.next("addr", bridgeKey, gone.at, added, timeoutMs);
        return back === undefined ? undefined : msSince(gone.at, back.at);
      });
    }

    overflows += m.overflows();
    await closeMonitor(m);
    mon = await openMonitor(agent.host, ["route", "neigh", "fdb", "link"], "normal");
    const d = mon;
    const deviceDetail: {
      linkBackMs: number;
      lastRouteMs: number;
      lastNeighMs?: number;
      lastFdbMs?: number;
      method: string;
    }[] = [];
    result.device = await sampleDrift(
      agent,
      "VXLAN device (until the last route is back)",
      250,
      async (_i, timeoutMs) => {
        const before = nowNs();
        // Routes go with the device silently; a dump poll is the fallback should a monitor drop events.
        await ipIn(ns, "ip", ["link", "del", VXLAN_DEV]);
        const gone = await d.next("link", VXLAN_DEV, before, removed, 5000);
        if (gone === undefined) throw new Error(`${VXLAN_DEV}: deletion not seen`);
        const link = await d.next("link", VXLAN_DEV, gone.at, added, timeoutMs);
        if (link === undefined) return undefined;
        const routes = await routesPresent(
          d,
          ns,
          list.map((p) => p.dst),
          gone.at,
          timeoutMs,
        );
        if (routes === undefined) return undefined;
        const last = routes.at;
        const method = routes.method;
        const neigh = await d.all(
          "neigh",
          list.map((p) => p.gateway),
          gone.at,
          (e) => !e.deleted && e.state === "PERMANENT",
          5000,
        );
        const fdb = await d.all(
          "fdb",
          list.map((p) => p.mac),
          gone.at,
          added,
          5000,
        );
        deviceDetail.push({
          linkBackMs: round(msSince(gone.at, link.at)),
          lastRouteMs: round(msSince(gone.at, last)),
          ...(neigh.last === undefined ? {} : { lastNeighMs: round(msSince(gone.at, neigh.last)) }),
          ...(fdb.last === undefined ? {} : { lastFdbMs: round(msSince(gone.at, fdb.last)) }),
          method,
        });
        d.clear(); // thousands of lines per sample
        return msSince(gone.at, last);
      },
    );

    overflows += d.overflows();
    await closeMonitor(d);
    mon = undefined;

    const chosen = agent.lines("iptables backend chosen")[0];
    const command = chosen === undefined ? "iptables" : (str(chosen, "command") ?? "iptables");
    poller = new RulePoller(cluster, ns, command);
    stoppables.add(poller);
    const p = poller;
    let rules: string[] = [];
    const until = Date.now() + 30_000;
    while (rules.length === 0 && Date.now() < until) rules = await p.rules(nowNs());
    if (rules.length === 0) {
      const note = `skipped: no rules in ${MASQ_CHAIN} (${command})`;
      result.masquerade = note;
      console.log(`  masquerade rule: ${note}`);
    } else {
      result.masquerade = await sampleDrift(
        agent,
        `masquerade rule (${command})`,
        MASQ_CHECK_MS,
        async (i, timeoutMs) => {
          const rule = need(rules[i % rules.length], "rule");
          const del = await cluster.exec(ns, [
            "sh",
            "-c",
            `${command} -w -t nat ${rule.replace(/^-A /, "-D ")}`,
          ]);
          if (del.exitCode !== 0) throw new Error(`deleting ${rule}: ${del.stderr.trim()}`);
          const gone = nowNs();
          const back = await p.present(rule, gone, timeoutMs);
          return back === undefined ? undefined : msSince(gone, back);
        },
      );
    }
    const kinds: Record<string, DriftKind | string> = {};
    for (const k of ["route", "neighbour", "fdb", "device", "bridgeAddress", "masquerade"]) {
      const v = result[k];
      if (v !== undefined) kinds[k] = v;
    }
    return {
      basePeers: base,
      agentArgs: ["--ip-masq"],
      kinds,
      device: deviceDetail,
      monitorOverflows: overflows,
      load: load(),
    };
  } finally {
    if (poller !== undefined) {
      await poller.stop();
      stoppables.delete(poller);
    }
    await closeMonitor(mon);
    await stopAgent(agent);
  }
}

function driftFigures(base: number, r: { kinds: Record<string, DriftKind | string>; load: number }): void {
  for (const [name, kind] of Object.entries(r.kinds)) {
    if (typeof kind === "string") continue;
    figure(
      `drift.${base}.${name}Ms`,
      `drift repair at ${base} peers: ${name}, median${kind.timeouts > 0 ? ` (${kind.timeouts} not repaired)` : ""}`,
      kind.samples.length === 0 ? Number.NaN : median(kind.samples),
      "ms",
      { load: r.load },
    );
  }
}

// ---- 4. memory -----------------------------------------------------------------------------------------

/** `default` is how the build's own launcher starts node (its shebang); the others are fixed sets. */
function flagSets(): Record<string, readonly string[]> {
  return {
    default: build.launcherFlags,
    noFlags: [],
    semiSpace1: ["--max-semi-space-size=1"],
    semiSpace1OptimizeForSize: ["--max-semi-space-size=1", "--optimize-for-size"],
  };
}

/** VmHWM of a bare node with these flags (the floor under any agent), read while it idles. */
async function bareNode(flags: readonly string[]): Promise<number> {
  const cluster = need(net, "cluster");
  const started = cluster.spawn(cluster.switchNs, process.execPath, [
    ...flags,
    "-e",
    "setTimeout(() => {}, 3000)",
  ]);
  try {
    await sleep(1500);
    return readRss(started.pid).peakMiB;
  } finally {
    await started.stop(1000);
  }
}

async function memory(): Promise<object> {
  const n = cfg.bigPeers;
  const { prefix } = await prefixFor(n);
  const runs: Record<string, { peakMiB: number; nowMiB: number; bareNodeMiB: number; load: number }[]> = {};
  for (let run = 0; run < cfg.runs; run++) {
    for (const [name, nodeFlags] of Object.entries(flagSets())) {
      if (name !== "default" && nodeFlags.join(" ") === build.launcherFlags.join(" ")) continue;
      const agent = await launch(prefix, { nodeFlags });
      try {
        const pid = await agent.pid();
        await waitSynced(agent, n);
        await sleep(cfg.memoryHoldS * 1000);
        const rss = readRss(pid);
        const bare = await bareNode(nodeFlags);
        const r = {
          peakMiB: round(rss.peakMiB, 1),
          nowMiB: round(rss.nowMiB, 1),
          bareNodeMiB: round(bare, 1),
          load: load(),
        };
        (runs[name] ??= []).push(r);
        console.log(
          `  ${name} (${nodeFlags.join(" ") || "no flags"}) run ${run + 1}: peak ${r.peakMiB} MiB, now ${r.nowMiB} MiB (bare node ${r.bareNodeMiB} MiB), load ${r.load}`,
        );
      } finally {
        await stopAgent(agent);
      }
    }
  }
  const out: Record<string, object> = {};
  for (const [name, list] of Object.entries(runs)) {
    const peak = median(list.map((r) => r.peakMiB));
    const bare = median(list.map((r) => r.bareNodeMiB));
    const l = median(list.map((r) => r.load));
    figure(
      `rss.${n}.${name}MiB`,
      `peak RSS at ${n} peers, node flags: ${flagSets()[name]?.join(" ") || "none"}${name === "default" ? " (the launcher's)" : ""}`,
      peak,
      "MiB",
      {
        target: cfg.target.rssMiB,
        limit: "bare node with the same flags",
        limitValue: bare,
        load: l,
      },
    );
    out[name] = {
      nodeFlags: flagSets()[name],
      medianPeakMiB: round(peak, 1),
      maxPeakMiB: Math.max(...list.map((r) => r.peakMiB)),
      medianBareNodeMiB: round(bare, 1),
      runs: list,
    };
  }
  return { peers: n, holdSeconds: cfg.memoryHoldS, flagSets: out };
}

// ---- 5. idle CPU and resync ---------------------------------------------------------------------------

interface Window {
  name: string;
  args: string[];
  windowS: number;
  cpuSeconds: number;
  childCpuSeconds: number;
  percentOfCore: number;
  /** Reconcile rounds in the window, by trigger, from twill_reconcile_rounds_total. */
  rounds: Record<string, number>;
  peakRssMiB: number;
  load: { start: number; end: number };
  /** CPU seconds in the window by thread name (node = the main thread; V8 and libuv workers). */
  threads: Record<string, { user: number; system: number }>;
}

const TRIGGERS = ["resync", "kernel", "peers", "self", "retry", "overflow"];

async function cpuWindow(name: string, args: string[]): Promise<Window> {
  const n = cfg.bigPeers;
  const { prefix } = await prefixFor(n);
  const cluster = need(net, "cluster");
  const agent = await launch(prefix, { args });
  try {
    const pid = await agent.pid();
    await waitSynced(agent, n);
    await sleep(5000); // start-up rounds, the first rule install and the first GCs
    const before = await scrapeMetrics(cluster, agent.host);
    const startLoad = load();
    const cpu0 = readTreeCpu(pid);
    const threads0 = readThreadCpu(pid);
    const start = nowNs();
    await sleep(cfg.windowS * 1000);
    const cpu1 = readTreeCpu(pid);
    const threads = threadCpuDelta(threads0, readThreadCpu(pid));
    const windowS = msSince(start) / 1000;
    const after = await scrapeMetrics(cluster, agent.host);
    const rounds: Record<string, number> = {};
    for (const t of TRIGGERS) {
      const d =
        metricSum(after, "twill_reconcile_rounds_total", [`trigger="${t}"`]) -
        metricSum(before, "twill_reconcile_rounds_total", [`trigger="${t}"`]);
      if (!Number.isNaN(d)) rounds[t] = d;
    }
    const cpuSeconds = cpu1.self - cpu0.self;
    const childCpuSeconds = cpu1.children - cpu0.children;
    const w: Window = {
      name,
      args,
      windowS: round(windowS, 1),
      cpuSeconds: round(cpuSeconds, 3),
      childCpuSeconds: round(childCpuSeconds, 3),
      percentOfCore: round(((cpuSeconds + childCpuSeconds) / windowS) * 100, 3),
      rounds,
      peakRssMiB: round(readRss(pid).peakMiB, 1),
      load: { start: startLoad, end: load() },
      threads,
    };
    console.log(
      `  ${name}: ${w.percentOfCore}% of a core over ${w.windowS} s (agent ${w.cpuSeconds} s + children ${w.childCpuSeconds} s), ` +
        `rounds ${JSON.stringify(rounds)}, peak RSS ${w.peakRssMiB} MiB, load ${w.load.start}→${w.load.end}`,
    );
    console.log(`    by thread (user/system s): ${JSON.stringify(threads)}`);
    return w;
  } finally {
    await stopAgent(agent);
  }
}

async function idle(): Promise<object> {
  const idleDefault = await cpuWindow("idle, defaults", []);
  const idleNoForward = await cpuWindow("idle, --iptables-forward-rules=false", [
    "--iptables-forward-rules=false",
  ]);
  const fast = await cpuWindow(`resync every ${cfg.fastResyncS}s`, [`--resync-interval=${cfg.fastResyncS}s`]);
  const cpu = (w: Window): number => w.cpuSeconds + w.childCpuSeconds;
  const resyncs = (w: Window): number => w.rounds.resync ?? w.windowS / (build.defaultResyncMs / 1000);
  const fastResyncs = fast.rounds.resync ?? fast.windowS / cfg.fastResyncS;
  const scale = fast.windowS / idleDefault.windowS;
  const perResyncS =
    (cpu(fast) - cpu(idleDefault) * scale) / Math.max(1, fastResyncs - resyncs(idleDefault) * scale);
  const amortisedPct = (perResyncS / (build.defaultResyncMs / 1000)) * 100;
  // The idle window with the resyncs it held taken out and the default interval's amortised cost put in:
  // comparable between builds whatever their interval (a 60 s window never sees a 5 min resync).
  const idleAmortisedPct =
    idleDefault.percentOfCore -
    ((resyncs(idleDefault) * perResyncS) / idleDefault.windowS) * 100 +
    amortisedPct;
  const masqPct = idleDefault.percentOfCore - idleNoForward.percentOfCore;
  const l = idleDefault.load.end;
  const n = cfg.bigPeers;
  figure(
    `idle.${n}.percent`,
    `idle CPU at ${n} peers, defaults, ${idleDefault.windowS} s window`,
    idleDefault.percentOfCore,
    "%",
    {
      target: cfg.target.idlePercent,
      load: l,
    },
  );
  figure(
    `idle.${n}.amortisedPercent`,
    `idle CPU at ${n} peers with the resync amortised at ${build.defaultResyncText}`,
    idleAmortisedPct,
    "%",
    {
      target: cfg.target.idlePercent,
      load: l,
    },
  );
  figure(
    `idle.${n}.forwardRulesCheckPercent`,
    `of which the forward-rule check (defaults − forward rules off)`,
    masqPct,
    "%",
    {
      load: idleNoForward.load.end,
    },
  );
  figure(`resync.${n}.cpuMsPerRound`, `CPU per full resync at ${n} peers`, perResyncS * 1000, "ms", {
    load: fast.load.end,
  });
  figure(
    `resync.${n}.amortisedPercent`,
    `resync CPU amortised at the default ${build.defaultResyncText}`,
    amortisedPct,
    "%",
    {
      load: fast.load.end,
    },
  );
  return {
    peers: n,
    defaultResyncInterval: build.defaultResyncText,
    windows: [idleDefault, idleNoForward, fast],
    perResyncCpuMs: round(perResyncS * 1000, 1),
    amortisedPercentAtDefault: round(amortisedPct, 3),
    idleAmortisedPercent: round(idleAmortisedPct, 3),
    forwardRulesCheckPercent: round(masqPct, 3),
  };
}

// ---- output ---------------------------------------------------------------------------------------------

function fmt(v: number | undefined, unit = ""): string {
  if (v === undefined || Number.isNaN(v)) return "—";
  const text =
    Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(unit === "%" ? 3 : 2);
  return unit === "" || unit === "bool" ? text : `${text} ${unit}`;
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

function printTable(all: Record<string, Figure>): void {
  const rows = Object.entries(all).map(([id, f]) => [
    id,
    fmt(f.value, f.unit),
    fmt(f.target, f.unit),
    fmt(f.ofTarget, "×"),
    f.limit === undefined ? "" : `${fmt(f.ofLimit)}× ${f.limit} (${fmt(f.limitValue, f.unit)})`,
    fmt(f.load),
  ]);
  const head = ["figure", "value", "target", "÷target", "÷limit measured in this run", "load"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => pad(c, widths[i] ?? 0, i > 0 && i < 4)).join("  ");
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}

function resultPath(nameOrPath: string): string {
  return nameOrPath.endsWith(".json") ? nameOrPath : join(here, "results", `dataplane-${nameOrPath}.json`);
}

function compare(a: string, b: string): void {
  const load = (p: string): { label: string; figures: Record<string, Figure> } =>
    JSON.parse(readFileSync(resultPath(p), "utf8")) as { label: string; figures: Record<string, Figure> };
  const A = load(a);
  const B = load(b);
  const ids = [...new Set([...Object.keys(A.figures), ...Object.keys(B.figures)])];
  const rows = ids.map((id) => {
    const fa = A.figures[id];
    const fb = B.figures[id];
    const unit = fa?.unit ?? fb?.unit ?? "";
    return [
      id,
      fmt(fa?.value, unit),
      fmt(fb?.value, unit),
      fa !== undefined && fb !== undefined ? fmt(fb.value / fa.value, "×") : "—",
      fmt(fb?.target, unit),
      `${fmt(fa?.load)} / ${fmt(fb?.load)}`,
    ];
  });
  const head = ["figure", A.label, B.label, `${B.label}÷${A.label}`, "target", "load"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => pad(c, widths[i] ?? 0, i > 0 && i < 5)).join("  ");
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}

// ---- main ------------------------------------------------------------------------------------------------

async function teardown(): Promise<void> {
  await Promise.allSettled([...stoppables].map((s) => s.stop()));
  stoppables.clear();
  await Promise.allSettled([...agents].map((a) => a.stop()));
  agents.clear();
  await Promise.allSettled([...mountNamespaces].map((m) => m.stop()));
  mountNamespaces.clear();
  await writer?.stop();
  await net?.destroy();
}

async function section<T>(
  name: string,
  details: Record<string, unknown>,
  key: string,
  body: () => Promise<T>,
): Promise<T | undefined> {
  const started = Date.now();
  try {
    const r = await body();
    details[key] = r;
    return r;
  } catch (error) {
    const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
    console.error(`${name} failed: ${message}`);
    details[key] = { error: message };
    return undefined;
  } finally {
    console.log(`  (${name}: ${round((Date.now() - started) / 1000, 1)} s)`);
  }
}

async function main(): Promise<void> {
  build = resolveBuild();
  tearDownOnSignal(teardown);
  const startedAt = Date.now();
  const details: Record<string, unknown> = {};
  console.log(
    `dataplane benchmark${quick ? " (quick)" : ""} of ${build.cli} (label ${build.label}, ${build.commit || "no git"}, ` +
      `default resync ${build.defaultResyncText}, node flags ${build.launcherFlags.join(" ") || "none"}): ${cfg.runs} run(s), sections ${[...only].join(", ")}, load ${load()}`,
  );
  try {
    net = await createUnderlay();
    etcd = await net.startEtcd();
    writer = new Writer(net.switchNs, etcd.endpoint);
    await writer.ready;

    if (only.has("cold")) {
      const cold: Record<string, unknown> = {};
      details.coldStart = cold;
      for (const n of cfg.coldSizes) {
        console.log(`cold start, ${n} peers:`);
        await section(`cold start ${n}`, cold, String(n), () => coldStart(n));
      }
    }
    if (only.has("events")) {
      const events: Record<string, unknown> = {};
      details.peerEvents = events;
      for (const base of cfg.eventBases) {
        console.log(`peer events, ${base} peers synced:`);
        const r = await section(`peer events ${base}`, events, String(base), () => peerEvents(base));
        if (r !== undefined) eventFigures(base, r as Record<string, unknown>);
      }
    }
    if (only.has("drift")) {
      const drifts: Record<string, unknown> = {};
      details.drift = drifts;
      for (const base of cfg.eventBases) {
        console.log(`drift repair, ${base} peers (agent with --ip-masq):`);
        const r = await section(`drift ${base}`, drifts, String(base), () => drift(base));
        if (r !== undefined)
          driftFigures(base, r as { kinds: Record<string, DriftKind | string>; load: number });
      }
    }
    if (only.has("memory")) {
      console.log(`peak RSS, ${cfg.bigPeers} peers:`);
      await section("memory", details, "memory", memory);
    }
    if (only.has("idle")) {
      console.log(`idle CPU and resync, ${cfg.bigPeers} peers, ${cfg.windowS} s windows:`);
      await section("idle", details, "idle", idle);
    }
    if (only.has("wireguard")) {
      console.log(
        `wireguard cold start, ${cfg.wireguardPeers} peers, against vxlan's and a hand-built wireguard-go (idle windows ${cfg.wireguardWindowS} s):`,
      );
      await section("wireguard cold start", details, "wireguardColdStart", wireguardColdStart);
    }
    if (only.has("dualstack")) {
      console.log(
        `dual-stack cold start, ${cfg.dualStackPeers} peers, against a raw batch of the same objects and the IPv4-only cold start:`,
      );
      await section("dual-stack cold start", details, "dualStackColdStart", dualStackColdStart);
    }
  } finally {
    await teardown();
  }
  const totalSeconds = round((Date.now() - startedAt) / 1000, 1);
  const path = writeResult(`dataplane-${build.label}`, {
    label: build.label,
    agent: {
      cli: build.cli,
      commit: build.commit,
      defaultResyncInterval: build.defaultResyncText,
      extraNodeFlags: EXTRA_NODE_FLAGS,
    },
    quick,
    config: cfg,
    machine: {
      cpus: cpus().length,
      kernel: release(),
      node: process.version,
      loadAtEnd: loadavg().map((l) => round(l, 2)),
    },
    figures,
    details,
    totalSeconds,
  });
  console.log(`\n${build.label} (${build.commit || build.cli}):`);
  printTable(figures);
  console.log(`written ${path} (${totalSeconds} s)`);
}

if (process.argv[2] === "compare") {
  const [a, b] = process.argv.slice(3);
  if (a === undefined || b === undefined)
    throw new Error("usage: dataplane.ts compare <label|file.json> <label|file.json>");
  compare(a, b);
} else {
  await main();
}
