// Prometheus metrics: counters fed by the loops' events, gauges read from the agent's state at scrape
// (so they never disagree with /readyz and /status), and no label that grows with the cluster.
import { describe, expect, it, vi } from "vitest";
import { familyLease } from "../helpers/leases.js";
import type { PeerStatus } from "../../src/backends/backend.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import type { PlannedOp } from "../../src/dataplane/kinds/index.js";
import { TRIGGERS, type RoundReport } from "../../src/dataplane/loop.js";
import { ownedRoute, permanentFdb, permanentNeighbour } from "../../src/dataplane/objects.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import type { OwnLease } from "../../src/lease/keeper.js";
import type { Lease } from "../../src/lease/lease.js";
import type { PeerView } from "../../src/lease/peer-view.js";
import { Metrics, backendLabel } from "../../src/metrics/metrics.js";
import { afterRound, StateStore, type AgentState } from "../../src/state.js";
import { Heartbeats, dataplaneDeadlineMs } from "../../src/supervisor.js";

const T0 = Date.UTC(2026, 0, 2, 3, 4, 5);

/** Metrics over a state store, wired as the agent wires them. */
class Wired {
  readonly store = new StateStore();
  readonly metrics = new Metrics({
    version: "1.2.3",
    defaultMetrics: false,
    state: () => this.store.current,
  });

  update(change: Partial<AgentState>): void {
    this.store.update(change);
  }

  /** A finished round, as the agent records it: in the counters and in the data-plane state. */
  round(report: RoundReport): void {
    this.metrics.round(report);
    this.store.updateDataplane((dataplane) => afterRound(dataplane, report, T0));
  }
}

/** The value of one series (a histogram's _count/_sum/_bucket too), matched by the given labels. */
async function value(m: Metrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const base = name.replace(/_(count|sum|bucket)$/, "");
  const metric = m.registry.getSingleMetric(name) ?? m.registry.getSingleMetric(base);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  const hit = values.find(
    (v) =>
      ("metricName" in v && typeof v.metricName === "string" ? v.metricName : name) === name &&
      Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want),
  );
  if (!hit) throw new Error(`no series ${name}${JSON.stringify(labels)}`);
  return hit.value;
}

/** Peer n's subnet: 10.244.n.0/24, continuing into 10.245.x.0/24 past 255. */
const net = (n: number): string => `10.${244 + Math.floor(n / 256)}.${n % 256}.0`;
const key = (n: number): string => `/coreos.com/network/subnets/${net(n)}-24`;

/** Peer n; `backendType` null = omitted (flannel's udp/alloc writers leave it out). */
function lease(n: number, backendType: string | null = "vxlan"): Lease {
  return {
    subnet: parseCidr(`${net(n)}/24`),
    attrs: {
      publicIP: parseIPv4(`198.18.0.${n % 250}`),
      publicIPv6: null,
      backendType: backendType ?? undefined,
      backendData: undefined,
      backendV6Data: undefined,
    },
    key: key(n),
    etcdLeaseId: "7",
    createRevision: n,
    modRevision: n,
  };
}

function own(expiresAt = T0 + 3600_000): OwnLease {
  const l = lease(1);
  return {
    subnet: l.subnet,
    key: l.key,
    attrs: l.attrs,
    leaseId: "9",
    createRevision: 5,
    modRevision: 5,
    expiresAt,
  };
}

function view(leases: Lease[], invalid = 0): PeerView {
  return {
    peers: new Map(leases.map((l) => [l.key, l])),
    invalid: new Map(
      Array.from({ length: invalid }, (_, i) => [
        `/coreos.com/network/subnets/bad-${i}`,
        { key: `/coreos.com/network/subnets/bad-${i}`, reason: "not a subnet", modRevision: i },
      ]),
    ),
  };
}

const tunnelRoute = (n: number) =>
  ownedRoute({ family: 4, dst: `${net(n)}/24`, gateway: net(n), dev: "flannel.1", onlink: true });
const routeOp = (n: number, action: "replace" | "delete" = "replace"): PlannedOp => ({
  action,
  object: tunnelRoute(n),
  reason: action === "replace" ? "missing" : "stale: no such peer",
});
const neighOp = (n: number): PlannedOp => ({
  action: "replace",
  object: permanentNeighbour({ family: 4, dev: "flannel.1", dst: net(n), lladdr: "0a:00:00:00:00:01" }),
  reason: "missing",
});
const fdbOp = (n: number): PlannedOp => ({
  action: "replace",
  object: permanentFdb({ dev: "flannel.1", mac: "0a:00:00:00:00:01", dst: `198.18.0.${n % 250}` }),
  reason: "missing",
});

