// The netlink kernel channel on its own, inside network namespaces made by the test harness (the root
// namespace is never touched; everything is torn down in `finally` and on Ctrl-C):
//  1. single op: one peer's FDB entry + neighbour + onlink route in one apply(), p50/p99;
//  2. bulk apply: N peers' objects (3·N ops) on a vxlan device in a fresh host, against a raw
//     `bridge -force -batch -` + `ip -force -batch -` of the same lines in another fresh host, in the same
//     run (ratio); with and without a subscriber (the echoes of the writes are then read too);
//  3. dump of those 3·N objects (dumpFdb, dumpNeighbours, dumpRoutes);
//  4. notification: a route written by a second channel → the first channel's subscriber, p50/p99.
// Prints medians and writes bench/results/kernel-channel.json. BENCH_QUICK=1 is a small smoke run;
// BENCH_RUNS overrides the repetitions of 2 and 3.
import { cpus, release } from "node:os";
import { execa } from "execa";
import type { KernelEvent, KernelOp } from "../src/dataplane/channel.js";
import { openNetlinkChannel, type NetlinkChannel } from "../src/dataplane/netlink-channel.js";
import { ownedRoute, permanentFdb, permanentNeighbour, type KernelObject } from "../src/dataplane/objects.js";
import { createUnderlay, type Cluster, type Host } from "../test/helpers/netns.js";
import { median, percentile, round, tearDownOnSignal, writeResult } from "./lib.js";
import { makeVxlanDevice } from "./witness.js";

const quick = process.env.BENCH_QUICK === "1";
const runs = Number(process.env.BENCH_RUNS ?? (quick ? 1 : 3));
const peers = quick ? 500 : 5000;
const samples = quick ? 100 : 500;
const DEV = "flannel.1";

let net: Cluster | undefined;
const channels = new Set<NetlinkChannel>();
let nextHost = 1;

const nowNs = (): bigint => process.hrtime.bigint();
const msSince = (start: bigint): number => Number(nowNs() - start) / 1e6;
const hex = (n: number): string => (n & 255).toString(16).padStart(2, "0");

/** Peer i's objects, as the vxlan backend writes them: subnet 10.0.0.0 + (i+1)·256, its own MAC and VTEP. */
function peerObjects(i: number): [KernelObject, KernelObject, KernelObject] {
  const subnet = (i + 1) * 256;
  const gateway = `10.${(subnet >> 16) & 255}.${(subnet >> 8) & 255}.0`;
  const mac = `02:00:${hex(i >> 16)}:${hex(i >> 8)}:${hex(i)}:01`;
  const vtep = `198.18.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`;
  return [
    permanentFdb({ dev: DEV, mac, dst: vtep }),
    permanentNeighbour({ family: 4, dev: DEV, dst: gateway, lladdr: mac }),
    ownedRoute({ family: 4, dst: `${gateway}/24`, gateway, dev: DEV, onlink: true }),
  ];
}

