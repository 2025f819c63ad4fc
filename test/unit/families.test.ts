// What a peer shares with this node per address family (sharedFamilies), and one verdict from the
// programs of each family (combineFamilies): the seam every IPv6-capable backend programs through.
import { describe, expect, it } from "vitest";
import { DUAL_NODE, V4_NODE, V6_NODE } from "../helpers/node-facts.js";
import type { NodeFacts, PeerProgram, PeerState } from "../../src/backends/backend.js";
import { combineFamilies, sharedFamilies, type PeerFamily } from "../../src/backends/families.js";
import { ownedRoute } from "../../src/dataplane/objects.js";
import type { Family } from "../../src/ip/address.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import type { Lease } from "../../src/lease/lease.js";

/** A lease of any family mix; `v4` null: IPv6-only (0.0.0.0/0, PublicIP 0.0.0.0). */
function lease(v4: string | null, v6: string | null, publicIPv6: string | null = "2001:db8:18::5"): Lease {
  return {
    subnet: parseCidr(v4 ?? "0.0.0.0/0"),
    ipv6Subnet: v6 === null ? undefined : parseCidr6(v6),
    attrs: {
      publicIP: v4 === null ? 0 : parseIPv4("198.18.0.5"),
      publicIPv6: v6 === null ? null : publicIPv6,
      backendType: "host-gw",
      backendData: undefined,
      backendV6Data: undefined,
    },
    key: "/coreos.com/network/subnets/x",
    etcdLeaseId: "7",
    createRevision: 5,
    modRevision: 5,
  };
}

const V4_PART: PeerFamily = {
  family: 4,
  subnet: "10.244.5.0/24",
  subnetAddress: "10.244.5.0",
  publicAddress: "198.18.0.5",
};
const V6_PART: PeerFamily = {
  family: 6,
  subnet: "fd00:10:244:5::/64",
  subnetAddress: "fd00:10:244:5::",
  publicAddress: "2001:db8:18::5",
};

describe("sharedFamilies: the families this node and the peer both have, IPv4 first", () => {
  it.each<[string, NodeFacts, Lease, PeerFamily[]]>([
    [
      "dual-stack node, dual-stack peer",
      DUAL_NODE,
      lease("10.244.5.0/24", "fd00:10:244:5::/64"),
      [V4_PART, V6_PART],
    ],
    ["dual-stack node, IPv4-only peer", DUAL_NODE, lease("10.244.5.0/24", null), [V4_PART]],
    ["dual-stack node, IPv6-only peer", DUAL_NODE, lease(null, "fd00:10:244:5::/64"), [V6_PART]],
    [
      "dual-stack node, dual-stack peer without PublicIPv6: IPv4 only",
      DUAL_NODE,
      lease("10.244.5.0/24", "fd00:10:244:5::/64", null),
      [V4_PART],
    ],
    [
      "IPv4-only node, dual-stack peer: IPv4 only (as flanneld)",
      V4_NODE,
      lease("10.244.5.0/24", "fd00:10:244:5::/64"),
      [V4_PART],
    ],
    ["IPv4-only node, IPv6-only peer: nothing", V4_NODE, lease(null, "fd00:10:244:5::/64"), []],
    [
      "IPv6-only node, dual-stack peer: IPv6 only",
      V6_NODE,
      lease("10.244.5.0/24", "fd00:10:244:5::/64"),
      [V6_PART],
    ],
    ["IPv6-only node, IPv6-only peer", V6_NODE, lease(null, "fd00:10:244:5::/64"), [V6_PART]],
    ["IPv6-only node, IPv4-only peer: nothing", V6_NODE, lease("10.244.5.0/24", null), []],
    [
      "a longer IPv6 prefix keeps its spelling",
      DUAL_NODE,
      lease(null, "fd00:10:244:5:8000::/65", "2001:db8:18:0:1::5"),
      [
        {
          family: 6,
          subnet: "fd00:10:244:5:8000::/65",
          subnetAddress: "fd00:10:244:5:8000::",
          publicAddress: "2001:db8:18:0:1::5",
        },
      ],
    ],
  ])("%s", (_name, node, peer, expected) => {
    expect(sharedFamilies(node, peer)).toEqual(expected);
  });
});

