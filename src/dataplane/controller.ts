// The data-plane controller: the imperative shell around the pure planner. One reconcile round =
// ensure the node's devices, compute the desired state (pure), read the kernel (ip -j, bridge -j),
// plan (pure), apply as one batch per tool, and report. Rounds are triggered by peer changes
// (coalesced), a periodic resync and kernel change notifications, so drift is repaired within about
// a second. It never flushes anything on failure or exit: only owned objects are touched, and only
// to bring them to the desired state.
import type { NetworkConfig } from "../config/network-config.js";
import { formatIPv4, type Subnet } from "../ip/ipv4.js";
import type { Lease } from "../lease/lease.js";
import type { ExternalInterface } from "../node/external-interface.js";
import type { Logger } from "../util/log.js";
import { errorMessage } from "../util/log.js";
import { Backoff, Wakeup, raceAbort, sleep, stopped } from "../util/time.js";
import { backendMtu, desiredFor, vxlanDeviceName } from "./backends.js";
import { toBatches } from "./batch-lines.js";
import {
  connectedNetworks,
  ensureBridge,
  ensureForwarding,
  ensureVxlanDevice,
  type DeviceRepair,
} from "./devices.js";
import { runBatch } from "./kernel/batch.js";
import { watchKernel, type KernelChange, type KernelWatch } from "./kernel/monitor.js";
import { readFdb, readNeighbours, readRoutes } from "./kernel/read.js";
import type { CommandRunner } from "./kernel/runner.js";
import { MAIN_TABLE, TWILL_ROUTE_PROTOCOL, type PeerStatus } from "./model.js";
import { plan, type Op } from "./planner.js";
import { ensureTxChecksumOff } from "./offload.js";

export type Trigger = "peers" | "self" | "resync" | "kernel" | "retry";

/** This node, as the data plane needs it. */
export interface NodeSelf {
  readonly config: NetworkConfig;
  readonly subnet: Subnet;
  readonly external: ExternalInterface;
  /** The persisted VTEP MAC (vxlan only). */
  readonly vtepMac: string | undefined;
}

export interface RoundReport {
  readonly trigger: Trigger;
  readonly durationMs: number;
  readonly ops: readonly Op[];
  readonly failed: readonly { op: Op; error: string }[];
  readonly repairs: readonly DeviceRepair[];
  /** Objects of each kind in the desired state after this round. */
  readonly desiredCounts: { readonly route: number; readonly neigh: number; readonly fdb: number };
  /** ms from the oldest peer change this round covers to its completion (peer-triggered rounds). */
  readonly peerLatencyMs: number | undefined;
  readonly error: string | undefined;
}

export interface DataplaneObserver {
  round?(report: RoundReport): void;
  peerStates?(states: ReadonlyMap<string, PeerStatus>): void;
}

export interface DataplaneOptions {
  readonly bridge: string;
  readonly resyncIntervalMs: number;
  /** Watch the kernel (ip monitor) to repair drift at once; on by default. */
  readonly watchKernel: boolean;
  /** false: keep TX checksum offload off on the VXLAN device (--vxlan-tx-checksum-offload=false). */
  readonly vxlanTxChecksumOffload: boolean;
}

/** Coalescing window: a burst of peer events within it becomes one round. */
const COALESCE_MS = 20;

export class Dataplane {
  private self: NodeSelf | undefined;
  private peers: readonly Lease[] | undefined;
  private readonly wakeup = new Wakeup();
  private readonly pending = new Set<Trigger>();
  private oldestPendingPeerChange: number | undefined;
  private inRound = false;
  private lastStates = new Map<string, string>();
  private programmedOnce = false;
  private forwardingWarned = false;
  private offloadWarning: string | undefined;
  private changedDuringRound = false;
  /**
   * The next round must check the devices: a trigger other than peer or route/neighbour/FDB changes
   * is pending, or a link or address changed. Route, neighbour and FDB notifications (most of them
   * the echo of our own writes) only need the objects re-read and planned.
   */
  private needsFullCheck = false;
  private readonly deviceMatchers = new Map<string, RegExp>();
  private monitor: KernelWatch | undefined;
  /** The node state whose devices the last successful round verified, and its on-link networks. */
  private verifiedSelf: string | undefined;
  private connected: Subnet[] | undefined;

