// The agent build a benchmark measures, and how it is started and watched from outside.
//
// AGENT_CLI points at another build's dist/cli/main.js (default: this checkout's), so the same
// benchmark can run against a baseline and the current code one after the other on the same machine.
// BENCH_LABEL names the run (default: the directory holding that build's dist/, e.g. "main").
// The agent is started like test/helpers/agent.ts does (`ip netns exec <host> node … agent …`, its own
// subnet file, state dir and CNI file in a temp dir), but with that CLI and optional V8 flags for node.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Cluster, Host } from "../test/helpers/netns.js";
import { startProcess, type Started } from "../test/helpers/processes.js";
import { parseLogLines, shebangNodeFlags } from "../test/helpers/agent.js";
import { stopRecordedWireGuardGo } from "../test/helpers/wireguard.js";
import { parseIPv4 } from "../src/ip/ipv4.js";
import { parseCidr6 } from "../src/ip/ipv6.js";
import { subnetKey } from "../src/lease/key.js";

const here = dirname(fileURLToPath(import.meta.url));

export interface AgentBuild {
  /** Absolute path of the CLI (…/dist/cli/main.js). */
  readonly cli: string;
  readonly label: string;
  /** git commit of the build's checkout, with "-dirty" when it has uncommitted changes; "" if unknown. */
  readonly commit: string;
  /** The agent's default --resync-interval, read from its --help, in ms. */
  readonly defaultResyncMs: number;
  readonly defaultResyncText: string;
  /** The node flags the build's own launcher gives (its shebang line): how an operator runs it. */
  readonly launcherFlags: readonly string[];
}

function git(dir: string, args: string[]): string {
  try {
    return execFileSync("git", ["-C", dir, ...args], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
  } catch {
    return "";
  }
}

/** "5m", "30s", "1h30m", "250ms" → ms (the forms the agents print as defaults). */
export function parseDuration(text: string): number {
  const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  let rest = text.trim();
  while (rest !== "") {
    const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)/.exec(rest);
    if (match?.[1] === undefined || match[2] === undefined) throw new Error(`not a duration: ${text}`);
    total += Number(match[1]) * (units[match[2]] ?? Number.NaN);
    rest = rest.slice(match[0].length);
  }
  return total;
}

export function resolveBuild(): AgentBuild {
  const cli = resolve(process.env.AGENT_CLI ?? join(here, "..", "dist", "cli", "main.js"));
  if (!existsSync(cli)) throw new Error(`no agent at ${cli}: build it (npm run build) or set AGENT_CLI`);
  // …/<checkout>/dist/cli/main.js → <checkout>
  const checkout = dirname(dirname(dirname(cli)));
  const label = process.env.BENCH_LABEL ?? basename(checkout);
  if (!/^[\w.-]+$/.test(label)) throw new Error(`BENCH_LABEL must be a plain file name part: ${label}`);
  const head = git(checkout, ["rev-parse", "--short=12", "HEAD"]).trim();
  const dirty = head !== "" && git(checkout, ["status", "--porcelain", "--", "src"]).trim() !== "";
  const help = execFileSync(process.execPath, [cli, "agent", "--help"], { encoding: "utf8" });
  const match = /--resync-interval[^\n]*\n[^\n]*\(default ([^)]+)\)/.exec(help);
  const defaultResyncText = match?.[1] ?? "30s";
  return {
    cli,
    label,
    commit: head === "" ? "" : `${head}${dirty ? "-dirty" : ""}`,
    defaultResyncMs: parseDuration(defaultResyncText),
    defaultResyncText,
    launcherFlags: shebangNodeFlags(cli),
  };
}

// ---- /proc -------------------------------------------------------------------------------------------

const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;

function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    const text = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim();
    if (text !== "") out.push(...text.split(/\s+/).map(Number));
  }
  return out;
}

