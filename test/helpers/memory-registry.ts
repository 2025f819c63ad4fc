// An in-memory LeaseRegistry for unit tests of the lease room, with etcd's semantics where the lease
// room relies on them: one store revision per write; create and mod revisions per key (0 for an
// absent key, so "Mod == 0" holds for it as in an etcd transaction); leases with a TTL that expire on
// the injected Clock and take their keys with them; watches from a revision, delivered in batches
// (every write of one event-loop turn in one batch, as etcd may). Test controls: compaction, broken
// watches, failing calls, an outage, and direct writes as a foreign client.
import type { Clock, Timer } from "../../src/util/clock.js";
import { subnetsPrefix } from "../../src/lease/key.js";
import type { RawEntry } from "../../src/lease/peer-view.js";
import {
  COMPACTED_WATCH_REASON,
  LeaseStoreError,
  type LeaseRegistry,
  type Snapshot,
  type WatchChange,
  type WatchHandle,
  type WatchHandlers,
  type WrittenLease,
} from "../../src/lease/registry.js";

interface StoredKey {
  readonly value: string;
  readonly lease: string;
  readonly createRevision: number;
  readonly modRevision: number;
}

interface StoredLease {
  readonly ttlSeconds: number;
  /** On the clock's monotonic time. */
  readonly expiresAt: number;
  readonly timer: Timer;
  readonly keys: Set<string>;
}

interface Watch {
  readonly prefix: string;
  readonly handlers: WatchHandlers;
  pending: WatchChange[];
  pendingRevision: number;
  open: boolean;
}

type Write = { type: "put"; key: string; value: string; lease: string } | { type: "delete"; key: string };

/** The registry calls that reach etcd (and so can fail, or be preceded by a test's action). */
export type RegistryCall =
  | "getConfig"
  | "putConfig"
  | "listSubnets"
  | "getKey"
  | "createIfAbsent"
  | "replaceIfUnchanged"
  | "putReservationIfUnchanged"
  | "deleteIfUnchanged"
  | "revoke"
  | "timeToLive"
  | "watchPrefix";

export class MemoryRegistry implements LeaseRegistry {
  readonly configKey: string;
  readonly subnetsPrefix: string;
  /** Every call that reached the registry, in order (failed ones too). */
  readonly calls: RegistryCall[] = [];

  private readonly store = new Map<string, StoredKey>();
  private readonly leases = new Map<string, StoredLease>();
  private readonly history: { revision: number; change: WatchChange }[] = [];
  private readonly watches = new Set<Watch>();
  private readonly failures: { error: Error; only: RegistryCall | undefined }[] = [];
  private readonly beforeCall = new Map<RegistryCall, (() => void)[]>();
  private storeRevision = 1;
  private compactedBefore = 0;
  private nextLeaseId = 7_587_000_001;
  private outage: Error | undefined;
  private closed = false;

  constructor(
    private readonly clock: Clock,
    readonly prefix = "/coreos.com/network",
  ) {
    this.configKey = `${prefix}/config`;
    this.subnetsPrefix = subnetsPrefix(prefix);
  }

  // ---- test controls ------------------------------------------------------------------------------

  /** The current store revision. */
  get revision(): number {
    return this.storeRevision;
  }

  /** The key as the store has it now. */
  entry(key: string): RawEntry | undefined {
    const stored = this.store.get(key);
    return stored && toEntry(key, stored);
  }

  /** Every key under <prefix>/subnets/, by key. */
  subnetEntries(): RawEntry[] {
    return this.entriesUnder(this.subnetsPrefix);
  }

  /** Whether a lease exists (granted, neither revoked nor expired). */
  hasLease(leaseId: string): boolean {
    return this.leases.has(leaseId);
  }

  /** A foreign client's put; "0" = no lease. Returns the new revision. Throws if the lease is gone. */
  put(key: string, value: string, leaseId = "0"): number {
    if (leaseId !== "0" && !this.leases.has(leaseId)) throw new Error(`lease ${leaseId} not found`);
    this.commit([{ type: "put", key, value, lease: leaseId }]);
    return this.storeRevision;
  }

  /** A foreign client's delete. Returns whether the key existed. */
  delete(key: string): boolean {
    return this.commit([{ type: "delete", key }]);
  }

  /** A foreign client's lease. */
  grantLease(ttlSeconds: number): string {
    const id = String(this.nextLeaseId++);
    const timer = this.clock.setTimer(ttlSeconds * 1000, () => this.endLease(id));
    this.leases.set(id, {
      ttlSeconds,
      expiresAt: this.clock.monotonic() + ttlSeconds * 1000,
      timer,
      keys: new Set(),
    });
    return id;
  }

