// The wireguard backend with real agents in network namespaces, on wireguard-go (these machines have
// no WireGuard kernel module): encrypted pod traffic (checked on the underlay), flannel's lease format,
// a node set up by hand as flanneld's WireGuard backend sets one up, restarts without loss, drift,
// key rotation, a pre-shared key and a bad key file.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StatusJson, WireGuardJson } from "../../src/metrics/status.js";
import { TWILL_ROUTE_PROTOCOL } from "../../src/dataplane/objects.js";
import { readLink, readRoutes } from "../helpers/ip-read.js";
import { runTwill } from "../helpers/agent.js";
import { waitFor } from "../helpers/processes.js";
import { startTwillCluster, subnetLine, type TwillCluster } from "../helpers/twill-cluster.js";

const clusters: TwillCluster[] = [];

async function started(options: Parameters<typeof startTwillCluster>[0]): Promise<TwillCluster> {
  const cluster = await startTwillCluster(options);
  clusters.push(cluster);
  return cluster;
}

afterAll(async () => {
  await Promise.allSettled(clusters.splice(0).map((c) => c.destroy()));
});

function node(cluster: TwillCluster, i: number) {
  const n = cluster.nodes[i - 1];
  if (!n) throw new Error(`no node ${i}`);
  return n;
}

function pod(cluster: TwillCluster, i: number, name: string) {
  const p = node(cluster, i).pods.find((candidate) => candidate.name === name);
  if (!p) throw new Error(`no pod ${name} on node ${i}`);
  return p;
}

function subnetOf(cluster: TwillCluster, i: number): { network: string; prefixLen: number } {
  return subnetLine(node(cluster, i).agent.subnetEnv());
}

async function wireguardStatus(cluster: TwillCluster, i: number): Promise<WireGuardJson> {
  const result = await runTwill(["status", "--json"], { netns: node(cluster, i).host.ns });
  const status = JSON.parse(result.stdout) as StatusJson;
  if (status.userspace?.kind !== "wireguard") throw new Error(`no wireguard in status: ${result.stdout}`);
  return status.userspace;
}

/** `wg` inside host i's own network and mount namespaces. */
async function wg(cluster: TwillCluster, i: number, args: readonly string[]): Promise<string> {
  const n = node(cluster, i);
  if (n.mountNs === undefined) throw new Error("not a wireguard cluster");
  const result = await n.mountNs.exec(n.host.ns, ["wg", ...args]);
  if (result.exitCode !== 0) throw new Error(`wg ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

describe("wireguard: 3 hosts x 2 pods", () => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend: "wireguard", hosts: 3, agentArgs: ["--ip-masq"] });
    for (let i = 1; i <= 3; i++) {
      await cluster.addPod(i, "a", 2);
      await cluster.addPod(i, "b", 3);
    }
    await cluster.waitForMesh();
  }, 120_000);

  it("every pod pings every other pod", async () => {
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("publishes flannel's wireguard lease bytes", async () => {
    for (let i = 1; i <= 3; i++) {
      const { network, prefixLen } = subnetOf(cluster, i);
      const value = cluster.etcd.ctl(["get", `${cluster.prefix}/subnets/${network}-${prefixLen}`, "--print-value-only"]);
      const key = (await wg(cluster, i, ["show", "flannel-wg", "public-key"])).trim();
      expect(value.trim()).toBe(
        `{"PublicIP":"198.18.0.${i}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"${key}","Port":51820}}`,
      );
    }
  });

  it("makes flannel-wg as flannel does, with one peer per other node", async () => {
    const { host } = node(cluster, 1);
    const link = await readLink(host.runner, "flannel-wg");
    expect(link?.mtu).toBe(1420);
    const routes = await readRoutes(host.runner, { table: 254, family: 4, protocol: TWILL_ROUTE_PROTOCOL });
    expect(routes.map((r) => `${r.dst} ${r.dev ?? ""}`)).toEqual(["10.244.0.0/16 flannel-wg"]);
    const dump = (await wg(cluster, 1, ["show", "flannel-wg", "dump"])).trim().split("\n");
    expect(dump[0]?.split("\t")[2]).toBe("51820");
    const peers = dump.slice(1).map((line) => line.split("\t"));
    expect(peers.map((p) => `${p[2]} ${p[3]}`).sort()).toEqual(
      [2, 3].map((i) => `198.18.0.${i}:51820 ${subnetOf(cluster, i).network}/24`).sort(),
    );
    const s = await wireguardStatus(cluster, 1);
    expect(s).toMatchObject({ implementation: "userspace", running: true, peers: 2, listenPort: 51820 });
  });
});
