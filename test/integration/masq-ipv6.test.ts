// IPv6 masquerade and forward rules for real, inside namespaces made here (never the root namespace's
// tables): flannel's IPv6 rules through ip6tables of the same backend as iptables (nft and legacy), read
// back as ip6tables-save prints them; a deleted IPv6 rule restored by ensure() and, with the real loop and
// rule watch and --iptables-resync at an hour, from a notice alone, for a dual-stack and an IPv6-only
// lease; and packets: a pod's IPv6 traffic to the outside leaves with the host's address, pod-to-pod
// traffic keeps the pod's.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CommandRunner } from "../../src/exec/command.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import { Ip6tablesUnavailableError, MasqManager } from "../../src/masq/iptables.js";
import { desiredRuleSets, MasqLoop, type MasqTarget } from "../../src/masq/loop.js";
import { forwardRules, forwardRules6, masqRules, masqRules6, type RuleSet } from "../../src/masq/rules.js";
import { openRuleWatch } from "../../src/masq/watch.js";
import { captureLogs } from "../helpers/logs.js";
import { createUnderlay, listNamespaces, type Cluster, type Host, type Pod } from "../helpers/netns.js";
import { waitFor, type Started } from "../helpers/processes.js";

const CLUSTER = "10.244.0.0/16";
const CLUSTER6 = "fd00:10:244::/56";
const POD6 = "fd00:10:244:5::/64";
const NONE4 = parseCidr("0.0.0.0/0");

// flannel's masqIP6Rules and forwardRules(IPv6 network), as `ip6tables -S` prints them.
const masq6Golden = (pod: string): string[] => [
  '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
  "-N FLANNEL-POSTRTG",
  '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
  `-A FLANNEL-POSTRTG -s ${pod} -d ${CLUSTER6} -m comment --comment "flanneld masq" -j RETURN`,
  `-A FLANNEL-POSTRTG -s ${CLUSTER6} -d ${pod} -m comment --comment "flanneld masq" -j RETURN`,
  `-A FLANNEL-POSTRTG ! -s ${CLUSTER6} -d ${pod} -m comment --comment "flanneld masq" -j RETURN`,
  `-A FLANNEL-POSTRTG -s ${CLUSTER6} ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`,
  `-A FLANNEL-POSTRTG ! -s ${CLUSTER6} -d ${CLUSTER6} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`,
];
const FORWARD6_GOLDEN = [
  '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
  "-N FLANNEL-FWD",
  `-A FLANNEL-FWD -s ${CLUSTER6} -m comment --comment "flanneld forward" -j ACCEPT`,
  `-A FLANNEL-FWD -d ${CLUSTER6} -m comment --comment "flanneld forward" -j ACCEPT`,
];
const MASQ_JUMP = ["-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"];
/** The rule the tests delete by hand: `! -s cluster -d pod -j RETURN`, as ip6tables takes it. */
const victimArgs = (pod: string): string[] => [
  ...["-t", "nat", "-D", "FLANNEL-POSTRTG", "!", "-s", CLUSTER6, "-d", pod],
  ...["-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"],
];

const sets4 = (pod: string): RuleSet[] => [
  masqRules(parseCidr(CLUSTER), parseCidr(pod), { randomFully: true }),
  forwardRules(parseCidr(CLUSTER)),
];
const sets6 = (pod: string): RuleSet[] => [
  masqRules6(parseCidr6(CLUSTER6), parseCidr6(pod), { randomFully: true }),
  forwardRules6(parseCidr6(CLUSTER6)),
];

function lines(text: string): string[] {
  return text.split("\n").filter((l) => l.trim() !== "");
}

/** A runner that records every command. */
function recording(inner: CommandRunner): { runner: CommandRunner; calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    runner: {
      where: inner.where,
      run: (cmd, args, input) => {
        calls.push([cmd, ...args].join(" "));
        return inner.run(cmd, args, input);
      },
    },
  };
}

let cluster: Cluster | undefined;
const the = (): Cluster => {
  if (cluster === undefined) throw new Error("cluster not created");
  return cluster;
};

beforeAll(async () => {
  cluster = await createUnderlay();
});

afterAll(async () => {
  const tag = cluster?.tag;
  await cluster?.destroy();
  if (tag !== undefined) {
    expect((await listNamespaces()).filter((ns) => ns.startsWith(`tw-${tag}-`))).toEqual([]);
  }
});

