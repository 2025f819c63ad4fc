import { describe, it, expect } from "vitest";
import { formatCidr, parseCidr, parseIPv4, sizeOf, type Subnet } from "../../src/ip/ipv4.js";
import { formatCidr6, parseCidr6, parseIPv6, type Subnet6 } from "../../src/ip/ipv6.js";
import { parseNetworkConfig, type NetworkConfig } from "../../src/config/network-config.js";
import {
  chooseSubnet,
  isCompatible,
  isIpv6Compatible,
  leaseFits,
  poolSizeOf,
  poolSizeOf6,
  type AllocationDecision,
  type AllocationInput,
} from "../../src/lease/allocate.js";
import { exhaustedMessage } from "../../src/lease/keeper.js";
import { leaseName, subnetKey } from "../../src/lease/key.js";
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

// ---- IPv6: dual-stack and IPv6-only ---------------------------------------------------------------

const OUR_IPV6 = "2001:db8:18::10";
const DUAL = parseNetworkConfig(
  '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}',
).config;
const V6_ONLY = parseNetworkConfig(
  '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}',
).config;

/**
 * A lease of any family mix: `v4` null for IPv6-only (0.0.0.0/0 and PublicIP 0.0.0.0, as flannel writes
 * it), `v6` null for IPv4-only.
 */
function lease46(
  v4: string | null,
  v6: string | null,
  publicIP = "192.168.1.99",
  publicIPv6: string | null = "2001:db8:18::99",
): Lease {
  const subnet = v4 === null ? parseCidr("0.0.0.0/0") : parseCidr(v4);
  const ipv6Subnet = v6 === null ? undefined : parseCidr6(v6);
  revision++;
  return {
    subnet,
    ipv6Subnet,
    attrs: {
      publicIP: v4 === null ? 0 : parseIPv4(publicIP),
      publicIPv6: v6 === null ? null : publicIPv6,
      backendType: "host-gw",
      backendData: undefined,
      backendV6Data: undefined,
    },
    key: subnetKey("/coreos.com/network", subnet, ipv6Subnet),
    etcdLeaseId: "7",
    createRevision: revision,
    modRevision: revision,
  };
}

const name46 = (l: { subnet: Subnet; ipv6Subnet?: Subnet6 | undefined }): string => leaseName(l);

/** Like summary, with both families of every subnet and lease. */
function summary46(decision: AllocationDecision): Record<string, unknown> {
  const stale = decision.staleOwn.map(name46);
  switch (decision.kind) {
    case "reuse":
      return { kind: "reuse", lease: name46(decision.lease), stale };
    case "create":
      return {
        kind: "create",
        subnet: formatCidr(decision.subnet),
        ipv6Subnet: decision.ipv6Subnet === undefined ? undefined : formatCidr6(decision.ipv6Subnet),
        reason: decision.reason,
        stale,
      };
    case "exhausted":
      return {
        kind: "exhausted",
        family: decision.family,
        network: decision.network,
        poolSize: decision.poolSize,
        inUse: decision.inUse,
        stale,
      };
  }
}

function input46(over: Partial<AllocationInput>): AllocationInput {
  return input({ config: DUAL, publicIPv6: OUR_IPV6, ...over });
}