/**
 * The node process of an agent. `ip netns exec` execs node in place, but right after the spawn the
 * PID may still be `ip`; wait for the exec (or, with another ip, for a node child) rather than assume.
 */
export async function nodePid(pid: number): Promise<number> {
  const comm = (p: number): string => readFileSync(`/proc/${p}/comm`, "utf8").trim();
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (comm(pid) === "node") return pid;
    const child = childPids(pid).find((c) => comm(c) === "node");
    if (child !== undefined) return child;
    if (Date.now() > deadline) throw new Error(`no node process at or under PID ${pid}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export interface Cpu {
  /** utime + stime of the process itself, seconds. */
  readonly self: number;
  /** cutime + cstime: children it has waited for (iptables, ip, bridge, …), seconds. */
  readonly children: number;
}

/** A /proc stat file's name (comm) and its numeric fields after "(comm)", as the kernel gives them. */
function readStat(path: string): { name: string; field: (i: number) => number } {
  const stat = readFileSync(path, "utf8");
  const f = stat
    .slice(stat.lastIndexOf(")") + 2)
    .split(" ")
    .map(Number);
  return { name: stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")), field: (i) => f[i] ?? 0 };
}

// Fields after "(comm)": state is field 3, so utime (14) … cstime (17) are at 11 … 14 here.
const UTIME = 11;
const STIME = 12;

export function readCpu(pid: number): Cpu {
  const { field } = readStat(`/proc/${pid}/stat`);
  return {
    self: (field(UTIME) + field(STIME)) / CLK_TCK,
    children: (field(STIME + 1) + field(STIME + 2)) / CLK_TCK,
  };
}

/**
 * CPU of the process and everything under it: its own, what its reaped children used (cutime), and what
 * its live descendants used so far (a long-lived child such as the baseline's `ip monitor` is only
 * counted in cutime when it exits). The difference of two readings is the tree's CPU in between.
 */
export function readTreeCpu(pid: number): Cpu {
  const own = readCpu(pid);
  let children = own.children;
  const visit = (p: number): void => {
    let kids: number[];
    try {
      kids = childPids(p);
    } catch {
      return; // exited meanwhile
    }
    for (const kid of kids) {
      try {
        const c = readCpu(kid);
        children += c.self + c.children;
      } catch {
        continue;
      }
      visit(kid);
    }
  };
  visit(pid);
  return { self: own.self, children };
}

/** CPU seconds (user, system) of each thread of a process, keyed "<tid> <name>" (main thread: "node"). */
export function readThreadCpu(pid: number): Map<string, { user: number; system: number }> {
  const out = new Map<string, { user: number; system: number }>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const { name, field } = readStat(`/proc/${pid}/task/${tid}/stat`);
      out.set(`${tid} ${name}`, { user: field(UTIME) / CLK_TCK, system: field(STIME) / CLK_TCK });
    } catch {
      continue; // the thread ended meanwhile
    }
  }
  return out;
}

/** Per thread name, the CPU seconds used between two readThreadCpu readings (threads with any). */
export function threadCpuDelta(
  before: Map<string, { user: number; system: number }>,
  after: Map<string, { user: number; system: number }>,
): Record<string, { user: number; system: number }> {
  const out: Record<string, { user: number; system: number }> = {};
  for (const [key, a] of after) {
    const b = before.get(key) ?? { user: 0, system: 0 };
    const name = key.slice(key.indexOf(" ") + 1);
    const sum = (out[name] ??= { user: 0, system: 0 });
    sum.user = Math.round((sum.user + a.user - b.user) * 100) / 100;
    sum.system = Math.round((sum.system + a.system - b.system) * 100) / 100;
  }
  return Object.fromEntries(Object.entries(out).filter(([, v]) => v.user !== 0 || v.system !== 0));
}

/** VmHWM (peak resident set) and VmRSS (now) in MiB. */
export function readRss(pid: number): { peakMiB: number; nowMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status);
    return match?.[1] === undefined ? Number.NaN : Number(match[1]) / 1024;
  };
  return { peakMiB: field("VmHWM"), nowMiB: field("VmRSS") };
}

// ---- the agent process ------------------------------------------------------------------------------

export type LogLine = Record<string, unknown>;

/**
 * BENCH_NODE_FLAGS: node flags for every agent, for a look inside (e.g. "--cpu-prof
 * --cpu-prof-dir=/tmp/prof": a profile per agent, written when it exits). They change what is measured.
 */
export const EXTRA_NODE_FLAGS: readonly string[] = (process.env.BENCH_NODE_FLAGS ?? "")
  .split(" ")
  .filter((f) => f !== "");

export interface AgentOptions {
  /** Agent flags after `agent` (--iface=eth0 and the per-agent files are always given). */
  readonly args?: readonly string[];
  /** V8/node flags before the CLI path (default: the build's launcher flags), e.g. --max-semi-space-size=1. */
  readonly nodeFlags?: readonly string[];
  /**
   * Run inside the mount namespace of this process (test/helpers/wireguard.ts startMountNamespace: a
   * private /run/wireguard for the wireguard backend's wireguard-go), entered before the network one.
   */
  readonly mountNamespaceOf?: number;
}

export class RunningAgent {
  readonly startNs: bigint;
  readonly startWall: number;
  readonly process: Started;
  private readonly dir: string;
  private readonly subnetFile: string;
  readonly stateDir: string;
  private pidCache: number | undefined;
  private parsed: LogLine[] = [];
  private parsedUpTo = 0;

  constructor(
    cluster: Cluster,
    readonly host: Host,
    build: AgentBuild,
    etcdEndpoint: string,
    readonly prefix: string,
    readonly options: AgentOptions = {},
  ) {
    this.dir = mkdtempSync(join(tmpdir(), "twill-bench-"));
    this.subnetFile = join(this.dir, "subnet.env");
    this.stateDir = join(this.dir, "state");
    const args = [
      ...(options.nodeFlags ?? build.launcherFlags),
      ...EXTRA_NODE_FLAGS,
      build.cli,
      "agent",
      `--etcd-endpoints=${etcdEndpoint}`,
      `--etcd-prefix=${prefix}`,
      `--subnet-file=${this.subnetFile}`,
      `--state-dir=${this.stateDir}`,
      `--cni-conf-file=${join(this.dir, "10-twill.conflist")}`,
      "--iface=eth0",
      ...(options.args ?? []),
    ];
    this.startNs = process.hrtime.bigint();
    this.startWall = Date.now();
    // nsenter and `ip netns exec` both exec in place: the PID is the agent's (nodePid waits for it).
    // The mount namespace first, as test/helpers/agent.ts does: `ip netns exec` then makes its own
    // copy of it (with /sys for the host), which still holds the private /run/wireguard.
    this.process =
      options.mountNamespaceOf === undefined
        ? cluster.spawn(host.ns, process.execPath, args)
        : startProcess("nsenter", [
            `--mount=/proc/${options.mountNamespaceOf}/ns/mnt`,
            "--",
            "ip",
            "netns",
            "exec",
            host.ns,
            process.execPath,
            ...args,
          ]);
  }

  async pid(): Promise<number> {
    this.pidCache ??= await nodePid(this.process.pid);
    return this.pidCache;
  }

  /** Parsed JSON log lines so far (parsed incrementally: the 5,000-peer logs are long). */
  logs(): readonly LogLine[] {
    const out = this.process.stdout();
    const end = out.lastIndexOf("\n") + 1;
    if (end > this.parsedUpTo) {
      this.parsed.push(...parseLogLines(out.slice(this.parsedUpTo, end)));
      this.parsedUpTo = end;
    }
    return this.parsed;
  }

  /** Log lines with this message, optionally only those logged at or after `sinceWall` (Date.now()). */
  lines(msg: string, sinceWall = 0, untilWall = Number.POSITIVE_INFINITY): LogLine[] {
    return this.logs().filter((l) => {
      if (l.msg !== msg) return false;
      const t = logWall(l);
      return t === undefined || (t >= sinceWall && t <= untilWall);
    });
  }

  /** ms from the agent's start to the first line with this message, if any. */
  msTo(msg: string): number | undefined {
    const line = this.logs().find((l) => l.msg === msg);
    const t = line === undefined ? undefined : logWall(line);
    return t === undefined ? undefined : t - this.startWall;
  }

  private subnetVar(name: string): string | undefined {
    try {
      return new RegExp(`^${name}=(\\S+)$`, "m").exec(readFileSync(this.subnetFile, "utf8"))?.[1];
    } catch {
      return undefined;
    }
  }

  /** The subnet file's FLANNEL_SUBNET (e.g. "10.0.255.1/24"), once written. */
  subnet(): string | undefined {
    return this.subnetVar("FLANNEL_SUBNET");
  }

  /** The subnet file's FLANNEL_IPV6_SUBNET (e.g. "fd00:10:0:ffff::1/64") on a dual-stack agent. */
  ipv6Subnet(): string | undefined {
    return this.subnetVar("FLANNEL_IPV6_SUBNET");
  }

  /**
   * The etcd key of the agent's own lease, once it has one: …/10.0.255.0-24, or on a dual-stack agent
   * …/10.0.255.0-24&fd00:10:0:ffff::-64 (flannel's key, built by the agent's own subnetKey).
   */
  leaseKey(): string | undefined {
    const subnet = this.subnet();
    if (subnet === undefined) return undefined;
    const [ip, len] = subnet.split("/");
    const network = (ip ?? "").replace(/\.\d+$/, ".0");
    const v6 = this.ipv6Subnet();
    if (v6 === undefined) return `${this.prefix}/subnets/${network}-${len ?? "24"}`;
    return subnetKey(this.prefix, { ip: parseIPv4(network), prefixLen: Number(len ?? "24") }, parseCidr6(v6));
  }

  tail(chars = 3000): string {
    return this.process.output().slice(-chars);
  }

  /**
   * SIGTERM (SIGKILL after 5 s) by PID; then the wireguard-go its state dir names, if any (it outlives
   * its agent by design), by that PID; then removes the temp dir.
   */
  async stop(): Promise<void> {
    await this.process.stop(5000);
    await stopRecordedWireGuardGo(this.stateDir);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function logWall(line: LogLine): number | undefined {
  if (typeof line.time === "string") return Date.parse(line.time);
  if (typeof line.time === "number") return line.time;
  return undefined;
}

export function num(line: LogLine, field: string): number | undefined {
  const value = line[field];
  return typeof value === "number" ? value : undefined;
}

export function str(line: LogLine, field: string): string | undefined {
  const value = line[field];
  return typeof value === "string" ? value : undefined;
}

/** Counters from the agent's /metrics, read inside its namespace with curl: name{labels} → value. */
export async function scrapeMetrics(cluster: Cluster, host: Host): Promise<Map<string, number>> {
  const result = await cluster.exec(host.ns, [
    "curl",
    "-s",
    "--max-time",
    "10",
    "http://127.0.0.1:9102/metrics",
  ]);
  const metrics = new Map<string, number>();
  if (result.exitCode !== 0) return metrics;
  for (const line of result.stdout.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const at = line.lastIndexOf(" ");
    metrics.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return metrics;
}

/** Sum of every series of `name` whose labels include all of `labels` (e.g. trigger="resync"). */
export function metricSum(metrics: ReadonlyMap<string, number>, name: string, labels: string[] = []): number {
  let sum = 0;
  let found = false;
  for (const [series, value] of metrics) {
    if (series !== name && !series.startsWith(`${name}{`)) continue;
    if (!labels.every((l) => series.includes(l))) continue;
    sum += value;
    found = true;
  }
  return found ? sum : Number.NaN;
}
