// The backends as the agent uses them: the network config's Backend → a BackendConfig → prepare() for
// this node → per peer, the kernel objects and a verdict; per node, the devices. Plus the vxlan
// BackendData codec (flannel's bytes) and the registry that maps a type to its backend.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { NodeBackend, NodeFacts, PeerProgram } from "../../src/backends/backend.js";
import { BACKENDS, backendForConfig, backendForLease, DEFAULT_BACKEND } from "../../src/backends/registry.js";
import {
  parseVxlanBackendData,
  vxlanBackendData,
  VxlanPeerData,
} from "../../src/backends/vxlan/backend-data.js";
import { vtepMacPath } from "../../src/backends/vxlan/vtep-mac.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import type { CommandRunner } from "../../src/exec/command.js";
import { parsePrefix } from "../../src/ip/address.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import type { KernelObject, Link } from "../../src/dataplane/objects.js";
import { encodeLeaseAttrs, LeaseDecodeError } from "../../src/lease/attrs.js";
import type { Lease } from "../../src/lease/lease.js";
import { peerLease, vtepMac, type PeerSpec } from "../helpers/leases.js";

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

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

async function stateDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "twill-backends-"));
  dirs.push(dir);
  return dir;
}

/** The Backend object of a network config → that backend prepared for this node, as the agent does it. */
async function prepare(
  backend: string,
  options: {
    dir?: string;
    existing?: Link;
    txChecksumOffload?: boolean;
    asked?: string[];
    binding?: string;
    renew?: boolean;
  } = {},
): Promise<NodeBackend> {
  const config = parseNetworkConfig(`{"Network":"10.244.0.0/16","Backend":${backend}}`).config;
  return config.backend.prepare({
    stateDir: options.dir ?? (await stateDir()),
    existingLink: (name) => {
      options.asked?.push(name);
      return Promise.resolve(options.existing?.name === name ? options.existing : undefined);
    },
    txChecksumOffload: options.txChecksumOffload ?? true,
    nodeBinding: options.binding ?? "node-a",
    renewIdentity: options.renew ?? false,
  });
}

const VXLAN = '{"Type":"vxlan"}';
const DIRECT = '{"Type":"vxlan","DirectRouting":true}';
const HOST_GW = '{"Type":"host-gw"}';

// flannel's objects, written out field by field: what the kernel must end up with.
const fdbFor = (mac: string, dst: string, dev = "flannel.1"): KernelObject => ({
  kind: "fdb",
  dev,
  mac,
  dst,
  state: 0x80, // permanent
  flags: 0x02, // self
  master: undefined,
});
const neighbourFor = (dst: string, lladdr: string, dev = "flannel.1"): KernelObject => ({
  kind: "neigh",
  family: 4,
  dev,
  dst,
  lladdr,
  state: 0x80, // permanent
});
const routeFor = (dst: string, gateway: string, dev: string, onlink: boolean): KernelObject => ({
  kind: "route",
  family: 4,
  dst,
  table: 254,
  protocol: 151,
  type: "unicast",
  scope: 0,
  metric: 0,
  gateway,
  dev,
  onlink,
  multipath: false,
});

/** Peer n's vxlan triple: FDB (MAC → public IP), neighbour (subnet address → MAC), onlink route. */
function tunnel(n: number, publicIP = `198.18.0.${n}`, dev = "flannel.1"): KernelObject[] {
  const gateway = `10.244.${n}.0`;
  return [
    fdbFor(vtepMac(n), publicIP, dev),
    neighbourFor(gateway, vtepMac(n), dev),
    routeFor(`${gateway}/24`, gateway, dev, true),
  ];
}

/** Peer n's host-gw (or DirectRouting) route: via its public IP on the external interface. */
const direct = (n: number, gateway = `198.18.0.${n}`): KernelObject[] => [
  routeFor(`10.244.${n}.0/24`, gateway, "eth0", false),
];

/** Objects in a stable order, so a backend may list them in any. */
function sorted(objects: readonly KernelObject[]): KernelObject[] {
  return [...objects].sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1));
}