describe("isIpv6Compatible / leaseFits (flannel's isIPv6SubnetConfigCompat)", () => {
  const pool = parseNetworkConfig(
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetMin":"fd00:10:244:10::","IPv6SubnetMax":"fd00:10:244:20::","Backend":{"Type":"host-gw"}}',
  ).config;

  it.each<[string | undefined, boolean]>([
    ["fd00:10:244:10::/64", true],
    ["fd00:10:244:20::/64", true],
    ["fd00:10:244:15::/64", true],
    ["fd00:10:244:f::/64", false],
    ["fd00:10:244:21::/64", false],
    ["fd00:10:244:15::/65", false],
    ["fd00:10:244:14::/63", false],
    ["fd00:10:245:15::/64", false],
    [undefined, false], // IPv6 on: a lease without an IPv6 subnet does not fit
  ])("with IPv6 on, %s → %s", (cidr6, expected) => {
    expect(isIpv6Compatible(cidr6 === undefined ? undefined : parseCidr6(cidr6), pool)).toBe(expected);
  });

  it("with IPv6 off only a lease without an IPv6 subnet fits", () => {
    const v4only = config("10.244.0.0/16");
    expect(isIpv6Compatible(undefined, v4only)).toBe(true);
    expect(isIpv6Compatible(parseCidr6("fd00:10:244:1::/64"), v4only)).toBe(false);
  });

  it.each<[string, NetworkConfig, string | null, string | null, boolean]>([
    ["dual-stack lease, dual-stack config", DUAL, "10.244.5.0/24", "fd00:10:244:5::/64", true],
    ["IPv4-only lease, dual-stack config", DUAL, "10.244.5.0/24", null, false],
    ["IPv6-only lease, dual-stack config", DUAL, null, "fd00:10:244:5::/64", false],
    ["IPv6-only lease, IPv6-only config", V6_ONLY, null, "fd00:10:244:5::/64", true],
    ["dual-stack lease, IPv6-only config", V6_ONLY, "10.244.5.0/24", "fd00:10:244:5::/64", false],
    ["IPv4-only lease, IPv4-only config", config("10.244.0.0/16"), "10.244.5.0/24", null, true],
    [
      "dual-stack lease, IPv4-only config",
      config("10.244.0.0/16"),
      "10.244.5.0/24",
      "fd00:10:244:5::/64",
      false,
    ],
    ["IPv6 subnet outside the pool", DUAL, "10.244.5.0/24", "fd00:10:244:100::/64", false],
    ["IPv4 subnet outside the pool", DUAL, "10.244.0.0/24", "fd00:10:244:5::/64", false],
  ])("leaseFits: %s → %s", (_name, cfg, v4, v6, expected) => {
    expect(leaseFits(lease46(v4, v6), cfg)).toBe(expected);
  });
});

describe("poolSizeOf6", () => {
  it.each<[string, bigint]>([
    // /56 in /64s from IPv6SubnetMin (the second) to the last: 255, like IPv4's /16 in /24s
    ['"IPv6Network":"fd00:10:244::/56"', 255n],
    ['"IPv6Network":"fd00:10:244::/62"', 3n],
    ['"IPv6Network":"fd00:10:244::/48"', 65535n],
    ['"IPv6Network":"fd00::/8"', (1n << 56n) - 1n],
    ['"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":60', 15n],
    [
      '"IPv6Network":"fd00:10:244::/56","IPv6SubnetMin":"fd00:10:244:10::","IPv6SubnetMax":"fd00:10:244:1f::"',
      16n,
    ],
  ])("%s → %s", (fields, size) => {
    const cfg = parseNetworkConfig(
      `{"Network":"10.244.0.0/16","EnableIPv6":true,${fields},"Backend":{"Type":"host-gw"}}`,
    ).config;
    expect(poolSizeOf6(cfg)).toBe(size);
  });

  it("is 0 without IPv6, and poolSizeOf is 0 without IPv4", () => {
    expect(poolSizeOf6(config("10.244.0.0/16"))).toBe(0n);
    expect(poolSizeOf(V6_ONLY)).toBe(0);
    expect(poolSizeOf6(V6_ONLY)).toBe(255n);
  });
});

