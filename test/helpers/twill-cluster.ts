// A whole twill cluster in namespaces: etcd in the switch, K hosts each running the real agent, and
// pods attached to each host's bridge through the standard CNI plugins (twill netns attach), as a
// container runtime would. Used by the data-plane tests and by the demo.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { conflistFromSubnetEnv, formatConflist } from "../../src/cni/conflist.js";
import { isJsonObject, type JsonObject } from "../../src/cni/json.js";
import { parseCniResult } from "../../src/cni/result.js";
import { firstHost6, formatCidr6, formatIPv6, parseCidr6 } from "../../src/ip/ipv6.js";
import { readRoutes } from "./ip-read.js";
import { TWILL_ROUTE_PROTOCOL } from "../../src/dataplane/objects.js";
import { startAgent, runTwill, type AgentProcess } from "./agent.js";
import type { EtcdServer } from "./etcd.js";
import { createUnderlay, familyOf, type Cluster, type Host, type Pod } from "./netns.js";
import { waitFor } from "./processes.js";
import { startMountNamespace, stopRecordedWireGuardGo, type MountNamespace } from "./wireguard.js";

/** Debian's containernetworking-plugins. */
export const CNI_PLUGIN_DIR = "/usr/lib/cni";

export interface NodeUnderTest {
  readonly host: Host;
  agent: AgentProcess;
  pods: Pod[];
  /** wireguard: the host's own mount namespace (its /run/wireguard); `wg` runs in it. */
  readonly mountNs?: MountNamespace;
}

export interface TwillCluster {
  readonly net: Cluster;
  readonly etcd: EtcdServer;
  readonly nodes: NodeUnderTest[];
  readonly prefix: string;
  /**
   * Adds a pod to node i at the given host number of its subnet (2 → 10.244.x.2); with IPv6 on, also at
   * that host number of its IPv6 subnet (2 → fd00:10:244:y::2; the number is written in hex).
   */
  addPod(i: number, name: string, hostNumber: number): Promise<Pod>;
  /**
   * Every pod pings every other pod's every address (IPv4 and IPv6) with a few tries; returns the
   * failures as "<from ns> -> <address>".
   */
  pingMatrix(): Promise<string[]>;
  /**
   * Waits until every node has programmed a twill route (proto TWILL_ROUTE_PROTOCOL, main table) to the
   * subnet of every other node, of each family the cluster has; on timeout the error lists the routes
   * still missing.
   */
  waitForMesh(timeoutMs?: number): Promise<void>;
  /**
   * Runs pingMatrix until it has no failure or `timeoutMs` passes; returns the last run's failures, so
   * `expect(await cluster.pingMatrixUntilGreen()).toEqual([])` shows what still fails.
   */
  pingMatrixUntilGreen(timeoutMs?: number): Promise<string[]>;
  destroy(): Promise<void>;
}

export interface TwillClusterOptions {
  /** "none": a network config without Backend (twill, as flanneld, then uses udp). */
  readonly backend: "vxlan" | "host-gw" | "udp" | "wireguard" | "none";
  readonly hosts: number;
  /** Extra Backend options, e.g. { DirectRouting: true }. */
  readonly backendOptions?: Record<string, unknown>;
  readonly agentArgs?: readonly string[];
  /** Hosts (by 1-based position) to put on the remote segment behind the router. */
  readonly remoteHosts?: readonly number[];
  readonly tag?: string;
  /** Stops the start between steps: what was made so far is removed and the abort reason thrown. */
  readonly signal?: AbortSignal;
  /**
   * IPv6: "dual-stack" puts the hosts on a dual-stack underlay and adds EnableIPv6 and IPv6Network
   * fd00:10:244::/56 to the network config; "ipv6-only" puts them on an IPv6-only underlay (etcd over
   * IPv6 too) with EnableIPv4 false and no Network. The agent arguments stay the same (--iface=eth0).
   * Without it the cluster is IPv4-only, as it always was.
   */
  readonly ipv6?: "dual-stack" | "ipv6-only";
  /**
   * Fields merged over the network config the cluster starts with (e.g. { EnableIPv6: false } to start
   * a dual-stack underlay with an IPv4-only config and turn IPv6 on later with `twill config set`).
   */
  readonly configOverride?: Record<string, unknown>;
}

/** The IPv6 pod network of IPv6 clusters. */
export const IPV6_POD_NETWORK = "fd00:10:244::/56";

