// Prometheus metrics. Counters are fed by the loops' events (lease, watch, data-plane rounds, rule
// checks); gauges are read from the agent's state store at scrape time, so they can never disagree with
// /readyz or /status. Metric names are a contract (alert rules and docs use them): change them only with
// the docs. No label carries a peer: every label has a small fixed set of values.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

import {
  USERSPACE_DROPS,
  type PeerState,
  type UdpProxyStatus,
  type UserspaceStatus,
  type WireGuardPeerStatus,
  type WireGuardStatus,
} from "../backends/backend.js";
import { BACKENDS } from "../backends/registry.js";
import { isDriftRound, TRIGGERS, type RoundReport } from "../dataplane/loop.js";
import { poolSizeOf, poolSizeOf6 } from "../lease/allocate.js";
import { hasIPv4 } from "../lease/key.js";
import type { NetworkConfig } from "../config/network-config.js";
import type { AcquireResult } from "../lease/keeper.js";
import {
  DRIFT_KINDS,
  KERNEL_KINDS,
  kernelKind,
  notReadyReasons,
  type AgentState,
  type DriftKind,
} from "../state.js";

/** The subnets a lease can still be made from: the smaller pool of the enabled families. */
function leasablePoolSize(config: NetworkConfig): number {
  const pools: number[] = [];
  if (config.enableIPv4) pools.push(poolSizeOf(config));
  if (config.ipv6 !== undefined) pools.push(Number(poolSizeOf6(config)));
  return Math.min(...pools);
}

const PEER_STATES: readonly PeerState[] = ["programmed", "unreachable", "backend-mismatch"];
const ACQUIRE_RESULTS = ["reused", "created", "reserved", "race_lost", "exhausted"] as const;
/** Why the cached kernel view was read again: twill_kernel_view_reloads_total{reason}. */
/** How often the nodejs_eventloop_lag_* histogram samples the event loop (see docs/metrics.md). */
const EVENT_LOOP_SAMPLE_MS = 1000;
const RELOAD_REASONS = ["start", "self", "resync", "overflow", "kernel", "retry"] as const;

/**
 * Backend label values: flannel's backend names and twill's own. BackendType is free text in etcd;
 * anything else becomes "unknown" so a hostile or broken entry cannot grow the label set.
 */