function report(partial: Partial<RoundReport>): RoundReport {
  return {
    trigger: "peers",
    durationMs: 4,
    ops: [],
    failed: [],
    repairs: [],
    desiredCounts: { route: 0, neigh: 0, fdb: 0 },
    peerLatencyMs: undefined,
    reload: undefined,
    error: undefined,
    ...partial,
  };
}

const RELOAD_REASONS = ["start", "self", "resync", "overflow", "kernel", "retry"];

describe("Metrics", () => {
  it("exposes build info and every fixed-label series from the start", async () => {
    const { metrics: m } = new Wired();
    expect(await value(m, "twill_build_info", { version: "1.2.3", nodejs: process.version })).toBe(1);
    const text = await m.registry.metrics();
    expect(text).toContain('twill_lease_acquisitions_total{result="race_lost"} 0');
    expect(text).toContain('twill_dataplane_operations_total{kind="fdb",op="delete",result="error"} 0');
    for (const trigger of TRIGGERS) {
      expect(text).toContain(`twill_reconcile_rounds_total{trigger="${trigger}",result="ok"} 0`);
      expect(text).toContain(`twill_reconcile_rounds_total{trigger="${trigger}",result="error"} 0`);
    }
    expect(TRIGGERS).toContain("overflow");
    for (const reason of RELOAD_REASONS) {
      expect(text).toContain(`twill_kernel_view_reloads_total{reason="${reason}"} 0`);
    }
    expect(text).toContain('twill_drift_repairs_total{kind="device"} 0');
    expect(text).toContain('twill_kernel_objects{kind="neighbour"} 0');
    expect(text).toContain("twill_ready 0");
    expect(text).toContain("twill_etcd_connected 0");
    expect(text).toContain("twill_config_valid 0");
    // Only twill_ metrics when default metrics are off.
    for (const metric of await m.registry.getMetricsAsJSON()) expect(metric.name).toMatch(/^twill_/);
  });

  it("includes prom-client's default process metrics by default, unprefixed", async () => {
    const store = new StateStore();
    const m = new Metrics({ version: "1.2.3", state: () => store.current });
    const text = await m.registry.metrics();
    expect(text).toContain("process_cpu_user_seconds_total");
    expect(text).toContain("nodejs_heap_size_used_bytes");
  });

  it("counts acquisitions by result and shows the own lease's expiry from the state", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    m.acquired("created-free");
    m.acquired("created-previous");
    m.acquired("reused");
    m.raceLost();
    m.raceLost();
    m.exhausted();
    expect(await value(m, "twill_lease_acquisitions_total", { result: "created" })).toBe(2);
    expect(await value(m, "twill_lease_acquisitions_total", { result: "reused" })).toBe(1);
    expect(await value(m, "twill_lease_acquisitions_total", { result: "race_lost" })).toBe(2);
    expect(await value(m, "twill_lease_acquisitions_total", { result: "exhausted" })).toBe(1);
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe(0);
    agent.update({ ownLease: own() });
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe((T0 + 3600_000) / 1000);
    expect(await value(m, "twill_lease_reserved")).toBe(0);
  });

  it("shows a reservation as expiry 0 with twill_lease_reserved 1", async () => {
    const agent = new Wired();
    agent.metrics.acquired("reserved");
    agent.update({ ownLease: own(Infinity) });
    expect(await value(agent.metrics, "twill_lease_acquisitions_total", { result: "reserved" })).toBe(1);
    expect(await value(agent.metrics, "twill_lease_expiry_timestamp_seconds")).toBe(0);
    expect(await value(agent.metrics, "twill_lease_reserved")).toBe(1);
  });

  it("counts renewals and lost leases; the expiry follows the renewed lease", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    agent.update({ ownLease: own() });
    m.renewed();
    agent.update({ ownLease: own(T0 + 7200_000) });
    m.renewFailed();
    m.renewFailed();
    m.leaseLost();
    expect(await value(m, "twill_lease_renewals_total", { result: "success" })).toBe(1);
    expect(await value(m, "twill_lease_renewals_total", { result: "failure" })).toBe(2);
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe((T0 + 7200_000) / 1000);
    expect(await value(m, "twill_lease_lost_total")).toBe(1);
  });

  it("tracks invalid entries: the current number from the view, and each newly skipped one", async () => {
    const agent = new Wired();
    agent.metrics.invalidSkipped(1);
    agent.update({ view: view([lease(2)], 1) });
    expect(await value(agent.metrics, "twill_invalid_entries")).toBe(1);
    agent.metrics.invalidSkipped(2);
    agent.update({ view: view([lease(2)], 3) });
    expect(await value(agent.metrics, "twill_invalid_entries")).toBe(3);
    expect(await value(agent.metrics, "twill_invalid_entries_skipped_total")).toBe(3);
    // Fixed entries leave the gauge; the counter keeps its history.
    agent.update({ view: view([lease(2)], 0) });
    expect(await value(agent.metrics, "twill_invalid_entries")).toBe(0);
    expect(await value(agent.metrics, "twill_invalid_entries_skipped_total")).toBe(3);
  });

  it("is connected to etcd from the config watch on, before any lease or subnet watch", async () => {
    const agent = new Wired();
    const connected = (): Promise<number> => value(agent.metrics, "twill_etcd_connected");
    const broken = { state: "broken", since: T0, reason: "etcd restarted", restarts: 1 } as const;
    expect(await connected()).toBe(0);
    agent.update({ configWatch: "broken" });
    expect(await connected()).toBe(0);
    agent.update({ configWatch: "watching" });
    expect(await connected()).toBe(1);
    agent.update({ subnetWatch: broken });
    expect(await connected()).toBe(0);
    agent.update({ subnetWatch: { ...broken, state: "watching", reason: undefined } });
    expect(await connected()).toBe(1);
    agent.update({ configWatch: "broken" });
    expect(await connected()).toBe(0);
  });

  it("counts a restart per broken subnet watch", async () => {
    const agent = new Wired();
    agent.metrics.subnetWatchBroken();
    agent.metrics.subnetWatchBroken();
    expect(await value(agent.metrics, "twill_etcd_watch_restarts_total")).toBe(2);
  });

  it("counts rounds, operations by kind/op/result, kernel objects and durations", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    const failedOp = neighOp(3);
    agent.round(
      report({
        trigger: "peers",
        durationMs: 12,
        ops: [routeOp(2), routeOp(3), routeOp(9, "delete"), neighOp(2), failedOp, fdbOp(2)],
        failed: [{ op: failedOp, error: "No such device (ENODEV)" }],
        desiredCounts: { route: 2, neigh: 2, fdb: 2 },
        peerLatencyMs: 30,
      }),
    );
    expect(await value(m, "twill_reconcile_rounds_total", { trigger: "peers", result: "error" })).toBe(1);
    expect(
      await value(m, "twill_dataplane_operations_total", { kind: "route", op: "replace", result: "ok" }),
    ).toBe(2);
    expect(
      await value(m, "twill_dataplane_operations_total", { kind: "route", op: "delete", result: "ok" }),
    ).toBe(1);
    expect(
      await value(m, "twill_dataplane_operations_total", {
        kind: "neighbour",
        op: "replace",
        result: "error",
      }),
    ).toBe(1);
    expect(
      await value(m, "twill_dataplane_operations_total", { kind: "neighbour", op: "replace", result: "ok" }),
    ).toBe(1);
    expect(
      await value(m, "twill_dataplane_operations_total", { kind: "fdb", op: "replace", result: "ok" }),
    ).toBe(1);
    // The failed neighbour is not in the kernel.
    expect(await value(m, "twill_kernel_objects", { kind: "route" })).toBe(2);
    expect(await value(m, "twill_kernel_objects", { kind: "neighbour" })).toBe(1);
    expect(await value(m, "twill_kernel_objects", { kind: "fdb" })).toBe(2);
    expect(await value(m, "twill_reconcile_duration_seconds_count")).toBe(1);
    expect(await value(m, "twill_reconcile_duration_seconds_sum")).toBeCloseTo(0.012);
    // Not programmed: no latency observed. Peer changes never count as drift.
    expect(await value(m, "twill_peer_event_to_programmed_seconds_count")).toBe(0);
    expect(await value(m, "twill_drift_repairs_total", { kind: "route" })).toBe(0);
    expect(agent.store.current.dataplane.lastRound).toMatchObject({
      at: T0,
      trigger: "peers",
      ops: 6,
      failed: 1,
      result: "error",
      error: "No such device (ENODEV)",
    });
    expect(agent.store.current.dataplane.lastSuccessAt).toBeUndefined();

    agent.round(
      report({ trigger: "retry", ops: [neighOp(3)], desiredCounts: { route: 2, neigh: 2, fdb: 2 } }),
    );
    expect(await value(m, "twill_reconcile_rounds_total", { trigger: "retry", result: "ok" })).toBe(1);
    expect(await value(m, "twill_kernel_objects", { kind: "neighbour" })).toBe(2);
    expect(agent.store.current.dataplane.lastSuccessAt).toBe(T0);
  });

  it("observes peer-event latency only for rounds that programmed the kernel", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    agent.round(report({ peerLatencyMs: 40 }));
    agent.round(report({ peerLatencyMs: 90, error: new Error("netlink: socket closed") }));
    const failedOp = routeOp(2);
    agent.round(report({ peerLatencyMs: 70, ops: [failedOp], failed: [{ op: failedOp, error: "ENODEV" }] }));
    expect(await value(m, "twill_peer_event_to_programmed_seconds_count")).toBe(1);
    expect(await value(m, "twill_peer_event_to_programmed_seconds_sum")).toBeCloseTo(0.04);
    expect(await value(m, "twill_peer_event_to_programmed_seconds_bucket", { le: "0.05" })).toBe(1);
  });

  it("does not count the ops of a round that threw (they may never have run)", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    agent.round(
      report({
        ops: [routeOp(2)],
        error: new Error("netlink: socket closed"),
        desiredCounts: { route: 5, neigh: 0, fdb: 0 },
      }),
    );
    expect(
      await value(m, "twill_dataplane_operations_total", { kind: "route", op: "replace", result: "ok" }),
    ).toBe(0);
    expect(await value(m, "twill_kernel_objects", { kind: "route" })).toBe(0);
    expect(await value(m, "twill_reconcile_rounds_total", { trigger: "peers", result: "error" })).toBe(1);
  });

  it("counts drift repairs by kind only in rounds etcd did not start (kernel, resync, overflow)", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    const repair = { device: "flannel.1", what: "recreated", detail: "deleted" };
    agent.round(report({ trigger: "self", ops: [routeOp(2)], repairs: [repair] }));
    agent.round(report({ trigger: "peers", ops: [fdbOp(2)], repairs: [repair] }));
    agent.round(report({ trigger: "kernel", ops: [routeOp(2), fdbOp(2)] }));
    agent.round(report({ trigger: "resync", ops: [neighOp(2)], repairs: [repair, repair] }));
    agent.round(report({ trigger: "overflow", ops: [routeOp(3)] }));
    // A failed repair is not a repair.
    const failedOp = neighOp(4);
    agent.round(report({ trigger: "kernel", ops: [failedOp], failed: [{ op: failedOp, error: "EPERM" }] }));
    expect(await value(m, "twill_drift_repairs_total", { kind: "route" })).toBe(2);
    expect(await value(m, "twill_drift_repairs_total", { kind: "fdb" })).toBe(1);
    expect(await value(m, "twill_drift_repairs_total", { kind: "neighbour" })).toBe(1);
    expect(await value(m, "twill_drift_repairs_total", { kind: "device" })).toBe(2);
    // /status counts the same.
    expect(agent.store.current.dataplane.driftRepairs).toEqual({ route: 2, neighbour: 1, fdb: 1, device: 2 });
  });

  it("counts the kernel view's reloads by reason", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    agent.round(report({ trigger: "self", reload: "start" }));
    agent.round(report({ trigger: "peers" }));
    agent.round(report({ trigger: "overflow", reload: "overflow" }));
    agent.round(report({ trigger: "resync", reload: "resync" }));
    agent.round(report({ trigger: "resync", reload: "resync" }));
    expect(await value(m, "twill_kernel_view_reloads_total", { reason: "start" })).toBe(1);
    expect(await value(m, "twill_kernel_view_reloads_total", { reason: "overflow" })).toBe(1);
    expect(await value(m, "twill_kernel_view_reloads_total", { reason: "resync" })).toBe(2);
    expect(await value(m, "twill_kernel_view_reloads_total", { reason: "kernel" })).toBe(0);
    expect(await value(m, "twill_reconcile_rounds_total", { trigger: "overflow", result: "ok" })).toBe(1);
  });

  it("counts peers by backend and state at scrape, with unknown backends folded into one label value", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    // Once the own backend is known its series exist, so "0 unreachable" is a sample, not an absence.
    agent.update({ backend: { type: "vxlan", options: {} } });
    expect(await value(m, "twill_peers", { backend: "vxlan", state: "unreachable" })).toBe(0);
    const leases = [lease(2), lease(3), lease(4, "host-gw"), lease(5, null), lease(6, "evil-$(x)")];
    const states = new Map<string, PeerStatus>([
      [key(2), { state: "programmed", reason: "vxlan via flannel.1" }],
      [key(3), { state: "programmed" }],
      [key(4), { state: "backend-mismatch", reason: "host-gw" }],
      [key(5), { state: "backend-mismatch" }],
      [key(6), { state: "backend-mismatch" }],
    ]);
    agent.update({ ownLease: own(), view: view(leases) });
    agent.store.updateDataplane(() => ({ peerStates: states }));
    expect(await value(m, "twill_peers", { backend: "vxlan", state: "programmed" })).toBe(2);
    expect(await value(m, "twill_peers", { backend: "vxlan", state: "unreachable" })).toBe(0);
    expect(await value(m, "twill_peers", { backend: "host-gw", state: "backend_mismatch" })).toBe(1);
    expect(await value(m, "twill_peers", { backend: "unknown", state: "backend_mismatch" })).toBe(2);
    // A peer that went away drops out at the next scrape.
    agent.update({ view: view([lease(2)]) });
    agent.store.updateDataplane(() => ({ peerStates: new Map([[key(2), { state: "unreachable" }]]) }));
    const text = await m.registry.getSingleMetricAsString("twill_peers");
    expect(text).toContain('twill_peers{backend="vxlan",state="unreachable"} 1');
    expect(text).toContain('twill_peers{backend="vxlan",state="programmed"} 0');
    expect(text).not.toContain("host-gw");
    expect(text).not.toContain("unknown");
  });

  it("counts restored masquerade rules and failed checks", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    // The first install restores nothing (the agent reports 0 for it), then one rule came back.
    m.rulesChecked({ restored: 0, failed: false });
    m.rulesChecked({ restored: 0, failed: false });
    m.rulesChecked({ restored: 0, failed: true });
    m.rulesChecked({ restored: 1, failed: false });
    m.rulesChecked({ restored: 2, failed: false });
    expect(await value(m, "twill_masq_rules_restored_total")).toBe(3);
    expect(await value(m, "twill_masq_errors_total")).toBe(1);
  });

  it("reads readiness, config validity and the own lease from the state at scrape", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    agent.update({ config: { kind: "missing", key: "/coreos.com/network/config" } });
    expect(await value(m, "twill_ready")).toBe(0);
    expect(await value(m, "twill_config_valid")).toBe(0);
    const text = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
    agent.update({
      config: { kind: "valid", config: parseNetworkConfig(text).config, text },
      ownLease: own(Infinity),
      subnetFileWritten: true,
      view: view([]),
      phase: undefined,
    });
    agent.store.updateDataplane(() => ({ programmed: true }));
    expect(await value(m, "twill_ready")).toBe(0); // the rules are not in yet
    agent.store.updateMasq(() => ({ installed: true }));
    expect(await value(m, "twill_ready")).toBe(1);
    expect(await value(m, "twill_config_valid")).toBe(1);
    expect(await value(m, "twill_lease_reserved")).toBe(1);
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe(0);
    // The pool of a /16 in /24s from SubnetMin 10.244.1.0: 255 subnets; the own lease holds one.
    expect(await value(m, "twill_subnet_pool_size")).toBe(255);
    expect(await value(m, "twill_subnet_pool_leased")).toBe(1);
    // Exactly what /readyz says.
    expect(agent.store.notReady()).toEqual([]);
    agent.update({ config: { kind: "invalid", key: "k", field: "Network", message: "Network: bad" } });
    expect(await value(m, "twill_ready")).toBe(0);
    expect(await value(m, "twill_config_valid")).toBe(0);
    expect(agent.store.notReady()).toEqual(["invalid network config: Network: bad"]);
    expect(await value(m, "twill_subnet_pool_size")).toBe(0);
  });

  it("has no per-peer labels: the series count does not grow with the number of peers", async () => {
    const seriesFor = async (peerCount: number): Promise<number> => {
      const agent = new Wired();
      const m = agent.metrics;
      const leases = Array.from({ length: peerCount }, (_, i) => lease(i + 2, i % 2 ? "vxlan" : "host-gw"));
      agent.update({ ownLease: own(), view: view(leases, peerCount) });
      agent.store.updateDataplane(() => ({
        peerStates: new Map(
          leases.map((l, i): [string, PeerStatus] => [
            l.key,
            { state: i % 3 ? "programmed" : "unreachable", reason: l.key },
          ]),
        ),
      }));
      m.invalidSkipped(peerCount);
      const ops = leases.flatMap((_, i) => [routeOp(i + 2), neighOp(i + 2), fdbOp(i + 2)]);
      agent.round(report({ trigger: "kernel", ops, peerLatencyMs: 5, reload: "kernel" }));
      let series = 0;
      for (const metric of await m.registry.getMetricsAsJSON()) {
        for (const v of metric.values) {
          for (const label of Object.keys(v.labels)) {
            expect([
              "result",
              "backend",
              "state",
              "kind",
              "op",
              "trigger",
              "reason",
              "le",
              "version",
              "nodejs",
              "family",
            ]).toContain(label);
          }
          series += 1;
        }
      }
      return series;
    };
    expect(await seriesFor(300)).toBe(await seriesFor(3));
  });
});