  /** A foreign client's revoke: the lease's keys are deleted with it. */
  revokeLease(leaseId: string): void {
    this.endLease(leaseId);
  }

  /** Discards the history before `revision`: a watch from an earlier revision breaks as compacted. */
  compact(revision = this.storeRevision): void {
    this.compactedBefore = revision;
    while ((this.history[0]?.revision ?? Infinity) < revision) this.history.shift();
  }

  /** Breaks every open watch with `reason` (a cancel or a disconnect, as etcd's watchers see one). */
  breakWatches(reason: string): void {
    for (const watch of [...this.watches]) this.breakWatch(watch, reason);
  }

  /**
   * The next `count` calls (of `only`, when given) reject with `error`. A revoke swallows its failure:
   * the lease then runs out by itself.
   */
  failNext(
    count: number,
    { error = new Error("etcdserver: request timed out"), only }: { error?: Error; only?: RegistryCall } = {},
  ): void {
    for (let i = 0; i < count; i++) this.failures.push({ error, only });
  }

  /** Drops the failures failNext queued and that no call has met yet. */
  clearFailures(): void {
    this.failures.length = 0;
  }

  /**
   * etcd unreachable (an Error) or back (undefined): while it is, every call rejects with that error
   * and open watches break as disconnected. Leases keep running out meanwhile, as on the server.
   */
  setOutage(error: Error | undefined): void {
    this.outage = error;
    if (error !== undefined) this.breakWatches(`disconnected: ${error.message}`);
  }

  /** Runs `action` (e.g. a foreign write) just before the next call of `call` goes through. */
  before(call: RegistryCall, action: () => void): void {
    const actions = this.beforeCall.get(call) ?? [];
    actions.push(action);
    this.beforeCall.set(call, actions);
  }

  // ---- LeaseRegistry ------------------------------------------------------------------------------

  explain(error: unknown): LeaseStoreError {
    return new LeaseStoreError("memory registry", error);
  }

  getConfig(): Promise<{ text: string | undefined; revision: number }> {
    return this.call("getConfig", () => ({
      text: this.store.get(this.configKey)?.value,
      revision: this.storeRevision,
    }));
  }

  putConfig(text: string): Promise<void> {
    return this.call("putConfig", () => {
      this.commit([{ type: "put", key: this.configKey, value: text, lease: "0" }]);
    });
  }

  listSubnets(): Promise<Snapshot> {
    return this.call("listSubnets", () => ({
      entries: this.entriesUnder(this.subnetsPrefix),
      revision: this.storeRevision,
    }));
  }

  getKey(key: string): Promise<RawEntry | undefined> {
    return this.call("getKey", () => this.entry(key));
  }

  createIfAbsent(key: string, value: string, ttlSeconds: number): Promise<WrittenLease | undefined> {
    return this.call("createIfAbsent", () =>
      this.putOnFreshLease(key, value, ttlSeconds, !this.store.has(key)),
    );
  }

  replaceIfUnchanged(
    key: string,
    value: string,
    ttlSeconds: number,
    expectedModRevision: number,
  ): Promise<WrittenLease | undefined> {
    return this.call("replaceIfUnchanged", () =>
      this.putOnFreshLease(key, value, ttlSeconds, this.modRevisionOf(key) === expectedModRevision),
    );
  }

  putReservationIfUnchanged(
    key: string,
    value: string,
    expectedModRevision: number,
  ): Promise<number | undefined> {
    return this.call("putReservationIfUnchanged", () => {
      if (this.modRevisionOf(key) !== expectedModRevision) return undefined;
      this.commit([{ type: "put", key, value, lease: "0" }]);
      return this.storeRevision;
    });
  }

  deleteIfUnchanged(key: string, modRevision: number): Promise<boolean> {
    return this.call("deleteIfUnchanged", () => {
      if (this.modRevisionOf(key) !== modRevision) return false;
      this.commit([{ type: "delete", key }]);
      return true;
    });
  }

  async revoke(leaseId: string): Promise<void> {
    try {
      await this.call("revoke", () => this.endLease(leaseId));
    } catch {
      // Best effort, as etcd-registry's: the lease runs out by itself.
    }
  }

  timeToLive(leaseId: string): Promise<number | undefined> {
    return this.call("timeToLive", () => {
      const lease = this.leases.get(leaseId);
      if (lease === undefined) return undefined;
      return Math.ceil((lease.expiresAt - this.clock.monotonic()) / 1000);
    });
  }

