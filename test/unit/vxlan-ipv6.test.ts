// vxlan with IPv6, as flannel's: flannel-v6.<VNI> beside flannel.<VNI>, each with its own persisted VTEP
// MAC (BackendV6Data beside BackendData), the node's PublicIPv6 as the IPv6 tunnel source and
// <IPv6 subnet>/128 on it; per IPv6 peer an FDB entry to its PublicIPv6, a neighbour entry and an onlink
// route on flannel-v6.<VNI>. A dual-stack peer is programmed per family it shares with this node.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DUAL_NODE, V4_NODE, V6_NODE, EXTERNAL_DUAL as EXTERNAL } from "../helpers/node-facts.js";
import { familyLease, type FamilySpec } from "../helpers/leases.js";
import type { NodeBackend, NodeFacts, PeerState } from "../../src/backends/backend.js";
import { backendForLease, identityByBackend, parsePeerDataByBackend } from "../../src/backends/registry.js";
import {
  parseVxlanPeerData,
  VxlanPeerData,
  type VxlanVtepData,
} from "../../src/backends/vxlan/backend-data.js";
import { vxlanDeviceName, vxlanV6DeviceName } from "../../src/backends/vxlan/index.js";
import { vtepMacPath } from "../../src/backends/vxlan/vtep-mac.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import {
  ownedRoute,
  permanentFdb,
  permanentNeighbour,
  type KernelObject,
  type Link,
} from "../../src/dataplane/objects.js";
import { parsePrefix } from "../../src/ip/address.js";
import { parseIPv4 } from "../../src/ip/ipv4.js";
import { encodeLeaseAttrs, LeaseDecodeError } from "../../src/lease/attrs.js";
import { computeView } from "../../src/lease/peer-view.js";
import type { Lease } from "../../src/lease/lease.js";

const DUAL = { ipv4: true, ipv6: true };
const V4 = { ipv4: true, ipv6: false };
const V6 = { ipv4: false, ipv6: true };
type Families = typeof DUAL;

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

async function stateDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "twill-vxlan6-"));
  dirs.push(dir);
  return dir;
}

/** The network config of these families with this Backend, its backend prepared for this node. */
async function vxlan(
  families: Families,
  options: { backend?: string; dir?: string; asked?: string[]; existing?: Link } = {},
): Promise<NodeBackend> {
  const v4 = families.ipv4 ? '"Network":"10.244.0.0/16",' : '"EnableIPv4":false,';
  const v6 = families.ipv6 ? '"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",' : "";
  const backend = options.backend ?? '{"Type":"vxlan"}';
  const config = parseNetworkConfig(`{${v4}${v6}"Backend":${backend}}`).config;
  return config.backend.prepare({
    families,
    stateDir: options.dir ?? (await stateDir()),
    existingLink: (name) => {
      options.asked?.push(name);
      return Promise.resolve(options.existing?.name === name ? options.existing : undefined);
    },
    txChecksumOffload: true,
    nodeBinding: "node-a",
  });
}

const mac4 = (n: number): string => `0a:00:00:00:04:${n.toString(16).padStart(2, "0")}`;
const mac6 = (n: number): string => `0a:00:00:00:06:${n.toString(16).padStart(2, "0")}`;
const vtep = (vni: number, mac: string): string => `{"VNI":${vni},"VtepMAC":"${mac}"}`;

/** Peer n; `data`/`v6Data` undefined to omit them; `v4`/`v6` false for a single-family lease. */
function peer(n: number, options: FamilySpec = {}): Lease {
  const v4 = options.v4 ?? true;
  const v6 = options.v6 ?? true;
  return familyLease(n, {
    ...options,
    data: "data" in options ? options.data : v4 ? vtep(1, mac4(n)) : undefined,
    v6Data: "v6Data" in options ? options.v6Data : v6 ? vtep(1, mac6(n)) : undefined,
  });
}