describe("backendLabel", () => {
  it.each([
    ["vxlan", "vxlan"],
    ["VXLAN", "vxlan"],
    ["host-gw", "host-gw"],
    ["udp", "udp"],
    [undefined, "unknown"],
    ["", "unknown"],
    ["anything-else", "unknown"],
  ])("%j → %s", (input, label) => {
    expect(backendLabel(input)).toBe(label);
  });
});

describe("Heartbeats", () => {
  it("is healthy while every loop beats within its own deadline", () => {
    let now = 1_000_000;
    const beats = new Heartbeats(() => now);
    expect(beats.problems()).toEqual([]);
    beats.beat("dataplane", dataplaneDeadlineMs(30_000));
    beats.beat("lease", Infinity);
    now += 119_000;
    expect(beats.problems()).toEqual([]);
    now += 2_000;
    expect(beats.problems()).toEqual(["dataplane loop stuck: last heartbeat 121s ago, expected within 120s"]);
    beats.beat("dataplane", 120_000);
    now += 10 * 24 * 3600_000;
    beats.beat("dataplane", 120_000);
    expect(beats.problems()).toEqual([]);
    expect(beats.snapshot()).toEqual({ dataplane: now, lease: 1_000_000 });
    beats.end("dataplane");
    expect(Object.keys(beats.snapshot())).toEqual(["lease"]);
  });

  it("gives the data plane three resync intervals and 30 s before it counts as stuck", () => {
    expect(dataplaneDeadlineMs(30_000)).toBe(120_000);
    expect(dataplaneDeadlineMs(300_000)).toBe(930_000);
  });
});

