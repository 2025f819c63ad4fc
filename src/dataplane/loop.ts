// The data-plane loop: the imperative shell around the pure core (backends' per-peer objects, the
// desired state, the planner). It keeps the kernel equal to the desired state at the cost of the change,
// not of the whole state:
//   - a peer change becomes that peer's objects, diffed against the cached kernel view and written at
//     once (no fixed sleep; what arrives while a write is in flight is batched into the next round);
//   - kernel notifications keep the view true; a slot someone else changed is re-planned and repaired at
//     once, an echo of our own write finds the slot as desired and costs nothing more;
//   - devices (bridge, backend devices) are checked when their links or addresses change;
//   - a full re-read and re-plan runs at start, on a new node state, after a notification overflow and
//     periodically as a safety net.
// It never flushes anything: only owned objects are touched, and only to bring them to the desired state.
import type {
  DeviceRepair,
  DeviceSpec,
  NodeBackend,
  NodeFacts,
  PeerProgram,
  PeerStatus,
  UserspaceDataPath,
  UserspaceRoute,
} from "../backends/backend.js";
import type { NetworkConfig } from "../config/network-config.js";
import { localRunner, type CommandRunner } from "../exec/command.js";
import { parsePrefix, type Family, type Prefix } from "../ip/address.js";
import { formatCidr, formatIPv4, type Subnet } from "../ip/ipv4.js";
import type { Lease } from "../lease/lease.js";
import { formatCidr6, type Subnet6 } from "../ip/ipv6.js";
import { hasIPv4, leaseName } from "../lease/key.js";
import type { ExternalInterface } from "../node/external-interface.js";
import { bridgeSpec } from "../node/bridge.js";
import { ensureForwarding, IP_FORWARD_SYSCTL, IPV6_FORWARD_SYSCTL, sysfsDeviceHost } from "../node/host.js";
import { systemClock, type Clock, type Timer } from "../util/clock.js";
import type { Logger } from "../util/log.js";
import { Backoff, stopped } from "../util/time.js";
import type { KernelChannel, KernelEvent } from "./channel.js";
import { deviceInSync, ensureDevice, lostObjects, type DeviceHost } from "./devices.js";
import { DesiredState } from "./desired.js";
import { KernelView, type ViewChange } from "./kernel-view.js";
import {
  describeObject,
  planSlot,
  slotIdOf,
  slotOf,
  type OwnershipScope,
  type PlannedOp,
} from "./kinds/index.js";
import { blackholeRoute, TWILL_ROUTE_PROTOCOL, type ObjectKind } from "./objects.js";
import { planAll, planSlots, type PlanInput } from "./planner.js";

/** What started a round: labels of twill_reconcile_rounds_total. */
export type Trigger = "self" | "peers" | "kernel" | "resync" | "overflow" | "retry";
export const TRIGGERS: readonly Trigger[] = ["self", "peers", "kernel", "resync", "overflow", "retry"];

/**
 * Whether a round's ops repaired drift (someone else changed the kernel) rather than following etcd:
 * rounds started by a notification, a resync or lost notifications. A retry finishes an earlier round's
 * work and is not drift.
 */
export function isDriftRound(trigger: Trigger): boolean {
  return trigger === "kernel" || trigger === "resync" || trigger === "overflow";
}

/** This node, as the data plane needs it. */
export interface DataplaneSelf {
  readonly config: NetworkConfig;
  /** The own IPv4 subnet; 0.0.0.0/0 when IPv4 is off. */
  readonly subnet: Subnet;
  /** The own IPv6 subnet, when IPv6 is on. */
  readonly ipv6Subnet?: Subnet6 | undefined;
  readonly external: ExternalInterface;
  /** The backend prepared for this node (VTEP MAC and the like). */
  readonly backend: NodeBackend;
}

export interface FailedOp {
  readonly op: PlannedOp;
  readonly error: string;
}

export interface RoundReport {
  readonly trigger: Trigger;
  readonly durationMs: number;
  readonly ops: readonly PlannedOp[];
  readonly failed: readonly FailedOp[];
  readonly repairs: readonly DeviceRepair[];
  /** Slots of each kind in the desired state after this round. */
  readonly desiredCounts: Readonly<Record<ObjectKind, number>>;
  /** ms from the oldest peer change this round covers to its completion (rounds that carried one). */
  readonly peerLatencyMs: number | undefined;
  /** Why the kernel view was read again in this round, if it was. */
  readonly reload: "start" | Trigger | undefined;
  readonly error: Error | undefined;
}

