// The live view of other nodes' leases as a pure function of the raw etcd entries under
// <prefix>/subnets/. computeView sorts every entry; LivePeerView keeps that result up to date one
// watch batch at a time, looking only at the entries that changed. Parsing is memoised and overlap
// detection is hash-based. Unlike flannel, a bad entry is set aside as invalid and never makes valid
// peers disappear.
import { formatCidr, maskOf, overlaps, containsSubnet, type Subnet } from "../ip/ipv4.js";
import type { NetworkConfig } from "../config/network-config.js";
import { containsSubnet6, formatCidr6, maskOf6, overlaps6, type Subnet6 } from "../ip/ipv6.js";
import { decodeLeaseAttrs, LeaseDecodeError, publicIpProblem, publicIpv6Problem } from "./attrs.js";
import {
  hasIPv4,
  leaseName,
  parseSubnetKey,
  SubnetKeyError,
  subnetsPrefix,
  type LeaseSubnets,
} from "./key.js";
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
  /**
   * Set when the entry claims this node's own identity (e.g. its VTEP MAC). `olderThanOwn`: the
   * entry's lease is older than this node's, so by the rule both sides apply this node takes a new
   * identity; otherwise the entry's writer must.
   */
  claimsOwnIdentity?: { readonly olderThanOwn: boolean };
  /** Set when the entry is invalid only because it claims an identity another lease or this node holds. */
  identityConflict?: true;
}

export interface ViewContext {
  prefix: string;
  config: NetworkConfig;
  /** This node's own key: never a peer, never invalid. */
  ownKey: string | undefined;
  ownSubnet: Subnet | undefined;
  /** This node's own IPv6 subnet (dual-stack or IPv6-only). */
  ownIpv6Subnet?: Subnet6 | undefined;
  /**
   * Parses a peer's BackendData for the backend of its BackendType (undefined when twill has no such
   * backend); throws an error naming the bad field when the data is unusable, which makes the entry
   * invalid. Called once per entry version; the result is the lease's `peerData`.
   */
  parsePeerData?: ((attrs: LeaseAttrs) => object | undefined) | undefined;
  /**
   * What a peer's lease claims that no two nodes may share (vxlan: "VTEP MAC 0a:…"), read from its
   * parsed peer data; undefined for nothing. Of two leases claiming one identity the older is a peer
   * and the newer is invalid. The same function for the view's whole life.
   */
  identityOf?: ((lease: Lease) => string | undefined) | undefined;
  /** This node's own identity, in identityOf's terms: a lease claiming it is never a peer. */
  ownIdentity?: string | undefined;
  /** The create revision of this node's own lease: who is older when a lease claims ownIdentity. */
  ownCreateRevision?: number | undefined;
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

/** One change to the raw entries, as a watch delivers it. */
export type EntryChange = { type: "put"; entry: RawEntry } | { type: "delete"; key: string };

/** What an entry says on its own, independent of the config and of other entries. */
type Parsed =
  | { ok: false; reason: string }
  | {
      ok: true;
      lease: Lease;
      /** A problem with the attrs themselves (PublicIP, BackendData), reported after the network check. */
      attrsProblem: string | undefined;
      /** A problem with PublicIPv6: only when the config uses the lease's IPv6 subnet. */
      ipv6Problem: string | undefined;
    };

interface Slot {
  readonly entry: RawEntry;
  readonly parsed: Parsed;
  generation: number;
}

/**
 * Memoises per-entry parsing by (key, modRevision, value) — plus lease id and createRevision, which
 * only change together with modRevision but are part of the Lease built. Entries not seen in a
 * computeView pass are dropped at its end, so the cache tracks the live key set. A different
 * parsePeerData hook starts it afresh: the peer data it holds came from the old one.
 */
export class ParseCache {
  private readonly slots = new Map<string, Slot>();
  private generation = 0;
  private parsePeerData: ViewContext["parsePeerData"];
  private families = "";

  get size(): number {
    return this.slots.size;
  }

  /** @internal Starts a computeView pass. */
  begin(): void {
    this.generation++;
  }

