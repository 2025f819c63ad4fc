// The etcd steps of this node's own lease: acquire, renew, re-publish, release. flannel exits on a
// lost creation race and can stop renewing silently; twill retries the race with a fresh choice and
// writes with guarded transactions. When to call which step is lifecycle.ts's.
import type { NetworkConfig } from "../config/network-config.js";
import { formatIPv4, type IPv4, type Subnet } from "../ip/ipv4.js";
import type { Subnet6 } from "../ip/ipv6.js";
import { systemClock, type Clock } from "../util/clock.js";
import type { Logger } from "../util/log.js";
import { Backoff } from "../util/time.js";
import { chooseSubnet } from "./allocate.js";
import { decodeLeaseAttrs, encodeLeaseAttrs } from "./attrs.js";
import { leaseName, parseSubnetKey, subnetKey, type LeaseSubnets } from "./key.js";
import { leaseFrom, type Lease, type LeaseAttrs } from "./lease.js";
import type { RawEntry } from "./peer-view.js";
import type { LeaseRegistry } from "./registry.js";

export interface OwnLease {
  /** The IPv4 subnet; 0.0.0.0/0 on an IPv6-only node. */
  readonly subnet: Subnet;
  /** The IPv6 subnet (dual-stack, IPv6-only). */
  readonly ipv6Subnet?: Subnet6 | undefined;
  readonly key: string;
  readonly attrs: LeaseAttrs;
  /** etcd lease ID; "0" for a reservation (a key without a lease: never expires, never renewed). */
  readonly leaseId: string;
  /** When the key was created: of two leases claiming one identity, the older keeps it. */
  readonly createRevision: number;
  readonly modRevision: number;
  /** Expiry in ms since the epoch; Infinity for a reservation. */
  readonly expiresAt: number;
}

export interface KeeperOptions {
  readonly publicIP: IPv4;
  /** PublicIPv6, canonical; null without IPv6. */
  readonly publicIPv6?: string | null;
  readonly ttlSeconds: number;
  readonly renewMarginSeconds: number;
}

export type AcquireResult = "reused" | "reserved" | "created-previous" | "created-free";

/** Observations the keeper reports, for logs and metrics. */
export interface KeeperObserver {
  acquired?(own: OwnLease, how: AcquireResult): void;
  raceLost?(subnet: LeaseSubnets): void;
  exhausted?(message: string): void;
  renewed?(own: OwnLease): void;
  renewFailed?(error: string): void;
}

/** A clear message for an exhausted pool: names the network, pool size and count in use. */
export function exhaustedMessage(
  network: string,
  poolSize: number | bigint,
  inUse: number,
  family: 4 | 6 = 4,
): string {
  const fields =
    family === 4 ? "Network or SubnetMin/SubnetMax" : "IPv6Network or IPv6SubnetMin/IPv6SubnetMax";
  return (
    `no free ${family === 4 ? "" : "IPv6 "}subnet in ${network}: all ${poolSize} subnets of the pool are in use ` +
    `(${inUse} leased); widen ${fields}, or delete stale leases`
  );
}

/**
 * Leases for allocation: a key that parses occupies its subnet even when its value is garbage, and a
 * dual-stack key (a flanneld node with EnableIPv6) occupies its IPv4 subnet.
 */
export function leasesForAllocation(entries: readonly RawEntry[]): Lease[] {
  const leases: Lease[] = [];
  for (const entry of entries) {
    let subnets: LeaseSubnets;
    try {
      subnets = parseSubnetKey(entry.key);
    } catch {
      continue;
    }
    let attrs: LeaseAttrs;
    try {
      attrs = decodeLeaseAttrs(entry.value);
    } catch {
      attrs = {
        publicIP: 0,
        publicIPv6: null,
        backendType: undefined,
        backendData: undefined,
        backendV6Data: undefined,
      };
    }
    leases.push(leaseFrom(entry, subnets, attrs));
  }
  return leases;
}

export class LeaseKeeper {
  constructor(
    private readonly registry: LeaseRegistry,
    private readonly options: KeeperOptions,
    private readonly log: Logger,
    private readonly observer: KeeperObserver = {},
    /** Uniform in [0,1): the free subnet picked and the retry jitter. */
    private readonly random: () => number = Math.random,
    private readonly clock: Clock = systemClock,
  ) {}

