// Masquerade and forward rules for real, inside namespaces made here (never the root namespace's iptables):
// the rule text against flannel's goldens on each iptables backend, drift repair, foreign rules left alone,
// and packets: pod → outside is masqueraded, pod → pod keeps its address.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import type { CommandRunner } from "../../src/exec/command.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { IptablesRestoreError, MasqManager, type MasqLogger } from "../../src/masq/iptables.js";
import { forwardRules, masqRules, type RuleSet } from "../../src/masq/rules.js";
import { createUnderlay, listNamespaces, type Cluster, type Host, type Pod } from "../helpers/netns.js";
import { waitFor, type Started } from "../helpers/processes.js";

const CLUSTER = "10.244.0.0/16";

// flannel's goldens (reference §8.1, e2e/rules.go) as `iptables -S` prints them.
const masqGolden = (pod: string): string[] => [
  '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
  "-N FLANNEL-POSTRTG",
  '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
  `-A FLANNEL-POSTRTG -s ${pod} -d ${CLUSTER} -m comment --comment "flanneld masq" -j RETURN`,
  `-A FLANNEL-POSTRTG -s ${CLUSTER} -d ${pod} -m comment --comment "flanneld masq" -j RETURN`,
  `-A FLANNEL-POSTRTG ! -s ${CLUSTER} -d ${pod} -m comment --comment "flanneld masq" -j RETURN`,
  `-A FLANNEL-POSTRTG -s ${CLUSTER} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`,
  `-A FLANNEL-POSTRTG ! -s ${CLUSTER} -d ${CLUSTER} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`,
];
const FORWARD_GOLDEN = [
  "-P FORWARD ACCEPT",
  '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
  "-N FLANNEL-FWD",
  `-A FLANNEL-FWD -s ${CLUSTER} -m comment --comment "flanneld forward" -j ACCEPT`,
  `-A FLANNEL-FWD -d ${CLUSTER} -m comment --comment "flanneld forward" -j ACCEPT`,
];

const desired = (pod: string): RuleSet[] => [
  masqRules(parseCidr(CLUSTER), parseCidr(pod), { randomFully: true }),
  forwardRules(parseCidr(CLUSTER)),
];

/** A runner that records every command, to show that a no-op resync writes nothing. */
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

function capturingLog(): MasqLogger & { lines: { level: string; msg: string; obj: object }[] } {
  const lines: { level: string; msg: string; obj: object }[] = [];
  return {
    lines,
    info: (obj, msg) => lines.push({ level: "info", msg, obj }),
    warn: (obj, msg) => lines.push({ level: "warn", msg, obj }),
  };
}

