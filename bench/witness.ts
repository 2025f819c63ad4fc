// What the data-plane benchmark sees of a host namespace from outside the agent: kernel notifications
// through `ip monitor` / `bridge monitor` children in the namespace, route counts, iptables polls, the
// kernel's state compared with the leases in etcd, and the raw `ip`/`bridge -batch` limit.
import { execFile } from "node:child_process";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { parseVxlanPeerData } from "../src/backends/vxlan/backend-data.js";
import { TWILL_ROUTE_PROTOCOL } from "../src/dataplane/objects.js";
import { decodeLeaseAttrs } from "../src/lease/attrs.js";
import { formatIPv4 } from "../src/ip/ipv4.js";
import { formatIPv6 } from "../src/ip/ipv6.js";
import { hasIPv4, tryParseSubnetKey } from "../src/lease/key.js";
import { readFdb, readNeighbours, readRoutes } from "../test/helpers/ip-read.js";
import type { Cluster, Host } from "../test/helpers/netns.js";
import type { Started } from "../test/helpers/processes.js";
import { VXLAN_DEV, VXLAN_V6_DEV, type DualStackPeer, type Peer } from "./peers.js";

const run = promisify(execFile);
export const nowNs = (): bigint => process.hrtime.bigint();
export const msSince = (start: bigint, end: bigint = nowNs()): number => Number(end - start) / 1e6;
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---- notifications ----------------------------------------------------------------------------------

/** "route" is IPv4 routes (`ip -4 monitor route`), "route6" IPv6 ones (`ip -6 monitor route`). */
export type WatchKind = "route" | "route6" | "neigh" | "fdb" | "link" | "addr";

export interface SeenEvent {
  /**
   * When the monitor read the event, on the hrtime scale (CLOCK_MONOTONIC, comparable with the etcd
   * writer's): its own timestamp, not this process's, which may be busy when a line arrives, so that
   * a deletion and its repair a fraction of a millisecond later do not arrive here as one chunk.
   */
  readonly at: bigint;
  /** hrtime when the line arrived here. */
  readonly readAt: bigint;
  readonly kind: WatchKind;
  /** route, route6: dst as printed ("10.0.1.0/24", "fd00:10:0:1::/64"); neigh: dst; fdb: MAC; link: name; addr: "dev cidr". */
  readonly key: string;
  readonly deleted: boolean;
  /** neigh: lladdr (absent on FAILED); fdb: dst. */
  readonly detail: string | undefined;
  /** neigh: the NUD state printed last ("PERMANENT", "FAILED", …). */
  readonly state: string | undefined;
}

interface Waiter {
  readonly after: bigint;
  readonly match: (e: SeenEvent) => boolean;
  readonly resolve: (e: SeenEvent) => void;
}

// -t: each event is preceded by "Timestamp: <ctime> <µs> usec", taken by the monitor as it reads the
// event; -rc: an 8 MiB receive buffer (capped by rmem_max), so a burst of thousands is not dropped.
const MONITOR_COMMANDS: Record<WatchKind, readonly string[]> = {
  route: ["ip", "-t", "-4", "-rc", "8388608", "monitor", "route"],
  route6: ["ip", "-t", "-6", "-rc", "8388608", "monitor", "route"],
  neigh: ["ip", "-t", "-4", "-rc", "8388608", "monitor", "neigh"],
  fdb: ["bridge", "-t", "monitor", "fdb"],
  link: ["ip", "-t", "monitor", "link", "address"],
  addr: [],
};

/**
 * How a monitor is scheduled.
 *
 * "realtime" (`chrt -f 1`, the lowest real-time priority) for latencies of one change at a time: the
 * monitor runs the moment the kernel wakes it, not after whatever else is runnable on a loaded 2-core
 * machine (the agent itself), so a deletion and the agent's repair a millisecond later get stamps that
 * far apart instead of being read, and stamped, together after both happened.
 *
 * "normal" for thousands of changes at once (cold start, bursts, a device replay): a real-time monitor
 * woken by every notification preempts the writer in the middle of its sendmsg — the kernel delivers
 * notifications in the writer's context — and a CPU profile of the agent then shows that time in
 * `send`. At normal priority the monitor reads in batches when it gets a CPU; its stamps may be late
 * by a scheduling delay, small next to the figures it times.
 */
