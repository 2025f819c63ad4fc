// The demo cluster's code path, shared by scripts/demo.ts (interactive) and its test: a real etcd
// and three hosts in network namespaces running the real agent, two pods per host; it reports the
// leases, each host's routes and VXLAN entries or WireGuard peers, and a pod-to-pod ping matrix.
import { readFdb, readNeighbours, readRoutes } from "../test/helpers/ip-read.js";
import { TWILL_ROUTE_PROTOCOL } from "../src/dataplane/objects.js";
import { runTwill } from "../test/helpers/agent.js";
import { randomTag } from "../test/helpers/netns.js";
import { waitFor } from "../test/helpers/processes.js";
import { startTwillCluster, type NodeUnderTest, type TwillCluster } from "../test/helpers/twill-cluster.js";

export interface DemoOptions {
  readonly backend: "vxlan" | "host-gw" | "udp" | "wireguard";
  readonly hosts?: number;
  readonly print?: (line: string) => void;
  /**
   * Stops the start (Ctrl-C while it starts): what was made so far is removed, then the abort reason is
   * thrown.
   */
  readonly signal?: AbortSignal;
}

export interface Demo {
  readonly cluster: TwillCluster;
  /** "from -> to: ok|FAIL" for every pod pair. */
  readonly matrix: { from: string; to: string; ok: boolean }[];
  destroy(): Promise<void>;
}

/** A host's WireGuard peers as `wg show flannel-wg dump` lists them (inside the host's mount namespace). */
async function wireGuardPeers(
  node: NodeUnderTest,
): Promise<{ publicKey: string; endpoint: string; allowedIps: string }[]> {
  if (node.mountNs === undefined) return [];
  const dump = await node.mountNs.exec(node.host.ns, ["wg", "show", "flannel-wg", "dump"]);
  if (dump.exitCode !== 0) return [];
  return dump.stdout
    .trim()
    .split("\n")
    .slice(1)
    .filter((line) => line !== "")
    .map((line) => {
      const [publicKey = "", , endpoint = "", allowedIps = ""] = line.split("\t");
      return { publicKey, endpoint, allowedIps };
    });
}