/** Peer n's IPv4 triple on flannel.1: FDB (MAC → PublicIP), neighbour, onlink route. */
function tunnel4(n: number, dev = "flannel.1"): KernelObject[] {
  const gateway = `10.244.${n}.0`;
  return [
    permanentFdb({ dev, mac: mac4(n), dst: `198.18.0.${n}` }),
    permanentNeighbour({ family: 4, dev, dst: gateway, lladdr: mac4(n) }),
    ownedRoute({ family: 4, dst: `${gateway}/24`, gateway, dev, onlink: true }),
  ];
}

/** Peer n's IPv6 triple on flannel-v6.1: FDB (MAC → PublicIPv6), neighbour, onlink route. */
function tunnel6(
  n: number,
  publicIPv6 = `2001:db8:18::${n.toString(16)}`,
  dev = "flannel-v6.1",
): KernelObject[] {
  const gateway = `fd00:10:244:${n.toString(16)}::`;
  return [
    permanentFdb({ dev, mac: mac6(n), dst: publicIPv6 }),
    permanentNeighbour({ family: 6, dev, dst: gateway, lladdr: mac6(n) }),
    ownedRoute({ family: 6, dst: `${gateway}/64`, gateway, dev, onlink: true }),
  ];
}

interface Case {
  readonly name: string;
  readonly families: Families;
  readonly node: NodeFacts;
  readonly peer: Lease;
  readonly backend?: string;
  readonly objects: readonly KernelObject[];
  readonly state: PeerState;
  readonly reason: string;
}

