// Which subnets this node should hold: flannel's AcquireLease choice order (§3.1) as a pure function
// of the config, the current leases and our public address, for IPv4 and (dual-stack, IPv6-only) IPv6.
// The shell does the etcd writes.
import { maskOf, sizeOf, formatCidr, type IPv4, type Subnet } from "../ip/ipv4.js";
import { formatCidr6, maskOf6, sameSubnet6, sizeOf6, type IPv6, type Subnet6 } from "../ip/ipv6.js";
import type { NetworkConfig } from "../config/network-config.js";
import { hasIPv4 } from "./key.js";
import type { Lease } from "./lease.js";

export interface AllocationInput {
  config: NetworkConfig;
  /** Every key under <prefix>/subnets that names a subnet, including ones whose value is bad. */
  leases: readonly Lease[];
  publicIP: IPv4;
  /** This node's PublicIPv6 (canonical): what marks its leases when IPv4 is off. */
  publicIPv6?: string | null;
  /** From the node's subnet file (FLANNEL_SUBNET); host bits are dropped here. */
  previousSubnet: Subnet | undefined;
  /** From the node's subnet file (FLANNEL_IPV6_SUBNET); host bits are dropped here. */
  previousIpv6Subnet?: Subnet6 | undefined;
  /** Uniform in [0,1); injected for tests. */
  random: () => number;
  /** Free candidates collected before picking one; default 100, as flannel. */
  maxCandidates?: number;
}

export type AllocationDecision =
  /** A compatible lease already held for our PublicIP: renew it (plain put with a new etcd lease). */
  | { kind: "reuse"; lease: Lease; staleOwn: Lease[] }
  /** Create-if-absent; subnet is 0.0.0.0/0 when IPv4 is off, ipv6Subnet set when IPv6 is on. */
  | {
      kind: "create";
      subnet: Subnet;
      ipv6Subnet: Subnet6 | undefined;
      reason: "previous-subnet" | "free";
      staleOwn: Lease[];
    }
  /** No free subnet in the pool of `family`; network is its CIDR text. */
  | {
      kind: "exhausted";
      family: 4 | 6;
      network: string;
      poolSize: number | bigint;
      inUse: number;
      staleOwn: Lease[];
    };

export const DEFAULT_MAX_CANDIDATES = 100;

/** Whether an IPv4 subnet fits the config: inside [SubnetMin, SubnetMax] and exactly SubnetLen long. */
export function isCompatible(subnet: Subnet, config: NetworkConfig): boolean {
  return (
    subnet.prefixLen === config.subnetLen && subnet.ip >= config.subnetMin && subnet.ip <= config.subnetMax
  );
}

/** Whether an IPv6 subnet fits the config's IPv6 pool; without IPv6, only "none" fits (as flannel). */
export function isIpv6Compatible(subnet: Subnet6 | undefined, config: NetworkConfig): boolean {
  const pool = config.ipv6;
  if (pool === undefined) return subnet === undefined;
  return (
    subnet !== undefined &&
    subnet.prefixLen === pool.subnetLen &&
    subnet.ip >= pool.subnetMin &&
    subnet.ip <= pool.subnetMax
  );
}

/** Whether a lease's subnets fit the config in both families (IPv4-off: the empty 0.0.0.0/0). */
export function leaseFits(
  lease: { readonly subnet: Subnet; readonly ipv6Subnet?: Subnet6 | undefined },
  config: NetworkConfig,
): boolean {
  const v4 = config.enableIPv4 ? isCompatible(lease.subnet, config) : !hasIPv4(lease.subnet);
  return v4 && isIpv6Compatible(lease.ipv6Subnet, config);
}

/** A half-open address range [start, end); end may be 2^32. */
interface Range {
  start: number;
  end: number;
}