export function subnetLine(env: string | undefined): {
  network: string;
  gateway: string;
  prefixLen: number;
  mtu: number;
} {
  const subnet = /^FLANNEL_SUBNET=(\d+\.\d+\.\d+)\.1\/(\d+)$/m.exec(env ?? "");
  const mtu = /^FLANNEL_MTU=(\d+)$/m.exec(env ?? "");
  if (!subnet || !mtu) throw new Error(`no FLANNEL_SUBNET/FLANNEL_MTU in subnet.env: ${env ?? "(missing)"}`);
  const [, base = "", len = "24"] = subnet;
  return { network: `${base}.0`, gateway: `${base}.1`, prefixLen: Number(len), mtu: Number(mtu[1]) };
}

/**
 * The node's IPv6 subnet from FLANNEL_IPV6_SUBNET/FLANNEL_IPV6_NETWORK, canonical: network
 * "fd00:10:244:3::/64", gateway "fd00:10:244:3::1"; throws when the file has no IPv6 lines.
 */
export function subnetLine6(env: string | undefined): {
  /** The subnet, e.g. "fd00:10:244:3::/64" (what a route's dst reads). */
  subnet: string;
  /** The subnet's network address, e.g. "fd00:10:244:3::". */
  network: string;
  gateway: string;
  prefixLen: number;
  /** FLANNEL_IPV6_NETWORK, canonical. */
  clusterNetwork: string;
} {
  const subnet = /^FLANNEL_IPV6_SUBNET=(\S+)$/m.exec(env ?? "");
  const network = /^FLANNEL_IPV6_NETWORK=(\S+)$/m.exec(env ?? "");
  if (!subnet?.[1] || !network?.[1])
    throw new Error(`no FLANNEL_IPV6_SUBNET/FLANNEL_IPV6_NETWORK in subnet.env: ${env ?? "(missing)"}`);
  const parsed = parseCidr6(subnet[1]);
  return {
    subnet: formatCidr6(parsed),
    network: formatIPv6(parsed.ip),
    gateway: formatIPv6(firstHost6(parsed)),
    prefixLen: parsed.prefixLen,
    clusterNetwork: formatCidr6(parseCidr6(network[1])),
  };
}

/** The families a cluster's network config turns on. */
function familiesOf(options: Pick<TwillClusterOptions, "ipv6">): { v4: boolean; v6: boolean } {
  return { v4: options.ipv6 !== "ipv6-only", v6: options.ipv6 !== undefined };
}

/**
 * Runs `run` (which returns failures) until it returns none or `timeoutMs` passes; returns the last
 * run's failures ([] once green). For "every pod reaches every other" checks that may need a moment
 * after the routes are in (first packets wait for ARP on the pod side and on the far host).
 */
export async function untilNoFailures(
  run: () => Promise<string[]>,
  timeoutMs = 30_000,
  intervalMs = 500,
): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const failures = await run();
    if (failures.length === 0 || Date.now() > deadline) return failures;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Routes each node still lacks: "<host ns> -> <peer subnet>" for every peer subnet without a twill route. */
async function missingMeshRoutes(
  nodes: readonly NodeUnderTest[],
  backend: TwillClusterOptions["backend"],
  families: { v4: boolean; v6: boolean } = { v4: true, v6: false },
): Promise<string[]> {
  const v4 = families.v4 ? await missingMeshRoutes4(nodes, backend) : [];
  const v6 = families.v6 ? await missingMeshRoutes6(nodes, backend) : [];
  return [...v4, ...v6];
}

/**
 * The IPv6 routes each node still lacks: one per peer IPv6 subnet (vxlan and host-gw alike); for
 * wireguard the one route of the whole IPv6 network into its device (flannel-wg-v6, or flannel-wg in
 * the single-tunnel modes).
 */
