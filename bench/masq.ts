// Masquerade rule repair: how long a rule deleted by hand stays missing, and what noticing costs.
// Everything runs inside namespaces made by the test harness (the root namespace's tables are never
// touched; teardown, also on error and Ctrl-C, ends every process by PID and deletes the namespaces).
//
// One real agent per scenario, each in a fresh host namespace, with --ip-masq:
//   nft notifications   --iptables-mode=nft    --iptables-resync=3600 (only a notice can repair in time)
//   nft timer           --iptables-mode=nft    --iptables-resync=5, TWILL_TEST_RULE_WATCH=off (before)
//   legacy counters     --iptables-mode=legacy --iptables-resync=3600
//   legacy timer        --iptables-mode=legacy --iptables-resync=5, TWILL_TEST_RULE_WATCH=off (before)
// 1. Repair time, BENCH_DELETIONS times (default 20): a rule deleted, our chain flushed or our jump
//    deleted, in turn, by `iptables -w` in the host; then a random pause (0–5 s, so the timer's phase is
//    sampled fairly). Measured in the kernel, from this process: on nf_tables, a subscription of our own
//    (like `nft monitor`) timestamps the deletion's transaction and the agent's iptables-restore
//    transaction; on legacy, the tables' counters (IPT_SO_GET_INFO, a few µs) are read every 1 ms, from
//    the first reading that differs to the first that is back to the original. Each repair is also
//    checked against `iptables -S`.
// 2. Idle CPU with the rules in place, over BENCH_WINDOW seconds (default 30): the agent's node process
//    and its reaped children (iptables-save) from /proc/<pid>/stat, next to an agent without masquerade.
// 3. The cost of noticing, in this process: µs per legacy poll, ns per nf_tables message decoded, and
//    kube-proxy churn (iptables-nft-restore of KUBE-* chains) against the nft agent: checks it caused.
// Prints medians and writes bench/results/masq.json. BENCH_QUICK=1: 5 deletions, 8 s windows.
import { cpus, release } from "node:os";
import { execa } from "execa";
import { forEachMessage, MessageWriter, type MessageView } from "../src/netlink/codec.js";
import { insideNetns } from "../src/netlink/netns.js";
import {
  beginNftablesMessage,
  decodeNftablesNotice,
  NFNLGRP_NFTABLES,
  NFPROTO_IPV4,
  NFT_MSG_DELRULE,
  NFT_MSG_NEWRULE,
} from "../src/netlink/nftables.js";
import { NETLINK_NETFILTER, NetlinkSocket } from "../src/netlink/socket.js";
import { LegacyTableReader, LEGACY_TABLES, NftablesChangeListener } from "../src/masq/watch.js";
import { runTwill, startAgent, type AgentProcess } from "../test/helpers/agent.js";
import type { EtcdServer } from "../test/helpers/etcd.js";
import { createUnderlay, type Cluster, type Host } from "../test/helpers/netns.js";
import { nodePid, readCpu } from "./agent-under-test.js";
import { median, percentile, round, tearDownOnSignal, writeResult } from "./lib.js";

const quick = process.env.BENCH_QUICK === "1";
const deletions = Number(process.env.BENCH_DELETIONS ?? (quick ? 5 : 20));
const windowS = Number(process.env.BENCH_WINDOW ?? (quick ? 8 : 30));
const kubeRules = quick ? 500 : 2000;
const RESTORED = "masquerade/forward rules were missing; restored";

const nowNs = (): bigint => process.hrtime.bigint();
const msBetween = (start: bigint, end: bigint): number => Number(end - start) / 1e6;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---- scenarios ---------------------------------------------------------------------------------------

interface Scenario {
  readonly name: string;
  readonly mode: "nft" | "legacy";
  readonly resyncS: number;
  readonly watch: boolean;
}

const SCENARIOS: readonly Scenario[] = [
  { name: "nft notifications", mode: "nft", resyncS: 3600, watch: true },
  { name: "nft timer (--iptables-resync=5, before)", mode: "nft", resyncS: 5, watch: false },
  { name: "legacy counters", mode: "legacy", resyncS: 3600, watch: true },
  { name: "legacy timer (--iptables-resync=5, before)", mode: "legacy", resyncS: 5, watch: false },
];

