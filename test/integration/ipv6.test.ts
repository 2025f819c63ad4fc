// IPv6 through the real agent, for VXLAN and host-gw, on a dual-stack underlay (198.18.0.0/24 and
// 2001:db8:18::/64) and on an IPv6-only one: 3 hosts x 2 pods ping each other over both families (or
// IPv6 alone); the leases in etcd and subnet.env are flannel's, byte for byte; IPv6 routes, neighbour
// and FDB entries deleted by hand come back; an agent restart loses no IPv6 packet; a pod's IPv6
// traffic to the outside leaves with the host's address; bad IPv6 configs are refused, naming the field.
// Every namespace, process and temp dir is made here and removed in teardown, on failure too.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startAgent, runTwill, type AgentProcess } from "../helpers/agent.js";
import type { EtcdServer } from "../helpers/etcd.js";
import { readAddresses, readFdb, readLink, readNeighbours, readRoutes } from "../helpers/ip-read.js";
import {
  createUnderlay,
  listNamespaces,
  UNDERLAY_GATEWAY6,
  type Cluster,
  type Host,
  type Pod,
} from "../helpers/netns.js";
import { waitFor } from "../helpers/processes.js";
import {
  continuousPing,
  IPV6_POD_NETWORK,
  nodeOf,
  podOf,
  startTwillCluster,
  subnet6OfNode,
  subnetLine,
  subnetOfNode,
  type TwillCluster,
} from "../helpers/twill-cluster.js";
import { TWILL_ROUTE_PROTOCOL } from "../../src/dataplane/objects.js";

const BACKENDS = ["vxlan", "host-gw"] as const;
const clusters: TwillCluster[] = [];

/** Starts a cluster and remembers it, so teardown runs even when a later beforeAll step fails. */
async function started(options: Parameters<typeof startTwillCluster>[0]): Promise<TwillCluster> {
  const cluster = await startTwillCluster(options);
  clusters.push(cluster);
  return cluster;
}

async function destroyAll(): Promise<void> {
  const tags = clusters.map((c) => c.net.tag);
  await Promise.allSettled(clusters.splice(0).map((c) => c.destroy()));
  const left = (await listNamespaces()).filter((ns) => tags.some((tag) => ns.startsWith(`tw-${tag}-`)));
  expect(left).toEqual([]);
}

async function ownedRoutes6(cluster: TwillCluster, i: number) {
  return readRoutes(nodeOf(cluster, i).host.runner, {
    table: 254,
    family: 6,
    protocol: TWILL_ROUTE_PROTOCOL,
  });
}

/** The leases under the cluster's prefix as etcdctl prints them: key and value text, byte for byte. */
function leasesInEtcd(cluster: TwillCluster): { key: string; value: string }[] {
  const lines = cluster.etcd.ctl(["get", "--prefix", `${cluster.prefix}/subnets/`]).split("\n");
  const leases: { key: string; value: string }[] = [];
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const key = lines[i] ?? "";
    if (key !== "") leases.push({ key, value: lines[i + 1] ?? "" });
  }
  return leases;
}

/** Pings from `from` to `to` until one reply comes back (first packets may wait for neighbour discovery). */
async function pingsAgain(cluster: TwillCluster, from: Pod, to: string): Promise<void> {
  await waitFor(
    `${from.ns} to reach ${to} again`,
    async () => (await cluster.net.ping(from.ns, to, { count: 1 })).received > 0,
    30_000,
    250,
  );
}

function address6Of(pod: Pod): string {
  if (pod.address6 === undefined) throw new Error(`${pod.ns} has no IPv6 address`);
  return pod.address6;
}

/** The host's IPv6 underlay address. */
function underlay6(host: Host): string {
  if (host.address6 === undefined) throw new Error(`${host.ns} has no IPv6 underlay address`);
  return host.address6;
}

/**
 * flannel's LeaseAttrs JSON for a node, field order and all: PublicIP ("0.0.0.0" on an IPv6-only
 * node), PublicIPv6, BackendType, then for vxlan BackendData (IPv4 device's MAC, when IPv4 is on) and
 * BackendV6Data (the flannel-v6.1 device's MAC).
 */