export interface DataplaneObserver {
  round?(report: RoundReport): void;
  /** Every peer's outcome, whenever one changed (the map is the loop's own: read, don't keep). */
  peerStates?(states: ReadonlyMap<string, PeerStatus>): void;
}

export interface DataplaneOptions {
  readonly bridge: string;
  /** A full re-read and re-plan this often; notifications keep the view true in between. */
  readonly resyncIntervalMs: number;
  /** Follow the kernel's notifications (default); false = the periodic resync only (--kernel-watch=false). */
  readonly watchKernel: boolean;
  /**
   * --ip-blackhole-route: a blackhole route for the node's own subnet at this metric, behind the
   * bridge's connected route (metric 0); undefined = none.
   */
  readonly blackholeMetric?: number | undefined;
}

/** What the loop touches besides the channel; replaceable in unit tests. */
export interface DataplaneHost extends DeviceHost {
  /** Turns forwarding of a family on; true when it changed something. */
  ensureForwarding(family: Family): Promise<boolean>;
  /** Runs the few commands a device check may need (ethtool). */
  readonly runner: CommandRunner;
}

export const systemDataplaneHost: DataplaneHost = {
  ...sysfsDeviceHost,
  ensureForwarding: (family) => ensureForwarding(family === 4 ? IP_FORWARD_SYSCTL : IPV6_FORWARD_SYSCTL),
  runner: localRunner,
};

/** The order in which peers win a slot several want: by subnet, then key. */
function rankOf(lease: Lease): string {
  return `${lease.subnet.ip.toString(16).padStart(8, "0")}/${String(lease.subnet.prefixLen).padStart(3, "0")} ${lease.key}`;
}

function errorOf(caught: unknown): Error {
  return caught instanceof Error ? caught : new Error(String(caught));
}

/** The work waiting for the next round. */
interface Pending {
  /** Re-read the whole kernel view, and why. */
  reload: "start" | Trigger | undefined;
  /** Re-compute every peer's objects (new node state, new on-link networks). */
  recompute: boolean;
  /** Check the devices. */
  devices: boolean;
  /** Peers changed since the last round: lease, or undefined when removed. */
  readonly peers: Map<string, Lease | undefined>;
  /** Slots the kernel changed and that are no longer as desired. */
  readonly slots: Set<string>;
  /** Re-plan the slots whose writes failed. */
  retry: boolean;
  /** When the oldest peer change not yet programmed arrived (monotonic ms). */
  peerChangeAt: number | undefined;
}

function nothingPending(): Pending {
  return {
    reload: undefined,
    recompute: false,
    devices: false,
    peers: new Map(),
    slots: new Set(),
    retry: false,
    peerChangeAt: undefined,
  };
}

export class DataplaneLoop {
  private readonly view = new KernelView();
  private readonly desired = new DesiredState();
  private readonly statuses = new Map<string, PeerStatus>();
  private readonly loggedStates = new Map<string, string>();
  private readonly contests = new Map<string, string>();
  private self: DataplaneSelf | undefined;
  private selfKey: string | undefined;
  private peers = new Map<string, Lease>();
  private peersKnown = false;
  private pending: Pending = nothingPending();
  /** Slots whose last write failed: planned again on retry. */
  private readonly failedSlots = new Set<string>();
  /** The last round failed as a whole: the retry re-reads, re-checks and re-plans everything. */
  private retryInFull = false;
  private readonly backoff = new Backoff(250, 10_000);
  private retryTimer: Timer | undefined;
  private resyncTimer: Timer | undefined;
  private wake: (() => void) | undefined;
  private woken = false;
  /** Notifications that arrive while a round runs: applied when it ends. */
  private deferred: KernelEvent[] | undefined;
  private facts: NodeFacts | undefined;
  private programmedOnce = false;
  private readonly forwardingWarned = new Set<Family>();
  private readonly extraCheckWarnings = new Map<string, string>();
  /** The userspace data path's table (udp), by peer lease key, and this round's changes to it. */
  private readonly userspaceRoutes = new Map<string, UserspaceRoute>();
  private readonly userspaceChanges = new Map<string, UserspaceRoute | undefined>();
  /** The userspace data path of the backend in use, once started. */
  private userspace: UserspaceDataPath | undefined;
  /** The previous backend's userspace data path, stopping: the next one starts after it let go. */
  private userspaceStopping: Promise<void> | undefined;
  private readonly clock: Clock;
  private readonly host: DataplaneHost;