const cases: Case[] = [
  {
    name: "dual-stack peer: FDB, neighbour and route on flannel.1 and on flannel-v6.1",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5),
    objects: [...tunnel4(5), ...tunnel6(5)],
    state: "programmed",
    reason: "IPv4: vxlan via flannel.1 to 198.18.0.5; IPv6: vxlan via flannel-v6.1 to 2001:db8:18::5",
  },
  {
    name: "IPv6-only peer on a dual-stack node: flannel-v6.1 only",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v4: false }),
    objects: tunnel6(5),
    state: "programmed",
    reason: "vxlan via flannel-v6.1 to 2001:db8:18::5",
  },
  {
    name: "IPv4-only peer on a dual-stack node: flannel.1 only",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v6: false }),
    objects: tunnel4(5),
    state: "programmed",
    reason: "vxlan via flannel.1 to 198.18.0.5",
  },
  {
    name: "IPv6-only peer on an IPv6-only node",
    families: V6,
    node: V6_NODE,
    peer: peer(0x2a, { v4: false }),
    objects: tunnel6(0x2a),
    state: "programmed",
    reason: "vxlan via flannel-v6.1 to 2001:db8:18::2a",
  },
  {
    name: "dual-stack peer on an IPv6-only node: its IPv6 VTEP only",
    families: V6,
    node: V6_NODE,
    peer: peer(5),
    objects: tunnel6(5),
    state: "programmed",
    reason: "vxlan via flannel-v6.1 to 2001:db8:18::5",
  },
  {
    name: "dual-stack peer on an IPv4-only node: its IPv4 VTEP only, BackendV6Data unread",
    families: V4,
    node: V4_NODE,
    peer: peer(5, { v6Data: '{"VNI":99,"VtepMAC":"0a:00:00:00:06:05"}' }),
    objects: tunnel4(5),
    state: "programmed",
    reason: "vxlan via flannel.1 to 198.18.0.5",
  },
  {
    name: "dual-stack peer without BackendV6Data: IPv4 programmed, the verdict names BackendV6Data",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v6Data: undefined }),
    objects: tunnel4(5),
    state: "backend-mismatch",
    reason:
      "IPv4: vxlan via flannel.1 to 198.18.0.5; IPv6: peer 10.244.5.0/24+fd00:10:244:5::/64 publishes no " +
      "vxlan BackendV6Data for its IPv6 subnet; not programmed",
  },
  {
    name: "BackendV6Data null reads as absent (Go's nil RawMessage)",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v6Data: "null" }),
    objects: tunnel4(5),
    state: "backend-mismatch",
    reason:
      "IPv4: vxlan via flannel.1 to 198.18.0.5; IPv6: peer 10.244.5.0/24+fd00:10:244:5::/64 publishes no " +
      "vxlan BackendV6Data for its IPv6 subnet; not programmed",
  },
  {
    name: "IPv6 VNI mismatch: IPv4 programmed, IPv6 not, naming both VNIs",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v6Data: vtep(2, mac6(5)) }),
    objects: tunnel4(5),
    state: "backend-mismatch",
    reason:
      "IPv4: vxlan via flannel.1 to 198.18.0.5; IPv6: peer 10.244.5.0/24+fd00:10:244:5::/64 uses VNI 2, this " +
      "node uses VNI 1; frames would be tagged with the wrong VNI; not programmed",
  },
  {
    name: "IPv4 VNI mismatch on a dual-stack peer: IPv6 programmed",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { data: vtep(3, mac4(5)) }),
    objects: tunnel6(5),
    state: "backend-mismatch",
    reason:
      "IPv4: peer 10.244.5.0/24+fd00:10:244:5::/64 uses VNI 3, this node uses VNI 1; frames would be tagged " +
      "with the wrong VNI; not programmed; IPv6: vxlan via flannel-v6.1 to 2001:db8:18::5",
  },
  {
    name: "IPv6-only peer on another VNI",
    families: V6,
    node: V6_NODE,
    peer: peer(5, { v4: false, v6Data: vtep(2, mac6(5)) }),
    objects: [],
    state: "backend-mismatch",
    reason:
      "peer fd00:10:244:5::/64 uses VNI 2, this node uses VNI 1; frames would be tagged with the wrong VNI; not programmed",
  },
  {
    name: "BackendV6Data without a VNI (VNI 0) is accepted, as flannel never checks it",
    families: V6,
    node: V6_NODE,
    peer: peer(5, { v4: false, v6Data: `{"VtepMAC":"${mac6(5)}"}` }),
    objects: tunnel6(5),
    state: "programmed",
    reason: "vxlan via flannel-v6.1 to 2001:db8:18::5",
  },
  {
    name: "the IPv6 device and every IPv6 object follow the VNI",
    families: DUAL,
    node: DUAL_NODE,
    backend: '{"Type":"vxlan","VNI":7}',
    peer: peer(5, { data: vtep(7, mac4(5)), v6Data: vtep(7, mac6(5)) }),
    objects: [...tunnel4(5, "flannel.7"), ...tunnel6(5, "2001:db8:18::5", "flannel-v6.7")],
    state: "programmed",
    reason: "IPv4: vxlan via flannel.7 to 198.18.0.5; IPv6: vxlan via flannel-v6.7 to 2001:db8:18::5",
  },
  {
    name: "DirectRouting: an on-link IPv6 peer gets a plain route via its PublicIPv6",
    families: DUAL,
    node: DUAL_NODE,
    backend: '{"Type":"vxlan","DirectRouting":true}',
    peer: peer(5, { v4: false }),
    objects: [
      ownedRoute({
        family: 6,
        dst: "fd00:10:244:5::/64",
        gateway: "2001:db8:18::5",
        dev: "eth0",
        onlink: false,
      }),
    ],
    state: "programmed",
    reason: "direct route via 2001:db8:18::5 dev eth0 (DirectRouting, on-link)",
  },
  {
    name: "DirectRouting: an off-link IPv6 peer is encapsulated on flannel-v6.1",
    families: DUAL,
    node: DUAL_NODE,
    backend: '{"Type":"vxlan","DirectRouting":true}',
    peer: peer(5, { v4: false, publicIPv6: "2001:db8:19::5" }),
    objects: tunnel6(5, "2001:db8:19::5"),
    state: "programmed",
    reason: "vxlan via flannel-v6.1 to 2001:db8:19::5",
  },
  {
    name: "DirectRouting per family: direct in IPv4, encapsulated in IPv6",
    families: DUAL,
    node: DUAL_NODE,
    backend: '{"Type":"vxlan","DirectRouting":true}',
    peer: peer(5, { publicIPv6: "2001:db8:19::5" }),
    objects: [
      ownedRoute({ family: 4, dst: "10.244.5.0/24", gateway: "198.18.0.5", dev: "eth0", onlink: false }),
      ...tunnel6(5, "2001:db8:19::5"),
    ],
    state: "programmed",
    reason:
      "IPv4: direct route via 198.18.0.5 dev eth0 (DirectRouting, on-link); IPv6: vxlan via flannel-v6.1 to 2001:db8:19::5",
  },
  {
    name: "a bad BackendV6Data makes the whole peer a mismatch, naming the field",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v6Data: '{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}' }),
    objects: [],
    state: "backend-mismatch",
    reason:
      'peer 10.244.5.0/24+fd00:10:244:5::/64 has bad vxlan BackendData: BackendV6Data.VtepMAC "ff:ff:ff:ff:ff:ff" ' +
      "is a multicast/broadcast address; not programmed",
  },
  {
    name: "an IPv6 peer on a node whose vxlan carries IPv4 only (IPv6 not prepared)",
    families: V4,
    node: DUAL_NODE,
    peer: peer(5, { v4: false }),
    objects: [],
    state: "backend-mismatch",
    reason: "peer fd00:10:244:5::/64 has IPv6, which this node's vxlan does not carry; not programmed",
  },
];