interface PeerCase {
  readonly name: string;
  readonly backend: string;
  readonly peer: Lease;
  readonly node?: NodeFacts;
  readonly objects: readonly KernelObject[];
  readonly state: PeerProgram["status"]["state"];
  readonly reason: RegExp;
}

const peer = (n: number, spec: PeerSpec = {}): Lease => peerLease(n, spec);

const peerCases: PeerCase[] = [
  {
    name: "vxlan: FDB entry, neighbour entry and onlink route, as flannel programs them",
    backend: VXLAN,
    peer: peer(2),
    objects: tunnel(2),
    state: "programmed",
    reason: /^vxlan via flannel\.1 to 198\.18\.0\.2$/,
  },
  {
    name: "vxlan: a MAC published in upper case with dashes is normalised",
    backend: VXLAN,
    peer: peer(2, { data: '{"VNI":1,"VtepMAC":"0A-00-00-00-00-02"}' }),
    objects: tunnel(2),
    state: "programmed",
    reason: /^vxlan via/,
  },
  {
    name: "vxlan: BackendData without a VNI (older flannel) is accepted",
    backend: VXLAN,
    peer: peer(2, { data: `{"VtepMAC":"${vtepMac(2)}"}` }),
    objects: tunnel(2),
    state: "programmed",
    reason: /^vxlan via/,
  },
  {
    name: "vxlan: VNI 0 is accepted (flannel never checks a peer's VNI)",
    backend: VXLAN,
    peer: peer(2, { data: `{"VNI":0,"VtepMAC":"${vtepMac(2)}"}` }),
    objects: tunnel(2),
    state: "programmed",
    reason: /^vxlan via/,
  },
  {
    name: "vxlan: a peer on another VNI is a mismatch",
    backend: VXLAN,
    peer: peer(2, { data: `{"VNI":2,"VtepMAC":"${vtepMac(2)}"}` }),
    objects: [],
    state: "backend-mismatch",
    reason:
      /^peer 10\.244\.2\.0\/24 uses VNI 2, this node uses VNI 1; frames would be tagged with the wrong VNI; not programmed$/,
  },
  {
    name: "vxlan: the device and every object follow the VNI",
    backend: '{"Type":"vxlan","VNI":7}',
    peer: peer(2, { data: `{"VNI":7,"VtepMAC":"${vtepMac(2)}"}` }),
    objects: tunnel(2, "198.18.0.2", "flannel.7"),
    state: "programmed",
    reason: /^vxlan via flannel\.7 to 198\.18\.0\.2$/,
  },
  {
    name: "vxlan: missing BackendData → mismatch naming it",
    backend: VXLAN,
    peer: peer(2, { data: undefined }),
    objects: [],
    state: "backend-mismatch",
    reason: /^peer 10\.244\.2\.0\/24 has bad vxlan BackendData: BackendData is missing/,
  },
  {
    name: "vxlan: a multicast VtepMAC → mismatch naming BackendData.VtepMAC",
    backend: VXLAN,
    peer: peer(2, { data: '{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}' }),
    objects: [],
    state: "backend-mismatch",
    reason: /BackendData\.VtepMAC "ff:ff:ff:ff:ff:ff" is a multicast\/broadcast address; not programmed$/,
  },
  {
    name: "vxlan: a VNI that is not a number → mismatch naming BackendData.VNI",
    backend: VXLAN,
    peer: peer(2, { data: `{"VNI":"1","VtepMAC":"${vtepMac(2)}"}` }),
    objects: [],
    state: "backend-mismatch",
    reason: /BackendData\.VNI is string "1"/,
  },
  {
    name: "vxlan: BackendData that is not an object → mismatch",
    backend: VXLAN,
    peer: peer(2, { data: '"nope"' }),
    objects: [],
    state: "backend-mismatch",
    reason: /BackendData is string "nope", not a JSON object/,
  },
  {
    name: "vxlan DirectRouting: an on-link peer gets a plain route via its public IP",
    backend: DIRECT,
    peer: peer(2),
    objects: direct(2),
    state: "programmed",
    reason: /^direct route via 198\.18\.0\.2 dev eth0 \(DirectRouting, on-link\)$/,
  },
  {
    name: "vxlan DirectRouting: an off-link peer is encapsulated",
    backend: DIRECT,
    peer: peer(9, { publicIP: "198.19.0.9" }),
    objects: tunnel(9, "198.19.0.9"),
    state: "programmed",
    reason: /^vxlan via flannel\.1 to 198\.19\.0\.9$/,
  },
  {
    name: "vxlan DirectRouting without connected networks encapsulates everyone",
    backend: DIRECT,
    peer: peer(2),
    node: { ...NODE, connected: [] },
    objects: tunnel(2),
    state: "programmed",
    reason: /^vxlan via/,
  },
  {
    name: "vxlan: a host-gw peer is a backend mismatch",
    backend: VXLAN,
    peer: peer(2, { type: "host-gw" }),
    objects: [],
    state: "backend-mismatch",
    reason: /^peer 10\.244\.2\.0\/24 uses backend "host-gw", this node uses "vxlan"; not programmed$/,
  },
  {
    name: "vxlan: a peer without BackendType (flannel udp/alloc) is a backend mismatch",
    backend: VXLAN,
    peer: peer(2, { type: undefined }),
    objects: [],
    state: "backend-mismatch",
    reason: /uses backend no BackendType \(flannel udp\/alloc\?\), this node uses "vxlan"/,
  },
  {
    name: "host-gw: a route via the peer's public IP on the external interface",
    backend: HOST_GW,
    peer: peer(2, { type: "host-gw" }),
    objects: direct(2),
    state: "programmed",
    reason: /^route via 198\.18\.0\.2 dev eth0$/,
  },
  {
    name: "host-gw: whatever BackendData a peer publishes is ignored, as flannel does",
    backend: HOST_GW,
    peer: peer(2, { type: "host-gw", data: '{"junk":true}' }),
    objects: direct(2),
    state: "programmed",
    reason: /^route via/,
  },
  {
    name: "host-gw: a peer off the L2 segment is unreachable, not black-holed, and the reason names the networks",
    backend: HOST_GW,
    peer: peer(9, { type: "host-gw", publicIP: "198.19.0.9" }),
    objects: [],
    state: "unreachable",
    reason:
      /^peer 198\.19\.0\.9 is not on-link on eth0 \(198\.18\.0\.0\/24\); host-gw needs peers on the same L2 segment — use vxlan \(or vxlan DirectRouting\)$/,
  },
  {
    name: "host-gw: without connected networks every peer is unreachable",
    backend: HOST_GW,
    peer: peer(2, { type: "host-gw" }),
    node: { ...NODE, connected: [] },
    objects: [],
    state: "unreachable",
    reason: /not on-link on eth0 \(no IPv4 networks\)/,
  },
  {
    name: "host-gw: a vxlan peer is a backend mismatch",
    backend: HOST_GW,
    peer: peer(2),
    objects: [],
    state: "backend-mismatch",
    reason: /^peer 10\.244\.2\.0\/24 uses backend "vxlan", this node uses "host-gw"; not programmed$/,
  },
];

