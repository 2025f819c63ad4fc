// Which subnet this node should hold: flannel's AcquireLease choice order (§3.1) as a pure function
// of the config, the current leases and our public IP. The shell does the etcd writes.
import { maskOf, sizeOf, type IPv4, type Subnet } from "../ip/ipv4.js";
import type { NetworkConfig } from "../config/network-config.js";
import type { Lease } from "./lease.js";

export interface AllocationInput {
  config: NetworkConfig;
  /** Every key under <prefix>/subnets that names a subnet, including ones whose value is bad. */
  leases: readonly Lease[];
  publicIP: IPv4;
  /** From the node's subnet file (FLANNEL_SUBNET); host bits are dropped here. */
  previousSubnet: Subnet | undefined;
  /** Uniform in [0,1); injected for tests. */
  random: () => number;
  /** Free candidates collected before picking one; default 100, as flannel. */
  maxCandidates?: number;
}

export type AllocationDecision =
  /** A compatible lease already held for our PublicIP: renew it (plain put with a new etcd lease). */
  | { kind: "reuse"; lease: Lease; staleOwn: Lease[] }
  /** Create-if-absent. */
  | { kind: "create"; subnet: Subnet; reason: "previous-subnet" | "free"; staleOwn: Lease[] }
  | { kind: "exhausted"; network: Subnet; poolSize: number; inUse: number; staleOwn: Lease[] };

export const DEFAULT_MAX_CANDIDATES = 100;

/** Whether a lease's subnet fits the config: inside [SubnetMin, SubnetMax] and exactly SubnetLen long. */
export function isCompatible(subnet: Subnet, config: NetworkConfig): boolean {
  return (
    subnet.prefixLen === config.subnetLen && subnet.ip >= config.subnetMin && subnet.ip <= config.subnetMax
  );
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

/**
 * Decides how to acquire a subnet:
 * 1. the previous subnet (the node's subnet file) when a compatible lease carrying our PublicIP holds
 *    it: reused; else when no lease overlaps it: created. It wins over other leases that carry our
 *    PublicIP (flannel takes the first of those in key order: a hand-written or stale lease would move
 *    the node and strand its pods);
 * 2. else the first compatible lease carrying our PublicIP is reused;
 * 3. else one of the first `maxCandidates` free pool subnets from SubnetMin upwards, uniformly at random.
 * Leases carrying our PublicIP that the config no longer allows are `staleOwn` (the caller deletes
 * them; they still count as taken here, as in flannel).
 */
export function chooseSubnet(input: AllocationInput): AllocationDecision {
  const { config, leases, publicIP } = input;
  const maxCandidates = input.maxCandidates ?? DEFAULT_MAX_CANDIDATES;

  let previous: Subnet | undefined;
  if (input.previousSubnet !== undefined) {
    const { prefixLen } = input.previousSubnet;
    previous = { ip: (input.previousSubnet.ip & maskOf(prefixLen)) >>> 0, prefixLen };
    if (!isCompatible(previous, config)) previous = undefined;
  }

  let reuse: Lease | undefined;
  let reusePrevious: Lease | undefined;
  const staleOwn: Lease[] = [];
  for (const lease of leases) {
    if (lease.attrs.publicIP !== publicIP) continue;
    if (!isCompatible(lease.subnet, config)) staleOwn.push(lease);
    else {
      // Further compatible leases with our IP are left alone: they expire unless someone renews them.
      reuse ??= lease;
      if (previous !== undefined && sameSubnet(lease.subnet, previous)) reusePrevious ??= lease;
    }
  }
  if (reusePrevious !== undefined) return { kind: "reuse", lease: reusePrevious, staleOwn };

  const taken = takenRanges(leases);
  if (previous !== undefined && !intersects(taken, previous.ip, previous.ip + sizeOf(previous.prefixLen))) {
    return { kind: "create", subnet: previous, reason: "previous-subnet", staleOwn };
  }
  if (reuse !== undefined) return { kind: "reuse", lease: reuse, staleOwn };

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
    const index = Math.min(free.length - 1, Math.floor(input.random() * free.length));
    const ip = free[index] ?? min;
    return { kind: "create", subnet: { ip, prefixLen: config.subnetLen }, reason: "free", staleOwn };
  }

  const poolSize = poolSizeOf(config);
  return {
    kind: "exhausted",
    network: config.network,
    poolSize,
    inUse: countInUse(taken, min, size, poolSize),
    staleOwn,
  };
}

/** How many subnets the config's pool holds: SubnetMin to SubnetMax in steps of SubnetLen. */
export function poolSizeOf(config: NetworkConfig): number {
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