let net: Cluster | undefined;
let etcd: EtcdServer | undefined;
const agents = new Set<AgentProcess>();
const closers: (() => void)[] = [];
let hosts = 0;

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`internal: no ${what}`);
  return value;
}

interface Started {
  readonly host: Host;
  readonly agent: AgentProcess;
  readonly pid: number;
}

async function launch(args: readonly string[], env: Record<string, string> = {}): Promise<Started> {
  const host = await need(net, "underlay").addHost(++hosts);
  const agent = startAgent({
    netns: host.ns,
    etcdEndpoint: need(etcd, "etcd").endpoint,
    args: ["--iface=eth0", ...args],
    env,
  });
  agents.add(agent);
  const pid = await nodePid(agent.process.pid);
  await agent.waitForSubnetEnv();
  return { host, agent, pid };
}

async function stop(started: Started): Promise<void> {
  await started.agent.destroy();
  agents.delete(started.agent);
}

const iptablesCommand = (mode: Scenario["mode"]): string =>
  mode === "nft" ? "iptables-nft" : "iptables-legacy";

/** Our rules as `iptables -S` prints them (POSTROUTING's jump and the chain). */
async function ours(ns: string, command: string): Promise<string> {
  const run = async (args: string[]): Promise<string> =>
    (await execa("ip", ["netns", "exec", ns, command, "-w", ...args], { reject: false })).stdout;
  const jump = (await run(["-t", "nat", "-S", "POSTROUTING"]))
    .split("\n")
    .filter((l) => l.includes("FLANNEL"));
  return [...jump, await run(["-t", "nat", "-S", "FLANNEL-POSTRTG"])].join("\n");
}

const BREAKS: readonly { readonly kind: string; readonly args: readonly string[] }[] = [
  { kind: "rule deleted", args: ["-t", "nat", "-D", "FLANNEL-POSTRTG", "3"] },
  { kind: "chain flushed", args: ["-t", "nat", "-F", "FLANNEL-POSTRTG"] },
  {
    kind: "jump deleted",
    args: [
      "-t",
      "nat",
      "-D",
      "POSTROUTING",
      "-m",
      "comment",
      "--comment",
      "flanneld masq",
      "-j",
      "FLANNEL-POSTRTG",
    ],
  },
];

interface Sample {
  readonly kind: string;
  readonly ms: number;
}

/** nf_tables transactions in `ns`, timestamped as they arrive (a subscription like `nft monitor`). */
class TransactionLog {
  readonly seen: { at: bigint; process: string }[] = [];
  private readonly socket: NetlinkSocket;

  constructor(ns: string) {
    this.socket = insideNetns(ns, () =>
      NetlinkSocket.open({
        protocol: NETLINK_NETFILTER,
        groups: [NFNLGRP_NFTABLES],
        receiveBufferBytes: 8 << 20,
      }),
    );
    this.socket.listen({
      message: (message) => {
        const notice = decodeNftablesNotice(message);
        if (notice?.generation !== undefined)
          this.seen.push({ at: nowNs(), process: notice.generation.process });
      },
      overflow: () => {
        throw new Error("the benchmark's nf_tables subscription overflowed");
      },
      drained: () => undefined,
    });
    closers.push(() => this.socket.close());
  }

  /** The first transaction from index `from` on whose committer matches: its index and arrival. */
  async first(
    from: number,
    match: (process: string) => boolean,
    timeoutMs: number,
  ): Promise<{ index: number; at: bigint }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.seen.findIndex((t, i) => i >= from && match(t.process));
      const found = this.seen[index];
      if (found !== undefined) return { index, at: found.at };
      if (Date.now() > deadline) throw new Error(`no matching nf_tables transaction within ${timeoutMs} ms`);
      await sleep(1);
    }
  }

  close(): void {
    this.socket.close();
  }
}

/** One repair on nf_tables: the deletion's transaction → the agent's iptables-restore transaction. */
async function nftRepair(log: TransactionLog, ns: string, args: readonly string[]): Promise<number> {
  const from = log.seen.length;
  await execa("ip", ["netns", "exec", ns, "iptables-nft", "-w", ...args]);
  // Nothing else writes in the namespace: the deletion's transaction, then the agent's restore (its
  // committer is "iptables-nft-re", the comm of iptables-nft-restore cut to 15 characters).
  const deleted = await log.first(from, () => true, 5_000);
  const restored = await log.first(deleted.index + 1, (process) => process.includes("-re"), 30_000);
  return msBetween(deleted.at, restored.at);
}

