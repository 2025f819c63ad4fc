// The data-plane loop at unit speed: a fake kernel behind the channel interface and a fake clock.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { parseNetworkConfig, type NetworkConfig } from "../../src/config/network-config.js";
import type {
  NodeBackend,
  NodeFacts,
  UserspaceDataPath,
  UserspaceRoute,
  UserspaceStatus,
} from "../../src/backends/backend.js";
import { DataplaneLoop, type DataplaneHost, type RoundReport } from "../../src/dataplane/loop.js";
import { permanentFdb, permanentNeighbour, ownedRoute, type Route } from "../../src/dataplane/objects.js";
import type { Family } from "../../src/ip/address.js";
import { formatCidr, formatIPv4, parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import type { Lease } from "../../src/lease/lease.js";
import type { ExternalInterface } from "../../src/node/external-interface.js";
import { FakeClock, settle } from "../helpers/fake-clock.js";
import { FakeKernel } from "../helpers/fake-kernel.js";
import { familyLease, leaseKey, peerLease, vtepMac, type FamilySpec } from "../helpers/leases.js";
import { captureLogs, type CapturedLogs } from "../helpers/logs.js";

const EXTERNAL: ExternalInterface = {
  name: "eth0",
  index: 11,
  mtu: 1500,
  ifaceIp: parseIPv4("198.18.0.1"),
  publicIp: parseIPv4("198.18.0.1"),
};
const OWN = parseCidr("10.244.1.0/24");
const RESYNC_MS = 300_000;

const host: DataplaneHost = {
  ensureForwarding: () => Promise.resolve(false),
  macIsPinned: () => Promise.resolve(true),
  runner: { where: "fake", run: () => Promise.resolve({ stdout: "", stderr: "", exitCode: 0 }) },
};

interface Harness {
  readonly kernel: FakeKernel;
  readonly clock: FakeClock;
  readonly logs: CapturedLogs;
  readonly rounds: RoundReport[];
  readonly loop: DataplaneLoop;
  readonly peers: Map<string, Lease>;
  readonly backend: NodeBackend;
  put(lease: Lease): Promise<void>;
  remove(n: number): Promise<void>;
  /** kernel.calls made since the mark. */
  callsSince(mark: number): string[];
  stop(): Promise<void>;
}

const harnesses: Harness[] = [];
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.stop()));
});