describe("udp proxy metrics (a backend's userspace data path)", () => {
  const status = (running: boolean) => ({
    kind: "udp" as const,
    what: "udp proxy on flannel0, port 8285",
    device: "flannel0",
    running,
    lastFailure: running ? undefined : "the TUN device was deleted",
    peers: 4,
    txPackets: 10,
    txBytes: 12_000,
    rxPackets: 7,
    rxBytes: 9_000,
    drops: {
      no_route: 3,
      ttl_expired: 0,
      unknown_sender: 2,
      malformed: 0,
      not_ipv4: 1,
      send_error: 0,
      tun_write_error: 0,
    },
    icmpUnreachableSent: 3,
    restarts: 1,
  });

  it("reads the proxy's own totals at scrape", async () => {
    const w = new Wired();
    let running = true;
    w.update({ userspace: () => status(running) });
    expect(await value(w.metrics, "twill_udp_proxy_up", { device: "flannel0" })).toBe(1);
    expect(await value(w.metrics, "twill_udp_peers", { device: "flannel0" })).toBe(4);
    expect(await value(w.metrics, "twill_udp_packets_total", { direction: "tx" })).toBe(10);
    expect(await value(w.metrics, "twill_udp_bytes_total", { direction: "rx" })).toBe(9_000);
    expect(await value(w.metrics, "twill_udp_dropped_packets_total", { reason: "unknown_sender" })).toBe(2);
    expect(await value(w.metrics, "twill_udp_dropped_packets_total", { reason: "not_ipv4" })).toBe(1);
    expect(await value(w.metrics, "twill_udp_proxy_restarts_total", { device: "flannel0" })).toBe(1);
    running = false;
    expect(await value(w.metrics, "twill_udp_proxy_up", { device: "flannel0" })).toBe(0);
    // A second scrape reports the same totals, not their sum.
    expect(await value(w.metrics, "twill_udp_packets_total", { direction: "tx" })).toBe(10);
  });

  it("has no udp series on a node without one", async () => {
    const text = await new Wired().metrics.registry.metrics();
    expect(text).not.toMatch(/^twill_udp_\w+\{/m);
  });
});

describe("wireguard metrics (a backend's userspace data path)", () => {
  const KEY_A = "mNb7OIIXTdgW4khM7OFlzJ+UPs7lmcWHV7xjPgakMkQ=";
  const KEY_B = "GHc0lmKsi1pVlPy0RRBWhWEUpeSDfIE8uivN/XO7L1A=";
  const OWN = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
  const status = (running: boolean, implementation: "kernel" | "userspace" = "userspace") => ({
    kind: "wireguard" as const,
    what: `wireguard-go on flannel-wg, port 51820, public key ${OWN}`,
    device: "flannel-wg",
    running,
    lastFailure: running ? undefined : "wireguard-go (pid 4242) exited",
    peers: 2,
    restarts: 3,
    implementation,
    publicKey: OWN,
    listenPort: 51820,
    pid: implementation === "userspace" ? 4242 : undefined,
    peerDetails: [
      {
        subnet: "10.244.2.0/24",
        publicKey: KEY_A,
        endpoint: "198.18.0.2:51820",
        lastHandshakeMs: T0 - 30_000,
        rxBytes: 148,
        txBytes: 92,
      },
      {
        subnet: "10.244.3.0/24",
        publicKey: KEY_B,
        endpoint: undefined,
        lastHandshakeMs: 0,
        rxBytes: 0,
        txBytes: 0,
      },
    ],
    repairs: 5,
  });

  it("reads the device's figures at scrape: up, peers, handshake ages, bytes, repairs, restarts", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T0);
    try {
      const w = new Wired();
      let running = true;
      w.update({ userspace: () => status(running) });
      const m = w.metrics;
      expect(
        await value(m, "twill_wireguard_up", { device: "flannel-wg", implementation: "userspace" }),
      ).toBe(1);
      expect(await value(m, "twill_wireguard_peers", { device: "flannel-wg" })).toBe(2);
      expect(await value(m, "twill_wireguard_repairs_total", { device: "flannel-wg" })).toBe(5);
      expect(await value(m, "twill_wireguard_restarts_total", { device: "flannel-wg" })).toBe(3);
      const a = { subnet: "10.244.2.0/24", public_key: KEY_A };
      const b = { subnet: "10.244.3.0/24", public_key: KEY_B };
      expect(await value(m, "twill_wireguard_peer_handshake_age_seconds", a)).toBe(30);
      // Never shaken hands: +Inf, so `> 180` alerts catch it.
      expect(await value(m, "twill_wireguard_peer_handshake_age_seconds", b)).toBe(Number.POSITIVE_INFINITY);
      expect(await value(m, "twill_wireguard_peer_bytes_total", { ...a, direction: "rx" })).toBe(148);
      expect(await value(m, "twill_wireguard_peer_bytes_total", { ...a, direction: "tx" })).toBe(92);
      expect(await value(m, "twill_wireguard_peer_bytes_total", { ...b, direction: "rx" })).toBe(0);
      const text = await m.registry.metrics();
      expect(text).toContain(
        `twill_wireguard_peer_handshake_age_seconds{device="flannel-wg",subnet="10.244.3.0/24",public_key="${KEY_B}"} +Inf`,
      );
      expect(text).toContain(
        `twill_wireguard_peer_bytes_total{device="flannel-wg",subnet="10.244.2.0/24",public_key="${KEY_A}",direction="tx"} 92`,
      );

      running = false;
      expect(
        await value(m, "twill_wireguard_up", { device: "flannel-wg", implementation: "userspace" }),
      ).toBe(0);
      // A second scrape reports the same totals, not their sum.
      expect(await value(m, "twill_wireguard_repairs_total", { device: "flannel-wg" })).toBe(5);
      expect(await value(m, "twill_wireguard_peer_bytes_total", { ...a, direction: "rx" })).toBe(148);
      // Time passes: the age grows.
      vi.setSystemTime(T0 + 60_000);
      expect(await value(m, "twill_wireguard_peer_handshake_age_seconds", a)).toBe(90);
    } finally {
      vi.useRealTimers();
    }
  });

  it("has a series per device when the node runs flannel-wg and flannel-wg-v6 (Mode separate, IPv6 on)", async () => {
    const v4 = status(true);
    const v6 = {
      ...status(false),
      what: `wireguard-go on flannel-wg-v6, port 51821, public key ${OWN}`,
      device: "flannel-wg-v6",
      listenPort: 51821,
      peers: 1,
      restarts: 1,
      repairs: 2,
      peerDetails: [
        {
          subnet: "fd00:10:244:2::/64",
          publicKey: KEY_A,
          endpoint: "[2001:db8::2]:51821",
          lastHandshakeMs: 0,
          rxBytes: 7,
          txBytes: 8,
        },
      ],
    };
    const both = {
      ...v4,
      running: false,
      peers: 3,
      restarts: 4,
      repairs: 7,
      peerDetails: [
        ...v4.peerDetails.map((p) => ({ ...p, device: "flannel-wg" })),
        ...v6.peerDetails.map((p) => ({ ...p, device: "flannel-wg-v6" })),
      ],
      devices: [v4, v6],
    };
    const w = new Wired();
    w.update({ userspace: () => both });
    const m = w.metrics;
    const up = (device: string) => value(m, "twill_wireguard_up", { device, implementation: "userspace" });
    expect([await up("flannel-wg"), await up("flannel-wg-v6")]).toEqual([1, 0]);
    expect(await value(m, "twill_wireguard_peers", { device: "flannel-wg-v6" })).toBe(1);
    expect(await value(m, "twill_wireguard_restarts_total", { device: "flannel-wg-v6" })).toBe(1);
    expect(await value(m, "twill_wireguard_repairs_total", { device: "flannel-wg" })).toBe(5);
    const peer = { subnet: "fd00:10:244:2::/64", public_key: KEY_A };
    expect(
      await value(m, "twill_wireguard_peer_bytes_total", {
        device: "flannel-wg-v6",
        ...peer,
        direction: "tx",
      }),
    ).toBe(8);
    expect(
      await value(m, "twill_wireguard_peer_bytes_total", {
        device: "flannel-wg",
        subnet: "10.244.2.0/24",
        public_key: KEY_A,
        direction: "tx",
      }),
    ).toBe(92);
  });

  it("labels the kernel's device with implementation kernel", async () => {
    const w = new Wired();
    w.update({ userspace: () => status(true, "kernel") });
    expect(
      await value(w.metrics, "twill_wireguard_up", { device: "flannel-wg", implementation: "kernel" }),
    ).toBe(1);
    const text = await w.metrics.registry.getSingleMetricAsString("twill_wireguard_up");
    expect(text).not.toContain('implementation="userspace"');
  });

  it("has no udp samples on a wireguard node, and no wireguard samples on a udp node", async () => {
    const wireguard = new Wired();
    wireguard.update({ userspace: () => status(true) });
    const wgText = await wireguard.metrics.registry.metrics();
    expect(wgText).toMatch(/^twill_wireguard_up\{/m);
    expect(wgText).not.toMatch(/^twill_udp_\w+[{ ]/m);

    const udp = new Wired();
    udp.update({
      userspace: () => ({
        kind: "udp" as const,
        what: "udp proxy on flannel0, port 8285",
        device: "flannel0",
        running: true,
        lastFailure: undefined,
        peers: 1,
        txPackets: 1,
        txBytes: 1,
        rxPackets: 1,
        rxBytes: 1,
        drops: {
          no_route: 0,
          ttl_expired: 0,
          unknown_sender: 0,
          malformed: 0,
          not_ipv4: 0,
          send_error: 0,
          tun_write_error: 0,
        },
        icmpUnreachableSent: 0,
        restarts: 0,
      }),
    });
    const udpText = await udp.metrics.registry.metrics();
    expect(udpText).toMatch(/^twill_udp_proxy_up\{/m);
    expect(udpText).not.toMatch(/^twill_wireguard_\w+[{ ]/m);
  });

  it("has no wireguard samples on a node without a userspace data path", async () => {
    const text = await new Wired().metrics.registry.metrics();
    expect(text).not.toMatch(/^twill_wireguard_\w+[{ ]/m);
    // The series are declared all the same (HELP and TYPE), so dashboards know them.
    expect(text).toContain("# TYPE twill_wireguard_up gauge");
    expect(text).toContain("# TYPE twill_wireguard_peer_bytes_total counter");
  });
});

describe("Metrics with IPv6", () => {
  /** Peer n of any family mix: `v4`/`v6` false to leave one out. */
  const lease46 = (n: number, families: { v4?: boolean; v6?: boolean } = {}): Lease =>
    familyLease(n, { ...families, data: undefined, v6Data: undefined });

  it("twill_peer_subnets counts valid peers' subnets per family; a dual-stack peer counts in both", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    const text =
      '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}';
    agent.update({ config: { kind: "valid", config: parseNetworkConfig(text).config, text } });
    agent.update({
      view: view(
        [
          lease46(2),
          lease46(3),
          lease46(4, { v6: false }),
          lease46(5, { v4: false }),
          lease46(6, { v4: false }),
          lease46(7, { v4: false }),
        ],
        4,
      ),
    });
    expect(await value(m, "twill_peer_subnets", { family: "ipv4" })).toBe(3);
    expect(await value(m, "twill_peer_subnets", { family: "ipv6" })).toBe(5);
    // Invalid entries are not peers.
    expect(await value(m, "twill_invalid_entries")).toBe(4);
    agent.update({ view: view([lease46(4, { v6: false })]) });
    expect(await value(m, "twill_peer_subnets", { family: "ipv6" })).toBe(0);
    expect(await value(m, "twill_peer_subnets", { family: "ipv4" })).toBe(1);
  });

  it("twill_peer_subnets counts only the families the config carries", async () => {
    const agent = new Wired();
    const m = agent.metrics;
    const text = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
    agent.update({ config: { kind: "valid", config: parseNetworkConfig(text).config, text } });
    agent.update({ view: view([lease46(2), lease46(4, { v6: false })]) });
    expect(await value(m, "twill_peer_subnets", { family: "ipv4" })).toBe(2);
    expect(await value(m, "twill_peer_subnets", { family: "ipv6" })).toBe(0);
  });

  it("twill_peer_subnets is 0 for both families before the view is synced", async () => {
    const m = new Wired().metrics;
    expect(await value(m, "twill_peer_subnets", { family: "ipv4" })).toBe(0);
    expect(await value(m, "twill_peer_subnets", { family: "ipv6" })).toBe(0);
  });

  it.each([
    // IPv4 /16 in /24s: 255; IPv6 /56 in /64s: 255
    ['"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"', 255],
    // the IPv6 pool is the smaller one: a lease takes one subnet of each
    ['"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/62"', 3],
    // the IPv4 pool is the smaller one
    ['"Network":"10.244.0.0/22","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"', 3],
    // IPv6-only: the IPv6 pool alone
    ['"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"', 65535],
    ['"Network":"10.244.0.0/16"', 255],
  ])("twill_subnet_pool_size with %s is %i", async (fields, size) => {
    const agent = new Wired();
    const text = `{${fields},"Backend":{"Type":"vxlan"}}`;
    agent.update({ config: { kind: "valid", config: parseNetworkConfig(text).config, text } });
    expect(await value(agent.metrics, "twill_subnet_pool_size")).toBe(size);
  });
});