async function expectedLeaseValue(
  backend: (typeof BACKENDS)[number],
  cluster: TwillCluster,
  i: number,
  ipv4: boolean,
): Promise<string> {
  const host = nodeOf(cluster, i).host;
  const publicIp = ipv4 ? host.address : "0.0.0.0";
  let value = `{"PublicIP":"${publicIp}","PublicIPv6":"${underlay6(host)}","BackendType":"${backend}"`;
  if (backend === "vxlan") {
    const mac4 = ipv4 ? (await readLink(host.runner, "flannel.1"))?.mac : undefined;
    const mac6 = (await readLink(host.runner, "flannel-v6.1"))?.mac;
    if (ipv4) value += `,"BackendData":{"VNI":1,"VtepMAC":"${mac4 ?? "(no flannel.1)"}"}`;
    value += `,"BackendV6Data":{"VNI":1,"VtepMAC":"${mac6 ?? "(no flannel-v6.1)"}"}`;
  }
  return `${value}}`;
}

/** tcpdump's text lines for the IPv6 echo requests that reach the switch's own address on br-ul. */
async function echoRequestsSeenByOutside(
  cluster: TwillCluster,
  send: () => Promise<void>,
): Promise<string[]> {
  const capture = cluster.net.spawn(cluster.net.switchNs, "tcpdump", [
    ...["-i", "br-ul", "-n", "-l", "--immediate-mode"],
    `icmp6 and ip6[40] == 128 and dst host ${UNDERLAY_GATEWAY6}`,
  ]);
  try {
    await waitFor("tcpdump listening on br-ul", () => /listening on/.test(capture.output()), 10_000, 50);
    await send();
    await waitFor("the echo request in the capture", () => /echo request/.test(capture.output()), 5_000, 50);
  } finally {
    await capture.stop(2000);
  }
  return capture
    .stdout()
    .split("\n")
    .filter((line) => /echo request/.test(line));
}