  /** @internal The parse of this entry, reusing the previous one when the entry is unchanged. */
  parse(entry: RawEntry, parsePeerData: ViewContext["parsePeerData"], families: Families): Parsed {
    // Peer data is parsed for the config's families only: other families make it anew.
    const familiesKey = `${families.ipv4}/${families.ipv6}`;
    if (parsePeerData !== this.parsePeerData || familiesKey !== this.families) {
      this.slots.clear();
      this.parsePeerData = parsePeerData;
      this.families = familiesKey;
    }
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
    const parsed = parseEntry(entry, parsePeerData, families);
    this.slots.set(entry.key, { entry: { ...entry }, parsed, generation: this.generation });
    return parsed;
  }

  /** @internal Drops a deleted entry (a LivePeerView update, between passes). */
  forget(key: string): void {
    this.slots.delete(key);
  }

  /** @internal Ends a pass: forgets entries that were not seen in it. */
  end(): void {
    for (const [key, slot] of this.slots) if (slot.generation !== this.generation) this.slots.delete(key);
  }
}

/** The address families a config enables. */
interface Families {
  readonly ipv4: boolean;
  readonly ipv6: boolean;
}

function familiesOf(config: NetworkConfig): Families {
  return { ipv4: config.enableIPv4, ipv6: config.ipv6 !== undefined };
}

function parseEntry(
  entry: RawEntry,
  parsePeerData: ViewContext["parsePeerData"],
  families: Families,
): Parsed {
  let subnets: LeaseSubnets;
  try {
    subnets = parseSubnetKey(entry.key);
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
  // An IPv6-only lease carries PublicIP 0.0.0.0, as flannel writes it; its PublicIPv6 must be usable.
  let attrsProblem = hasIPv4(subnets.subnet) ? publicIpProblem(attrs.publicIP) : undefined;
  const ipv6Problem = subnets.ipv6Subnet === undefined ? undefined : publicIpv6Problem(attrs.publicIPv6);
  let peerData: object | undefined;
  if (attrsProblem === undefined && parsePeerData !== undefined) {
    try {
      // Only the data of the families in use: flanneld never reads the rest, so bad data there
      // must not set a peer aside (a dual-stack peer is an IPv4 peer to an IPv4-only node).
      peerData = parsePeerData({
        ...attrs,
        backendData: families.ipv4 || !hasIPv4(subnets.subnet) ? attrs.backendData : undefined,
        backendV6Data: families.ipv6 ? attrs.backendV6Data : undefined,
      });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      attrsProblem = `bad ${attrs.backendType ?? "(no BackendType)"} BackendData: ${message}`;
    }
  }
  return { ok: true, lease: leaseFrom(entry, subnets, attrs, peerData), attrsProblem, ipv6Problem };
}

/** Older first: lower createRevision, then key (one etcd txn can create several keys at one revision). */
function olderFirst(
  a: Pick<Lease, "createRevision" | "key">,
  b: Pick<Lease, "createRevision" | "key">,
): number {
  return a.createRevision - b.createRevision || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

/**
 * A lease's subnet of one family as overlap detection sees it: aligned blocks overlap only by
 * containment, so "which block of length `len` holds it" (`at`) answers every question. IPv4 blocks are
 * numbers, IPv6 blocks strings, so one map holds both families without collisions.
 */
interface Block {
  readonly family: 4 | 6;
  readonly prefixLen: number;
  at(len: number): number | string;
}

/** The blocks of a lease: its IPv4 subnet (unless IPv6-only) and its IPv6 subnet, if any. */
function blocksOf(lease: Lease): Block[] {
  const blocks: Block[] = [];
  const { subnet, ipv6Subnet } = lease;
  if (hasIPv4(subnet)) {
    blocks.push({
      family: 4,
      prefixLen: subnet.prefixLen,
      at: (len) => slot(len, (subnet.ip & maskOf(len)) >>> 0),
    });
  }
  if (ipv6Subnet !== undefined) {
    blocks.push({
      family: 6,
      prefixLen: ipv6Subnet.prefixLen,
      at: (len) => `${len}/${(ipv6Subnet.ip & maskOf6(len)).toString(16)}`,
    });
  }
  return blocks;
}

/** The prefix lengths in play per family, ascending. */
function levelsOf(leases: Iterable<Lease>): Map<4 | 6, number[]> {
  const sets = new Map<4 | 6, Set<number>>([
    [4, new Set()],
    [6, new Set()],
  ]);
  for (const lease of leases)
    for (const block of blocksOf(lease)) sets.get(block.family)?.add(block.prefixLen);
  return new Map([...sets].map(([family, set]) => [family, [...set].sort((x, y) => x - y)]));
}

/**
 * Among leases that are otherwise valid, finds those overlapping an older one in either family. With
 * the distinct prefix lengths in play (usually one per family) each check is a few hash lookups:
 * winners by block, and for every shorter length in play the blocks that already contain a winner.
 */
function findOverlapLosers(candidates: readonly Lease[]): Map<Lease, Lease> {
  const losers = new Map<Lease, Lease>(); // loser → the older lease it overlaps
  const levels = levelsOf(candidates);
  const exact = new Map<number | string, Lease>();
  const containing = new Map<number | string, Lease>();

  for (const lease of [...candidates].sort(olderFirst)) {
    const blocks = blocksOf(lease);
    let winner: Lease | undefined;
    for (const block of blocks) {
      for (const len of levels.get(block.family) ?? []) {
        if (len > block.prefixLen || winner !== undefined) break;
        winner = exact.get(block.at(len));
      }
      winner ??= containing.get(block.at(block.prefixLen));
      if (winner !== undefined) break;
    }
    if (winner !== undefined) {
      losers.set(lease, winner);
      continue;
    }
    for (const block of blocks) {
      exact.set(block.at(block.prefixLen), lease);
      for (const len of levels.get(block.family) ?? []) {
        if (len >= block.prefixLen) break;
        const at = block.at(len);
        if (!containing.has(at)) containing.set(at, lease);
      }
    }
  }
  return losers;
}

/** Where one entry stands on its own, before overlaps with other entries are resolved. */
type Standing =
  | { kind: "own" }
  | { kind: "invalid"; reason: string; claimsOwnIdentity?: { readonly olderThanOwn: boolean } }
  /** Valid by itself: takes part in overlap resolution, which makes it a peer or an overlap loser. */
  | { kind: "candidate"; lease: Lease };

function standingOf(entry: RawEntry, ctx: ViewContext, subnets: string, cache: ParseCache): Standing {
  if (entry.key === ctx.ownKey) return { kind: "own" };
  if (!entry.key.startsWith(subnets)) return { kind: "invalid", reason: `key is not under ${subnets}` };
  const parsed = cache.parse(entry, ctx.parsePeerData, familiesOf(ctx.config));
  if (!parsed.ok) return { kind: "invalid", reason: parsed.reason };
  const networkProblem = outsideNetwork(parsed.lease, ctx.config);
  if (networkProblem !== undefined) return { kind: "invalid", reason: networkProblem };
  const { subnet, ipv6Subnet } = parsed.lease;
  const usesIPv4 = ctx.config.enableIPv4 && hasIPv4(subnet);
  if (parsed.attrsProblem !== undefined && (usesIPv4 || !hasIPv4(subnet)))
    return { kind: "invalid", reason: parsed.attrsProblem };
  if (parsed.ipv6Problem !== undefined && ctx.config.ipv6 !== undefined)
    return { kind: "invalid", reason: parsed.ipv6Problem };
  if (
    ctx.ownSubnet !== undefined &&
    hasIPv4(subnet) &&
    hasIPv4(ctx.ownSubnet) &&
    overlaps(subnet, ctx.ownSubnet)
  ) {
    return { kind: "invalid", reason: `overlaps this node's own subnet ${formatCidr(ctx.ownSubnet)}` };
  }
  if (
    ctx.ownIpv6Subnet !== undefined &&
    ipv6Subnet !== undefined &&
    overlaps6(ipv6Subnet, ctx.ownIpv6Subnet)
  ) {
    return {
      kind: "invalid",
      reason: `overlaps this node's own IPv6 subnet ${formatCidr6(ctx.ownIpv6Subnet)}`,
    };
  }
  const identity = ctx.identityOf?.(parsed.lease);
  if (identity !== undefined && identity === ctx.ownIdentity)
    return ownIdentityClaim(parsed.lease, identity, ctx);
  return { kind: "candidate", lease: parsed.lease };
}

/**
 * Why a lease does not fit the network config, or undefined. Each family the config enables must lie
 * inside its network when the lease has it; a family the config does not enable is ignored (a
 * dual-stack flanneld peer is an IPv4 peer to an IPv4-only node, as to flanneld), but the lease must
 * share at least one family with the config.
 */
function outsideNetwork(lease: Lease, config: NetworkConfig): string | undefined {
  const { subnet, ipv6Subnet } = lease;
  const v4 = config.enableIPv4 && hasIPv4(subnet);
  const pool6 = ipv6Subnet === undefined ? undefined : config.ipv6;
  const v6 = pool6 !== undefined;
  if (v4 && !containsSubnet(config.network, subnet)) {
    return `subnet ${formatCidr(subnet)} is outside the network ${formatCidr(config.network)}`;
  }
  if (pool6 !== undefined && ipv6Subnet !== undefined && !containsSubnet6(pool6.network, ipv6Subnet)) {
    return `IPv6 subnet ${formatCidr6(ipv6Subnet)} is outside the IPv6Network ${formatCidr6(pool6.network)}`;
  }
  if (!v4 && !v6) {
    const has = hasIPv4(subnet) ? "only an IPv4 subnet" : "only an IPv6 subnet";
    const wants = config.enableIPv4 ? "IPv4" : "IPv6";
    return `the lease has ${has}, and this network carries ${wants} only`;
  }
  return undefined;
}

/** A lease claiming this node's identity: invalid either way; which side gives way goes by age. */
function ownIdentityClaim(lease: Lease, identity: string, ctx: ViewContext): Standing {
  const own = { createRevision: ctx.ownCreateRevision ?? Infinity, key: ctx.ownKey ?? "" };
  const olderThanOwn = olderFirst(lease, own) < 0;
  const ages = `createRevision ${lease.createRevision} ${olderThanOwn ? "<" : ">"} ${own.createRevision}`;
  const reason = olderThanOwn
    ? `claims this node's own ${identity} with an older lease (${ages}): this node takes a new one`
    : `claims this node's own ${identity}, which this node's older lease holds (${ages}); its writer must take a new one`;
  return { kind: "invalid", reason, claimsOwnIdentity: { olderThanOwn } };
}

function invalidEntry(
  entry: Pick<RawEntry, "key" | "modRevision">,
  reason: string,
  claimsOwnIdentity?: { readonly olderThanOwn: boolean },
): InvalidEntry {
  return claimsOwnIdentity === undefined
    ? { key: entry.key, reason, modRevision: entry.modRevision }
    : { key: entry.key, reason, modRevision: entry.modRevision, claimsOwnIdentity, identityConflict: true };
}

/** The full computation, with the candidates it resolved (LivePeerView indexes them). */
function computeFull(
  entries: Iterable<RawEntry>,
  ctx: ViewContext,
  cache: ParseCache,
): { peers: Map<string, Lease>; invalid: Map<string, InvalidEntry>; candidates: Lease[] } {
  const subnets = subnetsPrefix(ctx.prefix);
  const invalid = new Map<string, InvalidEntry>();
  const candidates: Lease[] = [];
  cache.begin();
  for (const entry of entries) {
    const standing = standingOf(entry, ctx, subnets, cache);
    if (standing.kind === "invalid")
      invalid.set(entry.key, invalidEntry(entry, standing.reason, standing.claimsOwnIdentity));
    else if (standing.kind === "candidate") candidates.push(standing.lease);
  }
  cache.end();

  const losers = findOverlapLosers(candidates);
  const peers = new Map<string, Lease>();
  for (const lease of candidates) {
    const winner = losers.get(lease);
    if (winner === undefined) peers.set(lease.key, lease);
    else invalid.set(lease.key, invalidEntry(lease, overlapReason(lease, winner)));
  }
  for (const [loser, { holder, identity }] of findIdentityLosers(peers.values(), ctx)) {
    peers.delete(loser.key);
    invalid.set(loser.key, {
      ...invalidEntry(loser, identityReason(loser, holder, identity)),
      identityConflict: true,
    });
  }
  return { peers, invalid, candidates };
}

/**
 * Peers claiming an identity an older peer claims (two leases with one VTEP MAC: a cloned node or a
 * bad entry): the older is programmed, the newer is not. Never the planner's choice: one FDB entry per
 * MAC would silently send the real peer's traffic to whichever lease sorts first.
 */
function findIdentityLosers(
  peers: Iterable<Lease>,
  ctx: ViewContext,
): Map<Lease, { holder: Lease; identity: string }> {
  const losers = new Map<Lease, { holder: Lease; identity: string }>();
  const identityOf = ctx.identityOf;
  if (identityOf === undefined) return losers;
  const claimants = new Map<string, Lease[]>();
  for (const lease of peers) {
    const identity = identityOf(lease);
    if (identity === undefined) continue;
    const group = claimants.get(identity);
    if (group === undefined) claimants.set(identity, [lease]);
    else group.push(lease);
  }
  // Only shared identities need an order: a cold start of 5,000 distinct MACs sorts nothing.
  for (const [identity, group] of claimants) {
    if (group.length < 2) continue;
    const [holder, ...rest] = group.sort(olderFirst);
    if (holder !== undefined) for (const lease of rest) losers.set(lease, { holder, identity });
  }
  return losers;
}

function identityReason(loser: Lease, holder: Lease, identity: string): string {
  return (
    `claims ${identity}, which older key ${holder.key} holds` +
    ` (createRevision ${holder.createRevision} < ${loser.createRevision}); not programmed`
  );
}

function overlapReason(loser: Lease, winner: Lease): string {
  return (
    `subnet ${leaseName(loser)} overlaps ${leaseName(winner)} of older key ${winner.key}` +
    ` (createRevision ${winner.createRevision} < ${loser.createRevision})`
  );
}

/** Sorts every entry into valid peers and invalid entries (see the module comment). */
export function computeView(entries: Iterable<RawEntry>, ctx: ViewContext, cache?: ParseCache): PeerView {
  const { peers, invalid } = computeFull(entries, ctx, cache ?? new ParseCache());
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
 * Peer events between two views, sorted by key: added, removed (carrying the old lease, so a consumer
 * knows what to tear down), changed when the attrs differ. A renewal (new etcd lease id and
 * modRevision, same attrs) is not an event.
 */
export function diffViews(before: PeerView, after: PeerView): PeerEvent[] {
  const events: PeerEvent[] = [];
  for (const [key, lease] of after.peers) {
    const event = peerEvent(before.peers.get(key), lease);
    if (event !== undefined) events.push(event);
  }
  for (const [key, lease] of before.peers) if (!after.peers.has(key)) events.push({ type: "removed", lease });
  return events.sort(byLeaseKey);
}

/** The event for one key whose peer went from `previous` to `lease` (undefined: none). */
function peerEvent(previous: Lease | undefined, lease: Lease | undefined): PeerEvent | undefined {
  if (previous === undefined) return lease === undefined ? undefined : { type: "added", lease };
  if (lease === undefined) return { type: "removed", lease: previous };
  if (previous !== lease && !sameAttrs(previous.attrs, lease.attrs)) {
    return { type: "changed", lease, previous };
  }
  return undefined;
}

function byLeaseKey(a: PeerEvent, b: PeerEvent): number {
  return a.lease.key < b.lease.key ? -1 : a.lease.key > b.lease.key ? 1 : 0;
}

/** Entries of `after` that are new there or changed (another modRevision) since `before`. */
function newlyInvalid(
  before: ReadonlyMap<string, InvalidEntry>,
  after: Iterable<InvalidEntry>,
): InvalidEntry[] {
  const found: InvalidEntry[] = [];
  for (const entry of after) if (before.get(entry.key)?.modRevision !== entry.modRevision) found.push(entry);
  return found;
}

// ---- The live view: computeView's result, kept up to date one batch at a time ---------------------

/** What one update of a LivePeerView changed. */
export interface ViewUpdate {
  /** Peer events, sorted by key: exactly diffViews(view before, view after). */
  readonly events: PeerEvent[];
  /** Entries that became invalid, or changed while invalid, in this update (to warn about once). */
  readonly newlyInvalid: InvalidEntry[];
  /**
   * "incremental" when only the changed entries were looked at; "full" when every entry was: a re-list,
   * a new context, or a change that involves an overlap (whose resolution depends on all entries).
   */
  readonly path: "incremental" | "full";
}

/** Where a 32-bit block of a given prefix length lives in a numeric map key (exact up to 2^37). */
function slot(prefixLen: number, ip: number): number {
  return ip * 32 + prefixLen;
}

/**
 * The candidates' subnets, indexed so that "does this subnet overlap any candidate" is a few hash
 * lookups. Aligned blocks overlap only by containment: a candidate containing S is found by S's
 * block at each shorter length in play (`exact`); one inside S by a count of candidates kept per
 * block at each length in play (`inside`). The lengths in play are fixed when the index is built:
 * a candidate of another length needs a rebuild.
 */
class OverlapIndex {
  private readonly exact = new Map<number | string, number>();
  private readonly inside = new Map<number | string, number>();
  private readonly levels: ReadonlyMap<4 | 6, readonly number[]>;

  constructor(candidates: Iterable<Lease>) {
    const all = [...candidates];
    this.levels = levelsOf(all);
    for (const lease of all) this.add(lease);
  }

  /** Whether the lease's subnets have lengths the index can take without a rebuild. */
  covers(lease: Lease): boolean {
    return blocksOf(lease).every((block) => this.levels.get(block.family)?.includes(block.prefixLen));
  }

  add(lease: Lease): void {
    for (const block of blocksOf(lease)) this.count(block, 1);
  }

  remove(lease: Lease): void {
    for (const block of blocksOf(lease)) this.count(block, -1);
  }

  /** Whether the lease's subnets overlap an indexed subnet other than its own (`indexed`: it is in the index). */
  overlapsAnother(lease: Lease, indexed: boolean): boolean {
    for (const block of blocksOf(lease)) {
      for (const len of this.levels.get(block.family) ?? []) {
        if (len > block.prefixLen) break;
        let holders = this.exact.get(block.at(len)) ?? 0;
        if (indexed && len === block.prefixLen) holders -= 1;
        if (holders > 0) return true;
      }
      if ((this.inside.get(block.at(block.prefixLen)) ?? 0) > 0) return true;
    }
    return false;
  }

  private count(block: Block, delta: number): void {
    bump(this.exact, block.at(block.prefixLen), delta);
    for (const len of this.levels.get(block.family) ?? []) {
      if (len >= block.prefixLen) break;
      bump(this.inside, block.at(len), delta);
    }
  }
}

function bump<K>(counts: Map<K, number>, at: K, delta: number): void {
  const next = (counts.get(at) ?? 0) + delta;
  if (next === 0) counts.delete(at);
  else counts.set(at, next);
}

/**
 * The peer view of a set of raw entries that changes one watch batch at a time. A batch whose
 * changed entries overlap no other candidate, before or after, is applied by looking at those
 * entries only: O(changes), whatever the number of peers. An overlap (rare: hostile or broken
 * entries) makes the outcome depend on every overlapping entry's age, so that batch, a re-list
 * and a new context are computed in full with computeView's logic. Either way the view equals
 * computeView over the same entries; its maps are updated in place.
 */
export class LivePeerView {
  private readonly entries = new Map<string, RawEntry>();
  private readonly cache = new ParseCache();
  private readonly peers = new Map<string, Lease>();
  private readonly invalid = new Map<string, InvalidEntry>();
  /** Every candidate (peers and overlap losers), by key. */
  private readonly candidates = new Map<string, Lease>();
  private index = new OverlapIndex([]);
  /** How many candidates claim each identity: a shared one makes a batch need the full computation. */
  private identities = new Map<string, number>();
  /** The live view: the same object after every update. */
  readonly view: PeerView = { peers: this.peers, invalid: this.invalid };

  constructor(private ctx: ViewContext) {}

  get context(): ViewContext {
    return this.ctx;
  }

  /** The raw entry under `key`, as of the last update. */
  entry(key: string): RawEntry | undefined {
    return this.entries.get(key);
  }

  /** A re-list: the entries are replaced by `entries`. */
  replaceAll(entries: Iterable<RawEntry>): ViewUpdate {
    this.entries.clear();
    for (const entry of entries) this.entries.set(entry.key, entry);
    return this.recomputeAll();
  }

  /** A new own subnet or config. */
  setContext(ctx: ViewContext): ViewUpdate {
    const before = familiesOf(this.ctx.config);
    const after = familiesOf(ctx.config);
    const previous = new Map(this.peers);
    this.ctx = ctx;
    const update = this.recomputeAll();
    if (before.ipv4 === after.ipv4 && before.ipv6 === after.ipv6) return update;
    // Other families: every peer's data was parsed anew for them (a dual-stack peer's BackendV6Data
    // now counts), though its lease is the same. Each peer still there is a change.
    const reported = new Set(update.events.map((event) => event.lease.key));
    const events = [...update.events];
    for (const [key, lease] of this.peers) {
      const old = previous.get(key);
      if (old !== undefined && !reported.has(key)) events.push({ type: "changed", lease, previous: old });
    }
    return { ...update, events: events.sort(byLeaseKey) };
  }

  /** One watch batch, oldest change first. */
  apply(changes: readonly EntryChange[]): ViewUpdate {
    // Each key's final state; a key changed twice in one batch is looked at once.
    const latest = new Map<string, RawEntry | undefined>();
    for (const change of changes) {
      if (change.type === "put") latest.set(change.entry.key, change.entry);
      else latest.set(change.key, undefined);
    }
    const standings = this.standingsIfNoOverlap(latest);
    for (const [key, entry] of latest) {
      if (entry === undefined) this.entries.delete(key);
      else this.entries.set(key, entry);
    }
    if (standings === undefined) return this.recomputeAll();

    const events: PeerEvent[] = [];
    const invalidNow: InvalidEntry[] = [];
    for (const [key, standing] of standings) {
      const previousPeer = this.peers.get(key);
      const previousInvalid = this.invalid.get(key);
      this.peers.delete(key);
      this.invalid.delete(key);
      this.candidates.delete(key);
      const entry = latest.get(key);
      if (entry === undefined) this.cache.forget(key);
      if (entry !== undefined && standing?.kind === "invalid") {
        const invalid = invalidEntry(entry, standing.reason, standing.claimsOwnIdentity);
        this.invalid.set(key, invalid);
        if (previousInvalid?.modRevision !== invalid.modRevision) invalidNow.push(invalid);
      }
      const lease = standing?.kind === "candidate" ? standing.lease : undefined;
      if (lease !== undefined) {
        this.peers.set(key, lease);
        this.candidates.set(key, lease);
      }
      const event = peerEvent(previousPeer, lease);
      if (event !== undefined) events.push(event);
    }
    return { events: events.sort(byLeaseKey), newlyInvalid: invalidNow, path: "incremental" };
  }

  /**
   * Each changed key's new standing (undefined: deleted), with the index already updated; or
   * undefined when an old or new candidate among them overlaps another candidate, or has a length
   * the index was not built for: then the batch needs the full computation.
   */
  private standingsIfNoOverlap(
    latest: ReadonlyMap<string, RawEntry | undefined>,
  ): Map<string, Standing | undefined> | undefined {
    for (const key of latest.keys()) {
      const old = this.candidates.get(key);
      if (old === undefined) continue;
      if (this.index.overlapsAnother(old, true)) return undefined;
      if ((this.identities.get(this.identityOf(old) ?? "") ?? 0) > 1) return undefined;
    }
    const subnets = subnetsPrefix(this.ctx.prefix);
    const standings = new Map<string, Standing | undefined>();
    for (const [key, entry] of latest) {
      standings.set(key, entry && standingOf(entry, this.ctx, subnets, this.cache));
    }
    for (const key of latest.keys()) {
      const old = this.candidates.get(key);
      if (old === undefined) continue;
      this.index.remove(old);
      const identity = this.identityOf(old);
      if (identity !== undefined) bump(this.identities, identity, -1);
    }
    for (const standing of standings.values()) {
      if (standing?.kind !== "candidate") continue;
      const { lease } = standing;
      // The indexes are rebuilt by the full computation, so half-updated ones are never used.
      if (!this.index.covers(lease) || this.index.overlapsAnother(lease, false)) return undefined;
      this.index.add(lease);
      const identity = this.identityOf(standing.lease);
      if (identity !== undefined) {
        if (this.identities.has(identity)) return undefined;
        bump(this.identities, identity, 1);
      }
    }
    return standings;
  }

  private identityOf(lease: Lease): string | undefined {
    return this.ctx.identityOf?.(lease);
  }

  private recomputeAll(): ViewUpdate {
    const next = computeFull(this.entries.values(), this.ctx, this.cache);
    const events = diffViews(this.view, next);
    const invalidNow = newlyInvalid(this.invalid, next.invalid.values());
    replaceContents(this.peers, next.peers);
    replaceContents(this.invalid, next.invalid);
    this.candidates.clear();
    for (const lease of next.candidates) this.candidates.set(lease.key, lease);
    this.index = new OverlapIndex(next.candidates);
    this.identities = new Map();
    for (const lease of next.candidates) {
      const identity = this.identityOf(lease);
      if (identity !== undefined) bump(this.identities, identity, 1);
    }
    return { events, newlyInvalid: invalidNow, path: "full" };
  }
}

function replaceContents<K, V>(target: Map<K, V>, source: ReadonlyMap<K, V>): void {
  target.clear();
  for (const [key, value] of source) target.set(key, value);
}