  constructor(
    private readonly channel: KernelChannel,
    private readonly options: DataplaneOptions,
    private readonly log: Logger,
    private readonly observer: DataplaneObserver = {},
    deps: { readonly clock?: Clock; readonly host?: DataplaneHost } = {},
  ) {
    this.clock = deps.clock ?? systemClock;
    this.host = deps.host ?? systemDataplaneHost;
  }

  /** True once a full round has completed without failures. */
  get programmed(): boolean {
    return this.programmedOnce;
  }

  /** The outcome per peer lease key, as of the last round. */
  get peerStates(): ReadonlyMap<string, PeerStatus> {
    return this.statuses;
  }

  /** A new or changed node state (lease, config, interface, backend): everything is checked again. */
  setSelf(self: DataplaneSelf): void {
    // IPv6 subnets as text: their bigints have no JSON form.
    const key = JSON.stringify([
      self.subnet,
      self.config.network,
      self.config.enableIPv4,
      self.ipv6Subnet === undefined ? null : formatCidr6(self.ipv6Subnet),
      self.config.ipv6 === undefined ? null : formatCidr6(self.config.ipv6.network),
      self.config.backend.type,
      self.config.backend.options,
      self.external,
      self.backend.leaseData,
      self.backend.leaseV6Data ?? null,
    ]);
    if (key === this.selfKey) return;
    if (this.userspace !== undefined && this.userspace !== self.backend.userspace) {
      const old = this.userspace;
      this.userspace = undefined;
      // Its device and port may be the next one's (a Port change): they must be let go of first.
      const before = this.userspaceStopping ?? Promise.resolve();
      this.userspaceStopping = before.then(() =>
        (old.retire?.() ?? old.stop()).catch((error: unknown) =>
          this.log.error(
            { err: errorOf(error) },
            "stopping the previous backend's userspace data path failed",
          ),
        ),
      );
    }
    this.self = self;
    this.selfKey = key;
    this.pending.reload ??= "self";
    this.pending.recompute = true;
    this.pending.devices = true;
    this.kick();
  }

  /**
   * Peer changes from the peer view. Without `changes` (the first call, or after the view was rebuilt)
   * `peers` is taken as the complete set.
   */
  setPeers(
    peers: ReadonlyMap<string, Lease>,
    changes?: readonly { readonly key: string; readonly lease: Lease | undefined }[],
  ): void {
    this.pending.peerChangeAt ??= this.clock.monotonic();
    if (changes === undefined || !this.peersKnown) {
      for (const key of this.peers.keys()) if (!peers.has(key)) this.pending.peers.set(key, undefined);
      for (const [key, lease] of peers) this.pending.peers.set(key, lease);
      this.peersKnown = true;
    } else {
      for (const change of changes) this.pending.peers.set(change.key, change.lease);
    }
    this.kick();
  }

  async run(signal: AbortSignal): Promise<void> {
    const subscription = this.options.watchKernel
      ? this.channel.subscribe((events) => this.onKernelEvents(events))
      : undefined;
    this.channel.watchDevices([]);
    this.pending.reload ??= "start";
    this.scheduleResync();
    try {
      while (!stopped(signal)) {
        await this.nextWork(signal);
        if (stopped(signal)) break;
        if (!this.ready() || !this.hasWork()) continue;
        await this.round();
      }
    } finally {
      subscription?.close();
      this.retryTimer?.cancel();
      this.resyncTimer?.cancel();
    }
  }

  /**
   * Ends the backend's userspace data path (udp's proxy). Not part of run(): the agent calls it last
   * on its way out, so that packets keep moving while everything else shuts down. The devices and
   * routes stay as they are; the next agent attaches to them again.
   */
  async stopUserspace(): Promise<void> {
    const userspace = this.userspace;
    this.userspace = undefined;
    await this.userspaceStopping;
    await userspace?.stop();
  }

  private hasWork(): boolean {
    const p = this.pending;
    return (
      p.reload !== undefined || p.recompute || p.devices || p.peers.size > 0 || p.slots.size > 0 || p.retry
    );
  }

  private kick(): void {
    this.woken = true;
    this.wake?.();
  }

  /** Nothing can be planned before both the node and its peers are known: pruning then would remove good routes. */
  private ready(): boolean {
    return this.self !== undefined && this.peersKnown;
  }