  constructor(
    private readonly runner: CommandRunner,
    private readonly options: DataplaneOptions,
    private readonly log: Logger,
    private readonly observer: DataplaneObserver = {},
  ) {}

  /** True once a round has completed without failures. */
  get programmed(): boolean {
    return this.programmedOnce;
  }

  setSelf(self: NodeSelf): void {
    this.self = self;
    this.trigger("self");
  }

  /** The complete current peer set (the peer view), after any change. */
  setPeers(peers: Iterable<Lease>): void {
    this.peers = [...peers];
    this.oldestPendingPeerChange ??= performance.now();
    this.trigger("peers");
  }

  private trigger(reason: Trigger): void {
    this.pending.add(reason);
    this.wakeup.wake();
  }

  async run(signal: AbortSignal): Promise<void> {
    const monitorLoop = this.options.watchKernel ? this.keepMonitor(signal) : Promise.resolve();
    const retry = new Backoff(250, 10_000);
    let retryAt: number | undefined;
    try {
      while (!stopped(signal)) {
        const untilResync = this.options.resyncIntervalMs;
        const untilRetry = retryAt === undefined ? Infinity : Math.max(0, retryAt - Date.now());
        await this.wakeup.wait(Math.min(untilResync, untilRetry), signal);
        if (stopped(signal)) break;
        if (this.pending.size === 0)
          this.pending.add(retryAt !== undefined && Date.now() >= retryAt ? "retry" : "resync");
        // Let a burst of events land before planning once for all of them.
        await sleep(COALESCE_MS, signal);
        const trigger = this.takeTrigger();
        const report = await this.round(trigger);
        if (!report) continue;
        if (report.failed.length > 0 || report.error !== undefined) retryAt = Date.now() + retry.next();
        else {
          retry.reset();
          retryAt = undefined;
        }
      }
    } finally {
      await monitorLoop;
    }
  }

  /**
   * Keeps `ip monitor` running: when it exits unexpectedly it is started again with backoff (the
   * periodic resync covers the gap), so the agent never silently falls back to resync-only.
   */
  private async keepMonitor(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff(1000, 30_000);
    try {
      await this.monitorRounds(signal, backoff);
    } finally {
      await this.monitor?.stop();
    }
  }

  private async monitorRounds(signal: AbortSignal, backoff: Backoff): Promise<void> {
    while (!stopped(signal)) {
      let onExited: () => void = () => undefined;
      const exited = new Promise<void>((resolve) => (onExited = resolve));
      const monitor = watchKernel(
        this.runner,
        (kind, line) => {
          if (!this.concernsUs(kind, line)) return;
          if (kind === "link" || kind === "address") this.needsFullCheck = true;
          // During a round our own writes echo back; a change made by someone else meanwhile must not
          // be lost, so remember it and run one more round afterwards (it plans nothing if all is well).
          if (this.inRound) this.changedDuringRound = true;
          else this.trigger("kernel");
        },
        {
          onExit: (command, code) => {
            this.log.warn(
              { command, code },
              "kernel monitor exited; restarting it (the resync covers the gap)",
            );
            onExited();
          },
        },
      );
      this.monitor = monitor;
      try {
        await monitor.ready;
        backoff.reset();
      } catch (error) {
        this.log.warn({ err: errorMessage(error) }, "kernel monitor did not start; retrying");
        await monitor.stop();
        await sleep(backoff.next(), signal);
        continue;
      }
      await raceAbort(exited, signal, undefined);
      if (stopped(signal)) break;
      await monitor.stop();
      await sleep(backoff.next(), signal);
    }
  }

  /**
   * Whether a kernel notification can concern twill's objects: anything on the VXLAN device or the
   * bridge, our routes (proto 151), and links and addresses of those devices. ARP churn of pods on the
   * bridge and of hosts on the underlay is not ours and would make a busy node reconcile nonstop.
   */
  private concernsUs(kind: KernelChange, line: string): boolean {
    const self = this.self;
    if (!self) return false;
    const backend = self.config.backend;
    const vxlanDev = backend.type === "vxlan" ? vxlanDeviceName(backend.vni) : undefined;
    const onDevice = (dev: string | undefined): boolean =>
      dev !== undefined && this.deviceMatcher(dev).test(line);
    switch (kind) {
      case "neigh":
      case "fdb":
        return onDevice(vxlanDev);
      case "route":
        return /\bproto 151\b/.test(line) || onDevice(vxlanDev);
      case "link":
      case "address":
        return onDevice(vxlanDev) || onDevice(this.options.bridge) || onDevice(self.external.name);
    }
  }