describe("node.peer", () => {
  it.each(peerCases)("$name", async (c) => {
    const node = await prepare(c.backend);
    const program = node.peer(c.node ?? NODE, c.peer);
    expect(sorted(program.objects)).toEqual(sorted(c.objects));
    expect(program.status.state).toBe(c.state);
    expect(program.status.reason).toMatch(c.reason);
  });

  it("vxlan: uses the BackendData the peer view parsed, and the same objects come out", async () => {
    const node = await prepare(VXLAN);
    const lease = peer(2);
    const peerData = backendForLease("vxlan")?.parsePeerData(lease.attrs.backendData);
    expect(peerData).toEqual(new VxlanPeerData(1, vtepMac(2)));
    expect(node.peer(NODE, { ...lease, peerData })).toEqual(node.peer(NODE, lease));
    // The parsed data wins over the raw text: the view parsed it once, the backend does not again.
    const parsedElsewhere = new VxlanPeerData(1, vtepMac(0x42));
    expect(node.peer(NODE, { ...lease, peerData: parsedElsewhere }).objects).toContainEqual(
      neighbourFor("10.244.2.0", vtepMac(0x42)),
    );
  });
});

describe("node.devices", () => {
  it("vxlan: flannel.<VNI> with the VTEP MAC, MTU − 50, the public IP as source and <subnet>/32", async () => {
    const dir = await stateDir();
    await writeFile(vtepMacPath(dir, 1), "0a:bc:00:00:00:01\n");
    const node = await prepare(VXLAN, { dir });
    const [device, ...others] = node.devices(NODE);
    expect(others).toEqual([]);
    expect(device?.link).toEqual({
      name: "flannel.1",
      kind: "vxlan",
      mac: "0a:bc:00:00:00:01",
      mtu: 1450,
      vxlan: { vni: 1, local: "198.18.0.1", port: 8472, learning: false, gbp: false, underlay: "eth0" },
    });
    expect(device?.mtu).toBe(1450);
    expect(device?.mac).toBe("0a:bc:00:00:00:01");
    expect(device?.addresses).toEqual([{ address: "10.244.1.0", prefixLength: 32 }]);
    // Its addresses inside the cluster network that are not this lease's are stale.
    expect(device?.addressScope).toEqual([parsePrefix("10.244.0.0/16")]);
    expect(node.ownedDevices).toEqual(["flannel.1"]);
  });

  it("vxlan: the options reach the device (VNI, Port, GBP, Learning)", async () => {
    const node = await prepare('{"Type":"vxlan","VNI":4096,"Port":4789,"GBP":true,"Learning":true}');
    const [device] = node.devices(NODE);
    expect(device?.link.name).toBe("flannel.4096");
    expect(device?.link.vxlan).toEqual({
      vni: 4096,
      local: "198.18.0.1",
      port: 4789,
      learning: true,
      gbp: true,
      underlay: "eth0",
    });
    expect(node.ownedDevices).toEqual(["flannel.4096"]);
  });

  it("vxlan: the tunnel source is the public IP (--public-ip), not the interface's own address", async () => {
    const node = await prepare(VXLAN);
    const external = { ...NODE.external, publicIp: parseIPv4("203.0.113.5") };
    expect(node.devices({ ...NODE, external })[0]?.link.vxlan?.local).toBe("203.0.113.5");
  });

  it.each([
    ['{"Type":"vxlan"}', 1500, 1450],
    ['{"Type":"vxlan"}', 9000, 8950],
    ['{"Type":"vxlan","MTU":9000}', 1500, 8950],
    ['{"Type":"vxlan","MTU":1400}', 9000, 1350],
    ['{"Type":"host-gw"}', 1500, 1500],
    ['{"Type":"host-gw"}', 9000, 9000],
  ])("%s on a %i-byte interface: pods get MTU %i", async (backend, interfaceMtu, podMtu) => {
    const config = parseNetworkConfig(`{"Network":"10.244.0.0/16","Backend":${backend}}`).config;
    const external = { ...NODE.external, mtu: interfaceMtu };
    expect(config.backend.mtu(external)).toBe(podMtu);
    const devices = (await prepare(backend)).devices({ ...NODE, external });
    for (const device of devices) expect(device.mtu).toBe(podMtu);
  });

  it("vxlan: says why an existing device cannot serve, and accepts one that can", async () => {
    const node = await prepare(VXLAN);
    const [device] = node.devices(NODE);
    if (device === undefined) throw new Error("no device");
    const vxlan = { vni: 1, local: "198.18.0.1", port: 8472, learning: false, gbp: false, underlay: "eth0" };
    const flannel: Link = {
      index: 7,
      name: "flannel.1",
      kind: "vxlan",
      mtu: 1450,
      up: true,
      mac: vtepMac(1),
      master: undefined,
      vxlan,
    };
    expect(device.incompatibility(flannel)).toBeUndefined();
    // flanneld's device, with no underlay recorded, is adopted too.
    expect(device.incompatibility({ ...flannel, vxlan: { ...vxlan, underlay: undefined } })).toBeUndefined();
    const reasons = [
      { ...flannel, kind: "bridge", vxlan: undefined },
      { ...flannel, kind: undefined, vxlan: undefined },
      { ...flannel, vxlan: { ...vxlan, vni: 2 } },
      { ...flannel, vxlan: { ...vxlan, local: "198.18.0.9" } },
      { ...flannel, vxlan: { ...vxlan, underlay: "eth1" } },
      { ...flannel, vxlan: { ...vxlan, port: 4789 } },
      { ...flannel, vxlan: { ...vxlan, learning: true } },
      { ...flannel, vxlan: { ...vxlan, gbp: true } },
    ].map((link) => device.incompatibility(link));
    expect(reasons).toEqual([
      "it is a bridge device, not vxlan",
      "it is a plain device, not vxlan",
      "VNI 2, want 1",
      "local 198.18.0.9, want 198.18.0.1",
      "underlay eth1, want eth0",
      "port 4789, want 8472",
      "learning on, want off",
      "gbp on, want off",
    ]);
  });

  it("vxlan: with --vxlan-tx-checksum-offload=false the device check turns TX checksum offload off", async () => {
    const calls: string[] = [];
    let offloadOn = true;
    const runner: CommandRunner = {
      where: "fake",
      run: (cmd, args) => {
        calls.push([cmd, ...args].join(" "));
        if (args[0] === "-K") offloadOn = false;
        const shown = `Features for flannel.1:\ntx-checksumming: on\n\ttx-checksum-ip-generic: ${offloadOn ? "on" : "off"}\n`;
        return Promise.resolve({ stdout: args[0] === "-k" ? shown : "", stderr: "", exitCode: 0 });
      },
    };
    const kept = await prepare(VXLAN, { txChecksumOffload: true });
    expect(kept.devices(NODE)[0]?.extraChecks).toBeUndefined();
    const off = await prepare(VXLAN, { txChecksumOffload: false });
    const check = off.devices(NODE)[0]?.extraChecks;
    expect(await check?.(runner)).toEqual([
      { device: "flannel.1", what: "offload", detail: "tx-checksum-ip-generic off" },
    ]);
    expect(await check?.(runner)).toEqual([]);
    expect(calls).toEqual([
      "ethtool -k flannel.1",
      "ethtool -K flannel.1 tx-checksum-ip-generic off",
      "ethtool -k flannel.1",
    ]);
    const missing: CommandRunner = {
      where: "fake",
      run: () => Promise.resolve({ stdout: "", stderr: "ethtool: command not found", exitCode: 127 }),
    };
    await expect(check?.(missing)).rejects.toThrow(
      "ethtool -k flannel.1: ethtool: command not found (is ethtool installed?)",
    );
  });

  it("host-gw: no devices, no BackendData, nothing owned besides its routes", async () => {
    const node = await prepare(HOST_GW);
    expect(node.devices(NODE)).toEqual([]);
    expect(node.ownedDevices).toEqual([]);
    expect(node.leaseData).toBeUndefined();
    expect(node.config.type).toBe("host-gw");
  });
});

