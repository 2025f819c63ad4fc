// The HTTP layer for real (node:http on 127.0.0.1, an ephemeral port) with a fake status source:
// the endpoints, their codes and bodies, the Prometheus exposition as promtool sees it, and the
// `twill status` client against it. No agent, no namespaces.
import { spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PlannedOp } from "../../src/dataplane/kinds/index.js";
import { ownedRoute } from "../../src/dataplane/objects.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { Metrics } from "../../src/metrics/metrics.js";
import {
  createHandler,
  listen,
  listenPlan,
  serve,
  parseListenAddress,
  type RunningServer,
} from "../../src/metrics/server.js";
import { isLoopbackClient } from "../../src/metrics/server.js";
import { StatusFetchError, agentEndpoints, fetchStatus, renderStatus } from "../../src/metrics/status.js";
import { afterRound, StateStore } from "../../src/state.js";
import { Heartbeats } from "../../src/supervisor.js";
import { waitFor } from "../helpers/processes.js";

let now = Date.UTC(2026, 10, 22, 12, 0, 0);
const heartbeats = new Heartbeats(() => now);
const store = new StateStore();
store.update({ phase: "acquiring a subnet lease" });
const metrics = new Metrics({ version: "0.1.0", state: () => store.current });

let server: RunningServer;
const errors: string[] = [];

beforeAll(async () => {
  const handler = createHandler({
    registry: metrics.registry,
    source: agentEndpoints({ state: () => store.current, heartbeats }, "0.1.0", () => now),
    onError: (path, error) => errors.push(`${path}: ${String(error)}`),
  });
  server = await listen({ host: "127.0.0.1", port: 0 }, handler);
});

afterAll(async () => {
  await server.close();
});

async function get(
  path: string,
  init?: RequestInit,
): Promise<{ status: number; type: string; body: string }> {
  const response = await fetch(`${server.url}${path}`, init);
  return {
    status: response.status,
    type: response.headers.get("content-type") ?? "",
    body: await response.text(),
  };
}

/** Feeds metrics (and the state they read) a little of everything: histograms and labelled series. */
function feed(m: Metrics = metrics, state: StateStore = store): void {
  const subnet = parseCidr("10.244.1.0/24");
  const attrs = {
    publicIP: parseIPv4("198.18.0.1"),
    publicIPv6: null,
    backendType: "vxlan",
    backendData: undefined,
    backendV6Data: undefined,
  };
  m.acquired("created-free");
  const peerKey = "/coreos.com/network/subnets/10.244.2.0-24";
  state.update({
    ownLease: {
      subnet,
      key: "/coreos.com/network/subnets/10.244.1.0-24",
      attrs,
      leaseId: "5",
      createRevision: 3,
      modRevision: 3,
      expiresAt: now + 86_400_000,
    },
    configWatch: "watching",
    subnetWatch: { state: "watching", since: now, reason: undefined, restarts: 0 },
    view: {
      peers: new Map([
        [
          peerKey,
          {
            subnet: parseCidr("10.244.2.0/24"),
            attrs: { ...attrs, publicIP: parseIPv4("198.18.0.2") },
            key: peerKey,
            etcdLeaseId: "6",
            createRevision: 4,
            modRevision: 4,
          },
        ],
      ]),
      invalid: new Map(),
    },
  });
  state.updateDataplane(() => ({
    peerStates: new Map([[peerKey, { state: "programmed", reason: "vxlan via flannel.1" }]]),
  }));
  const op: PlannedOp = {
    action: "replace",
    object: ownedRoute({
      family: 4,
      dst: "10.244.2.0/24",
      gateway: "10.244.2.0",
      dev: "flannel.1",
      onlink: true,
    }),
    reason: "missing",
  };
  const report = {
    trigger: "peers",
    durationMs: 3.2,
    ops: [op],
    failed: [],
    repairs: [],
    desiredCounts: { route: 1, neigh: 1, fdb: 1 },
    peerLatencyMs: 25,
    reload: "start",
    error: undefined,
  } as const;
  m.round(report);
  state.updateDataplane((dataplane) => afterRound(dataplane, report, now));
}