export type MonitorPriority = "realtime" | "normal";

/**
 * CLOCK_REALTIME − CLOCK_MONOTONIC in ns, to put the monitors' wall-clock stamps on the benchmark's
 * hrtime scale. Date.now() has 1 ms steps: taken right at a step, it agrees with hrtime to a few µs.
 * The median of a few tries; recalibrated while monitors run, so clock slewing does not add up.
 */
export function wallMinusMonoNs(): bigint {
  const tries: bigint[] = [];
  for (let i = 0; i < 5; i++) {
    const first = Date.now();
    let now = first;
    while (now === first) now = Date.now();
    tries.push(BigInt(now) * 1_000_000n - process.hrtime.bigint());
  }
  tries.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return tries[2] ?? 0n;
}

/** "Timestamp: Wed Dec  2 16:35:18 2026 808221 usec" → wall-clock ns, or undefined. */
function parseStamp(line: string): bigint | undefined {
  const match = /^Timestamp: (.+) (\d+) usec$/.exec(line);
  if (match?.[1] === undefined || match[2] === undefined) return undefined;
  const seconds = Date.parse(match[1]);
  if (Number.isNaN(seconds)) return undefined;
  return BigInt(seconds) * 1_000_000n + BigInt(match[2]) * 1000n;
}

function parseLine(kind: WatchKind, raw: string, at: bigint, readAt: bigint): SeenEvent | undefined {
  if (raw.startsWith(" ") || raw.trim() === "") return undefined; // continuation lines
  const deleted = raw.startsWith("Deleted ");
  const line = deleted ? raw.slice("Deleted ".length) : raw;
  const tokens = line.trim().split(/\s+/);
  const first = tokens[0] ?? "";
  switch (kind) {
    case "route":
    case "route6":
      return { at, readAt, kind, key: first, deleted, detail: undefined, state: undefined };
    case "neigh":
      return {
        at,
        readAt,
        kind,
        key: first,
        deleted,
        detail: / lladdr (\S+)/.exec(line)?.[1],
        state: tokens[tokens.length - 1],
      };
    case "fdb":
      return {
        at,
        readAt,
        kind,
        key: first,
        deleted,
        detail: / dst (\S+)/.exec(line)?.[1],
        state: undefined,
      };
    case "link":
    case "addr": {
      // "12: flannel.1: <…> mtu …" (link) or "12: cni0    inet 10.0.5.1/24 scope global cni0" (address)
      const address = /^\d+: (\S+)\s+inet6? (\S+)/.exec(line);
      if (address?.[1] !== undefined && address[2] !== undefined) {
        return {
          at,
          readAt,
          kind: "addr",
          key: `${address[1]} ${address[2]}`,
          deleted,
          detail: undefined,
          state: undefined,
        };
      }
      const link = /^\d+: ([^:@\s]+)(?:@\S+)?:/.exec(line);
      if (link?.[1] === undefined) return undefined;
      return { at, readAt, kind: "link", key: link[1], deleted, detail: undefined, state: undefined };
    }
  }
}

/**
 * Kernel notifications of one host namespace, from monitor children inside it. The kernel multicasts
 * each change as it is made and the monitors flush every event, so a timestamp taken here is late only by
 * a pipe hop: unlike a dump poll, it adds no period and no process start, and no load next to the agent.
 */
export class KernelMonitor {
  private readonly byKey = new Map<string, SeenEvent[]>();
  private readonly waiters = new Map<string, Set<Waiter>>();
  private readonly children: Started[] = [];

  private offset = wallMinusMonoNs();
  private readonly calibration: NodeJS.Timeout;
  /** Events whose monitor stamp was missing (their `at` is the read time). */
  unstamped = 0;