describe("vxlan: the VTEP MAC and the lease's BackendData", () => {
  it("publishes flannel's BackendData byte for byte", async () => {
    const dir = await stateDir();
    await writeFile(vtepMacPath(dir, 1), "c6:d2:32:6f:8f:44\n");
    const node = await prepare(VXLAN, { dir });
    expect(node.leaseData).toBe('{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}');
    // The whole lease value, as flannel's own example has it.
    const value = encodeLeaseAttrs({
      publicIP: parseIPv4("192.168.64.3"),
      publicIPv6: null,
      backendType: node.config.type,
      backendData: node.leaseData,
      backendV6Data: undefined,
    });
    expect(value).toBe(
      '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
    );
  });

  it("keeps the VTEP MAC in the state dir across restarts", async () => {
    const dir = await stateDir();
    const first = await prepare(VXLAN, { dir });
    const mac = parseVxlanBackendData(first.leaseData).vtepMac;
    expect(await readFile(vtepMacPath(dir, 1), "utf8")).toBe(`${mac}\nbound-to node-a\n`);
    expect(vtepMacPath(dir, 1)).toBe(join(dir, "vtep-mac.flannel.1"));
    const again = await prepare(VXLAN, { dir });
    expect(again.leaseData).toBe(first.leaseData);
    expect(again.devices(NODE)[0]?.mac).toBe(mac);
    // A MAC of its own per VNI.
    const other = await prepare('{"Type":"vxlan","VNI":7}', { dir });
    expect(parseVxlanBackendData(other.leaseData).vtepMac).not.toBe(mac);
    expect(await readFile(vtepMacPath(dir, 7), "utf8")).toBe(
      `${parseVxlanBackendData(other.leaseData).vtepMac}\nbound-to node-a\n`,
    );
  });

  it("keeps a MAC persisted by an older twill (no binding) and binds it to this node", async () => {
    const dir = await stateDir();
    await writeFile(vtepMacPath(dir, 1), "c6:d2:32:6f:8f:44\n");
    const node = await prepare(VXLAN, { dir, binding: "node-a" });
    expect(node.identity).toBe("VTEP MAC c6:d2:32:6f:8f:44");
    expect(await readFile(vtepMacPath(dir, 1), "utf8")).toBe("c6:d2:32:6f:8f:44\nbound-to node-a\n");
  });

  it("makes a new MAC for a state dir made on another node (a cloned image), and keeps that one", async () => {
    const dir = await stateDir();
    const original = await prepare(VXLAN, { dir, binding: "node-a" });
    const clone = await prepare(VXLAN, { dir, binding: "node-b" });
    expect(clone.identity).not.toBe(original.identity);
    expect(clone.identityOrigin).toBe("state-copied");
    expect(await readFile(vtepMacPath(dir, 1), "utf8")).toMatch(/\nbound-to node-b\n$/);
    const restarted = await prepare(VXLAN, { dir, binding: "node-b" });
    expect(restarted.identity).toBe(clone.identity);
    expect(restarted.identityOrigin).toBe("persisted");
  });

  it("makes a new MAC on request (another node's older lease holds it) and persists it", async () => {
    const dir = await stateDir();
    const first = await prepare(VXLAN, { dir });
    const renewed = await prepare(VXLAN, { dir, renew: true });
    expect(renewed.identity).not.toBe(first.identity);
    expect(renewed.leaseData).not.toBe(first.leaseData);
    expect((await prepare(VXLAN, { dir })).identity).toBe(renewed.identity);
  });

  it("adopts the MAC of a flannel.<VNI> device already on the node (a flanneld migration)", async () => {
    const dir = await stateDir();
    const asked: string[] = [];
    const existing: Link = {
      index: 7,
      name: "flannel.1",
      kind: "vxlan",
      mtu: 1450,
      up: true,
      mac: "c6:d2:32:6f:8f:44",
      master: undefined,
      vxlan: undefined,
    };
    const node = await prepare(VXLAN, { dir, existing, asked });
    expect(asked).toEqual(["flannel.1"]);
    expect(node.leaseData).toBe('{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}');
    expect(await readFile(vtepMacPath(dir, 1), "utf8")).toBe("c6:d2:32:6f:8f:44\nbound-to node-a\n");
    // Once persisted, the state dir wins: the device may be one twill re-created.
    const later = await prepare(VXLAN, { dir, existing: { ...existing, mac: "0a:00:00:00:00:99" } });
    expect(later.leaseData).toBe(node.leaseData);
  });

  it("makes a new unicast MAC when the existing device's MAC cannot be a VTEP's, or the state file is garbage", async () => {
    const dir = await stateDir();
    await writeFile(vtepMacPath(dir, 1), "not a mac\n");
    const existing: Link = {
      index: 7,
      name: "flannel.1",
      kind: "vxlan",
      mtu: 1450,
      up: true,
      mac: "01:00:5e:00:00:01",
      master: undefined,
      vxlan: undefined,
    };
    const node = await prepare(VXLAN, { dir, existing });
    const mac = parseVxlanBackendData(node.leaseData).vtepMac;
    expect(mac).not.toBe("01:00:5e:00:00:01");
    expect(await readFile(vtepMacPath(dir, 1), "utf8")).toBe(`${mac}\nbound-to node-a\n`);
  });
});