/** One repair on legacy: the counters read every 1 ms, from the first change to the original again. */
async function legacyRepair(reader: LegacyTableReader, ns: string, args: readonly string[]): Promise<number> {
  const original = reader.fingerprint(["nat"]);
  const deleting = execa("ip", ["netns", "exec", ns, "iptables-legacy", "-w", ...args]);
  let changed: bigint | undefined;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const now = reader.fingerprint(["nat"]);
    if (changed === undefined && now !== original) changed = nowNs();
    if (changed !== undefined && now === original) {
      await deleting;
      return msBetween(changed, nowNs());
    }
    if (Date.now() > deadline) throw new Error("the legacy nat table did not come back within 30 s");
    await sleep(1);
  }
}

interface RepairResult {
  readonly medianMs: number;
  readonly p90Ms: number;
  readonly minMs: number;
  readonly maxMs: number;
  /** Repairs the agent logged; one per deletion is expected. */
  readonly repairsLogged: number;
  readonly samples: readonly Sample[];
}

interface CpuResult {
  readonly windowS: number;
  readonly cpuSeconds: number;
  readonly childCpuSeconds: number;
  readonly percentOfCore: number;
}

async function idleCpu(started: Started): Promise<CpuResult> {
  await sleep(2_000); // let the last repair's echo check pass
  const before = readCpu(started.pid);
  const start = nowNs();
  await sleep(windowS * 1000);
  const after = readCpu(started.pid);
  const window = msBetween(start, nowNs()) / 1000;
  const self = after.self - before.self;
  const children = after.children - before.children;
  return {
    windowS: round(window, 1),
    cpuSeconds: round(self, 3),
    childCpuSeconds: round(children, 3),
    percentOfCore: round(((self + children) / window) * 100, 3),
  };
}

async function scenario(s: Scenario): Promise<{ repair: RepairResult; idle: CpuResult }> {
  const started = await launch(
    ["--ip-masq", `--iptables-mode=${s.mode}`, `--iptables-resync=${s.resyncS}`],
    s.watch ? {} : { TWILL_TEST_RULE_WATCH: "off" },
  );
  const { ns } = started.host;
  const command = iptablesCommand(s.mode);
  try {
    const deadline = Date.now() + 30_000;
    while (!(await ours(ns, command)).includes("MASQUERADE")) {
      if (Date.now() > deadline) throw new Error(`${s.name}: rules not installed within 30 s`);
      await sleep(100);
    }
    await sleep(1_000);
    const golden = await ours(ns, command);
    const transactions = s.mode === "nft" ? new TransactionLog(ns) : undefined;
    const reader = s.mode === "legacy" ? LegacyTableReader.open({ netns: ns }) : undefined;
    const mark = started.agent.logs().length;
    const samples: Sample[] = [];
    try {
      for (let i = 0; i < deletions; i++) {
        const { kind, args } = BREAKS[i % BREAKS.length] ?? { kind: "?", args: [] };
        const ms =
          transactions !== undefined
            ? await nftRepair(transactions, ns, args)
            : await legacyRepair(need(reader, "legacy reader"), ns, args);
        const now = await ours(ns, command);
        if (now !== golden)
          throw new Error(`${s.name}: after a repair the rules are\n${now}\nnot\n${golden}`);
        samples.push({ kind, ms: round(ms, 1) });
        // A random phase against the 5 s timer (and the 500 ms poll), and time for the echo check.
        await sleep(250 + Math.random() * 5_000);
      }
    } finally {
      transactions?.close();
      reader?.close();
    }
    const values = samples.map((x) => x.ms);
    const repair: RepairResult = {
      medianMs: round(median(values), 1),
      p90Ms: round(percentile(values, 90), 1),
      minMs: round(Math.min(...values), 1),
      maxMs: round(Math.max(...values), 1),
      repairsLogged: started.agent
        .logs()
        .slice(mark)
        .filter((l) => l.msg === RESTORED).length,
      samples,
    };
    console.log(
      `  ${s.name}: repair median ${repair.medianMs} ms (p90 ${repair.p90Ms}, ${repair.minMs}–${repair.maxMs}) over ${values.length}`,
    );
    const idle = await idleCpu(started);
    console.log(
      `  ${s.name}: idle ${idle.cpuSeconds} s + children ${idle.childCpuSeconds} s CPU in ${idle.windowS} s (${idle.percentOfCore}% of a core)`,
    );
    return { repair, idle };
  } finally {
    await stop(started);
  }
}

