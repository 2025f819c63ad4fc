// This node's own lease from the first acquisition to exit, in one place: acquire; keep it (renew
// before expiry, retry failed renewals until expiry); and react at once when the own key changes in
// etcd or the network config changes. flannel exits when its lease is revoked or expires; twill
// re-acquires, the same subnet when it is still free. The etcd steps are keeper.ts's; this decides
// which to take when, and tells an observer what happened.
import type { NetworkConfig } from "../config/network-config.js";
import { formatIPv4 } from "../ip/ipv4.js";
import { systemClock, type Clock } from "../util/clock.js";
import type { Logger } from "../util/log.js";
import { errorMessage } from "../util/log.js";
import { Backoff, Wakeup, stopped } from "../util/time.js";
import { leaseFits } from "./allocate.js";
import { decodeLeaseAttrs, encodeLeaseAttrs } from "./attrs.js";
import type { ConfigState } from "./config-watch.js";
import { LeaseKeeper, type KeeperObserver, type KeeperOptions, type OwnLease } from "./keeper.js";
import type { LeaseAttrs } from "./lease.js";
import type { RawEntry } from "./peer-view.js";
import type { LeaseRegistry } from "./registry.js";
import { leaseName, type LeaseSubnets } from "./key.js";

/** Slack for the loop's heartbeat beyond its planned wake-up: one etcd call and its retry wait. */
export const LEASE_LOOP_SLACK_MS = 120_000;

/** The network config as the lifecycle follows it; ConfigWatch is one. */
export interface ConfigSource {
  readonly current: ConfigState;
  onChange(listener: (state: ConfigState) => void): () => void;
}

/**
 * Someone else wrote the own key, and the lifecycle will not fight over it nor move away from the
 * subnet (moving strands every pod of the node): it keeps what it has and reports this until the key
 * is deleted or expires (then the same subnet is acquired again) or carries this node's identity again.
 * - own-key-overwritten: the key now names another PublicIP (or cannot be read);
 * - duplicate-public-ip: the key names this node's PublicIP, written by another agent (another etcd
 *   lease, another identity): two nodes share one public IP.
 */
export interface OwnKeyConflict {
  readonly kind: "own-key-overwritten" | "duplicate-public-ip";
  readonly key: string;
  /** The other writer's PublicIP as the key names it; undefined when the value cannot be read. */
  readonly otherPublicIP: string | undefined;
  /** What happened and what the operator does, in one line. */
  readonly message: string;
}

/** What the lifecycle reports, besides the keeper's observations. */
export interface LifecycleObserver extends KeeperObserver {
  /**
   * The own lease or the config it is published under changed: first acquisition, re-acquisition,
   * adoption of a rewritten key, renewal, or a new config applied. Called before the lifecycle goes on.
   */
  ownLease(own: OwnLease, config: NetworkConfig): void;
  /**
   * The own lease was lost (deleted or expired in etcd, or changed under a write) and is being
   * re-acquired. A key overwritten by another writer is a conflict instead.
   */
  leaseLost?(reason: string): void;
  /** The own key is held by another writer (see OwnKeyConflict); undefined once that is over. */
  conflict?(conflict: OwnKeyConflict | undefined): void;
  /** Why there is no usable lease right now ("acquiring a subnet lease"); undefined once there is. */
  phase?(reason: string | undefined): void;
  /**
   * Liveness: the loop will be back within `withinMs`. Infinity while it waits, by design, for as long
   * as it takes (a valid config; an acquisition that waits out an etcd outage; a reservation).
   */
  heartbeat?(withinMs: number): void;
}

export interface LifecycleOptions {
  readonly registry: LeaseRegistry;
  readonly keeper: KeeperOptions;
  readonly config: ConfigSource;
  /** The attributes to publish under a config; the wiring asks the backend for its BackendData. */
  readonly attrsFor: (config: NetworkConfig) => Promise<LeaseAttrs>;
  /** The subnets of the node's subnet file, tried first when free. */
  readonly previousSubnet: LeaseSubnets | undefined;
  readonly observer: LifecycleObserver;
  readonly log: Logger;
  readonly clock?: Clock;
  /** Uniform in [0,1): the free subnet picked and retry jitter. */
  readonly random?: () => number;
}