  /**
   * Acquires a lease, retrying until it succeeds or `signal` aborts (then throws).
   * `preferred` is the subnet to try first when free: the subnet file's, or the one just lost.
   */
  async acquire(
    config: NetworkConfig,
    attrs: LeaseAttrs,
    preferred: LeaseSubnets | undefined,
    signal: AbortSignal,
  ): Promise<OwnLease> {
    const backoff = new Backoff(500, 30_000, this.random);
    const value = encodeLeaseAttrs(attrs);
    let racesLost = 0;
    while (!signal.aborted) {
      try {
        const result = await this.tryAcquireOnce(config, attrs, value, preferred);
        if (result.kind === "acquired") {
          this.observer.acquired?.(result.own, result.how);
          this.log.info(
            {
              subnet: leaseName(result.own),
              publicIP: formatIPv4(this.options.publicIP),
              ...(this.options.publicIPv6 == null ? {} : { publicIPv6: this.options.publicIPv6 }),
              how: result.how,
              leaseId: result.own.leaseId,
            },
            "subnet lease acquired",
          );
          return result.own;
        }
        if (result.kind === "race") {
          racesLost += 1;
          this.observer.raceLost?.(result.subnet);
          this.log.info(
            { subnet: leaseName(result.subnet), racesLost },
            "another node took the subnet first; retrying with a fresh choice",
          );
          // Immediate retry for the first few races; back off if the cluster is stampeding.
          if (racesLost > 3) await this.clock.sleep(backoff.next(), signal);
          continue;
        }
        this.observer.exhausted?.(result.message);
        this.log.error(result.message);
      } catch (error) {
        this.log.warn(
          { err: this.registry.explain(error) },
          "cannot acquire a subnet lease from etcd; retrying",
        );
      }
      await this.clock.sleep(backoff.next(), signal);
    }
    throw new Error("stopped before a lease was acquired");
  }

  private async tryAcquireOnce(
    config: NetworkConfig,
    attrs: LeaseAttrs,
    value: string,
    preferred: LeaseSubnets | undefined,
  ): Promise<
    | { kind: "acquired"; own: OwnLease; how: AcquireResult }
    | { kind: "race"; subnet: LeaseSubnets }
    | { kind: "exhausted"; message: string }
  > {
    const snapshot = await this.registry.listSubnets();
    const decision = chooseSubnet({
      config,
      leases: leasesForAllocation(snapshot.entries),
      publicIP: this.options.publicIP,
      publicIPv6: this.options.publicIPv6 ?? null,
      previousSubnet: preferred?.subnet,
      previousIpv6Subnet: preferred?.ipv6Subnet,
      random: this.random,
    });
    for (const stale of decision.staleOwn) {
      // A lease for our IP that the current config no longer allows (flannel deletes it too).
      this.log.warn({ key: stale.key }, "deleting this node's lease that no longer fits the network config");
      await this.registry.deleteIfUnchanged(stale.key, stale.modRevision);
    }
    const ttl = this.options.ttlSeconds;
    switch (decision.kind) {
      case "reuse": {
        const { lease } = decision;
        if (lease.etcdLeaseId === "0") {
          // A reservation (key without a lease): keep it one, unlike flannel (flannel#1329).
          const written = await this.registry.putReservationIfUnchanged(lease.key, value, lease.modRevision);
          if (written === undefined) return { kind: "race", subnet: lease };
          return {
            kind: "acquired",
            how: "reserved",
            own: {
              subnet: lease.subnet,
              ipv6Subnet: lease.ipv6Subnet,
              key: lease.key,
              attrs,
              leaseId: "0",
              createRevision: lease.createRevision,
              modRevision: written,
              expiresAt: Infinity,
            },
          };
        }
        if (lease.attrs.backendData !== attrs.backendData || lease.attrs.backendType !== attrs.backendType) {
          // This node's own lease from before a reinstall or a lost state dir, as flannel assumes; or
          // another node with the same public IP, which then reports this as a second writer of its key.
          this.log.warn(
            {
              key: lease.key,
              publicIP: formatIPv4(this.options.publicIP),
              backendData: lease.attrs.backendData,
            },
            "taking over a live lease that carries this node's public IP with another identity: if another node " +
              "uses this public IP, give each node its own (--public-ip, --iface)",
          );
        }
        const written = await this.registry.replaceIfUnchanged(lease.key, value, ttl, lease.modRevision);
        if (written === undefined) return { kind: "race", subnet: lease };
        // The key now has a fresh etcd lease; revoke the old one, as renew() does, rather than leave it 24 h.
        await this.registry.revoke(lease.etcdLeaseId);
        return {
          kind: "acquired",
          how: "reused",
          own: this.ownFrom(lease, lease.key, attrs, {
            ...written,
            createRevision: lease.createRevision,
          }),
        };
      }
      case "create": {
        const key = subnetKey(this.registry.prefix, decision.subnet, decision.ipv6Subnet);
        const written = await this.registry.createIfAbsent(key, value, ttl);
        if (written === undefined) return { kind: "race", subnet: decision };
        return {
          kind: "acquired",
          how: decision.reason === "previous-subnet" ? "created-previous" : "created-free",
          own: this.ownFrom(decision, key, attrs, { ...written, createRevision: written.modRevision }),
        };
      }
      case "exhausted":
        return {
          kind: "exhausted",
          message: exhaustedMessage(decision.network, decision.poolSize, decision.inUse, decision.family),
        };
    }
  }

