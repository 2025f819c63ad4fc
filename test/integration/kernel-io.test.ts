// The kernel I/O layer against a real kernel, inside a host namespace of a throw-away test cluster.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { createUnderlay, type Cluster, type Host } from "../helpers/netns.js";
import { isAlive, waitFor } from "../helpers/processes.js";
import { runBatch } from "../../src/dataplane/kernel/batch.js";
import {
  readAddresses,
  readFdb,
  readLink,
  readLinks,
  readNeighbours,
  readRoutes,
} from "../../src/dataplane/kernel/read.js";
import { watchKernel, type KernelChange } from "../../src/dataplane/kernel/monitor.js";

const PROTO = 151;

describe("kernel I/O (batch, readers, monitor)", () => {
  let cluster: Cluster | undefined;
  let host: Host;

  beforeAll(async () => {
    cluster = await createUnderlay();
    host = await cluster.addHost(1);
  });

  afterAll(async () => {
    await cluster?.destroy();
  });

  it("maps each failure in a 1,000-line route batch to its line and applies all the others", async () => {
    const dst = (i: number): string => `10.244.${i >> 8}.${i & 255}/32`;
    const lines = Array.from({ length: 1000 }, (_, i) => `route add ${dst(i)} via 198.18.0.2 proto ${PROTO}`);
    lines[100] = `route add ${dst(99)} via 198.18.0.2 proto ${PROTO}`; // kernel refuses: already exists
    lines[500] = `route add 10.244.300.1/32 via 198.18.0.2 proto ${PROTO}`; // parse error: ip exits
    lines[998] = `route add ${dst(998)} via 198.19.7.7 proto ${PROTO}`; // gateway not on-link

    const result = await runBatch(host.runner, "ip", lines);

    expect(result.failed.map((f) => f.index)).toEqual([100, 500, 998]);
    expect(result.failed[0]?.line).toBe(lines[100]);
    expect(result.failed[0]?.error).toMatch(/File exists/);
    expect(result.failed[1]?.error).toMatch(/prefix is expected rather than "10\.244\.300\.1\/32"/);
    expect(result.failed[2]?.error).toMatch(/invalid gateway|unreachable/i);
    expect(result.warnings).toEqual([]);

    const routes = await readRoutes(host.runner, { protocol: PROTO });
    const expected = [...Array(1000).keys()].filter((i) => ![100, 500, 998].includes(i)).map(dst);
    expect(routes.map((r) => r.dst).sort()).toEqual(expected.sort());
    expect(routes.every((r) => r.protocol === PROTO && r.gateway === "198.18.0.2" && r.dev === "eth0")).toBe(
      true,
    );

    await runBatch(host.runner, "ip", [`route flush proto ${PROTO}`]);
    expect(await readRoutes(host.runner, { protocol: PROTO })).toEqual([]);
  });

  it("keeps warnings of lines that succeeded apart from failures, and refuses lines it cannot send safely", async () => {
    const lines = [
      "link add vxwarn type vxlan id 42 dev eth0", // succeeds, warns about the default port
      "route add 10.244.9.0/24 dev vxwarn # a comment would silently cut the line",
      "link del vxwarn",
    ];
    const result = await runBatch(host.runner, "ip", lines);
    expect(result.failed.map((f) => [f.index, f.line])).toEqual([[1, lines[1]]]);
    expect(result.failed[0]?.error).toMatch(/comment/);
    expect(result.warnings.map((w) => [w.index, w.line])).toEqual([[0, lines[0]]]);
    expect(result.warnings[0]?.message).toMatch(/destination port not specified/);
    expect(await readLink(host.runner, "vxwarn")).toBeUndefined();
    expect(await runBatch(host.runner, "bridge", [])).toEqual({ failed: [], warnings: [], processes: 0 });
  });

  it("reads back a vxlan device with a permanent neighbour, FDB entry and onlink route as typed records", async () => {
    const vtep = "02:42:0a:f4:01:00";
    const peerMac = "02:42:0a:f4:02:00";
    const setup = await runBatch(host.runner, "ip", [
      "link add flannel.1 type vxlan id 1 local 198.18.0.1 dev eth0 dstport 8472 nolearning",
      `link set flannel.1 address ${vtep} mtu 1450`,
      "address add 10.244.1.0/32 dev flannel.1",
      "link set flannel.1 up",
      `neigh replace 10.244.2.0 lladdr ${peerMac} dev flannel.1 nud permanent`,
    ]);
    expect(setup.failed).toEqual([]);
    const fdb = await runBatch(host.runner, "bridge", [
      `fdb replace ${peerMac} dev flannel.1 self dst 198.18.0.2 permanent`,
    ]);
    expect(fdb.failed).toEqual([]);
    const route = await runBatch(host.runner, "ip", [
      `route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto ${PROTO}`,
    ]);
    expect(route.failed).toEqual([]);

    expect(await readLink(host.runner, "flannel.1")).toMatchObject({
      name: "flannel.1",
      kind: "vxlan",
      up: true,
      mtu: 1450,
      mac: vtep,
      vxlan: { id: 1, local: "198.18.0.1", port: 8472, learning: false, underlay: "eth0" },
    });
    const links = await readLinks(host.runner);
    expect(links.map((l) => l.name)).toEqual(expect.arrayContaining(["lo", "eth0", "flannel.1"]));
    expect(links.find((l) => l.name === "eth0")).toMatchObject({ kind: "veth", up: true, mtu: 1500 });

    const addresses = await readAddresses(host.runner, "flannel.1");
    expect(addresses.filter((a) => a.family === "inet")).toEqual([
      {
        dev: "flannel.1",
        family: "inet",
        local: "10.244.1.0",
        prefixLen: 32,
        cidr: "10.244.1.0/32",
        scope: "global",
      },
    ]);
    expect(await readNeighbours(host.runner, "flannel.1")).toEqual([
      { dst: "10.244.2.0", dev: "flannel.1", lladdr: peerMac, state: ["PERMANENT"] },
    ]);
    expect(await readFdb(host.runner, "flannel.1")).toEqual([
      { mac: peerMac, dev: "flannel.1", dst: "198.18.0.2", flags: ["self"], state: "permanent" },
    ]);
    expect(await readRoutes(host.runner, { protocol: PROTO, dev: "flannel.1" })).toEqual([
      {
        dst: "10.244.2.0/24",
        gateway: "10.244.2.0",
        dev: "flannel.1",
        protocol: PROTO,
        scope: 0,
        table: 254,
        type: "unicast",
        onlink: true,
        flags: ["onlink"],
      },
    ]);

    const main = await readRoutes(host.runner);
    expect(main).toContainEqual(
      expect.objectContaining({
        dst: "default",
        gateway: "198.18.0.254",
        dev: "eth0",
        protocol: 3,
        onlink: false,
      }),
    );
    expect(main).toContainEqual(
      expect.objectContaining({
        dst: "198.18.0.0/24",
        dev: "eth0",
        protocol: 2,
        scope: 253,
        prefsrc: "198.18.0.1",
      }),
    );
    expect(await readRoutes(host.runner, { table: "all" })).toContainEqual(
      expect.objectContaining({ dst: "10.244.1.0/32", type: "local", table: 255, dev: "flannel.1" }),
    );

    // Asking about a device that does not exist is an empty answer, not an error.
    expect(await readLink(host.runner, "nosuch0")).toBeUndefined();
    expect(await readNeighbours(host.runner, "nosuch0")).toEqual([]);
    expect(await readFdb(host.runner, "nosuch0")).toEqual([]);
    expect(await readRoutes(host.runner, { dev: "nosuch0" })).toEqual([]);
    expect(await readAddresses(host.runner, "nosuch0")).toEqual([]);
  });

  it("the monitor reports a route deleted by hand and an FDB change, and stop ends its children", async () => {
    const c = cluster;
    if (c === undefined) throw new Error("cluster not created");
    await c.run(host.ns, [
      "ip",
      "route",
      "add",
      "10.244.77.0/24",
      "via",
      "198.18.0.2",
      "proto",
      String(PROTO),
    ]);
    await c.run(host.ns, [
      "ip",
      "link",
      "add",
      "vxmon",
      "type",
      "vxlan",
      "id",
      "7",
      "dev",
      "eth0",
      "dstport",
      "8472",
    ]);
    const seen: KernelChange[] = [];
    const watch = watchKernel(host.runner, (kind) => seen.push(kind));
    try {
      await watch.ready;
      expect(watch.pids.every(isAlive)).toBe(true);

      await c.run(host.ns, ["ip", "route", "del", "10.244.77.0/24"]);
      await waitFor("a route change", () => seen.includes("route"));

      await c.run(host.ns, [
        "bridge",
        "fdb",
        "add",
        "02:42:0a:f4:03:00",
        "dev",
        "vxmon",
        "self",
        "dst",
        "198.18.0.3",
      ]);
      await waitFor("an fdb change", () => seen.includes("fdb"));
    } finally {
      await watch.stop();
    }
    expect(watch.pids.some(isAlive)).toBe(false);
    await expect(watch.stop()).resolves.toBeUndefined();
  });
});