/** A valid config and the text it was read from: changes are told apart by the text. */
interface ConfigVersion {
  readonly config: NetworkConfig;
  readonly text: string;
}

/** The lease has to be acquired again; `preferred` is the subnet to try first. */
interface Reacquire {
  readonly preferred: LeaseSubnets | undefined;
}

export class LeaseLifecycle {
  private readonly keeper: LeaseKeeper;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly observer: LifecycleObserver;
  private own: OwnLease | undefined;
  private applied: ConfigVersion | undefined;
  /** The own key as last reported by the subnet watch, not looked at yet. */
  private ownKeyReport: { readonly entry: RawEntry | undefined } | undefined;
  private readonly ownKeyReported: Wakeup;
  private readonly configChanged: Wakeup;
  /** After a failed renewal: when to try again (instead of keeper.renewAt). */
  private renewRetryAt: number | undefined;
  /** Another writer holds the own key, as last reported (see OwnKeyConflict). */
  private conflict: (OwnKeyConflict & { readonly modRevision: number }) | undefined;
  /** The attributes to publish changed under the same config (e.g. a new VTEP MAC): re-publish. */
  private attrsStale = false;
  /** After another failed step (a config re-publish, an own-key check): when to try again. */
  private retryAt = Infinity;
  private readonly retryBackoff: Backoff;

  constructor(private readonly options: LifecycleOptions) {
    this.clock = options.clock ?? systemClock;
    this.log = options.log;
    this.observer = options.observer;
    const random = options.random ?? Math.random;
    this.keeper = new LeaseKeeper(
      options.registry,
      options.keeper,
      options.log,
      options.observer,
      random,
      this.clock,
    );
    this.ownKeyReported = new Wakeup(this.clock);
    this.configChanged = new Wakeup(this.clock);
    this.retryBackoff = new Backoff(1000, 30_000, random);
  }

  /** The own lease and the config it is published under, once acquired. */
  get current(): { own: OwnLease; config: NetworkConfig } | undefined {
    return this.own && this.applied && { own: this.own, config: this.applied.config };
  }

  /** The own key as etcd now has it (undefined: deleted): the subnet watch's onOwnKey. */
  ownKeyChanged(entry: RawEntry | undefined): void {
    this.ownKeyReport = { entry };
    this.ownKeyReported.wake();
  }

  /** attrsFor now gives other attributes for the same config (e.g. a new identity): publish them. */
  refreshAttributes(): void {
    this.attrsStale = true;
    this.configChanged.wake();
  }

  /**
   * Runs until `signal` aborts, then resolves (also in the middle of an acquisition). Rejects only on
   * an unexpected error, such as attrsFor failing.
   */
  async run(signal: AbortSignal): Promise<void> {
    const unsubscribe = this.options.config.onChange((state) => {
      if (state.kind === "valid" && state.text !== this.applied?.text) this.configChanged.wake();
    });
    try {
      const first = await this.firstValidConfig(signal);
      if (first === undefined) return;
      await this.acquire(first, this.options.previousSubnet, "acquiring a subnet lease", signal);
      while (!stopped(signal)) {
        const wakeAt = Math.min(this.renewDueAt(), this.retryAt);
        this.beat(wakeAt);
        await Wakeup.any(
          [this.ownKeyReported, this.configChanged],
          Math.max(0, wakeAt - this.clock.now()),
          signal,
          this.clock,
        );
        if (stopped(signal)) break;
        await this.keepOnce(signal);
      }
    } catch (error) {
      if (!stopped(signal)) throw error;
    } finally {
      unsubscribe();
    }
  }

  /** --release-lease-on-exit, after run() has ended: deletes the own key if it is still ours. */
  async release(): Promise<void> {
    if (this.own !== undefined) await this.keeper.release(this.own);
  }

  private async firstValidConfig(signal: AbortSignal): Promise<ConfigVersion | undefined> {
    for (;;) {
      const state = this.options.config.current;
      if (state.kind === "valid") return { config: state.config, text: state.text };
      this.observer.phase?.("waiting for a valid network config");
      this.observer.heartbeat?.(Infinity);
      await this.configChanged.wait(Infinity, signal);
      if (stopped(signal)) return undefined;
    }
  }