async function start(
  options: {
    backend?: "vxlan" | "host-gw" | "udp";
    peers?: readonly Lease[];
    backendOptions?: string;
    /** Changes the prepared backend before the loop gets it (e.g. a recording userspace data path). */
    wrap?: (backend: NodeBackend) => NodeBackend;
  } = {},
): Promise<Harness> {
  const kernel = new FakeKernel();
  const clock = new FakeClock();
  const logs = captureLogs();
  const rounds: RoundReport[] = [];
  const type = options.backend ?? "vxlan";
  const config = parseNetworkConfig(
    `{"Network":"10.244.0.0/16","Backend":{"Type":"${type}"${options.backendOptions ?? ""}}}`,
  ).config;
  const dir = mkdtempSync(join(tmpdir(), "twill-loop-"));
  const prepared = await config.backend.prepare({
    stateDir: dir,
    existingLink: () => Promise.resolve(undefined),
    txChecksumOffload: true,
    nodeBinding: "test-node",
  });
  const backend = options.wrap?.(prepared) ?? prepared;
  const loop = new DataplaneLoop(
    kernel,
    { bridge: "cni0", resyncIntervalMs: RESYNC_MS, watchKernel: true },
    logs.log,
    { round: (report) => rounds.push(report) },
    { clock, host },
  );
  const controller = new AbortController();
  const running = loop.run(controller.signal);
  const peers = new Map((options.peers ?? [peerLease(2), peerLease(3)]).map((l) => [l.key, l]));
  loop.setSelf({ config, subnet: OWN, external: EXTERNAL, backend });
  loop.setPeers(peers);
  await settle();
  const harness: Harness = {
    kernel,
    clock,
    logs,
    rounds,
    loop,
    peers,
    backend,
    put: async (lease) => {
      peers.set(lease.key, lease);
      loop.setPeers(peers, [{ key: lease.key, lease }]);
      await settle();
    },
    remove: async (n) => {
      peers.delete(leaseKey(n));
      loop.setPeers(peers, [{ key: leaseKey(n), lease: undefined }]);
      await settle();
    },
    callsSince: (mark) => kernel.calls.slice(mark),
    stop: async () => {
      controller.abort();
      await running;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  harnesses.push(harness);
  return harness;
}

const tunnelRoute = (n: number): Route =>
  ownedRoute({
    family: 4,
    dst: `10.244.${n}.0/24`,
    gateway: `10.244.${n}.0`,
    dev: "flannel.1",
    onlink: true,
  });

/** "kind action key" per applied op, in order. */
const appliedSince = (h: Harness, mark: number): string[] =>
  h.kernel.applied.slice(mark).map(({ op }) => {
    const o = op.object;
    const what = o.kind === "route" ? o.dst : o.kind === "neigh" ? o.dst : `${o.mac}>${o.dst ?? ""}`;
    return `${o.kind} ${op.action} ${what}`;
  });

describe("data-plane loop: start", () => {
  it("makes the bridge and the VXLAN device, then programs every peer, FDB before neighbours before routes", async () => {
    const h = await start();
    expect(h.loop.programmed).toBe(true);
    const bridge = h.kernel.links.get("cni0");
    expect(bridge).toMatchObject({ kind: "bridge", mtu: 1450, up: true, mac: "0a:58:0a:f4:01:01" });
    const vxlan = h.kernel.links.get("flannel.1");
    expect(vxlan).toMatchObject({ kind: "vxlan", mtu: 1450, up: true });
    expect(vxlan?.vxlan).toMatchObject({
      vni: 1,
      local: "198.18.0.1",
      port: 8472,
      learning: false,
      underlay: "eth0",
    });
    expect(
      h.kernel.addresses
        .filter((a) => a.dev !== "eth0")
        .map((a) => `${a.dev} ${a.address}/${a.prefixLength}`),
    ).toEqual(["cni0 10.244.1.1/24", "flannel.1 10.244.1.0/32"]);
    expect(appliedSince(h, 0)).toEqual([
      `fdb replace ${vtepMac(2)}>198.18.0.2`,
      `fdb replace ${vtepMac(3)}>198.18.0.3`,
      "neigh replace 10.244.2.0",
      "neigh replace 10.244.3.0",
      "route replace 10.244.2.0/24",
      "route replace 10.244.3.0/24",
    ]);
    expect(h.kernel.routes()).toEqual(expect.arrayContaining([tunnelRoute(2), tunnelRoute(3)]));
    expect(h.rounds.map((r) => r.trigger)).toEqual(["self"]);
    expect(h.loop.peerStates.get(leaseKey(2))).toEqual({
      state: "programmed",
      reason: "vxlan via flannel.1 to 198.18.0.2",
    });
  });

  it("on a restart finds everything in place and writes nothing", async () => {
    const first = await start();
    const kernel = first.kernel;
    const mark = kernel.applied.length;
    await first.stop();
    harnesses.splice(harnesses.indexOf(first), 1);
    // A second loop on the same kernel, as after an agent restart.
    const logs = captureLogs();
    const loop = new DataplaneLoop(
      kernel,
      { bridge: "cni0", resyncIntervalMs: RESYNC_MS, watchKernel: true },
      logs.log,
      {},
      {
        clock: new FakeClock(),
        host,
      },
    );
    const controller = new AbortController();
    const running = loop.run(controller.signal);
    loop.setSelf({
      config: parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}').config,
      subnet: OWN,
      external: EXTERNAL,
      backend: first.backend,
    });
    loop.setPeers(new Map([peerLease(2), peerLease(3)].map((l) => [l.key, l])));
    await settle();
    expect(loop.programmed).toBe(true);
    expect(kernel.applied.length).toBe(mark);
    expect(kernel.calls.filter((c) => c.startsWith("createLink") || c.startsWith("addAddress"))).toHaveLength(
      2 + 2,
    );
    controller.abort();
    await running;
  });

  it("removes owned entries of peers that vanished while it was down, and leaves foreign routes alone", async () => {
    const h = await start({ peers: [peerLease(2), peerLease(3)] });
    const foreign: Route = {
      ...tunnelRoute(9),
      protocol: 4,
      dev: "eth0",
      gateway: "198.18.0.9",
      onlink: false,
    };
    h.kernel.foreignAdd(foreign);
    await h.stop();
    harnesses.splice(harnesses.indexOf(h), 1);
    const mark = h.kernel.applied.length;
    const loop = new DataplaneLoop(
      h.kernel,
      { bridge: "cni0", resyncIntervalMs: RESYNC_MS, watchKernel: true },
      captureLogs().log,
      {},
      {
        clock: new FakeClock(),
        host,
      },
    );
    const controller = new AbortController();
    const running = loop.run(controller.signal);
    loop.setSelf({
      config: parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}').config,
      subnet: OWN,
      external: EXTERNAL,
      backend: h.backend,
    });
    loop.setPeers(new Map([peerLease(2)].map((l) => [l.key, l])));
    await settle();
    expect(appliedSince(h, mark)).toEqual([
      "route delete 10.244.3.0/24",
      `fdb delete ${vtepMac(3)}>198.18.0.3`,
      "neigh delete 10.244.3.0",
    ]);
    expect(h.kernel.routes()).toContainEqual(foreign);
    controller.abort();
    await running;
  });
});

describe("data-plane loop: peer events cost their own objects only", () => {
  it("writes a new peer's three objects at once, without reading the kernel", async () => {
    const h = await start();
    const mark = h.kernel.calls.length;
    const applied = h.kernel.applied.length;
    await h.put(peerLease(4));
    expect(h.callsSince(mark)).toEqual(["apply 3"]);
    expect(appliedSince(h, applied)).toEqual([
      `fdb replace ${vtepMac(4)}>198.18.0.4`,
      "neigh replace 10.244.4.0",
      "route replace 10.244.4.0/24",
    ]);
    const last = h.rounds.at(-1);
    expect(last?.trigger).toBe("peers");
    expect(last?.peerLatencyMs).toBeDefined();
  });

  it("removes a peer's objects, route first", async () => {
    const h = await start();
    const applied = h.kernel.applied.length;
    await h.remove(3);
    expect(appliedSince(h, applied)).toEqual([
      "route delete 10.244.3.0/24",
      `fdb delete ${vtepMac(3)}>198.18.0.3`,
      "neigh delete 10.244.3.0",
    ]);
    expect(h.kernel.routes().map((r) => r.dst)).toEqual(["10.244.2.0/24"]);
  });

  it("rewrites only what changed when a peer moves to a new public IP", async () => {
    const h = await start();
    const applied = h.kernel.applied.length;
    await h.put(peerLease(2, { publicIP: "198.18.0.42" }));
    expect(appliedSince(h, applied)).toEqual([`fdb replace ${vtepMac(2)}>198.18.0.42`]);
  });

  it("costs nothing more for the echo of its own FDB writes", async () => {
    const h = await start();
    const rounds = h.rounds.length;
    await h.put(peerLease(4));
    await h.clock.advance(1000);
    expect(h.rounds.length).toBe(rounds + 1);
  });

  it("batches what arrives while a round runs into the next round", async () => {
    const h = await start();
    const rounds = h.rounds.length;
    for (const n of [4, 5, 6]) {
      h.peers.set(leaseKey(n), peerLease(n));
      h.loop.setPeers(h.peers, [{ key: leaseKey(n), lease: peerLease(n) }]);
    }
    await settle();
    expect(h.rounds.length).toBe(rounds + 1);
    expect(h.rounds.at(-1)?.ops).toHaveLength(9);
  });
});