function lines(text: string): string[] {
  return text.split("\n").filter((l) => l.trim() !== "");
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

describe.each([
  // Debian's iptables package ships both backends; setup installs it, so neither is ever skipped.
  { command: "iptables", index: 11 },
  { command: "iptables-legacy", index: 12 },
])("rules via $command", ({ command, index }) => {
  let host: Host;
  let manager: MasqManager;
  let calls: string[];
  const log = capturingLog();
  // -w: wait for the xtables lock (/run/xtables.lock is shared with every namespace, agents included).
  const ipt = (args: readonly string[]): Promise<string> => the().run(host.ns, [command, "-w", ...args]);
  /** Like flannel's e2e: our lines of POSTROUTING, then our chain. */
  const natListing = async (): Promise<string[]> => [
    ...lines(await ipt(["-t", "nat", "-S", "POSTROUTING"])).filter((l) => l.includes("FLANNEL")),
    ...lines(await ipt(["-t", "nat", "-S", "FLANNEL-POSTRTG"])),
  ];
  const forwardListing = async (): Promise<string[]> => [
    ...lines(await ipt(["-t", "filter", "-S", "FORWARD"])),
    ...lines(await ipt(["-t", "filter", "-S", "FLANNEL-FWD"])),
  ];

  beforeAll(async () => {
    host = await the().addHost(index);
    const recorder = recording(host.runner);
    calls = recorder.calls;
    manager = new MasqManager(recorder.runner, log, { command });
  });

  it("detects version, backend and --random-fully", async () => {
    const info = await manager.info();
    expect(info.command).toBe(command);
    expect(info.version).toMatch(/^\d+\.\d+\.\d+$/);
    if (command === "iptables-legacy") expect(info.backend).toBe("legacy");
    expect(info.randomFully).toBe(true);
    expect(info.wait).toBe(true);
  });

  it("installs flannel's exact rules, in flannel's order", async () => {
    const result = await manager.ensure(desired("10.244.5.0/24"));
    expect(result.changed).toBe(true);
    expect(result.missing).toContain("nat: chain FLANNEL-POSTRTG");
    expect(await natListing()).toEqual(masqGolden("10.244.5.0/24"));
    expect(await forwardListing()).toEqual(FORWARD_GOLDEN);
    // The whole nat table: nothing but the built-in policies and ours.
    expect(lines(await ipt(["-t", "nat", "-S"]))).toEqual([
      "-P PREROUTING ACCEPT",
      "-P INPUT ACCEPT",
      "-P OUTPUT ACCEPT",
      "-P POSTROUTING ACCEPT",
      "-N FLANNEL-POSTRTG",
      ...masqGolden("10.244.5.0/24").filter((l) => !l.startsWith("-N")),
    ]);
    expect(log.lines.filter((l) => l.level === "warn")).toEqual([]);
  });

  it("a second ensure() reads and writes nothing", async () => {
    calls.length = 0;
    expect(await manager.ensure(desired("10.244.5.0/24"))).toEqual({ changed: false, missing: [] });
    expect(calls.every((c) => c.startsWith(`${command}-save `))).toBe(true);
    expect(calls).toHaveLength(2);
    expect(await natListing()).toEqual(masqGolden("10.244.5.0/24"));
  });

  it("restores a rule deleted by hand, and a deleted jump", async () => {
    const golden = masqGolden("10.244.5.0/24");
    const victim = golden[5] ?? "";
    expect(victim).toMatch(/^-A FLANNEL-POSTRTG ! -s /);
    await ipt([
      ...["-t", "nat", "-D", "FLANNEL-POSTRTG", "!", "-s", CLUSTER, "-d", "10.244.5.0/24"],
      ...["-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"],
    ]);
    expect(await natListing()).not.toContain(victim);
    const result = await manager.ensure(desired("10.244.5.0/24"));
    expect(result).toEqual({ changed: true, missing: [`nat: rule ${victim}`] });
    expect(await natListing()).toEqual(golden);

    await ipt([
      "-t",
      "filter",
      "-D",
      "FORWARD",
      "-m",
      "comment",
      "--comment",
      "flanneld forward",
      "-j",
      "FLANNEL-FWD",
    ]);
    const again = await manager.ensure(desired("10.244.5.0/24"));
    expect(again.missing).toEqual([
      'filter: rule -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
    ]);
    expect(await forwardListing()).toEqual(FORWARD_GOLDEN);
  });

  it("re-creates our chain when it was removed entirely", async () => {
    await ipt([
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
    ]);
    await ipt(["-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    await ipt(["-t", "nat", "-X", "FLANNEL-POSTRTG"]);
    expect((await manager.ensure(desired("10.244.5.0/24"))).changed).toBe(true);
    expect(await natListing()).toEqual(masqGolden("10.244.5.0/24"));
  });

  it("leaves foreign rules and chains untouched while repairing ours", async () => {
    // Foreign rules before and after our jump, a foreign chain, and a foreign rule in FORWARD.
    await ipt(["-t", "nat", "-N", "TW-FOREIGN"]);
    await ipt(["-t", "nat", "-A", "TW-FOREIGN", "-d", "198.51.100.0/24", "-j", "RETURN"]);
    await ipt(["-t", "nat", "-I", "POSTROUTING", "1", "-s", "192.0.2.0/24", "-j", "MASQUERADE"]);
    await ipt(["-t", "nat", "-A", "POSTROUTING", "-j", "TW-FOREIGN"]);
    await ipt(["-t", "filter", "-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "DROP"]);
    // A foreign rule inside our own chain is ours to remove.
    await ipt(["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "192.0.2.0/24", "-j", "RETURN"]);
    const natBefore = lines(await ipt(["-t", "nat", "-S"]));
    const filterBefore = lines(await ipt(["-t", "filter", "-S"]));

    // Break ours: a rule in each of our chains.
    await ipt(["-t", "filter", "-F", "FLANNEL-FWD"]);
    const result = await manager.ensure(desired("10.244.5.0/24"));
    expect(result.changed).toBe(true);
    expect(result.missing).toEqual(
      expect.arrayContaining(["nat: unexpected rule -A FLANNEL-POSTRTG -s 192.0.2.0/24 -j RETURN"]),
    );

    const natAfter = lines(await ipt(["-t", "nat", "-S"]));
    expect(natAfter).toEqual(natBefore.filter((l) => l !== "-A FLANNEL-POSTRTG -s 192.0.2.0/24 -j RETURN"));
    expect(natAfter.filter((l) => l.startsWith("-A POSTROUTING"))).toEqual([
      "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE",
      '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      "-A POSTROUTING -j TW-FOREIGN",
    ]);
    expect(lines(await ipt(["-t", "filter", "-S"]))).toEqual(filterBefore);
    expect(lines(await ipt(["-t", "nat", "-S", "TW-FOREIGN"]))).toEqual([
      "-N TW-FOREIGN",
      "-A TW-FOREIGN -d 198.51.100.0/24 -j RETURN",
    ]);
    expect((await manager.ensure(desired("10.244.5.0/24"))).changed).toBe(false);
  });

  it("replaces the chain's rules when the pod subnet changes (recycling)", async () => {
    const result = await manager.ensure(desired("10.244.9.0/24"));
    expect(result.changed).toBe(true);
    expect(await natListing()).toEqual(masqGolden("10.244.9.0/24"));
    expect(lines(await ipt(["-t", "nat", "-S"])).join("\n")).not.toContain("10.244.5.0");
    // Back again; still one jump.
    await manager.ensure(desired("10.244.5.0/24"));
    expect(await natListing()).toEqual(masqGolden("10.244.5.0/24"));
  });

  it("a failed restore throws iptables' message and changes nothing", async () => {
    const bad: RuleSet = {
      table: "nat",
      chain: "TW-BAD",
      rules: [{ chain: "TW-BAD", spec: ["-s", "10.1.0.0/16", "-j", "NO-SUCH-CHAIN"] }],
      jump: { chain: "POSTROUTING", spec: ["-j", "TW-BAD"] },
    };
    const before = lines(await ipt(["-t", "nat", "-S"]));
    const error = await manager.ensure([bad]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IptablesRestoreError);
    expect((error as IptablesRestoreError).message).toMatch(/restore/);
    expect(lines(await ipt(["-t", "nat", "-S"]))).toEqual(before);
    // The manager keeps working after a failure.
    expect((await manager.ensure(desired("10.244.5.0/24"))).changed).toBe(false);
  });
});

describe("--iptables-mode=auto against real tables", () => {
  const legacyTables = async (ns: string): Promise<string> =>
    (await the().run(ns, ["cat", "/proc/net/ip_tables_names"])).trim();

  it("on a node without rules uses the system's iptables, and loads no legacy table to find that out", async () => {
    const host = await the().addHost(13);
    const info = await new MasqManager(host.runner, undefined, { mode: "auto" }).info();
    expect(info.command).toBe("iptables");
    expect(info.reason).toBe("no hint and 0 rules in either backend: the system's iptables");
    expect(await legacyTables(host.ns)).toBe("");
  });

  it("without kubelet's hint, follows the backend that holds more rules", async () => {
    const host = await the().addHost(14);
    for (const net of ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"])
      await the().run(host.ns, ["iptables-legacy", "-w", "-A", "INPUT", "-s", net, "-j", "ACCEPT"]);
    await the().run(host.ns, ["iptables-nft", "-w", "-A", "INPUT", "-s", "10.9.0.0/16", "-j", "ACCEPT"]);
    const manager = new MasqManager(host.runner, undefined, { mode: "auto" });
    const info = await manager.info();
    expect(info.command).toBe("iptables-legacy");
    expect(info.reason).toBe("3 legacy rules against 1 nft rules");
    await manager.ensure(desired("10.244.5.0/24"));
    expect(await the().run(host.ns, ["iptables-legacy-save", "-t", "nat"])).toContain(":FLANNEL-POSTRTG");
    expect(await the().run(host.ns, ["iptables-nft-save", "-t", "nat"])).not.toContain("FLANNEL-POSTRTG");
  });

  it("kubelet's hint chain in nft wins over more rules in legacy", async () => {
    const host = await the().addHost(15);
    await the().run(host.ns, ["iptables-nft", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]);
    await the().run(host.ns, ["iptables-legacy", "-w", "-A", "INPUT", "-s", "10.1.0.0/16", "-j", "ACCEPT"]);
    const info = await new MasqManager(host.runner, undefined, { mode: "auto" }).info();
    expect(info.command).toBe("iptables-nft");
    expect(info.backend).toBe("nf_tables");
    expect(info.reason).toBe("kubelet's KUBE-IPTABLES-HINT chain is in the nft tables");
  });
});

describe("packets", () => {
  // h1: cni0 10.244.5.1/24 with pods a (.2) and b (.3); h2: cni0 10.244.6.1/24 with pod c (.2); routes between
  // the pod subnets by hand (host-gw style). h3 (198.18.0.3) stands for the outside: it has no route back to
  // 10.244.0.0/16, so a reply reaches a pod only if the pod's address was masqueraded. FORWARD policy is DROP
  // on h1 and h2, so forwarding works only through FLANNEL-FWD.
  let h1: Host;
  let h2: Host;
  let outside: Host;
  let podA: Pod;
  let podB: Pod;
  let podC: Pod;
  const servers = new Map<string, Started>();
  const PORT = 5789;

  const serverScript = [
    'const s = require("node:dgram").createSocket("udp4");',
    's.on("message", (m, r) => { console.log("GOT " + r.address + " " + m); s.send(r.address, r.port, r.address); });',
    `s.bind(${PORT}, () => console.log("LISTENING"));`,
  ].join("\n");

  const clientScript = (to: string, tag: string): string =>
    [
      'const s = require("node:dgram").createSocket("udp4");',
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
    const tag = `probe-${++probes}`;
    const server = servers.get(toNs);
    if (server === undefined) throw new Error(`no server in ${toNs}`);
    await the().exec(fromNs, [process.execPath, "-e", clientScript(toIp, tag)]);
    const pattern = new RegExp(`^GOT (\\S+) ${tag}$`, "m");
    return waitFor(`${tag} at ${toNs}`, () => pattern.exec(server.output())?.[1], 5_000);
  }

  const masq = async (host: Host, pod: string): Promise<void> => {
    const manager = new MasqManager(host.runner);
    const info = await manager.info();
    await manager.ensure([
      masqRules(parseCidr(CLUSTER), parseCidr(pod), { randomFully: info.randomFully }),
      forwardRules(parseCidr(CLUSTER)),
    ]);
  };

  beforeAll(async () => {
    const c = the();
    h1 = await c.addHost(1);
    h2 = await c.addHost(2);
    outside = await c.addHost(3);
    // Fixed bridge MACs, so attaching a pod's port cannot change the gateway MAC under a pod's ARP entry.
    for (const [host, gw, peerSubnet, peer, mac] of [
      [h1, "10.244.5.1/24", "10.244.6.0/24", "198.18.0.2", "02:74:77:00:03:01"],
      [h2, "10.244.6.1/24", "10.244.5.0/24", "198.18.0.1", "02:74:77:00:04:01"],
    ] as const) {
      await c.run(host.ns, ["ip", "link", "add", "cni0", "address", mac, "type", "bridge"]);
      await c.run(host.ns, ["ip", "address", "add", gw, "dev", "cni0"]);
      await c.run(host.ns, ["ip", "link", "set", "cni0", "up"]);
      await c.run(host.ns, ["ip", "route", "add", peerSubnet, "via", peer]);
      await c.run(host.ns, ["iptables", "-w", "-P", "FORWARD", "DROP"]);
    }
    podA = await c.addPod(h1, "a", { bridge: "cni0", address: "10.244.5.2/24", gateway: "10.244.5.1" });
    podB = await c.addPod(h1, "b", { bridge: "cni0", address: "10.244.5.3/24", gateway: "10.244.5.1" });
    podC = await c.addPod(h2, "c", { bridge: "cni0", address: "10.244.6.2/24", gateway: "10.244.6.1" });
    await Promise.all([outside.ns, podA.ns, podB.ns, podC.ns].map(startServer));
  });

  it("without the rules a pod cannot reach the outside", async () => {
    expect((await the().ping(podA.ns, outside.address)).ok).toBe(false);
  });

  it("with the rules a pod reaches the outside with the host's address as source", async () => {
    await masq(h1, "10.244.5.0/24");
    await masq(h2, "10.244.6.0/24");
    expect((await the().ping(podA.ns, outside.address, { count: 3, waitSeconds: 2 })).ok).toBe(true);
    expect(await seenSource(podA.ns, outside.ns, outside.address)).toBe(h1.address);
  });

  it("pod-to-pod traffic keeps the pod's address, across hosts and on one bridge", async () => {
    expect((await the().ping(podA.ns, podC.address, { count: 3, waitSeconds: 2 })).ok).toBe(true);
    expect(await seenSource(podA.ns, podC.ns, podC.address)).toBe(podA.address);
    expect(await seenSource(podC.ns, podA.ns, podA.address)).toBe(podC.address);
    expect(await seenSource(podA.ns, podB.ns, podB.address)).toBe(podA.address);
  });

  it("packets carrying kube-proxy's 0x4000 mark are left to kube-proxy (not masqueraded)", async () => {
    const mark = [
      "-t",
      "mangle",
      "-A",
      "PREROUTING",
      "-s",
      "10.244.5.3/32",
      "-j",
      "MARK",
      "--set-xmark",
      "0x4000/0x4000",
    ];
    await the().run(h1.ns, ["iptables", "-w", ...mark]);
    try {
      expect(await seenSource(podB.ns, outside.ns, outside.address)).toBe(podB.address);
    } finally {
      await the().run(h1.ns, ["iptables", "-w", ...mark.map((a) => (a === "-A" ? "-D" : a))]);
    }
  });

  it("traffic from outside to a local pod keeps the client's address", async () => {
    await the().run(outside.ns, ["ip", "route", "add", "10.244.5.0/24", "via", h1.address]);
    expect(await seenSource(outside.ns, podA.ns, podA.address)).toBe(outside.address);
  });
});
