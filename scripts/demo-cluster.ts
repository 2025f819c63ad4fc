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
  /** --dual-stack, --ipv6-only: pods get IPv6 addresses too, or only those. */
  readonly ipv6?: "dual-stack" | "ipv6-only";
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
    `starting: etcd and ${hostCount} hosts in network namespaces tw-${tag}-*, backend ${options.backend}` +
      `${options.ipv6 === undefined ? "" : `, ${options.ipv6}`} …`,
  );
  const families: (4 | 6)[] = [
    ...(options.ipv6 === "ipv6-only" ? [] : [4 as const]),
    ...(options.ipv6 === undefined ? [] : [6 as const]),
  ];
  const cluster = await startTwillCluster({
    backend: options.backend,
    ...(options.ipv6 === undefined ? {} : { ipv6: options.ipv6 }),
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
          cluster.nodes.flatMap((n) =>
            families.map(
              async (family) =>
                (await readRoutes(n.host.runner, { table: 254, family, protocol: TWILL_ROUTE_PROTOCOL }))
                  .length,
            ),
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
      const underlay = [node.host.address, node.host.address6].filter((a) => a !== undefined).join(", ");
      print(`\n== host ${i + 1}: namespace ${node.host.ns}, underlay ${underlay}`);
      print(`subnet.env: ${(node.agent.subnetEnv() ?? "").trim().replace(/\n/g, "  ")}`);
      for (const family of families) {
        const routes = await readRoutes(node.host.runner, {
          table: 254,
          family,
          protocol: TWILL_ROUTE_PROTOCOL,
        });
        for (const r of routes)
          print(
            `  route ${r.dst} via ${r.gateway ?? "-"} dev ${r.dev ?? "-"}${r.onlink ? " onlink" : ""} proto 151`,
          );
      }
      if (options.backend === "vxlan") {
        for (const family of families) {
          const dev = family === 4 ? "flannel.1" : "flannel-v6.1";
          const neighbours = (await readNeighbours(node.host.runner, dev, family)).filter((n) =>
            n.state.includes("PERMANENT"),
          );
          for (const n of neighbours)
            print(`  neigh ${n.dst} lladdr ${n.lladdr ?? "?"} dev ${dev} permanent`);
          const fdb = (await readFdb(node.host.runner, dev)).filter((f) => f.dst !== undefined);
          for (const f of fdb) print(`  fdb   ${f.mac} dst ${f.dst ?? "?"} dev ${dev} ${f.state}`);
        }
      }
      if (options.backend === "wireguard") {
        for (const peer of await wireGuardPeers(node))
          print(
            `  wg    peer ${peer.publicKey} endpoint ${peer.endpoint} allowed-ips ${peer.allowedIps} dev flannel-wg`,
          );
      }
      const podText = (p: (typeof node.pods)[number]): string =>
        `${p.name}=${[...new Set([p.address, p.address6].filter((a) => a !== undefined))].join("+")}`;
      print(`  pods: ${node.pods.map(podText).join(", ")}`);
    }

    signal?.throwIfAborted();
    const pods = cluster.nodes.flatMap((n) => n.pods);
    // A pair is ok when every address of the target (IPv4, IPv6) answers.
    const addressesOf = (pod: (typeof pods)[number]): string[] =>
      [pod.address, pod.address6].filter((a): a is string => a !== undefined);
    const matrix = await Promise.all(
      pods.flatMap((from) =>
        pods
          .filter((to) => to !== from)
          .map(async (to) => {
            const answers = await Promise.all(
              [...new Set(addressesOf(to))].map(
                async (address) =>
                  (await cluster.net.ping(from.ns, address, { count: 3, waitSeconds: 1 })).received > 0,
              ),
            );
            return {
              from: `${from.host.index}/${from.name}`,
              to: `${to.host.index}/${to.name}`,
              ok: answers.every(Boolean),
            };
          }),
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