describe("data-plane loop: drift", () => {
  it.each([
    ["route", (h: Harness) => h.kernel.foreignDelete(tunnelRoute(2)), "route replace 10.244.2.0/24"],
    [
      "neighbour",
      (h: Harness) =>
        h.kernel.foreignDelete(
          permanentNeighbour({ family: 4, dev: "flannel.1", dst: "10.244.2.0", lladdr: vtepMac(2) }),
        ),
      "neigh replace 10.244.2.0",
    ],
    [
      "FDB entry",
      (h: Harness) =>
        h.kernel.foreignDelete(permanentFdb({ dev: "flannel.1", mac: vtepMac(2), dst: "198.18.0.2" })),
      `fdb replace ${vtepMac(2)}>198.18.0.2`,
    ],
  ])("repairs a %s deleted by hand from the notification", async (_, change, repair) => {
    const h = await start();
    const applied = h.kernel.applied.length;
    const mark = h.kernel.calls.length;
    change(h);
    await settle();
    expect(appliedSince(h, applied)).toEqual([repair]);
    expect(h.callsSince(mark)).toEqual(["apply 1"]);
    expect(h.rounds.at(-1)?.trigger).toBe("kernel");
    expect(h.logs.withMsg("drift repaired")).toHaveLength(1);
  });

  it("takes a foreign route to a peer's subnet back (a route replaced by hand)", async () => {
    const h = await start();
    const applied = h.kernel.applied.length;
    h.kernel.foreignReplace({
      ...tunnelRoute(2),
      protocol: 4,
      gateway: "198.18.0.99",
      dev: "eth0",
      onlink: false,
    });
    await settle();
    expect(appliedSince(h, applied)).toEqual(["route replace 10.244.2.0/24"]);
    expect(h.kernel.routes().filter((r) => r.dst === "10.244.2.0/24")).toEqual([tunnelRoute(2)]);
  });

  it("re-creates a deleted VXLAN device and replays every peer on it", async () => {
    const h = await start();
    const mark = h.kernel.calls.length;
    h.kernel.foreignDeleteLink("flannel.1");
    await settle();
    expect(h.kernel.links.get("flannel.1")).toMatchObject({ kind: "vxlan", up: true });
    expect(h.kernel.routes().sort((a, b) => (a.dst < b.dst ? -1 : 1))).toEqual([
      tunnelRoute(2),
      tunnelRoute(3),
    ]);
    expect(h.kernel.neighbours()).toHaveLength(2);
    expect(h.kernel.fdb()).toHaveLength(2);
    expect(h.callsSince(mark)).toContain("createLink flannel.1");
    expect(
      h.logs.withMsg("device repaired").some((r) => r.what === "created" && r.trigger === "kernel"),
    ).toBe(true);
  });

  it("logs a device's replay one op at a time only up to a limit, then one summary line", async () => {
    const peers = Array.from({ length: 40 }, (_, i) => peerLease(i + 2));
    const h = await start({ peers });
    h.kernel.foreignDeleteLink("flannel.1");
    await settle();
    expect(h.kernel.routes()).toHaveLength(40);
    expect(h.logs.withMsg("drift repaired")).toHaveLength(20);
    const summary = h.logs.records().filter((r) => String(r.msg).startsWith("drift repaired: 100 more"));
    expect(summary).toHaveLength(1);
    const more = summary[0]?.more as Record<string, number>;
    expect(Object.values(more).reduce((a, b) => a + b, 0)).toBe(100);
    expect(Object.keys(more).every((k) => k.startsWith("replace "))).toBe(true);
  });

  it("puts back the bridge's gateway address", async () => {
    const h = await start();
    h.kernel.foreignDeleteAddress("cni0", "10.244.1.1");
    await settle();
    expect(
      h.kernel.addresses.some((a) => a.dev === "cni0" && a.address === "10.244.1.1" && a.prefixLength === 24),
    ).toBe(true);
  });

  it("reads the kernel again after lost notifications and repairs what changed meanwhile", async () => {
    const h = await start();
    const mark = h.kernel.calls.length;
    h.kernel.loseNotifications(() => h.kernel.foreignDelete(tunnelRoute(3)));
    await settle();
    expect(h.callsSince(mark)).toEqual(expect.arrayContaining(["dump routes", "apply 1"]));
    expect(h.kernel.routes()).toContainEqual(tunnelRoute(3));
    expect(h.rounds.at(-1)).toMatchObject({ trigger: "overflow", reload: "overflow" });
  });

  it("reads the kernel again on the periodic resync, and only then", async () => {
    const h = await start();
    const mark = h.kernel.calls.length;
    // Notifications off for a moment: the change is seen only by the resync.
    h.kernel.loseNotifications(() => undefined);
    await settle();
    const afterOverflow = h.kernel.calls.length;
    const route = tunnelRoute(2);
    const key = route.dst;
    h.kernel.objects.set("route", key, []); // silently, as a flushed device would
    await h.clock.advance(RESYNC_MS - 1);
    expect(h.kernel.calls.length).toBe(afterOverflow);
    await h.clock.advance(1);
    expect(h.callsSince(mark)).toContain("dump routes");
    expect(h.kernel.routes()).toContainEqual(route);
    expect(h.rounds.at(-1)?.trigger).toBe("resync");
  });
});

