// Prometheus metrics. The Metrics class is the agent's hook object (AgentHooks): every lease, peer,
// watch, data-plane and masquerade event lands here and becomes a series. It also keeps the little
// state `twill status` shows that the agent itself does not (last round, peer states, watch state).
// Metric names are a contract (alert rules and docs use them): change them only with the docs.
// No label carries a peer: every label has a small fixed set of values.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { AgentHooks, AgentStatus } from "../agent.js";
import type { RoundReport, Trigger } from "../dataplane/controller.js";
import type { PeerState, PeerStatus } from "../dataplane/model.js";
import type { Op } from "../dataplane/planner.js";
import type { AcquireResult, OwnLease } from "../lease/keeper.js";
import type { InvalidEntry, PeerEvent, PeerView } from "../lease/peer-view.js";

export type KernelKind = "route" | "neighbour" | "fdb";
export type DriftKind = KernelKind | "device";

const TRIGGERS: readonly Trigger[] = ["peers", "self", "resync", "kernel", "retry"];
const KERNEL_KINDS: readonly KernelKind[] = ["route", "neighbour", "fdb"];
const DRIFT_KINDS: readonly DriftKind[] = ["route", "neighbour", "fdb", "device"];
const PEER_STATES: readonly PeerState[] = ["programmed", "unreachable", "backend-mismatch"];
const ACQUIRE_RESULTS = ["reused", "created", "reserved", "race_lost", "exhausted"] as const;

/**
 * Backend label values. BackendType is free text in etcd; anything else becomes "unknown" so a
 * hostile or broken entry cannot grow the label set.
 */
const KNOWN_BACKENDS = new Set([
  "vxlan",
  "host-gw",
  "udp",
  "ipip",
  "wireguard",
  "ipsec",
  "alloc",
  "extension",
  "alivpc",
  "aws-vpc",
  "gce",
  "tencent-vpc",
]);

export function backendLabel(backendType: string | undefined): string {
  const lowered = backendType?.toLowerCase();
  return lowered !== undefined && KNOWN_BACKENDS.has(lowered) ? lowered : "unknown";
}

/** Prometheus label value for a peer state (snake_case, as label values conventionally are). */
function stateLabel(state: PeerState): string {
  return state.replace("-", "_");
}

function kernelKind(op: Op): KernelKind {
  return op.kind === "neigh" ? "neighbour" : op.kind;
}

/** A reconcile round as `twill status` shows it. */
export interface RoundSummary {
  /** ms since the epoch when the round completed. */
  readonly at: number;
  readonly trigger: Trigger;
  readonly durationMs: number;
  readonly ops: number;
  readonly failed: number;
  readonly repairs: number;
  readonly result: "ok" | "error";
  /** The round's error, or the first failed operation's. */
  readonly error: string | undefined;
}

export interface WatchObservation {
  readonly state: "not-started" | "watching" | "broken";
  /** ms since the epoch of the last state change. */
  readonly since: number | undefined;
  readonly reason: string | undefined;
  readonly restarts: number;
}

/** What the hooks saw that AgentStatus does not hold; read by the /status builder. */
export interface Observed {
  readonly lastRound: RoundSummary | undefined;
  readonly lastSuccessAt: number | undefined;
  readonly peerStates: ReadonlyMap<string, PeerStatus>;
  readonly watch: WatchObservation;
  readonly driftRepairs: Readonly<Record<DriftKind, number>>;
  readonly kernelObjects: Readonly<Record<KernelKind, number>>;
  readonly leaseLost: number;
  readonly masqRestored: number;
  readonly masqErrors: number;
}

export interface MetricsOptions {
  readonly version: string;
  /** prom-client's process/Node.js metrics; default true (tests may skip them). */
  readonly defaultMetrics?: boolean;
  readonly now?: () => number;
}

export class Metrics implements AgentHooks {
  readonly registry = new Registry();
  private readonly now: () => number;
  private statusSource: (() => AgentStatus) | undefined;

  private readonly configValid: Gauge;
  private readonly leaseExpiry: Gauge;
  private readonly leaseReserved: Gauge;
  private readonly acquisitions: Counter<"result">;
  private readonly renewals: Counter<"result">;
  private readonly leaseLostTotal: Counter;
  private readonly peersGauge: Gauge<"backend" | "state">;
  private readonly invalidEntries: Gauge;
  private readonly invalidSkipped: Counter;
  private readonly kernelObjects: Gauge<"kind">;
  private readonly operations: Counter<"kind" | "op" | "result">;
  private readonly rounds: Counter<"trigger" | "result">;
  private readonly roundDuration: Histogram;
  private readonly peerLatency: Histogram;
  private readonly driftRepairs: Counter<"kind">;
  private readonly watchRestarts: Counter;
  private readonly etcdConnected: Gauge;
  private readonly masqRestored: Counter;
  private readonly masqErrors: Counter;
  private readonly ready: Gauge;

