// Operating a live cluster: a real Prometheus (Debian's) scrapes the agents in the namespace cluster
// and its query API returns the peer and route figures; promtool accepts the exposition; /readyz
// flips to 200 only once the node is programmed; `twill status` describes a live agent.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runTwill, startAgent, type AgentProcess } from "../helpers/agent.js";
import { waitFor } from "../helpers/processes.js";
import { UNDERLAY_GATEWAY } from "../helpers/netns.js";
import { startTwillCluster, type TwillCluster } from "../helpers/twill-cluster.js";

let cluster: TwillCluster;
let promDir: string;
const extraAgents: AgentProcess[] = [];

interface HttpAnswer {
  status: number;
  body: string;
}

/** GET from inside a namespace (the test process itself is in the root namespace). */
async function httpGet(ns: string, url: string): Promise<HttpAnswer> {
  const script = `fetch(${JSON.stringify(url)}).then(async r => console.log(JSON.stringify({status: r.status, body: await r.text()})), e => { console.log(JSON.stringify({status: 0, body: String(e)})); })`;
  const result = await cluster.net.exec(ns, [process.execPath, "-e", script]);
  return JSON.parse(result.stdout) as HttpAnswer;
}

beforeAll(async () => {
  cluster = await startTwillCluster({ backend: "vxlan", hosts: 2 });
  promDir = mkdtempSync(join(tmpdir(), "twill-prom-"));
}, 120_000);
afterAll(async () => {
  await Promise.allSettled(extraAgents.map((a) => a.destroy()));
  await cluster.destroy();
  rmSync(promDir, { recursive: true, force: true });
});

function host(i: number) {
  const node = cluster.nodes[i - 1];
  if (!node) throw new Error(`no node ${i}`);
  return node.host;
}

describe("a real Prometheus scraping the agents", () => {
  it("returns each node's programmed peers and routes from its query API", async () => {
    // The switch namespace is the cluster's own; etcd there has 2379/2380.
    const port = 9090;
    const config = [
      "global:",
      "  scrape_interval: 1s",
      "scrape_configs:",
      "  - job_name: twill",
      "    static_configs:",
      `      - targets: ["${host(1).address}:9102", "${host(2).address}:9102"]`,
    ].join("\n");
    writeFileSync(join(promDir, "prometheus.yml"), `${config}\n`);
    cluster.net.spawn(cluster.net.switchNs, "prometheus", [
      `--config.file=${join(promDir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(promDir, "data")}`,
      `--web.listen-address=${UNDERLAY_GATEWAY}:${port}`,
    ]);
    const query = async (
      expr: string,
    ): Promise<{ metric: Record<string, string>; value: [number, string] }[]> => {
      const answer = await httpGet(
        cluster.net.switchNs,
        `http://${UNDERLAY_GATEWAY}:${port}/api/v1/query?query=${encodeURIComponent(expr)}`,
      );
      if (answer.status !== 200) throw new Error(`query ${expr}: ${answer.status} ${answer.body}`);
      return (
        JSON.parse(answer.body) as {
          data: { result: { metric: Record<string, string>; value: [number, string] }[] };
        }
      ).data.result;
    };
    await waitFor(
      "both targets up",
      async () => (await query('up{job="twill"} == 1')).length === 2,
      60_000,
      500,
    );
    const peers = await waitFor(
      "peer figures",
      async () => {
        const r = await query('sum by (instance) (twill_peers{state="programmed"})');
        return r.length === 2 && r.every((s) => s.value[1] === "1") ? r : undefined;
      },
      30_000,
      500,
    );
    expect(peers.map((s) => s.metric.instance).sort()).toEqual([
      `${host(1).address}:9102`,
      `${host(2).address}:9102`,
    ]);
    const routes = await query('twill_kernel_objects{kind="route"}');
    expect(routes.map((s) => s.value[1])).toEqual(["1", "1"]);
    const ready = await query("twill_ready");
    expect(ready.map((s) => s.value[1])).toEqual(["1", "1"]);
    const rounds = await query('sum(twill_reconcile_rounds_total{result="ok"})');
    expect(Number(rounds[0]?.value[1])).toBeGreaterThan(0);
  });

  it("passes promtool check metrics for every twill_ series", async () => {
    const exposition = await httpGet(host(1).ns, `http://${host(1).address}:9102/metrics`);
    expect(exposition.status).toBe(200);
    const own = exposition.body
      .split("\n")
      .filter((line) => /^(# (HELP|TYPE) )?twill_/.test(line))
      .join("\n");
    expect(own).toMatch(/^twill_build_info\{/m);
    const result = await cluster.net.exec(host(1).ns, ["promtool", "check", "metrics"], `${own}\n`);
    expect(result.stdout + result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
  });
});

describe("health and status of a live agent", () => {
  it("/readyz answers 503 with the reason until the node is programmed, then 200", async () => {
    const prefix = "/readyz-test/network";
    const fresh = await cluster.net.addHost(9);
    const agent = startAgent({
      netns: fresh.ns,
      etcdEndpoint: cluster.etcd.endpoint,
      prefix,
      args: ["--iface=eth0"],
    });
    extraAgents.push(agent);
    // Right after start the reason is "starting"; once etcd has been read it names the missing config.
    const notReady = await waitFor("a 503 naming the missing config", async () => {
      const answer = await httpGet(fresh.ns, "http://127.0.0.1:9102/readyz").catch(() => undefined);
      return answer?.status === 503 && /no network config/.test(answer.body) ? answer : undefined;
    });
    expect(notReady.body).toMatch(/no network config at \/readyz-test\/network\/config/);
    expect(agent.subnetEnv()).toBeUndefined();
    expect((await httpGet(fresh.ns, "http://127.0.0.1:9102/healthz")).status).toBe(200);
    cluster.etcd.ctl(["put", `${prefix}/config`, '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}']);
    await waitFor(
      "a 200",
      async () => (await httpGet(fresh.ns, "http://127.0.0.1:9102/readyz")).status === 200,
    );
    // Ready means programmed: the subnet file exists and the bridge carries the gateway.
    expect(agent.subnetEnv()).toMatch(/FLANNEL_SUBNET=/);
    expect(await cluster.net.run(fresh.ns, ["ip", "-4", "-o", "addr", "show", "dev", "cni0"])).toMatch(
      /10\.244\.\d+\.1\/24/,
    );
  });

  it("twill status shows the lease, the peers with their state and the last reconcile", async () => {
    const result = await runTwill(["status"], { netns: host(1).ns });
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/10\.244\.\d+\.0\/24/);
    expect(result.stdout).toMatch(/programmed/);
    expect(result.stdout).toContain(host(2).address);
    const json = await runTwill(["status", "--json"], { netns: host(1).ns });
    const parsed = JSON.parse(json.stdout) as { ready: unknown; peers: { state: string }[] };
    expect(parsed.peers.map((p) => p.state)).toEqual(["programmed"]);
  });

  it("twill status names the address when no agent answers", async () => {
    const result = await runTwill(["status", "--address", "http://127.0.0.1:9"], { netns: host(1).ns });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/cannot reach the agent at http:\/\/127\.0\.0\.1:9/);
  });
});