// ---- the cost of noticing, in this process ----------------------------------------------------------

/** µs per poll of the legacy watch (table list + IPT_SO_GET_INFO for nat and filter), both tables present. */
async function legacyPollCost(): Promise<{ microsPerPoll: number; polls: number }> {
  const host = await need(net, "underlay").addHost(++hosts);
  for (const table of LEGACY_TABLES)
    await execa("ip", ["netns", "exec", host.ns, "iptables-legacy", "-w", "-t", table, "-S"]);
  const reader = LegacyTableReader.open({ netns: host.ns });
  try {
    const polls = 20_000;
    for (let i = 0; i < 1000; i++) reader.fingerprint(LEGACY_TABLES); // warm-up
    const start = nowNs();
    for (let i = 0; i < polls; i++) reader.fingerprint(LEGACY_TABLES);
    return { microsPerPoll: round((msBetween(start, nowNs()) * 1000) / polls, 2), polls };
  } finally {
    reader.close();
  }
}

/** ns per kube-proxy-like message (DELRULE/NEWRULE of KUBE-* chains) through the watch's listener. */
function nftDecodeCost(): { nanosPerMessage: number; messages: number } {
  const writer = new MessageWriter(1 << 20);
  const perBatch = 2000;
  for (let i = 0; i < perBatch; i++) {
    beginNftablesMessage(writer, i % 2 === 0 ? NFT_MSG_DELRULE : NFT_MSG_NEWRULE, NFPROTO_IPV4, 0)
      .string(1, "nat")
      .string(2, `KUBE-SEP-${(i % 97).toString().padStart(12, "0")}`)
      .attr(3, Buffer.alloc(8))
      .beginNested(4)
      .string(1, "payload")
      .endNested()
      .end();
  }
  const { bytes } = writer.finish();
  const views: MessageView[] = [];
  forEachMessage(bytes, bytes.length, (message) => views.push(message));
  let reported = 0;
  const listener = new NftablesChangeListener(() => reported++);
  const rounds = 100;
  const start = nowNs();
  for (let r = 0; r < rounds; r++) {
    for (const message of views) listener.message(message);
    listener.drained();
  }
  if (reported !== 0) throw new Error("KUBE-* messages were reported as ours");
  return {
    nanosPerMessage: round((msBetween(start, nowNs()) * 1e6) / (rounds * perBatch), 0),
    messages: rounds * perBatch,
  };
}

/** kube-proxy rewriting `kubeRules` KUBE-* rules 5 times, next to an nft agent: the checks it ran. */
async function kubeChurn(): Promise<Record<string, number>> {
  const started = await launch([
    "--ip-masq",
    "--iptables-mode=nft",
    "--iptables-resync=3600",
    "--log-level=debug",
  ]);
  try {
    const { ns } = started.host;
    const deadline = Date.now() + 30_000;
    while (!(await ours(ns, "iptables-nft")).includes("MASQUERADE")) {
      if (Date.now() > deadline) throw new Error("kube churn: rules not installed within 30 s");
      await sleep(100);
    }
    await sleep(1_000);
    const lines = ["*nat", ":KUBE-SERVICES - [0:0]"];
    for (let i = 0; i < kubeRules / 2; i++) lines.push(`:KUBE-SEP-${String(i).padStart(8, "0")} - [0:0]`);
    for (let i = 0; i < kubeRules / 2; i++) {
      const chain = `KUBE-SEP-${String(i).padStart(8, "0")}`;
      lines.push(`-A KUBE-SERVICES -d 10.96.${i >> 8}.${i & 255}/32 -p tcp --dport 80 -j ${chain}`);
      lines.push(`-A ${chain} -p tcp -j DNAT --to-destination 10.244.${i >> 8}.${i & 255}:8080`);
    }
    lines.push("COMMIT", "");
    const payload = lines.join("\n");
    const mark = started.agent.logs().length;
    const before = readCpu(started.pid);
    const restores = 5;
    let restoreMs = 0;
    for (let i = 0; i < restores; i++) {
      const start = nowNs();
      await execa("ip", ["netns", "exec", ns, "iptables-nft-restore", "--noflush", "-w"], { input: payload });
      restoreMs += msBetween(start, nowNs());
      await sleep(500);
    }
    await sleep(1_000);
    const after = readCpu(started.pid);
    const checks = started.agent
      .logs()
      .slice(mark)
      .filter((l) => l.msg === "masquerade/forward rules checked").length;
    const result = {
      kubeRules,
      restores,
      restoreMsEach: round(restoreMs / restores, 1),
      checksTriggered: checks,
      agentCpuSecondsDuring: round(after.self - before.self, 3),
      agentChildCpuSecondsDuring: round(after.children - before.children, 3),
    };
    console.log(
      `  kube-proxy churn: ${restores} restores of ${kubeRules} KUBE-* rules → ${checks} checks, agent ${result.agentCpuSecondsDuring} s CPU`,
    );
    return result;
  } finally {
    await stop(started);
  }
}