describe("HTTP endpoints", () => {
  it("/healthz: ok while the loops beat, 500 naming a stuck loop", async () => {
    expect(await get("/healthz")).toMatchObject({ status: 200, body: "ok\n" });
    heartbeats.beat("dataplane", 120_000);
    now += 60_000;
    expect((await get("/healthz")).status).toBe(200);
    now += 61_000;
    const stuck = await get("/healthz");
    expect(stuck.status).toBe(500);
    expect(stuck.body).toBe("dataplane loop stuck: last heartbeat 121s ago, expected within 120s\n");
    heartbeats.beat("dataplane", 120_000);
    expect((await get("/healthz")).status).toBe(200);
  });

  it("/readyz: 503 with one reason per line, then 200 once nothing is missing", async () => {
    const notReady = await get("/readyz");
    expect(notReady.status).toBe(503);
    expect(notReady.type).toMatch(/^text\/plain/);
    expect(notReady.body).toBe(
      [
        "acquiring a subnet lease",
        "no subnet lease yet",
        "subnet file not written",
        "peer view not synced",
        "data plane not programmed yet",
        "masquerade/forward rules not installed yet",
        "",
      ].join("\n"),
    );
    expect((await get("/metrics")).body).toMatch(/^twill_ready 0$/m);

    const text = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
    feed();
    store.update({
      phase: undefined,
      config: { kind: "valid", config: parseNetworkConfig(text).config, text },
      subnetFileWritten: true,
    });
    store.updateDataplane(() => ({ programmed: true }));
    store.updateMasq(() => ({ installed: true }));
    expect(await get("/readyz")).toMatchObject({ status: 200, body: "ready\n" });
    expect((await get("/metrics")).body).toMatch(/^twill_ready 1$/m);
  });

  it("/metrics: Prometheus text format with twill_ and default metrics", async () => {
    feed();
    const res = await get("/metrics");
    expect(res.status).toBe(200);
    expect(res.type).toBe(metrics.registry.contentType);
    expect(res.type).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(res.body).toContain('twill_build_info{version="0.1.0",nodejs="');
    expect(res.body).toContain('twill_peers{backend="vxlan",state="programmed"} 1');
    expect(res.body).toContain("twill_reconcile_duration_seconds_bucket{le=");
    expect(res.body).toContain("process_resident_memory_bytes");
    // A scraper's query string does not matter.
    expect((await get("/metrics?x=1")).status).toBe(200);
  });

  it("/metrics: promtool check metrics parses the exposition; twill_ metrics lint clean", async () => {
    feed();
    const { body } = await get("/metrics");
    const full = spawnSync("promtool", ["check", "metrics"], { input: body, encoding: "utf8" });
    // 1 = unparsable; 3 = lint findings. prom-client's own default metrics name three gauges
    // "_total", which promtool flags; they are kept unrenamed on purpose (dashboards know them).
    expect(full.status, full.stdout + full.stderr).not.toBe(1);
    const findings = `${full.stdout}${full.stderr}`
      .trim()
      .split("\n")
      .filter((line) => line !== "");
    for (const finding of findings) {
      expect(finding).toMatch(
        /^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/,
      );
    }

    const ownStore = new StateStore();
    const own = new Metrics({ version: "0.1.0", defaultMetrics: false, state: () => ownStore.current });
    feed(own, ownStore);
    own.leaseLost();
    own.invalidSkipped(1);
    own.subnetWatchBroken();
    own.rulesChecked({ restored: 2, failed: false });
    own.rulesChecked({ restored: 0, failed: true });
    const twillOnly = spawnSync("promtool", ["check", "metrics"], {
      input: await own.registry.metrics(),
      encoding: "utf8",
    });
    expect(`${twillOnly.stdout}${twillOnly.stderr}`.trim()).toBe("");
    expect(twillOnly.status).toBe(0);
  });

  it("/status: JSON that `twill status` fetches and renders", async () => {
    store.update({
      external: {
        name: "eth0",
        index: 2,
        mtu: 1500,
        ifaceIp: parseIPv4("198.18.0.1"),
        publicIp: parseIPv4("198.18.0.1"),
      },
    });
    const res = await get("/status");
    expect(res.status).toBe(200);
    expect(res.type).toMatch(/^application\/json/);
    const status = await fetchStatus(server.url);
    expect(status.ready).toBe(true);
    expect(status.lease?.subnet).toBe("10.244.1.0/24");
    expect(status.etcd.watch).toBe("watching");
    expect(status.peers.map((peer) => [peer.subnet, peer.state])).toEqual([["10.244.2.0/24", "programmed"]]);
    expect(status.lastRound).toMatchObject({ trigger: "peers", ops: 1, result: "ok" });
    expect(renderStatus(status)).toContain("twill 0.1.0 — ready");
    // Without a scheme too, as people type it.
    expect((await fetchStatus(server.url.replace("http://", ""))).version).toBe("0.1.0");
  });

  it("404 for other paths, 405 with Allow for other methods", async () => {
    const missing = await get("/nope");
    expect(missing.status).toBe(404);
    expect(missing.body).toContain("try /metrics, /healthz, /readyz, /status");
    expect((await get("/")).status).toBe(404);
    const response = await fetch(`${server.url}/metrics`, { method: "POST", body: "x" });
    expect(response.status).toBe(405);
    expect(response.headers.get("allow")).toBe("GET");
    expect((await get("/readyz", { method: "DELETE" })).status).toBe(405);
    expect((await get("/healthz", { method: "HEAD" })).status).toBe(405);
  });

  it("never hit an internal error", () => {
    expect(errors).toEqual([]);
  });
});

