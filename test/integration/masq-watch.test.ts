// How removed masquerade/forward rules are noticed, against the real kernel, inside namespaces made here
// (never the root namespace's tables):
// - the nftables subscription alone: which commands it reports, and that kube-proxy's KUBE-* rewrites are
//   read and dropped (every command's transaction is waited for, so "nothing reported" is not a guess);
// - the legacy counters alone: they follow iptables-legacy, and never create a legacy table;
// - the real agent with --iptables-resync=3600, so only a notice can repair in the test's time: rules
//   deleted, flushed and removed by hand come back, on nf_tables and on legacy; kube-proxy churn costs
//   no check (counted from the agent's debug line).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseCidr } from "../../src/ip/ipv4.js";
import { MasqManager, type IptablesInfo } from "../../src/masq/iptables.js";
import { forwardRules, masqRules, type RuleSet } from "../../src/masq/rules.js";
import {
  LegacyTableReader,
  openLegacyCounterWatch,
  openNftablesWatch,
  openRuleWatch,
  type NftablesRuleWatch,
} from "../../src/masq/watch.js";
import { runTwill } from "../helpers/agent.js";
import { createUnderlay, listNamespaces, type Cluster, type Host } from "../helpers/netns.js";
import { waitFor } from "../helpers/processes.js";
import { startTwillCluster, subnetLine, type TwillCluster } from "../helpers/twill-cluster.js";

const CLUSTER = "10.244.0.0/16";
const desired = (pod: string): RuleSet[] => [
  masqRules(parseCidr(CLUSTER), parseCidr(pod), { randomFully: true }),
  forwardRules(parseCidr(CLUSTER)),
];
const MASQ_JUMP = ["-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"];
const FORWARD_JUMP = ["-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"];

/** kube-proxy's kind of nat restore: its own chains declared (flushed) and refilled. */
const kubeRestore = (round: number): string =>
  [
    "*nat",
    ":KUBE-SERVICES - [0:0]",
    ":KUBE-SVC-TWTEST - [0:0]",
    ":KUBE-SEP-TWTEST - [0:0]",
    `-A KUBE-SERVICES -d 10.96.0.${round}/32 -p tcp --dport 443 -j KUBE-SVC-TWTEST`,
    "-A KUBE-SVC-TWTEST -j KUBE-SEP-TWTEST",
    `-A KUBE-SEP-TWTEST -p tcp -j DNAT --to-destination 198.18.0.${round}:6443`,
    "COMMIT",
    "",
  ].join("\n");

const nftHost: IptablesInfo = {
  command: "iptables-nft",
  reason: "test",
  version: "1.8.9",
  backend: "nf_tables",
  randomFully: true,
  wait: true,
};