describe("data-plane loop: failures", () => {
  it("retries a refused write with backoff and reports the latency from the original change", async () => {
    const h = await start();
    h.kernel.failOps((op) => op.object.kind === "route" && op.object.dst === "10.244.4.0/24", "EPERM", 2);
    await h.put(peerLease(4));
    const failed = h.rounds.at(-1);
    expect(failed?.failed.map((f) => f.error)).toEqual(["Operation not permitted (EPERM)"]);
    expect(h.kernel.routes().some((r) => r.dst === "10.244.4.0/24")).toBe(false);
    expect(h.logs.withMsg("kernel operation failed; will retry")).toHaveLength(1);
    await h.clock.advance(400); // first backoff (250 ms ± 20 %): fails again
    expect(h.rounds.at(-1)?.trigger).toBe("retry");
    await h.clock.advance(10_000);
    expect(h.kernel.routes().some((r) => r.dst === "10.244.4.0/24")).toBe(true);
    const ok = h.rounds.at(-1);
    expect(ok).toMatchObject({ trigger: "retry", failed: [] });
    expect(ok?.peerLatencyMs).toBeGreaterThanOrEqual(250);
  });

  it("keeps programming other peers when one write fails", async () => {
    const h = await start();
    h.kernel.failOps((op) => op.object.kind === "neigh" && op.object.dst === "10.244.4.0", "EPERM");
    h.peers.set(leaseKey(4), peerLease(4));
    h.peers.set(leaseKey(5), peerLease(5));
    h.loop.setPeers(h.peers, [
      { key: leaseKey(4), lease: peerLease(4) },
      { key: leaseKey(5), lease: peerLease(5) },
    ]);
    await settle();
    expect(h.kernel.routes().some((r) => r.dst === "10.244.5.0/24")).toBe(true);
  });

  it("is not programmed, and says why, while the device cannot be made; then recovers", async () => {
    const kernel = new FakeKernel();
    const original = kernel.createLink.bind(kernel);
    let refuse = true;
    kernel.createLink = (spec) =>
      refuse && spec.name === "flannel.1"
        ? Promise.reject(new Error("create flannel.1: Operation not permitted (EPERM)"))
        : original(spec);
    const clock = new FakeClock();
    const logs = captureLogs();
    const config = parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}').config;
    const dir = mkdtempSync(join(tmpdir(), "twill-loop-"));
    const backend = await config.backend.prepare({
      stateDir: dir,
      existingLink: () => Promise.resolve(undefined),
      txChecksumOffload: true,
      nodeBinding: "test-node",
    });
    const loop = new DataplaneLoop(
      kernel,
      { bridge: "cni0", resyncIntervalMs: RESYNC_MS, watchKernel: true },
      logs.log,
      {},
      { clock, host },
    );
    const controller = new AbortController();
    const running = loop.run(controller.signal);
    loop.setSelf({ config, subnet: OWN, external: EXTERNAL, backend });
    loop.setPeers(new Map([[leaseKey(2), peerLease(2)]]));
    await settle();
    expect(loop.programmed).toBe(false);
    const failure = logs.withMsg("reconcile round failed; will retry")[0]?.err;
    expect(JSON.stringify(failure)).toContain("Operation not permitted (EPERM)");
    refuse = false;
    await clock.advance(10_000);
    expect(loop.programmed).toBe(true);
    expect(kernel.routes()).toContainEqual(tunnelRoute(2));
    controller.abort();
    await running;
    rmSync(dir, { recursive: true, force: true });
  });
});

describe("data-plane loop: verdicts", () => {
  it("never programs a peer that advertises this node's own public IP", async () => {
    const h = await start({ peers: [peerLease(2, { publicIP: "198.18.0.1" })] });
    expect(h.kernel.routes()).toEqual([]);
    expect(h.loop.peerStates.get(leaseKey(2))?.state).toBe("unreachable");
  });

  it("host-gw: a route per on-link peer; an off-link peer is unreachable and gets nothing", async () => {
    const h = await start({
      backend: "host-gw",
      peers: [peerLease(2, { type: "host-gw" }), peerLease(3, { type: "host-gw", publicIP: "198.19.0.3" })],
    });
    expect(h.kernel.routes()).toEqual([
      ownedRoute({ family: 4, dst: "10.244.2.0/24", gateway: "198.18.0.2", dev: "eth0", onlink: false }),
    ]);
    expect(h.loop.peerStates.get(leaseKey(3))).toMatchObject({ state: "unreachable" });
    expect(h.kernel.links.has("flannel.1")).toBe(false);
  });

  it("gives a contested VTEP MAC to the lowest subnet and says so", async () => {
    const h = await start({ peers: [peerLease(2), peerLease(3, { mac: vtepMac(2) })] });
    expect(h.kernel.fdb().map((f) => f.dst)).toEqual(["198.18.0.2"]);
    expect(
      h.logs.records().some((r) => String(r.msg).startsWith("several peers want the same kernel object")),
    ).toBe(true);
  });

  it("follows the node to a new subnet: bridge and device addresses move, peers stay", async () => {
    const h = await start();
    const config = parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}').config;
    h.loop.setSelf({ config, subnet: parseCidr("10.244.7.0/24"), external: EXTERNAL, backend: h.backend });
    await settle();
    const own = h.kernel.addresses
      .filter((a) => a.dev !== "eth0")
      .map((a) => `${a.dev} ${a.address}/${a.prefixLength}`);
    expect(own.sort()).toEqual(["cni0 10.244.7.1/24", "flannel.1 10.244.7.0/32"]);
    expect(h.kernel.routes()).toEqual(expect.arrayContaining([tunnelRoute(2), tunnelRoute(3)]));
  });
});

