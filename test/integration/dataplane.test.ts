// Pods on different hosts reach each other through the real agent, for VXLAN and host-gw, through
// peers leaving and joining, agent restarts (no loss), drift, stale state and MTU limits.
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readFdb, readLink, readNeighbours, readRoutes } from "../helpers/ip-read.js";
import { TWILL_ROUTE_PROTOCOL } from "../../src/dataplane/objects.js";
import { isAlive, waitFor } from "../helpers/processes.js";
import type { AgentProcess } from "../helpers/agent.js";
import { startTwillCluster, subnetLine, type TwillCluster } from "../helpers/twill-cluster.js";

const clusters: TwillCluster[] = [];

/** Starts a cluster and remembers it, so teardown runs even when a later beforeAll step fails. */
async function started(options: Parameters<typeof startTwillCluster>[0]): Promise<TwillCluster> {
  const cluster = await startTwillCluster(options);
  clusters.push(cluster);
  return cluster;
}

async function destroyAll(): Promise<void> {
  await Promise.allSettled(clusters.splice(0).map((c) => c.destroy()));
}

function subnetOf(cluster: TwillCluster, i: number): string {
  const node = cluster.nodes[i - 1];
  const { network, prefixLen } = subnetLine(node?.agent.subnetEnv());
  return `${network}/${prefixLen}`;
}

function node(cluster: TwillCluster, i: number) {
  const n = cluster.nodes[i - 1];
  if (!n) throw new Error(`no node ${i}`);
  return n;
}

async function ownedRoutes(cluster: TwillCluster, i: number) {
  return readRoutes(node(cluster, i).host.runner, { table: 254, family: 4, protocol: TWILL_ROUTE_PROTOCOL });
}

/** How many log records the agent has written so far: a mark to look for records newer than now. */
function logMark(agent: AgentProcess): number {
  return agent.logs().length;
}

/**
 * Waits for a repair with trigger "kernel" logged after `since` (a logMark) by node i's agent. The
 * periodic resync (every 5 s) may repair a deletion before the kernel notification's round does, so
 * whenever the route to `peer` is back without a kernel-triggered repair logged, it is deleted again:
 * a working kernel monitor wins one of these races quickly, a broken one never logs a kernel repair.
 */
async function untilKernelRepair(
  cluster: TwillCluster,
  i: number,
  peer: string,
  since: number,
  messages: readonly string[] = ["drift repaired"],
): Promise<void> {
  const { agent, host } = node(cluster, i);
  const kernelRepaired = () =>
    agent
      .logs()
      .slice(since)
      .some((l) => messages.includes(String(l.msg)) && l.trigger === "kernel");
  await waitFor(
    `a repair triggered by a kernel notification on host ${i}`,
    async () => {
      if (kernelRepaired()) return true;
      if ((await ownedRoutes(cluster, i)).some((r) => r.dst === peer)) {
        // Repaired by the resync (or the kernel repair's log line is still on its way): break it again.
        if (kernelRepaired()) return true;
        await cluster.net.exec(host.ns, ["ip", "route", "del", peer]);
      }
      return false;
    },
    30_000,
    750,
  );
  // The last deletion may still be under repair: leave the route in place for what follows.
  await waitFor(`the route to ${peer} back on host ${i}`, async () =>
    (await ownedRoutes(cluster, i)).some((r) => r.dst === peer),
  );
}

