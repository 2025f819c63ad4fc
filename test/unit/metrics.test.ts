import { describe, expect, it } from "vitest";
import { initialAgentStatus, type AgentStatus } from "../../src/agent.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import type { RoundReport } from "../../src/dataplane/controller.js";
import type { PeerStatus } from "../../src/dataplane/model.js";
import type { Op } from "../../src/dataplane/planner.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import type { OwnLease } from "../../src/lease/keeper.js";
import type { Lease } from "../../src/lease/lease.js";
import type { PeerView } from "../../src/lease/peer-view.js";
import { Metrics, backendLabel } from "../../src/metrics/metrics.js";
import { Heartbeats, dataplaneDeadlineMs } from "../../src/metrics/server.js";

const T0 = Date.UTC(2026, 0, 2, 3, 4, 5);

function metrics(): Metrics {
  return new Metrics({ version: "1.2.3", defaultMetrics: false, now: () => T0 });
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
  return { subnet: l.subnet, key: l.key, attrs: l.attrs, leaseId: "9", modRevision: 5, expiresAt };
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

const routeOp = (n: number, action: "replace" | "delete" = "replace"): Op =>
  action === "replace"
    ? {
        kind: "route",
        action,
        route: { dst: `${net(n)}/24`, gateway: net(n), dev: "flannel.1", onlink: true },
        reason: "missing",
      }
    : { kind: "route", action, route: { dst: `${net(n)}/24`, type: "unicast" }, reason: "stale" };
const neighOp = (n: number): Op => ({
  kind: "neigh",
  action: "replace",
  neigh: { dev: "flannel.1", dst: net(n), lladdr: "0a:00:00:00:00:01" },
  reason: "missing",
});
const fdbOp = (n: number): Op => ({
  kind: "fdb",
  action: "replace",
  fdb: { dev: "flannel.1", mac: "0a:00:00:00:00:01", dst: `198.18.0.${n}` },
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
    error: undefined,
    ...partial,
  };
}

describe("Metrics", () => {
  it("exposes build info and every fixed-label series from the start", async () => {
    const m = metrics();
    expect(await value(m, "twill_build_info", { version: "1.2.3", nodejs: process.version })).toBe(1);
    const text = await m.registry.metrics();
    expect(text).toContain('twill_lease_acquisitions_total{result="race_lost"} 0');
    expect(text).toContain('twill_dataplane_operations_total{kind="fdb",op="delete",result="error"} 0');
    expect(text).toContain('twill_reconcile_rounds_total{trigger="kernel",result="ok"} 0');
    expect(text).toContain('twill_drift_repairs_total{kind="device"} 0');
    expect(text).toContain("twill_ready 0");
    expect(text).toContain("twill_etcd_connected 0");
    // Only twill_ metrics when default metrics are off.
    for (const metric of await m.registry.getMetricsAsJSON()) expect(metric.name).toMatch(/^twill_/);
  });

  it("includes prom-client's default process metrics by default, unprefixed", async () => {
    const m = new Metrics({ version: "1.2.3" });
    const text = await m.registry.metrics();
    expect(text).toContain("process_cpu_user_seconds_total");
    expect(text).toContain("nodejs_heap_size_used_bytes");
  });

  it("counts acquisitions by result and tracks the own lease expiry", async () => {
    const m = metrics();
    m.acquired(own(), "created-free");
    m.acquired(own(), "created-previous");
    m.acquired(own(), "reused");
    m.raceLost();
    m.raceLost();
    m.exhausted();
    expect(await value(m, "twill_lease_acquisitions_total", { result: "created" })).toBe(2);
    expect(await value(m, "twill_lease_acquisitions_total", { result: "reused" })).toBe(1);
    expect(await value(m, "twill_lease_acquisitions_total", { result: "race_lost" })).toBe(2);
    expect(await value(m, "twill_lease_acquisitions_total", { result: "exhausted" })).toBe(1);
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe((T0 + 3600_000) / 1000);
    expect(await value(m, "twill_lease_reserved")).toBe(0);
  });

  it("shows a reservation as expiry 0 with twill_lease_reserved 1", async () => {
    const m = metrics();
    m.acquired(own(Infinity), "reserved");
    expect(await value(m, "twill_lease_acquisitions_total", { result: "reserved" })).toBe(1);
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe(0);
    expect(await value(m, "twill_lease_reserved")).toBe(1);
  });

  it("counts renewals and lost leases", async () => {
    const m = metrics();
    m.renewed(own(T0 + 7200_000));
    m.renewFailed();
    m.renewFailed();
    m.leaseLost();
    expect(await value(m, "twill_lease_renewals_total", { result: "success" })).toBe(1);
    expect(await value(m, "twill_lease_renewals_total", { result: "failure" })).toBe(2);
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe((T0 + 7200_000) / 1000);
    expect(await value(m, "twill_lease_lost_total")).toBe(1);
    expect(m.observed().leaseLost).toBe(1);
  });

  it("tracks invalid entries: the current number and each newly skipped one", async () => {
    const m = metrics();
    m.invalid([{ key: "a", reason: "x", modRevision: 1 }]);
    m.peers([], view([lease(2)], 1));
    m.invalid([
      { key: "b", reason: "y", modRevision: 2 },
      { key: "c", reason: "z", modRevision: 3 },
    ]);
    m.peers([], view([lease(2)], 3));
    expect(await value(m, "twill_invalid_entries")).toBe(3);
    expect(await value(m, "twill_invalid_entries_skipped_total")).toBe(3);
  });

  it("is connected to etcd from the config watch on, before any lease or subnet watch", async () => {
    const m = metrics();
    expect(await value(m, "twill_etcd_connected")).toBe(0);
    m.configWatchState("broken");
    expect(await value(m, "twill_etcd_connected")).toBe(0);
    m.configWatchState("watching");
    expect(await value(m, "twill_etcd_connected")).toBe(1);
    m.watchState("broken", "etcd restarted");
    expect(await value(m, "twill_etcd_connected")).toBe(0);
    m.watchState("watching");
    expect(await value(m, "twill_etcd_connected")).toBe(1);
    m.configWatchState("broken");
    expect(await value(m, "twill_etcd_connected")).toBe(0);
  });

  it("tracks the etcd watch: connected while watching, a restart per break", async () => {
    const m = metrics();
    m.configWatchState("watching");
    m.watchState("watching");
    expect(await value(m, "twill_etcd_connected")).toBe(1);
    m.watchState("broken", "etcd restarted");
    expect(await value(m, "twill_etcd_connected")).toBe(0);
    m.watchState("watching");
    m.watchState("broken", "compacted");
    m.watchState("watching");
    expect(await value(m, "twill_etcd_watch_restarts_total")).toBe(2);
    expect(await value(m, "twill_etcd_connected")).toBe(1);
    expect(m.observed().watch).toEqual({ state: "watching", since: T0, reason: undefined, restarts: 2 });
  });

  it("counts rounds, operations by kind/op/result, kernel objects and durations", async () => {
    const m = metrics();
    const failedOp = neighOp(3);
    m.round(
      report({
        trigger: "peers",
        durationMs: 12,
        ops: [routeOp(2), routeOp(3), routeOp(9, "delete"), neighOp(2), failedOp, fdbOp(2)],
        failed: [{ op: failedOp, error: "RTNETLINK answers: No such device" }],
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
    expect(m.observed().lastRound).toMatchObject({
      at: T0,
      trigger: "peers",
      ops: 6,
      failed: 1,
      result: "error",
      error: "RTNETLINK answers: No such device",
    });
    expect(m.observed().lastSuccessAt).toBeUndefined();

    m.round(report({ trigger: "retry", ops: [neighOp(3)], desiredCounts: { route: 2, neigh: 2, fdb: 2 } }));
    expect(await value(m, "twill_reconcile_rounds_total", { trigger: "retry", result: "ok" })).toBe(1);
    expect(await value(m, "twill_kernel_objects", { kind: "neighbour" })).toBe(2);
    expect(m.observed().lastSuccessAt).toBe(T0);
  });

  it("observes peer-event latency only for rounds that programmed the kernel", async () => {
    const m = metrics();
    m.round(report({ peerLatencyMs: 40 }));
    m.round(report({ peerLatencyMs: 90, error: "ip: spawn failed" }));
    expect(await value(m, "twill_peer_event_to_programmed_seconds_count")).toBe(1);
    expect(await value(m, "twill_peer_event_to_programmed_seconds_sum")).toBeCloseTo(0.04);
    expect(await value(m, "twill_peer_event_to_programmed_seconds_bucket", { le: "0.05" })).toBe(1);
  });

  it("does not count the ops of a round that threw (they may never have run)", async () => {
    const m = metrics();
    m.round(
      report({
        ops: [routeOp(2)],
        error: "ip -batch: killed",
        desiredCounts: { route: 5, neigh: 0, fdb: 0 },
      }),
    );
    expect(
      await value(m, "twill_dataplane_operations_total", { kind: "route", op: "replace", result: "ok" }),
    ).toBe(0);
    expect(await value(m, "twill_kernel_objects", { kind: "route" })).toBe(0);
    expect(await value(m, "twill_reconcile_rounds_total", { trigger: "peers", result: "error" })).toBe(1);
  });

  it("counts drift repairs by kind in resync- and kernel-triggered rounds only", async () => {
    const m = metrics();
    const repair = { device: "flannel.1", what: "recreated", detail: "deleted" };
    m.round(report({ trigger: "self", ops: [routeOp(2)], repairs: [repair] }));
    m.round(report({ trigger: "kernel", ops: [routeOp(2), fdbOp(2)] }));
    m.round(report({ trigger: "resync", ops: [neighOp(2)], repairs: [repair, repair] }));
    expect(await value(m, "twill_drift_repairs_total", { kind: "route" })).toBe(1);
    expect(await value(m, "twill_drift_repairs_total", { kind: "fdb" })).toBe(1);
    expect(await value(m, "twill_drift_repairs_total", { kind: "neighbour" })).toBe(1);
    expect(await value(m, "twill_drift_repairs_total", { kind: "device" })).toBe(2);
    expect(m.observed().driftRepairs).toEqual({ route: 1, neighbour: 1, fdb: 1, device: 2 });
  });

  it("counts peers by backend and state, with unknown backends folded into one label value", async () => {
    const m = metrics();
    m.acquired(own(), "created-free");
    const leases = [lease(2), lease(3), lease(4, "host-gw"), lease(5, null), lease(6, "evil-$(x)")];
    m.peers([], view(leases));
    const states = new Map<string, PeerStatus>([
      [key(2), { state: "programmed", reason: "vxlan via flannel.1" }],
      [key(3), { state: "programmed" }],
      [key(4), { state: "backend-mismatch", reason: "host-gw" }],
      [key(5), { state: "backend-mismatch" }],
      [key(6), { state: "backend-mismatch" }],
    ]);
    m.peerStates(states);
    expect(await value(m, "twill_peers", { backend: "vxlan", state: "programmed" })).toBe(2);
    expect(await value(m, "twill_peers", { backend: "vxlan", state: "unreachable" })).toBe(0);
    expect(await value(m, "twill_peers", { backend: "host-gw", state: "backend_mismatch" })).toBe(1);
    expect(await value(m, "twill_peers", { backend: "unknown", state: "backend_mismatch" })).toBe(2);
    // A peer that went away drops out at the next scrape.
    m.peerStates(new Map([[key(2), { state: "unreachable" }]]));
    const text = await m.registry.getSingleMetricAsString("twill_peers");
    expect(text).toContain('twill_peers{backend="vxlan",state="unreachable"} 1');
    expect(text).toContain('twill_peers{backend="vxlan",state="programmed"} 0');
    expect(text).not.toContain("host-gw");
    expect(m.observed().peerStates.get(key(2))?.state).toBe("unreachable");
  });

  it("counts restored masquerade rules after the first install, and errors", async () => {
    const m = metrics();
    m.rulesChecked({ missing: ["nat: chain FLANNEL-POSTRTG", "nat: rule -A …"], error: undefined });
    m.rulesChecked({ missing: [], error: undefined });
    m.rulesChecked({ missing: [], error: "iptables-restore: lock held" });
    m.rulesChecked({ missing: ["filter: rule -A FLANNEL-FWD …"], error: undefined });
    expect(await value(m, "twill_masq_rules_restored_total")).toBe(1);
    expect(await value(m, "twill_masq_errors_total")).toBe(1);
  });

  it("reads readiness, config validity and the own lease from the agent status at scrape", async () => {
    const m = metrics();
    m.setReady(true);
    expect(await value(m, "twill_ready")).toBe(1);
    const status: AgentStatus = {
      ...initialAgentStatus(),
      config: { kind: "missing", key: "/coreos.com/network/config" },
      notReady: ["no subnet lease yet"],
    };
    m.followStatus(() => status);
    expect(await value(m, "twill_ready")).toBe(0);
    expect(await value(m, "twill_config_valid")).toBe(0);
    const text = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
    status.config = { kind: "valid", config: parseNetworkConfig(text).config, text };
    status.ownLease = own(Infinity);
    status.notReady = [];
    expect(await value(m, "twill_ready")).toBe(1);
    expect(await value(m, "twill_config_valid")).toBe(1);
    expect(await value(m, "twill_lease_reserved")).toBe(1);
    expect(await value(m, "twill_lease_expiry_timestamp_seconds")).toBe(0);
  });

  it("has no per-peer labels: the series count does not grow with the number of peers", async () => {
    const seriesFor = async (peerCount: number): Promise<number> => {
      const m = metrics();
      m.acquired(own(), "created-free");
      const leases = Array.from({ length: peerCount }, (_, i) => lease(i + 2, i % 2 ? "vxlan" : "host-gw"));
      m.peers([], view(leases, peerCount));
      m.invalid([...view([], peerCount).invalid.values()]);
      m.peerStates(
        new Map(
          leases.map((l, i) => [l.key, { state: i % 3 ? "programmed" : "unreachable", reason: l.key }]),
        ),
      );
      const ops = leases.flatMap((l, i) => [routeOp(i + 2), neighOp(i + 2), fdbOp(i + 2)]);
      m.round(report({ trigger: "kernel", ops, peerLatencyMs: 5 }));
      let series = 0;
      for (const metric of await m.registry.getMetricsAsJSON()) {
        for (const v of metric.values) {
          const labels = Object.keys(v.labels);
          for (const label of labels)
            expect([
              "result",
              "backend",
              "state",
              "kind",
              "op",
              "trigger",
              "le",
              "version",
              "nodejs",
            ]).toContain(label);
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
});
