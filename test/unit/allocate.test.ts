import { describe, it, expect } from "vitest";
import { formatCidr, parseCidr, parseIPv4, sizeOf } from "../../src/ip/ipv4.js";
import { parseNetworkConfig, type NetworkConfig } from "../../src/config/network-config.js";
import {
  chooseSubnet,
  isCompatible,
  type AllocationDecision,
  type AllocationInput,
} from "../../src/lease/allocate.js";
import { subnetKey } from "../../src/lease/key.js";
import type { Lease } from "../../src/lease/lease.js";

const OUR_IP = "192.168.1.10";
/** Allocation never looks at the backend; any parsed one will do. */
const BACKEND = parseNetworkConfig('{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}').config.backend;

/** A config like flannel's defaults: min = network + one subnet, max = last subnet. */
function config(network: string, subnetLen = 24, min?: string, max?: string): NetworkConfig {
  const net = parseCidr(network);
  const size = sizeOf(subnetLen);
  return {
    enableIPv4: true,
    ipv6: undefined,
    network: net,
    subnetLen,
    subnetMin: min === undefined ? net.ip + size : parseIPv4(min),
    subnetMax: max === undefined ? net.ip + sizeOf(net.prefixLen) - size : parseIPv4(max),
    backend: BACKEND,
  };
}

let revision = 0;
function lease(cidr: string, publicIP = "192.168.1.99"): Lease {
  const subnet = parseCidr(cidr);
  revision++;
  return {
    subnet,
    attrs: {
      publicIP: parseIPv4(publicIP),
      publicIPv6: null,
      backendType: "host-gw",
      backendData: undefined,
      backendV6Data: undefined,
    },
    key: subnetKey("/coreos.com/network", subnet),
    etcdLeaseId: "7",
    createRevision: revision,
    modRevision: revision,
  };
}

function input(over: Partial<AllocationInput>): AllocationInput {
  return {
    config: config("10.244.0.0/16"),
    leases: [],
    publicIP: parseIPv4(OUR_IP),
    previousSubnet: undefined,
    random: () => 0,
    ...over,
  };
}

/** The decision with subnets and leases written as CIDR text, for readable expectations. */
function summary(decision: AllocationDecision): Record<string, unknown> {
  const stale = decision.staleOwn.map((l) => formatCidr(l.subnet));
  switch (decision.kind) {
    case "reuse":
      return { kind: "reuse", subnet: formatCidr(decision.lease.subnet), stale };
    case "create":
      return { kind: "create", subnet: formatCidr(decision.subnet), reason: decision.reason, stale };
    case "exhausted":
      return {
        kind: "exhausted",
        network: decision.network,
        poolSize: decision.poolSize,
        inUse: decision.inUse,
        stale,
      };
  }
}

describe("isCompatible", () => {
  const cfg = config("10.244.0.0/16", 24, "10.244.10.0", "10.244.20.0");
  it.each([
    ["10.244.10.0/24", true],
    ["10.244.20.0/24", true],
    ["10.244.15.0/24", true],
    ["10.244.9.0/24", false],
    ["10.244.21.0/24", false],
    ["10.244.15.0/25", false],
    ["10.244.14.0/23", false],
    ["10.245.15.0/24", false],
  ])("%s → %s", (cidr, expected) => {
    expect(isCompatible(parseCidr(cidr), cfg)).toBe(expected);
  });
});