  watchPrefix(prefix: string, fromRevision: number, handlers: WatchHandlers): Promise<WatchHandle> {
    return this.call("watchPrefix", () => {
      const watch: Watch = { prefix, handlers, pending: [], pendingRevision: 0, open: true };
      this.watches.add(watch);
      if (fromRevision < this.compactedBefore) this.breakWatch(watch, COMPACTED_WATCH_REASON);
      else {
        for (const { revision, change } of this.history) {
          if (revision >= fromRevision) this.queue(watch, change, revision);
        }
      }
      return {
        cancel: () => {
          watch.open = false;
          this.watches.delete(watch);
          return Promise.resolve();
        },
      };
    });
  }

  close(): void {
    this.closed = true;
    this.breakWatches("watch ended");
  }

  // ---- internals ----------------------------------------------------------------------------------

  /** One call: rejected while closed, in an outage or when a failure is queued; otherwise run at once. */
  private call<T>(name: RegistryCall, run: () => T): Promise<T> {
    this.calls.push(name);
    if (this.closed) return Promise.reject(new Error("the registry is closed"));
    if (this.outage !== undefined) return Promise.reject(this.outage);
    const failure = this.failures.findIndex((f) => f.only === undefined || f.only === name);
    if (failure >= 0)
      return Promise.reject(this.failures.splice(failure, 1)[0]?.error ?? new Error("failed"));
    for (const action of this.beforeCall.get(name)?.splice(0) ?? []) action();
    return Promise.resolve(run());
  }

  private modRevisionOf(key: string): number {
    return this.store.get(key)?.modRevision ?? 0;
  }

  /** etcd-registry's grant-then-transaction, in one step: a refused write revokes its lease again. */
  private putOnFreshLease(
    key: string,
    value: string,
    ttlSeconds: number,
    allowed: boolean,
  ): WrittenLease | undefined {
    const leaseId = this.grantLease(ttlSeconds);
    if (!allowed) {
      this.endLease(leaseId);
      return undefined;
    }
    this.commit([{ type: "put", key, value, lease: leaseId }]);
    return { leaseId, modRevision: this.storeRevision };
  }

  /** Ends a lease (revoked or expired), deleting its keys in one revision. */
  private endLease(leaseId: string): void {
    const lease = this.leases.get(leaseId);
    if (lease === undefined) return;
    lease.timer.cancel();
    this.leases.delete(leaseId);
    this.commit([...lease.keys].map((key) => ({ type: "delete", key })));
  }

  /** Applies writes as one transaction: one new revision if anything changed. Returns whether it did. */
  private commit(writes: readonly Write[]): boolean {
    const effective = writes.filter((w) => w.type === "put" || this.store.has(w.key));
    if (effective.length === 0) return false;
    const revision = ++this.storeRevision;
    for (const write of effective) {
      const before = this.store.get(write.key);
      if (before !== undefined) this.leases.get(before.lease)?.keys.delete(write.key);
      let change: WatchChange;
      if (write.type === "put") {
        const stored: StoredKey = {
          value: write.value,
          lease: write.lease,
          createRevision: before?.createRevision ?? revision,
          modRevision: revision,
        };
        this.store.set(write.key, stored);
        this.leases.get(write.lease)?.keys.add(write.key);
        change = { type: "put", entry: toEntry(write.key, stored) };
      } else {
        this.store.delete(write.key);
        change = { type: "delete", key: write.key };
      }
      this.history.push({ revision, change });
      for (const watch of this.watches) this.queue(watch, change, revision);
    }
    return true;
  }

  /** Adds a change to a watch's next batch; the batch goes out once the current turn is over. */
  private queue(watch: Watch, change: WatchChange, revision: number): void {
    const key = change.type === "put" ? change.entry.key : change.key;
    if (!key.startsWith(watch.prefix)) return;
    if (watch.pending.length === 0) {
      setImmediate(() => {
        const batch = watch.pending;
        watch.pending = [];
        if (watch.open && batch.length > 0) watch.handlers.onChanges(batch, watch.pendingRevision);
      });
    }
    watch.pending.push(change);
    watch.pendingRevision = revision;
  }

  private breakWatch(watch: Watch, reason: string): void {
    if (!watch.open) return;
    watch.open = false;
    this.watches.delete(watch);
    setImmediate(() => watch.handlers.onBroken(reason));
  }

  private entriesUnder(prefix: string): RawEntry[] {
    return [...this.store]
      .filter(([key]) => key.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, stored]) => toEntry(key, stored));
  }
}

function toEntry(key: string, stored: StoredKey): RawEntry {
  return {
    key,
    value: stored.value,
    etcdLeaseId: stored.lease,
    createRevision: stored.createRevision,
    modRevision: stored.modRevision,
  };
}