  /** One round after a wake-up: each check in turn, until one says the lease must be acquired again. */
  private async keepOnce(signal: AbortSignal): Promise<void> {
    this.retryAt = Infinity;
    const reacquire =
      (await this.followConfig()) ??
      (await this.checkOwnKey()) ??
      (await this.followAttributes()) ??
      (await this.renewIfDue());
    if (this.retryAt === Infinity) this.retryBackoff.reset();
    if (reacquire !== undefined) {
      await this.acquire(this.latestConfig(), reacquire.preferred, "re-acquiring the subnet lease", signal);
    }
  }

  /** Acquires a lease (retrying until it succeeds) and makes it the own lease. */
  private async acquire(
    config: ConfigVersion,
    preferred: LeaseSubnets | undefined,
    phase: string,
    signal: AbortSignal,
  ): Promise<void> {
    this.observer.phase?.(phase);
    // Acquiring waits out etcd outages by design: liveness must not restart it for that.
    this.observer.heartbeat?.(Infinity);
    // Reports so far are about the lease being replaced; those from here on are about the new one.
    this.ownKeyReport = undefined;
    this.attrsStale = false;
    const attrs = await this.options.attrsFor(config.config);
    const own = await this.keeper.acquire(config.config, attrs, preferred, signal);
    this.applied = config;
    this.setConflict(undefined);
    this.setOwn(own);
    this.observer.phase?.(undefined);
  }

  /** A new valid config: re-published with its attributes when the lease still fits it, else a move. */
  private async followConfig(): Promise<Reacquire | undefined> {
    const state = this.options.config.current;
    const own = this.ownLease();
    if (state.kind !== "valid" || state.text === this.applied?.text) return undefined;
    // The key is not ours to write while another writer holds it: applied once that is over.
    if (this.conflict !== undefined) return undefined;
    const subnet = leaseName(own);
    if (!leaseFits(own, state.config)) {
      this.log.warn({ subnet }, "the own lease no longer fits the network config; re-acquiring");
      return { preferred: own };
    }
    this.log.info({ subnet }, "network config changed; applying it");
    const published = await this.publishIfChanged(
      own,
      await this.options.attrsFor(state.config),
      "cannot publish the lease for the new network config; retrying",
    );
    if (published === "retry") return undefined;
    if (published === "lost") {
      this.lost("changed in etcd before the new config was published");
      return { preferred: own };
    }
    this.applied = { config: state.config, text: state.text };
    this.attrsStale = false;
    this.setOwn(published);
    return undefined;
  }

  /** After refreshAttributes(): re-publish the own key with what attrsFor gives now. */
  private async followAttributes(): Promise<Reacquire | undefined> {
    if (!this.attrsStale || this.conflict !== undefined || this.applied === undefined) return undefined;
    const own = this.ownLease();
    const published = await this.publishIfChanged(
      own,
      await this.options.attrsFor(this.applied.config),
      "cannot publish the lease's new attributes; retrying",
    );
    if (published === "retry") return undefined;
    this.attrsStale = false;
    if (published === "lost") {
      this.lost("changed in etcd before the new attributes were published");
      return { preferred: own };
    }
    if (published !== own) {
      this.log.info(
        { key: own.key, backendData: published.attrs.backendData },
        "lease re-published with new attributes",
      );
      this.setOwn(published);
    }
    return undefined;
  }

  /**
   * Writes `attrs` to the own key unless it already says them (then `own` comes back as it is): the
   * lease as now written, "lost" when the key changed under us, or "retry" after an etcd error, which
   * is logged as `failure` and retried later.
   */
  private async publishIfChanged(
    own: OwnLease,
    attrs: LeaseAttrs,
    failure: string,
  ): Promise<OwnLease | "lost" | "retry"> {
    if (encodeLeaseAttrs(attrs) === encodeLeaseAttrs(own.attrs)) return own;
    try {
      return await this.keeper.republish(own, attrs);
    } catch (error) {
      this.log.warn(
        { err: this.options.registry.explain(error), key: own.key, subnet: leaseName(own) },
        failure,
      );
      this.retryLater();
      return "retry";
    }
  }