/**
 * The addresses held by leases, sorted and merged. Aligned blocks overlap exactly when their address
 * ranges intersect, so one sorted pass answers "is this candidate taken" for any mix of prefix
 * lengths in O(L log L + candidates) instead of O(candidates × leases).
 */
function takenRanges(leases: readonly Lease[]): Range[] {
  const ranges = leases
    .filter(({ subnet }) => hasIPv4(subnet))
    .map(({ subnet }) => ({ start: subnet.ip, end: subnet.ip + sizeOf(subnet.prefixLen) }))
    .sort((a, b) => a.start - b.start);
  const merged: Range[] = [];
  for (const r of ranges) {
    const last = merged.at(-1);
    if (last !== undefined && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else merged.push(r);
  }
  return merged;
}

function sameSubnet(a: Subnet, b: Subnet): boolean {
  return a.ip === b.ip && a.prefixLen === b.prefixLen;
}

function intersects(ranges: readonly Range[], start: number, end: number): boolean {
  return ranges.some((r) => r.start < end && start < r.end);
}

/** IPv6's taken ranges, as takenRanges (bigint: an IPv6 pool may hold 2^60 subnets). */
interface Range6 {
  start: IPv6;
  end: IPv6;
}

function takenRanges6(leases: readonly Lease[]): Range6[] {
  const ranges: Range6[] = [];
  for (const { ipv6Subnet } of leases) {
    if (ipv6Subnet !== undefined)
      ranges.push({ start: ipv6Subnet.ip, end: ipv6Subnet.ip + sizeOf6(ipv6Subnet.prefixLen) });
  }
  ranges.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const merged: Range6[] = [];
  for (const r of ranges) {
    const last = merged.at(-1);
    if (last !== undefined && r.start <= last.end) last.end = last.end > r.end ? last.end : r.end;
    else merged.push(r);
  }
  return merged;
}

function intersects6(ranges: readonly Range6[], start: IPv6, end: IPv6): boolean {
  return ranges.some((r) => r.start < end && start < r.end);
}

/** Whether a lease is this node's: its PublicIP, or with IPv4 off its PublicIPv6. */
function isOurs(lease: Lease, input: AllocationInput): boolean {
  if (input.config.enableIPv4) return lease.attrs.publicIP === input.publicIP;
  // flannel compares PublicIP even then, which is 0.0.0.0 on every IPv6-only node: each would take
  // the first IPv6-only lease it finds.
  return input.publicIPv6 != null && lease.attrs.publicIPv6 === input.publicIPv6;
}

/**
 * Decides how to acquire a subnet (and with IPv6 on, an IPv6 subnet beside it, as one key):
 * 1. the previous subnets (the node's subnet file) when a compatible lease of ours holds them:
 *    reused; else when no other lease overlaps them: created. They win over other leases of ours
 *    (flannel takes the first of those in key order: a hand-written or stale lease would move the
 *    node and strand its pods);
 * 2. else the first compatible lease of ours is reused;
 * 3. else per family the previous subnet while free, or else one of the first `maxCandidates`
 *    free pool subnets from SubnetMin upwards, uniformly at random.
 * "Ours" is a lease carrying our PublicIP (with IPv4 off, our PublicIPv6). Leases of ours that the
 * config no longer allows are `staleOwn` (the caller deletes them first). They count as taken, as in
 * flannel, except for the previous subnets: a node turning IPv6 on keeps its IPv4 subnet.
 */
export function chooseSubnet(input: AllocationInput): AllocationDecision {
  const { config, leases } = input;
  const maxCandidates = input.maxCandidates ?? DEFAULT_MAX_CANDIDATES;

  let previous: Subnet | undefined;
  let previous6: Subnet6 | undefined;
  if (input.previousSubnet !== undefined && config.enableIPv4) {
    const { prefixLen } = input.previousSubnet;
    previous = { ip: (input.previousSubnet.ip & maskOf(prefixLen)) >>> 0, prefixLen };
    if (!isCompatible(previous, config)) previous = undefined;
  }
  if (input.previousIpv6Subnet !== undefined && config.ipv6 !== undefined) {
    const { prefixLen } = input.previousIpv6Subnet;
    previous6 = { ip: input.previousIpv6Subnet.ip & maskOf6(prefixLen), prefixLen };
    if (!isIpv6Compatible(previous6, config)) previous6 = undefined;
  }
  // The previous subnets count only when every enabled family has one.
  const hasPrevious =
    (config.enableIPv4 ? previous !== undefined : true) &&
    (config.ipv6 !== undefined ? previous6 !== undefined : true) &&
    (previous !== undefined || previous6 !== undefined);

  let reuse: Lease | undefined;
  let reusePrevious: Lease | undefined;
  const staleOwn: Lease[] = [];
  for (const lease of leases) {
    if (!isOurs(lease, input)) continue;
    if (!leaseFits(lease, config)) staleOwn.push(lease);
    else {
      // Further compatible leases of ours are left alone: they expire unless someone renews them.
      reuse ??= lease;
      if (
        hasPrevious &&
        (previous === undefined || sameSubnet(lease.subnet, previous)) &&
        (previous6 === undefined || sameSubnet6(lease.ipv6Subnet, previous6))
      )
        reusePrevious ??= lease;
    }
  }
  if (reusePrevious !== undefined) return { kind: "reuse", lease: reusePrevious, staleOwn };

  const stale = new Set(staleOwn);
  const others = leases.filter((lease) => !stale.has(lease));
  const free4 =
    previous !== undefined &&
    !intersects(takenRanges(others), previous.ip, previous.ip + sizeOf(previous.prefixLen));
  const free6 =
    previous6 !== undefined &&
    !intersects6(takenRanges6(others), previous6.ip, previous6.ip + sizeOf6(previous6.prefixLen));
  if (hasPrevious && (previous === undefined || free4) && (previous6 === undefined || free6)) {
    return {
      kind: "create",
      subnet: previous ?? NO_IPV4_SUBNET,
      ipv6Subnet: previous6,
      reason: "previous-subnet",
      staleOwn,
    };
  }
  if (reuse !== undefined) return { kind: "reuse", lease: reuse, staleOwn };

  // Per family: the previous subnet while it is free (a node turning IPv6 on keeps its IPv4 subnet,
  // and its pods their addresses), else a free one.
  let subnet: Subnet = NO_IPV4_SUBNET;
  if (config.enableIPv4) {
    if (free4 && previous !== undefined) subnet = previous;
    else {
      const picked = pickFree4(config, takenRanges(leases), maxCandidates, input.random);
      if (typeof picked !== "number") return { ...picked, staleOwn };
      subnet = { ip: picked, prefixLen: config.subnetLen };
    }
  }
  let ipv6Subnet: Subnet6 | undefined;
  if (config.ipv6 !== undefined) {
    if (free6 && previous6 !== undefined) ipv6Subnet = previous6;
    else {
      const picked = pickFree6(config, takenRanges6(leases), maxCandidates, input.random);
      if (typeof picked !== "bigint") return { ...picked, staleOwn };
      ipv6Subnet = { ip: picked, prefixLen: config.ipv6.subnetLen };
    }
  }
  const kept = (free4 && config.enableIPv4) || (free6 && config.ipv6 !== undefined);
  return { kind: "create", subnet, ipv6Subnet, reason: kept ? "previous-subnet" : "free", staleOwn };
}

/** flannel's empty IPv4 subnet: what an IPv6-only lease holds. */
export const NO_IPV4_SUBNET: Subnet = Object.freeze({ ip: 0, prefixLen: 0 });

type Exhausted = Omit<Extract<AllocationDecision, { kind: "exhausted" }>, "staleOwn">;

function pickFree4(
  config: NetworkConfig,
  taken: readonly Range[],
  maxCandidates: number,
  random: () => number,
): IPv4 | Exhausted {
  const size = sizeOf(config.subnetLen);
  const min = config.subnetMin;
  const max = config.subnetMax;
  const free: IPv4[] = [];
  let candidate = min;
  let next = 0; // first taken range that may still reach candidate
  while (candidate <= max && free.length < maxCandidates) {
    while (next < taken.length && (taken[next]?.end ?? 0) <= candidate) next++;
    const range = taken[next];
    if (range !== undefined && range.start < candidate + size) {
      // Jump over every candidate this range touches.
      candidate = min + Math.ceil((range.end - min) / size) * size;
      continue;
    }
    free.push(candidate);
    candidate += size;
  }
  if (free.length > 0) {
    const index = Math.min(free.length - 1, Math.floor(random() * free.length));
    return free[index] ?? min;
  }
  const poolSize = poolSizeOf(config);
  return {
    kind: "exhausted",
    family: 4,
    network: formatCidr(config.network),
    poolSize,
    inUse: countInUse(taken, min, size, poolSize),
  };
}

function pickFree6(
  config: NetworkConfig,
  taken: readonly Range6[],
  maxCandidates: number,
  random: () => number,
): IPv6 | Exhausted {
  const pool = config.ipv6;
  if (pool === undefined) throw new Error("pickFree6 without an IPv6 pool");
  const size = sizeOf6(pool.subnetLen);
  const min = pool.subnetMin;
  const free: IPv6[] = [];
  let candidate = min;
  let next = 0;
  while (candidate <= pool.subnetMax && free.length < maxCandidates) {
    while (next < taken.length && (taken[next]?.end ?? 0n) <= candidate) next++;
    const range = taken[next];
    if (range !== undefined && range.start < candidate + size) {
      const steps = (range.end - min + size - 1n) / size;
      candidate = min + steps * size;
      continue;
    }
    free.push(candidate);
    candidate += size;
  }
  if (free.length > 0) {
    const index = Math.min(free.length - 1, Math.floor(random() * free.length));
    return free[index] ?? min;
  }
  const poolSize = poolSizeOf6(config);
  let inUse = 0;
  for (const range of taken) {
    const from = range.start > min ? (range.start - min) / size : 0n;
    const last = range.end > pool.subnetMax + size ? pool.subnetMax + size : range.end;
    const to = last > min ? (last - min + size - 1n) / size : 0n;
    if (to > from) inUse += Number(to - from);
  }
  return { kind: "exhausted", family: 6, network: formatCidr6(pool.network), poolSize, inUse };
}

/** How many subnets the IPv6 pool holds; 0 without IPv6. */
export function poolSizeOf6(config: NetworkConfig): bigint {
  const pool = config.ipv6;
  if (pool === undefined || pool.subnetMax < pool.subnetMin) return 0n;
  return (pool.subnetMax - pool.subnetMin) / sizeOf6(pool.subnetLen) + 1n;
}

/** How many subnets the config's pool holds: SubnetMin to SubnetMax in steps of SubnetLen. */
export function poolSizeOf(config: NetworkConfig): number {
  if (!config.enableIPv4) return 0;
  const size = sizeOf(config.subnetLen);
  return config.subnetMax >= config.subnetMin
    ? Math.floor((config.subnetMax - config.subnetMin) / size) + 1
    : 0;
}

/** Pool subnets (min + k·size, 0 ≤ k < poolSize) that intersect a taken range, each counted once. */
function countInUse(taken: readonly Range[], min: number, size: number, poolSize: number): number {
  let inUse = 0;
  let countedUpTo = 0; // candidates below this index are already counted
  for (const { start, end } of taken) {
    const from = Math.max(countedUpTo, Math.floor((start - min) / size), 0);
    const to = Math.min(poolSize, Math.ceil((end - min) / size));
    if (to > from) {
      inUse += to - from;
      countedUpTo = to;
    }
  }
  return inUse;
}