describe("chooseSubnet with IPv6", () => {
  it.each<[string, Partial<AllocationInput>, Record<string, unknown>]>([
    [
      "dual-stack, empty cluster: the first free subnet of each pool, one key for both",
      {},
      {
        kind: "create",
        subnet: "10.244.1.0/24",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "free",
        stale: [],
      },
    ],
    [
      "dual-stack: each family skips what its own leases hold (IPv4-only, dual-stack and IPv6-only leases alike)",
      {
        leases: [
          lease46("10.244.1.0/24", null),
          lease46("10.244.2.0/24", "fd00:10:244:1::/64"),
          lease46(null, "fd00:10:244:2::/64"),
          lease46(null, "fd00:10:244:4::/63"),
        ],
      },
      {
        kind: "create",
        subnet: "10.244.3.0/24",
        ipv6Subnet: "fd00:10:244:3::/64",
        reason: "free",
        stale: [],
      },
    ],
    [
      "dual-stack: an IPv6-only lease's 0.0.0.0/0 takes no IPv4 subnet",
      { leases: [lease46(null, "fd00:10:244:1::/64")] },
      {
        kind: "create",
        subnet: "10.244.1.0/24",
        ipv6Subnet: "fd00:10:244:2::/64",
        reason: "free",
        stale: [],
      },
    ],
    [
      "dual-stack: random picks among each pool's first 100 free subnets",
      { random: () => 0.999 },
      {
        kind: "create",
        subnet: "10.244.100.0/24",
        ipv6Subnet: "fd00:10:244:64::/64",
        reason: "free",
        stale: [],
      },
    ],
    [
      "dual-stack: our own dual-stack lease is reused",
      {
        leases: [
          lease46("10.244.1.0/24", "fd00:10:244:1::/64"),
          lease46("10.244.7.0/24", "fd00:10:244:9::/64", OUR_IP, OUR_IPV6),
        ],
      },
      { kind: "reuse", lease: "10.244.7.0/24+fd00:10:244:9::/64", stale: [] },
    ],
    [
      "dual-stack: ours is by PublicIP, whatever PublicIPv6 it carries (flannel's findLeaseByIP)",
      { leases: [lease46("10.244.7.0/24", "fd00:10:244:9::/64", OUR_IP, "2001:db8:18::77")] },
      { kind: "reuse", lease: "10.244.7.0/24+fd00:10:244:9::/64", stale: [] },
    ],
    [
      "dual-stack: a lease with our PublicIPv6 but another PublicIP is not ours",
      { leases: [lease46("10.244.1.0/24", "fd00:10:244:1::/64", "192.168.1.77", OUR_IPV6)] },
      {
        kind: "create",
        subnet: "10.244.2.0/24",
        ipv6Subnet: "fd00:10:244:2::/64",
        reason: "free",
        stale: [],
      },
    ],
    [
      "IPv6 turned on: our IPv4-only lease is stale, and the previous IPv4 subnet is kept beside a new IPv6 one",
      {
        leases: [lease46("10.244.1.0/24", "fd00:10:244:1::/64"), lease46("10.244.7.0/24", null, OUR_IP)],
        previousSubnet: parseCidr("10.244.7.0/24"),
      },
      {
        kind: "create",
        subnet: "10.244.7.0/24",
        ipv6Subnet: "fd00:10:244:2::/64",
        reason: "previous-subnet",
        stale: ["10.244.7.0/24"],
      },
    ],
    [
      "IPv6 turned on without a subnet file: the stale IPv4-only lease still counts as taken (as flannel)",
      { leases: [lease46("10.244.1.0/24", null, OUR_IP)] },
      {
        kind: "create",
        subnet: "10.244.2.0/24",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "free",
        stale: ["10.244.1.0/24"],
      },
    ],
    [
      "IPv6 turned off: our dual-stack lease is stale and its IPv4 subnet is kept (previous subnet)",
      {
        config: config("10.244.0.0/16"),
        leases: [lease46("10.244.7.0/24", "fd00:10:244:7::/64", OUR_IP, OUR_IPV6)],
        previousSubnet: parseCidr("10.244.7.0/24"),
        previousIpv6Subnet: parseCidr6("fd00:10:244:7::/64"),
      },
      {
        kind: "create",
        subnet: "10.244.7.0/24",
        ipv6Subnet: undefined,
        reason: "previous-subnet",
        stale: ["10.244.7.0/24+fd00:10:244:7::/64"],
      },
    ],
    [
      "the previous subnets of both families (FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET) are created again",
      {
        leases: [lease46("10.244.1.0/24", "fd00:10:244:1::/64")],
        previousSubnet: parseCidr("10.244.7.0/24"),
        previousIpv6Subnet: parseCidr6("fd00:10:244:9::/64"),
      },
      {
        kind: "create",
        subnet: "10.244.7.0/24",
        ipv6Subnet: "fd00:10:244:9::/64",
        reason: "previous-subnet",
        stale: [],
      },
    ],
    [
      "FLANNEL_IPV6_SUBNET is the gateway (fd00:10:244:9::1/64): its host bits are dropped",
      {
        previousSubnet: { ip: parseIPv4("10.244.7.1"), prefixLen: 24 },
        previousIpv6Subnet: { ip: parseIPv6("fd00:10:244:9::1"), prefixLen: 64 },
      },
      {
        kind: "create",
        subnet: "10.244.7.0/24",
        ipv6Subnet: "fd00:10:244:9::/64",
        reason: "previous-subnet",
        stale: [],
      },
    ],
    [
      "our lease on both previous subnets wins over another lease of ours",
      {
        leases: [
          lease46("10.244.2.0/24", "fd00:10:244:2::/64", OUR_IP),
          lease46("10.244.7.0/24", "fd00:10:244:9::/64", OUR_IP),
        ],
        previousSubnet: parseCidr("10.244.7.0/24"),
        previousIpv6Subnet: parseCidr6("fd00:10:244:9::/64"),
      },
      { kind: "reuse", lease: "10.244.7.0/24+fd00:10:244:9::/64", stale: [] },
    ],
    [
      "the previous IPv6 subnet held by another node: the previous IPv4 subnet is kept, a free IPv6 one taken",
      {
        leases: [lease46(null, "fd00:10:244:9::/64", "0.0.0.0", "2001:db8:18::77")],
        previousSubnet: parseCidr("10.244.7.0/24"),
        previousIpv6Subnet: parseCidr6("fd00:10:244:9::/64"),
      },
      {
        kind: "create",
        subnet: "10.244.7.0/24",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "previous-subnet",
        stale: [],
      },
    ],
    [
      "the previous IPv6 subnet overlapped by a larger IPv6 lease → a free one",
      {
        leases: [lease46("10.244.3.0/24", "fd00:10:244:8::/62")],
        previousSubnet: parseCidr("10.244.7.0/24"),
        previousIpv6Subnet: parseCidr6("fd00:10:244:9::/64"),
      },
      {
        kind: "create",
        subnet: "10.244.7.0/24",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "previous-subnet",
        stale: [],
      },
    ],
    [
      "a previous IPv6 subnet that the IPv6 pool does not allow is ignored",
      {
        previousSubnet: parseCidr("10.244.7.0/24"),
        previousIpv6Subnet: parseCidr6("fd00:10:245:9::/64"),
      },
      {
        kind: "create",
        subnet: "10.244.7.0/24",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "previous-subnet",
        stale: [],
      },
    ],
    [
      "a previous IPv6 subnet of the wrong length is ignored",
      { previousIpv6Subnet: parseCidr6("fd00:10:244:9::/80") },
      {
        kind: "create",
        subnet: "10.244.1.0/24",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "free",
        stale: [],
      },
    ],
    [
      "our own lease with the IPv6 subnet of an older IPv6SubnetLen is stale",
      { leases: [lease46("10.244.7.0/24", "fd00:10:244:8::/63", OUR_IP)] },
      {
        kind: "create",
        subnet: "10.244.1.0/24",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "free",
        stale: ["10.244.7.0/24+fd00:10:244:8::/63"],
      },
    ],
    [
      "IPv6-only: a fresh lease is 0.0.0.0/0 with a free IPv6 subnet",
      { config: V6_ONLY },
      { kind: "create", subnet: "0.0.0.0/0", ipv6Subnet: "fd00:10:244:1::/64", reason: "free", stale: [] },
    ],
    [
      "IPv6-only: ours is by PublicIPv6, never another IPv6-only node's lease with the same PublicIP 0.0.0.0",
      {
        config: V6_ONLY,
        leases: [
          lease46(null, "fd00:10:244:1::/64", "0.0.0.0", "2001:db8:18::77"),
          lease46(null, "fd00:10:244:5::/64", "0.0.0.0", OUR_IPV6),
        ],
      },
      { kind: "reuse", lease: "fd00:10:244:5::/64", stale: [] },
    ],
    [
      "IPv6-only: another IPv6-only node's 0.0.0.0-0 key is not ours and not in the way",
      { config: V6_ONLY, leases: [lease46(null, "fd00:10:244:1::/64", "0.0.0.0", "2001:db8:18::77")] },
      { kind: "create", subnet: "0.0.0.0/0", ipv6Subnet: "fd00:10:244:2::/64", reason: "free", stale: [] },
    ],
    [
      "IPv6-only without a PublicIPv6: no lease is ours",
      {
        config: V6_ONLY,
        publicIPv6: null,
        leases: [lease46(null, "fd00:10:244:1::/64", "0.0.0.0", null)],
      },
      { kind: "create", subnet: "0.0.0.0/0", ipv6Subnet: "fd00:10:244:2::/64", reason: "free", stale: [] },
    ],
    [
      "IPv6-only: our old dual-stack lease is stale",
      { config: V6_ONLY, leases: [lease46("10.244.7.0/24", "fd00:10:244:7::/64", OUR_IP, OUR_IPV6)] },
      {
        kind: "create",
        subnet: "0.0.0.0/0",
        ipv6Subnet: "fd00:10:244:1::/64",
        reason: "free",
        stale: ["10.244.7.0/24+fd00:10:244:7::/64"],
      },
    ],
    [
      "IPv6-only: the previous IPv6 subnet is created again; FLANNEL_SUBNET is ignored",
      {
        config: V6_ONLY,
        previousSubnet: parseCidr("10.244.7.0/24"),
        previousIpv6Subnet: parseCidr6("fd00:10:244:9::/64"),
      },
      {
        kind: "create",
        subnet: "0.0.0.0/0",
        ipv6Subnet: "fd00:10:244:9::/64",
        reason: "previous-subnet",
        stale: [],
      },
    ],
    [
      "IPv6-only: IPv4 leases are no obstacle",
      { config: V6_ONLY, leases: [lease46("10.244.1.0/24", null), lease46("10.244.2.0/24", null)] },
      { kind: "create", subnet: "0.0.0.0/0", ipv6Subnet: "fd00:10:244:1::/64", reason: "free", stale: [] },
    ],
  ])("%s", (_name, over, expected) => {
    expect(summary46(chooseSubnet(input46(over)))).toEqual(expected);
  });

  it("never picks a taken IPv6 subnet, whatever random returns", () => {
    const cfg = parseNetworkConfig(
      '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetMax":"fd00:10:244:a::","Backend":{"Type":"host-gw"}}',
    ).config;
    const leases = [1, 2, 4, 5, 7, 9, 10].map((n) => lease46(null, `fd00:10:244:${n.toString(16)}::/64`));
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) {
      const r = i / 30;
      const decision = chooseSubnet(input46({ config: cfg, leases, random: () => r }));
      if (decision.kind !== "create") throw new Error(`not a create: ${decision.kind}`);
      seen.add(decision.ipv6Subnet === undefined ? "none" : formatCidr6(decision.ipv6Subnet));
    }
    expect([...seen].sort()).toEqual(["fd00:10:244:3::/64", "fd00:10:244:6::/64", "fd00:10:244:8::/64"]);
  });

  it("steps past 5,000 IPv6 leases in a /48 without scanning address by address", () => {
    const cfg = parseNetworkConfig(
      '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"host-gw"}}',
    ).config;
    const leases: Lease[] = [];
    for (let n = 1; n <= 5000; n++) leases.push(lease46(null, `fd00:10:0:${n.toString(16)}::/64`));
    leases.reverse();
    expect(summary46(chooseSubnet(input46({ config: cfg, leases })))).toEqual({
      kind: "create",
      subnet: "0.0.0.0/0",
      ipv6Subnet: "fd00:10:0:1389::/64", // n = 5001
      reason: "free",
      stale: [],
    });
  });

  it("an exhausted IPv6 pool names IPv6Network, its size and what is in use", () => {
    const cfg = parseNetworkConfig(
      '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/62","Backend":{"Type":"host-gw"}}',
    ).config;
    const leases = [
      lease46("10.244.1.0/24", "fd00:10:244::/63"), // holds :0 (outside the pool) and :1
      lease46(null, "fd00:10:244:2::/64"),
      lease46("10.244.3.0/24", "fd00:10:244:3::/64"),
      lease46("10.244.4.0/24", "fd00:10:244:3::/64"), // a duplicate counts once
    ];
    const decision = chooseSubnet(input46({ config: cfg, leases }));
    expect(summary46(decision)).toEqual({
      kind: "exhausted",
      family: 6,
      network: "fd00:10:244::/62",
      poolSize: 3n,
      inUse: 3,
      stale: [],
    });
    if (decision.kind !== "exhausted") throw new Error("not exhausted");
    expect(exhaustedMessage(decision.network, decision.poolSize, decision.inUse, decision.family)).toBe(
      "no free IPv6 subnet in fd00:10:244::/62: all 3 subnets of the pool are in use (3 leased); " +
        "widen IPv6Network or IPv6SubnetMin/IPv6SubnetMax, or delete stale leases",
    );
  });

  it("an exhausted IPv4 pool in a dual-stack config names Network, and IPv4 is checked first", () => {
    const cfg = parseNetworkConfig(
      '{"Network":"10.244.0.0/28","SubnetLen":30,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/62","Backend":{"Type":"host-gw"}}',
    ).config;
    const leases = [
      lease46("10.244.0.4/30", "fd00:10:244:1::/64"),
      lease46("10.244.0.8/30", "fd00:10:244:2::/64"),
      lease46("10.244.0.12/30", "fd00:10:244:3::/64"),
    ];
    const decision = chooseSubnet(input46({ config: cfg, leases }));
    expect(summary46(decision)).toEqual({
      kind: "exhausted",
      family: 4,
      network: "10.244.0.0/28",
      poolSize: 3,
      inUse: 3,
      stale: [],
    });
    if (decision.kind !== "exhausted") throw new Error("not exhausted");
    expect(exhaustedMessage(decision.network, decision.poolSize, decision.inUse, decision.family)).toBe(
      "no free subnet in 10.244.0.0/28: all 3 subnets of the pool are in use (3 leased); " +
        "widen Network or SubnetMin/SubnetMax, or delete stale leases",
    );
  });

  it("an exhausted IPv6-only pool is reported with a stale own lease beside it", () => {
    const cfg = parseNetworkConfig(
      '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/62","Backend":{"Type":"host-gw"}}',
    ).config;
    const leases = [
      lease46(null, "fd00:10:244:1::/64"),
      lease46(null, "fd00:10:244:2::/64"),
      lease46(null, "fd00:10:244:3::/64"),
      lease46("10.244.9.0/24", "fd00:10:244::/64", OUR_IP, OUR_IPV6),
    ];
    expect(summary46(chooseSubnet(input46({ config: cfg, leases })))).toEqual({
      kind: "exhausted",
      family: 6,
      network: "fd00:10:244::/62",
      poolSize: 3n,
      inUse: 3,
      stale: ["10.244.9.0/24+fd00:10:244::/64"],
    });
  });
});