describe.each(["vxlan", "host-gw"] as const)("%s: 3 hosts x 2 pods", (backend) => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend, hosts: 3 });
    for (let i = 1; i <= 3; i++) {
      await cluster.addPod(i, "a", 2);
      await cluster.addPod(i, "b", 3);
    }
  }, 120_000);
  afterAll(async () => {
    await destroyAll();
  });

  it("every pod pings every other pod", async () => {
    await cluster.waitForMesh();
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("programs one route per peer (and for vxlan a neighbour and an FDB entry) with flannel's shapes", async () => {
    const routes = await ownedRoutes(cluster, 1);
    const peers = [subnetOf(cluster, 2), subnetOf(cluster, 3)].sort();
    expect(routes.map((r) => r.dst).sort()).toEqual(peers);
    if (backend === "vxlan") {
      for (const route of routes) {
        expect(route.dev).toBe("flannel.1");
        expect(route.onlink).toBe(true);
        expect(route.gateway).toBe(route.dst.replace(/\/\d+$/, ""));
      }
      const runner = node(cluster, 1).host.runner;
      const neighbours = await readNeighbours(runner, "flannel.1");
      expect(
        neighbours
          .filter((n) => n.state.includes("PERMANENT"))
          .map((n) => n.dst)
          .sort(),
      ).toEqual(peers.map((p) => p.replace(/\/\d+$/, "")).sort());
      const fdb = (await readFdb(runner, "flannel.1")).filter((f) => f.dst !== undefined);
      expect(fdb.map((f) => f.dst).sort()).toEqual(["198.18.0.2", "198.18.0.3"]);
      const device = await readLink(runner, "flannel.1");
      expect(device?.vxlan?.id).toBe(1);
      expect(device?.vxlan?.port).toBe(8472);
      expect(device?.vxlan?.learning).toBe(false);
      expect(device?.vxlan?.local).toBe("198.18.0.1");
    } else {
      expect(routes.map((r) => [r.gateway, r.dev]).sort()).toEqual([
        ["198.18.0.2", "eth0"],
        ["198.18.0.3", "eth0"],
      ]);
    }
  });

  it("MTU: pod, bridge and device MTUs agree, and a DF ping of exactly the pod MTU crosses", async () => {
    const expected = backend === "vxlan" ? 1450 : 1500;
    const n1 = node(cluster, 1);
    expect(subnetLine(n1.agent.subnetEnv()).mtu).toBe(expected);
    expect((await readLink(n1.host.runner, "cni0"))?.mtu).toBe(expected);
    if (backend === "vxlan") expect((await readLink(n1.host.runner, "flannel.1"))?.mtu).toBe(expected);
    const pod = n1.pods[0];
    const target = node(cluster, 2).pods[0];
    if (!pod || !target) throw new Error("pods missing");
    const podMtu = JSON.parse(await cluster.net.run(pod.ns, ["ip", "-j", "link", "show", "eth0"])) as {
      mtu: number;
    }[];
    expect(podMtu[0]?.mtu).toBe(expected);
    // 28 bytes of IP + ICMP headers: a payload of MTU - 28 makes a packet of exactly the MTU.
    const fits = await cluster.net.ping(pod.ns, target.address, {
      count: 2,
      size: expected - 28,
      dontFragment: true,
    });
    expect(fits.received).toBeGreaterThan(0);
    const tooBig = await cluster.net.ping(pod.ns, target.address, {
      count: 1,
      size: expected - 27,
      dontFragment: true,
    });
    expect(tooBig.received).toBe(0);
  });

  it("gives the bridge it creates a fixed MAC: 0a:58 and the gateway address", async () => {
    const n1 = node(cluster, 1);
    const gateway = subnetLine(n1.agent.subnetEnv()).gateway;
    const hex = gateway.split(".").map((b) => Number(b).toString(16).padStart(2, "0"));
    expect((await readLink(n1.host.runner, "cni0"))?.mac).toBe(["0a", "58", ...hex].join(":"));
  });

  it("a host that leaves is removed everywhere; the rest still ping; it is reachable again when it rejoins", async () => {
    const leaving = node(cluster, 3);
    const leavingSubnet = subnetOf(cluster, 3);
    await leaving.agent.process.stop();
    cluster.etcd.ctl(["del", `${cluster.prefix}/subnets/${leavingSubnet.replace("/", "-")}`]);
    for (const i of [1, 2]) {
      await waitFor(`host ${i} to drop the route to ${leavingSubnet}`, async () =>
        (await ownedRoutes(cluster, i)).every((r) => r.dst !== leavingSubnet),
      );
      if (backend === "vxlan") {
        const runner = node(cluster, i).host.runner;
        await waitFor("neighbour and FDB entry gone", async () => {
          const neighbours = await readNeighbours(runner, "flannel.1");
          const fdb = await readFdb(runner, "flannel.1");
          return (
            neighbours.every((n) => n.dst !== leavingSubnet.replace(/\/\d+$/, "")) &&
            fdb.every((f) => f.dst !== "198.18.0.3")
          );
        });
      }
    }
    const a = node(cluster, 1).pods[0];
    const b = node(cluster, 2).pods[1];
    if (!a || !b) throw new Error("pods missing");
    expect((await cluster.net.ping(a.ns, b.address, { count: 2 })).received).toBeGreaterThan(0);

    // Rejoin: the agent starts again; its old subnet is free, so it gets it back from subnet.env.
    await leaving.agent.restart();
    await waitFor("host 3's lease back", async () =>
      (await ownedRoutes(cluster, 1)).some((r) => r.dst === leavingSubnet),
    );
    await cluster.waitForMesh();
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });
});