async function missingMeshRoutes6(
  nodes: readonly NodeUnderTest[],
  backend: TwillClusterOptions["backend"],
): Promise<string[]> {
  if (backend === "wireguard") {
    const missing = await Promise.all(
      nodes.map(async (n) => {
        const routes = await readRoutes(n.host.runner, {
          table: 254,
          family: 6,
          protocol: TWILL_ROUTE_PROTOCOL,
        });
        return routes.some((r) => r.dst === IPV6_POD_NETWORK && r.dev?.startsWith("flannel-wg") === true)
          ? []
          : [`${n.host.ns} -> ${IPV6_POD_NETWORK} dev flannel-wg(-v6)`];
      }),
    );
    return missing.flat();
  }
  const subnets = nodes.map((n) => subnetLine6(n.agent.subnetEnv()).subnet);
  const missing = await Promise.all(
    nodes.map(async (n, i) => {
      const routes = await readRoutes(n.host.runner, {
        table: 254,
        family: 6,
        protocol: TWILL_ROUTE_PROTOCOL,
      });
      return subnets
        .filter((subnet, j) => j !== i && !routes.some((r) => r.dst === subnet))
        .map((subnet) => `${n.host.ns} -> ${subnet}`);
    }),
  );
  return missing.flat();
}

async function missingMeshRoutes4(
  nodes: readonly NodeUnderTest[],
  backend: TwillClusterOptions["backend"],
): Promise<string[]> {
  if (backend === "udp" || backend === "none" || backend === "wireguard") {
    // udp and wireguard have one route, the whole network into their device; the proxy's table or
    // WireGuard's peers hold the rest.
    const dev = backend === "wireguard" ? "flannel-wg" : "flannel0";
    const missing = await Promise.all(
      nodes.map(async (n) => {
        const routes = await readRoutes(n.host.runner, {
          table: 254,
          family: 4,
          protocol: TWILL_ROUTE_PROTOCOL,
        });
        return routes.some((r) => r.dst === "10.244.0.0/16" && r.dev === dev)
          ? []
          : [`${n.host.ns} -> 10.244.0.0/16 dev ${dev}`];
      }),
    );
    return missing.flat();
  }
  const subnets = nodes.map((n) => {
    const { network, prefixLen } = subnetLine(n.agent.subnetEnv());
    return `${network}/${prefixLen}`;
  });
  const missing = await Promise.all(
    nodes.map(async (n, i) => {
      const routes = await readRoutes(n.host.runner, {
        table: 254,
        family: 4,
        protocol: TWILL_ROUTE_PROTOCOL,
      });
      return subnets
        .filter((subnet, j) => j !== i && !routes.some((r) => r.dst === subnet))
        .map((subnet) => `${n.host.ns} -> ${subnet}`);
    }),
  );
  return missing.flat();
}