function program(state: PeerState, reason: string | undefined, family: Family = 4): PeerProgram {
  const route = ownedRoute({
    family,
    dst: family === 4 ? "10.244.5.0/24" : "fd00:10:244:5::/64",
    gateway: family === 4 ? "198.18.0.5" : "2001:db8:18::5",
    dev: "eth0",
    onlink: false,
  });
  return {
    objects: state === "programmed" ? [route] : [],
    status: reason === undefined ? { state } : { state, reason },
  };
}

describe("combineFamilies: one verdict per peer", () => {
  it("a peer sharing no family is unreachable, naming it, with nothing programmed", () => {
    expect(combineFamilies([], "fd00:10:244:5::/64")).toEqual({
      objects: [],
      status: {
        state: "unreachable",
        reason: "peer fd00:10:244:5::/64 shares no address family with this node; not programmed",
      },
    });
  });

  it("one family: its program as it is", () => {
    const only = program("programmed", "route via 198.18.0.5 dev eth0");
    expect(combineFamilies([{ family: 4, program: only }], "10.244.5.0/24")).toBe(only);
    const mismatch = program("backend-mismatch", "peer x uses VNI 2");
    expect(combineFamilies([{ family: 6, program: mismatch }], "x")).toBe(mismatch);
  });

  it.each<[string, PeerProgram, PeerProgram, PeerState, string, number]>([
    [
      "both programmed",
      program("programmed", "route via 198.18.0.5 dev eth0"),
      program("programmed", "route via 2001:db8:18::5 dev eth0", 6),
      "programmed",
      "IPv4: route via 198.18.0.5 dev eth0; IPv6: route via 2001:db8:18::5 dev eth0",
      2,
    ],
    [
      "IPv6 a mismatch: IPv4's objects stay, the verdict is the mismatch",
      program("programmed", "vxlan via flannel.1 to 198.18.0.5"),
      program(
        "backend-mismatch",
        "peer x publishes no vxlan BackendV6Data for its IPv6 subnet; not programmed",
        6,
      ),
      "backend-mismatch",
      "IPv4: vxlan via flannel.1 to 198.18.0.5; IPv6: peer x publishes no vxlan BackendV6Data for its IPv6 subnet; not programmed",
      1,
    ],
    [
      "IPv4 unreachable, IPv6 programmed",
      program("unreachable", "peer 198.19.0.5 is not on-link on eth0"),
      program("programmed", "route via 2001:db8:18::5 dev eth0", 6),
      "unreachable",
      "IPv4: peer 198.19.0.5 is not on-link on eth0; IPv6: route via 2001:db8:18::5 dev eth0",
      1,
    ],
    [
      "both failing: the first family's verdict",
      program("unreachable", "not on-link"),
      program("backend-mismatch", "VNI 2", 6),
      "unreachable",
      "IPv4: not on-link; IPv6: VNI 2",
      0,
    ],
    [
      "a program without a reason is named by its state",
      program("programmed", undefined),
      program("programmed", undefined, 6),
      "programmed",
      "IPv4: programmed; IPv6: programmed",
      2,
    ],
  ])("%s", (_name, v4, v6, state, reason, objects) => {
    const combined = combineFamilies(
      [
        { family: 4, program: v4 },
        { family: 6, program: v6 },
      ],
      "10.244.5.0/24+fd00:10:244:5::/64",
    );
    expect(combined.status).toEqual({ state, reason });
    expect(combined.objects).toHaveLength(objects);
    expect(combined.objects).toEqual([...v4.objects, ...v6.objects]);
  });
});