/** `-S` listings of our lines in a family's nat and filter tables, like flannel's e2e. */
function listings(host: () => Host, command: string) {
  const ipt = (args: readonly string[]): Promise<string> => the().run(host().ns, [command, "-w", ...args]);
  return {
    ipt,
    nat: async (): Promise<string[]> => [
      ...lines(await ipt(["-t", "nat", "-S", "POSTROUTING"])).filter((l) => l.includes("FLANNEL")),
      ...lines(await ipt(["-t", "nat", "-S", "FLANNEL-POSTRTG"])),
    ],
    forward: async (): Promise<string[]> => [
      ...lines(await ipt(["-t", "filter", "-S", "FORWARD"])).filter((l) => l.includes("FLANNEL")),
      ...lines(await ipt(["-t", "filter", "-S", "FLANNEL-FWD"])),
    ],
  };
}

describe.each([
  { command: "iptables-nft", command6: "ip6tables-nft", backend: "nf_tables", index: 11 },
  { command: "iptables-legacy", command6: "ip6tables-legacy", backend: "legacy", index: 12 },
])("MasqManager: IPv6 rules via $command6", ({ command, command6, backend, index }) => {
  let host: Host;
  let manager: MasqManager;
  let calls: string[];
  const v6 = listings(() => host, command6);
  const v4 = listings(() => host, command);

  beforeAll(async () => {
    host = await the().addHost(index);
    const recorder = recording(host.runner);
    calls = recorder.calls;
    manager = new MasqManager(recorder.runner, undefined, { command });
  });

  it(`detects ${command6}, the IPv6 counterpart of ${command}`, async () => {
    const info = await manager.info6();
    expect(info).toMatchObject({ command: command6, backend, randomFully: true, wait: true });
    expect(info.reason).toBe(`the IPv6 counterpart of ${command} (given)`);
  });

  it("installs flannel's exact IPv4 and IPv6 rules for a dual-stack lease", async () => {
    const result = await manager.ensure([...sets4("10.244.5.0/24"), ...sets6(POD6)]);
    expect(result.changed).toBe(true);
    expect(result.missing).toEqual(
      expect.arrayContaining(["nat: chain FLANNEL-POSTRTG", "ip6 nat: chain FLANNEL-POSTRTG"]),
    );
    expect(await v6.nat()).toEqual(masq6Golden(POD6));
    expect(await v6.forward()).toEqual(FORWARD6_GOLDEN);
    expect(await v4.nat()).toContain(
      `-A FLANNEL-POSTRTG -s 10.244.5.0/24 -d ${CLUSTER} -m comment --comment "flanneld masq" -j RETURN`,
    );
    // ip6tables-save, the text the plan reads back, holds every line as rendered.
    const saved = await the().run(host.ns, [`${command6}-save`]);
    for (const line of masq6Golden(POD6).filter((l) => l.startsWith("-A"))) expect(saved).toContain(line);
  });

  it("a second ensure() only reads (one save per table and family)", async () => {
    calls.length = 0;
    expect(await manager.ensure([...sets4("10.244.5.0/24"), ...sets6(POD6)])).toEqual({
      changed: false,
      missing: [],
    });
    expect(calls.sort()).toEqual(
      [
        `${command}-save -t filter`,
        `${command}-save -t nat`,
        `${command6}-save -t filter`,
        `${command6}-save -t nat`,
      ].sort(),
    );
  });

  it("restores an IPv6 rule deleted by hand, and nothing of IPv4", async () => {
    const golden = masq6Golden(POD6);
    const victim = golden[5] ?? "";
    await v6.ipt(victimArgs(POD6));
    expect(await v6.nat()).not.toContain(victim);
    calls.length = 0;
    expect(await manager.ensure([...sets4("10.244.5.0/24"), ...sets6(POD6)])).toEqual({
      changed: true,
      missing: [`ip6 nat: rule ${victim}`],
    });
    expect(await v6.nat()).toEqual(golden);
    expect(calls.filter((c) => c.includes("-restore"))).toEqual([`${command6}-restore --noflush --wait`]);
  });

  it("restores a deleted IPv6 jump and a flushed IPv6 chain", async () => {
    await v6.ipt(["-t", "filter", "-F", "FLANNEL-FWD"]);
    await v6.ipt(["-t", "nat", "-D", "POSTROUTING", ...MASQ_JUMP]);
    const result = await manager.ensure(sets6(POD6));
    expect(result.missing).toEqual(
      expect.arrayContaining([
        'ip6 nat: rule -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        `ip6 filter: rule ${FORWARD6_GOLDEN[2] ?? ""}`,
      ]),
    );
    expect(await v6.nat()).toEqual(masq6Golden(POD6));
    expect(await v6.forward()).toEqual(FORWARD6_GOLDEN);
  });

  it("replaces the IPv6 chain's rules when the IPv6 pod subnet changes", async () => {
    await manager.ensure(sets6("fd00:10:244:9::/64"));
    expect(await v6.nat()).toEqual(masq6Golden("fd00:10:244:9::/64"));
    expect((await v6.ipt(["-t", "nat", "-S"])).includes("fd00:10:244:5::")).toBe(false);
    await manager.ensure(sets6(POD6));
    expect(await v6.nat()).toEqual(masq6Golden(POD6));
  });
});

