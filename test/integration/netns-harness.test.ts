// The namespace test cluster itself: underlay, router, etcd in the switch, pods on a host bridge, teardown.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { createUnderlay, listNamespaces, type Cluster, type Host } from "../helpers/netns.js";
import type { EtcdServer } from "../helpers/etcd.js";
import { isAlive } from "../helpers/processes.js";

describe("network-namespace test cluster", () => {
  let cluster: Cluster | undefined;
  let h1: Host;
  let h2: Host;
  let h9: Host;
  let etcd: EtcdServer;

  const the = (): Cluster => {
    if (cluster === undefined) throw new Error("cluster not created");
    return cluster;
  };

  beforeAll(async () => {
    cluster = await createUnderlay();
    h1 = await cluster.addHost(1);
    h2 = await cluster.addHost(2);
    await cluster.addRemoteSegment();
    h9 = await cluster.addHost(9, { segment: "remote" });
  });

  afterAll(async () => {
    await cluster?.destroy();
  });

  it("names everything after the run's tag and gives hosts their underlay address", async () => {
    const c = the();
    expect(c.tag).toMatch(/^[0-9a-f]{4,5}$/);
    expect(h1.ns).toBe(`tw-${c.tag}-h1`);
    expect(await listNamespaces()).toEqual(
      expect.arrayContaining([c.switchNs, h1.ns, h2.ns, h9.ns, `tw-${c.tag}-rt`]),
    );
    const addresses = JSON.parse(
      await c.run(h9.ns, ["ip", "-j", "-4", "address", "show", "dev", "eth0"]),
    ) as {
      addr_info: { local: string; prefixlen: number }[];
    }[];
    expect(addresses[0]?.addr_info).toEqual([
      expect.objectContaining({ local: "198.19.0.9", prefixlen: 24 }),
    ]);
    expect((await c.run(h1.ns, ["sysctl", "-n", "net.ipv4.ip_forward"])).trim()).toBe("1");
  });

  it("hosts on the same segment ping each other over the underlay", async () => {
    const c = the();
    // First packets on a path wait for ARP: a few tries, a little longer each.
    const cold = { count: 3, waitSeconds: 2 };
    expect((await c.ping(h1.ns, h2.address, cold)).ok).toBe(true);
    expect((await c.ping(h2.ns, h1.address, cold)).ok).toBe(true);
    expect((await c.ping(h1.ns, "198.18.0.254", cold)).ok).toBe(true);
  });

  it("the switch keeps its MAC when a host joins, so the other hosts' ARP entries stay right", async () => {
    const c = the();
    const macOf = async (ns: string, dev: string): Promise<string | undefined> =>
      (JSON.parse(await c.run(ns, ["ip", "-j", "link", "show", "dev", dev])) as { address?: string }[])[0]
        ?.address;
    expect((await c.ping(h1.ns, "198.18.0.254")).ok).toBe(true);
    const before = await macOf(c.switchNs, "br-ul");
    // A port whose MAC is lower than every other: a bridge without a MAC of its own would now take it.
    const joined = await c.addHost(7);
    await c.run(c.switchNs, ["ip", "link", "set", "dev", `v${c.tag}h7`, "address", "02:00:00:00:00:01"]);
    expect(await macOf(c.switchNs, "br-ul")).toBe(before);
    // h1 still holds the MAC it learnt before the join, and it still works.
    const neighbours = JSON.parse(await c.run(h1.ns, ["ip", "-j", "neigh", "show", "198.18.0.254"])) as {
      lladdr?: string;
    }[];
    expect(neighbours[0]?.lladdr).toBe(before);
    expect((await c.ping(h1.ns, "198.18.0.254", { waitSeconds: 2 })).ok).toBe(true);
    expect((await c.ping(joined.ns, "198.18.0.254", { count: 3, waitSeconds: 2 })).ok).toBe(true);
  });

  it("hosts reach a host behind the router, and it reaches them back", async () => {
    const c = the();
    const cold = { count: 3, waitSeconds: 2 };
    expect((await c.ping(h1.ns, h9.address, cold)).ok).toBe(true);
    expect((await c.ping(h9.ns, h2.address, cold)).ok).toBe(true);
    // Not L2-adjacent: the path goes through the router.
    const route = JSON.parse(await c.run(h1.ns, ["ip", "-j", "route", "get", h9.address])) as {
      gateway?: string;
    }[];
    expect(route[0]?.gateway).toBe("198.18.0.253");
    // A host that is not on the cluster is not reachable.
    expect((await c.ping(h1.ns, "198.18.0.77")).ok).toBe(false);
  });

  it("hosts on both segments reach etcd running in the switch namespace", async () => {
    const c = the();
    etcd = await c.startEtcd();
    expect(etcd.endpoint).toMatch(/^http:\/\/198\.18\.0\.254:\d+$/);
    for (const host of [h1, h9]) {
      const health = await c.exec(host.ns, ["etcdctl", `--endpoints=${etcd.endpoint}`, "endpoint", "health"]);
      expect(health.exitCode, health.stderr).toBe(0);
      expect(`${health.stdout}${health.stderr}`).toContain("is healthy");
    }
    await c.run(h1.ns, ["etcdctl", `--endpoints=${etcd.endpoint}`, "put", "/twill-test/from", h1.ns]);
    expect(etcd.ctl(["get", "--print-value-only", "/twill-test/from"]).trim()).toBe(h1.ns);
  });

  it("two pods on one host's bridge ping each other and their gateway", async () => {
    const c = the();
    // In real use the agent creates cni0; here the test plays that part. A fixed MAC, so attaching a
    // port with a lower MAC cannot change the gateway's MAC under a pod's ARP entry.
    await c.run(h1.ns, ["ip", "link", "add", "cni0", "address", "02:74:77:00:02:01", "type", "bridge"]);
    await c.run(h1.ns, ["ip", "address", "add", "10.244.5.1/24", "dev", "cni0"]);
    await c.run(h1.ns, ["ip", "link", "set", "cni0", "up"]);
    const options = { bridge: "cni0", gateway: "10.244.5.1", mtu: 1450 };
    const a = await c.addPod(h1, "a", { ...options, address: "10.244.5.2/24" });
    const b = await c.addPod(h1, "b", { ...options, address: "10.244.5.3/24" });
    expect(a.ns).toBe(`${h1.ns}-a`);

    const cold = { count: 3, waitSeconds: 2 };
    expect((await c.ping(a.ns, b.address, cold)).ok).toBe(true);
    expect((await c.ping(b.ns, a.address, cold)).ok).toBe(true);
    expect((await c.ping(a.ns, "10.244.5.1", cold)).ok).toBe(true);

    const link = JSON.parse(await c.run(a.ns, ["ip", "-j", "link", "show", "dev", "eth0"])) as {
      mtu: number;
    }[];
    expect(link[0]?.mtu).toBe(1450);
    const port = JSON.parse(await c.run(h1.ns, ["ip", "-j", "link", "show", "dev", a.hostVeth])) as {
      master?: string;
    }[];
    expect(port[0]?.master).toBe("cni0");
    const routes = JSON.parse(await c.run(b.ns, ["ip", "-j", "route", "show", "default"])) as {
      gateway?: string;
    }[];
    expect(routes[0]?.gateway).toBe("10.244.5.1");
  });

  it("addPod says which bridge it waited for when it never appears", async () => {
    await expect(
      the().addPod(h2, "x", {
        bridge: "cni0",
        address: "10.244.6.2/24",
        gateway: "10.244.6.1",
        bridgeTimeoutMs: 300,
      }),
    ).rejects.toThrow(`bridge cni0 in ${h2.ns}`);
  });

  it("destroy ends spawned processes and etcd and removes every namespace, and can be repeated", async () => {
    const c = the();
    const sleeper = c.spawn(h2.ns, "sleep", ["600"]);
    expect(isAlive(sleeper.pid)).toBe(true);
    const etcdPid = etcd.process.pid;

    await c.destroy();

    expect(isAlive(sleeper.pid)).toBe(false);
    expect(isAlive(etcdPid)).toBe(false);
    const left = (await listNamespaces()).filter((ns) => ns.startsWith(`tw-${c.tag}-`));
    expect(left).toEqual([]);
    await expect(c.destroy()).resolves.toBeUndefined();
  });
});