  /** What a reported change of the own key means: nothing, a rewrite to adopt, or a lost lease. */
  private async checkOwnKey(): Promise<Reacquire | undefined> {
    const report = this.ownKeyReport;
    if (report === undefined) return undefined;
    this.ownKeyReport = undefined;
    const own = this.ownLease();
    let entry = report.entry;
    // Our own write, an older version, or a key we no longer hold: nothing to do.
    if (entry !== undefined && (entry.key !== own.key || entry.modRevision <= own.modRevision))
      return undefined;
    if (entry === undefined) {
      // A deletion can be older than our last write (the watch lags behind): ask etcd how it is now.
      try {
        entry = await this.options.registry.getKey(own.key);
      } catch (error) {
        this.log.warn(
          { err: this.options.registry.explain(error), key: own.key },
          "cannot check the own lease in etcd; retrying",
        );
        this.ownKeyReport ??= report;
        this.retryLater();
        return undefined;
      }
      if (entry?.modRevision === own.modRevision) return undefined;
    }
    if (entry === undefined) {
      this.log.warn({ key: own.key }, "own lease disappeared from etcd (deleted or expired); re-acquiring");
      this.lost("deleted or expired in etcd");
      return { preferred: own };
    }
    const conflict = this.judgeRewrite(own, entry);
    if (conflict === undefined) {
      this.setConflict(undefined);
      await this.adopt(own, entry);
      return undefined;
    }
    if (this.conflict?.modRevision !== entry.modRevision) {
      this.log.error(
        { key: own.key, kind: conflict.kind, otherPublicIP: conflict.otherPublicIP },
        conflict.message,
      );
    }
    this.setConflict({ ...conflict, modRevision: entry.modRevision });
    return undefined;
  }

  /**
   * Whether a rewrite of the own key by someone else is this node's to adopt (undefined) or another
   * writer's (the conflict). Adopted: this node's PublicIP on a reservation or on this node's own etcd
   * lease, with this node's BackendData or none (an operator's edit). Anything else is another writer:
   * an agent always writes on an etcd lease of its own.
   */
  private judgeRewrite(own: OwnLease, entry: RawEntry): OwnKeyConflict | undefined {
    const ourIP = formatIPv4(this.options.keeper.publicIP);
    const subnet = leaseName(own);
    let attrs: LeaseAttrs | undefined;
    try {
      attrs = decodeLeaseAttrs(entry.value);
    } catch {
      attrs = undefined;
    }
    if (attrs === undefined || attrs.publicIP !== this.options.keeper.publicIP) {
      const other = attrs === undefined ? undefined : formatIPv4(attrs.publicIP);
      return {
        kind: "own-key-overwritten",
        key: own.key,
        otherPublicIP: other,
        message:
          `this node's lease ${own.key} was overwritten by another writer` +
          (other === undefined ? " with a value that cannot be read" : ` with PublicIP ${other}`) +
          `; this node keeps serving its pods on ${subnet} and is not ready. Find the writer ` +
          `(twill leases, etcd's audit), stop it, then delete the key (etcdctl del ${own.key}): ` +
          `this node acquires ${subnet} again at once`,
      };
    }
    const ourEtcdLease = entry.etcdLeaseId === "0" || entry.etcdLeaseId === own.leaseId;
    const ourIdentity =
      attrs.backendData === undefined ||
      (attrs.backendType === own.attrs.backendType && attrs.backendData === own.attrs.backendData);
    if (ourEtcdLease && ourIdentity) return undefined;
    return {
      kind: "duplicate-public-ip",
      key: own.key,
      otherPublicIP: ourIP,
      message:
        `another agent writes this node's public IP ${ourIP} to this node's lease ${own.key} ` +
        `(etcd lease ${entry.etcdLeaseId}, BackendData ${attrs.backendData ?? "none"}, not this node's): ` +
        `two nodes share one public IP. Give each node its own with --public-ip or --iface ` +
        `(FLANNELD_PUBLIC_IP, FLANNELD_IFACE); this node does not fight over the key and is not ready until then`,
    };
  }