describe.each(BACKENDS)("%s dual-stack: 3 hosts x 2 pods", (backend) => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    // --ip-masq: twill masquerades (ip6tables too), and the pods' conflist leaves it to twill.
    cluster = await started({
      backend,
      hosts: 3,
      ipv6: "dual-stack",
      agentArgs: ["--ip-masq", "--iptables-resync=1"],
    });
    for (let i = 1; i <= 3; i++) {
      await cluster.addPod(i, "a", 2);
      await cluster.addPod(i, "b", 3);
    }
  }, 120_000);
  afterAll(async () => {
    await destroyAll();
  });

  it("every pod pings every other pod over IPv4 and over IPv6", async () => {
    const pods = cluster.nodes.flatMap((n) => n.pods);
    expect(pods.map((p) => p.address6 === undefined)).toEqual(pods.map(() => false));
    await cluster.waitForMesh();
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("writes subnet.env as flannel does, with FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET", () => {
    for (let i = 1; i <= 3; i++) {
      const env = nodeOf(cluster, i).agent.subnetEnv() ?? "";
      expect(env).toMatch(
        new RegExp(
          "^FLANNEL_NETWORK=10\\.244\\.0\\.0/16\\n" +
            "FLANNEL_SUBNET=10\\.244\\.\\d+\\.1/24\\n" +
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\\n" +
            "FLANNEL_IPV6_SUBNET=fd00:10:244:[0-9a-f]{1,2}::1/64\\n" +
            "FLANNEL_MTU=\\d+\\n" +
            "FLANNEL_IPMASQ=true\\n$",
        ),
      );
    }
    const v6Subnets = [1, 2, 3].map((i) => subnet6OfNode(cluster, i).subnet);
    expect(new Set(v6Subnets).size).toBe(3);
  });

  it("stores each lease under flannel's dual-stack key, with PublicIPv6 (and vxlan's BackendV6Data)", async () => {
    const leases = leasesInEtcd(cluster);
    expect(leases).toHaveLength(3);
    for (let i = 1; i <= 3; i++) {
      const v4 = subnetOfNode(cluster, i);
      const v6 = subnet6OfNode(cluster, i);
      const key = `${cluster.prefix}/subnets/${v4.network}-24&${v6.network}-64`;
      const lease = leases.find((l) => l.key === key);
      expect(lease?.key, `keys: ${leases.map((l) => l.key).join(", ")}`).toBe(key);
      expect(lease?.value).toBe(await expectedLeaseValue(backend, cluster, i, true));
    }
  });

  it("twill leases and twill status show both families", async () => {
    const host = nodeOf(cluster, 1).host;
    const listed = await runTwill(["leases", "--json", `--etcd-endpoints=${cluster.etcd.endpoint}`], {
      netns: host.ns,
    });
    expect(listed.code).toBe(0);
    const json = JSON.parse(listed.stdout) as {
      network: string;
      ipv6Network: string;
      leases: { subnet: string; ipv6Subnet: string; publicIPv6: string; backendV6Data: unknown }[];
    };
    expect(json.network).toBe("10.244.0.0/16");
    expect(json.ipv6Network).toBe(IPV6_POD_NETWORK);
    for (let i = 1; i <= 3; i++) {
      const v4 = subnetOfNode(cluster, i);
      const v6 = subnet6OfNode(cluster, i);
      const lease = json.leases.find((l) => l.subnet === `${v4.network}/24`);
      expect(lease?.ipv6Subnet).toBe(`${v6.network}/64`);
      expect(lease?.publicIPv6).toBe(nodeOf(cluster, i).host.address6);
      if (backend === "vxlan") expect(lease?.backendV6Data).toMatchObject({ VNI: 1 });
      else expect(lease?.backendV6Data).toBeNull();
    }
    const table = await runTwill(["leases", `--etcd-endpoints=${cluster.etcd.endpoint}`], { netns: host.ns });
    expect(table.stdout).toMatch(/^SUBNET +PUBLIC IP +IPV6 SUBNET +PUBLIC IPV6 +BACKEND/m);
    const status = await runTwill(["status", "--json"], { netns: host.ns });
    const own = JSON.parse(status.stdout) as {
      node: { publicIPv6: string };
      lease: { ipv6Subnet: string };
      peers: { ipv6Subnet: string; state: string }[];
    };
    expect(own.node.publicIPv6).toBe(host.address6);
    expect(own.lease.ipv6Subnet).toBe(`${subnet6OfNode(cluster, 1).network}/64`);
    expect(own.peers.map((p) => p.state)).toEqual(["programmed", "programmed"]);
    expect(own.peers.every((p) => p.ipv6Subnet.startsWith("fd00:10:244:"))).toBe(true);
  });

  it("turns on IPv6 forwarding in the host (only its own namespace)", async () => {
    for (let i = 1; i <= 3; i++) {
      const ns = nodeOf(cluster, i).host.ns;
      expect((await cluster.net.run(ns, ["sysctl", "-n", "net.ipv6.conf.all.forwarding"])).trim()).toBe("1");
    }
  });

  it("programs one IPv6 route per peer (vxlan: and a neighbour and an FDB entry on flannel-v6.1)", async () => {
    const runner = nodeOf(cluster, 1).host.runner;
    const peers = [2, 3].map((i) => subnet6OfNode(cluster, i));
    const routes = await ownedRoutes6(cluster, 1);
    expect(routes.map((r) => r.dst).sort()).toEqual(peers.map((p) => p.subnet).sort());
    if (backend === "vxlan") {
      for (const route of routes) {
        expect([route.dev, route.onlink, route.gateway]).toEqual([
          "flannel-v6.1",
          true,
          route.dst.replace(/\/\d+$/, ""),
        ]);
      }
      const neighbours = await readNeighbours(runner, "flannel-v6.1", 6);
      expect(
        neighbours
          .filter((n) => n.state.includes("PERMANENT"))
          .map((n) => n.dst)
          .sort(),
      ).toEqual(peers.map((p) => p.network).sort());
      const fdb = (await readFdb(runner, "flannel-v6.1")).filter((f) => f.dst !== undefined);
      expect(fdb.map((f) => f.dst).sort()).toEqual(["2001:db8:18::2", "2001:db8:18::3"]);
      const device = await readLink(runner, "flannel-v6.1");
      expect([device?.vxlan?.id, device?.vxlan?.port, device?.vxlan?.learning]).toEqual([1, 8472, false]);
      expect(device?.vxlan?.local).toBe("2001:db8:18::1");
    } else {
      expect(routes.map((r) => [r.gateway, r.dev]).sort()).toEqual([
        ["2001:db8:18::2", "eth0"],
        ["2001:db8:18::3", "eth0"],
      ]);
    }
    // The bridge carries both gateways.
    const own6 = subnet6OfNode(cluster, 1);
    const bridge = await readAddresses(runner, "cni0", 6);
    expect(bridge.filter((a) => a.scope === "global").map((a) => a.cidr)).toEqual([
      `${own6.gateway}/${own6.prefixLen}`,
    ]);
  });

  it("MTU: a DF ping of exactly the pod MTU crosses to another host over IPv4 and over IPv6", async () => {
    const n1 = nodeOf(cluster, 1);
    const mtu = subnetLine(n1.agent.subnetEnv()).mtu;
    expect((await readLink(n1.host.runner, "cni0"))?.mtu).toBe(mtu);
    const from = podOf(cluster, 1, "a");
    const to = podOf(cluster, 2, "a");
    // Headers: IPv4 20 + ICMP 8; IPv6 40 + ICMPv6 8. A payload of MTU minus those makes a packet of
    // exactly the MTU, which must cross the tunnel (vxlan: flannel.1 or flannel-v6.1) whole.
    const fits4 = await cluster.net.ping(from.ns, to.address, {
      count: 2,
      size: mtu - 28,
      dontFragment: true,
    });
    const fits6 = await cluster.net.ping(from.ns, address6Of(to), {
      count: 2,
      size: mtu - 48,
      dontFragment: true,
    });
    expect([fits4.received > 0, fits6.received > 0], `${fits4.output}\n${fits6.output}`).toEqual([
      true,
      true,
    ]);
  });

  it("puts back an IPv6 route deleted by hand, and IPv6 pings pass again", async () => {
    const host = nodeOf(cluster, 1).host;
    const peer = subnet6OfNode(cluster, 2).subnet;
    await cluster.net.run(host.ns, ["ip", "-6", "route", "del", peer]);
    await waitFor("the IPv6 route back", async () =>
      (await ownedRoutes6(cluster, 1)).some((r) => r.dst === peer),
    );
    await pingsAgain(cluster, podOf(cluster, 1, "a"), address6Of(podOf(cluster, 2, "a")));
  });

  // vxlan only: registered for that backend alone, so host-gw runs show no skipped tests.
  if (backend === "vxlan") {
    it("puts back a flannel-v6.1 neighbour and FDB entry deleted by hand, and IPv6 pings pass again", async () => {
      const host = nodeOf(cluster, 1).host;
      const peer = subnet6OfNode(cluster, 2).network;
      const peerUnderlay = underlay6(nodeOf(cluster, 2).host);
      const run = (args: string[]) => cluster.net.run(host.ns, args);
      const from = podOf(cluster, 1, "a");
      const to = address6Of(podOf(cluster, 2, "a"));

      await run(["ip", "-6", "neigh", "del", peer, "dev", "flannel-v6.1"]);
      await waitFor("the neighbour entry back", async () =>
        (await readNeighbours(host.runner, "flannel-v6.1", 6)).some(
          (n) => n.dst === peer && n.state.includes("PERMANENT"),
        ),
      );
      await pingsAgain(cluster, from, to);

      const entry = (await readFdb(host.runner, "flannel-v6.1")).find((f) => f.dst === peerUnderlay);
      if (!entry) throw new Error(`no flannel-v6.1 FDB entry for ${peerUnderlay}`);
      await run(["bridge", "fdb", "del", entry.mac, "dev", "flannel-v6.1", "self", "dst", peerUnderlay]);
      await waitFor("the FDB entry back", async () =>
        (await readFdb(host.runner, "flannel-v6.1")).some(
          (f) => f.dst === peerUnderlay && f.mac === entry.mac,
        ),
      );
      await pingsAgain(cluster, from, to);
    });

    it("re-creates a deleted flannel-v6.1 with every IPv6 peer replayed", async () => {
      const host = nodeOf(cluster, 1).host;
      await cluster.net.run(host.ns, ["ip", "link", "del", "flannel-v6.1"]);
      await waitFor("flannel-v6.1 back with both peers", async () => {
        const routes = (await ownedRoutes6(cluster, 1)).filter((r) => r.dev === "flannel-v6.1");
        const neighbours = (await readNeighbours(host.runner, "flannel-v6.1", 6)).filter((n) =>
          n.state.includes("PERMANENT"),
        );
        const fdb = (await readFdb(host.runner, "flannel-v6.1")).filter((f) => f.dst !== undefined);
        return routes.length === 2 && neighbours.length === 2 && fdb.length === 2;
      });
      await pingsAgain(cluster, podOf(cluster, 1, "a"), address6Of(podOf(cluster, 3, "b")));
      await pingsAgain(cluster, podOf(cluster, 3, "b"), address6Of(podOf(cluster, 1, "a")));
    });
  }

  it("puts back the bridge's IPv6 gateway address when it is flushed", async () => {
    const host = nodeOf(cluster, 1).host;
    const own6 = subnet6OfNode(cluster, 1);
    await cluster.net.run(host.ns, ["ip", "-6", "address", "flush", "dev", "cni0", "scope", "global"]);
    await waitFor("cni0's IPv6 gateway back", async () =>
      (await readAddresses(host.runner, "cni0", 6)).some(
        (a) => a.cidr === `${own6.gateway}/${own6.prefixLen}`,
      ),
    );
    await pingsAgain(cluster, podOf(cluster, 2, "b"), address6Of(podOf(cluster, 1, "b")));
  });

  it("masquerades a pod's IPv6 traffic to the outside: the outside sees the host's IPv6 address", async () => {
    const n1 = nodeOf(cluster, 1);
    const pod = podOf(cluster, 1, "a");
    const rules = async () =>
      cluster.net.exec(n1.host.ns, ["ip6tables", "-w", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    await waitFor(
      "ip6tables masquerade rules",
      async () => (await rules()).stdout.includes("MASQUERADE"),
      20_000,
      250,
    ).catch(async (error: unknown) => {
      const now = await rules();
      throw new Error(`${String(error)}; ip6tables -t nat -S FLANNEL-POSTRTG: ${now.stdout}${now.stderr}`, {
        cause: error,
      });
    });
    expect((await rules()).stdout).toContain(
      `-A FLANNEL-POSTRTG -s ${IPV6_POD_NETWORK} ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE`,
    );
    // The switch stands in for the outside: it knows only the underlay (no route to fd00:10:244::/56),
    // so only a masqueraded request, from host 1's 2001:db8:18::1, can be answered.
    let reply = false;
    const seen = await echoRequestsSeenByOutside(cluster, async () => {
      reply = (await cluster.net.ping(pod.ns, UNDERLAY_GATEWAY6, { count: 2 })).received > 0;
    });
    expect(reply).toBe(true);
    expect(seen.length).toBeGreaterThan(0);
    for (const line of seen)
      expect(line).toMatch(/IP6 2001:db8:18::1 > 2001:db8:18::fe: ICMP6, echo request/);
    // And pod to pod still works with the masquerade rules in place.
    await pingsAgain(cluster, pod, address6Of(podOf(cluster, 2, "a")));
  });

  it("loses no IPv6 packet while an agent is stopped (SIGTERM) and started again", async () => {
    const from = podOf(cluster, 2, "a");
    const to = address6Of(podOf(cluster, 1, "a"));
    await pingsAgain(cluster, from, to);
    const agent = nodeOf(cluster, 1).agent;
    // 200 pings 40 ms apart (8 s) run across the stop and the start of host 1's agent.
    const pinging = continuousPing(cluster, from.ns, to, 200, "0.04");
    await new Promise((r) => setTimeout(r, 1000));
    await agent.restart();
    await waitFor("the restarted agent has its lease", () =>
      agent.logs().some((l) => l.msg === "subnet lease acquired"),
    );
    const result = await pinging;
    expect(result).toEqual({ transmitted: 200, received: 200 });
    await cluster.waitForMesh();
  });
});

describe.each(BACKENDS)("%s IPv6-only: 3 hosts x 2 pods", (backend) => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend, hosts: 3, ipv6: "ipv6-only" });
    for (let i = 1; i <= 3; i++) {
      await cluster.addPod(i, "a", 2);
      await cluster.addPod(i, "b", 3);
    }
  }, 120_000);
  afterAll(async () => {
    await destroyAll();
  });

  it("every pod pings every other pod over IPv6, on an underlay with no IPv4", async () => {
    const n1 = nodeOf(cluster, 1);
    expect(await readAddresses(n1.host.runner, "eth0", 4)).toEqual([]);
    expect(await readAddresses(n1.host.runner, "cni0", 4)).toEqual([]);
    const pod = podOf(cluster, 1, "a");
    const podV4 = JSON.parse(
      await cluster.net.run(pod.ns, ["ip", "-j", "-4", "address", "show", "dev", "eth0"]),
    ) as {
      addr_info?: unknown[];
    }[];
    expect(podV4.flatMap((l) => l.addr_info ?? [])).toEqual([]);
    expect(pod.address6).toBe(pod.address);
    await cluster.waitForMesh();
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("writes subnet.env without FLANNEL_NETWORK and FLANNEL_SUBNET", () => {
    for (let i = 1; i <= 3; i++) {
      const env = nodeOf(cluster, i).agent.subnetEnv() ?? "";
      expect(env).toMatch(
        new RegExp(
          "^FLANNEL_IPV6_NETWORK=fd00:10:244::/56\\n" +
            "FLANNEL_IPV6_SUBNET=fd00:10:244:[0-9a-f]{1,2}::1/64\\n" +
            "FLANNEL_MTU=\\d+\\n" +
            "FLANNEL_IPMASQ=false\\n$",
        ),
      );
      expect(() => subnetLine(env)).toThrow(/no FLANNEL_SUBNET/);
    }
  });

  it("stores each lease under 0.0.0.0-0&<IPv6 subnet> with PublicIP 0.0.0.0 and its PublicIPv6", async () => {
    const leases = leasesInEtcd(cluster);
    expect(leases).toHaveLength(3);
    for (let i = 1; i <= 3; i++) {
      const key = `${cluster.prefix}/subnets/0.0.0.0-0&${subnet6OfNode(cluster, i).network}-64`;
      const lease = leases.find((l) => l.key === key);
      expect(lease?.key, `keys: ${leases.map((l) => l.key).join(", ")}`).toBe(key);
      expect(lease?.value).toBe(await expectedLeaseValue(backend, cluster, i, false));
    }
  });

  it("programs IPv6 routes only, and puts back one deleted by hand", async () => {
    const host = nodeOf(cluster, 1).host;
    const routes4 = await readRoutes(host.runner, { table: 254, family: 4, protocol: TWILL_ROUTE_PROTOCOL });
    expect(routes4).toEqual([]);
    if (backend === "vxlan") expect(await readLink(host.runner, "flannel.1")).toBeUndefined();
    const peer = subnet6OfNode(cluster, 3).subnet;
    await cluster.net.run(host.ns, ["ip", "-6", "route", "del", peer]);
    await waitFor("the IPv6 route back", async () =>
      (await ownedRoutes6(cluster, 1)).some((r) => r.dst === peer),
    );
    await pingsAgain(cluster, podOf(cluster, 1, "b"), address6Of(podOf(cluster, 3, "a")));
  });
});