const KNOWN_BACKENDS = new Set([
  ...BACKENDS.map((backend) => backend.type),
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

export interface MetricsOptions {
  readonly version: string;
  /** The agent's state, read at scrape for the gauges. */
  readonly state: () => AgentState;
  /** prom-client's process/Node.js metrics; default true (tests may skip them). */
  readonly defaultMetrics?: boolean;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly acquisitions: Counter<"result">;
  private readonly renewals: Counter<"result">;
  private readonly leaseLostTotal: Counter;
  private readonly invalidSkippedTotal: Counter;
  private readonly operations: Counter<"kind" | "op" | "result">;
  private readonly rounds: Counter<"trigger" | "result">;
  private readonly roundDuration: Histogram;
  private readonly peerLatency: Histogram;
  private readonly driftRepairs: Counter<"kind">;
  private readonly reloads: Counter<"reason">;
  private readonly watchRestarts: Counter;
  private readonly identityRenewals: Counter<"reason">;
  private readonly masqRestored: Counter;
  private readonly masqErrors: Counter;

  constructor(options: MetricsOptions) {
    const registers = [this.registry];
    const state = options.state;

    new Gauge({
      name: "twill_build_info",
      help: "Build information; always 1",
      labelNames: ["version", "nodejs"],
      registers,
    }).set({ version: options.version, nodejs: process.version }, 1);
    new Gauge({
      name: "twill_config_valid",
      help: "1 when a valid network config is loaded from etcd, 0 when it is missing or invalid",
      registers,
      collect() {
        this.set(state().config.kind === "valid" ? 1 : 0);
      },
    });
    new Gauge({
      name: "twill_lease_expiry_timestamp_seconds",
      help: "Expiry of this node's subnet lease, unix seconds; 0 when there is none or it is a reservation",
      registers,
      collect() {
        const own = state().ownLease;
        this.set(own === undefined || own.expiresAt === Infinity ? 0 : own.expiresAt / 1000);
      },
    });
    new Gauge({
      name: "twill_lease_reserved",
      help: "1 when this node's subnet is a reservation (an etcd key without a lease, never expires)",
      registers,
      collect() {
        this.set(state().ownLease?.expiresAt === Infinity ? 1 : 0);
      },
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
      help: "Times this node's lease was lost (key deleted or expired) and re-acquired",
      registers,
    });
    new Gauge({
      name: "twill_peers",
      help: "Peers known from etcd by backend and data-plane state (programmed, unreachable, backend_mismatch)",
      labelNames: ["backend", "state"],
      registers,
      collect() {
        const s = state();
        const counts = new Map<string, number>();
        const key = (backend: string, peerState: PeerState): string => `${backend}\u0000${peerState}`;
        // Once the own backend is known its series always exist, so "0 unreachable" is a sample, not
        // an absence.
        const own = s.ownLease?.attrs.backendType ?? s.backend?.type;
        const backends = new Set<string>(own === undefined ? [] : [backendLabel(own)]);
        for (const [leaseKey, status] of s.dataplane.peerStates) {
          const backend = backendLabel(s.view?.peers.get(leaseKey)?.attrs.backendType);
          backends.add(backend);
          counts.set(key(backend, status.state), (counts.get(key(backend, status.state)) ?? 0) + 1);
        }
        this.reset();
        for (const backend of backends) {
          for (const peerState of PEER_STATES) {
            this.set({ backend, state: stateLabel(peerState) }, counts.get(key(backend, peerState)) ?? 0);
          }
        }
      },
    });
    new Gauge({
      name: "twill_identity_conflicts",
      help:
        "Identity conflicts now, by kind: own_key_overwritten and duplicate_public_ip (1 while another writer " +
        "holds this node's lease key), duplicate_identity (etcd entries not programmed because they claim a " +
        "VTEP MAC an older lease or this node holds)",
      labelNames: ["kind"],
      registers,
      collect() {
        const s = state();
        const conflict = s.leaseConflict?.kind;
        this.set({ kind: "own_key_overwritten" }, conflict === "own-key-overwritten" ? 1 : 0);
        this.set({ kind: "duplicate_public_ip" }, conflict === "duplicate-public-ip" ? 1 : 0);
        let duplicates = 0;
        for (const entry of s.view?.invalid.values() ?? []) if (entry.identityConflict === true) duplicates++;
        this.set({ kind: "duplicate_identity" }, duplicates);
      },
    });
    this.identityRenewals = new Counter({
      name: "twill_identity_renewals_total",
      help:
        "Times this node made a new identity (VTEP MAC), by reason: state_copied (its state dir was made on " +
        "another node), conflict (an older lease held it)",
      labelNames: ["reason"],
      registers,
    });
    for (const reason of ["state_copied", "conflict"]) this.identityRenewals.inc({ reason }, 0);
    new Gauge({
      name: "twill_subnet_pool_size",
      help:
        "Subnets the network config's pool holds (SubnetMin to SubnetMax at SubnetLen); with IPv6 on, the " +
        "smaller of the IPv4 and IPv6 pools (a lease takes one of each); 0 without a valid config",
      registers,
      collect() {
        const config = state().config;
        this.set(config.kind === "valid" ? leasablePoolSize(config.config) : 0);
      },
    });
    new Gauge({
      name: "twill_peer_subnets",
      help: "Valid peers' subnets by address family (ipv4, ipv6) of the families the network config carries",
      labelNames: ["family"],
      registers,
      collect() {
        let ipv4 = 0;
        let ipv6 = 0;
        const s = state();
        // Only the families the config carries: a dual-stack peer is an IPv4 peer to an IPv4-only node.
        const config = s.config.kind === "valid" ? s.config.config : undefined;
        for (const lease of s.view?.peers.values() ?? []) {
          if (config?.enableIPv4 === true && hasIPv4(lease.subnet)) ipv4 += 1;
          if (config?.ipv6 !== undefined && lease.ipv6Subnet !== undefined) ipv6 += 1;
        }
        this.set({ family: "ipv4" }, ipv4);
        this.set({ family: "ipv6" }, ipv6);
      },
    });
    new Gauge({
      name: "twill_subnet_pool_leased",
      help: "Subnet leases in etcd as this node sees them: valid peers, set-aside entries and its own",
      registers,
      collect() {
        const s = state();
        this.set(
          (s.view?.peers.size ?? 0) + (s.view?.invalid.size ?? 0) + (s.ownLease === undefined ? 0 : 1),
        );
      },
    });
    this.registerUserspace(registers, state);
    new Gauge({
      name: "twill_invalid_entries",
      help: "Invalid subnet entries currently in etcd (skipped, never programmed)",
      registers,
      collect() {
        this.set(state().view?.invalid.size ?? 0);
      },
    });
    this.invalidSkippedTotal = new Counter({
      name: "twill_invalid_entries_skipped_total",
      help: "Subnet entries newly found invalid and skipped",
      registers,
    });
    new Gauge({
      name: "twill_kernel_objects",
      help: "Kernel objects programmed for peers after the last round that ran, less those whose replace failed, by kind",
      labelNames: ["kind"],
      registers,
      collect() {
        const objects = state().dataplane.kernelObjects;
        for (const kind of KERNEL_KINDS) this.set({ kind }, objects[kind]);
      },
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
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.peerLatency = new Histogram({
      name: "twill_peer_event_to_programmed_seconds",
      help: "Time from a peer change seen in etcd to the kernel being programmed for it",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.driftRepairs = new Counter({
      name: "twill_drift_repairs_total",
      help: "Repairs of kernel state changed under the agent (rounds not triggered by etcd), by kind",
      labelNames: ["kind"],
      registers,
    });
    this.reloads = new Counter({
      name: "twill_kernel_view_reloads_total",
      help: "Times the cached kernel view was read from the kernel again, by reason",
      labelNames: ["reason"],
      registers,
    });
    this.watchRestarts = new Counter({
      name: "twill_etcd_watch_restarts_total",
      help: "Times the etcd subnet watch broke and was re-established by a re-list",
      registers,
    });
    new Gauge({
      name: "twill_etcd_connected",
      help: "1 while etcd is reachable: the config key is watched and the subnet watch (once started) is not broken",
      registers,
      collect() {
        const s = state();
        this.set(s.configWatch === "watching" && s.subnetWatch.state !== "broken" ? 1 : 0);
      },
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
    new Gauge({
      name: "twill_ready",
      help: "1 when the agent is ready (lease held, subnet file written, data plane programmed, rules installed)",
      registers,
      collect() {
        this.set(notReadyReasons(state()).length === 0 ? 1 : 0);
      },
    });

    // Every bounded label combination exists from the start, so rate() and increase() see the
    // first event instead of a series appearing out of nowhere.
    for (const result of ACQUIRE_RESULTS) this.acquisitions.inc({ result }, 0);
    for (const result of ["success", "failure"]) this.renewals.inc({ result }, 0);
    for (const kind of KERNEL_KINDS) {
      for (const op of ["replace", "delete"]) {
        for (const result of ["ok", "error"]) this.operations.inc({ kind, op, result }, 0);
      }
    }
    for (const trigger of TRIGGERS) {
      for (const result of ["ok", "error"]) this.rounds.inc({ trigger, result }, 0);
    }
    for (const kind of DRIFT_KINDS) this.driftRepairs.inc({ kind }, 0);
    for (const reason of RELOAD_REASONS) this.reloads.inc({ reason }, 0);

    // prom-client samples event-loop delay every 10 ms by default: 100 wake-ups a second, about 1 % of a
    // core on an otherwise idle agent (measured). Once a second still catches every stall that
    // matters here (a data-plane round is timed by twill_reconcile_duration_seconds anyway).
    if (options.defaultMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    }
  }

  // --- lease ---

  acquired(how: AcquireResult): void {
    this.acquisitions.inc({
      result: how === "reused" ? "reused" : how === "reserved" ? "reserved" : "created",
    });
  }

  raceLost(): void {
    this.acquisitions.inc({ result: "race_lost" });
  }

  exhausted(): void {
    this.acquisitions.inc({ result: "exhausted" });
  }

  renewed(): void {
    this.renewals.inc({ result: "success" });
  }

  renewFailed(): void {
    this.renewals.inc({ result: "failure" });
  }

  leaseLost(): void {
    this.leaseLostTotal.inc();
  }

  identityRenewed(reason: "state-copied" | "conflict"): void {
    this.identityRenewals.inc({ reason: reason === "state-copied" ? "state_copied" : "conflict" });
  }

  // --- etcd ---

  invalidSkipped(count: number): void {
    this.invalidSkippedTotal.inc(count);
  }

  subnetWatchBroken(): void {
    this.watchRestarts.inc();
  }

  // --- data plane ---

  round(report: RoundReport): void {
    const ok = report.error === undefined && report.failed.length === 0;
    this.rounds.inc({ trigger: report.trigger, result: ok ? "ok" : "error" });
    this.roundDuration.observe(report.durationMs / 1000);
    if (report.reload !== undefined) this.reloads.inc({ reason: report.reload });
    const failedOps = new Set(report.failed.map((failure) => failure.op));
    // A round that threw may have planned ops it never ran: only count ops when the write ran.
    const applied = report.error === undefined ? report.ops : [];
    const drift = isDriftRound(report.trigger);
    const repaired = new Map<DriftKind, number>();
    for (const op of applied) {
      const kind = kernelKind(op.object.kind);
      const failed = failedOps.has(op);
      this.operations.inc({ kind, op: op.action, result: failed ? "error" : "ok" });
      if (drift && !failed) repaired.set(kind, (repaired.get(kind) ?? 0) + 1);
    }
    if (drift && report.repairs.length > 0) repaired.set("device", report.repairs.length);
    for (const [kind, count] of repaired) this.driftRepairs.inc({ kind }, count);
    // Latency counts only when the change actually reached the kernel.
    if (ok && report.peerLatencyMs !== undefined) this.peerLatency.observe(report.peerLatencyMs / 1000);
  }

  // --- masquerade ---

  /** A rules check: how many rules were restored (after the first install), or that it failed. */
  rulesChecked(result: { readonly restored: number; readonly failed: boolean }): void {
    if (result.failed) this.masqErrors.inc();
    else if (result.restored > 0) this.masqRestored.inc(result.restored);
  }

  /**
   * The figures of the backend's data path outside rtnetlink (udp's proxy, WireGuard's device), read
   * live at scrape; each series has samples only on nodes of its backend.
   */
  private registerUserspace(registers: Registry[], state: () => AgentState): void {
    type Sample = readonly [Partial<Record<string, string>>, number];
    const seriesOf =
      <S extends UserspaceStatus>(is: (status: UserspaceStatus) => status is S) =>
      (
        Kind: typeof Gauge | typeof Counter,
        name: string,
        help: string,
        labelNames: string | readonly string[],
        samples: (status: S) => readonly Sample[],
      ): void => {
        new Kind({
          name,
          help,
          labelNames: typeof labelNames === "string" ? [labelNames] : [...labelNames],
          registers,
          collect() {
            // Counters too are set from the data path's own totals, so each scrape starts from none.
            this.reset();
            const status = state().userspace?.();
            if (status === undefined || !is(status)) return;
            for (const [labels, value] of samples(status)) {
              if (this instanceof Gauge) this.set(labels, value);
              else this.inc(labels, value);
            }
          },
        });
      };
    const series = seriesOf((s): s is UdpProxyStatus => s.kind === "udp");
    series(
      Gauge,
      "twill_udp_proxy_up",
      "1 while the udp backend's proxy thread runs, 0 when it stopped (see twill status); udp nodes only",
      "device",
      (s) => [[{ device: s.device }, s.running ? 1 : 0]],
    );
    series(
      Gauge,
      "twill_udp_peers",
      "Peer subnets in the udp proxy's forwarding table; udp nodes only",
      "device",
      (s) => [[{ device: s.device }, s.peers]],
    );
    series(
      Counter,
      "twill_udp_proxy_restarts_total",
      "Times the udp proxy stopped on its own (its TUN device deleted, its thread died) and was started again",
      "device",
      (s) => [[{ device: s.device }, s.restarts]],
    );
    series(
      Counter,
      "twill_udp_packets_total",
      "Packets the udp proxy forwarded, by direction: tx (TUN to a peer), rx (a peer to the TUN)",
      "direction",
      (s) => [
        [{ direction: "tx" }, s.txPackets],
        [{ direction: "rx" }, s.rxPackets],
      ],
    );
    series(
      Counter,
      "twill_udp_bytes_total",
      "Bytes of inner IP packets the udp proxy forwarded, by direction (tx, rx)",
      "direction",
      (s) => [
        [{ direction: "tx" }, s.txBytes],
        [{ direction: "rx" }, s.rxBytes],
      ],
    );
    series(
      Counter,
      "twill_udp_dropped_packets_total",
      "Packets the udp proxy dropped, by reason: no_route (no peer owns the destination; an ICMP " +
        "net-unreachable goes back), ttl_expired, unknown_sender (a datagram not from a peer's public IP), " +
        "malformed, not_ipv4 (IPv6 the kernel sends into the TUN; udp carries IPv4), send_error (the socket " +
        "refused it), tun_write_error",
      "reason",
      (s) => USERSPACE_DROPS.map((reason) => [{ reason }, s.drops[reason]] as const),
    );
    const wireguard = seriesOf((s): s is WireGuardStatus => s.kind === "wireguard");
    // One series per device: flannel-wg, and flannel-wg-v6 beside it in Mode separate with IPv6.
    const devicesOf = (s: WireGuardStatus): readonly WireGuardStatus[] => s.devices ?? [s];
    wireguard(
      Gauge,
      "twill_wireguard_up",
      "1 while the WireGuard device is served and configured (wireguard-go running, or the kernel's device), 0 when not (see twill status); wireguard nodes only",
      ["device", "implementation"],
      (s) =>
        devicesOf(s).map((d) => [{ device: d.device, implementation: d.implementation }, d.running ? 1 : 0]),
    );
    wireguard(
      Gauge,
      "twill_wireguard_peers",
      "WireGuard peers on the device: what twill set there, checked by a read every 0.5 s; wireguard nodes only",
      "device",
      (s) => devicesOf(s).map((d) => [{ device: d.device }, d.peers]),
    );
    wireguard(
      Counter,
      "twill_wireguard_restarts_total",
      "Times wireguard-go exited and was started again",
      "device",
      (s) => devicesOf(s).map((d) => [{ device: d.device }, d.restarts]),
    );
    wireguard(
      Counter,
      "twill_wireguard_repairs_total",
      "Times the WireGuard device was found changed by someone else (a peer removed or altered, the key or port changed) and restored",
      "device",
      (s) => devicesOf(s).map((d) => [{ device: d.device }, d.repairs]),
    );
    const peerLabels = (s: WireGuardStatus, p: WireGuardPeerStatus): Partial<Record<string, string>> => ({
      device: p.device ?? s.device,
      subnet: p.subnet,
      public_key: p.publicKey,
    });
    wireguard(
      Gauge,
      "twill_wireguard_peer_handshake_age_seconds",
      "Seconds since the latest handshake with each peer on each device (+Inf: none yet); WireGuard shakes hands at least every 2 minutes while traffic flows",
      ["device", "subnet", "public_key"],
      (s) => {
        const now = Date.now();
        return s.peerDetails.map((p) => [
          peerLabels(s, p),
          p.lastHandshakeMs === 0 ? Number.POSITIVE_INFINITY : Math.max(0, (now - p.lastHandshakeMs) / 1000),
        ]);
      },
    );
    wireguard(
      Counter,
      "twill_wireguard_peer_bytes_total",
      "Bytes received from (rx) and sent to (tx) each peer on each device through WireGuard, as the device counts them (encrypted, with WireGuard's headers)",
      ["device", "subnet", "public_key", "direction"],
      (s) =>
        s.peerDetails.flatMap((p) => [
          [{ ...peerLabels(s, p), direction: "rx" }, p.rxBytes] as const,
          [{ ...peerLabels(s, p), direction: "tx" }, p.txBytes] as const,
        ]),
    );
  }
}