describe("vxlan: peer data of a family this node does not carry (through the peer view, as the agent wires it)", () => {
  /** The lease as the agent's peer view hands it to the backend: parsed once, peer data attached. */
  function throughView(lease: Lease, families: Families): Lease {
    const v4 = families.ipv4 ? '"Network":"10.244.0.0/16",' : '"EnableIPv4":false,';
    const v6 = families.ipv6 ? '"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",' : "";
    const config = parseNetworkConfig(`{${v4}${v6}"Backend":{"Type":"vxlan"}}`).config;
    const view = computeView(
      [
        {
          key: lease.key,
          value: encodeLeaseAttrs(lease.attrs),
          etcdLeaseId: "7",
          createRevision: 5,
          modRevision: 5,
        },
      ],
      {
        prefix: "/coreos.com/network",
        config,
        ownKey: undefined,
        ownSubnet: undefined,
        parsePeerData: parsePeerDataByBackend,
      },
    );
    const peer = view.peers.get(lease.key);
    if (peer === undefined) throw new Error(`not a peer: ${view.invalid.get(lease.key)?.reason ?? "?"}`);
    return peer;
  }

  it("BUG: IPv4-only node: a dual-stack peer's bad BackendV6Data does not stop its IPv4 tunnel", async () => {
    const node = await vxlan(V4);
    const lease = throughView(peer(5, { v6Data: '{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}' }), V4);
    const program = node.peer(V4_NODE, lease);
    expect(program.objects).toEqual(tunnel4(5));
    expect(program.status).toEqual({ state: "programmed", reason: "vxlan via flannel.1 to 198.18.0.5" });
  });

  it("BUG: IPv6-only node: a dual-stack peer's bad BackendData does not stop its IPv6 tunnel", async () => {
    const node = await vxlan(V6);
    const lease = throughView(peer(5, { data: '{"VNI":1}' }), V6);
    const program = node.peer(V6_NODE, lease);
    expect(program.objects).toEqual(tunnel6(5));
    expect(program.status).toEqual({
      state: "programmed",
      reason: "vxlan via flannel-v6.1 to 2001:db8:18::5",
    });
  });

  it("dual-stack node: a dual-stack peer with a bad BackendV6Data is set aside, naming the field", () => {
    const lease = peer(5, { v6Data: '{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}' });
    expect(() => throughView(lease, DUAL)).toThrow(
      'not a peer: bad vxlan BackendData: BackendV6Data.VtepMAC "ff:ff:ff:ff:ff:ff" is a multicast/broadcast address',
    );
  });
});