describe("the watches on their own", () => {
  let net: Cluster | undefined;
  const the = (): Cluster => {
    if (net === undefined) throw new Error("no underlay");
    return net;
  };
  const closers: (() => void)[] = [];

  beforeAll(async () => {
    net = await createUnderlay();
  });
  afterAll(async () => {
    for (const close of closers.splice(0)) close();
    const tag = net?.tag;
    await net?.destroy();
    if (tag !== undefined) {
      expect((await listNamespaces()).filter((ns) => ns.startsWith(`tw-${tag}-`))).toEqual([]);
    }
  });

  const legacyTables = async (host: Host): Promise<string> =>
    (await the().run(host.ns, ["cat", "/proc/net/ip_tables_names"])).trim();
  const legacyTables6 = async (host: Host): Promise<string> =>
    (await the().run(host.ns, ["cat", "/proc/net/ip6_tables_names"])).trim();

  describe("nftables notifications", () => {
    let host: Host;
    let watch: NftablesRuleWatch;
    const ipt = (...args: string[]): Promise<string> => the().run(host.ns, ["iptables-nft", "-w", ...args]);

    /**
     * Runs a command and waits until its `transactions` (one per table it commits) have been read;
     * returns how many notices the watch gave meanwhile. Exact: a transaction's messages all come before
     * its NEWGEN, in one socket, and each drain reports before it returns.
     */
    async function notices(transactions: number, command: () => Promise<unknown>): Promise<number> {
      const { listener } = watch;
      const before = { reported: listener.reported, transactions: listener.transactions };
      await command();
      await waitFor(
        `${transactions} nf_tables transaction(s) from the command`,
        () => listener.transactions >= before.transactions + transactions,
      );
      return listener.reported - before.reported;
    }

    const manager = (): MasqManager => new MasqManager(host.runner, undefined, { command: "iptables-nft" });
    /** Puts our rules back, and waits for its transactions: one per table it had to write. */
    const restore = async (): Promise<void> => {
      const before = watch.listener.transactions;
      const { missing } = await manager().ensure(desired("10.244.5.0/24"));
      const tables = new Set(missing.map((line) => line.slice(0, line.indexOf(":"))));
      await waitFor(
        `the restore's ${tables.size} transaction(s)`,
        () => watch.listener.transactions >= before + tables.size,
      );
    };

    beforeAll(async () => {
      host = await the().addHost(1);
      watch = openNftablesWatch(() => undefined, { netns: host.ns });
      closers.push(() => watch.close());
      expect(watch.kind).toBe("nftables notifications");
      expect(await notices(2, () => manager().ensure(desired("10.244.5.0/24")))).toBeGreaterThanOrEqual(1);
    });

    it.each([
      ["a rule deleted (-D)", ["-t", "nat", "-D", "FLANNEL-POSTRTG", "1"]],
      ["our chain flushed (-F)", ["-t", "nat", "-F", "FLANNEL-POSTRTG"]],
      ["our jump deleted from POSTROUTING", ["-t", "nat", "-D", "POSTROUTING", ...MASQ_JUMP]],
      ["FLANNEL-FWD flushed", ["-t", "filter", "-F", "FLANNEL-FWD"]],
      ["our jump deleted from FORWARD", ["-t", "filter", "-D", "FORWARD", ...FORWARD_JUMP]],
      ["the whole nat table flushed (-t nat -F)", ["-t", "nat", "-F"]],
      ["our chain renamed away (-E)", ["-t", "nat", "-E", "FLANNEL-POSTRTG", "TW-RENAMED"]],
    ])("reports %s", async (_name, args) => {
      expect(await notices(1, () => ipt(...args))).toBe(1);
      if (args.includes("-E")) {
        // Renamed back, so the restore below has a chain to fill rather than a second one to add.
        await notices(1, () => ipt("-t", "nat", "-E", "TW-RENAMED", "FLANNEL-POSTRTG"));
      }
      await restore();
    });

    it("reports our chain removed (-D jump, -F, -X): one notice per command", async () => {
      expect(await notices(1, () => ipt("-t", "nat", "-D", "POSTROUTING", ...MASQ_JUMP))).toBe(1);
      expect(await notices(1, () => ipt("-t", "nat", "-F", "FLANNEL-POSTRTG"))).toBe(1);
      expect(await notices(1, () => ipt("-t", "nat", "-X", "FLANNEL-POSTRTG"))).toBe(1);
      await restore();
    });

    it("reports `nft flush ruleset` (tables deleted, no rule messages) once", async () => {
      expect(await notices(1, () => the().run(host.ns, ["nft", "flush", "ruleset"]))).toBe(1);
      await restore();
    });

    it("reads kube-proxy's KUBE-* rewrites and reports none of them; then still reports ours", async () => {
      const seen = watch.listener.messages;
      let reported = 0;
      for (let round = 1; round <= 5; round++) {
        reported += await notices(1, () =>
          the().run(host.ns, ["iptables-nft-restore", "--noflush", "-w"], kubeRestore(round)),
        );
      }
      reported += await notices(1, () => ipt("-t", "nat", "-N", "KUBE-MARK-TWTEST"));
      reported += await notices(1, () =>
        ipt("-t", "nat", "-A", "KUBE-MARK-TWTEST", "-j", "MARK", "--set-xmark", "0x4000/0x4000"),
      );
      reported += await notices(1, () => ipt("-t", "nat", "-F", "KUBE-MARK-TWTEST"));
      reported += await notices(1, () => ipt("-t", "nat", "-X", "KUBE-MARK-TWTEST"));
      reported += await notices(1, () => ipt("-t", "filter", "-N", "KUBE-FORWARD"));
      reported += await notices(1, () =>
        ipt("-t", "filter", "-A", "KUBE-FORWARD", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "ACCEPT"),
      );
      // kube-proxy's nftables mode: a table of its own, family inet.
      reported += await notices(1, () => the().run(host.ns, ["nft", "add", "table", "inet", "kube-proxy"]));
      reported += await notices(1, () =>
        the().run(host.ns, ["nft", "add", "chain", "inet", "kube-proxy", "services"]),
      );
      expect(reported).toBe(0);
      // Every KUBE rule came by (5 restores of 3 rules, the first also creating 3 chains) and was dropped.
      expect(watch.listener.messages - seen).toBeGreaterThan(5 * 3 + 3);

      expect(await notices(1, () => ipt("-t", "nat", "-D", "FLANNEL-POSTRTG", "2"))).toBe(1);
      await restore();
    });

    it("reports ip6tables changes to our chains too (family ip6)", async () => {
      expect(
        await notices(1, () =>
          the().run(host.ns, ["ip6tables-nft", "-w", "-t", "nat", "-N", "FLANNEL-POSTRTG"]),
        ),
      ).toBe(1);
      expect(
        await notices(1, () =>
          the().run(host.ns, ["ip6tables-nft", "-w", "-t", "mangle", "-N", "KUBE-TWTEST"]),
        ),
      ).toBe(0);
    });

    it("loads no legacy table", async () => {
      expect(await legacyTables(host)).toBe("");
    });
  });

  describe("legacy table counters", () => {
    it("follow iptables-legacy, and a missing table is reported absent, not created", async () => {
      const host = await the().addHost(2);
      const reader = LegacyTableReader.open({ netns: host.ns });
      closers.push(() => reader.close());
      expect(reader.tables()).toEqual([]);
      expect(reader.info("nat")).toBeUndefined();
      expect(reader.fingerprint(["nat", "filter"])).toBe("nat:absent filter:absent");
      expect(await legacyTables(host)).toBe("");

      const ipt = (...args: string[]): Promise<string> =>
        the().run(host.ns, ["iptables-legacy", "-w", ...args]);
      await ipt("-t", "nat", "-S"); // creates the nat table, as reading it does
      const empty = reader.info("nat");
      expect(empty?.entries).toBe(5); // four built-in chains' policies and the table's end
      await ipt("-t", "nat", "-A", "POSTROUTING", "-j", "RETURN");
      expect(reader.info("nat")?.entries).toBe(6);
      await ipt("-t", "nat", "-N", "TW-CHAIN"); // a user chain: its head and its return
      expect(reader.info("nat")?.entries).toBe(8);
      expect(reader.info("nat")?.size).toBeGreaterThan(empty?.size ?? Infinity);
      expect(reader.tables()).toEqual(["nat"]);
    });

    it("the watch reports a deleted rule of ours at its next poll", async () => {
      const host = await the().addHost(3);
      const manager = new MasqManager(host.runner, undefined, { command: "iptables-legacy" });
      await manager.ensure(desired("10.244.5.0/24"));
      let notices = 0;
      const watch = openLegacyCounterWatch(() => notices++, { netns: host.ns, intervalMs: 50 });
      closers.push(() => watch.close());
      expect(watch.kind).toBe("legacy table counters");
      await the().run(host.ns, ["iptables-legacy", "-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "1"]);
      await waitFor("a notice", () => notices === 1);
      await the().run(host.ns, ["iptables-legacy", "-w", "-t", "filter", "-F", "FLANNEL-FWD"]);
      await waitFor("a second notice", () => notices === 2);
    });

    it("the watch creates no legacy table on a host that has none, IPv4 or IPv6", async () => {
      const host = await the().addHost(4);
      const watch = openLegacyCounterWatch(() => undefined, { netns: host.ns, intervalMs: 20 });
      closers.push(() => watch.close());
      await waitFor("ten polls", () => watch.polls >= 10);
      expect(await legacyTables(host)).toBe("");
      expect(await legacyTables6(host)).toBe("");
    });

    it("follow ip6tables-legacy too (IPv6 reader), and the watch reports an IPv6 rule deleted", async () => {
      const host = await the().addHost(6);
      const reader = LegacyTableReader.open({ netns: host.ns, family: 6 });
      closers.push(() => reader.close());
      expect(reader.family).toBe(6);
      expect(reader.fingerprint(["nat", "filter"])).toBe("nat:absent filter:absent");
      const ip6t = (...args: string[]): Promise<string> =>
        the().run(host.ns, ["ip6tables-legacy", "-w", ...args]);
      await ip6t("-t", "nat", "-A", "POSTROUTING", "-s", "fd00:10:244::/56", "-j", "RETURN");
      expect(reader.info("nat")?.entries).toBe(6); // four policies, the table's end, and the rule
      expect(await legacyTables(host)).toBe(""); // IPv6 only: no IPv4 legacy table made

      let notices = 0;
      const watch = openLegacyCounterWatch(() => notices++, { netns: host.ns, intervalMs: 50 });
      closers.push(() => watch.close());
      await ip6t("-t", "nat", "-D", "POSTROUTING", "-s", "fd00:10:244::/56", "-j", "RETURN");
      await waitFor("a notice", () => notices === 1);
      expect(reader.info("nat")?.entries).toBe(5);
    });
  });

  it("openRuleWatch: nftables notifications for nf_tables, counters for legacy, nothing otherwise", async () => {
    const host = await the().addHost(5);
    const nft = openRuleWatch(nftHost, () => undefined, { netns: host.ns });
    closers.push(() => nft?.close());
    expect(nft?.kind).toBe("nftables notifications");
    expect(await legacyTables(host)).toBe("");
    const legacy = openRuleWatch({ ...nftHost, backend: "legacy" }, () => undefined, { netns: host.ns });
    closers.push(() => legacy?.close());
    expect(legacy?.kind).toBe("legacy table counters");
    expect(
      openRuleWatch({ ...nftHost, backend: "unknown" }, () => undefined, { netns: host.ns }),
    ).toBeUndefined();
  });
});

// ---- the real agent --------------------------------------------------------------------------------

describe.each([
  { backend: "nf_tables", command: "iptables-nft", mode: "nft", kind: "nftables notifications" },
  { backend: "legacy", command: "iptables-legacy", mode: "legacy", kind: "legacy table counters" },
])("the agent on $backend repairs from notices alone (--iptables-resync=3600)", ({ command, mode, kind }) => {
  let cluster: TwillCluster | undefined;
  const the = (): TwillCluster => {
    if (cluster === undefined) throw new Error("no cluster");
    return cluster;
  };
  const node = () => {
    const first = the().nodes[0];
    if (first === undefined) throw new Error("no node");
    return first;
  };
  const ipt = (...args: string[]): Promise<string> => the().net.run(node().host.ns, [command, "-w", ...args]);
  const ours = async (): Promise<string> =>
    [
      ...(await ipt("-t", "nat", "-S", "POSTROUTING")).split("\n").filter((l) => l.includes("FLANNEL")),
      await ipt("-t", "nat", "-S", "FLANNEL-POSTRTG").catch(() => ""),
      ...(await ipt("-t", "filter", "-S", "FORWARD")).split("\n").filter((l) => l.includes("FLANNEL")),
      await ipt("-t", "filter", "-S", "FLANNEL-FWD").catch(() => ""),
    ].join("\n");
  let golden = "";

  const since = (mark: number, msg: string): number =>
    node()
      .agent.logs()
      .slice(mark)
      .filter((l) => l.msg === msg).length;
  const CHECKED = "masquerade/forward rules checked";
  const RESTORED = "masquerade/forward rules were missing; restored";

  /**
   * Breaks our rules, then waits for the repair, the rules as before, and quiet: the last check logged
   * found all in place (the restore is itself a change of our chains, so a repair is always followed by
   * one more check, of its own echo).
   */
  async function repaired(breakThem: () => Promise<unknown>): Promise<void> {
    const mark = node().agent.logs().length;
    await breakThem();
    await waitFor("the agent's repair", () => since(mark, RESTORED) >= 1);
    await waitFor("the rules as they were", async () => (await ours()) === golden);
    await waitFor("the check of the repair's own echo", () => {
      const checks = node()
        .agent.logs()
        .slice(mark)
        .filter((l) => l.msg === CHECKED);
      return checks.length >= 2 && checks.at(-1)?.restored === false;
    });
  }

  beforeAll(async () => {
    cluster = await startTwillCluster({
      backend: "host-gw",
      hosts: 1,
      agentArgs: ["--ip-masq", "--iptables-resync=3600", `--iptables-mode=${mode}`, "--log-level=debug"],
    });
    await waitFor("the rules installed", async () => (await ours()).includes("MASQUERADE"));
    golden = await ours();
    const { network, prefixLen } = subnetLine(node().agent.subnetEnv());
    expect(golden).toContain(`-A FLANNEL-POSTRTG -s ${network}/${prefixLen} -d ${CLUSTER}`);
  }, 120_000);
  afterAll(async () => {
    await cluster?.destroy();
  });

  it(`says in twill status that removals are noticed by ${kind}`, async () => {
    const status = await runTwill(["status", "--json"], { netns: node().host.ns });
    expect(status.code).toBe(0);
    expect((JSON.parse(status.stdout) as { masq: { watch: unknown } }).masq.watch).toBe(kind);
    const chosen = node()
      .agent.logs()
      .find((l) => l.msg === "iptables backend chosen");
    expect(chosen).toMatchObject({ command, removalsNoticedBy: kind });
  });

  it("restores a rule deleted by hand", async () => {
    await repaired(() => ipt("-t", "nat", "-D", "FLANNEL-POSTRTG", "3"));
  });

  it("restores a flushed chain", async () => {
    await repaired(() => ipt("-t", "nat", "-F", "FLANNEL-POSTRTG"));
  });

  it("restores a deleted jump", async () => {
    await repaired(() => ipt("-t", "filter", "-D", "FORWARD", ...FORWARD_JUMP));
  });

  it("restores a chain removed entirely (-D jump, -F, -X)", async () => {
    // One transaction: as three commands, a repair between them would make the -X fail.
    const payload = [
      "*nat",
      `-D POSTROUTING ${MASQ_JUMP.join(" ").replace("flanneld masq", '"flanneld masq"')}`,
    ];
    payload.push("-F FLANNEL-POSTRTG", "-X FLANNEL-POSTRTG", "COMMIT", "");
    await repaired(() =>
      the().net.run(node().host.ns, [`${command}-restore`, "--noflush", "-w"], payload.join("\n")),
    );
  });

  if (mode === "nft") {
    it("restores after `nft flush ruleset`", async () => {
      await repaired(() => the().net.run(node().host.ns, ["nft", "flush", "ruleset"]));
    });

    it("runs no check for kube-proxy rewriting its KUBE-* chains", async () => {
      const mark = node().agent.logs().length;
      for (let round = 1; round <= 5; round++) {
        await the().net.run(node().host.ns, ["iptables-nft-restore", "--noflush", "-w"], kubeRestore(round));
      }
      await ipt("-t", "filter", "-N", "KUBE-FORWARD");
      await ipt("-t", "filter", "-A", "KUBE-FORWARD", "-j", "ACCEPT");
      await ipt("-t", "filter", "-F", "KUBE-FORWARD");
      // Not a timing assertion: a check for any of these would have logged long before this, and the
      // exact version of this test (the watch alone, above) counts every transaction.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(since(mark, CHECKED)).toBe(0);
      // Still listening: the next change of ours is repaired.
      await repaired(() => ipt("-t", "nat", "-D", "FLANNEL-POSTRTG", "1"));
    });
  }
});