describe("vxlan BackendData codec", () => {
  it.each([
    [1, "c6:d2:32:6f:8f:44", '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}'],
    [4096, "AA-BB-CC-DD-EE-FE", '{"VNI":4096,"VtepMAC":"aa:bb:cc:dd:ee:fe"}'],
    [16777215, "0a:00:00:00:00:01", '{"VNI":16777215,"VtepMAC":"0a:00:00:00:00:01"}'],
  ])("vxlanBackendData(%i, %s) = %s, and reads back", (vni, mac, expected) => {
    expect(vxlanBackendData(vni, mac)).toBe(expected);
    const parsed = parseVxlanBackendData(expected);
    expect(parsed).toBeInstanceOf(VxlanPeerData);
    expect(parsed).toEqual(new VxlanPeerData(vni, expected.slice(-19, -2)));
  });

  it.each([
    [-1, "aa:bb:cc:dd:ee:fe"],
    [1.5, "aa:bb:cc:dd:ee:fe"],
    [0x1000000, "aa:bb:cc:dd:ee:fe"],
    [1, "ff:ff:ff:ff:ff:ff"],
    [1, "00:00:00:00:00:00"],
    [1, "aa:bb:cc"],
  ])("vxlanBackendData(%s, %s) throws", (vni, mac) => {
    expect(() => vxlanBackendData(vni, mac)).toThrow(RangeError);
  });

  it.each([
    ['{"VNI":1,"VtepMAC":"C6:D2:32:6F:8F:44"}', 1, "c6:d2:32:6f:8f:44"],
    // Go matches keys case-insensitively.
    ['{"vni":7,"vtepmac":"c6-d2-32-6f-8f-44"}', 7, "c6:d2:32:6f:8f:44"],
    ['{"VNI":1,"VtepMAC":"c6d2.326f.8f44"}', 1, "c6:d2:32:6f:8f:44"],
    // Older flannel published only the MAC; null reads as absent, as in Go.
    ['{"VtepMAC":"02:00:00:00:00:01"}', 0, "02:00:00:00:00:01"],
    ['{"VNI":null,"VtepMAC":"02:00:00:00:00:01"}', 0, "02:00:00:00:00:01"],
    ['{"VNI":1,"VtepMAC":"02:00:00:00:00:01","Extra":true}', 1, "02:00:00:00:00:01"],
    // The last of two keys that differ only in case wins, as in Go.
    ['{"VNI":1,"vni":2,"VtepMAC":"02:00:00:00:00:01"}', 2, "02:00:00:00:00:01"],
  ])("parses %s", (text, vni, mac) => {
    expect(parseVxlanBackendData(text)).toEqual(new VxlanPeerData(vni, mac));
  });

  function decodeError(text: string | undefined): LeaseDecodeError {
    try {
      parseVxlanBackendData(text);
    } catch (err) {
      if (err instanceof LeaseDecodeError) return err;
      throw err;
    }
    throw new Error(`expected a LeaseDecodeError for ${String(text)}`);
  }

  it.each<[string | undefined, string, string]>([
    [undefined, "BackendData", "BackendData is missing"],
    ["null", "BackendData", "BackendData is null, not a JSON object"],
    ['"x"', "BackendData", 'BackendData is string "x", not a JSON object'],
    ["[1]", "BackendData", "BackendData is an array, not a JSON object"],
    ["{", "BackendData", "not valid JSON"],
    ['{"VNI":1}', "BackendData.VtepMAC", "BackendData.VtepMAC is missing"],
    ['{"VNI":1,"VtepMAC":null}', "BackendData.VtepMAC", "BackendData.VtepMAC is null, not a string"],
    [
      '{"VNI":1,"VtepMAC":"zz:d2:32:6f:8f:44"}',
      "BackendData.VtepMAC",
      '"zz:d2:32:6f:8f:44" is not a 6-octet MAC',
    ],
    ['{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f"}', "BackendData.VtepMAC", "is not a 6-octet MAC"],
    ['{"VNI":1,"VtepMAC":"00:00:5e:00:53:01:02:03"}', "BackendData.VtepMAC", "is not a 6-octet MAC"],
    ['{"VNI":1,"VtepMAC":"c6:d2-32:6f:8f:44"}', "BackendData.VtepMAC", "is not a 6-octet MAC"],
    ['{"VNI":1,"VtepMAC":" c6:d2:32:6f:8f:44"}', "BackendData.VtepMAC", "is not a 6-octet MAC"],
    ['{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}', "BackendData.VtepMAC", "is a multicast/broadcast address"],
    ['{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}', "BackendData.VtepMAC", "is a multicast/broadcast address"],
    ['{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}', "BackendData.VtepMAC", "is the all-zero address"],
    ['{"VNI":"1","VtepMAC":"02:00:00:00:00:01"}', "BackendData.VNI", 'BackendData.VNI is string "1"'],
    ['{"VNI":-1,"VtepMAC":"02:00:00:00:00:01"}', "BackendData.VNI", "BackendData.VNI is number -1"],
    ['{"VNI":1.5,"VtepMAC":"02:00:00:00:00:01"}', "BackendData.VNI", "not an integer"],
    ['{"VNI":16777216,"VtepMAC":"02:00:00:00:00:01"}', "BackendData.VNI", "not an integer 0–16777215"],
  ])("rejects %s naming %s", (text, field, message) => {
    const err = decodeError(text);
    expect(err.field).toBe(field);
    expect(err.message).toContain(message);
  });
});