/** The longest the event loop went without running a macrotask, from start() to stop(). */
function blockingMonitor(): { stop(): number } {
  let last = nowNs();
  let longest = 0;
  let running = true;
  const tick = (): void => {
    const now = nowNs();
    longest = Math.max(longest, Number(now - last) / 1e6);
    last = now;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  return {
    stop: () => {
      running = false;
      return Math.max(longest, Number(nowNs() - last) / 1e6);
    },
  };
}

const replaceOps = (objects: readonly KernelObject[]): KernelOp[] =>
  objects.map((object) => ({ action: "replace", object }));

/** The same objects as iproute2 batch lines (what twill's spawn-based executor used to send). */
function batchLines(objects: readonly KernelObject[]): { bridge: string; ip: string } {
  const bridge: string[] = [];
  const ip: string[] = [];
  for (const o of objects) {
    if (o.kind === "fdb") bridge.push(`fdb replace ${o.mac} dev ${o.dev} self dst ${o.dst ?? ""} permanent`);
    else if (o.kind === "neigh")
      ip.push(`neigh replace ${o.dst} lladdr ${o.lladdr ?? ""} dev ${o.dev} nud permanent`);
    else ip.push(`route replace ${o.dst} via ${o.gateway ?? ""} dev ${o.dev} onlink proto ${o.protocol}`);
  }
  return { bridge: `${bridge.join("\n")}\n`, ip: `${ip.join("\n")}\n` };
}

/** A fresh host namespace (eth0 198.18.0.x/24) with flannel.1 made by `ip` as the agent would, up. */
async function vxlanHost(): Promise<Host> {
  if (net === undefined) throw new Error("no underlay");
  const host = await net.addHost(nextHost++);
  await makeVxlanDevice(host, "10.255.255.0");
  return host;
}

function openIn(host: Host): NetlinkChannel {
  const channel = openNetlinkChannel({ netns: host.ns });
  channels.add(channel);
  channel.watchDevices([DEV]);
  return channel;
}

function close(channel: NetlinkChannel): void {
  channel.close();
  channels.delete(channel);
}

function failures(outcomes: readonly { ok: boolean }[]): number {
  return outcomes.filter((o) => !o.ok).length;
}

/** Counts what the kernel has, through the channel: a check that every variant programmed everything. */
async function countObjects(host: Host): Promise<{ fdb: number; neigh: number; routes: number }> {
  const channel = openIn(host);
  try {
    const fdb = (await channel.dumpFdb()).filter((e) => e.dst !== undefined).length;
    const neigh = (await channel.dumpNeighbours()).filter((n) => n.state === 0x80).length;
    const routes = (await channel.dumpRoutes()).filter((r) => r.protocol === 151).length;
    return { fdb, neigh, routes };
  } finally {
    close(channel);
  }
}

function checkCount(what: string, count: { fdb: number; neigh: number; routes: number }, n: number): void {
  if (count.fdb !== n || count.neigh !== n || count.routes !== n) {
    throw new Error(`${what}: expected ${n} of each, the kernel has ${JSON.stringify(count)}`);
  }
}

// ---- 1. single op ---------------------------------------------------------------------------------------

async function singleOps(): Promise<{ samples: number; p50Ms: number; p99Ms: number; failed: number }> {
  const host = await vxlanHost();
  const channel = openIn(host);
  const subscription = channel.subscribe(() => undefined); // as in the agent: a cache is listening
  const times: number[] = [];
  let failed = 0;
  try {
    for (let i = 0; i < samples; i++) {
      const ops = replaceOps(peerObjects(i));
      const start = nowNs();
      const outcomes = await channel.apply(ops);
      times.push(msSince(start));
      failed += failures(outcomes);
    }
  } finally {
    subscription.close();
    close(channel);
  }
  return { samples, p50Ms: round(median(times), 3), p99Ms: round(percentile(times, 99), 3), failed };
}

// ---- 2. and 3. bulk apply and dump ----------------------------------------------------------------------

interface BulkRun {
  rawMs: number;
  rawBridgeMs: number;
  rawIpMs: number;
  channelMs: number;
  /** This process's CPU during the channel apply: user (JS, koffi) and system (the kernel's work). */
  channelUserMs: number;
  channelSysMs: number;
  channelMaxLoopDelayMs: number;
  subscribedMs: number;
  subscribedEvents: number;
  dumpFdbMs: number;
  dumpNeighboursMs: number;
  dumpRoutesMs: number;
}

async function rawBatch(
  objects: readonly KernelObject[],
): Promise<{ ms: number; bridgeMs: number; ipMs: number }> {
  const host = await vxlanHost();
  const lines = batchLines(objects);
  const start = nowNs();
  const bridge = await execa("bridge", ["-n", host.ns, "-force", "-batch", "-"], {
    input: lines.bridge,
    reject: false,
  });
  const bridgeMs = msSince(start);
  const ipStart = nowNs();
  const ip = await execa("ip", ["-n", host.ns, "-force", "-batch", "-"], { input: lines.ip, reject: false });
  const ipMs = msSince(ipStart);
  const ms = msSince(start);
  if (bridge.exitCode !== 0 || ip.exitCode !== 0) {
    throw new Error(`raw batch failed: ${bridge.stderr.slice(0, 300)} ${ip.stderr.slice(0, 300)}`);
  }
  checkCount(`raw batch in ${host.ns}`, await countObjects(host), objects.length / 3);
  return { ms, bridgeMs, ipMs };
}

/** Applies in a fresh host; with `subscribed`, a subscriber reads every notification meanwhile. */
async function channelApply(
  objects: readonly KernelObject[],
  subscribed: boolean,
): Promise<{
  ms: number;
  userMs: number;
  sysMs: number;
  maxLoopDelayMs: number;
  events: number;
  host: Host;
}> {
  const host = await vxlanHost();
  const channel = openIn(host);
  let events = 0;
  const subscription = subscribed
    ? channel.subscribe((batch: readonly KernelEvent[]) => (events += batch.length))
    : undefined;
  try {
    const blocking = blockingMonitor();
    const cpu = process.cpuUsage();
    const start = nowNs();
    const outcomes = await channel.apply(replaceOps(objects));
    const ms = msSince(start);
    const used = process.cpuUsage(cpu);
    const maxLoopDelayMs = blocking.stop();
    if (failures(outcomes) > 0) throw new Error(`channel apply: ${failures(outcomes)} ops refused`);
    return { ms, userMs: used.user / 1000, sysMs: used.system / 1000, maxLoopDelayMs, events, host };
  } finally {
    subscription?.close();
    close(channel);
  }
}

async function dumps(host: Host, n: number): Promise<{ fdb: number; neigh: number; routes: number }> {
  const channel = openIn(host);
  try {
    let start = nowNs();
    const fdb = await channel.dumpFdb();
    const fdbMs = msSince(start);
    start = nowNs();
    const neighbours = await channel.dumpNeighbours();
    const neighMs = msSince(start);
    start = nowNs();
    const routes = await channel.dumpRoutes();
    const routesMs = msSince(start);
    checkCount(
      `dumps in ${host.ns}`,
      {
        fdb: fdb.filter((e) => e.dst !== undefined).length,
        neigh: neighbours.filter((e) => e.state === 0x80).length,
        routes: routes.filter((r) => r.protocol === 151).length,
      },
      n,
    );
    return { fdb: fdbMs, neigh: neighMs, routes: routesMs };
  } finally {
    close(channel);
  }
}

async function bulk(): Promise<{
  runs: BulkRun[];
  median: BulkRun;
  ratioChannelToRaw: number;
  ratioSubscribedToRaw: number;
}> {
  const objects = Array.from({ length: peers }, (_, i) => peerObjects(i)).flat();
  const results: BulkRun[] = [];
  for (let run = 1; run <= runs; run++) {
    // Interleaved, so load swings on a shared machine hit every variant alike.
    const raw = await rawBatch(objects);
    const plain = await channelApply(objects, false);
    const subscribed = await channelApply(objects, true);
    const dumped = await dumps(plain.host, peers);
    const r: BulkRun = {
      rawMs: raw.ms,
      rawBridgeMs: raw.bridgeMs,
      rawIpMs: raw.ipMs,
      channelMs: plain.ms,
      channelUserMs: plain.userMs,
      channelSysMs: plain.sysMs,
      channelMaxLoopDelayMs: plain.maxLoopDelayMs,
      subscribedMs: subscribed.ms,
      subscribedEvents: subscribed.events,
      dumpFdbMs: dumped.fdb,
      dumpNeighboursMs: dumped.neigh,
      dumpRoutesMs: dumped.routes,
    };
    results.push(r);
    console.log(
      `  run ${run}: raw ${round(r.rawMs)} ms, channel ${round(r.channelMs)} ms ` +
        `(CPU user ${round(r.channelUserMs)} + sys ${round(r.channelSysMs)} ms; event loop blocked ≤ ` +
        `${round(r.channelMaxLoopDelayMs)} ms), subscribed ${round(r.subscribedMs)} ms ` +
        `(${r.subscribedEvents} events); dumps fdb ${round(r.dumpFdbMs)} / neigh ${round(r.dumpNeighboursMs)} / ` +
        `routes ${round(r.dumpRoutesMs)} ms`,
    );
  }
  const med = (pick: (r: BulkRun) => number): number => round(median(results.map(pick)));
  const m: BulkRun = {
    rawMs: med((r) => r.rawMs),
    rawBridgeMs: med((r) => r.rawBridgeMs),
    rawIpMs: med((r) => r.rawIpMs),
    channelMs: med((r) => r.channelMs),
    channelUserMs: med((r) => r.channelUserMs),
    channelSysMs: med((r) => r.channelSysMs),
    channelMaxLoopDelayMs: med((r) => r.channelMaxLoopDelayMs),
    subscribedMs: med((r) => r.subscribedMs),
    subscribedEvents: med((r) => r.subscribedEvents),
    dumpFdbMs: med((r) => r.dumpFdbMs),
    dumpNeighboursMs: med((r) => r.dumpNeighboursMs),
    dumpRoutesMs: med((r) => r.dumpRoutesMs),
  };
  return {
    runs: results.map(
      (r) =>
        Object.fromEntries(
          Object.entries(r as unknown as Record<string, number>).map(([k, v]) => [k, round(v)]),
        ) as unknown as BulkRun,
    ),
    median: m,
    ratioChannelToRaw: round(m.channelMs / m.rawMs, 2),
    ratioSubscribedToRaw: round(m.subscribedMs / m.rawMs, 2),
  };
}

// ---- 4. notification latency ----------------------------------------------------------------------------

async function notifications(): Promise<{ samples: number; p50Ms: number; p99Ms: number; missed: number }> {
  const host = await vxlanHost();
  const watcher = openIn(host);
  const writer = openIn(host); // another port id: its writes are foreign to the watcher
  const times: number[] = [];
  let missed = 0;
  let waiting: { dst: string; start: bigint; done: () => void } | undefined;
  const subscription = watcher.subscribe((events) => {
    for (const e of events) {
      if (
        waiting !== undefined &&
        e.type === "object" &&
        e.action === "new" &&
        e.object.kind === "route" &&
        e.object.dst === waiting.dst
      ) {
        times.push(msSince(waiting.start));
        waiting.done();
      }
    }
  });
  try {
    for (let i = 0; i < samples; i++) {
      const route = peerObjects(i)[2];
      if (route.kind !== "route") throw new Error("peerObjects: the third object is the route");
      const arrived = new Promise<void>((resolve) => {
        waiting = { dst: route.dst, start: nowNs(), done: resolve };
      });
      const outcomes = await writer.apply(replaceOps([route]));
      if (failures(outcomes) > 0) throw new Error(`route ${route.dst} refused`);
      // The signal brings it; give up on one after a second (counted, not timed). The timer is what keeps
      // the event loop alive meanwhile: a pending signal does not.
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<"timeout">(
        (resolve) => (timer = setTimeout(() => resolve("timeout"), 1000)),
      );
      if ((await Promise.race([arrived, timeout])) === "timeout") missed++;
      clearTimeout(timer);
      waiting = undefined;
    }
  } finally {
    subscription.close();
    close(watcher);
    close(writer);
  }
  return { samples, p50Ms: round(median(times), 3), p99Ms: round(percentile(times, 99), 3), missed };
}

// ---- main -----------------------------------------------------------------------------------------------

async function teardown(): Promise<void> {
  for (const channel of channels) channel.close();
  channels.clear();
  await net?.destroy();
  net = undefined;
}

tearDownOnSignal(teardown);

const startedAt = Date.now();
try {
  console.log(
    `kernel channel benchmark${quick ? " (quick)" : ""}: ${samples} single ops and notifications, ` +
      `${peers} peers (${3 * peers} objects) × ${runs} run(s)`,
  );
  net = await createUnderlay();

  const single = await singleOps();
  console.log(
    `single op (FDB + neighbour + route in one apply): p50 ${single.p50Ms} ms, p99 ${single.p99Ms} ms`,
  );

  console.log(`bulk apply of ${3 * peers} objects, and dumps:`);
  const bulkResult = await bulk();
  const m = bulkResult.median;
  console.log(
    `bulk apply: channel ${m.channelMs} ms vs raw bridge+ip -batch ${m.rawMs} ms → ${bulkResult.ratioChannelToRaw}×; ` +
      `with a subscriber ${m.subscribedMs} ms → ${bulkResult.ratioSubscribedToRaw}×; CPU user ${m.channelUserMs} + ` +
      `sys ${m.channelSysMs} ms; event loop blocked ≤ ${m.channelMaxLoopDelayMs} ms`,
  );
  console.log(
    `dump of ${3 * peers}: FDB ${m.dumpFdbMs} ms, neighbours ${m.dumpNeighboursMs} ms, routes ${m.dumpRoutesMs} ms ` +
      `(total ${round(m.dumpFdbMs + m.dumpNeighboursMs + m.dumpRoutesMs)} ms)`,
  );

  const notified = await notifications();
  console.log(
    `notification (another channel's route write → subscriber): p50 ${notified.p50Ms} ms, p99 ${notified.p99Ms} ms` +
      (notified.missed > 0 ? `, ${notified.missed} never arrived` : ""),
  );

  const path = writeResult("kernel-channel", {
    quick,
    runs,
    machine: { cpus: cpus().length, kernel: release() },
    singleOp: single,
    bulk: { peers, objects: 3 * peers, ...bulkResult },
    notification: notified,
    totalSeconds: round((Date.now() - startedAt) / 1000, 1),
  });
  console.log(`written ${path} (${round((Date.now() - startedAt) / 1000, 1)} s)`);
} finally {
  await teardown();
}