/** A userspace data path that records what the loop asks of it. */
class RecordingUserspace implements UserspaceDataPath {
  readonly table = new Map<string, UserspaceRoute>();
  readonly starts: boolean[] = [];
  readonly updates: string[][] = [];
  running = false;
  stopped = 0;
  private listener: ((reason: string) => void) | undefined;

  ensureRunning(_node: NodeFacts, deviceRemade: boolean): Promise<boolean> {
    const starting = !this.running || deviceRemade;
    if (starting) this.starts.push(deviceRemade);
    this.running = true;
    return Promise.resolve(starting);
  }
  update(changes: ReadonlyMap<string, UserspaceRoute | undefined>): void {
    if (changes.size > 0) this.updates.push([...changes.keys()]);
    for (const [key, route] of changes) {
      if (route === undefined) this.table.delete(key);
      else this.table.set(key, route);
    }
  }
  replaceAll(routes: ReadonlyMap<string, UserspaceRoute>): void {
    this.table.clear();
    for (const [key, route] of routes) this.table.set(key, route);
  }
  onStopped(listener: (reason: string) => void): void {
    this.listener = listener;
  }
  /** As if the proxy thread died. */
  fail(reason: string): void {
    this.running = false;
    this.listener?.(reason);
  }
  stop(): Promise<void> {
    this.stopped++;
    this.running = false;
    return Promise.resolve();
  }
  status(): UserspaceStatus {
    return {
      kind: "udp" as const,
      what: "recording",
      device: "flannel0",
      running: this.running,
      lastFailure: undefined,
      peers: this.table.size,
      txPackets: 0,
      txBytes: 0,
      rxPackets: 0,
      rxBytes: 0,
      drops: {
        no_route: 0,
        ttl_expired: 0,
        unknown_sender: 0,
        malformed: 0,
        not_ipv4: 0,
        send_error: 0,
        tun_write_error: 0,
      },
      icmpUnreachableSent: 0,
      restarts: 0,
    };
  }
}

