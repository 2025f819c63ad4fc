// The WireGuard data path's loops with fakes: an in-memory device behind the WireGuardControl seam and,
// for userspace, a wireguard-go whose process is a flag. Polls are driven with fake timers, so every
// step is deterministic.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { NodeFacts, UserspaceRoute } from "../../src/backends/backend.js";
import type { WireGuardControl } from "../../src/backends/wireguard/control.js";
import {
  deviceRowOf,
  wantedPeers,
  WireGuardDataPath,
  type DevicePeerRow,
  type WireGuardRoute,
  type WireGuardSettings,
} from "../../src/backends/wireguard/datapath.js";
import type {
  DeviceChange,
  DevicePeer,
  DeviceState,
  WantedPeer,
} from "../../src/backends/wireguard/device-state.js";
import { WireGuardGo } from "../../src/backends/wireguard/wireguard-go.js";
import { WireGuardTunnels, type WireGuardTunnelsStatus } from "../../src/backends/wireguard/tunnels.js";
import { encodeKey, generatePrivateKey, publicKeyOf } from "../../src/backends/wireguard/keys.js";
import { parsePrefix } from "../../src/ip/address.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";

const POLL_MS = 10;
const key = (n: number): string => Buffer.alloc(32, n).toString("base64");
const leaseKey = (n: number): string => `/coreos.com/network/subnets/10.244.${n}.0-24`;
const OWN_PRIVATE = key(100);
const OWN_PUBLIC = key(101);

const NODE: NodeFacts = {
  subnet: parseCidr("10.244.1.0/24"),
  network: parseCidr("10.244.0.0/16"),
  external: {
    name: "eth0",
    index: 2,
    mtu: 1500,
    ifaceIp: parseIPv4("198.18.0.1"),
    publicIp: parseIPv4("198.18.0.1"),
  },
  connected: [parsePrefix("198.18.0.0/24")],
};

/** Peer n's row: 10.244.n.0/24 at 198.18.0.n:51820 with key(n). */
const route = (n: number, over: { ip?: string; port?: number; publicKey?: string } = {}): UserspaceRoute => ({
  subnet: parseCidr(`10.244.${n}.0/24`),
  endpoint: { address: parseIPv4(over.ip ?? `198.18.0.${n}`), port: over.port ?? 51820 },
  publicKey: over.publicKey ?? key(n),
});

const rows = (...ns: number[]): Map<string, UserspaceRoute> =>
  new Map(ns.map((n) => [leaseKey(n), route(n)]));

/** The rows as flannel-wg's: what wantedPeers is given. */
const deviceRows = (table: ReadonlyMap<string, UserspaceRoute>): Map<string, DevicePeerRow> =>
  new Map(
    [...table].flatMap(([k, r]) => {
      const row = deviceRowOf("flannel-wg", r);
      return row === undefined ? [] : [[k, row] as const];
    }),
  );

/** Peer n as twill wants it (no PSK, no keepalive). */
function wantedOf(n: number): WantedPeer {
  return {
    publicKey: key(n),
    endpoint: `198.18.0.${n}:51820`,
    allowedIps: [`10.244.${n}.0/24`],
    presharedKey: undefined,
    keepalive: 0,
  };
}

function settings(over: Partial<WireGuardSettings> = {}): WireGuardSettings {
  return {
    device: "flannel-wg",
    implementation: "userspace",
    listenPort: 51820,
    psk: undefined,
    keepalive: 0,
    privateKey: OWN_PRIVATE,
    publicKey: OWN_PUBLIC,
    ...over,
  };
}

/** A WireGuard device in memory: get() reads it, set() applies a change as wireguard-go would. */
class FakeDevice implements WireGuardControl {
  readonly where = "a fake device";
  privateKey: string | undefined = undefined;
  listenPort = 0;
  readonly peers = new Map<string, DevicePeer>();
  readonly changes: DeviceChange[] = [];
  gets = 0;
  failGet: Error | undefined;
  failSet: Error | undefined;

  get(): Promise<DeviceState> {
    this.gets++;
    if (this.failGet !== undefined) return Promise.reject(this.failGet);
    return Promise.resolve({
      privateKey: this.privateKey,
      listenPort: this.listenPort,
      peers: new Map([...this.peers].map(([k, p]) => [k, { ...p, allowedIps: [...p.allowedIps] }])),
    });
  }