  // Observed state, for twill_peers and /status.
  private view: PeerView | undefined;
  private peerStatesNow: ReadonlyMap<string, PeerStatus> = new Map();
  private ownBackend: string | undefined;
  private lastRound: RoundSummary | undefined;
  private lastSuccessAt: number | undefined;
  private configWatch: "not-started" | "watching" | "broken" = "not-started";
  private watch: WatchObservation = {
    state: "not-started",
    since: undefined,
    reason: undefined,
    restarts: 0,
  };
  private readonly drift: Record<DriftKind, number> = { route: 0, neighbour: 0, fdb: 0, device: 0 };
  private readonly programmed: Record<KernelKind, number> = { route: 0, neighbour: 0, fdb: 0 };
  private leaseLostCount = 0;
  private masqRestoredCount = 0;
  private masqErrorCount = 0;
  private rulesSeenOnce = false;

  constructor(options: MetricsOptions) {
    this.now = options.now ?? Date.now;
    const registers = [this.registry];
    // Gauges that mirror AgentStatus refresh themselves at scrape time when a status source is bound,
    // so they can never lag behind what /readyz and /status say.
    const refresh = (): void => this.refreshFromStatus();

    new Gauge({
      name: "twill_build_info",
      help: "Build information; always 1",
      labelNames: ["version", "nodejs"],
      registers,
    }).set({ version: options.version, nodejs: process.version }, 1);
    this.configValid = new Gauge({
      name: "twill_config_valid",
      help: "1 when a valid network config is loaded from etcd, 0 when it is missing or invalid",
      registers,
      collect: refresh,
    });
    this.leaseExpiry = new Gauge({
      name: "twill_lease_expiry_timestamp_seconds",
      help: "Expiry of this node's subnet lease, unix seconds; 0 when there is none or it is a reservation",
      registers,
      collect: refresh,
    });
    this.leaseReserved = new Gauge({
      name: "twill_lease_reserved",
      help: "1 when this node's subnet is a reservation (an etcd key without a lease, never expires)",
      registers,
      collect: refresh,
    });
    this.acquisitions = new Counter({
      name: "twill_lease_acquisitions_total",
      help: "Subnet lease acquisition attempts by result (reused, created, reserved, race_lost, exhausted)",
      labelNames: ["result"],
      registers,
    });
    this.renewals = new Counter({
      name: "twill_lease_renewals_total",
      help: "Subnet lease renewals by result (success, failure)",
      labelNames: ["result"],
      registers,
    });
    this.leaseLostTotal = new Counter({
      name: "twill_lease_lost_total",
      help: "Times this node's lease was lost (key deleted, expired or overwritten) and re-acquired",
      registers,
    });
    this.peersGauge = new Gauge({
      name: "twill_peers",
      help: "Peers known from etcd by backend and data-plane state (programmed, unreachable, backend_mismatch)",
      labelNames: ["backend", "state"],
      registers,
      collect: () => this.refreshPeers(),
    });
    this.invalidEntries = new Gauge({
      name: "twill_invalid_entries",
      help: "Invalid subnet entries currently in etcd (skipped, never programmed)",
      registers,
    });
    this.invalidSkipped = new Counter({
      name: "twill_invalid_entries_skipped_total",
      help: "Subnet entries newly found invalid and skipped",
      registers,
    });
    this.kernelObjects = new Gauge({
      name: "twill_kernel_objects",
      help: "Kernel objects programmed for peers after the last round that ran, less those whose replace failed, by kind",
      labelNames: ["kind"],
      registers,
    });
    this.operations = new Counter({
      name: "twill_dataplane_operations_total",
      help: "Kernel operations applied by the data plane, by kind, op (replace, delete) and result (ok, error)",
      labelNames: ["kind", "op", "result"],
      registers,
    });
    this.rounds = new Counter({
      name: "twill_reconcile_rounds_total",
      help: "Data-plane reconcile rounds by trigger and result",
      labelNames: ["trigger", "result"],
      registers,
    });
    this.roundDuration = new Histogram({
      name: "twill_reconcile_duration_seconds",
      help: "Duration of data-plane reconcile rounds",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.peerLatency = new Histogram({
      name: "twill_peer_event_to_programmed_seconds",
      help: "Time from a peer change seen in etcd to the kernel being programmed for it",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.driftRepairs = new Counter({
      name: "twill_drift_repairs_total",
      help: "Repairs of kernel state changed under the agent (resync- or kernel-triggered rounds), by kind",
      labelNames: ["kind"],
      registers,
    });
    this.watchRestarts = new Counter({
      name: "twill_etcd_watch_restarts_total",
      help: "Times the etcd subnet watch broke and was re-established by a re-list",
      registers,
    });
    this.etcdConnected = new Gauge({
      name: "twill_etcd_connected",
      help: "1 while etcd is reachable: the config key is watched and the subnet watch (once started) is not broken",
      registers,
    });
    this.masqRestored = new Counter({
      name: "twill_masq_rules_restored_total",
      help: "Masquerade/forward rules found missing and restored after the first install",
      registers,
    });
    this.masqErrors = new Counter({
      name: "twill_masq_errors_total",
      help: "Failed masquerade/forward rule checks",
      registers,
    });
    this.ready = new Gauge({
      name: "twill_ready",
      help: "1 when the agent is ready (lease held, subnet file written, data plane programmed, rules installed)",
      registers,
      collect: refresh,
    });

    // Every bounded label combination exists from the start, so rate() and increase() see the
    // first event instead of a series appearing out of nowhere.
    for (const result of ACQUIRE_RESULTS) this.acquisitions.inc({ result }, 0);
    for (const result of ["success", "failure"]) this.renewals.inc({ result }, 0);
    for (const kind of KERNEL_KINDS) {
      this.kernelObjects.set({ kind }, 0);
      for (const op of ["replace", "delete"]) {
        for (const result of ["ok", "error"]) this.operations.inc({ kind, op, result }, 0);
      }
    }
    for (const trigger of TRIGGERS) {
      for (const result of ["ok", "error"]) this.rounds.inc({ trigger, result }, 0);
    }
    for (const kind of DRIFT_KINDS) this.driftRepairs.inc({ kind }, 0);
    this.invalidEntries.set(0);
    this.etcdConnected.set(0);
    this.configValid.set(0);
    this.leaseExpiry.set(0);
    this.leaseReserved.set(0);
    this.ready.set(0);

    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Binds the agent's status: config validity, readiness and own lease are read from it at scrape. */
  followStatus(source: () => AgentStatus): void {
    this.statusSource = source;
  }

  setReady(ready: boolean): void {
    this.ready.set(ready ? 1 : 0);
  }

  setConfigValid(valid: boolean): void {
    this.configValid.set(valid ? 1 : 0);
  }

  /** The own lease gauges; a reservation never expires, so it reads 0 with twill_lease_reserved 1. */
  setOwnLease(own: OwnLease | undefined): void {
    const reserved = own !== undefined && own.expiresAt === Infinity;
    this.leaseReserved.set(reserved ? 1 : 0);
    this.leaseExpiry.set(own === undefined || reserved ? 0 : own.expiresAt / 1000);
  }

  private refreshFromStatus(): void {
    const status = this.statusSource?.();
    if (!status) return;
    this.setConfigValid(status.config.kind === "valid");
    this.setReady(status.notReady.length === 0);
    this.setOwnLease(status.ownLease);
  }

  // --- lease (KeeperObserver) ---

  acquired(own: OwnLease, how: AcquireResult): void {
    const result = how === "reused" ? "reused" : how === "reserved" ? "reserved" : "created";
    this.acquisitions.inc({ result });
    this.ownBackend = own.attrs.backendType;
    this.setOwnLease(own);
  }

  raceLost(): void {
    this.acquisitions.inc({ result: "race_lost" });
  }

  exhausted(): void {
    this.acquisitions.inc({ result: "exhausted" });
  }

  renewed(own: OwnLease): void {
    this.renewals.inc({ result: "success" });
    this.setOwnLease(own);
  }

  renewFailed(): void {
    this.renewals.inc({ result: "failure" });
  }

  /** The own lease was lost and is being re-acquired (AgentHooks.leaseLost, added with this room). */
  leaseLost(): void {
    this.leaseLostCount += 1;
    this.leaseLostTotal.inc();
  }

  // --- etcd view ---

  peers(_events: PeerEvent[], view: PeerView): void {
    this.view = view;
    this.invalidEntries.set(view.invalid.size);
  }

  invalid(entries: InvalidEntry[]): void {
    this.invalidSkipped.inc(entries.length);
  }

  /** The config key's watch, which runs from the start: etcd reachability before there is a lease. */
  configWatchState(state: "watching" | "broken"): void {
    this.configWatch = state;
    this.refreshEtcdConnected();
  }

  private refreshEtcdConnected(): void {
    this.etcdConnected.set(this.configWatch === "watching" && this.watch.state !== "broken" ? 1 : 0);
  }

  watchState(state: "watching" | "broken", reason?: string): void {
    if (state === "broken") this.watchRestarts.inc();
    this.watch = {
      state,
      since: this.now(),
      reason,
      restarts: this.watch.restarts + (state === "broken" ? 1 : 0),
    };
    this.refreshEtcdConnected();
  }

  // --- data plane (DataplaneObserver) ---

  round(report: RoundReport): void {
    const ok = report.error === undefined && report.failed.length === 0;
    this.rounds.inc({ trigger: report.trigger, result: ok ? "ok" : "error" });
    this.roundDuration.observe(report.durationMs / 1000);
    const failedOps = new Set(report.failed.map((failure) => failure.op));
    // A round that threw may have planned ops it never ran: only count ops when the batch ran.
    const applied = report.error === undefined ? report.ops : [];
    const drift = report.trigger === "resync" || report.trigger === "kernel";
    for (const op of applied) {
      const kind = kernelKind(op);
      const failed = failedOps.has(op);
      this.operations.inc({ kind, op: op.action, result: failed ? "error" : "ok" });
      if (drift && !failed) this.addDrift(kind, 1);
    }
    if (drift && report.repairs.length > 0) this.addDrift("device", report.repairs.length);
    if (report.error === undefined) {
      // Objects whose replace failed are not in the kernel.
      const missing: Record<KernelKind, number> = { route: 0, neighbour: 0, fdb: 0 };
      for (const failure of report.failed) {
        if (failure.op.action === "replace") missing[kernelKind(failure.op)] += 1;
      }
      const desired: Record<KernelKind, number> = {
        route: report.desiredCounts.route,
        neighbour: report.desiredCounts.neigh,
        fdb: report.desiredCounts.fdb,
      };
      for (const kind of KERNEL_KINDS) {
        this.programmed[kind] = Math.max(0, desired[kind] - missing[kind]);
        this.kernelObjects.set({ kind }, this.programmed[kind]);
      }
    }
    // Latency counts only when the change actually reached the kernel.
    if (ok && report.peerLatencyMs !== undefined) this.peerLatency.observe(report.peerLatencyMs / 1000);
    const at = this.now();
    if (ok) this.lastSuccessAt = at;
    this.lastRound = {
      at,
      trigger: report.trigger,
      durationMs: report.durationMs,
      ops: report.ops.length,
      failed: report.failed.length,
      repairs: report.repairs.length,
      result: ok ? "ok" : "error",
      error: report.error ?? report.failed[0]?.error,
    };
  }

  peerStates(states: ReadonlyMap<string, PeerStatus>): void {
    this.peerStatesNow = states;
  }

  private addDrift(kind: DriftKind, count: number): void {
    this.drift[kind] += count;
    this.driftRepairs.inc({ kind }, count);
  }

  /** Recomputed at scrape: counts by (backend, state) from the last round's peer states. */
  private refreshPeers(): void {
    const counts = new Map<string, number>();
    const key = (backend: string, state: PeerState): string => `${backend}\u0000${state}`;
    // Once the own backend is known its series always exist, so "0 unreachable" is a sample, not
    // an absence.
    const own = this.ownBackend ?? this.statusSource?.().ownLease?.attrs.backendType;
    const backends = new Set<string>(own === undefined ? [] : [backendLabel(own)]);
    for (const [leaseKey, status] of this.peerStatesNow) {
      const backend = backendLabel(this.view?.peers.get(leaseKey)?.attrs.backendType);
      backends.add(backend);
      counts.set(key(backend, status.state), (counts.get(key(backend, status.state)) ?? 0) + 1);
    }
    this.peersGauge.reset();
    for (const backend of backends) {
      for (const state of PEER_STATES) {
        this.peersGauge.set({ backend, state: stateLabel(state) }, counts.get(key(backend, state)) ?? 0);
      }
    }
  }

  // --- masquerade ---

  rulesChecked(result: { missing: string[]; error: string | undefined }): void {
    if (result.error !== undefined) {
      this.masqErrorCount += 1;
      this.masqErrors.inc();
      return;
    }
    // The first successful check installs everything: that is not a restore.
    if (this.rulesSeenOnce && result.missing.length > 0) {
      this.masqRestoredCount += result.missing.length;
      this.masqRestored.inc(result.missing.length);
    }
    this.rulesSeenOnce = true;
  }

  /** Snapshot for /status. */
  observed(): Observed {
    return {
      lastRound: this.lastRound,
      lastSuccessAt: this.lastSuccessAt,
      peerStates: this.peerStatesNow,
      watch: this.watch,
      driftRepairs: { ...this.drift },
      kernelObjects: { ...this.programmed },
      leaseLost: this.leaseLostCount,
      masqRestored: this.masqRestoredCount,
      masqErrors: this.masqErrorCount,
    };
  }
}