  constructor(
    cluster: Cluster,
    ns: string,
    kinds: readonly Exclude<WatchKind, "addr">[],
    readonly priority: MonitorPriority,
  ) {
    this.calibration = setInterval(() => (this.offset = wallMinusMonoNs()), 10_000);
    for (const kind of kinds) {
      if (MONITOR_COMMANDS[kind].length === 0) continue;
      const argv = [...(priority === "realtime" ? ["chrt", "-f", "1"] : []), ...MONITOR_COMMANDS[kind]];
      const [command, ...args] = argv;
      if (command === undefined) continue;
      const child = cluster.spawn(ns, command, args);
      this.children.push(child);
      const stdout = child.child.stdout;
      if (stdout === null) throw new Error(`${command} monitor has no stdout`);
      let stamp: bigint | undefined;
      createInterface({ input: stdout }).on("line", (line) => {
        const readAt = nowNs();
        if (line.startsWith("Timestamp: ")) {
          stamp = parseStamp(line);
          return;
        }
        const at = stamp === undefined ? readAt : stamp - this.offset;
        const event = parseLine(kind, line, at, readAt);
        if (event === undefined) return;
        stamp = undefined;
        if (at === readAt) this.unstamped++;
        this.record(event);
      });
    }
  }

  /** The monitors print nothing once subscribed; give them a moment (callers warm up where it matters). */
  async settle(): Promise<void> {
    await sleep(400);
  }

  private record(event: SeenEvent): void {
    const id = `${event.kind} ${event.key}`;
    let list = this.byKey.get(id);
    if (list === undefined) this.byKey.set(id, (list = []));
    list.push(event);
    const waiting = this.waiters.get(id);
    if (waiting === undefined) return;
    for (const w of waiting) {
      if (event.at >= w.after && w.match(event)) {
        waiting.delete(w);
        w.resolve(event);
      }
    }
  }

  /** The first event of `kind` for `key` at or after `after` that matches, waiting up to `timeoutMs`. */
  async next(
    kind: WatchKind,
    key: string,
    after: bigint,
    match: (e: SeenEvent) => boolean,
    timeoutMs: number,
  ): Promise<SeenEvent | undefined> {
    const id = `${kind} ${key}`;
    const known = this.byKey.get(id)?.find((e) => e.at >= after && match(e));
    if (known !== undefined) return known;
    if (timeoutMs <= 0) return undefined;
    return new Promise((resolve) => {
      let set = this.waiters.get(id);
      if (set === undefined) this.waiters.set(id, (set = new Set()));
      const waiters = set;
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        resolve(undefined);
      }, timeoutMs);
      timer.unref(); // a wait nobody awaits any more must not keep the benchmark alive
      const waiter: Waiter = {
        after,
        match,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      };
      waiters.add(waiter);
    });
  }

  /** The time by which every key has had a matching event after `after`; undefined if one did not. */
  async all(
    kind: WatchKind,
    keys: readonly string[],
    after: bigint,
    match: (e: SeenEvent) => boolean,
    timeoutMs: number,
  ): Promise<{ last: bigint | undefined; missing: number }> {
    const deadline = Date.now() + timeoutMs;
    let last = after;
    let missing = 0;
    for (const key of keys) {
      const e = await this.next(kind, key, after, match, Math.max(0, deadline - Date.now()));
      if (e === undefined) missing++;
      else if (e.at > last) last = e.at;
    }
    return { last: missing === 0 ? last : undefined, missing };
  }

  /** Receive-buffer overflows the monitors reported (events lost). */
  overflows(): number {
    return this.children.reduce(
      (n, c) => n + (c.output().match(/No buffer space available/g)?.length ?? 0),
      0,
    );
  }

  /** Forgets what was seen (long runs). */
  clear(): void {
    this.byKey.clear();
  }

  async stop(): Promise<void> {
    clearInterval(this.calibration);
    await Promise.all(this.children.map((c) => c.stop(2000)));
  }
}