  private setConflict(conflict: (OwnKeyConflict & { readonly modRevision: number }) | undefined): void {
    const before = this.conflict;
    this.conflict = conflict;
    if (conflict === undefined && before === undefined) return;
    if (conflict === undefined && before !== undefined) {
      this.log.info(
        { key: before.key, kind: before.kind },
        "the own lease is this node's again; conflict over",
      );
    }
    if (conflict?.modRevision === before?.modRevision && conflict?.kind === before?.kind) return;
    this.observer.conflict?.(
      conflict === undefined
        ? undefined
        : {
            kind: conflict.kind,
            key: conflict.key,
            otherPublicIP: conflict.otherPublicIP,
            message: conflict.message,
          },
    );
  }

  /**
   * The own key was rewritten with this node's address (an operator re-put it, or made it a
   * reservation): it is still ours, on another etcd lease or none.
   */
  private async adopt(own: OwnLease, entry: RawEntry): Promise<void> {
    const leaseId = entry.etcdLeaseId;
    let expiresAt = own.expiresAt;
    if (leaseId === "0") expiresAt = Infinity;
    else if (leaseId !== own.leaseId) {
      // Someone else's etcd lease: renew by its expiry, which moves the key onto one of ours. When
      // that expiry cannot be read, renew now.
      const ttl = await this.options.registry.timeToLive(leaseId).catch(() => undefined);
      expiresAt = this.clock.now() + (ttl ?? 0) * 1000;
    }
    this.log.info(
      { key: own.key, leaseId, reservation: leaseId === "0" },
      "own lease rewritten in etcd with this node's address; adopting it",
    );
    this.setOwn({
      ...own,
      leaseId,
      createRevision: entry.createRevision,
      modRevision: entry.modRevision,
      expiresAt,
    });
  }

  private async renewIfDue(): Promise<Reacquire | undefined> {
    const own = this.ownLease();
    if (this.clock.now() < this.renewDueAt()) return undefined;
    const subnet = leaseName(own);
    try {
      const renewed = await this.keeper.renew(own);
      if (renewed === "lost") {
        this.log.warn({ key: own.key }, "own lease changed in etcd before renewal; re-acquiring");
        this.lost("changed in etcd before renewal");
        return { preferred: own };
      }
      this.log.info({ subnet, expiresAt: new Date(renewed.expiresAt).toISOString() }, "lease renewed");
      this.setOwn(renewed);
    } catch (error) {
      this.observer.renewFailed?.(errorMessage(error));
      this.log.warn({ err: this.options.registry.explain(error), subnet }, "lease renewal failed; retrying");
      const now = this.clock.now();
      if (now >= own.expiresAt) {
        this.log.warn({ key: own.key }, "own lease expired while renewals failed; re-acquiring");
        this.lost("expired while renewals failed");
        return { preferred: own };
      }
      // Once more at the expiry at the latest: a renewal that succeeds then still keeps the key.
      this.renewRetryAt = Math.min(now + this.keeper.renewRetryMs(), own.expiresAt);
    }
    return undefined;
  }

  private setOwn(own: OwnLease): void {
    this.own = own;
    this.renewRetryAt = undefined;
    const config = this.applied?.config;
    if (config !== undefined) this.observer.ownLease(own, config);
  }

  private lost(reason: string): void {
    this.observer.leaseLost?.(reason);
  }

  private ownLease(): OwnLease {
    if (this.own === undefined) throw new Error("bug: the lease is kept before it was acquired");
    return this.own;
  }

  /** The config to acquire under: the newest valid one (a change may be what made the lease go). */
  private latestConfig(): ConfigVersion {
    const state = this.options.config.current;
    if (state.kind === "valid") return { config: state.config, text: state.text };
    if (this.applied === undefined) throw new Error("bug: no valid config to acquire under");
    return this.applied;
  }

  /** When the next renewal attempt is due: renewAt, or the retry after a failed one; never in a conflict. */
  private renewDueAt(): number {
    if (this.conflict !== undefined) return Infinity;
    return this.renewRetryAt ?? this.keeper.renewAt(this.ownLease());
  }

  private retryLater(): void {
    this.retryAt = Math.min(this.retryAt, this.clock.now() + this.retryBackoff.next());
  }

  private beat(wakeAt: number): void {
    this.observer.heartbeat?.(
      wakeAt === Infinity
        ? Infinity
        : Math.max(0, wakeAt - this.clock.now()) + this.keeper.renewRetryMs() + LEASE_LOOP_SLACK_MS,
    );
  }
}