describe("vxlan with IPv6: node.peer", () => {
  it.each(cases)("$name", async (c) => {
    const node = await vxlan(c.families, c.backend === undefined ? {} : { backend: c.backend });
    const program = node.peer(c.node, c.peer);
    expect(program.objects).toEqual(c.objects);
    expect(program.status).toEqual({ state: c.state, reason: c.reason });
  });

  it("uses the BackendV6Data the peer view parsed, and the same objects come out", async () => {
    const node = await vxlan(DUAL);
    const lease = peer(5);
    const peerData = parsePeerDataByBackend(lease.attrs);
    expect(peerData).toEqual(new VxlanPeerData(1, mac4(5), { vni: 1, vtepMac: mac6(5) }));
    expect(node.peer(DUAL_NODE, { ...lease, peerData })).toEqual(node.peer(DUAL_NODE, lease));
    const parsedElsewhere = new VxlanPeerData(1, mac4(5), { vni: 1, vtepMac: mac6(0x42) });
    expect(node.peer(DUAL_NODE, { ...lease, peerData: parsedElsewhere }).objects).toContainEqual(
      permanentNeighbour({ family: 6, dev: "flannel-v6.1", dst: "fd00:10:244:5::", lladdr: mac6(0x42) }),
    );
  });

  it("names every peer object's family: IPv6 neighbours and routes are family 6", async () => {
    const node = await vxlan(DUAL);
    const objects = node.peer(DUAL_NODE, peer(5)).objects;
    const on6 = objects.filter((o) => o.dev === "flannel-v6.1");
    expect(on6.map((o) => (o.kind === "fdb" ? "fdb" : `${o.kind}${o.family}`))).toEqual([
      "fdb",
      "neigh6",
      "route6",
    ]);
    // The kernel reports an IPv6 route with metric 1024 and universe scope.
    expect(on6.find((o) => o.kind === "route")).toMatchObject({ metric: 1024, scope: 0, onlink: true });
  });
});