export const added = (e: SeenEvent): boolean => !e.deleted;
export const removed = (e: SeenEvent): boolean => e.deleted;
/** A neighbour that is not (or no longer) a permanent entry: deleted, or FAILED on its way out. */
export const neighGone = (e: SeenEvent): boolean => e.deleted || e.state !== "PERMANENT";
export const neighIs =
  (lladdr: string) =>
  (e: SeenEvent): boolean =>
    !e.deleted && e.state === "PERMANENT" && e.detail === lladdr;

// ---- polls -----------------------------------------------------------------------------------------

/**
 * twill's routes in `ns` (IPv4, or IPv6 with family 6): plain text with `ip -n` (a setns, no mount
 * namespace like `ip netns exec`), the cheapest dump there is, since it runs in a loop next to the agent.
 */
export async function countRoutes(ns: string, family: 4 | 6 = 4): Promise<number> {
  const { stdout } = await run(
    "ip",
    ["-n", ns, `-${family}`, "route", "show", "proto", String(TWILL_ROUTE_PROTOCOL)],
    {
      maxBuffer: 64 * 1024 * 1024,
    },
  );
  return stdout.split("\n").filter((l) => l.trim() !== "").length;
}

/** Polls until `ns` holds exactly `count` twill routes; returns the hrtime at the end of that dump. */
export async function waitRouteCount(
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

/**
 * When every one of `dsts` has been added as a route in `ns` since `after`: from the route monitor, or,
 * should it have dropped events, from a dump poll every 500 ms running alongside (its time then counts,
 * with a period's error, 1 s after the poll saw them all and the monitor had not). Undefined on timeout.
 * `family` 6: IPv6 routes, from the monitor's "route6" kind and `ip -6` dumps.
 */
export async function routesPresent(
  mon: KernelMonitor,
  ns: string,
  dsts: readonly string[],
  after: bigint,
  timeoutMs: number,
  family: 4 | 6 = 4,
): Promise<{ at: bigint; method: string } | undefined> {
  const state = { finished: false };
  const viaMonitor = mon
    .all(family === 4 ? "route" : "route6", dsts, after, added, timeoutMs)
    .then((r) => (r.last === undefined ? undefined : { at: r.last, method: "ip monitor" }));
  const viaPoll = (async () => {
    const deadline = Date.now() + timeoutMs;
    while (!state.finished && Date.now() < deadline) {
      if ((await countRoutes(ns, family)) === dsts.length) {
        const at = nowNs();
        await sleep(1000);
        return { at, method: `dump poll (the monitor missed some; ${mon.overflows()} overflows)` };
      }
      await sleep(500);
    }
    return undefined;
  })();
  const first = await Promise.race([viaMonitor, viaPoll]);
  state.finished = true;
  return first ?? (await viaMonitor) ?? (await viaPoll);
}

/** The iptables command the agent chose, read back with `-S`; nat chain FLANNEL-POSTRTG. */
export const MASQ_CHAIN = "FLANNEL-POSTRTG";

/**
 * Polls `<iptables> -t nat -S FLANNEL-POSTRTG` in a loop inside the namespace (a shell loop there, so no
 * `ip netns exec` per poll), ~10 ms apart. A snapshot counts from the moment its poll started.
 */
export class RulePoller {
  private readonly child: Started;
  private blockStart: bigint | undefined;
  private block: string[] = [];
  private readonly snapshots: { start: bigint; end: bigint; rules: Set<string> }[] = [];
  private readonly waiters = new Set<() => void>();

  constructor(cluster: Cluster, ns: string, command: string) {
    if (!/^[\w.-]+$/.test(command)) throw new Error(`unexpected iptables command ${command}`);
    const script = `while :; do echo @@; ${command} -w -t nat -S ${MASQ_CHAIN} 2>&1; sleep 0.01; done`;
    this.child = cluster.spawn(ns, "sh", ["-c", script]);
    const stdout = this.child.child.stdout;
    if (stdout === null) throw new Error("rule poller has no stdout");
    createInterface({ input: stdout }).on("line", (line) => {
      const at = nowNs();
      if (line !== "@@") {
        this.block.push(line);
        return;
      }
      if (this.blockStart !== undefined) {
        this.snapshots.push({ start: this.blockStart, end: at, rules: new Set(this.block) });
        for (const w of this.waiters) w();
      }
      this.blockStart = at;
      this.block = [];
    });
  }

  /** The rules (`-A …` lines) of the latest complete poll that started at or after `after`. */
  async rules(after: bigint, timeoutMs = 10_000): Promise<string[]> {
    const snap = await this.first(after, () => true, timeoutMs);
    return snap === undefined ? [] : [...snap.rules].filter((l) => l.startsWith("-A "));
  }

  /** The end of the first poll started at or after `after` that shows `rule` (undefined on timeout). */
  async present(rule: string, after: bigint, timeoutMs: number): Promise<bigint | undefined> {
    return (await this.first(after, (rules) => rules.has(rule), timeoutMs))?.end;
  }

  /** The end of the first poll started at or after `after` that does not show `rule`. */
  async absent(rule: string, after: bigint, timeoutMs: number): Promise<bigint | undefined> {
    return (await this.first(after, (rules) => !rules.has(rule), timeoutMs))?.end;
  }

  private async first(
    after: bigint,
    match: (rules: Set<string>) => boolean,
    timeoutMs: number,
  ): Promise<{ end: bigint; rules: Set<string> } | undefined> {
    const deadline = Date.now() + timeoutMs;
    let checked = 0;
    for (;;) {
      for (; checked < this.snapshots.length; checked++) {
        const s = this.snapshots[checked];
        if (s !== undefined && s.start >= after && match(s.rules)) return s;
      }
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.waiters.add(done);
      });
    }
  }

  stop(): Promise<void> {
    return this.child.stop(2000);
  }
}

