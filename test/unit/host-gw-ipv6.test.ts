// host-gw with IPv6: per family the peer's subnet via its public address of that family (PublicIP,
// PublicIPv6) on the external interface, when that address is on-link; else unreachable, naming the
// networks of that family the interface is on.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DUAL_NODE, V4_NODE, V6_NODE, EXTERNAL_DUAL as EXTERNAL } from "../helpers/node-facts.js";
import { familyLease, type FamilySpec } from "../helpers/leases.js";
import type { NodeBackend, NodeFacts, PeerState } from "../../src/backends/backend.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import { ownedRoute, type KernelObject } from "../../src/dataplane/objects.js";
import { parsePrefix } from "../../src/ip/address.js";
import type { Lease } from "../../src/lease/lease.js";

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

async function hostGw(families: { ipv4: boolean; ipv6: boolean }): Promise<NodeBackend> {
  const v4 = families.ipv4 ? '"Network":"10.244.0.0/16",' : '"EnableIPv4":false,';
  const v6 = families.ipv6 ? '"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",' : "";
  const config = parseNetworkConfig(`{${v4}${v6}"Backend":{"Type":"host-gw"}}`).config;
  const dir = await mkdtemp(join(tmpdir(), "twill-host-gw-"));
  dirs.push(dir);
  return config.backend.prepare({
    families,
    stateDir: dir,
    existingLink: () => Promise.resolve(undefined),
    txChecksumOffload: true,
    nodeBinding: "node-a",
  });
}

/** Peer n: `v4` false for IPv6-only; `publicIPv6` null for none. */
const peer = (n: number, options: FamilySpec = {}): Lease => familyLease(n, { type: "host-gw", ...options });

const route4 = (n: number, gateway = `198.18.0.${n}`): KernelObject =>
  ownedRoute({ family: 4, dst: `10.244.${n}.0/24`, gateway, dev: "eth0", onlink: false });
const route6 = (n: number, gateway = `2001:db8:18::${n.toString(16)}`): KernelObject =>
  ownedRoute({ family: 6, dst: `fd00:10:244:${n.toString(16)}::/64`, gateway, dev: "eth0", onlink: false });

const DUAL = { ipv4: true, ipv6: true };
const V4 = { ipv4: true, ipv6: false };
const V6 = { ipv4: false, ipv6: true };

interface Case {
  readonly name: string;
  readonly families: { ipv4: boolean; ipv6: boolean };
  readonly node: NodeFacts;
  readonly peer: Lease;
  readonly objects: readonly KernelObject[];
  readonly state: PeerState;
  readonly reason: string;
}