  /** A monitor line naming `dev` ("dev flannel.1 ", "3: cni0: "); compiled once per device, not per line. */
  private deviceMatcher(dev: string): RegExp {
    let matcher = this.deviceMatchers.get(dev);
    if (matcher === undefined) {
      matcher = new RegExp(`(^|\\s|\\d: )${dev.replace(/\./g, "\\.")}(:|\\s|$|@)`);
      this.deviceMatchers.set(dev, matcher);
    }
    return matcher;
  }

  private takeTrigger(): Trigger {
    const order: Trigger[] = ["self", "peers", "kernel", "retry", "resync"];
    const trigger = order.find((t) => this.pending.has(t)) ?? "resync";
    if (this.pending.size === 0 || [...this.pending].some((t) => t !== "peers" && t !== "kernel"))
      this.needsFullCheck = true;
    this.pending.clear();
    return trigger;
  }

  /** One reconcile round; undefined when there is nothing to reconcile against yet. */
  async round(trigger: Trigger): Promise<RoundReport | undefined> {
    const self = this.self;
    const peers = this.peers;
    // Before the first peer list, the desired state is unknown: pruning then would remove good routes.
    if (!self || !peers) return undefined;
    const peerChangeAt = this.oldestPendingPeerChange;
    this.oldestPendingPeerChange = undefined;
    const started = performance.now();
    this.inRound = true;
    const repairs: DeviceRepair[] = [];
    const failed: { op: Op; error: string }[] = [];
    let ops: Op[] = [];
    let error: string | undefined;
    let counts = { route: 0, neigh: 0, fdb: 0 };
    let selfKey: string | undefined;
    try {
      const { config, external, subnet } = self;
      const backend = config.backend;
      const mtu = backendMtu(config, external);
      const vxlanDev = backend.type === "vxlan" ? vxlanDeviceName(backend.vni) : undefined;
      // A round for peer or kernel object changes only skips the device checks when they passed for
      // this very node state: a link or address change, a resync or a new self checks everything.
      selfKey = JSON.stringify([
        subnet,
        config.network,
        backend,
        external,
        self.vtepMac,
        this.options.bridge,
      ]);
      const fullCheck = this.needsFullCheck || this.verifiedSelf !== selfKey || this.connected === undefined;
      this.needsFullCheck = false;
      this.verifiedSelf = undefined;
      if (fullCheck) {
        try {
          repairs.push(...(await ensureForwarding(this.runner)));
        } catch (caught) {
          // In a container /proc/sys is often read-only; the host may have forwarding on already
          // (kubelet/kube-proxy usually do). Say it once, clearly, and program the rest anyway.
          if (!this.forwardingWarned) {
            this.forwardingWarned = true;
            this.log.error(
              { err: errorMessage(caught) },
              "cannot enable IPv4 forwarding: pods cannot reach other nodes until net.ipv4.ip_forward=1 on this host",
            );
          }
        }
        repairs.push(
          ...(await ensureBridge(this.runner, {
            name: this.options.bridge,
            subnet,
            network: config.network,
            mtu,
          })),
        );
        if (vxlanDev !== undefined && backend.type === "vxlan") {
          if (self.vtepMac === undefined) throw new Error("internal: vxlan backend without a VTEP MAC");
          repairs.push(
            ...(await ensureVxlanDevice(this.runner, {
              name: vxlanDev,
              vni: backend.vni,
              port: backend.port,
              learning: backend.learning,
              gbp: backend.gbp,
              mac: self.vtepMac,
              local: formatIPv4(external.publicIp),
              underlay: external.name,
              mtu,
              subnet,
              network: config.network,
            })),
          );
          if (!this.options.vxlanTxChecksumOffload) {
            try {
              repairs.push(...(await ensureTxChecksumOff(this.runner, vxlanDev)));
              this.offloadWarning = undefined;
            } catch (caught) {
              // The device works either way: program the peers, and say so once per distinct problem.
              const message = errorMessage(caught);
              if (this.offloadWarning !== message) {
                this.offloadWarning = message;
                this.log.error({ err: message }, "cannot turn off TX checksum offload on the VXLAN device");
              }
            }
          }
        }
        this.connected = await connectedNetworks(this.runner, external.name);
      }
      const facts = { external, connected: this.connected ?? [] };
      const result = desiredFor(backend, subnet, peers, facts);
      counts = {
        route: result.desired.routes.length,
        neigh: result.desired.neighbours.length,
        fdb: result.desired.fdb.length,
      };
      this.reportPeerStates(result.peers);
      const [routes, neighbours, fdb] = await Promise.all([
        readRoutes(this.runner, { table: MAIN_TABLE, family: 4 }),
        vxlanDev ? readNeighbours(this.runner, vxlanDev) : Promise.resolve([]),
        vxlanDev ? readFdb(this.runner, vxlanDev) : Promise.resolve([]),
      ]);
      ops = plan(
        result.desired,
        { routes, neighbours, fdb },
        { routeProtocol: TWILL_ROUTE_PROTOCOL, vxlanDev },
      );
      for (const batch of toBatches(ops, TWILL_ROUTE_PROTOCOL)) {
        const outcome = await runBatch(this.runner, batch.tool, batch.lines);
        for (const failure of outcome.failed) {
          const op = batch.ops[failure.index];
          if (op) failed.push({ op, error: failure.error });
        }
      }
    } catch (caught) {
      error = errorMessage(caught);
    } finally {
      this.inRound = false;
      if (this.changedDuringRound) {
        this.changedDuringRound = false;
        this.trigger("kernel");
      }
    }
    const report: RoundReport = {
      trigger,
      durationMs: performance.now() - started,
      ops,
      failed,
      repairs,
      desiredCounts: counts,
      peerLatencyMs: peerChangeAt === undefined ? undefined : performance.now() - peerChangeAt,
      error,
    };
    this.logRound(report);
    if (error === undefined && failed.length === 0) {
      this.programmedOnce = true;
      this.verifiedSelf = selfKey;
    } else if (peerChangeAt !== undefined) {
      this.requeuePeerChange(peerChangeAt);
    }
    this.observer.round?.(report);
    return report;
  }