describe("vxlan with IPv6: devices and the lease's BackendData", () => {
  it("a dual-stack node has flannel.1 and flannel-v6.1, each with its own MAC, address and MTU", async () => {
    const dir = await stateDir();
    await writeFile(vtepMacPath(dir, 1), "0a:58:c6:12:00:05\n");
    await writeFile(vtepMacPath(dir, 1, "flannel-v6.1"), "0a:58:c6:12:00:06\n");
    const node = await vxlan(DUAL, { dir });
    const [v4, v6, ...others] = node.devices(DUAL_NODE);
    expect(others).toEqual([]);
    expect(v4?.link).toEqual({
      name: "flannel.1",
      kind: "vxlan",
      mac: "0a:58:c6:12:00:05",
      mtu: 1450,
      vxlan: { vni: 1, local: "198.18.0.1", port: 8472, learning: false, gbp: false, underlay: "eth0" },
    });
    expect(v4?.addresses).toEqual([{ address: "10.244.1.0", prefixLength: 32 }]);
    expect(v4?.addressScope).toEqual([parsePrefix("10.244.0.0/16")]);
    // The IPv6 underlay's outer header is 20 bytes longer: 1500 − 70.
    expect(v6?.link).toEqual({
      name: "flannel-v6.1",
      kind: "vxlan",
      mac: "0a:58:c6:12:00:06",
      mtu: 1430,
      vxlan: { vni: 1, local: "2001:db8:18::1", port: 8472, learning: false, gbp: false, underlay: "eth0" },
    });
    expect(v6?.mtu).toBe(1430);
    expect(v6?.mac).toBe("0a:58:c6:12:00:06");
    expect(v6?.addresses).toEqual([{ address: "fd00:10:244:1::", prefixLength: 128 }]);
    expect(v6?.addressScope).toEqual([parsePrefix("fd00:10:244::/56")]);
    expect(node.ownedDevices).toEqual(["flannel.1", "flannel-v6.1"]);
    // The node is known by its IPv4 VTEP.
    expect(node.identity).toBe("VTEP MAC 0a:58:c6:12:00:05");
  });

  it("an IPv6-only node has flannel-v6.1 alone, and is known by its IPv6 VTEP", async () => {
    const dir = await stateDir();
    const asked: string[] = [];
    await writeFile(vtepMacPath(dir, 1, "flannel-v6.1"), "0a:58:c6:12:00:06\n");
    const node = await vxlan(V6, { dir, asked });
    expect(asked).toEqual(["flannel-v6.1"]);
    const devices = node.devices(V6_NODE);
    expect(devices.map((d) => d.link.name)).toEqual(["flannel-v6.1"]);
    expect(devices[0]?.addresses).toEqual([{ address: "fd00:10:244:1::", prefixLength: 128 }]);
    expect(node.ownedDevices).toEqual(["flannel-v6.1"]);
    expect(node.leaseData).toBeUndefined();
    expect(node.leaseV6Data).toBe('{"VNI":1,"VtepMAC":"0a:58:c6:12:00:06"}');
    expect(node.identity).toBe("VTEP MAC 0a:58:c6:12:00:06");
    expect(node.identityOrigin).toBe("persisted");
  });

  it("makes no IPv6 device while the interface has no PublicIPv6", async () => {
    const node = await vxlan(DUAL);
    const facts = { ...DUAL_NODE, external: { ...EXTERNAL, publicIpv6: undefined } };
    expect(node.devices(facts).map((d) => d.link.name)).toEqual(["flannel.1"]);
  });

  it("keeps each device's VTEP MAC in its own file across restarts", async () => {
    const dir = await stateDir();
    const first = await vxlan(DUAL, { dir });
    const v4 = parseVxlanPeerData(first.leaseData, undefined).vtepMac;
    const v6 = parseVxlanPeerData(undefined, first.leaseV6Data).vtepMac;
    expect(v4).not.toBe(v6);
    expect(vtepMacPath(dir, 1, "flannel-v6.1")).toBe(join(dir, "vtep-mac.flannel-v6.1"));
    expect(await readFile(vtepMacPath(dir, 1), "utf8")).toBe(`${v4}\nbound-to node-a\n`);
    expect(await readFile(vtepMacPath(dir, 1, "flannel-v6.1"), "utf8")).toBe(`${v6}\nbound-to node-a\n`);
    const again = await vxlan(DUAL, { dir });
    expect(again.leaseData).toBe(first.leaseData);
    expect(again.leaseV6Data).toBe(first.leaseV6Data);
  });

  it("adopts the MAC of a flanneld's flannel-v6.<VNI> device (a migration)", async () => {
    const existing: Link = {
      index: 9,
      name: "flannel-v6.1",
      kind: "vxlan",
      mtu: 1430,
      up: true,
      mac: "c6:d2:32:6f:8f:66",
      master: undefined,
      vxlan: undefined,
    };
    const node = await vxlan(DUAL, { existing });
    expect(node.leaseV6Data).toBe('{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:66"}');
    expect(node.leaseData).not.toContain("c6:d2:32:6f:8f:66");
  });

  it("the IPv6 device says why an existing one cannot serve", async () => {
    const node = await vxlan(DUAL);
    const device = node.devices(DUAL_NODE)[1];
    if (device === undefined) throw new Error("no IPv6 device");
    const want = {
      vni: 1,
      local: "2001:db8:18::1",
      port: 8472,
      learning: false,
      gbp: false,
      underlay: "eth0",
    };
    const link: Link = {
      index: 9,
      name: "flannel-v6.1",
      kind: "vxlan",
      mtu: 1430,
      up: true,
      mac: device.mac,
      master: undefined,
      vxlan: want,
    };
    expect(device.incompatibility(link)).toBeUndefined();
    expect(device.incompatibility({ ...link, vxlan: { ...want, local: "198.18.0.1" } })).toBe(
      "local 198.18.0.1, want 2001:db8:18::1",
    );
  });

  it.each([
    ['{"Type":"vxlan"}', 1500, 1450, 1430],
    ['{"Type":"vxlan"}', 9000, 8950, 8930],
    ['{"Type":"vxlan","MTU":1400}', 9000, 1350, 1330],
  ])(
    "%s on a %i-byte interface: pods get %i without IPv6, %i with it",
    (backend, interfaceMtu, v4Mtu, v6Mtu) => {
      const config = parseNetworkConfig(`{"Network":"10.244.0.0/16","Backend":${backend}}`).config;
      const external = { ...EXTERNAL, mtu: interfaceMtu };
      expect(config.backend.mtu(external)).toBe(v4Mtu);
      expect(config.backend.mtu(external, true)).toBe(v6Mtu);
    },
  );

  it("device names: flannel.<VNI> and flannel-v6.<VNI>", () => {
    expect(vxlanDeviceName(1)).toBe("flannel.1");
    expect(vxlanV6DeviceName(1)).toBe("flannel-v6.1");
    expect(vxlanV6DeviceName(4096)).toBe("flannel-v6.4096");
  });

  it("publishes flannel's dual-stack lease value byte for byte", async () => {
    const dir = await stateDir();
    await writeFile(vtepMacPath(dir, 1), "0a:58:c6:12:00:05\n");
    await writeFile(vtepMacPath(dir, 1, "flannel-v6.1"), "0a:58:c6:12:00:06\n");
    const node = await vxlan(DUAL, { dir });
    // As the agent builds it: BackendData with IPv4 on, BackendV6Data with IPv6 on.
    const value = encodeLeaseAttrs({
      publicIP: parseIPv4("198.18.0.5"),
      publicIPv6: "2001:db8:18::5",
      backendType: node.config.type,
      backendData: node.leaseData,
      backendV6Data: node.leaseV6Data,
    });
    expect(value).toBe(
      '{"PublicIP":"198.18.0.5","PublicIPv6":"2001:db8:18::5","BackendType":"vxlan",' +
        '"BackendData":{"VNI":1,"VtepMAC":"0a:58:c6:12:00:05"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:c6:12:00:06"}}',
    );
  });

  it("publishes flannel's IPv6-only lease value byte for byte", async () => {
    const dir = await stateDir();
    await writeFile(vtepMacPath(dir, 1, "flannel-v6.1"), "0a:58:c6:12:00:06\n");
    const node = await vxlan(V6, { dir });
    const value = encodeLeaseAttrs({
      publicIP: 0,
      publicIPv6: "2001:db8:18::5",
      backendType: node.config.type,
      backendData: node.leaseData,
      backendV6Data: node.leaseV6Data,
    });
    expect(value).toBe(
      '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:18::5","BackendType":"vxlan",' +
        '"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:c6:12:00:06"}}',
    );
  });
});