const cases: Case[] = [
  {
    name: "dual-stack peer on-link in both families: a route per family via its PublicIP and PublicIPv6",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5),
    objects: [route4(5), route6(5)],
    state: "programmed",
    reason: "IPv4: route via 198.18.0.5 dev eth0; IPv6: route via 2001:db8:18::5 dev eth0",
  },
  {
    name: "IPv6-only peer on a dual-stack node: the IPv6 route alone",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v4: false }),
    objects: [route6(5)],
    state: "programmed",
    reason: "route via 2001:db8:18::5 dev eth0",
  },
  {
    name: "IPv4-only peer on a dual-stack node: the IPv4 route alone",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v6: false }),
    objects: [route4(5)],
    state: "programmed",
    reason: "route via 198.18.0.5 dev eth0",
  },
  {
    name: "IPv6 route on an IPv6-only node",
    families: V6,
    node: V6_NODE,
    peer: peer(0x2a, { v4: false }),
    objects: [route6(0x2a)],
    state: "programmed",
    reason: "route via 2001:db8:18::2a dev eth0",
  },
  {
    name: "a dual-stack peer on an IPv6-only node gets its IPv6 route only",
    families: V6,
    node: V6_NODE,
    peer: peer(5),
    objects: [route6(5)],
    state: "programmed",
    reason: "route via 2001:db8:18::5 dev eth0",
  },
  {
    name: "a dual-stack peer on an IPv4-only node gets its IPv4 route only (as flanneld)",
    families: V4,
    node: V4_NODE,
    peer: peer(5),
    objects: [route4(5)],
    state: "programmed",
    reason: "route via 198.18.0.5 dev eth0",
  },
  {
    name: "PublicIPv6 off-link: no IPv6 route, unreachable, naming the IPv6 networks",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { v4: false, publicIPv6: "2001:db8:19::5" }),
    objects: [],
    state: "unreachable",
    reason:
      "peer 2001:db8:19::5 is not on-link on eth0 (2001:db8:18::/64); host-gw needs peers on the same L2 " +
      "segment — use vxlan (or vxlan DirectRouting)",
  },
  {
    name: "on-link in IPv4, off-link in IPv6: the IPv4 route stays, the verdict says which family failed",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { publicIPv6: "2001:db8:19::5" }),
    objects: [route4(5)],
    state: "unreachable",
    reason:
      "IPv4: route via 198.18.0.5 dev eth0; IPv6: peer 2001:db8:19::5 is not on-link on eth0 " +
      "(2001:db8:18::/64); host-gw needs peers on the same L2 segment — use vxlan (or vxlan DirectRouting)",
  },
  {
    name: "off-link in IPv4, on-link in IPv6",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { publicIP: "198.19.0.5" }),
    objects: [route6(5)],
    state: "unreachable",
    reason:
      "IPv4: peer 198.19.0.5 is not on-link on eth0 (198.18.0.0/24); host-gw needs peers on the same L2 " +
      "segment — use vxlan (or vxlan DirectRouting); IPv6: route via 2001:db8:18::5 dev eth0",
  },
  {
    name: "an interface without IPv6 networks reaches no IPv6 peer",
    families: DUAL,
    node: { ...DUAL_NODE, connected: [parsePrefix("198.18.0.0/24")] },
    peer: peer(5, { v4: false }),
    objects: [],
    state: "unreachable",
    reason:
      "peer 2001:db8:18::5 is not on-link on eth0 (no IPv6 networks); host-gw needs peers on the same L2 " +
      "segment — use vxlan (or vxlan DirectRouting)",
  },
  {
    name: "a PublicIPv6 in one of several IPv6 networks",
    families: DUAL,
    node: {
      ...DUAL_NODE,
      connected: [...DUAL_NODE.connected, parsePrefix("2001:db8:99::/48")],
    },
    peer: peer(5, { v4: false, publicIPv6: "2001:db8:99:1::5" }),
    objects: [route6(5, "2001:db8:99:1::5")],
    state: "programmed",
    reason: "route via 2001:db8:99:1::5 dev eth0",
  },
  {
    name: "a dual-stack peer without PublicIPv6 is an IPv4 peer",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { publicIPv6: null }),
    objects: [route4(5)],
    state: "programmed",
    reason: "route via 198.18.0.5 dev eth0",
  },
  {
    name: "an IPv4-only peer on an IPv6-only node shares no family",
    families: V6,
    node: V6_NODE,
    peer: peer(5, { v6: false }),
    objects: [],
    state: "unreachable",
    reason: "peer 10.244.5.0/24 shares no address family with this node; not programmed",
  },
  {
    name: "an IPv6-only peer on an IPv4-only node shares no family",
    families: V4,
    node: V4_NODE,
    peer: peer(5, { v4: false }),
    objects: [],
    state: "unreachable",
    reason: "peer fd00:10:244:5::/64 shares no address family with this node; not programmed",
  },
  {
    name: "a vxlan dual-stack peer is a backend mismatch, named by both subnets",
    families: DUAL,
    node: DUAL_NODE,
    peer: peer(5, { type: "vxlan" }),
    objects: [],
    state: "backend-mismatch",
    reason:
      'peer 10.244.5.0/24+fd00:10:244:5::/64 uses backend "vxlan", this node uses "host-gw"; not programmed',
  },
];

describe("host-gw with IPv6: node.peer", () => {
  it.each(cases)("$name", async (c) => {
    const node = await hostGw(c.families);
    const program = node.peer(c.node, c.peer);
    expect(program.objects).toEqual(c.objects);
    expect(program.status).toEqual({ state: c.state, reason: c.reason });
  });

  it("an IPv6 route is written as the kernel reads it back: family 6, metric 1024, universe scope", async () => {
    const node = await hostGw(DUAL);
    const [route] = node.peer(DUAL_NODE, peer(5, { v4: false })).objects;
    expect(route).toEqual({
      kind: "route",
      family: 6,
      dst: "fd00:10:244:5::/64",
      table: 254,
      protocol: 151,
      type: "unicast",
      scope: 0,
      metric: 1024,
      gateway: "2001:db8:18::5",
      dev: "eth0",
      onlink: false,
      multipath: false,
    });
  });

  it("has no devices and publishes no BackendData or BackendV6Data in any family mix", async () => {
    for (const [families, facts] of [
      [DUAL, DUAL_NODE],
      [V6, V6_NODE],
    ] as const) {
      const node = await hostGw(families);
      expect(node.devices(facts)).toEqual([]);
      expect(node.leaseData).toBeUndefined();
      expect(node.leaseV6Data).toBeUndefined();
      expect(node.ownedDevices).toEqual([]);
    }
  });

  it("pods keep the interface's MTU with IPv6 on", () => {
    const config = parseNetworkConfig(
      '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}',
    ).config;
    expect(config.backend.mtu(EXTERNAL, true)).toBe(1500);
  });
});