  set(change: DeviceChange): Promise<void> {
    if (this.failSet !== undefined) return Promise.reject(this.failSet);
    this.changes.push(change);
    if (change.privateKey !== undefined) this.privateKey = change.privateKey;
    if (change.listenPort !== undefined) this.listenPort = change.listenPort;
    for (const peer of change.peers) {
      if (peer.remove === true) {
        this.peers.delete(peer.publicKey);
        continue;
      }
      const before = this.peers.get(peer.publicKey);
      this.peers.set(peer.publicKey, {
        publicKey: peer.publicKey,
        endpoint: peer.endpoint,
        allowedIps: [...peer.allowedIps],
        presharedKey: peer.presharedKey,
        keepalive: peer.keepalive,
        lastHandshakeMs: before?.lastHandshakeMs ?? 0,
        rxBytes: before?.rxBytes ?? 0,
        txBytes: before?.txBytes ?? 0,
      });
    }
    return Promise.resolve();
  }

  /** Someone else's hand on the device (wg set, or a wireguard-go started anew). */
  edit(publicKey: string, change: Partial<DevicePeer>): void {
    const peer = this.peers.get(publicKey);
    if (peer === undefined) throw new Error(`no peer ${publicKey} on the fake device`);
    this.peers.set(publicKey, { ...peer, ...change });
  }

  /** What a new wireguard-go has: nothing. */
  wipe(): void {
    this.privateKey = undefined;
    this.listenPort = 0;
    this.peers.clear();
  }

  /** The device's peers as "key endpoint allowed-ips" lines, for comparing whole configurations. */
  summary(): string[] {
    return [...this.peers.values()]
      .map((p) => `${p.publicKey} ${p.endpoint ?? "(none)"} ${p.allowedIps.join(",")}`)
      .sort();
  }
}

/** wireguard-go as a flag: no process, no socket. Its constructor only works out paths. */
class FakeWireGuardGo extends WireGuardGo {
  running = false;
  ensures = 0;
  terminations = 0;
  failStart: Error | undefined;
  private started: number | undefined;

  constructor(
    private readonly fake: FakeDevice,
    device = "flannel-wg",
  ) {
    super(device, "wireguard-go", "/nonexistent/state");
  }

  override get pid(): number | undefined {
    return this.started;
  }

  override alive(): boolean {
    return this.running;
  }

  override ensure(): Promise<"running" | "adopted" | "started"> {
    this.ensures++;
    if (this.running) return Promise.resolve("running");
    if (this.failStart !== undefined) return Promise.reject(this.failStart);
    this.running = true;
    this.started = 4242 + this.ensures;
    this.fake.wipe();
    return Promise.resolve("started");
  }

  override terminate(): Promise<void> {
    this.terminations++;
    this.running = false;
    return Promise.resolve();
  }

  /** The process exits on its own. */
  die(): void {
    this.running = false;
  }
}

const line = (n: number, endpoint = `198.18.0.${n}:51820`): string =>
  `${key(n)} ${endpoint} 10.244.${n}.0/24`;

interface Harness {
  readonly device: FakeDevice;
  readonly process: FakeWireGuardGo | undefined;
  readonly dataPath: WireGuardDataPath;
}

const paths: WireGuardDataPath[] = [];
const tunnelSets: WireGuardTunnels[] = [];

function harness(
  options: { kernel?: boolean; settings?: Partial<WireGuardSettings>; device?: FakeDevice } = {},
): Harness {
  const device = options.device ?? new FakeDevice();
  const process = options.kernel === true ? undefined : new FakeWireGuardGo(device);
  const dataPath = new WireGuardDataPath(
    settings({ implementation: options.kernel === true ? "kernel" : "userspace", ...options.settings }),
    {
      control: device,
      ...(process === undefined ? {} : { process }),
      pollMs: POLL_MS,
    },
  );
  paths.push(dataPath);
  return { device, process, dataPath };
}