export async function startTwillCluster(options: TwillClusterOptions): Promise<TwillCluster> {
  const net = await createUnderlay({
    ...(options.tag === undefined ? {} : { tag: options.tag }),
    ...(options.ipv6 === undefined ? {} : { ipv6: options.ipv6 }),
  });
  const families = familiesOf(options);
  const nodes: NodeUnderTest[] = [];
  const signal = options.signal;
  try {
    signal?.throwIfAborted();
    const etcd = await net.startEtcd();
    const hosts: Host[] = [];
    if ((options.remoteHosts?.length ?? 0) > 0) await net.addRemoteSegment();
    for (let i = 1; i <= options.hosts; i++) {
      signal?.throwIfAborted();
      const remote = options.remoteHosts?.includes(i) ?? false;
      hosts.push(await net.addHost(i, remote ? { segment: "remote" } : {}));
    }
    signal?.throwIfAborted();
    const prefix = "/coreos.com/network";
    const first = hosts[0];
    if (!first) throw new Error("a cluster needs at least one host");
    const config = JSON.stringify({
      ...(families.v4 ? { Network: "10.244.0.0/16" } : { EnableIPv4: false }),
      ...(families.v6 ? { EnableIPv6: true, IPv6Network: IPV6_POD_NETWORK } : {}),
      ...(options.backend === "none"
        ? {}
        : { Backend: { Type: options.backend, ...options.backendOptions } }),
      ...options.configOverride,
    });
    const set = await runTwill(["config", "set", "-", `--etcd-endpoints=${etcd.endpoint}`], {
      netns: first.ns,
      input: config,
    });
    if (set.code !== 0) throw new Error(`twill config set failed: ${set.stderr}`);

    const launch = (host: Host, mountNs: MountNamespace | undefined): AgentProcess =>
      startAgent({
        netns: host.ns,
        etcdEndpoint: etcd.endpoint,
        args: ["--iface=eth0", "--resync-interval=5s", ...(options.agentArgs ?? [])],
        ...(mountNs === undefined ? {} : { mountNamespaceOf: mountNs.pid }),
      });
    for (const host of hosts) {
      const mountNs = options.backend === "wireguard" ? await startMountNamespace() : undefined;
      const agent = launch(host, mountNs);
      nodes.push({ host, agent, pods: [], ...(mountNs === undefined ? {} : { mountNs }) });
    }
    for (const node of nodes)
      await waitFor(`${node.host.ns} subnet.env`, () => node.agent.subnetEnv(), 30_000, 50, signal);

    const node = (i: number): NodeUnderTest => {
      const found = nodes[i - 1];
      if (!found) throw new Error(`no node ${i}`);
      return found;
    };
    const cluster: TwillCluster = {
      net,
      etcd,
      nodes,
      prefix,
      addPod: async (i, name, hostNumber) => {
        const n = node(i);
        const env = n.agent.subnetEnv() ?? "";
        const v4 = families.v4 ? subnetLine(env) : undefined;
        const v6 = families.v6 ? subnetLine6(env) : undefined;
        const address4 = v4 === undefined ? undefined : `${v4.network.replace(/\.0$/, "")}.${hostNumber}`;
        const address6 =
          v6 === undefined ? undefined : formatIPv6(parseCidr6(v6.subnet).ip + BigInt(hostNumber));
        const wanted = [address4, address6].filter((a): a is string => a !== undefined);
        // The node's conflist as the agent writes it, but with a host-local store per node in the
        // agent's temp dir: the filesystem is shared by every namespace, /var/lib/cni is not ours.
        const ipamDataDir = join(n.agent.dir, "ipam");
        const conflist = conflistFromSubnetEnv(env, { bridge: "cni0", ipamDataDir });
        // One address: CNI_ARGS IP=…, as always. Two (dual-stack): host-local's CNI_ARGS IP takes one
        // address only, so they go where a runtime puts them, the network config's args.cni.ips (one per
        // range), in a conflist of this pod's own.
        const conf = join(n.agent.dir, wanted.length > 1 ? `pod-${name}.conflist` : "pods.conflist");
        if (wanted.length > 1) withRequestedIps(conflist, wanted);
        writeFileSync(conf, formatConflist(conflist));
        await waitFor(
          `cni0 in ${n.host.ns}`,
          async () => (await net.exec(n.host.ns, ["ip", "link", "show", "cni0"])).exitCode === 0,
          20_000,
          50,
          signal,
        );
        const ns = `${n.host.ns}-${name}`;
        net.trackNamespace(ns); // deleted with the cluster, also by its last-resort exit hook
        await execa("ip", ["netns", "add", ns], { stdin: "ignore" });
        const attached = await runTwill(
          [
            "netns",
            "attach",
            ns,
            `--conf=${conf}`,
            `--cni-bin-dir=${CNI_PLUGIN_DIR}`,
            `--cni-cache-dir=${join(n.agent.dir, "cni-cache")}`,
            ...(wanted.length === 1 ? [`--cni-args=IP=${wanted.join("")}`] : []),
            "--json",
          ],
          { netns: n.host.ns },
        );
        if (attached.code !== 0) throw new Error(`twill netns attach ${ns} failed: ${attached.stderr}`);
        const result = parseCniResult(JSON.parse(attached.stdout));
        const hostVeth =
          result.interfaces.find((iface) => iface.sandbox === undefined && iface.name !== "cni0")?.name ?? "";
        // The addresses the pod got, as the plugins report them: each must be the one asked for.
        const got = result.ips.map((ip) => ip.address);
        const cidrOf = (address: string | undefined): string | undefined =>
          address === undefined ? undefined : got.find((c) => c.split("/")[0] === address);
        const cidr4 = cidrOf(address4);
        const cidr6 = cidrOf(address6);
        if (
          (address4 !== undefined && cidr4 === undefined) ||
          (address6 !== undefined && cidr6 === undefined)
        )
          throw new Error(`${ns} asked for ${wanted.join(", ")} but got ${got.join(", ") || "nothing"}`);
        const primary = cidr4 ?? cidr6 ?? "";
        const pod: Pod = {
          ns,
          name,
          host: n.host,
          address: primary.split("/")[0] ?? primary,
          cidr: primary,
          ...(address6 === undefined || cidr6 === undefined ? {} : { address6, cidr6 }),
          hostVeth,
        };
        n.pods.push(pod);
        return pod;
      },
      pingMatrix: async () => {
        const pods = nodes.flatMap((n) => n.pods);
        const pairs = pods.flatMap((from) =>
          pods
            .filter((to) => to !== from)
            .flatMap((to) =>
              [...new Set([to.address, to.address6])].map((target) => [from, target] as const),
            ),
        );
        const results = await Promise.all(
          pairs.map(async ([from, target]) => {
            if (target === undefined) return undefined;
            // A few tries: the very first packet may wait for ARP (or neighbour discovery) on the pod side.
            const result = await net.ping(from.ns, target, { count: 3, waitSeconds: 1 });
            return result.received > 0 ? undefined : `${from.ns} -> ${target}`;
          }),
        );
        return results.filter((r): r is string => r !== undefined);
      },
      waitForMesh: async (timeoutMs = 30_000) => {
        let missing: string[] = ["(not checked yet)"];
        try {
          await waitFor(
            "every node's routes to all its peers",
            async () => {
              missing = await missingMeshRoutes(nodes, options.backend, families);
              return missing.length === 0;
            },
            timeoutMs,
            200,
          );
        } catch (error) {
          throw new Error(`${String(error)}; still missing: ${missing.join(", ")}`, { cause: error });
        }
      },
      pingMatrixUntilGreen: async (timeoutMs = 30_000) =>
        untilNoFailures(() => cluster.pingMatrix(), timeoutMs),
      destroy: async () => {
        // Agents first; then every namespace, newest first (pods before their hosts).
        await Promise.allSettled(nodes.map((n) => destroyNode(n)));
        await net.destroy();
      },
    };
    return cluster;
  } catch (error) {
    await Promise.allSettled(nodes.map((n) => destroyNode(n)));
    await net.destroy();
    throw error;
  }
}