describe("MasqManager: an IPv6-only lease and a missing ip6tables", () => {
  it("an IPv6-only lease writes ip6tables only", async () => {
    const host = await the().addHost(13);
    const manager = new MasqManager(host.runner, undefined, { command: "iptables-legacy" });
    const target: MasqTarget = {
      network: NONE4,
      subnet: NONE4,
      ipv6Network: parseCidr6(CLUSTER6),
      ipv6Subnet: parseCidr6(POD6),
    };
    const sets = desiredRuleSets(
      target,
      { ipMasq: true, forwardRules: true, fullyRandomDisable: false },
      { ipv4: true, ipv6: true },
    );
    await manager.ensure(sets);
    expect(await listings(() => host, "ip6tables-legacy").nat()).toEqual(masq6Golden(POD6));
    // No IPv4 legacy table was ever made.
    expect((await the().run(host.ns, ["cat", "/proc/net/ip_tables_names"])).trim()).toBe("");
  });

  it("an ip6tables that cannot be run fails with an error naming it", async () => {
    const host = await the().addHost(14);
    const manager = new MasqManager(host.runner, undefined, {
      command: "iptables-nft",
      command6: "ip6tables-twill-absent",
    });
    const error = await manager.ensure(sets6(POD6)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Ip6tablesUnavailableError);
    expect((error as Error).message).toMatch(/ip6tables-twill-absent --version .* failed/);
    expect((error as Error).message).toContain("need ip6tables-twill-absent");
  });
});

// ---- the loop with the real watch ------------------------------------------------------------------

describe.each([
  { command: "iptables-nft", command6: "ip6tables-nft", kind: "nftables notifications", first: 21 },
  { command: "iptables-legacy", command6: "ip6tables-legacy", kind: "legacy table counters", first: 23 },
])("MasqLoop on $command repairs IPv6 rules from notices alone", ({ command, command6, kind, first }) => {
  const loops: { controller: AbortController; done: Promise<void> }[] = [];
  afterAll(async () => {
    for (const loop of loops) loop.controller.abort();
    await Promise.all(loops.map((loop) => loop.done));
  });

  async function startLoop(host: Host, target: MasqTarget) {
    const logs = captureLogs();
    let chosen: string | undefined;
    let installed = false;
    const loop = new MasqLoop(
      new MasqManager(host.runner, undefined, { command }),
      // An hour between checks: within the test's time only a notice can bring a check.
      {
        ipMasq: true,
        fullyRandomDisable: false,
        forwardRules: true,
        resyncMs: 3_600_000,
        safetyResyncMs: 3_600_000,
      },
      logs.log,
      { chosen: (_info, watch) => (chosen = watch), installed: () => (installed = true) },
      (info, onChange) => openRuleWatch(info, onChange, { netns: host.ns, intervalMs: 100 }),
    );
    const controller = new AbortController();
    loops.push({ controller, done: loop.run(controller.signal) });
    loop.set(target);
    await waitFor("the rules installed", () => installed);
    expect(chosen).toBe(kind);
    return logs;
  }

  it.each([
    ["a dual-stack lease", 0, "10.244.5.0/24"],
    ["an IPv6-only lease", 1, undefined],
  ] as const)("%s", async (_name, offset, pod4) => {
    const host = await the().addHost(first + offset);
    const target: MasqTarget = {
      network: pod4 === undefined ? NONE4 : parseCidr(CLUSTER),
      subnet: pod4 === undefined ? NONE4 : parseCidr(pod4),
      ipv6Network: parseCidr6(CLUSTER6),
      ipv6Subnet: parseCidr6(POD6),
    };
    const logs = await startLoop(host, target);
    const v6 = listings(() => host, command6);
    expect(await v6.nat()).toEqual(masq6Golden(POD6));
    expect(await v6.forward()).toEqual(FORWARD6_GOLDEN);
    const v4Saved = await the().run(host.ns, [`${command}-save`]);
    expect(v4Saved.includes("FLANNEL-POSTRTG")).toBe(pod4 !== undefined);

    await v6.ipt(victimArgs(POD6));
    await waitFor("the IPv6 rule restored", async () => (await v6.nat()).length === masq6Golden(POD6).length);
    expect(await v6.nat()).toEqual(masq6Golden(POD6));
    const [restored] = logs.withMsg("masquerade/forward rules were missing; restored");
    expect(restored).toMatchObject({ missing: [`ip6 nat: rule ${masq6Golden(POD6)[5] ?? ""}`] });

    await v6.ipt(["-t", "filter", "-F", "FLANNEL-FWD"]);
    await waitFor("the IPv6 forward chain restored", async () => (await v6.forward()).length === 4);
    expect(await v6.forward()).toEqual(FORWARD6_GOLDEN);
  });
});