describe("vxlan: restarts, drift and stale state", () => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend: "vxlan", hosts: 3 });
    for (let i = 1; i <= 3; i++) await cluster.addPod(i, "a", 2);
    await waitFor("routes programmed", async () => (await ownedRoutes(cluster, 1)).length === 2);
  }, 120_000);
  afterAll(async () => {
    await destroyAll();
  });

  const podOf = (i: number) => {
    const pod = node(cluster, i).pods[0];
    if (!pod) throw new Error(`no pod on ${i}`);
    return pod;
  };

  it("loses no packet while an agent is killed (SIGKILL) and restarted", async () => {
    const from = podOf(2);
    const to = podOf(1);
    // 150 pings 40 ms apart (6 s) run across the kill and the restart of host 1's agent.
    const pinging = cluster.net.exec(from.ns, [
      "ping",
      "-q",
      "-c",
      "150",
      "-i",
      "0.04",
      // -W 5: a reply still in flight when the last request is sent is waited for, not counted lost.
      "-W",
      "5",
      to.address,
    ]);
    await new Promise((r) => setTimeout(r, 1000));
    node(cluster, 1).agent.process.kill("SIGKILL");
    await node(cluster, 1).agent.process.exited();
    const agent = node(cluster, 1).agent;
    await agent.restart();
    await waitFor("restarted agent reconciled", () =>
      agent.logs().some((l) => l.msg === "subnet lease acquired"),
    );
    const result = await pinging;
    const summary = /(\d+) packets transmitted, (\d+) received/.exec(result.stdout);
    expect(summary?.[1]).toBe("150");
    expect(summary?.[2]).toBe("150");
  });

  it("restores a deleted route, neighbour, FDB entry, bridge address and the whole VXLAN device", async () => {
    const host = node(cluster, 1).host;
    const peer = subnetOf(cluster, 2);
    const peerAddr = peer.replace(/\/\d+$/, "");
    const run = (args: string[]) => cluster.net.run(host.ns, args);
    const since = logMark(node(cluster, 1).agent);
    const pingsAgain = async () =>
      waitFor(
        "pings again",
        async () => (await cluster.net.ping(podOf(1).ns, podOf(2).address, { count: 1 })).received > 0,
      );

    await run(["ip", "route", "del", peer]);
    await waitFor("route restored", async () => (await ownedRoutes(cluster, 1)).some((r) => r.dst === peer));
    await pingsAgain();

    await run(["ip", "neigh", "del", peerAddr, "dev", "flannel.1"]);
    await waitFor("neighbour restored", async () =>
      (await readNeighbours(host.runner, "flannel.1")).some(
        (n) => n.dst === peerAddr && n.state.includes("PERMANENT"),
      ),
    );
    await pingsAgain();

    const fdbEntry = (await readFdb(host.runner, "flannel.1")).find((f) => f.dst === "198.18.0.2");
    if (!fdbEntry) throw new Error("no FDB entry for host 2");
    await run(["bridge", "fdb", "del", fdbEntry.mac, "dev", "flannel.1", "self", "dst", "198.18.0.2"]);
    await waitFor("FDB entry restored", async () =>
      (await readFdb(host.runner, "flannel.1")).some((f) => f.dst === "198.18.0.2" && f.mac === fdbEntry.mac),
    );
    await pingsAgain();

    const own = subnetLine(node(cluster, 1).agent.subnetEnv());
    await run(["ip", "addr", "flush", "dev", "cni0"]);
    await waitFor("bridge address restored", async () =>
      (await run(["ip", "-4", "-o", "addr", "show", "dev", "cni0"])).includes(
        `${own.gateway}/${own.prefixLen}`,
      ),
    );
    await pingsAgain();

    await run(["ip", "link", "del", "flannel.1"]);
    await waitFor("device re-created with every peer replayed", async () => {
      const routes = await ownedRoutes(cluster, 1);
      const neighbours = await readNeighbours(host.runner, "flannel.1");
      return routes.length === 2 && neighbours.filter((n) => n.state.includes("PERMANENT")).length === 2;
    });
    await pingsAgain();
    // Repaired on the kernel's notification, not only by the periodic resync. The resync may have won
    // every race above; then the route is deleted again until a notification-triggered repair is logged.
    await untilKernelRepair(cluster, 1, peer, since, ["drift repaired", "device repaired"]);
    const repairs = node(cluster, 1)
      .agent.logs()
      .slice(since)
      .filter((l) => l.msg === "drift repaired" || l.msg === "device repaired");
    expect(repairs.some((l) => l.trigger === "kernel")).toBe(true);
  });

  it("keeps no helper process of its own: nothing it started outlives a SIGKILL", async () => {
    const agent = node(cluster, 1).agent;
    // Every process the agent starts over a few seconds (today: none but short iptables calls).
    const seen = new Set<number>();
    for (let i = 0; i < 20; i++) {
      const ps = await execa("ps", ["--ppid", String(agent.process.pid), "-o", "pid="], { reject: false });
      for (const pid of ps.stdout
        .split("\n")
        .map((l) => Number(l.trim()))
        .filter((n) => n > 0))
        seen.add(pid);
      await new Promise((r) => setTimeout(r, 100));
    }
    agent.process.kill("SIGKILL");
    await agent.process.exited();
    await new Promise((r) => setTimeout(r, 1000));
    expect([...seen].filter((pid) => isAlive(pid))).toEqual([]);
    await agent.restart();
    await waitFor("restarted agent reconciled", () =>
      agent.logs().some((l) => l.msg === "data plane reconciled" || l.msg === "subnet lease acquired"),
    );
    // And it repairs drift from the kernel's notifications after the restart too.
    const peer = subnetOf(cluster, 2);
    const since = logMark(agent);
    await cluster.net.run(node(cluster, 1).host.ns, ["ip", "route", "del", peer]);
    await untilKernelRepair(cluster, 1, peer, since);
  });

  it("removes entries of a peer that vanished while the agent was down, and leaves foreign routes alone", async () => {
    const host = node(cluster, 1).host;
    await cluster.net.run(host.ns, [
      "ip",
      "route",
      "add",
      "10.99.0.0/24",
      "via",
      "198.18.0.2",
      "proto",
      "static",
    ]);
    const gone = subnetOf(cluster, 3);
    await node(cluster, 1).agent.process.stop();
    await node(cluster, 3).agent.process.stop();
    cluster.etcd.ctl(["del", `${cluster.prefix}/subnets/${gone.replace("/", "-")}`]);
    // Still there while the agent is down: nothing flushes on exit.
    expect((await ownedRoutes(cluster, 1)).some((r) => r.dst === gone)).toBe(true);
    await node(cluster, 1).agent.restart();
    await waitFor("stale route removed", async () =>
      (await ownedRoutes(cluster, 1)).every((r) => r.dst !== gone),
    );
    await waitFor("stale neighbour and FDB entry removed", async () => {
      const neighbours = await readNeighbours(host.runner, "flannel.1");
      const fdb = await readFdb(host.runner, "flannel.1");
      return (
        neighbours.every((n) => n.dst !== gone.replace(/\/\d+$/, "")) &&
        fdb.every((f) => f.dst !== "198.18.0.3")
      );
    });
    const foreign = await readRoutes(host.runner, { table: 254, family: 4 });
    expect(foreign.some((r) => r.dst === "10.99.0.0/24" && r.gateway === "198.18.0.2")).toBe(true);
    expect((await cluster.net.ping(podOf(1).ns, podOf(2).address, { count: 2 })).received).toBeGreaterThan(0);
  });
});