  /** Resolves when there is work the loop can do (or on abort); never spins while it cannot. */
  private nextWork(signal: AbortSignal): Promise<void> {
    // Aborted during a round: an abort listener added now would never fire.
    if (signal.aborted) return Promise.resolve();
    if (this.ready() && (this.hasWork() || this.woken)) {
      this.woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        this.wake = undefined;
        this.woken = false;
        signal.removeEventListener("abort", done);
        resolve();
      };
      this.wake = done;
      signal.addEventListener("abort", done, { once: true });
    });
  }

  private scheduleResync(): void {
    this.resyncTimer?.cancel();
    this.resyncTimer = this.clock.setTimer(this.options.resyncIntervalMs, () => {
      this.pending.reload ??= "resync";
      this.pending.devices = true;
      this.kick();
      this.scheduleResync();
    });
  }

  private scheduleRetry(): void {
    if (this.retryTimer !== undefined) return;
    this.retryTimer = this.clock.setTimer(this.backoff.next(), () => {
      this.retryTimer = undefined;
      this.pending.retry = true;
      if (this.retryInFull) {
        this.retryInFull = false;
        this.pending.reload ??= "retry";
        this.pending.recompute = true;
        this.pending.devices = true;
      }
      this.kick();
    });
  }

  // ---- kernel notifications -----------------------------------------------------------------------

  private onKernelEvents(events: readonly KernelEvent[]): void {
    if (this.deferred !== undefined) {
      this.deferred.push(...events);
      return;
    }
    this.absorb(this.view.apply(events));
  }

  /** Turns what a batch of notifications changed into work, keeping only slots that are now wrong. */
  private absorb(change: ViewChange): void {
    let work = false;
    if (change.overflow) {
      this.log.warn("kernel notifications were lost (receive buffer overflow); reading the kernel again");
      this.pending.reload ??= "overflow";
      this.pending.devices = true;
      work = true;
    }
    if (change.lost.size > 0) {
      // Deleted, re-created or down: the kernel dropped the device's routes and entries silently.
      this.pending.reload ??= "kernel";
      work = true;
    }
    if (change.devices.size > 0 && this.devicesNeedWork(change.devices)) work = true;
    const scope = this.scope();
    for (const id of change.slots) {
      if (scope === undefined) break;
      const { kind, key } = slotOf(id);
      // An echo of our own write, or a change to something that is not ours: nothing to do.
      if (planSlot(kind, this.desired.get(kind, key), this.view.objects.get(kind, key), scope).length === 0)
        continue;
      this.pending.slots.add(id);
      work = true;
    }
    if (work) this.kick();
  }

  /**
   * Whether link or address changes of watched devices call for a device check or a recompute: a device
   * no longer as its spec asks, or new on-link networks on the external interface. Our own device
   * changes echo back here and find everything in order.
   */
  private devicesNeedWork(devices: ReadonlySet<string>): boolean {
    const self = this.self;
    if (self === undefined) return false;
    let work = false;
    const facts = this.nodeFacts(self);
    if (
      devices.has(self.external.name) &&
      JSON.stringify(facts.connected) !== JSON.stringify(this.facts?.connected)
    ) {
      this.pending.recompute = true;
      work = true;
    }
    const specs = this.deviceSpecs(self, facts).filter((spec) => devices.has(spec.link.name));
    if (specs.some((spec) => !deviceInSync(this.view, spec))) {
      this.pending.devices = true;
      work = true;
    }
    return work;
  }

  // ---- a round --------------------------------------------------------------------------------------

  private chooseTrigger(p: Pending): Trigger {
    if (p.reload === "start" || p.reload === "self" || p.recompute) return "self";
    if (p.reload !== undefined) return p.reload;
    if (p.peers.size > 0) return "peers";
    if (p.slots.size > 0 || p.devices) return "kernel";
    return "retry";
  }

  private scope(): OwnershipScope | undefined {
    const self = this.self;
    if (self === undefined) return undefined;
    return { routeProtocol: TWILL_ROUTE_PROTOCOL, devices: new Set(self.backend.ownedDevices) };
  }

  private deviceSpecs(self: DataplaneSelf, facts: NodeFacts): DeviceSpec[] {
    const mtu = self.config.backend.mtu(self.external, self.config.ipv6 !== undefined);
    return [
      bridgeSpec(
        this.options.bridge,
        {
          subnet: self.subnet,
          network: self.config.network,
          ipv6Subnet: self.ipv6Subnet,
          ipv6Network: self.config.ipv6?.network,
        },
        mtu,
      ),
      ...self.backend.devices(facts),
    ];
  }

  private async round(): Promise<void> {
    const self = this.self;
    const scope = this.scope();
    if (self === undefined || scope === undefined) return;
    const work = this.pending;
    this.pending = nothingPending();
    const trigger = this.chooseTrigger(work);
    const started = this.clock.monotonic();
    const repairs: DeviceRepair[] = [];
    const failed: FailedOp[] = [];
    let ops: PlannedOp[] = [];
    let error: Error | undefined;
    let reload = work.reload;
    let full = work.reload !== undefined || work.recompute;
    // Notifications that arrive during the round are applied after it, over the acknowledged writes
    // and the devices as the round left them: a change someone made after our write wins, and the
    // echoes of our own writes and device changes find everything as desired and cost nothing more.
    this.deferred = [];
    // The leases are recorded first: whatever fails below, a later full round starts from them.
    for (const [key, lease] of work.peers) {
      if (lease === undefined) this.peers.delete(key);
      else this.peers.set(key, lease);
    }
    try {
      const owned = self.backend.ownedDevices;
      this.channel.watchDevices(owned);
      this.view.watch([this.options.bridge, ...owned, self.external.name]);
      if (reload !== undefined) await this.reload();
      if (work.devices || reload !== undefined) {
        repairs.push(...(await this.ensureDevices(self)));
        if (lostObjects(repairs)) {
          // A device made or brought up here holds none of its old entries: read them again.
          reload ??= trigger;
          await this.reload();
          full = true;
        }
      }
      const facts = this.nodeFacts(self);
      if (
        this.facts === undefined ||
        JSON.stringify(facts.connected) !== JSON.stringify(this.facts.connected)
      )
        full = true;
      this.facts = facts;
      if (full) {
        this.recomputeAll(facts);
        this.reportContests(this.desired.contested(), true);
        ops = planAll(this.planInput(), scope);
      } else {
        const slots = new Set(work.slots);
        for (const key of work.peers.keys()) {
          for (const id of this.setPeer(facts, key, this.peers.get(key))) slots.add(id);
        }
        if (work.retry) for (const id of this.failedSlots) slots.add(id);
        this.reportContests(slots, false);
        ops = planSlots(slots, this.planInput(), scope);
      }
      failed.push(...(await this.write(ops)));
      await this.syncUserspace(self, facts, repairs, full);
      if (full || work.retry) this.failedSlots.clear();
      for (const failure of failed) this.failedSlots.add(slotIdOf(failure.op.object));
      if (full) {
        for (const key of this.loggedStates.keys())
          if (!this.statuses.has(key)) this.loggedStates.delete(key);
        this.reportPeerStates(this.statuses.keys());
      } else if (work.peers.size > 0) {
        this.reportPeerStates(work.peers.keys());
      }
    } catch (caught) {
      error = errorOf(caught);
      // Whatever failed is done again in full on the retry, from the peers as they are then.
      this.retryInFull = true;
    } finally {
      const deferred = this.deferred;
      this.deferred = undefined;
      this.absorb(this.view.apply(deferred));
    }
    const ok = error === undefined && failed.length === 0;
    const peerChangeAt = work.peerChangeAt;
    if (!ok && peerChangeAt !== undefined) {
      // Not programmed yet: the retry that programs it reports the latency from the original change.
      this.pending.peerChangeAt = Math.min(this.pending.peerChangeAt ?? peerChangeAt, peerChangeAt);
    }
    if (ok) {
      this.backoff.reset();
      if (full) this.programmedOnce = true;
    } else {
      this.scheduleRetry();
    }
    const report: RoundReport = {
      trigger,
      durationMs: this.clock.monotonic() - started,
      ops,
      failed,
      repairs,
      desiredCounts: this.desiredCounts(),
      peerLatencyMs: ok && peerChangeAt !== undefined ? this.clock.monotonic() - peerChangeAt : undefined,
      reload,
      error,
    };
    this.logRound(report);
    this.observer.round?.(report);
  }

  /** Reads the whole kernel view again; notifications meanwhile are replayed over the dump. */
  private async reload(): Promise<void> {
    // What was reported before the dump is in the dump; replayed afterwards it would be stale.
    if (this.deferred !== undefined) this.deferred.length = 0;
    this.view.beginReload();
    try {
      const links = await this.channel.dumpLinks();
      const addresses = await this.channel.dumpAddresses();
      const routes = await this.channel.dumpRoutes();
      const neighbours = await this.channel.dumpNeighbours();
      const fdb = await this.channel.dumpFdb();
      this.absorb(this.view.finishReload({ links, addresses, routes, neighbours, fdb }));
    } catch (error) {
      this.absorb(this.view.finishReload({ links: [], addresses: [], routes: [], neighbours: [], fdb: [] }));
      throw error;
    }
  }

  private async ensureDevices(self: DataplaneSelf): Promise<DeviceRepair[]> {
    const repairs: DeviceRepair[] = [];
    const families: Family[] = [];
    if (self.config.enableIPv4) families.push(4);
    if (self.config.ipv6 !== undefined) families.push(6);
    for (const family of families) {
      const sysctl = family === 4 ? "net.ipv4.ip_forward=1" : "net.ipv6.conf.all.forwarding=1";
      try {
        if (await this.host.ensureForwarding(family)) {
          repairs.push({ device: "-", what: "forwarding", detail: sysctl });
        }
      } catch (error) {
        // In a container /proc/sys is often read-only, and the host may have forwarding on already
        // (kubelet and kube-proxy usually do): say it once, clearly, and program the rest anyway.
        if (!this.forwardingWarned.has(family)) {
          this.forwardingWarned.add(family);
          this.log.error(
            { err: errorOf(error) },
            `cannot enable IPv${family} forwarding: pods cannot reach other nodes until ${sysctl} on this host`,
          );
        }
      }
    }
    for (const spec of this.deviceSpecs(self, this.nodeFacts(self))) {
      repairs.push(...(await ensureDevice(this.channel, this.view, spec, this.host)));
      if (spec.extraChecks !== undefined) repairs.push(...(await this.extraChecks(spec)));
    }
    return repairs;
  }

  /** Checks outside the kernel channel (ethtool): a failure is reported once and never blocks peers. */
  private async extraChecks(spec: DeviceSpec): Promise<DeviceRepair[]> {
    const name = spec.link.name;
    try {
      const repairs = (await spec.extraChecks?.(this.host.runner)) ?? [];
      this.extraCheckWarnings.delete(name);
      return repairs;
    } catch (caught) {
      const error = errorOf(caught);
      if (this.extraCheckWarnings.get(name) !== error.message) {
        this.extraCheckWarnings.set(name, error.message);
        this.log.error({ err: error, device: name }, "device check failed; the device works without it");
      }
      return [];
    }
  }

  /** The on-link networks of the external interface come from the kernel view. */
  private nodeFacts(self: DataplaneSelf): NodeFacts {
    // IPv6 link-local networks (scope link) are on every interface and say nothing about peers.
    const connected: Prefix[] = this.view
      .addressesOf(self.external.name)
      .filter((a) => (a.family === 4 ? a.scope !== 254 : a.scope === 0))
      .map((a) => parsePrefix(`${a.address}/${a.prefixLength}`));
    return {
      subnet: self.subnet,
      network: self.config.network,
      ipv6Subnet: self.ipv6Subnet,
      ipv6Network: self.config.ipv6?.network,
      external: self.external,
      connected,
    };
  }

  /** One peer's objects and verdict; a peer advertising our own public address is never programmed. */
  private program(facts: NodeFacts, lease: Lease): PeerProgram {
    const config = this.self?.config;
    const sameV4 =
      config?.enableIPv4 === true &&
      hasIPv4(lease.subnet) &&
      lease.attrs.publicIP === facts.external.publicIp;
    const sameV6 =
      config?.ipv6 !== undefined &&
      lease.ipv6Subnet !== undefined &&
      lease.attrs.publicIPv6 !== null &&
      lease.attrs.publicIPv6 === facts.external.publicIpv6;
    if (sameV4 || sameV6) {
      const address = sameV4 ? formatIPv4(lease.attrs.publicIP) : (lease.attrs.publicIPv6 ?? "");
      return {
        objects: [],
        status: {
          state: "unreachable",
          reason:
            `peer ${leaseName(lease)} advertises this node's own public IP ` +
            `${address} (a stale lease of this node?); not programmed`,
        },
      };
    }
    return (
      this.self?.backend.peer(facts, lease) ?? {
        objects: [],
        status: { state: "backend-mismatch", reason: "no backend" },
      }
    );
  }

  /** Sets one peer's contribution to the desired state; returns the slots it touched. */
  private setPeer(facts: NodeFacts, key: string, lease: Lease | undefined): string[] {
    if (lease === undefined) {
      this.statuses.delete(key);
      if (this.userspaceRoutes.delete(key)) this.userspaceChanges.set(key, undefined);
      return this.desired.remove(`peer ${key}`);
    }
    const { objects, status, userspaceRoute } = this.program(facts, lease);
    this.statuses.set(key, status);
    if (userspaceRoute !== undefined) {
      this.userspaceRoutes.set(key, userspaceRoute);
      this.userspaceChanges.set(key, userspaceRoute);
    } else if (this.userspaceRoutes.delete(key)) {
      this.userspaceChanges.set(key, undefined);
    }
    return this.desired.set(`peer ${key}`, rankOf(lease), objects);
  }

  /**
   * Starts the backend's userspace data path once its devices exist (again when one was made anew) and
   * hands it this round's peer changes; after a full recompute, the whole table.
   */
  private async syncUserspace(
    self: DataplaneSelf,
    facts: NodeFacts,
    repairs: readonly DeviceRepair[],
    full: boolean,
  ): Promise<void> {
    // A round that began before the node changed: the next round runs for the new node.
    if (self !== this.self) return;
    const userspace = self.backend.userspace;
    if (userspace === undefined) return;
    await this.userspaceStopping;
    if (self !== this.self) return;
    if (this.userspace !== userspace) {
      this.userspace = userspace;
      userspace.onStopped((reason) => {
        this.log.error({ reason }, `the userspace data path stopped (${reason}); starting it again`);
        this.pending.devices = true;
        this.scheduleRetry();
      });
    }
    const owned = new Set(self.backend.ownedDevices);
    const remade = repairs.some(
      (r) => owned.has(r.device) && (r.what === "created" || r.what === "recreated"),
    );
    if (full) userspace.replaceAll(this.userspaceRoutes);
    else userspace.update(this.userspaceChanges);
    this.userspaceChanges.clear();
    if (await userspace.ensureRunning(facts, remade)) {
      const status = userspace.status();
      this.log.info({ peers: status.peers }, `${status.what} started`);
    }
  }

  private recomputeAll(facts: NodeFacts): void {
    this.desired.clear();
    this.statuses.clear();
    this.userspaceRoutes.clear();
    const metric = this.options.blackholeMetric;
    const own = [...(this.self?.backend.nodeObjects?.(facts) ?? [])];
    if (metric !== undefined) {
      if (hasIPv4(facts.subnet)) own.push(blackholeRoute(4, formatCidr(facts.subnet), metric));
      if (facts.ipv6Subnet !== undefined) own.push(blackholeRoute(6, formatCidr6(facts.ipv6Subnet), metric));
    }
    // Rank "" sorts before every peer's: the node's own objects win any contest.
    if (own.length > 0) this.desired.set("self", "", own);
    for (const [key, lease] of this.peers) this.setPeer(facts, key, lease);
  }

  private planInput(): PlanInput {
    const { desired, view } = this;
    return {
      desired: (kind, key) => desired.get(kind, key),
      actual: (kind, key) => view.objects.get(kind, key),
      keys: (kind) => [...desired.keys(kind), ...view.objects.keys(kind)],
    };
  }

  private desiredCounts(): Record<ObjectKind, number> {
    return {
      route: this.desired.count("route"),
      neigh: this.desired.count("neigh"),
      fdb: this.desired.count("fdb"),
    };
  }

  /** Writes the ops and patches the view from each acknowledgement. */
  private async write(ops: readonly PlannedOp[]): Promise<FailedOp[]> {
    if (ops.length === 0) return [];
    const outcomes = await this.channel.apply(ops);
    ops.forEach((op, i) => {
      if (outcomes[i]?.ok === true) this.view.patch(op);
    });
    const failed: FailedOp[] = [];
    ops.forEach((op, i) => {
      const outcome = outcomes[i];
      if (outcome === undefined) failed.push({ op, error: "no answer from the kernel" });
      else if (!outcome.ok) failed.push({ op, error: `${outcome.error.message} (${outcome.error.code})` });
    });
    return failed;
  }

  /**
   * Warns once per change of who wins a contested slot. `all`: `slots` are every contested slot, so
   * contests not among them are over.
   */
  private reportContests(slots: Iterable<string>, all: boolean): void {
    const seen = new Set<string>();
    for (const id of slots) {
      seen.add(id);
      const { kind, key } = slotOf(id);
      const contest = this.desired.contest(kind, key);
      const signature = contest === undefined ? undefined : `${contest.winner} ${contest.losers.join(" ")}`;
      if (signature === this.contests.get(id)) continue;
      if (contest === undefined) {
        this.contests.delete(id);
        continue;
      }
      this.contests.set(id, signature ?? "");
      this.log.warn(
        { slot: id, winner: contest.winner, losers: contest.losers },
        "several peers want the same kernel object; the lowest subnet gets it, the others are not programmed there",
      );
    }
    if (all) for (const id of [...this.contests.keys()]) if (!seen.has(id)) this.contests.delete(id);
  }

  /** Warns once per change of a peer's verdict; `keys` limits the look to the peers of this round. */
  private reportPeerStates(keys: Iterable<string>): void {
    for (const key of keys) {
      const status = this.statuses.get(key);
      if (status === undefined) {
        this.loggedStates.delete(key);
        continue;
      }
      const summary = `${status.state}:${status.reason ?? ""}`;
      if (this.loggedStates.get(key) === summary) continue;
      this.loggedStates.set(key, summary);
      if (status.state !== "programmed") {
        this.log.warn(
          { key, state: status.state, reason: status.reason },
          `peer not programmed: ${status.state}`,
        );
      }
    }
    this.observer.peerStates?.(this.statuses);
  }

  private logRound(report: RoundReport): void {
    for (const repair of report.repairs) {
      this.log.info(
        { device: repair.device, what: repair.what, detail: repair.detail, trigger: report.trigger },
        "device repaired",
      );
    }
    const drift = isDriftRound(report.trigger);
    const failures = new Map(report.failed.map((f) => [f.op, f.error]));
    const debug = this.log.isLevelEnabled("debug");
    // One line per op up to a limit, then one summary: a re-created device replays every peer, and
    // 15,000 warn lines would bury the one line that says why.
    const unlogged = { repaired: new Map<string, number>(), failed: new Map<string, number>() };
    let logged = 0;
    for (const op of report.ops) {
      const failure = failures.get(op);
      if (failure === undefined && !drift && !debug) continue;
      const outcome = failure !== undefined ? "failed" : drift ? "repaired" : undefined;
      if (outcome !== undefined && logged >= OPS_LOGGED_PER_ROUND) {
        const what = `${op.action} ${op.object.kind}`;
        unlogged[outcome].set(what, (unlogged[outcome].get(what) ?? 0) + 1);
        continue;
      }
      if (outcome !== undefined) logged++;
      const fields = {
        kind: op.object.kind,
        action: op.action,
        object: describeObject(op.object),
        reason: op.reason,
        trigger: report.trigger,
      };
      if (failure !== undefined)
        this.log.error({ ...fields, err: failure }, "kernel operation failed; will retry");
      else if (drift) this.log.warn(fields, "drift repaired");
      else this.log.debug(fields, "kernel operation");
    }
    if (unlogged.failed.size > 0) {
      this.log.error(
        { trigger: report.trigger, more: Object.fromEntries(unlogged.failed) },
        `kernel operation failed; will retry: ${sumOf(unlogged.failed)} more not logged one by one`,
      );
    }
    if (unlogged.repaired.size > 0) {
      this.log.warn(
        { trigger: report.trigger, more: Object.fromEntries(unlogged.repaired) },
        `drift repaired: ${sumOf(unlogged.repaired)} more not logged one by one`,
      );
    }
    if (report.error !== undefined) {
      this.log.error({ err: report.error, trigger: report.trigger }, "reconcile round failed; will retry");
    } else if (report.ops.length > 0 || report.repairs.length > 0) {
      this.log.info(
        {
          trigger: report.trigger,
          ops: report.ops.length,
          failed: report.failed.length,
          durationMs: Math.round(report.durationMs),
          routes: report.desiredCounts.route,
          ...(report.reload === undefined ? {} : { reread: report.reload }),
        },
        "data plane reconciled",
      );
    }
  }
}

/** Per round, kernel operations logged one by one (drift repairs, failures); the rest are summed up. */
const OPS_LOGGED_PER_ROUND = 20;

function sumOf(counts: ReadonlyMap<string, number>): number {
  let sum = 0;
  for (const n of counts.values()) sum += n;
  return sum;
}