/** One poll interval passes; the poll's promises all settle (the fake device answers at once). */
async function poll(times = 1): Promise<void> {
  for (let i = 0; i < times; i++) await vi.advanceTimersByTimeAsync(POLL_MS);
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(async () => {
  await Promise.all(tunnelSets.splice(0).map((t) => t.stop()));
  await Promise.all(paths.splice(0).map((p) => p.stop()));
  vi.useRealTimers();
});

describe("wantedPeers", () => {
  const s = { publicKey: OWN_PUBLIC, psk: undefined, keepalive: 0 };

  it("makes one peer per row: its key, PublicIP:Port, its subnet; with the PSK and keepalive", () => {
    const peers = wantedPeers(deviceRows(rows(2, 3)), { publicKey: OWN_PUBLIC, psk: key(50), keepalive: 25 });
    expect([...peers.values()]).toEqual([
      {
        publicKey: key(2),
        endpoint: "198.18.0.2:51820",
        allowedIps: ["10.244.2.0/24"],
        presharedKey: key(50),
        keepalive: 25,
      },
      {
        publicKey: key(3),
        endpoint: "198.18.0.3:51820",
        allowedIps: ["10.244.3.0/24"],
        presharedKey: key(50),
        keepalive: 25,
      },
    ]);
  });

  it("skips a row with this node's own public key (a copied identity)", () => {
    const table = rows(2);
    table.set(leaseKey(3), route(3, { publicKey: OWN_PUBLIC }));
    expect([...wantedPeers(deviceRows(table), s).keys()]).toEqual([key(2)]);
  });

  it("takes no row from a route without a public key", () => {
    const table = rows(2);
    table.set(leaseKey(3), { subnet: parseCidr("10.244.3.0/24"), endpoint: { address: 1, port: 1 } });
    expect([...wantedPeers(deviceRows(table), s).keys()]).toEqual([key(2)]);
  });

  it("keeps the first lease by key order when two share a public key, whatever order they came in", () => {
    // Lease keys sort as text: .../10.244.12.0-24 comes before .../10.244.3.0-24.
    const shared = key(7);
    const table = new Map([
      [leaseKey(3), route(3, { publicKey: shared })],
      [leaseKey(12), route(12, { publicKey: shared })],
    ]);
    const peers = wantedPeers(deviceRows(table), s);
    expect(peers.size).toBe(1);
    expect(peers.get(shared)).toMatchObject({
      endpoint: "198.18.0.12:51820",
      allowedIps: ["10.244.12.0/24"],
    });
    const reversed = new Map([...table].reverse());
    expect(wantedPeers(deviceRows(reversed), s)).toEqual(peers);
  });
});

describe("WireGuardDataPath", () => {
  it("starts wireguard-go, sets the key and port, and programs the peers it is given", async () => {
    const h = harness();
    h.dataPath.update(rows(2, 3));
    expect(await h.dataPath.ensureRunning(NODE, false)).toBe(true);
    expect(h.process?.ensures).toBe(1);
    expect(h.device.privateKey).toBe(OWN_PRIVATE);
    expect(h.device.listenPort).toBe(51820);
    expect(h.device.summary()).toEqual([line(2), line(3)]);

    // A round's changes: peer 3 gone, peer 4 new, peer 2 moved to another address.
    h.dataPath.update(
      new Map<string, UserspaceRoute | undefined>([
        [leaseKey(3), undefined],
        [leaseKey(4), route(4)],
        [leaseKey(2), route(2, { ip: "198.18.0.22", port: 51999 })],
      ]),
    );
    expect(await h.dataPath.ensureRunning(NODE, false)).toBe(false);
    expect(h.device.summary()).toEqual([line(2, "198.18.0.22:51999"), line(4)]);

    // A full recompute: only the rows given stay.
    h.dataPath.replaceAll(rows(5));
    await h.dataPath.ensureRunning(NODE, false);
    expect(h.device.summary()).toEqual([line(5)]);
    expect(h.dataPath.status()).toMatchObject({ running: true, peers: 1, repairs: 0, restarts: 0 });
  });

  it("programs a round's peer change without reading the whole device again", async () => {
    const h = harness({ kernel: true });
    h.dataPath.update(rows(2));
    await h.dataPath.ensureRunning(NODE, false);
    const gets = h.device.gets;
    h.dataPath.update(new Map<string, UserspaceRoute | undefined>([[leaseKey(3), route(3)]]));
    await h.dataPath.ensureRunning(NODE, false);
    expect(h.device.summary()).toEqual([line(2), line(3)]);
    expect(h.device.gets).toBe(gets);
    expect(h.dataPath.status().peers).toBe(2);
  });

  it("makes no change when the device already is as wanted", async () => {
    const h = harness({ kernel: true });
    h.dataPath.update(rows(2));
    await h.dataPath.ensureRunning(NODE, false);
    const changes = h.device.changes.length;
    await h.dataPath.ensureRunning(NODE, false);
    await poll(3);
    expect(h.device.changes.length).toBe(changes);
    expect(h.dataPath.status().repairs).toBe(0);
  });

  it("restores what someone else changed on the device at the next poll, and counts it", async () => {
    const h = harness();
    h.dataPath.update(rows(2, 3));
    await h.dataPath.ensureRunning(NODE, false);
    expect(h.dataPath.status().repairs).toBe(0);

    h.device.peers.delete(key(2)); // wg set flannel-wg peer … remove
    await poll();
    expect(h.device.summary()).toEqual([line(2), line(3)]);
    expect(h.dataPath.status().repairs).toBe(1);

    h.device.edit(key(3), { allowedIps: ["10.244.99.0/24"] });
    await poll();
    expect(h.device.summary()).toEqual([line(2), line(3)]);
    expect(h.dataPath.status().repairs).toBe(2);

    // A peer nobody asked for is removed; a changed port is put back.
    await h.device.set({ listenPort: 1234, peers: [{ ...wantedOf(9), why: "by hand" }] });
    await poll();
    expect(h.device.summary()).toEqual([line(2), line(3)]);
    expect(h.device.listenPort).toBe(51820);
    expect(h.dataPath.status().repairs).toBe(3);

    // Nothing changed: nothing counted.
    await poll(3);
    expect(h.dataPath.status().repairs).toBe(3);
  });

  it("keeps an endpoint WireGuard learned (a roaming peer) unless the lease's endpoint changed", async () => {
    const h = harness({ kernel: true });
    h.dataPath.update(rows(2));
    await h.dataPath.ensureRunning(NODE, false);
    h.device.edit(key(2), { endpoint: "203.0.113.9:40000" });
    await poll(2);
    expect(h.device.peers.get(key(2))?.endpoint).toBe("203.0.113.9:40000");
    expect(h.dataPath.status().repairs).toBe(0);

    // The lease moved: its endpoint is set.
    h.dataPath.update(new Map([[leaseKey(2), route(2, { port: 51830 })]]));
    await h.dataPath.ensureRunning(NODE, false);
    expect(h.device.peers.get(key(2))?.endpoint).toBe("198.18.0.2:51830");
  });

  it("keeps a roaming endpoint on a device that already had every peer (an agent restart)", async () => {
    // The kernel's device outlives the agent: the new agent finds it as wanted and changes nothing.
    const device = new FakeDevice();
    device.privateKey = OWN_PRIVATE;
    device.listenPort = 51820;
    await device.set({ peers: [{ ...wantedOf(2), why: "left by the previous agent" }] });
    const h = harness({ kernel: true, device });
    h.dataPath.replaceAll(rows(2));
    await h.dataPath.ensureRunning(NODE, false);
    expect(device.changes.length).toBe(1);

    device.edit(key(2), { endpoint: "203.0.113.9:40000" });
    await poll(2);
    expect(device.peers.get(key(2))?.endpoint).toBe("203.0.113.9:40000");
    expect(h.dataPath.status().repairs).toBe(0);
  });

  it("tells its listeners when wireguard-go exits, and starts it again at the next ensureRunning", async () => {
    const h = harness();
    const reasons: string[] = [];
    h.dataPath.onStopped((reason) => reasons.push(reason));
    h.dataPath.update(rows(2));
    await h.dataPath.ensureRunning(NODE, false);
    const pid = h.process?.pid;
    expect(h.dataPath.status()).toMatchObject({ running: true, pid, restarts: 0, lastFailure: undefined });

    h.process?.die();
    await poll();
    expect(reasons).toEqual([`wireguard-go (pid ${pid ?? "?"}) on flannel-wg exited`]);
    expect(h.dataPath.status()).toMatchObject({
      running: false,
      restarts: 1,
      lastFailure: `wireguard-go (pid ${pid ?? "?"}) on flannel-wg exited`,
    });
    // Told once, not at every poll while it is down.
    await poll(3);
    expect(reasons).toHaveLength(1);

    // The data-plane loop's next round: a new wireguard-go, which knows nothing, gets everything.
    expect(await h.dataPath.ensureRunning(NODE, false)).toBe(true);
    expect(h.process?.ensures).toBe(2);
    expect(h.device.summary()).toEqual([line(2)]);
    expect(h.device.privateKey).toBe(OWN_PRIVATE);
    expect(h.dataPath.status()).toMatchObject({ running: true, restarts: 1, lastFailure: undefined });
    expect(h.dataPath.status().pid).not.toBe(pid);
  });

  it("starts wireguard-go anew when its device was made anew", async () => {
    const h = harness();
    h.dataPath.update(rows(2));
    await h.dataPath.ensureRunning(NODE, false);
    expect(await h.dataPath.ensureRunning(NODE, true)).toBe(true);
    expect(h.process?.terminations).toBe(1);
    expect(h.process?.ensures).toBe(2);
    expect(h.device.summary()).toEqual([line(2)]);
  });

  it("says why wireguard-go cannot start, and is not running", async () => {
    const h = harness();
    if (h.process !== undefined) h.process.failStart = new Error("wireguard-go -f flannel-wg did not start");
    await expect(h.dataPath.ensureRunning(NODE, false)).rejects.toThrow("did not start");
    expect(h.dataPath.status()).toMatchObject({
      running: false,
      lastFailure: "wireguard-go -f flannel-wg did not start",
    });
  });

  it("sets a new key at once, as a change of its own, or keeps the old one and says why", async () => {
    const h = harness({ kernel: true });
    h.dataPath.update(rows(2));
    await h.dataPath.ensureRunning(NODE, false);
    await h.dataPath.setKey(key(102), key(103));
    expect(h.device.privateKey).toBe(key(102));
    expect(h.dataPath.privateKey).toBe(key(102));
    expect(h.dataPath.status()).toMatchObject({ publicKey: key(103), repairs: 0 });
    expect(h.device.summary()).toEqual([line(2)]);

    h.device.failSet = new Error("EPERM");
    await expect(h.dataPath.setKey(key(104), key(105))).rejects.toThrow("EPERM");
    expect(h.dataPath.privateKey).toBe(key(102));
    expect(h.dataPath.status()).toMatchObject({
      publicKey: key(103),
      lastFailure: "cannot set the new key on flannel-wg: EPERM",
    });
    h.device.failSet = undefined;
    await poll();
    expect(h.device.privateKey).toBe(key(102));
    expect(h.dataPath.status()).toMatchObject({ lastFailure: undefined, repairs: 0 });
  });

  it("stops polling at stop()", async () => {
    const h = harness();
    await h.dataPath.ensureRunning(NODE, false);
    await poll();
    const gets = h.device.gets;
    expect(gets).toBeGreaterThan(1);
    await h.dataPath.stop();
    expect(vi.getTimerCount()).toBe(0);
    h.device.wipe();
    await poll(5);
    expect(h.device.gets).toBe(gets);
    expect(h.device.peers.size).toBe(0);
    expect(h.device.privateKey).toBeUndefined();
    expect(h.dataPath.status().running).toBe(false);
    // stop() leaves wireguard-go running (it is the data plane; the next agent adopts it).
    expect(h.process?.terminations).toBe(0);
    expect(h.process?.running).toBe(true);
  });

  it("ends wireguard-go at retire()", async () => {
    const h = harness();
    await h.dataPath.ensureRunning(NODE, false);
    await h.dataPath.retire();
    expect(h.process?.terminations).toBe(1);
    expect(h.process?.running).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
    expect(h.dataPath.status().running).toBe(false);
  });

  it("shows the device's peers with their subnets and figures, and the kernel's device without a pid", async () => {
    const h = harness({ kernel: true, settings: { listenPort: 51999 } });
    h.dataPath.update(rows(2, 3));
    await h.dataPath.ensureRunning(NODE, false);
    h.device.edit(key(2), { lastHandshakeMs: 1_763_812_800_123, rxBytes: 148, txBytes: 92 });
    await poll();
    expect(h.dataPath.status()).toEqual({
      kind: "wireguard",
      what: `kernel WireGuard on flannel-wg, port 51999, public key ${OWN_PUBLIC}`,
      device: "flannel-wg",
      running: true,
      lastFailure: undefined,
      peers: 2,
      restarts: 0,
      implementation: "kernel",
      publicKey: OWN_PUBLIC,
      listenPort: 51999,
      pid: undefined,
      repairs: 0,
      peerDetails: [
        {
          subnet: "10.244.2.0/24",
          publicKey: key(2),
          endpoint: "198.18.0.2:51820",
          lastHandshakeMs: 1_763_812_800_123,
          rxBytes: 148,
          txBytes: 92,
        },
        {
          subnet: "10.244.3.0/24",
          publicKey: key(3),
          endpoint: "198.18.0.3:51820",
          lastHandshakeMs: 0,
          rxBytes: 0,
          txBytes: 0,
        },
      ],
    });
    expect(harness().dataPath.status().what).toBe(
      `wireguard-go on flannel-wg, port 51820, public key ${OWN_PUBLIC}`,
    );
  });

  it("keeps the reason while the device cannot be read or set, and shows a peer it does not know", async () => {
    const h = harness({ kernel: true });
    h.dataPath.update(rows(2));
    await h.dataPath.ensureRunning(NODE, false);

    h.device.failGet = new Error("wg show flannel-wg dump: exit 1: No such device");
    await poll();
    expect(h.dataPath.status().lastFailure).toBe(
      "cannot read or set flannel-wg: wg show flannel-wg dump: exit 1: No such device",
    );
    h.device.failGet = undefined;
    await poll();
    expect(h.dataPath.status().lastFailure).toBeUndefined();

    // Someone added a peer, and it cannot be removed: the status shows it, without a subnet.
    h.device.failSet = new Error("EPERM");
    h.device.peers.set(key(9), { ...wantedOf(9), lastHandshakeMs: 0, rxBytes: 0, txBytes: 0 });
    await poll();
    const status = h.dataPath.status();
    expect(status.lastFailure).toBe("cannot read or set flannel-wg: EPERM");
    expect(status.peers).toBe(2);
    expect(status.peerDetails.map((p) => [p.subnet, p.publicKey])).toEqual([
      ["10.244.2.0/24", key(2)],
      ["", key(9)],
    ]);
    expect(status.repairs).toBe(0);
    h.device.failSet = undefined;
    await poll();
    expect(h.dataPath.status()).toMatchObject({ lastFailure: undefined, peers: 1, repairs: 1 });
  });
});

/** Peer n of a dual-stack cluster in Mode separate: a row on each device. */
const dualRoute = (n: number, over: { publicKey?: string } = {}): WireGuardRoute => ({
  subnet: parseCidr(`10.244.${n}.0/24`),
  endpoint: { address: parseIPv4(`198.18.0.${n}`), port: 51820 },
  publicKey: over.publicKey ?? key(n),
  devices: [
    {
      device: "flannel-wg",
      publicKey: over.publicKey ?? key(n),
      endpoint: `198.18.0.${n}:51820`,
      allowedIps: [`10.244.${n}.0/24`],
    },
    {
      device: "flannel-wg-v6",
      publicKey: over.publicKey ?? key(n),
      endpoint: `[2001:db8::${n}]:51821`,
      allowedIps: [`fd00:10:244:${n}::/64`],
    },
  ],
});

const dualRows = (...ns: number[]): Map<string, UserspaceRoute> =>
  new Map(ns.map((n) => [leaseKey(n), dualRoute(n)]));

const line6 = (n: number): string => `${key(n)} [2001:db8::${n}]:51821 fd00:10:244:${n}::/64`;

describe("WireGuardDataPath with the wireguard backend's rows", () => {
  it("takes only the rows of its own device", async () => {
    const v4 = harness({ kernel: true });
    const v6 = harness({ kernel: true, settings: { device: "flannel-wg-v6", listenPort: 51821 } });
    for (const h of [v4, v6]) {
      h.dataPath.update(dualRows(2, 3));
      await h.dataPath.ensureRunning(NODE, false);
    }
    expect(v4.device.summary()).toEqual([line(2), line(3)]);
    expect(v6.device.summary()).toEqual([line6(2), line6(3)]);
    expect(v6.device.listenPort).toBe(51821);
    expect(v6.dataPath.status().peerDetails.map((p) => [p.subnet, p.endpoint])).toEqual([
      ["fd00:10:244:2::/64", "[2001:db8::2]:51821"],
      ["fd00:10:244:3::/64", "[2001:db8::3]:51821"],
    ]);
  });

  it("carries both subnets of a peer on one device (Mode auto, ipv4, ipv6), and drops a peer that has no row there", async () => {
    const h = harness({ kernel: true });
    const single: WireGuardRoute = {
      ...route(2),
      devices: [
        {
          device: "flannel-wg",
          publicKey: key(2),
          endpoint: "[2001:db8::2]:51820",
          allowedIps: ["10.244.2.0/24", "fd00:10:244:2::/64"],
        },
      ],
    };
    h.dataPath.update(new Map([[leaseKey(2), single]]));
    h.dataPath.update(new Map([[leaseKey(3), { ...route(3), devices: [] }]]));
    await h.dataPath.ensureRunning(NODE, false);
    expect(h.device.summary()).toEqual([`${key(2)} [2001:db8::2]:51820 10.244.2.0/24,fd00:10:244:2::/64`]);
    expect(h.dataPath.status().peerDetails[0]?.subnet).toBe("10.244.2.0/24,fd00:10:244:2::/64");
  });
});

interface TunnelsHarness {
  readonly v4: Harness & { readonly process: FakeWireGuardGo };
  readonly v6: Harness & { readonly process: FakeWireGuardGo };
  readonly tunnels: WireGuardTunnels;
  readonly keyFile: { key: string | undefined };
  /** Each device's ifindex as the tunnels read it. */
  readonly indexes: Map<string, number>;
  /** Times the agent was told of a new key, with both devices' keys then. */
  readonly told: [string | undefined, string | undefined][];
}

/** flannel-wg and flannel-wg-v6, both served by (fake) wireguard-go, as one data path. */
function tunnelsHarness(): TunnelsHarness {
  const make = (device: string, listenPort: number): Harness & { readonly process: FakeWireGuardGo } => {
    const fake = new FakeDevice();
    const process = new FakeWireGuardGo(fake, device);
    const dataPath = new WireGuardDataPath(settings({ device, listenPort }), {
      control: fake,
      process,
      pollMs: POLL_MS,
    });
    paths.push(dataPath);
    return { device: fake, process, dataPath };
  };
  const v4 = make("flannel-wg", 51820);
  const v6 = make("flannel-wg-v6", 51821);
  const keyFile: { key: string | undefined } = { key: undefined };
  const indexes = new Map([
    ["flannel-wg", 10],
    ["flannel-wg-v6", 11],
  ]);
  const tunnels = new WireGuardTunnels({
    readKeyFile: () => Promise.resolve(keyFile.key),
    deviceIndex: (device) => Promise.resolve(indexes.get(device)),
    pollMs: POLL_MS,
  });
  tunnelSets.push(tunnels);
  expect(tunnels.setDevices([v4.dataPath, v6.dataPath])).toEqual([]);
  const told: [string | undefined, string | undefined][] = [];
  tunnels.configure("/state/wireguard.key", () => told.push([v4.device.privateKey, v6.device.privateKey]));
  return { v4, v6, tunnels, keyFile, indexes, told };
}

describe("WireGuardTunnels (a node's devices as one data path)", () => {
  it("gives each device its rows and shows both in one status, each device's inside", async () => {
    const t = tunnelsHarness();
    t.tunnels.update(dualRows(2, 3));
    expect(await t.tunnels.ensureRunning(NODE, false)).toBe(true);
    expect(t.v4.device.summary()).toEqual([line(2), line(3)]);
    expect(t.v6.device.summary()).toEqual([line6(2), line6(3)]);
    expect([t.v4.device.listenPort, t.v6.device.listenPort]).toEqual([51820, 51821]);
    t.tunnels.replaceAll(dualRows(3));
    expect(await t.tunnels.ensureRunning(NODE, false)).toBe(false);
    expect(t.v6.device.summary()).toEqual([line6(3)]);

    const status = t.tunnels.status() as WireGuardTunnelsStatus;
    expect(status).toMatchObject({
      kind: "wireguard",
      device: "flannel-wg",
      what:
        `wireguard-go on flannel-wg, port 51820, public key ${OWN_PUBLIC}; ` +
        `wireguard-go on flannel-wg-v6, port 51821, public key ${OWN_PUBLIC}`,
      running: true,
      peers: 2,
      restarts: 0,
      repairs: 0,
      publicKey: OWN_PUBLIC,
    });
    expect(status.devices.map((d) => [d.device, d.listenPort, d.peers, d.pid])).toEqual([
      ["flannel-wg", 51820, 1, t.v4.process.pid],
      ["flannel-wg-v6", 51821, 1, t.v6.process.pid],
    ]);
    expect(status.peerDetails.map((p) => [p.device, p.subnet, p.endpoint])).toEqual([
      ["flannel-wg", "10.244.3.0/24", "198.18.0.3:51820"],
      ["flannel-wg-v6", "fd00:10:244:3::/64", "[2001:db8::3]:51821"],
    ]);
  });

  it("is one device's status when it serves one (IPv4 only, IPv6 only, one tunnel)", async () => {
    const t = tunnelsHarness();
    t.tunnels.setDevices([t.v6.dataPath]);
    t.tunnels.update(dualRows(2));
    await t.tunnels.ensureRunning(NODE, false);
    expect(t.tunnels.status()).toEqual(t.v6.dataPath.status());
    expect(t.v4.device.summary()).toEqual([]);
  });

  it("counts repairs and restarts of either device", async () => {
    const t = tunnelsHarness();
    t.tunnels.update(dualRows(2));
    await t.tunnels.ensureRunning(NODE, false);
    t.v6.device.peers.delete(key(2));
    await poll();
    expect(t.v6.device.summary()).toEqual([line6(2)]);
    expect(t.tunnels.status()).toMatchObject({ repairs: 1, restarts: 0 });
  });

  it("tells the loop when either wireguard-go exits, naming its device, and starts only that one again", async () => {
    const t = tunnelsHarness();
    const reasons: string[] = [];
    t.tunnels.onStopped((reason) => reasons.push(reason));
    t.tunnels.update(dualRows(2));
    await t.tunnels.ensureRunning(NODE, false);
    const pid = t.v6.process.pid;
    t.v6.process.die();
    await poll();
    expect(reasons).toEqual([`wireguard-go (pid ${pid ?? "?"}) on flannel-wg-v6 exited`]);
    expect(t.tunnels.status()).toMatchObject({ running: false, restarts: 1 });
    expect(await t.tunnels.ensureRunning(NODE, false)).toBe(true);
    expect(t.v4.process.ensures).toBe(2);
    expect(t.v4.process.terminations).toBe(0);
    expect(t.v6.device.summary()).toEqual([line6(2)]);
    expect(t.tunnels.status()).toMatchObject({ running: true, restarts: 1 });
  });

  it("starts again only the wireguard-go of the device that was made anew", async () => {
    const t = tunnelsHarness();
    t.tunnels.update(dualRows(2));
    await t.tunnels.ensureRunning(NODE, false);
    t.indexes.set("flannel-wg-v6", 12); // deleted and made anew by the loop
    expect(await t.tunnels.ensureRunning(NODE, true)).toBe(true);
    expect(t.v4.process.terminations).toBe(0);
    expect(t.v6.process.terminations).toBe(1);
    expect(t.v6.device.summary()).toEqual([line6(2)]);
    // A device whose index cannot be read counts as made anew.
    t.indexes.delete("flannel-wg");
    await t.tunnels.ensureRunning(NODE, true);
    expect(t.v4.process.terminations).toBe(1);
    expect(t.v6.process.terminations).toBe(1);
  });

  it("keeps serving one device when the other cannot start, and says why", async () => {
    const t = tunnelsHarness();
    t.v6.process.failStart = new Error("wireguard-go -f flannel-wg-v6 did not start");
    t.tunnels.update(dualRows(2));
    await expect(t.tunnels.ensureRunning(NODE, false)).rejects.toThrow("flannel-wg-v6 did not start");
    expect(t.v4.device.summary()).toEqual([line(2)]);
    expect(t.tunnels.status()).toMatchObject({
      running: false,
      lastFailure: "wireguard-go -f flannel-wg-v6 did not start",
    });
    t.v6.process.failStart = undefined;
    await t.tunnels.ensureRunning(NODE, false);
    expect(t.v6.device.summary()).toEqual([line6(2)]);
    expect(t.tunnels.status()).toMatchObject({ running: true, lastFailure: undefined });
  });

  it("sets a rotated key on every device before telling the agent, once", async () => {
    const t = tunnelsHarness();
    t.tunnels.update(dualRows(2));
    await t.tunnels.ensureRunning(NODE, false);
    t.keyFile.key = OWN_PRIVATE; // the key it has: nothing to say
    await poll(2);
    expect(t.told).toEqual([]);

    const rotated = encodeKey(generatePrivateKey((n) => Buffer.alloc(n, 102)));
    const rotatedPublic = encodeKey(publicKeyOf(Buffer.from(rotated, "base64")));
    t.keyFile.key = rotated;
    await poll();
    // Both devices had the new key when the agent was told (it then re-publishes the lease).
    expect(t.told).toEqual([[rotated, rotated]]);
    expect(t.tunnels.status().publicKey).toBe(rotatedPublic);
    expect((t.tunnels.status() as WireGuardTunnelsStatus).devices.map((d) => d.publicKey)).toEqual([
      rotatedPublic,
      rotatedPublic,
    ]);
    // The peers stay, and it is not someone else's change.
    expect(t.v4.device.summary()).toEqual([line(2)]);
    expect(t.v6.device.summary()).toEqual([line6(2)]);
    expect(t.tunnels.status().repairs).toBe(0);
    await poll(3);
    expect(t.told).toHaveLength(1);

    // Prepared again with the new key: nothing more to do or say.
    const changes = [t.v4.device.changes.length, t.v6.device.changes.length];
    t.v4.dataPath.configure(settings({ privateKey: rotated, publicKey: rotatedPublic }));
    t.v6.dataPath.configure(
      settings({ device: "flannel-wg-v6", listenPort: 51821, privateKey: rotated, publicKey: rotatedPublic }),
    );
    await t.tunnels.ensureRunning(NODE, false);
    await poll(3);
    expect(t.told).toHaveLength(1);
    expect([t.v4.device.changes.length, t.v6.device.changes.length]).toEqual(changes);
  });

  it("keeps the old key on every device while one does not take the new one, and tells nothing", async () => {
    const t = tunnelsHarness();
    await t.tunnels.ensureRunning(NODE, false);
    t.v6.device.failSet = new Error("EPERM");
    t.keyFile.key = key(102);
    await poll();
    // The lease must not carry a key a device does not have; flannel-wg got its old key back.
    expect(t.told).toEqual([]);
    expect([t.v4.device.privateKey, t.v6.device.privateKey]).toEqual([OWN_PRIVATE, OWN_PRIVATE]);
    expect(t.tunnels.status()).toMatchObject({
      publicKey: OWN_PUBLIC,
      lastFailure: "cannot set the new key on flannel-wg-v6: EPERM",
      repairs: 0,
    });
    t.v6.device.failSet = undefined;
    await poll();
    expect([t.v4.device.privateKey, t.v6.device.privateKey]).toEqual([key(102), key(102)]);
    expect(t.told).toEqual([[key(102), key(102)]]);
    await poll();
    expect(t.tunnels.status()).toMatchObject({ lastFailure: undefined, repairs: 0 });
  });

  it("hands back the devices it no longer serves, and ends every wireguard-go at retire()", async () => {
    const t = tunnelsHarness();
    let retired = 0;
    const tunnels = new WireGuardTunnels({
      readKeyFile: () => Promise.resolve(undefined),
      deviceIndex: () => Promise.resolve(1),
      pollMs: POLL_MS,
      onRetired: () => retired++,
    });
    tunnelSets.push(tunnels);
    tunnels.setDevices([t.v4.dataPath, t.v6.dataPath]);
    await tunnels.ensureRunning(NODE, false);
    expect(tunnels.setDevices([t.v4.dataPath])).toEqual([t.v6.dataPath]);
    await tunnels.retire();
    expect(t.v4.process.terminations).toBe(1);
    expect(t.v6.process.terminations).toBe(0); // the caller retires what it handed back
    expect(retired).toBe(1);
    expect(vi.getTimerCount()).toBeGreaterThan(0); // flannel-wg-v6's own poll still runs
    await t.v6.dataPath.retire();
    expect(vi.getTimerCount()).toBe(0);
  });
});