  /** Not programmed yet: the retry that programs it reports the latency from the original change. */
  private requeuePeerChange(at: number): void {
    this.oldestPendingPeerChange = Math.min(this.oldestPendingPeerChange ?? at, at);
  }

  private reportPeerStates(states: ReadonlyMap<string, PeerStatus>): void {
    const next = new Map<string, string>();
    for (const [key, status] of states) {
      const summary = `${status.state}:${status.reason ?? ""}`;
      next.set(key, summary);
      if (this.lastStates.get(key) !== summary && status.state !== "programmed") {
        this.log.warn(
          { key, state: status.state, reason: status.reason },
          `peer not programmed: ${status.state}`,
        );
      }
    }
    this.lastStates = next;
    this.observer.peerStates?.(states);
  }

  private logRound(report: RoundReport): void {
    for (const repair of report.repairs) {
      this.log.info(
        { device: repair.device, what: repair.what, detail: repair.detail, trigger: report.trigger },
        "device repaired",
      );
    }
    const drift = report.trigger === "resync" || report.trigger === "kernel";
    for (const op of report.ops) {
      const failure = report.failed.find((f) => f.op === op);
      const fields = {
        kind: op.kind,
        action: op.action,
        object: describeOp(op),
        reason: op.reason,
        trigger: report.trigger,
      };
      if (failure) this.log.error({ ...fields, err: failure.error }, "kernel operation failed; will retry");
      else if (drift) this.log.warn(fields, "drift repaired");
      else this.log.debug(fields, "kernel operation");
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
        },
        "data plane reconciled",
      );
    }
  }
}

/** A short text naming the object an op touches, for logs. */
export function describeOp(op: Op): string {
  switch (op.kind) {
    case "route":
      return `route ${op.route.dst}${op.route.gateway ? ` via ${op.route.gateway}` : ""}${op.route.dev ? ` dev ${op.route.dev}` : ""}`;
    case "neigh":
      return `neigh ${op.neigh.dst} dev ${op.neigh.dev}`;
    case "fdb":
      return `fdb ${op.fdb.mac} dst ${op.fdb.dst} dev ${op.fdb.dev}`;
  }
}