describe("parseVxlanPeerData: BackendData and BackendV6Data", () => {
  const v4: VxlanVtepData = { vni: 1, vtepMac: mac4(5) };
  const v6: VxlanVtepData = { vni: 1, vtepMac: mac6(5) };

  it.each<
    [string, string | undefined, string | undefined, VxlanVtepData | undefined, VxlanVtepData | undefined]
  >([
    ["both (dual-stack)", vtep(1, mac4(5)), vtep(1, mac6(5)), v4, v6],
    ["BackendData only (IPv4-only)", vtep(1, mac4(5)), undefined, v4, undefined],
    ["BackendV6Data null reads as absent", vtep(1, mac4(5)), "null", v4, undefined],
    ["BackendV6Data only (IPv6-only)", undefined, vtep(1, mac6(5)), undefined, v6],
    ["BackendData null and BackendV6Data (IPv6-only)", "null", vtep(1, mac6(5)), undefined, v6],
    [
      "BackendV6Data keys matched as Go does",
      vtep(1, mac4(5)),
      '{"vni":1,"vtepmac":"0A-00-00-00-06-05"}',
      v4,
      v6,
    ],
  ])("%s", (_name, data, v6Data, wantV4, wantV6) => {
    const parsed = parseVxlanPeerData(data, v6Data);
    expect(parsed).toBeInstanceOf(VxlanPeerData);
    expect(parsed.v4).toEqual(wantV4);
    expect(parsed.v6).toEqual(wantV6);
    // What identifies the peer: its first VTEP (IPv4, or IPv6 on an IPv6-only peer).
    const first = wantV4 ?? wantV6;
    expect({ vni: parsed.vni, vtepMac: parsed.vtepMac }).toEqual(first);
  });

  function decodeError(data: string | undefined, v6Data: string | undefined): LeaseDecodeError {
    try {
      parseVxlanPeerData(data, v6Data);
    } catch (err) {
      if (err instanceof LeaseDecodeError) return err;
      throw err;
    }
    throw new Error("expected a LeaseDecodeError");
  }

  it.each<[string | undefined, string | undefined, string, string]>([
    [undefined, undefined, "BackendData", "BackendData is missing"],
    ["null", "null", "BackendData", "BackendData is null, not a JSON object"],
    [vtep(1, mac4(5)), '"x"', "BackendV6Data", 'BackendV6Data is string "x", not a JSON object'],
    [vtep(1, mac4(5)), "[1]", "BackendV6Data", "BackendV6Data is an array, not a JSON object"],
    [vtep(1, mac4(5)), "{", "BackendV6Data", "BackendV6Data is not valid JSON"],
    [vtep(1, mac4(5)), '{"VNI":1}', "BackendV6Data.VtepMAC", "BackendV6Data.VtepMAC is missing"],
    [
      undefined,
      '{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}',
      "BackendV6Data.VtepMAC",
      'BackendV6Data.VtepMAC "01:00:5e:00:00:01" is a multicast/broadcast address',
    ],
    [undefined, `{"VNI":"1","VtepMAC":"${mac6(5)}"}`, "BackendV6Data.VNI", 'BackendV6Data.VNI is string "1"'],
    [undefined, `{"VNI":16777216,"VtepMAC":"${mac6(5)}"}`, "BackendV6Data.VNI", "not an integer 0–16777215"],
    // A bad BackendData is named even when BackendV6Data is fine.
    ['{"VNI":1}', vtep(1, mac6(5)), "BackendData.VtepMAC", "BackendData.VtepMAC is missing"],
  ])("rejects %s / %s naming %s", (data, v6Data, field, message) => {
    const err = decodeError(data, v6Data);
    expect(err.field).toBe(field);
    expect(err.message).toContain(message);
  });

  it("the registry hands the vxlan backend both, and knows an IPv6-only peer by its IPv6 VTEP", () => {
    const plugin = backendForLease("vxlan");
    const only6 = plugin?.parsePeerData(undefined, vtep(1, mac6(5)));
    expect(only6).toEqual(new VxlanPeerData(1, mac6(5), { vni: 1, vtepMac: mac6(5) }, false));
    expect(plugin?.describePeerData?.(only6 ?? {})).toBe(mac6(5));
    expect(identityByBackend({ attrs: { backendType: "vxlan" }, peerData: only6 })).toBe(
      `VTEP MAC ${mac6(5)}`,
    );
    const dual = plugin?.parsePeerData(vtep(1, mac4(5)), vtep(1, mac6(5)));
    expect(identityByBackend({ attrs: { backendType: "vxlan" }, peerData: dual })).toBe(
      `VTEP MAC ${mac4(5)}`,
    );
  });
});