describe("chooseSubnet", () => {
  it.each<[string, Partial<AllocationInput>, Record<string, unknown>]>([
    [
      "reuses the lease held for our PublicIP",
      { leases: [lease("10.244.1.0/24"), lease("10.244.7.0/24", OUR_IP), lease("10.244.9.0/24")] },
      { kind: "reuse", subnet: "10.244.7.0/24", stale: [] },
    ],
    [
      "the previous subnet, free, wins over another lease with our IP (unlike flannel)",
      { leases: [lease("10.244.7.0/24", OUR_IP)], previousSubnet: parseCidr("10.244.3.0/24") },
      { kind: "create", subnet: "10.244.3.0/24", reason: "previous-subnet", stale: [] },
    ],
    [
      "our lease on the previous subnet wins over a lease with our IP earlier in key order",
      {
        leases: [lease("10.244.2.0/24", OUR_IP), lease("10.244.3.0/24", OUR_IP)],
        previousSubnet: parseCidr("10.244.3.0/24"),
      },
      { kind: "reuse", subnet: "10.244.3.0/24", stale: [] },
    ],
    [
      "the previous subnet held by another node: our other lease is reused",
      {
        leases: [lease("10.244.3.0/24"), lease("10.244.7.0/24", OUR_IP)],
        previousSubnet: parseCidr("10.244.3.0/24"),
      },
      { kind: "reuse", subnet: "10.244.7.0/24", stale: [] },
    ],
    [
      "reuses the first compatible one and reports incompatible ones with our IP as stale",
      {
        leases: [
          lease("10.244.0.0/24", OUR_IP), // below SubnetMin
          lease("10.244.8.0/25", OUR_IP), // wrong length
          lease("10.244.7.0/24", OUR_IP),
          lease("10.244.5.0/24", OUR_IP),
        ],
      },
      { kind: "reuse", subnet: "10.244.7.0/24", stale: ["10.244.0.0/24", "10.244.8.0/25"] },
    ],
    [
      "an incompatible own lease is stale and a fresh subnet is chosen (the stale one still counts as taken)",
      { leases: [lease("10.244.0.0/23", OUR_IP)] },
      { kind: "create", subnet: "10.244.2.0/24", reason: "free", stale: ["10.244.0.0/23"] },
    ],
    [
      "previous subnet free → reused",
      { leases: [lease("10.244.1.0/24")], previousSubnet: parseCidr("10.244.42.0/24") },
      { kind: "create", subnet: "10.244.42.0/24", reason: "previous-subnet", stale: [] },
    ],
    [
      "previous subnet from FLANNEL_SUBNET with host bits is normalised",
      { previousSubnet: { ip: parseIPv4("10.244.42.1"), prefixLen: 24 } },
      { kind: "create", subnet: "10.244.42.0/24", reason: "previous-subnet", stale: [] },
    ],
    [
      "previous subnet taken → a free one",
      { leases: [lease("10.244.42.0/24")], previousSubnet: parseCidr("10.244.42.0/24") },
      { kind: "create", subnet: "10.244.1.0/24", reason: "free", stale: [] },
    ],
    [
      "previous subnet overlapped by a larger lease → a free one",
      { leases: [lease("10.244.40.0/21")], previousSubnet: parseCidr("10.244.42.0/24") },
      { kind: "create", subnet: "10.244.1.0/24", reason: "free", stale: [] },
    ],
    [
      "previous subnet overlapped by a smaller lease → a free one",
      { leases: [lease("10.244.42.128/25")], previousSubnet: parseCidr("10.244.42.0/24") },
      { kind: "create", subnet: "10.244.1.0/24", reason: "free", stale: [] },
    ],
    [
      "previous subnet of the wrong length → a free one",
      { previousSubnet: parseCidr("10.244.42.0/25") },
      { kind: "create", subnet: "10.244.1.0/24", reason: "free", stale: [] },
    ],
    [
      "previous subnet outside [min,max] → a free one",
      { previousSubnet: parseCidr("10.244.0.0/24") },
      { kind: "create", subnet: "10.244.1.0/24", reason: "free", stale: [] },
    ],
    [
      "previous subnet outside the network → a free one",
      { previousSubnet: parseCidr("10.9.3.0/24") },
      { kind: "create", subnet: "10.244.1.0/24", reason: "free", stale: [] },
    ],
    [
      "starts at SubnetMin, not at the network address",
      { config: config("10.244.0.0/16", 24, "10.244.100.0", "10.244.200.0") },
      { kind: "create", subnet: "10.244.100.0/24", reason: "free", stale: [] },
    ],
    [
      "never goes past SubnetMax",
      {
        config: config("10.244.0.0/16", 24, "10.244.100.0", "10.244.101.0"),
        leases: [lease("10.244.100.0/24")],
        random: () => 0.999,
      },
      { kind: "create", subnet: "10.244.101.0/24", reason: "free", stale: [] },
    ],
    [
      "skips subnets overlapped by leases of other lengths",
      { leases: [lease("10.244.0.0/22"), lease("10.244.4.64/26"), lease("10.244.6.0/23")] },
      { kind: "create", subnet: "10.244.5.0/24", reason: "free", stale: [] },
    ],
    [
      "leases with bad attrs (PublicIP 0.0.0.0 placeholder) still take their subnet",
      { leases: [lease("10.244.1.0/24", "0.0.0.0")] },
      { kind: "create", subnet: "10.244.2.0/24", reason: "free", stale: [] },
    ],
    [
      "exhausted: every pool subnet taken",
      {
        config: config("10.244.0.0/16", 24, "10.244.1.0", "10.244.4.0"),
        leases: [
          lease("10.244.0.0/23"),
          lease("10.244.2.0/24"),
          lease("10.244.3.128/25"),
          lease("10.244.4.0/24"),
        ],
      },
      { kind: "exhausted", network: "10.244.0.0/16", poolSize: 4, inUse: 4, stale: [] },
    ],
    [
      "exhausted with a stale own lease",
      {
        config: config("10.244.0.0/28", 30),
        leases: [lease("10.244.0.4/30"), lease("10.244.0.8/30"), lease("10.244.0.12/31", OUR_IP)],
        previousSubnet: parseCidr("10.244.0.8/30"),
      },
      { kind: "exhausted", network: "10.244.0.0/28", poolSize: 3, inUse: 3, stale: ["10.244.0.12/31"] },
    ],
    [
      "SubnetMin > SubnetMax: an empty pool",
      { config: config("10.244.0.0/16", 24, "10.244.9.0", "10.244.8.0") },
      { kind: "exhausted", network: "10.244.0.0/16", poolSize: 0, inUse: 0, stale: [] },
    ],
    [
      "the pool may end at 255.255.255.0 without wrapping",
      {
        config: config("255.255.0.0/16", 24, "255.255.250.0"),
        leases: [lease("255.255.251.0/24")],
        random: () => 0.999999,
      },
      { kind: "create", subnet: "255.255.255.0/24", reason: "free", stale: [] },
    ],
  ])("%s", (_name, over, expected) => {
    expect(summary(chooseSubnet(input(over)))).toEqual(expected);
  });

  it("picks uniformly among the first maxCandidates free subnets only", () => {
    // 10.244.1–3 are taken; free ones start at .4. With 100 candidates, .4 … .103.
    const leases = [lease("10.244.1.0/24"), lease("10.244.2.0/24"), lease("10.244.3.0/24")];
    const pick = (r: number, maxCandidates?: number): string =>
      summary(chooseSubnet(input({ leases, random: () => r, maxCandidates }))).subnet as string;
    expect(pick(0)).toBe("10.244.4.0/24");
    expect(pick(0.5)).toBe("10.244.54.0/24");
    expect(pick(0.999999)).toBe("10.244.103.0/24");
    expect(pick(1)).toBe("10.244.103.0/24"); // a misbehaving random never indexes past the end
    expect(pick(0.999999, 3)).toBe("10.244.6.0/24");
  });

  it("never picks a taken subnet, whatever random returns", () => {
    const leases = [1, 2, 4, 5, 7, 9, 10].map((n) => lease(`10.244.${n}.0/24`));
    const cfg = config("10.244.0.0/16", 24, "10.244.1.0", "10.244.10.0");
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) {
      const r = i / 30;
      const decision = summary(chooseSubnet(input({ config: cfg, leases, random: () => r })));
      seen.add(decision.subnet as string);
    }
    expect([...seen].sort()).toEqual(["10.244.3.0/24", "10.244.6.0/24", "10.244.8.0/24"]);
  });

  it("handles a /8 network with 5,000 /24 leases", () => {
    const cfg = config("10.0.0.0/8");
    // Take the first 5,000 pool subnets, shuffled so that nothing relies on input order.
    const leases: Lease[] = [];
    for (let n = 1; n <= 5000; n++) leases.push(lease(`10.${n >> 8}.${n & 255}.0/24`));
    leases.reverse();
    const first = summary(chooseSubnet(input({ config: cfg, leases, random: () => 0 })));
    expect(first).toEqual({ kind: "create", subnet: "10.19.137.0/24", reason: "free", stale: [] }); // n = 5001
    const last = summary(chooseSubnet(input({ config: cfg, leases, random: () => 0.999999 })));
    expect(last.subnet).toBe("10.19.236.0/24"); // n = 5100
  });

  it("counts a /8 pool of /24s when exhausted", () => {
    const cfg = config("10.0.0.0/8");
    const leases = [lease("10.0.0.0/9"), lease("10.128.0.0/9")];
    expect(summary(chooseSubnet(input({ config: cfg, leases })))).toEqual({
      kind: "exhausted",
      network: "10.0.0.0/8",
      poolSize: 65535,
      inUse: 65535,
      stale: [],
    });
  });
});