// ---- the kernel against etcd -----------------------------------------------------------------------

export interface KindDiff {
  readonly expected: number;
  readonly actual: number;
  readonly missing: number;
  readonly extra: number;
  /** A few of the differences, for a look by hand. */
  readonly examples: string[];
}

export interface StateCheck {
  readonly equal: boolean;
  readonly leases: number;
  readonly routes: KindDiff;
  readonly neighbours: KindDiff;
  readonly fdb: KindDiff;
  /** With `ipv6`: the same on flannel-v6.1, for the leases' IPv6 subnets. */
  readonly routes6?: KindDiff;
  readonly neighbours6?: KindDiff;
  readonly fdb6?: KindDiff;
}

function diff(expected: ReadonlySet<string>, actual: ReadonlySet<string>): KindDiff {
  const missing = [...expected].filter((e) => !actual.has(e));
  const extra = [...actual].filter((a) => !expected.has(a));
  return {
    expected: expected.size,
    actual: actual.size,
    missing: missing.length,
    extra: extra.length,
    examples: [
      ...missing.slice(0, 3).map((m) => `missing ${m}`),
      ...extra.slice(0, 3).map((x) => `extra ${x}`),
    ],
  };
}

/** What the kernel holds of one VXLAN device's peers: routes (one family, proto 151), neighbours, FDB. */
async function readDevice(
  host: Host,
  family: 4 | 6,
  dev: string,
): Promise<{ routes: Set<string>; neighbours: Set<string>; fdb: Set<string> }> {
  const [kRoutes, kNeigh, kFdb] = await Promise.all([
    readRoutes(host.runner, { protocol: TWILL_ROUTE_PROTOCOL, family }),
    readNeighbours(host.runner, dev),
    readFdb(host.runner, dev),
  ]);
  return {
    routes: new Set(
      kRoutes.map((r) => `${r.dst} via ${r.gateway ?? "-"} dev ${r.dev ?? "-"}${r.onlink ? " onlink" : ""}`),
    ),
    neighbours: new Set(
      kNeigh.filter((n) => n.state.includes("PERMANENT")).map((n) => `${n.dst} lladdr ${n.lladdr ?? "-"}`),
    ),
    fdb: new Set(
      kFdb
        .filter((e) => e.dst !== undefined && e.state === "permanent")
        .map((e) => `${e.mac} dst ${e.dst ?? ""}`),
    ),
  };
}