describe("twill status client errors", () => {
  it("says it cannot reach the agent, naming the address and the reason", async () => {
    // Port 1 (tcpmux): nothing on a test machine listens there, and no test binds it.
    const port = 1;
    const attempt = fetchStatus(`http://127.0.0.1:${port}`);
    await expect(attempt).rejects.toBeInstanceOf(StatusFetchError);
    await expect(fetchStatus(`http://127.0.0.1:${port}`)).rejects.toThrow(
      new RegExp(`^cannot reach the agent at http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`),
    );
  });

  it("says when something else answers", async () => {
    const other = await listen({ host: "127.0.0.1", port: 0 }, (_req, res) => {
      res.writeHead(404).end("no");
    });
    try {
      await expect(fetchStatus(other.url)).rejects.toThrow(
        `the agent at ${other.url} answered 404 Not Found for /status (is this a twill agent?)`,
      );
    } finally {
      await other.close();
    }
  });

  it("says when the answer is not twill's status", async () => {
    let body = "hello";
    const other = await listen({ host: "127.0.0.1", port: 0 }, (_req, res) => res.end(body));
    try {
      await expect(fetchStatus(other.url)).rejects.toThrow(
        new RegExp(`^the agent at ${other.url} sent a /status that is not JSON: `),
      );
      body = '{"hello":1}';
      await expect(fetchStatus(other.url)).rejects.toThrow(
        `the agent at ${other.url} sent a /status this twill does not understand (schema 1 expected)`,
      );
    } finally {
      await other.close();
    }
  });

  it("rejects other schemes", async () => {
    await expect(fetchStatus("ftp://127.0.0.1:9102")).rejects.toThrow(
      "cannot reach the agent at ftp://127.0.0.1:9102: unsupported scheme ftp: (use http:// or https://)",
    );
  });

  it("times out on an agent that does not answer", async () => {
    const silent = await listen({ host: "127.0.0.1", port: 0 }, () => undefined);
    try {
      await expect(fetchStatus(silent.url, 300)).rejects.toThrow(
        `cannot reach the agent at ${silent.url}: no answer in time`,
      );
    } finally {
      await silent.close();
    }
  });
});