describe("bad IPv6 network configs", () => {
  let net: Cluster | undefined;
  let etcd: EtcdServer;
  let host: Host;
  const agents: AgentProcess[] = [];
  let prefixes = 0;
  const newPrefix = (): string => `/ipv6-${process.pid}-${++prefixes}/network`;

  beforeAll(async () => {
    net = await createUnderlay({ ipv6: "dual-stack" });
    etcd = await net.startEtcd();
    host = await net.addHost(1);
  });
  afterAll(async () => {
    await Promise.allSettled(agents.splice(0).map((a) => a.destroy()));
    const tag = net?.tag;
    await net?.destroy();
    if (tag !== undefined)
      expect((await listNamespaces()).filter((ns) => ns.startsWith(`tw-${tag}-`))).toEqual([]);
  });

  it("the dual-stack underlay: hosts reach the switch and a host behind the router over IPv6", async () => {
    if (net === undefined) throw new Error("no underlay");
    await net.addRemoteSegment();
    const remote = await net.addHost(9, { segment: "remote" });
    expect([host.address, host.address6, remote.address6]).toEqual([
      "198.18.0.1",
      "2001:db8:18::1",
      "2001:db8:19::9",
    ]);
    const cold = { count: 3, waitSeconds: 2 };
    expect((await net.ping(host.ns, UNDERLAY_GATEWAY6, cold)).ok).toBe(true);
    expect((await net.ping(host.ns, underlay6(remote), cold)).ok).toBe(true);
    expect((await net.ping(remote.ns, underlay6(host), cold)).ok).toBe(true);
    expect((await net.ping(host.ns, remote.address, cold)).ok).toBe(true);
    const route = JSON.parse(
      await net.run(host.ns, ["ip", "-j", "-6", "route", "get", underlay6(remote)]),
    ) as {
      gateway?: string;
    }[];
    expect(route[0]?.gateway).toBe("2001:db8:18::fd");
  });

  const dual = { Network: "10.244.0.0/16", EnableIPv6: true, IPv6Network: IPV6_POD_NETWORK };
  it.each([
    {
      field: "IPv6SubnetLen",
      config: { ...dual, IPv6SubnetLen: 127, Backend: { Type: "vxlan" } },
      message: /IPv6SubnetLen 127: SubnetLen must be less than \/127/,
    },
    {
      field: "IPv6Network",
      config: { Network: "10.244.0.0/16", EnableIPv6: true, Backend: { Type: "vxlan" } },
      message: /IPv6Network/,
    },
    {
      field: "IPv6Network",
      config: { ...dual, IPv6Network: "fd00:10:244::/125", Backend: { Type: "host-gw" } },
      message: /IPv6Network .*too small/,
    },
    {
      field: "IPv6SubnetMin",
      config: { ...dual, IPv6SubnetMin: "fd00:99::", Backend: { Type: "vxlan" } },
      message: /IPv6SubnetMin fd00:99::: IPv6SubnetMin is not in the range of the IPv6Network/,
    },
    {
      field: "EnableIPv6",
      config: { ...dual, Backend: { Type: "udp" } },
      message: /EnableIPv6: backend udp carries IPv4 only/,
    },
  ])(
    "twill config set refuses $field ($message), naming it, and stores nothing",
    async ({ config, message, field }) => {
      const prefix = newPrefix();
      const result = await runTwill(
        ["config", "set", "-", `--etcd-endpoints=${etcd.endpoint}`, `--etcd-prefix=${prefix}`],
        { netns: host.ns, input: JSON.stringify(config) },
      );
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/^twill: invalid network config: /);
      expect(result.stderr).toContain(field);
      expect(result.stderr).toMatch(message);
      expect(etcd.ctl(["get", `${prefix}/config`, "--print-value-only"]).trim()).toBe("");
    },
  );

  it("the agent reports a bad IPv6SubnetLen stored in etcd, leases nothing, and goes on once it is fixed", async () => {
    const prefix = newPrefix();
    etcd.ctl([
      "put",
      `${prefix}/config`,
      JSON.stringify({ ...dual, IPv6SubnetLen: 127, Backend: { Type: "host-gw" } }),
    ]);
    const agent = startAgent({ netns: host.ns, etcdEndpoint: etcd.endpoint, prefix, args: ["--iface=eth0"] });
    agents.push(agent);
    await waitFor("the agent's report of the invalid config", () =>
      agent.logs().some((l) => /invalid network config/.test(String(l.msg)) && l.field === "IPv6SubnetLen"),
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}\nagent output (tail):\n${agent.process.output().slice(-3000)}`, {
        cause: error,
      });
    });
    const report = agent.logs().find((l) => /invalid network config/.test(String(l.msg)));
    expect(String(report?.msg)).toMatch(/IPv6SubnetLen 127/);
    expect(agent.subnetEnv()).toBeUndefined();
    expect(etcd.ctl(["get", "--prefix", `${prefix}/subnets/`, "--keys-only"]).trim()).toBe("");

    etcd.ctl(["put", `${prefix}/config`, JSON.stringify({ ...dual, Backend: { Type: "host-gw" } })]);
    const env = await agent.waitForSubnetEnv();
    expect(env).toMatch(/^FLANNEL_IPV6_SUBNET=fd00:10:244:[0-9a-f]{1,2}::1\/64$/m);
  });
});

describe("turning IPv6 on in a running IPv4 cluster (vxlan)", () => {
  let cluster: TwillCluster;
  let before: string[] = [];

  beforeAll(async () => {
    // A dual-stack underlay, an IPv4-only config: what an operator has before enabling IPv6.
    cluster = await started({
      backend: "vxlan",
      hosts: 2,
      ipv6: "dual-stack",
      configOverride: { EnableIPv6: false },
    });
    before = cluster.nodes.map((n) => n.agent.subnetEnv() ?? "");
  }, 120_000);
  afterAll(destroyAll, 60_000);

  it("every node takes an IPv6 subnet beside the IPv4 one it keeps, and new pods reach each other over both", async () => {
    for (const env of before) expect(env).not.toMatch(/FLANNEL_IPV6_SUBNET/);
    const first = nodeOf(cluster, 1).host;
    const config = JSON.stringify({
      Network: "10.244.0.0/16",
      EnableIPv6: true,
      IPv6Network: IPV6_POD_NETWORK,
      Backend: { Type: "vxlan" },
    });
    const set = await runTwill(["config", "set", "-", `--etcd-endpoints=${cluster.etcd.endpoint}`], {
      netns: first.ns,
      input: config,
    });
    expect(set.code).toBe(0);
    for (const [i, node] of cluster.nodes.entries()) {
      await waitFor(`${node.host.ns}: FLANNEL_IPV6_SUBNET in subnet.env`, () =>
        /^FLANNEL_IPV6_SUBNET=/m.test(node.agent.subnetEnv() ?? ""),
      );
      // The IPv4 subnet stays: pods keep their addresses.
      expect(subnetLine(node.agent.subnetEnv()).network).toBe(subnetLine(before[i]).network);
    }
    // One key per node, the dual-stack one: the IPv4-only keys are gone.
    const keys = cluster.etcd
      .ctl(["get", "--prefix", `${cluster.prefix}/subnets/`, "--keys-only"])
      .split("\n")
      .filter((line) => line !== "");
    expect(keys).toHaveLength(2);
    for (const key of keys) expect(key).toMatch(/-24&fd00:10:244:[0-9a-f]+::-64$/);
    for (let i = 1; i <= 2; i++) {
      await cluster.addPod(i, "a", 2);
      await cluster.addPod(i, "b", 3);
    }
    await cluster.waitForMesh();
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });
});
