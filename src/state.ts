// The agent's one state store: what every loop has found out, in one typed place. The loops write
// their part; /status, /readyz, the metrics gauges and `twill status` read it. Readiness is derived
// from the state every time it is read, so no step can hide another's reason.
import type { OptionValue, PeerStatus, UserspaceStatus } from "./backends/backend.js";
import { isDriftRound, type RoundReport, type Trigger } from "./dataplane/loop.js";
import type { ConfigState } from "./lease/config-watch.js";
import type { OwnLease } from "./lease/keeper.js";
import type { OwnKeyConflict } from "./lease/lifecycle.js";
import type { StoreProblem } from "./lease/registry.js";
import type { PeerView } from "./lease/peer-view.js";
import type { ExternalInterface } from "./node/external-interface.js";

/** Kernel object kinds as metrics and status name them. */
export type KernelKind = "route" | "neighbour" | "fdb";
export type DriftKind = KernelKind | "device";
export const KERNEL_KINDS: readonly KernelKind[] = ["route", "neighbour", "fdb"];
export const DRIFT_KINDS: readonly DriftKind[] = ["route", "neighbour", "fdb", "device"];

/** The metrics/status name of a kernel object kind. */
export function kernelKind(kind: "route" | "neigh" | "fdb"): KernelKind {
  return kind === "neigh" ? "neighbour" : kind;
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

export interface DataplaneState {
  /** A full round has completed without failures. */
  readonly programmed: boolean;
  readonly lastRound: RoundSummary | undefined;
  readonly lastSuccessAt: number | undefined;
  /** Objects in the kernel as desired after the last round, less those whose write failed. */
  readonly kernelObjects: Readonly<Record<KernelKind, number>>;
  readonly driftRepairs: Readonly<Record<DriftKind, number>>;
  /** Per peer lease key, as of the last round. */
  readonly peerStates: ReadonlyMap<string, PeerStatus>;
}

export interface MasqState {
  /** The rules are in (or not wanted): readiness waits for this. */
  readonly installed: boolean;
  /** The iptables command the rules go through and why, once chosen. */
  readonly iptables: { readonly command: string; readonly reason: string } | undefined;
  /** The ip6tables command the IPv6 rules go through and why, once chosen (IPv6 on). */
  readonly ip6tables?: { readonly command: string; readonly reason: string } | undefined;
  /** How removed rules are noticed: "nftables notifications", "legacy table counters" or "timer". */
  readonly watch: string | undefined;
  readonly restored: number;
  readonly errors: number;
}

export interface AgentState {
  readonly config: ConfigState;
  readonly external: ExternalInterface | undefined;
  readonly ownLease: OwnLease | undefined;
  /** The backend this node runs, with its options (status). */
  readonly backend:
    { readonly type: string; readonly options: Readonly<Record<string, OptionValue>> } | undefined;
  readonly subnetFileWritten: boolean;
  readonly view: PeerView | undefined;
  readonly dataplane: DataplaneState;
  readonly masq: MasqState;
  readonly configWatch: "not-started" | "watching" | "broken";
  readonly subnetWatch: WatchObservation;
  readonly leaseLost: number;
  /** etcd cannot be reached (the real cause and since when); undefined while it answers. */
  readonly etcdProblem: StoreProblem | undefined;
  /** Another writer holds the own key; the node keeps its subnet and is not ready meanwhile. */
  readonly leaseConflict: OwnKeyConflict | undefined;
  /** Problems with the node that twill cannot fix and does not stop for (e.g. br_netfilter missing). */
  readonly nodeProblems: readonly string[];
  /** What the agent is doing while not yet (or no longer) ready: shown first among the reasons. */
  readonly phase: string | undefined;
  /** The backend's userspace data path (udp's proxy), read live: its counters move with every packet. */
  readonly userspace: (() => UserspaceStatus) | undefined;
}

export function initialState(): AgentState {
  return {
    config: { kind: "unknown" },
    external: undefined,
    ownLease: undefined,
    backend: undefined,
    subnetFileWritten: false,
    view: undefined,
    dataplane: {
      programmed: false,
      lastRound: undefined,
      lastSuccessAt: undefined,
      kernelObjects: { route: 0, neighbour: 0, fdb: 0 },
      driftRepairs: { route: 0, neighbour: 0, fdb: 0, device: 0 },
      peerStates: new Map(),
    },
    masq: { installed: false, iptables: undefined, watch: undefined, restored: 0, errors: 0 },
    configWatch: "not-started",
    subnetWatch: { state: "not-started", since: undefined, reason: undefined, restarts: 0 },
    leaseLost: 0,
    leaseConflict: undefined,
    etcdProblem: undefined,
    nodeProblems: [],
    phase: "starting",
    userspace: undefined,
  };
}

/** Why an agent in this state is not ready; empty when it is. */
export function notReadyReasons(state: AgentState): string[] {
  const reasons: string[] = state.phase === undefined ? [] : [state.phase];
  const etcd = state.etcdProblem;
  if (etcd !== undefined) {
    reasons.push(
      `etcd unreachable since ${new Date(etcd.since).toISOString()} at ${etcd.where}: ${etcd.message}`,
    );
  }
  const config = state.config;
  if (config.kind === "missing") reasons.push(`no network config at ${config.key}`);
  if (config.kind === "invalid") reasons.push(`invalid network config: ${config.message}`);
  if (!state.ownLease) reasons.push("no subnet lease yet");
  if (state.leaseConflict !== undefined) reasons.push(state.leaseConflict.message);
  if (!state.subnetFileWritten) reasons.push("subnet file not written");
  if (state.view === undefined) reasons.push("peer view not synced");
  if (!state.dataplane.programmed) reasons.push("data plane not programmed yet");
  if (!state.masq.installed) reasons.push("masquerade/forward rules not installed yet");
  const userspace = state.userspace?.();
  if (userspace !== undefined && state.dataplane.programmed && !userspace.running) {
    reasons.push(`${userspace.what} not running: ${userspace.lastFailure ?? "starting"}`);
  }
  return reasons;
}

/** The data-plane state after a round. */
export function afterRound(state: DataplaneState, report: RoundReport, at: number): DataplaneState {
  const ok = report.error === undefined && report.failed.length === 0;
  const drift = { ...state.driftRepairs };
  let kernelObjects = state.kernelObjects;
  if (report.error === undefined) {
    const failedOps = new Set(report.failed.map((failure) => failure.op));
    if (isDriftRound(report.trigger)) {
      for (const op of report.ops) if (!failedOps.has(op)) drift[kernelKind(op.object.kind)] += 1;
    }
    // Objects whose replace failed are not in the kernel.
    const missing: Record<KernelKind, number> = { route: 0, neighbour: 0, fdb: 0 };
    for (const failure of report.failed) {
      if (failure.op.action === "replace") missing[kernelKind(failure.op.object.kind)] += 1;
    }
    kernelObjects = {
      route: Math.max(0, report.desiredCounts.route - missing.route),
      neighbour: Math.max(0, report.desiredCounts.neigh - missing.neighbour),
      fdb: Math.max(0, report.desiredCounts.fdb - missing.fdb),
    };
  }
  if (isDriftRound(report.trigger)) drift.device += report.repairs.length;
  return {
    ...state,
    kernelObjects,
    driftRepairs: drift,
    lastSuccessAt: ok ? at : state.lastSuccessAt,
    lastRound: {
      at,
      trigger: report.trigger,
      durationMs: report.durationMs,
      ops: report.ops.length,
      failed: report.failed.length,
      repairs: report.repairs.length,
      result: ok ? "ok" : "error",
      error: report.error?.message ?? report.failed[0]?.error,
    },
  };
}

/** The store: the current state, updates, and listeners for changes. */
export class StateStore {
  private state: AgentState = initialState();
  private readonly listeners = new Set<(state: AgentState) => void>();

  get current(): AgentState {
    return this.state;
  }

  /** Why the agent is not ready; empty when it is. */
  notReady(): string[] {
    return notReadyReasons(this.state);
  }

  update(change: Partial<AgentState> | ((state: AgentState) => Partial<AgentState>)): void {
    const patch = typeof change === "function" ? change(this.state) : change;
    this.state = { ...this.state, ...patch };
    for (const listener of [...this.listeners]) listener(this.state);
  }

  updateDataplane(change: (dataplane: DataplaneState) => Partial<DataplaneState>): void {
    this.update((state) => ({ dataplane: { ...state.dataplane, ...change(state.dataplane) } }));
  }

  updateMasq(change: (masq: MasqState) => Partial<MasqState>): void {
    this.update((state) => ({ masq: { ...state.masq, ...change(state.masq) } }));
  }

  onChange(listener: (state: AgentState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