/**
 * Routes, neighbours and FDB entries on flannel.1 against the leases in etcd (all but `ownKey`): every
 * lease must have exactly its onlink route (proto 151), its permanent neighbour with the VtepMAC and its
 * permanent FDB entry to the PublicIP, and nothing else of ours may be there. With `ipv6` the same on
 * flannel-v6.1 for every lease with an IPv6 subnet: its IPv6 onlink route via the subnet's network
 * address, that address's permanent neighbour with the BackendV6Data VtepMAC, and the FDB entry of that
 * MAC to the PublicIPv6; and no other IPv6 route of ours.
 */
export async function kernelVsEtcd(
  host: Host,
  leases: readonly (readonly [string, string])[],
  ownKey: string | undefined,
  options: { readonly ipv6?: boolean } = {},
): Promise<StateCheck> {
  const want = { routes: new Set<string>(), neighbours: new Set<string>(), fdb: new Set<string>() };
  const want6 = { routes: new Set<string>(), neighbours: new Set<string>(), fdb: new Set<string>() };
  let count = 0;
  for (const [key, value] of leases) {
    if (key === ownKey) continue;
    const subnets = tryParseSubnetKey(key);
    if (subnets === undefined) continue;
    count++;
    const attrs = decodeLeaseAttrs(value);
    const data = parseVxlanPeerData(attrs.backendData, attrs.backendV6Data);
    if (hasIPv4(subnets.subnet) && data.v4 !== undefined) {
      const gateway = formatIPv4(subnets.subnet.ip);
      want.routes.add(`${gateway}/${subnets.subnet.prefixLen} via ${gateway} dev ${VXLAN_DEV} onlink`);
      want.neighbours.add(`${gateway} lladdr ${data.v4.vtepMac}`);
      want.fdb.add(`${data.v4.vtepMac} dst ${formatIPv4(attrs.publicIP)}`);
    }
    const v6 = subnets.ipv6Subnet;
    if (options.ipv6 === true && v6 !== undefined && data.v6 !== undefined && attrs.publicIPv6 !== null) {
      const gateway = formatIPv6(v6.ip);
      want6.routes.add(`${gateway}/${v6.prefixLen} via ${gateway} dev ${VXLAN_V6_DEV} onlink`);
      want6.neighbours.add(`${gateway} lladdr ${data.v6.vtepMac}`);
      want6.fdb.add(`${data.v6.vtepMac} dst ${attrs.publicIPv6}`);
    }
  }
  const [have, have6] = await Promise.all([
    readDevice(host, 4, VXLAN_DEV),
    options.ipv6 === true ? readDevice(host, 6, VXLAN_V6_DEV) : undefined,
  ]);
  const result = {
    leases: count,
    routes: diff(want.routes, have.routes),
    neighbours: diff(want.neighbours, have.neighbours),
    fdb: diff(want.fdb, have.fdb),
    ...(have6 === undefined
      ? {}
      : {
          routes6: diff(want6.routes, have6.routes),
          neighbours6: diff(want6.neighbours, have6.neighbours),
          fdb6: diff(want6.fdb, have6.fdb),
        }),
  };
  const kinds = [
    result.routes,
    result.neighbours,
    result.fdb,
    result.routes6,
    result.neighbours6,
    result.fdb6,
  ].filter((d): d is KindDiff => d !== undefined);
  const equal = kinds.every((d) => d.missing === 0 && d.extra === 0);
  return { equal, ...result };
}

// ---- the raw limit -----------------------------------------------------------------------------------

/** The peers' objects as iproute2 batch lines, in the agent's order: FDB, neighbours, routes. */
export function batchLines(list: readonly Peer[]): { bridge: string; ip: string } {
  const bridge = list.map((p) => `fdb replace ${p.mac} dev ${VXLAN_DEV} self dst ${p.publicIP} permanent`);
  const neigh = list.map((p) => `neigh replace ${p.gateway} lladdr ${p.mac} dev ${VXLAN_DEV} nud permanent`);
  const route = list.map(
    (p) => `route replace ${p.dst} via ${p.gateway} dev ${VXLAN_DEV} onlink proto ${TWILL_ROUTE_PROTOCOL}`,
  );
  return { bridge: `${bridge.join("\n")}\n`, ip: `${[...neigh, ...route].join("\n")}\n` };
}