describe("flannel's pkg/subnet/etcd/subnet_test.go, transcribed", () => {
  // newDummyRegistry: { "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }
  // with leases 10.3.1, .2, .4, .5 and a hand-made 10.3.31.0/24 outside the range, all at 1.1.1.1.
  const cfg = config("10.3.0.0/16", 24, "10.3.1.0", "10.3.25.0");
  const dummy = (): Lease[] =>
    ["10.3.1.0/24", "10.3.2.0/24", "10.3.4.0/24", "10.3.5.0/24", "10.3.31.0/24"].map((c) =>
      lease(c, "1.1.1.1"),
    );
  const ours = "1.2.3.4";
  const acquire = (over: Partial<AllocationInput>): Record<string, unknown> =>
    summary(chooseSubnet(input({ config: cfg, leases: dummy(), publicIP: parseIPv4(ours), ...over })));

  it("TestAcquireLease: a free subnet inside SubnetMin–SubnetMax (10.3.3.0/24 first), then reused", () => {
    expect(acquire({})).toEqual({ kind: "create", subnet: "10.3.3.0/24", reason: "free", stale: [] });
    for (let i = 0; i < 20; i++) {
      const r = i / 20;
      const picked = acquire({ random: () => r }).subnet as string;
      expect(isCompatible(parseCidr(picked), cfg)).toBe(true);
      expect(["10.3.1.0/24", "10.3.2.0/24", "10.3.4.0/24", "10.3.5.0/24"]).not.toContain(picked);
    }
    // "Acquire again, should reuse"
    expect(acquire({ leases: [...dummy(), lease("10.3.3.0/24", ours)] })).toEqual({
      kind: "reuse",
      subnet: "10.3.3.0/24",
      stale: [],
    });
  });

  it("TestAcquireLease: a previous subnet (10.3.6.0/24) is used; one the config does not allow (10.4.1.0/24) is not", () => {
    expect(acquire({ previousSubnet: parseCidr("10.3.6.0/24") })).toEqual({
      kind: "create",
      subnet: "10.3.6.0/24",
      reason: "previous-subnet",
      stale: [],
    });
    expect(acquire({ previousSubnet: parseCidr("10.4.1.0/24") })).toEqual({
      kind: "create",
      subnet: "10.3.3.0/24",
      reason: "free",
      stale: [],
    });
  });

  it("TestConfigChanged: after Network becomes 10.4.0.0/16 our 10.3.3.0/24 is stale and a subnet in range is taken", () => {
    expect(
      acquire({ config: config("10.4.0.0/16"), leases: [...dummy(), lease("10.3.3.0/24", ours)] }),
    ).toEqual({ kind: "create", subnet: "10.4.1.0/24", reason: "free", stale: ["10.3.3.0/24"] });
  });

  it("TestWatchLeaseAdded's sanity check: 10.3.30.0/24, outside SubnetMin–SubnetMax, is never acquired", () => {
    for (let i = 0; i < 50; i++) {
      const r = i / 50;
      expect(acquire({ random: () => r }).subnet).not.toBe("10.3.30.0/24");
    }
  });
});