describe("data-plane loop: a backend with a userspace data path (udp)", () => {
  const udpPeer = (n: number): Lease => peerLease(n, { type: undefined });
  async function startUdp(peers: readonly Lease[] = [udpPeer(2), udpPeer(3)]) {
    const userspace = new RecordingUserspace();
    const h = await start({
      backend: "udp",
      peers,
      wrap: (backend) =>
        Object.assign(Object.create(Object.getPrototypeOf(backend) as object) as NodeBackend, backend, {
          userspace,
        }),
    });
    return { h, userspace };
  }
  const endpointOf = (userspace: RecordingUserspace, n: number) => {
    const route = userspace.table.get(leaseKey(n));
    return route === undefined
      ? undefined
      : `${formatCidr(route.subnet)} ${formatIPv4(route.endpoint.address)}:${route.endpoint.port}`;
  };

  it("makes the TUN device and the network's route into it, then starts the data path with every peer", async () => {
    const { h, userspace } = await startUdp();
    expect(h.kernel.links.get("flannel0")).toMatchObject({ kind: "tun", mtu: 1472, up: true });
    expect(
      h.kernel.addresses.filter((a) => a.dev === "flannel0").map((a) => `${a.address}/${a.prefixLength}`),
    ).toEqual(["10.244.1.0/32"]);
    expect(h.kernel.routes()).toEqual([
      ownedRoute({ family: 4, dst: "10.244.0.0/16", gateway: undefined, dev: "flannel0", onlink: false }),
    ]);
    expect(userspace.starts).toEqual([true]);
    expect(endpointOf(userspace, 2)).toBe("10.244.2.0/24 198.18.0.2:8285");
    expect(endpointOf(userspace, 3)).toBe("10.244.3.0/24 198.18.0.3:8285");
    expect(h.loop.peerStates.get(leaseKey(2))).toEqual({
      state: "programmed",
      reason: "udp via flannel0 to 198.18.0.2:8285",
    });
  });

  it("hands it each peer change alone, and writes nothing to the kernel for it", async () => {
    const { h, userspace } = await startUdp();
    const applied = h.kernel.applied.length;
    await h.put(udpPeer(4));
    await h.remove(2);
    expect(userspace.updates.slice(-2)).toEqual([[leaseKey(4)], [leaseKey(2)]]);
    expect(endpointOf(userspace, 4)).toBe("10.244.4.0/24 198.18.0.4:8285");
    expect(endpointOf(userspace, 2)).toBeUndefined();
    expect(h.kernel.applied.length).toBe(applied);
  });

  it("gives a peer of another backend no row, and says why", async () => {
    const { h, userspace } = await startUdp([udpPeer(2), peerLease(3)]);
    expect(endpointOf(userspace, 3)).toBeUndefined();
    expect(h.loop.peerStates.get(leaseKey(3))).toMatchObject({
      state: "backend-mismatch",
      reason: 'peer 10.244.3.0/24 uses backend "vxlan", this node uses "udp"; not programmed',
    });
  });

  it("restores the network route and a deleted TUN device, and restarts the data path on the new device", async () => {
    const { h, userspace } = await startUdp();
    await h.kernel.deleteLink("flannel0");
    await settle();
    expect(h.kernel.links.get("flannel0")).toMatchObject({ kind: "tun", up: true });
    expect(h.kernel.routes().map((r) => `${r.dst} ${r.dev ?? ""}`)).toEqual(["10.244.0.0/16 flannel0"]);
    expect(userspace.starts).toEqual([true, true]);
    expect(userspace.table.size).toBe(2);
  });

  it("starts the data path again after it stopped on its own", async () => {
    const { h, userspace } = await startUdp();
    userspace.fail("the proxy thread failed: boom");
    await h.clock.advance(10_000);
    await settle();
    expect(userspace.running).toBe(true);
    expect(userspace.starts).toEqual([true, false]);
    expect(h.logs.records().some((r) => String(r.msg).includes("the userspace data path stopped"))).toBe(
      true,
    );
  });

  it("on a new backend (a Port change), stops the old data path before the new one starts", async () => {
    const { h, userspace } = await startUdp();
    const order: string[] = [];
    const stop = userspace.stop.bind(userspace);
    userspace.stop = async () => {
      await new Promise((resolve) => setImmediate(resolve));
      order.push("old stopped");
      return stop();
    };
    const next = new RecordingUserspace();
    const ensure = next.ensureRunning.bind(next);
    next.ensureRunning = (node, remade) => {
      order.push("new started");
      return ensure(node, remade);
    };
    const config = parseNetworkConfig(
      '{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000}}',
    ).config;
    const prepared = await config.backend.prepare({
      stateDir: "/nonexistent",
      existingLink: () => Promise.resolve(undefined),
      txChecksumOffload: true,
      nodeBinding: "test-node",
    });
    const backend = Object.assign(
      Object.create(Object.getPrototypeOf(prepared) as object) as NodeBackend,
      prepared,
      { userspace: next },
    );
    h.loop.setSelf({ config, subnet: OWN, external: EXTERNAL, backend });
    await settle();
    expect(order).toEqual(["old stopped", "new started"]);
    expect(next.table.size).toBe(2);
    expect(userspace.stopped).toBe(1);
  });

  it("keeps the data path running after the loop ends until told, and leaves the device and route", async () => {
    const { h, userspace } = await startUdp();
    await h.stop();
    harnesses.splice(harnesses.indexOf(h), 1);
    expect(userspace.stopped).toBe(0);
    await h.loop.stopUserspace();
    expect(userspace.stopped).toBe(1);
    expect(h.kernel.links.has("flannel0")).toBe(true);
    expect(h.kernel.routes()).toHaveLength(1);
  });
});

// ---- IPv6: dual-stack and IPv6-only nodes -----------------------------------------------------------

const EXTERNAL_DUAL: ExternalInterface = {
  ...EXTERNAL,
  ifaceIpv6: "2001:db8:18::1",
  publicIpv6: "2001:db8:18::1",
};
const EXTERNAL_V6: ExternalInterface = { ...EXTERNAL_DUAL, ifaceIp: 0, publicIp: 0 };
const OWN6 = parseCidr6("fd00:10:244:1::/64");
const NO_IPV4 = parseCidr("0.0.0.0/0");

/** Peer n of any family mix (`v4`/`v6` false to leave one out), vxlan with both VTEPs unless host-gw. */
const peer46 = (n: number, options: FamilySpec = {}): Lease => familyLease(n, options);

interface DualHarness extends Harness {
  readonly forwarding: Family[];
  readonly config: NetworkConfig;
}