export async function startDemo(options: DemoOptions): Promise<Demo> {
  const print = options.print ?? (() => undefined);
  const hostCount = options.hosts ?? 3;
  const { signal } = options;
  // Every namespace the demo makes is named tw-<tag>-…: said first, so a look (or a test) can find them.
  const tag = randomTag();
  print(
    `starting: etcd and ${hostCount} hosts in network namespaces tw-${tag}-*, backend ${options.backend} …`,
  );
  const cluster = await startTwillCluster({
    backend: options.backend,
    hosts: hostCount,
    tag,
    // As deployed: the bridge plugin then leaves pod-to-pod traffic unmasqueraded.
    ...(options.backend === "udp" || options.backend === "wireguard" ? { agentArgs: ["--ip-masq"] } : {}),
    ...(signal === undefined ? {} : { signal }),
  });
  try {
    print(`etcd and ${hostCount} agents are up, each with a lease; adding 2 pods per host …`);
    for (let i = 1; i <= hostCount; i++) {
      signal?.throwIfAborted();
      await cluster.addPod(i, "a", 2);
      signal?.throwIfAborted();
      await cluster.addPod(i, "b", 3);
    }
    const firstHost = cluster.nodes[0]?.host;
    if (!firstHost) throw new Error("no hosts");
    const flags = [`--etcd-endpoints=${cluster.etcd.endpoint}`];
    // udp and wireguard route the whole network into their device (one route); the others have one
    // route per peer.
    const routesPerHost = options.backend === "udp" || options.backend === "wireguard" ? 1 : hostCount - 1;
    await waitFor(
      "every host to route to every peer",
      async () => {
        const counts = await Promise.all(
          cluster.nodes.map(
            async (n) =>
              (await readRoutes(n.host.runner, { table: 254, family: 4, protocol: TWILL_ROUTE_PROTOCOL }))
                .length,
          ),
        );
        return counts.every((c) => c === routesPerHost);
      },
      20_000,
      50,
      signal,
    );
    if (options.backend === "wireguard") {
      await waitFor(
        "every host to have a WireGuard peer for every other host",
        async () => {
          const counts = await Promise.all(cluster.nodes.map(async (n) => (await wireGuardPeers(n)).length));
          return counts.every((c) => c === hostCount - 1);
        },
        20_000,
        100,
        signal,
      );
    }
    signal?.throwIfAborted();

    print(`\n== leases in etcd (${cluster.etcd.endpoint}, inside namespace ${cluster.net.switchNs})`);
    print((await runTwill(["leases", ...flags], { netns: firstHost.ns })).stdout.trimEnd());

    for (const [i, node] of cluster.nodes.entries()) {
      print(`\n== host ${i + 1}: namespace ${node.host.ns}, underlay ${node.host.address}`);
      print(`subnet.env: ${(node.agent.subnetEnv() ?? "").trim().replace(/\n/g, "  ")}`);
      const routes = await readRoutes(node.host.runner, {
        table: 254,
        family: 4,
        protocol: TWILL_ROUTE_PROTOCOL,
      });
      for (const r of routes)
        print(
          `  route ${r.dst} via ${r.gateway ?? "-"} dev ${r.dev ?? "-"}${r.onlink ? " onlink" : ""} proto 151`,
        );
      if (options.backend === "vxlan") {
        const neighbours = (await readNeighbours(node.host.runner, "flannel.1")).filter((n) =>
          n.state.includes("PERMANENT"),
        );
        for (const n of neighbours)
          print(`  neigh ${n.dst} lladdr ${n.lladdr ?? "?"} dev flannel.1 permanent`);
        const fdb = (await readFdb(node.host.runner, "flannel.1")).filter((f) => f.dst !== undefined);
        for (const f of fdb) print(`  fdb   ${f.mac} dst ${f.dst ?? "?"} dev flannel.1 ${f.state}`);
      }
      if (options.backend === "wireguard") {
        for (const peer of await wireGuardPeers(node))
          print(
            `  wg    peer ${peer.publicKey} endpoint ${peer.endpoint} allowed-ips ${peer.allowedIps} dev flannel-wg`,
          );
      }
      print(`  pods: ${node.pods.map((p) => `${p.name}=${p.address}`).join(", ")}`);
    }

    signal?.throwIfAborted();
    const pods = cluster.nodes.flatMap((n) => n.pods);
    const matrix = await Promise.all(
      pods.flatMap((from) =>
        pods
          .filter((to) => to !== from)
          .map(async (to) => ({
            from: `${from.host.index}/${from.name}`,
            to: `${to.host.index}/${to.name}`,
            ok: (await cluster.net.ping(from.ns, to.address, { count: 3, waitSeconds: 1 })).received > 0,
          })),
      ),
    );
    print(`\n== ping matrix (rows: from host/pod, columns: to)`);
    const names = pods.map((p) => `${p.host.index}/${p.name}`);
    print(`        ${names.map((n) => n.padEnd(5)).join(" ")}`);
    for (const from of names) {
      const cells = names.map((to) =>
        to === from ? "  -  " : matrix.find((m) => m.from === from && m.to === to)?.ok ? " ok  " : "FAIL ",
      );
      print(`  ${from.padEnd(5)} ${cells.join(" ")}`);
    }
    const failed = matrix.filter((m) => !m.ok).length;
    print(
      failed === 0
        ? `all ${matrix.length} pod pairs reach each other`
        : `${failed} of ${matrix.length} pod pairs FAILED`,
    );
    return { cluster, matrix, destroy: () => cluster.destroy() };
  } catch (error) {
    await cluster.destroy();
    throw error;
  }
}