describe("registry", () => {
  it.each([
    ["vxlan", "vxlan"],
    ["VXLAN", "vxlan"],
    ["VxLan", "vxlan"],
    ["host-gw", "host-gw"],
    ["HOST-GW", "host-gw"],
    ["udp", "udp"],
    ["UDP", "udp"],
    ["hostgw", undefined],
    ["", undefined],
  ])("the config's Backend.Type %j → %s (case-insensitive, as flannel reads it)", (type, backend) => {
    expect(backendForConfig(type)?.type).toBe(backend);
  });

  it.each([
    ["vxlan", "vxlan"],
    ["host-gw", "host-gw"],
    // flannel's backends compare a peer's BackendType exactly.
    ["VXLAN", undefined],
    ["Host-Gw", undefined],
    // flannel's udp leases carry no BackendType at all; one that says "udp" is nobody's.
    ["udp", undefined],
    [undefined, "udp"],
  ])("a lease's BackendType %j → %s (exact, as flannel compares it)", (type, backend) => {
    expect(backendForLease(type)?.type).toBe(backend);
  });

  it("lists each backend once, vxlan first; udp is the default, as flanneld's", () => {
    expect(BACKENDS.map((backend) => backend.type)).toEqual(["vxlan", "host-gw", "udp", "wireguard"]);
    expect(DEFAULT_BACKEND.type).toBe("udp");
  });

  it("parses a peer's BackendData with the backend of its type", () => {
    expect(backendForLease("vxlan")?.parsePeerData(`{"VNI":1,"VtepMAC":"${vtepMac(2)}"}`)).toEqual(
      new VxlanPeerData(1, vtepMac(2)),
    );
    expect(() => backendForLease("vxlan")?.parsePeerData(undefined)).toThrow(LeaseDecodeError);
    // host-gw reads nothing from BackendData, so nothing there can make a lease invalid.
    expect(() => backendForLease("host-gw")?.parsePeerData('"junk"')).not.toThrow();
  });

  it("describes a peer's BackendData for `twill leases`: vxlan shows the VTEP MAC, host-gw nothing", () => {
    const vxlan = backendForLease("vxlan");
    expect(vxlan?.describePeerData?.(new VxlanPeerData(1, vtepMac(2)))).toBe(vtepMac(2));
    expect(vxlan?.describePeerData?.({ vtepMac: vtepMac(2) })).toBeUndefined();
    const hostGw = backendForLease("host-gw");
    const hostGwData = hostGw?.parsePeerData(undefined) ?? {};
    expect(hostGw?.describePeerData?.(hostGwData)).toBeUndefined();
  });
});
