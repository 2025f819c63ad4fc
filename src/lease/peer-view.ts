// The live view of other nodes' leases as a pure function of the raw etcd entries under
// <prefix>/subnets/. Recomputed after every watch batch, so parsing is memoised and overlap
// detection is hash-based. Unlike flannel (§1.6), a bad entry is set aside as invalid and never
// makes valid peers disappear.
import { formatCidr, maskOf, overlaps, containsSubnet, type Subnet } from "../ip/ipv4.js";
import type { NetworkConfig } from "../config/network-config.js";
import { decodeLeaseAttrs, LeaseDecodeError, parseVxlanBackendData, publicIpProblem } from "./attrs.js";
import { parseSubnetKey, SubnetKeyError, subnetsPrefix } from "./key.js";
import { leaseFrom, type Lease, type LeaseAttrs } from "./lease.js";

export interface RawEntry {
  key: string;
  value: string;
  etcdLeaseId: string;
  createRevision: number;
  modRevision: number;
}

export interface InvalidEntry {
  key: string;
  /** What is wrong, naming the bad value. */
  reason: string;
  modRevision: number;
}

export interface ViewContext {
  prefix: string;
  config: NetworkConfig;
  /** This node's own key: never a peer, never invalid. */
  ownKey: string | undefined;
  ownSubnet: Subnet | undefined;
}

export interface PeerView {
  /** Valid leases of other nodes, by key. */
  peers: ReadonlyMap<string, Lease>;
  invalid: ReadonlyMap<string, InvalidEntry>;
}

export type PeerEvent =
  | { type: "added"; lease: Lease }
  | { type: "changed"; lease: Lease; previous: Lease }
  | { type: "removed"; lease: Lease };

/** What an entry says on its own, independent of the config and of other entries. */
type Parsed =
  | { ok: false; reason: string }
  | {
      ok: true;
      lease: Lease;
      /** A problem with the attrs themselves (PublicIP, vxlan BackendData), reported after the network check. */
      attrsProblem: string | undefined;
    };

interface Slot {
  readonly entry: RawEntry;
  readonly parsed: Parsed;
  generation: number;
}

/**
 * Memoises per-entry parsing by (key, modRevision, value) — plus lease id and createRevision, which
 * only change together with modRevision but are part of the Lease built. Entries not seen in a
 * computeView pass are dropped at its end, so the cache tracks the live key set.
 */
export class ParseCache {
  private readonly slots = new Map<string, Slot>();
  private generation = 0;

  get size(): number {
    return this.slots.size;
  }

  /** @internal Starts a computeView pass. */
  begin(): void {
    this.generation++;
  }

  /** @internal The parse of this entry, reusing the previous one when the entry is unchanged. */
  parse(entry: RawEntry): Parsed {
    const slot = this.slots.get(entry.key);
    if (
      slot !== undefined &&
      slot.entry.modRevision === entry.modRevision &&
      slot.entry.value === entry.value &&
      slot.entry.etcdLeaseId === entry.etcdLeaseId &&
      slot.entry.createRevision === entry.createRevision
    ) {
      slot.generation = this.generation;
      return slot.parsed;
    }
    const parsed = parseEntry(entry);
    this.slots.set(entry.key, { entry: { ...entry }, parsed, generation: this.generation });
    return parsed;
  }

  /** @internal Ends a pass: forgets entries that were not seen in it. */
  end(): void {
    for (const [key, slot] of this.slots) if (slot.generation !== this.generation) this.slots.delete(key);
  }
}

function parseEntry(entry: RawEntry): Parsed {
  let subnet: Subnet;
  try {
    subnet = parseSubnetKey(entry.key);
  } catch (err) {
    return { ok: false, reason: err instanceof SubnetKeyError ? err.reason : String(err) };
  }
  let attrs: LeaseAttrs;
  try {
    attrs = decodeLeaseAttrs(entry.value);
  } catch (err) {
    const message = err instanceof LeaseDecodeError ? err.message : String(err);
    return { ok: false, reason: `bad value: ${message}` };
  }
  let attrsProblem = publicIpProblem(attrs.publicIP);
  if (attrsProblem === undefined && attrs.backendType === "vxlan") {
    try {
      parseVxlanBackendData(attrs.backendData);
    } catch (err) {
      attrsProblem = `bad vxlan BackendData: ${err instanceof LeaseDecodeError ? err.message : String(err)}`;
    }
  }
  return { ok: true, lease: leaseFrom(entry, subnet, attrs), attrsProblem };
}