describe("listening", () => {
  it("names the address when it cannot listen", async () => {
    const taken = await listen({ host: "127.0.0.1", port: 0 }, () => undefined);
    try {
      await expect(listen(taken.address, () => undefined)).rejects.toThrow(
        `cannot listen on 127.0.0.1:${taken.address.port}: listen EADDRINUSE`,
      );
    } finally {
      await taken.close();
    }
  });

  it("keeps retrying an address in use, and serves once it is free", async () => {
    const taken = await listen({ host: "127.0.0.1", port: 0 }, () => undefined);
    const failures: string[] = [];
    const endpoints = serve([taken.address], (_req, res) => res.end("here\n"), {
      failed: (_address, error) => failures.push(String(error)),
    });
    try {
      await waitFor("a listen failure reported", () => failures.length > 0);
      expect(failures[0]).toContain("EADDRINUSE");
      expect(endpoints.servers).toEqual([]);
      await taken.close();
      await waitFor("the address served once free", () => endpoints.servers.length === 1);
      const url = endpoints.servers[0]?.url ?? "";
      expect(await (await fetch(url)).text()).toBe("here\n");
    } finally {
      await endpoints.close();
    }
    await expect(fetch(`http://127.0.0.1:${taken.address.port}/`)).rejects.toThrow();
  });

  it("stops retrying when closed", async () => {
    const taken = await listen({ host: "127.0.0.1", port: 0 }, () => undefined);
    const failures: unknown[] = [];
    const endpoints = serve([taken.address], () => undefined, { failed: (_a, e) => failures.push(e) });
    try {
      await waitFor("the first attempt to fail", () => failures.length > 0);
      await endpoints.close();
    } finally {
      await taken.close();
    }
    // The port is free now: a loop still retrying would take it within its first backoff (about 1 s).
    await new Promise((r) => setTimeout(r, 2500));
    expect(endpoints.servers).toEqual([]);
    expect(failures).toHaveLength(1);
    await expect(fetch(`http://127.0.0.1:${taken.address.port}/`)).rejects.toThrow();
  });

  it("closes promptly even with a keep-alive connection open", async () => {
    const s = await listen({ host: "127.0.0.1", port: 0 }, (_req, res) => res.end("x"));
    await (await fetch(s.url, { keepalive: true })).text();
    // Would never resolve while the idle keep-alive connection held the server open.
    await s.close();
    await expect(fetch(s.url)).rejects.toThrow();
  });

  it("plans one listener per address, and none shadowed by a wildcard on the same port", () => {
    const a = (text: string) => parseListenAddress(text);
    expect(listenPlan([a("0.0.0.0:9102"), a("0.0.0.0:9102")])).toEqual([a("0.0.0.0:9102")]);
    expect(listenPlan([a("0.0.0.0:9102"), a("127.0.0.1:9102")])).toEqual([a("0.0.0.0:9102")]);
    expect(listenPlan([a("127.0.0.1:9102"), a("0.0.0.0:8081")])).toEqual([
      a("127.0.0.1:9102"),
      a("0.0.0.0:8081"),
    ]);
    expect(listenPlan([a("0.0.0.0:9102"), a(":9102")])).toEqual([a("0.0.0.0:9102")]);
    expect(listenPlan([a("127.0.0.1:0"), a("127.0.0.1:0")])).toEqual([a("127.0.0.1:0")]);
  });

  it.each([
    ["0.0.0.0:9102", { host: "0.0.0.0", port: 9102 }],
    [":9102", { host: "", port: 9102 }],
    ["[::1]:8081", { host: "::1", port: 8081 }],
    ["127.0.0.1:0", { host: "127.0.0.1", port: 0 }],
  ])("parses %s", (text, address) => {
    expect(parseListenAddress(text)).toEqual(address);
  });

  it.each([
    ["9102", /is not an address/],
    ["localhost:9102", /is not an address/],
    ["0.0.0.0:70000", /port 70000 is out of range/],
    ["1.2.3:9102", /"1.2.3" is not an IPv4 address/],
  ])("rejects %s", (text, message) => {
    expect(() => parseListenAddress(text)).toThrow(message);
  });
});

describe("who gets /status", () => {
  it.each([
    ["127.0.0.1", true],
    ["127.8.9.10", true],
    ["::1", true],
    ["::ffff:127.0.0.1", true],
    ["198.18.0.2", false],
    ["::ffff:198.18.0.2", false],
    ["2001:db8::1", false],
    [undefined, false],
  ])("%s is a loopback client: %s", (address, loopback) => {
    expect(isLoopbackClient(address)).toBe(loopback);
  });
});