  private ownFrom(
    subnets: LeaseSubnets,
    key: string,
    attrs: LeaseAttrs,
    written: { leaseId: string; modRevision: number; createRevision: number },
  ): OwnLease {
    return {
      subnet: subnets.subnet,
      ipv6Subnet: subnets.ipv6Subnet,
      key,
      attrs,
      leaseId: written.leaseId,
      createRevision: written.createRevision,
      modRevision: written.modRevision,
      expiresAt: this.clock.now() + this.options.ttlSeconds * 1000,
    };
  }

  /** When to renew: `margin` before expiry, but never later than half-way for short test TTLs. */
  renewAt(own: OwnLease): number {
    if (own.expiresAt === Infinity) return Infinity;
    const ttlMs = this.options.ttlSeconds * 1000;
    const marginMs = Math.min(this.options.renewMarginSeconds * 1000, ttlMs / 2);
    return own.expiresAt - marginMs;
  }

  /** How long to wait before retrying a failed renewal: flannel's 1 minute, less for short TTLs. */
  renewRetryMs(): number {
    return Math.min(60_000, (this.options.ttlSeconds * 1000) / 10);
  }

  /**
   * Renews the lease with a fresh etcd lease, only if the key is still the one we wrote.
   * Returns the renewed lease, "lost" when the key changed or vanished, or throws on etcd errors.
   */
  async renew(own: OwnLease): Promise<OwnLease | "lost"> {
    const renewed = await this.republish(own, own.attrs);
    if (renewed !== "lost") this.observer.renewed?.(renewed);
    return renewed;
  }

  /**
   * Rewrites the own key with `attrs`, only if the key is still the one we wrote: onto a fresh etcd
   * lease, or kept a reservation (a key without a lease stays one). Returns the lease as now written,
   * "lost" when the key changed or vanished, or throws on etcd errors.
   */
  async republish(own: OwnLease, attrs: LeaseAttrs): Promise<OwnLease | "lost"> {
    const value = encodeLeaseAttrs(attrs);
    if (own.leaseId === "0") {
      const written = await this.registry.putReservationIfUnchanged(own.key, value, own.modRevision);
      return written === undefined ? "lost" : { ...own, attrs, modRevision: written };
    }
    const written = await this.registry.replaceIfUnchanged(
      own.key,
      value,
      this.options.ttlSeconds,
      own.modRevision,
    );
    if (written === undefined) return "lost";
    // The old etcd lease no longer holds the key; revoke it rather than leave it for 24 h.
    await this.registry.revoke(own.leaseId);
    return this.ownFrom(own, own.key, attrs, { ...written, createRevision: own.createRevision });
  }

  /** Releases the lease on request (--release-lease-on-exit): deletes the key if it is still ours. */
  async release(own: OwnLease): Promise<void> {
    await this.registry.deleteIfUnchanged(own.key, own.modRevision);
    if (own.leaseId !== "0") await this.registry.revoke(own.leaseId);
  }
}