/** Older first: lower createRevision, then key (one etcd txn can create several keys at one revision). */
function olderFirst(a: Lease, b: Lease): number {
  return a.createRevision - b.createRevision || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

/**
 * Among leases that are otherwise valid, finds those overlapping an older one. Aligned blocks overlap
 * only by containment, so with the distinct prefix lengths in play (usually just SubnetLen) each check
 * is a few hash lookups: winners by (length, network), and for every shorter length in play the
 * blocks that already contain a winner.
 */
function findOverlapLosers(candidates: readonly Lease[]): Map<Lease, Lease> {
  const losers = new Map<Lease, Lease>(); // loser → the older lease it overlaps
  const lengths = [...new Set(candidates.map((l) => l.subnet.prefixLen))].sort((a, b) => a - b);
  const exact = new Map<number, Map<number, Lease>>(lengths.map((len) => [len, new Map()]));
  const containing = new Map<number, Map<number, Lease>>(lengths.map((len) => [len, new Map()]));

  for (const lease of [...candidates].sort(olderFirst)) {
    const { ip, prefixLen } = lease.subnet;
    let winner: Lease | undefined;
    for (const len of lengths) {
      if (len > prefixLen) break;
      winner = exact.get(len)?.get((ip & maskOf(len)) >>> 0);
      if (winner !== undefined) break;
    }
    winner ??= containing.get(prefixLen)?.get(ip);
    if (winner !== undefined) {
      losers.set(lease, winner);
      continue;
    }
    exact.get(prefixLen)?.set(ip, lease);
    for (const len of lengths) {
      if (len >= prefixLen) break;
      const blocks = containing.get(len);
      const block = (ip & maskOf(len)) >>> 0;
      if (blocks !== undefined && !blocks.has(block)) blocks.set(block, lease);
    }
  }
  return losers;
}

/** Sorts every entry into valid peers and invalid entries (see the module comment). */
export function computeView(entries: Iterable<RawEntry>, ctx: ViewContext, cache?: ParseCache): PeerView {
  const memo = cache ?? new ParseCache();
  const subnets = subnetsPrefix(ctx.prefix);
  const network = ctx.config.network;
  const invalid = new Map<string, InvalidEntry>();
  const candidates: Lease[] = [];
  const reject = (entry: RawEntry, reason: string): void => {
    invalid.set(entry.key, { key: entry.key, reason, modRevision: entry.modRevision });
  };

  memo.begin();
  for (const entry of entries) {
    if (entry.key === ctx.ownKey) continue;
    if (!entry.key.startsWith(subnets)) {
      reject(entry, `key is not under ${subnets}`);
      continue;
    }
    const parsed = memo.parse(entry);
    if (!parsed.ok) {
      reject(entry, parsed.reason);
      continue;
    }
    const { subnet } = parsed.lease;
    if (!containsSubnet(network, subnet)) {
      reject(entry, `subnet ${formatCidr(subnet)} is outside the network ${formatCidr(network)}`);
    } else if (parsed.attrsProblem !== undefined) {
      reject(entry, parsed.attrsProblem);
    } else if (ctx.ownSubnet !== undefined && overlaps(subnet, ctx.ownSubnet)) {
      reject(entry, `overlaps this node's own subnet ${formatCidr(ctx.ownSubnet)}`);
    } else {
      candidates.push(parsed.lease);
    }
  }
  memo.end();

  const losers = findOverlapLosers(candidates);
  const peers = new Map<string, Lease>();
  for (const lease of candidates) {
    const winner = losers.get(lease);
    if (winner === undefined) {
      peers.set(lease.key, lease);
    } else {
      invalid.set(lease.key, {
        key: lease.key,
        reason:
          `subnet ${formatCidr(lease.subnet)} overlaps ${formatCidr(winner.subnet)} of older key ${winner.key}` +
          ` (createRevision ${winner.createRevision} < ${lease.createRevision})`,
        modRevision: lease.modRevision,
      });
    }
  }
  return { peers, invalid };
}

function sameAttrs(a: LeaseAttrs, b: LeaseAttrs): boolean {
  return (
    a.publicIP === b.publicIP &&
    a.publicIPv6 === b.publicIPv6 &&
    a.backendType === b.backendType &&
    a.backendData === b.backendData &&
    a.backendV6Data === b.backendV6Data
  );
}

/**
 * Peer events between two views, sorted by key: added, removed (carrying the old lease, which the
 * data plane needs to tear down), changed when the attrs differ. A renewal (new etcd lease id and
 * modRevision, same attrs) is not an event.
 */
export function diffViews(before: PeerView, after: PeerView): PeerEvent[] {
  const events: PeerEvent[] = [];
  for (const [key, lease] of after.peers) {
    const previous = before.peers.get(key);
    if (previous === undefined) events.push({ type: "added", lease });
    else if (previous !== lease && !sameAttrs(previous.attrs, lease.attrs)) {
      events.push({ type: "changed", lease, previous });
    }
  }
  for (const [key, lease] of before.peers) if (!after.peers.has(key)) events.push({ type: "removed", lease });
  return events.sort((a, b) => (a.lease.key < b.lease.key ? -1 : a.lease.key > b.lease.key ? 1 : 0));
}