async function startDual(
  options: {
    families?: { ipv4: boolean; ipv6: boolean };
    backend?: "vxlan" | "host-gw";
    peers?: readonly Lease[];
    forwardingFails?: Family;
    blackholeMetric?: number;
  } = {},
): Promise<DualHarness> {
  const families = options.families ?? { ipv4: true, ipv6: true };
  const kernel = new FakeKernel();
  // The interface's global IPv6 network, and a link-local one that says nothing about peers.
  kernel.addresses.push(
    { family: 6, dev: "eth0", address: "2001:db8:18::1", prefixLength: 64, scope: 0 },
    { family: 6, dev: "eth0", address: "fe80::1", prefixLength: 64, scope: 253 },
  );
  if (!families.ipv4) kernel.addresses.splice(0, 1);
  const clock = new FakeClock();
  const logs = captureLogs();
  const rounds: RoundReport[] = [];
  const forwarding: Family[] = [];
  const type = options.backend ?? "vxlan";
  const v4 = families.ipv4 ? '"Network":"10.244.0.0/16",' : '"EnableIPv4":false,';
  const v6 = families.ipv6 ? '"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",' : "";
  const config = parseNetworkConfig(`{${v4}${v6}"Backend":{"Type":"${type}"}}`).config;
  const dir = mkdtempSync(join(tmpdir(), "twill-loop6-"));
  const backend = await config.backend.prepare({
    families,
    stateDir: dir,
    existingLink: () => Promise.resolve(undefined),
    txChecksumOffload: true,
    nodeBinding: "test-node",
  });
  const dualHost: DataplaneHost = {
    ...host,
    ensureForwarding: (family) => {
      forwarding.push(family);
      return family === options.forwardingFails
        ? Promise.reject(new Error("EROFS: read-only file system"))
        : Promise.resolve(true);
    },
  };
  const loop = new DataplaneLoop(
    kernel,
    {
      bridge: "cni0",
      resyncIntervalMs: RESYNC_MS,
      watchKernel: true,
      blackholeMetric: options.blackholeMetric,
    },
    logs.log,
    { round: (report) => rounds.push(report) },
    { clock, host: dualHost },
  );
  const controller = new AbortController();
  const running = loop.run(controller.signal);
  const peers = new Map((options.peers ?? [peer46(2), peer46(3)]).map((l) => [l.key, l]));
  loop.setSelf({
    config,
    subnet: families.ipv4 ? OWN : NO_IPV4,
    ipv6Subnet: families.ipv6 ? OWN6 : undefined,
    external: families.ipv4 ? EXTERNAL_DUAL : EXTERNAL_V6,
    backend,
  });
  loop.setPeers(peers);
  await settle();
  const harness: DualHarness = {
    kernel,
    clock,
    logs,
    rounds,
    loop,
    peers,
    backend,
    forwarding,
    config,
    put: async (lease) => {
      peers.set(lease.key, lease);
      loop.setPeers(peers, [{ key: lease.key, lease }]);
      await settle();
    },
    remove: () => Promise.reject(new Error("use peers by key")),
    callsSince: (mark) => kernel.calls.slice(mark),
    stop: async () => {
      controller.abort();
      await running;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  harnesses.push(harness);
  return harness;
}

const ownAddresses = (h: Harness): string[] =>
  h.kernel.addresses
    .filter((a) => a.dev !== "eth0")
    .map((a) => `${a.dev} ${a.address}/${a.prefixLength}`)
    .sort();

const tunnel6Route = (n: number): Route =>
  ownedRoute({
    family: 6,
    dst: `fd00:10:244:${n.toString(16)}::/64`,
    gateway: `fd00:10:244:${n.toString(16)}::`,
    dev: "flannel-v6.1",
    onlink: true,
  });

describe("data-plane loop: dual-stack and IPv6-only", () => {
  it("dual-stack vxlan: the bridge with both gateways, flannel.1 and flannel-v6.1, every peer in both families", async () => {
    const h = await startDual();
    expect(h.loop.programmed).toBe(true);
    // Pods' MTU is small enough for the IPv6 underlay.
    expect(h.kernel.links.get("cni0")).toMatchObject({ kind: "bridge", mtu: 1430, mac: "0a:58:0a:f4:01:01" });
    expect(h.kernel.links.get("flannel.1")).toMatchObject({ kind: "vxlan", mtu: 1450, up: true });
    expect(h.kernel.links.get("flannel-v6.1")).toMatchObject({ kind: "vxlan", mtu: 1430, up: true });
    expect(h.kernel.links.get("flannel-v6.1")?.vxlan).toMatchObject({ vni: 1, local: "2001:db8:18::1" });
    expect(ownAddresses(h)).toEqual([
      "cni0 10.244.1.1/24",
      "cni0 fd00:10:244:1::1/64",
      "flannel-v6.1 fd00:10:244:1::/128",
      "flannel.1 10.244.1.0/32",
    ]);
    expect(h.kernel.routes()).toEqual(
      expect.arrayContaining([tunnelRoute(2), tunnelRoute(3), tunnel6Route(2), tunnel6Route(3)]),
    );
    expect(h.kernel.routes()).toHaveLength(4);
    expect(
      h.kernel
        .fdb()
        .map((f) => `${f.dev} ${f.mac} ${f.dst ?? ""}`)
        .sort(),
    ).toEqual([
      `flannel-v6.1 ${vtepMac(0x82)} 2001:db8:18::2`,
      `flannel-v6.1 ${vtepMac(0x83)} 2001:db8:18::3`,
      `flannel.1 ${vtepMac(2)} 198.18.0.2`,
      `flannel.1 ${vtepMac(3)} 198.18.0.3`,
    ]);
    expect(h.kernel.neighbours().filter((n) => n.family === 6)).toEqual([
      permanentNeighbour({ family: 6, dev: "flannel-v6.1", dst: "fd00:10:244:2::", lladdr: vtepMac(0x82) }),
      permanentNeighbour({ family: 6, dev: "flannel-v6.1", dst: "fd00:10:244:3::", lladdr: vtepMac(0x83) }),
    ]);
    expect(h.loop.peerStates.get(peer46(2).key)).toEqual({
      state: "programmed",
      reason: "IPv4: vxlan via flannel.1 to 198.18.0.2; IPv6: vxlan via flannel-v6.1 to 2001:db8:18::2",
    });
    // Forwarding is turned on for each family, and a change is a repair.
    expect(h.forwarding.slice(0, 2)).toEqual([4, 6]);
    expect(h.rounds[0]?.repairs).toEqual(
      expect.arrayContaining([
        { device: "-", what: "forwarding", detail: "net.ipv4.ip_forward=1" },
        { device: "-", what: "forwarding", detail: "net.ipv6.conf.all.forwarding=1" },
      ]),
    );
  });

  it("IPv6-only vxlan: flannel-v6.1 alone, the bridge's IPv6 gateway, IPv6 forwarding only", async () => {
    const h = await startDual({
      families: { ipv4: false, ipv6: true },
      peers: [peer46(2, { v4: false }), peer46(3, { v4: false })],
    });
    expect(h.loop.programmed).toBe(true);
    expect(h.kernel.links.has("flannel.1")).toBe(false);
    expect(h.kernel.links.get("cni0")).toMatchObject({ mac: "0a:58:02:44:00:01", mtu: 1430 });
    expect(ownAddresses(h)).toEqual(["cni0 fd00:10:244:1::1/64", "flannel-v6.1 fd00:10:244:1::/128"]);
    expect(h.kernel.routes()).toEqual([tunnel6Route(2), tunnel6Route(3)]);
    // PublicIP 0.0.0.0 on every IPv6-only lease is not "this node's own public IP".
    expect(h.loop.peerStates.get(peer46(2, { v4: false }).key)).toEqual({
      state: "programmed",
      reason: "vxlan via flannel-v6.1 to 2001:db8:18::2",
    });
    expect([...new Set(h.forwarding)]).toEqual([6]);
  });

  it("host-gw: the IPv6 route via PublicIPv6 on-link; link-local networks are not on-link networks", async () => {
    const h = await startDual({
      backend: "host-gw",
      peers: [
        peer46(2, { type: "host-gw" }),
        peer46(3, { type: "host-gw", v4: false, publicIPv6: "fe80::3" }),
        peer46(4, { type: "host-gw", v4: false, publicIPv6: "2001:db8:19::4" }),
      ],
    });
    expect(h.kernel.routes()).toEqual([
      ownedRoute({ family: 4, dst: "10.244.2.0/24", gateway: "198.18.0.2", dev: "eth0", onlink: false }),
      ownedRoute({
        family: 6,
        dst: "fd00:10:244:2::/64",
        gateway: "2001:db8:18::2",
        dev: "eth0",
        onlink: false,
      }),
    ]);
    expect(h.loop.peerStates.get(peer46(3, { v4: false }).key)).toMatchObject({
      state: "unreachable",
      reason: expect.stringContaining("peer fe80::3 is not on-link on eth0 (2001:db8:18::/64)") as unknown,
    });
    expect(h.loop.peerStates.get(peer46(4, { v4: false }).key)).toMatchObject({ state: "unreachable" });
    expect(h.kernel.links.has("flannel-v6.1")).toBe(false);
  });

  it.each<[string, { publicIP?: string; publicIPv6?: string }]>([
    ["its PublicIP", { publicIP: "198.18.0.1" }],
    ["its PublicIPv6", { publicIPv6: "2001:db8:18::1" }],
  ])("never programs a peer advertising this node's own public address: %s", async (_name, spec) => {
    const stale = peer46(2, spec);
    const h = await startDual({ peers: [stale, peer46(3)] });
    expect(h.kernel.routes()).toEqual(expect.arrayContaining([tunnelRoute(3), tunnel6Route(3)]));
    expect(h.kernel.routes()).toHaveLength(2);
    const status = h.loop.peerStates.get(stale.key);
    expect(status?.state).toBe("unreachable");
    const address = spec.publicIP ?? spec.publicIPv6 ?? "";
    expect(status?.reason).toBe(
      `peer 10.244.2.0/24+fd00:10:244:2::/64 advertises this node's own public IP ${address} ` +
        "(a stale lease of this node?); not programmed",
    );
  });

  it("a peer with this node's PublicIPv6 on an IPv4-only node is an ordinary IPv4 peer", async () => {
    const h = await startDual({
      families: { ipv4: true, ipv6: false },
      peers: [peer46(2, { publicIPv6: "2001:db8:18::1" })],
    });
    expect(h.kernel.routes()).toEqual([tunnelRoute(2)]);
    expect(h.loop.peerStates.get(peer46(2).key)).toEqual({
      state: "programmed",
      reason: "vxlan via flannel.1 to 198.18.0.2",
    });
    expect(h.kernel.links.has("flannel-v6.1")).toBe(false);
  });

  it("says once per family when forwarding cannot be turned on, and programs the rest", async () => {
    const h = await startDual({ forwardingFails: 6 });
    expect(h.loop.programmed).toBe(true);
    await h.clock.advance(RESYNC_MS);
    await settle();
    const errors = h.logs.records().filter((r) => String(r.msg).startsWith("cannot enable IPv"));
    expect(errors.map((r) => r.msg)).toEqual([
      "cannot enable IPv6 forwarding: pods cannot reach other nodes until net.ipv6.conf.all.forwarding=1 on this host",
    ]);
    expect(h.forwarding.filter((f) => f === 6).length).toBeGreaterThanOrEqual(1);
  });

  it("--ip-blackhole-route: a blackhole route for the own subnet of each family", async () => {
    const h = await startDual({ blackholeMetric: 4242, peers: [] });
    const blackholes = h.kernel.routes().filter((r) => r.type === "blackhole");
    expect(blackholes.map((r) => `${r.family} ${r.dst} ${r.metric}`).sort()).toEqual([
      "4 10.244.1.0/24 4242",
      "6 fd00:10:244:1::/64 4242",
    ]);
  });

  it("follows the node to a new IPv6 subnet with the same IPv4 one: bridge and device addresses move", async () => {
    const h = await startDual();
    h.loop.setSelf({
      config: h.config,
      subnet: OWN,
      ipv6Subnet: parseCidr6("fd00:10:244:7::/64"),
      external: EXTERNAL_DUAL,
      backend: h.backend,
    });
    await settle();
    expect(ownAddresses(h)).toEqual([
      "cni0 10.244.1.1/24",
      "cni0 fd00:10:244:7::1/64",
      "flannel-v6.1 fd00:10:244:7::/128",
      "flannel.1 10.244.1.0/32",
    ]);
  });
});