// ---- main --------------------------------------------------------------------------------------------

async function teardown(): Promise<void> {
  for (const close of closers.splice(0)) {
    try {
      close();
    } catch {
      // already closed
    }
  }
  await Promise.allSettled([...agents].map((a) => a.destroy()));
  agents.clear();
  await net?.destroy();
}

tearDownOnSignal(teardown);

const startedAt = Date.now();
try {
  console.log(
    `masquerade benchmark${quick ? " (quick)" : ""}: ${deletions} deletions per scenario, ${windowS} s CPU windows`,
  );
  net = await createUnderlay();
  etcd = await net.startEtcd();
  const first = await net.addHost(++hosts);
  const set = await runTwill(["config", "set", "-", `--etcd-endpoints=${etcd.endpoint}`], {
    netns: first.ns,
    input: '{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}',
  });
  if (set.code !== 0) throw new Error(`twill config set failed: ${set.stderr}`);

  const repair: Record<string, RepairResult> = {};
  const idle: Record<string, CpuResult> = {};
  for (const s of SCENARIOS) {
    console.log(`${s.name}:`);
    const result = await scenario(s);
    repair[s.name] = result.repair;
    idle[s.name] = result.idle;
  }
  console.log("no masquerade (baseline for the idle CPU):");
  const baseline = await launch(["--iptables-forward-rules=false"]);
  try {
    idle["no masquerade (baseline)"] = await idleCpu(baseline);
    const b = idle["no masquerade (baseline)"];
    console.log(
      `  idle ${b.cpuSeconds} s + children ${b.childCpuSeconds} s CPU in ${b.windowS} s (${b.percentOfCore}%)`,
    );
  } finally {
    await stop(baseline);
  }

  console.log("the cost of noticing:");
  const legacyPoll = await legacyPollCost();
  console.log(`  legacy poll: ${legacyPoll.microsPerPoll} µs (nat + filter, every 500 ms)`);
  const nftDecode = nftDecodeCost();
  console.log(`  nf_tables message (KUBE-* rule, dropped): ${nftDecode.nanosPerMessage} ns`);
  const churn = await kubeChurn();

  console.log("summary (median repair time; idle CPU % of a core):");
  for (const name of Object.keys(repair)) {
    console.log(
      `  ${name.padEnd(44)} ${String(repair[name]?.medianMs).padStart(8)} ms   ${idle[name]?.percentOfCore}%`,
    );
  }
  const path = writeResult("masq", {
    quick,
    machine: { cpus: cpus().length, kernel: release() },
    deletionsPerScenario: deletions,
    method: {
      nft: "deletion's nf_tables transaction → the agent's iptables-restore transaction, both from a NFNLGRP_NFTABLES subscription in this process",
      legacy: "first IPT_SO_GET_INFO reading (every 1 ms) that differs → first one back to the original",
    },
    repair,
    idleCpu: idle,
    legacyPoll,
    nftDecode,
    kubeChurn: churn,
    totalSeconds: round((Date.now() - startedAt) / 1000, 1),
  });
  console.log(`written ${path} (${round((Date.now() - startedAt) / 1000, 1)} s)`);
} finally {
  await teardown();
}