// ---- packets -----------------------------------------------------------------------------------------

describe("IPv6 packets", () => {
  // The underlay gets IPv6 here: h1 2001:db8:18::1, h2 ::2, the outside h3 ::3 on 2001:db8:18::/64.
  // h1: cni0 fd00:10:244:5::1/64 with pods a (::2) and b (::3); h2: cni0 fd00:10:244:6::1/64 with pod c
  // (::2); routes between the IPv6 pod subnets by hand (host-gw style). The outside has no route back to
  // fd00:10:244::/56, so a reply reaches a pod only if the pod's address was masqueraded. The IPv6 FORWARD
  // policy is DROP on h1 and h2, so forwarding works only through the IPv6 FLANNEL-FWD.
  let h1: Host;
  let h2: Host;
  let outside: Host;
  let podA: Pod;
  let podC: Pod;
  const servers = new Map<string, Started>();
  const PORT = 5790;
  const H1 = "2001:db8:18::1";
  const OUTSIDE = "2001:db8:18::3";
  const A = "fd00:10:244:5::2";
  const C = "fd00:10:244:6::2";

  const serverScript = [
    'const s = require("node:dgram").createSocket("udp6");',
    's.on("message", (m, r) => { console.log("GOT " + r.address + " " + m); s.send(r.address, r.port, r.address); });',
    `s.bind(${PORT}, "::", () => console.log("LISTENING"));`,
  ].join("\n");

  const clientScript = (to: string, tag: string): string =>
    [
      'const s = require("node:dgram").createSocket("udp6");',
      "let n = 0;",
      `const t = setInterval(() => { if (n++ >= 10) { clearInterval(t); s.close(); return; } s.send(${JSON.stringify(tag)}, ${PORT}, ${JSON.stringify(to)}); }, 100);`,
      's.on("message", (m) => { console.log(String(m)); clearInterval(t); s.close(); });',
    ].join("\n");

  async function startServer(ns: string): Promise<void> {
    const server = the().spawn(ns, process.execPath, ["-e", serverScript]);
    servers.set(ns, server);
    await waitFor(`UDP server in ${ns}`, () => server.output().includes("LISTENING"), 10_000);
  }

  let probes = 0;
  /** The source address the server in `toNs` saw for a datagram sent from `fromNs` to `toIp`. */
  async function seenSource(fromNs: string, toNs: string, toIp: string): Promise<string> {
    const tag = `probe6-${++probes}`;
    const server = servers.get(toNs);
    if (server === undefined) throw new Error(`no server in ${toNs}`);
    await the().exec(fromNs, [process.execPath, "-e", clientScript(toIp, tag)]);
    const pattern = new RegExp(`^GOT (\\S+) ${tag}$`, "m");
    return waitFor(`${tag} at ${toNs}`, () => pattern.exec(server.output())?.[1], 5_000);
  }

  const masq = async (host: Host, pod4: string, pod6: string): Promise<void> => {
    const manager = new MasqManager(host.runner);
    const [info, info6] = [await manager.info(), await manager.info6()];
    const target: MasqTarget = {
      network: parseCidr(CLUSTER),
      subnet: parseCidr(pod4),
      ipv6Network: parseCidr6(CLUSTER6),
      ipv6Subnet: parseCidr6(pod6),
    };
    await manager.ensure(
      desiredRuleSets(
        target,
        { ipMasq: true, forwardRules: true, fullyRandomDisable: false },
        { ipv4: info.randomFully, ipv6: info6.randomFully },
      ),
    );
  };

  beforeAll(async () => {
    const c = the();
    // Neighbour discovery's multicast flooded like ARP's broadcast, whatever MLD the switch has seen.
    await c.run(c.switchNs, ["ip", "link", "set", "br-ul", "type", "bridge", "mcast_snooping", "0"]);
    h1 = await c.addHost(1);
    h2 = await c.addHost(2);
    outside = await c.addHost(3);
    for (const [host, address] of [
      [h1, H1],
      [h2, "2001:db8:18::2"],
      [outside, OUTSIDE],
    ] as const) {
      await c.run(host.ns, ["ip", "-6", "address", "add", `${address}/64`, "dev", "eth0", "nodad"]);
    }
    for (const [host, v4, gw4, gw6, peer4, peer6, peerHost6, mac] of [
      [
        h1,
        "10.244.5.1/24",
        "10.244.6.0/24",
        "fd00:10:244:5::1/64",
        "198.18.0.2",
        "fd00:10:244:6::/64",
        "2001:db8:18::2",
        "02:74:77:00:13:01",
      ],
      [
        h2,
        "10.244.6.1/24",
        "10.244.5.0/24",
        "fd00:10:244:6::1/64",
        "198.18.0.1",
        "fd00:10:244:5::/64",
        H1,
        "02:74:77:00:14:01",
      ],
    ] as const) {
      await c.run(host.ns, [
        "ip",
        "link",
        "add",
        "cni0",
        "address",
        mac,
        "type",
        "bridge",
        "mcast_snooping",
        "0",
      ]);
      await c.run(host.ns, ["ip", "address", "add", v4, "dev", "cni0"]);
      await c.run(host.ns, ["ip", "-6", "address", "add", gw6, "dev", "cni0", "nodad"]);
      await c.run(host.ns, ["ip", "link", "set", "cni0", "up"]);
      await c.run(host.ns, ["ip", "route", "add", gw4, "via", peer4]);
      await c.run(host.ns, ["ip", "-6", "route", "add", peer6, "via", peerHost6]);
      await c.run(host.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
      await c.run(host.ns, ["ip6tables", "-w", "-P", "FORWARD", "DROP"]);
    }
    const pod = async (host: Host, name: string, v4: string, gw4: string, v6: string, gw6: string) => {
      const p = await c.addPod(host, name, { bridge: "cni0", address: v4, gateway: gw4 });
      await c.run(p.ns, ["ip", "-6", "address", "add", v6, "dev", "eth0", "nodad"]);
      await c.run(p.ns, ["ip", "-6", "route", "add", "default", "via", gw6]);
      return p;
    };
    podA = await pod(h1, "a", "10.244.5.2/24", "10.244.5.1", `${A}/64`, "fd00:10:244:5::1");
    await pod(h1, "b", "10.244.5.3/24", "10.244.5.1", "fd00:10:244:5::3/64", "fd00:10:244:5::1");
    podC = await pod(h2, "c", "10.244.6.2/24", "10.244.6.1", `${C}/64`, "fd00:10:244:6::1");
    await Promise.all([outside.ns, podA.ns, podC.ns].map(startServer));
  });

  it("without the rules a pod cannot reach the outside over IPv6", async () => {
    expect((await the().ping(podA.ns, OUTSIDE)).ok).toBe(false);
  });

  it("with the rules a pod reaches the outside with the host's IPv6 address as source", async () => {
    await masq(h1, "10.244.5.0/24", "fd00:10:244:5::/64");
    await masq(h2, "10.244.6.0/24", "fd00:10:244:6::/64");
    expect((await the().ping(podA.ns, OUTSIDE, { count: 3, waitSeconds: 2 })).ok).toBe(true);
    expect(await seenSource(podA.ns, outside.ns, OUTSIDE)).toBe(H1);
  });

  it("pod-to-pod IPv6 traffic across hosts keeps the pod's address", async () => {
    expect((await the().ping(podA.ns, C, { count: 3, waitSeconds: 2 })).ok).toBe(true);
    expect(await seenSource(podA.ns, podC.ns, C)).toBe(A);
    expect(await seenSource(podC.ns, podA.ns, A)).toBe(C);
  });

  it("traffic from outside to a local pod keeps the client's IPv6 address", async () => {
    await the().run(outside.ns, ["ip", "-6", "route", "add", "fd00:10:244:5::/64", "via", H1]);
    expect(await seenSource(outside.ns, podA.ns, A)).toBe(OUTSIDE);
  });
});