describe("host-gw: a peer that is not on-link", () => {
  let cluster: TwillCluster;
  beforeAll(async () => {
    cluster = await started({ backend: "host-gw", hosts: 2, remoteHosts: [2] });
  }, 120_000);
  afterAll(async () => {
    await destroyAll();
  });

  it("is reported unreachable and gets no route (never a silent black hole)", async () => {
    const agent = node(cluster, 1).agent;
    await waitFor("the unreachable report", () =>
      agent.logs().some((l) => l.state === "unreachable" && /not on-link/.test(String(l.reason))),
    );
    expect(await ownedRoutes(cluster, 1)).toEqual([]);
  });
});

describe("--ip-masq through the agent", () => {
  let cluster: TwillCluster;
  beforeAll(async () => {
    cluster = await started({ backend: "vxlan", hosts: 2, agentArgs: ["--ip-masq", "--iptables-resync=1"] });
    await cluster.addPod(1, "a", 2);
    await cluster.addPod(2, "a", 2);
  }, 120_000);
  afterAll(async () => {
    await destroyAll();
  });

  const natRules = async (): Promise<string> =>
    cluster.net.run(node(cluster, 1).host.ns, ["iptables", "-w", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);

  it("installs flannel's masquerade chain, so a pod reaches the outside (which has no route back to pods)", async () => {
    const own = subnetOf(cluster, 1);
    await waitFor("masquerade rules", async () => (await natRules()).includes("MASQUERADE"));
    const rules = await natRules();
    expect(rules).toContain(
      `-A FLANNEL-POSTRTG -s ${own} -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN`,
    );
    expect(rules).toContain(
      '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE',
    );
    const pod = node(cluster, 1).pods[0];
    if (!pod) throw new Error("no pod");
    // The switch namespace stands in for the outside: it knows only the underlay, so only a
    // masqueraded packet (source = host 1's 198.18.0.1) can be answered.
    expect((await cluster.net.ping(pod.ns, "198.18.0.254", { count: 2 })).received).toBeGreaterThan(0);
    const other = node(cluster, 2).pods[0];
    if (!other) throw new Error("no pod");
    await cluster.waitForMesh();
    expect((await cluster.net.ping(pod.ns, other.address, { count: 2 })).received).toBeGreaterThan(0);
  });

  it("restores a masquerade rule deleted by hand", async () => {
    const ns = node(cluster, 1).host.ns;
    await cluster.net.run(ns, ["iptables", "-w", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    await waitFor("rules restored", async () => (await natRules()).includes("MASQUERADE"));
  });
});

describe("vxlan DirectRouting", () => {
  let cluster: TwillCluster;
  beforeAll(async () => {
    // Hosts 1 and 2 share the 198.18.0.0/24 segment; host 3 sits behind the router on 198.19.0.0/24.
    cluster = await started({
      backend: "vxlan",
      hosts: 3,
      backendOptions: { DirectRouting: true },
      remoteHosts: [3],
    });
    for (let i = 1; i <= 3; i++) await cluster.addPod(i, "a", 2);
  }, 120_000);
  afterAll(async () => {
    await destroyAll();
  });

  it("routes an on-link peer directly and encapsulates to an off-link one; every pod reaches every other", async () => {
    await cluster.waitForMesh();
    const routes = await ownedRoutes(cluster, 1);
    const direct = routes.find((r) => r.dst === subnetOf(cluster, 2));
    const tunnelled = routes.find((r) => r.dst === subnetOf(cluster, 3));
    expect([direct?.gateway, direct?.dev, direct?.onlink]).toEqual(["198.18.0.2", "eth0", false]);
    expect([tunnelled?.dev, tunnelled?.onlink]).toEqual(["flannel.1", true]);
    const fdb = (await readFdb(node(cluster, 1).host.runner, "flannel.1")).filter((f) => f.dst !== undefined);
    expect(fdb.map((f) => f.dst)).toEqual([node(cluster, 3).host.address]);
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });
});