/**
 * A dual-stack peer list's objects as batch lines: every FDB entry (flannel.1's to the PublicIPs, then
 * flannel-v6.1's to the PublicIPv6s) for `bridge`, and for `ip` the neighbours and then the routes of
 * each family, IPv4 first (one `ip -batch`: iproute2 takes each line's family from its addresses).
 */
export function dualStackBatchLines(list: readonly DualStackPeer[]): { bridge: string; ip: string } {
  const v4 = batchLines(list);
  const bridge6 = list.map(
    (p) => `fdb replace ${p.mac6} dev ${VXLAN_V6_DEV} self dst ${p.publicIPv6} permanent`,
  );
  const neigh6 = list.map(
    (p) => `neigh replace ${p.gateway6} lladdr ${p.mac6} dev ${VXLAN_V6_DEV} nud permanent`,
  );
  const route6 = list.map(
    (p) =>
      `route replace ${p.dst6} via ${p.gateway6} dev ${VXLAN_V6_DEV} onlink proto ${TWILL_ROUTE_PROTOCOL}`,
  );
  const ip4 = v4.ip.trimEnd().split("\n");
  const neigh4 = ip4.filter((l) => l.startsWith("neigh "));
  const route4 = ip4.filter((l) => l.startsWith("route "));
  return {
    bridge: `${v4.bridge}${bridge6.join("\n")}\n`,
    ip: `${[...neigh4, ...neigh6, ...route4, ...route6].join("\n")}\n`,
  };
}

/**
 * Makes flannel-v6.1 in `host` as the agent would: VNI 1, port 8472, nolearning, the host's IPv6
 * address as local, MTU 1430 (1500 − 70), up, `<address>/128`.
 */
export async function makeVxlanV6Device(host: Host, local6: string, address: string): Promise<void> {
  const ip = (args: string[]) => run("ip", ["-n", host.ns, ...args]);
  await ip([
    "link",
    "add",
    VXLAN_V6_DEV,
    "address",
    "02:ff:ff:ff:ff:02",
    "type",
    "vxlan",
    "id",
    "1",
    "local",
    local6,
    "dev",
    "eth0",
    "dstport",
    "8472",
    "nolearning",
  ]);
  await ip(["link", "set", VXLAN_V6_DEV, "mtu", "1430", "up"]);
  await ip(["-6", "address", "add", `${address}/128`, "dev", VXLAN_V6_DEV, "nodad"]);
}

/** Makes flannel.1 in `host` as the agent would (VNI 1, port 8472, nolearning, MTU 1450, up, /32). */
export async function makeVxlanDevice(host: Host, address: string): Promise<void> {
  const ip = (args: string[]) => run("ip", ["-n", host.ns, ...args]);
  await ip([
    "link",
    "add",
    VXLAN_DEV,
    "address",
    "02:ff:ff:ff:ff:01",
    "type",
    "vxlan",
    "id",
    "1",
    "local",
    host.address,
    "dev",
    "eth0",
    "dstport",
    "8472",
    "nolearning",
  ]);
  await ip(["link", "set", VXLAN_DEV, "mtu", "1450", "up"]);
  await ip(["address", "add", `${address}/32`, "dev", VXLAN_DEV]);
}

/** Feeds `input` to `<tool> -n <ns> -force -batch -`; returns the wall time in ms. */
export async function rawBatch(tool: "ip" | "bridge", ns: string, input: string): Promise<number> {
  const start = nowNs();
  await new Promise<void>((resolve, reject) => {
    const child = execFile(
      tool,
      ["-n", ns, "-force", "-batch", "-"],
      { maxBuffer: 16 * 1024 * 1024 },
      (error, _o, stderr) => {
        if (error) reject(new Error(`${tool} -batch failed: ${stderr.slice(0, 500)}`));
        else resolve();
      },
    );
    child.stdin?.end(input);
  });
  return msSince(start);
}