/** Asks host-local for these addresses: `"args": {"cni": {"ips": […]}}` on the list's bridge plugin. */
function withRequestedIps(conflist: JsonObject, ips: readonly string[]): void {
  const plugins = conflist.plugins;
  const bridge = Array.isArray(plugins)
    ? plugins.find((p): p is JsonObject => isJsonObject(p) && p.type === "bridge")
    : undefined;
  if (bridge === undefined) throw new Error("the node's conflist has no bridge plugin");
  bridge.args = { cni: { ips: [...ips] } };
}

/** The agent, the wireguard-go it left (which outlives agents by design) and the mount namespace. */
async function destroyNode(node: NodeUnderTest): Promise<void> {
  await node.agent.process.stop();
  await stopRecordedWireGuardGo(node.agent.stateDir);
  await node.agent.destroy();
  await node.mountNs?.stop();
}

/** Node i (1-based) of a cluster. */
export function nodeOf(cluster: TwillCluster, i: number): NodeUnderTest {
  const n = cluster.nodes[i - 1];
  if (!n) throw new Error(`no node ${i}`);
  return n;
}

/** The pod named `name` on node i. */
export function podOf(cluster: TwillCluster, i: number, name: string): Pod {
  const p = nodeOf(cluster, i).pods.find((candidate) => candidate.name === name);
  if (!p) throw new Error(`no pod ${name} on node ${i}`);
  return p;
}

/** Node i's subnet, from its subnet.env. */
export function subnetOfNode(cluster: TwillCluster, i: number): { network: string; prefixLen: number } {
  return subnetLine(nodeOf(cluster, i).agent.subnetEnv());
}

/** Node i's IPv6 subnet, from its subnet.env. */
export function subnet6OfNode(cluster: TwillCluster, i: number): ReturnType<typeof subnetLine6> {
  return subnetLine6(nodeOf(cluster, i).agent.subnetEnv());
}

/** `ping -i interval -c count` (-6 for an IPv6 address) from one namespace; returns what was sent and received. */
export async function continuousPing(
  cluster: TwillCluster,
  fromNs: string,
  to: string,
  count: number,
  interval: string,
): Promise<{ transmitted: number; received: number }> {
  const result = await cluster.net.exec(fromNs, [
    "ping",
    `-${familyOf(to)}`,
    "-n",
    "-q",
    "-i",
    interval,
    "-c",
    String(count),
    "-W",
    "1",
    to,
  ]);
  const match = /(\d+) packets transmitted, (\d+) received/.exec(result.stdout);
  if (!match) throw new Error(`no ping summary: ${result.stdout} ${result.stderr}`);
  return { transmitted: Number(match[1]), received: Number(match[2]) };
}
