// The netlink kernel channel against the real kernel, each test inside a network namespace of its own
// (tw-<tag>-nl<n>, removed in afterEach, on failure too). `ip`/`bridge` in the same namespace are the
// independent witness: what the channel writes must be what iproute2 reports, and what iproute2 changes
// by hand must arrive as notifications.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync, readlinkSync, statSync } from "node:fs";
import { execa } from "execa";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { KernelEvent, KernelOp, LinkSpec } from "../../src/dataplane/channel.js";
import { KernelCallError } from "../../src/dataplane/channel.js";
import { readAddresses, readFdb, readLink, readNeighbours, readRoutes } from "../helpers/ip-read.js";
import { netnsRunner, type CommandRunner } from "../../src/exec/command.js";
import { openNetlinkChannel, type NetlinkChannel } from "../../src/dataplane/netlink-channel.js";
import {
  NUD_FAILED,
  NUD_PERMANENT,
  ownedRoute,
  permanentFdb,
  permanentNeighbour,
  type FdbEntry,
  type KernelObject,
  type Neighbour,
  type Route,
} from "../../src/dataplane/objects.js";
import { MessageWriter } from "../../src/netlink/codec.js";
import { insideNetns, THREAD_NETNS_PATH } from "../../src/netlink/netns.js";
import { decodeRoute, encodeRouteDump } from "../../src/netlink/rtnetlink.js";
import { NETLINK_ROUTE, NetlinkSocket } from "../../src/netlink/socket.js";
import { waitFor } from "../helpers/processes.js";

const tag = randomBytes(3).toString("hex").slice(0, 5);
let counter = 0;

interface TestNetns {
  readonly ns: string;
  readonly runner: CommandRunner;
  /** `ip -n <ns> …`; throws with stderr on failure. */
  ip(...args: string[]): Promise<void>;
  bridge(...args: string[]): Promise<void>;
}

/** This test's namespace and the channels it opened, torn down in afterEach. */
let netns: TestNetns;
const channels: NetlinkChannel[] = [];
const namespaces: string[] = [];

/** A fresh namespace with eth0 (a veth whose peer eth0p stays inside too), 198.18.0.1/24, up. */
async function createNetns(): Promise<TestNetns> {
  counter += 1;
  const ns = `tw-${tag}-nl${counter}`;
  const run = async (command: string, args: string[]): Promise<void> => {
    const result = await execa(command, args, { reject: false, stdin: "ignore" });
    if (result.exitCode !== 0)
      throw new Error(
        `${command} ${args.join(" ")} failed (${result.exitCode ?? result.signal}): ${result.stderr}`,
      );
  };
  await run("ip", ["netns", "add", ns]);
  namespaces.push(ns); // removed in afterEach even if a step below fails
  const created: TestNetns = {
    ns,
    runner: netnsRunner(ns),
    ip: (...args) => run("ip", ["-n", ns, ...args]),
    bridge: (...args) => run("bridge", ["-n", ns, ...args]),
  };
  await created.ip("link", "set", "lo", "up");
  await created.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p");
  await created.ip("address", "add", "198.18.0.1/24", "dev", "eth0");
  await created.ip("link", "set", "eth0", "up");
  await created.ip("link", "set", "eth0p", "up");
  return created;
}

function open(options: { subscriptionBufferBytes?: number } = {}): NetlinkChannel {
  const channel = openNetlinkChannel({ netns: netns.ns, ...options });
  channels.push(channel);
  return channel;
}

beforeEach(async () => {
  netns = await createNetns();
});

afterEach(async () => {
  for (const channel of channels.splice(0)) channel.close();
  for (const ns of namespaces.splice(0)) {
    const result = await execa("ip", ["netns", "del", ns], { reject: false, stdin: "ignore" });
    if (result.exitCode !== 0) console.warn(`cleanup: ip netns del ${ns}: ${result.stderr}`);
  }
});

const VXLAN_SETTINGS = {
  vni: 1,
  local: "198.18.0.1",
  port: 8472,
  learning: false,
  gbp: false,
  underlay: "eth0",
};
const VXLAN: LinkSpec = {
  name: "flannel.1",
  kind: "vxlan",
  mac: "02:74:77:00:00:01",
  mtu: 1450,
  vxlan: VXLAN_SETTINGS,
};

async function vxlanDevice(channel: NetlinkChannel, spec: LinkSpec = VXLAN): Promise<void> {
  await channel.createLink(spec);
  await channel.setLink(spec.name, { up: true });
}

/** Peer n's objects as the vxlan backend writes them: FDB entry, neighbour entry, onlink route. */
function peerObjects(n: number, dev = "flannel.1"): [FdbEntry, Neighbour, Route] {
  const mac = `02:00:00:00:00:${n.toString(16).padStart(2, "0")}`;
  const gateway = `10.244.${n}.0`;
  return [
    permanentFdb({ dev, mac, dst: `198.18.0.${n}` }),
    permanentNeighbour({ family: 4, dev, dst: gateway, lladdr: mac }),
    ownedRoute({ family: 4, dst: `${gateway}/24`, gateway, dev, onlink: true }),
  ];
}

const replace = (object: KernelObject): KernelOp => ({ action: "replace", object });
const remove = (object: KernelObject): KernelOp => ({ action: "delete", object });
const byKey = <T>(items: readonly T[]): T[] =>
  [...items].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));

/** Events collected from a subscription, for tests to wait on. */
function collect(channel: NetlinkChannel): { events: KernelEvent[]; close(): void } {
  const events: KernelEvent[] = [];
  const subscription = channel.subscribe((batch) => events.push(...batch));
  return { events, close: () => subscription.close() };
}

/** The object events of one kind, optionally only those about objects `about` accepts. */
function objectEvents<K extends KernelObject["kind"]>(
  events: readonly KernelEvent[],
  kind: K,
  about: (object: Extract<KernelObject, { kind: K }>) => boolean = () => true,
): { action: "new" | "del"; object: Extract<KernelObject, { kind: K }> }[] {
  const matching: { action: "new" | "del"; object: Extract<KernelObject, { kind: K }> }[] = [];
  for (const event of events) {
    if (event.type !== "object" || event.object.kind !== kind) continue;
    const object = event.object as Extract<KernelObject, { kind: K }>;
    if (about(object)) matching.push({ action: event.action, object });
  }
  return matching;
}

/** Entries twill would have written, without the kernel's own (multicast NOARP, incomplete, …). */
const permanent = <T extends { readonly state: number }>(entries: readonly T[]): T[] =>
  entries.filter((e) => e.state === NUD_PERMANENT);

describe("netlink channel: writes and dumps", () => {
  it("writes FDB, neighbour and route entries that dump back equal, and as ip and bridge report them", async () => {
    const channel = open();
    channel.watchDevices(["flannel.1"]);
    await vxlanDevice(channel);
    const objects = [...peerObjects(2), ...peerObjects(3)];
    const outcomes = await channel.apply(objects.map(replace));
    expect(outcomes).toEqual(objects.map(() => ({ ok: true })));

    expect(byKey((await channel.dumpFdb()).filter((e) => e.dst !== undefined))).toEqual(
      byKey(objects.filter((o) => o.kind === "fdb")),
    );
    expect(byKey(permanent(await channel.dumpNeighbours()))).toEqual(
      byKey(objects.filter((o) => o.kind === "neigh")),
    );
    expect(byKey((await channel.dumpRoutes()).filter((r) => r.protocol === 151))).toEqual(
      byKey(objects.filter((o) => o.kind === "route")),
    );

    // The witness: iproute2's own view of the same entries.
    const fdb = (await readFdb(netns.runner, "flannel.1")).filter((e) => e.dst !== undefined);
    expect(
      byKey(fdb.map((e) => ({ mac: e.mac, dst: e.dst, state: e.state, self: e.flags.includes("self") }))),
    ).toEqual(
      byKey(
        objects.flatMap((o) =>
          o.kind === "fdb" ? [{ mac: o.mac, dst: o.dst, state: "permanent", self: true }] : [],
        ),
      ),
    );
    const neighbours = (await readNeighbours(netns.runner, "flannel.1")).filter((n) =>
      n.state.includes("PERMANENT"),
    );
    expect(byKey(neighbours.map((n) => ({ dst: n.dst, lladdr: n.lladdr, state: n.state })))).toEqual(
      byKey(
        objects.flatMap((o) =>
          o.kind === "neigh" ? [{ dst: o.dst, lladdr: o.lladdr, state: ["PERMANENT"] }] : [],
        ),
      ),
    );
    const routes = await readRoutes(netns.runner, { protocol: 151 });
    expect(
      byKey(
        routes.map((r) => ({
          dst: r.dst,
          gateway: r.gateway,
          dev: r.dev,
          scope: r.scope,
          onlink: r.onlink,
          metric: r.metric ?? 0,
        })),
      ),
    ).toEqual(
      byKey(
        objects.flatMap((o) =>
          o.kind === "route"
            ? [{ dst: o.dst, gateway: o.gateway, dev: o.dev, scope: o.scope, onlink: true, metric: 0 }]
            : [],
        ),
      ),
    );
  });

  it("does the same over IPv6: a vxlan device with an IPv6 source, IPv6 neighbours, FDB remotes and routes", async () => {
    await netns.ip("address", "add", "fd00:18::1/64", "dev", "eth0", "nodad");
    const channel = open();
    channel.watchDevices(["vx6"]);
    await vxlanDevice(channel, {
      ...VXLAN,
      name: "vx6",
      vxlan: { ...VXLAN_SETTINGS, local: "fd00:18::1", port: 4789 },
    });
    const objects: KernelObject[] = [
      permanentFdb({ dev: "vx6", mac: "02:00:00:00:00:06", dst: "fd00:18::6" }),
      permanentNeighbour({ family: 6, dev: "vx6", dst: "fd00:244:6::", lladdr: "02:00:00:00:00:06" }),
      ownedRoute({ family: 6, dst: "fd00:244:6::/64", gateway: "fd00:244:6::", dev: "vx6", onlink: true }),
      ownedRoute({ family: 6, dst: "fd00:244:7::/64", gateway: undefined, dev: "vx6", onlink: false }),
    ];
    expect(await channel.apply(objects.map(replace))).toEqual(objects.map(() => ({ ok: true })));

    expect((await channel.dumpFdb()).filter((e) => e.dst !== undefined)).toEqual([objects[0]]);
    expect(
      (await channel.dumpNeighbours()).filter((n) => n.family === 6 && n.state === NUD_PERMANENT),
    ).toEqual([objects[1]]);
    expect(byKey((await channel.dumpRoutes()).filter((r) => r.protocol === 151))).toEqual(
      byKey(objects.slice(2)),
    );

    const routes = await readRoutes(netns.runner, { protocol: 151, family: 6 });
    expect(
      byKey(routes.map((r) => ({ dst: r.dst, gateway: r.gateway, metric: r.metric, onlink: r.onlink }))),
    ).toEqual(
      byKey([
        { dst: "fd00:244:6::/64", gateway: "fd00:244:6::", metric: 1024, onlink: true },
        { dst: "fd00:244:7::/64", gateway: undefined, metric: 1024, onlink: false },
      ]),
    );
    expect((await readFdb(netns.runner, "vx6")).filter((e) => e.dst !== undefined).map((e) => e.dst)).toEqual(
      ["fd00:18::6"],
    );
  });

  it("gives each op its own outcome: refused ones name the reason, the others are applied", async () => {
    const channel = open();
    channel.watchDevices(["flannel.1"]);
    await vxlanDevice(channel);
    const [fdb, neighbour, route] = peerObjects(4);
    const missing = peerObjects(5)[2];
    const onUnknownDevice = ownedRoute({
      family: 4,
      dst: "10.244.6.0/24",
      gateway: "10.244.6.0",
      dev: "flannel.9",
      onlink: true,
    });
    const notOnlink = ownedRoute({
      family: 4,
      dst: "10.244.7.0/24",
      gateway: "10.244.7.0",
      dev: "flannel.1",
      onlink: false,
    });
    const outcomes = await channel.apply([
      remove(missing),
      replace(fdb),
      replace(onUnknownDevice),
      replace(neighbour),
      replace(notOnlink),
      replace(route),
    ]);

    expect(outcomes[0]).toMatchObject({ ok: false, error: { errno: 3, code: "ESRCH" } });
    expect(outcomes[2]).toEqual({
      ok: false,
      error: { errno: 19, code: "ENODEV", message: "device flannel.9 does not exist" },
    });
    // The kernel's extended-ack text, not just strerror's.
    expect(outcomes[4]).toEqual({
      ok: false,
      error: { errno: 101, code: "ENETUNREACH", message: "Nexthop has invalid gateway" },
    });
    expect([outcomes[1], outcomes[3], outcomes[5]]).toEqual([{ ok: true }, { ok: true }, { ok: true }]);
    expect((await readRoutes(netns.runner, { protocol: 151 })).map((r) => r.dst)).toEqual(["10.244.4.0/24"]);
    expect((await readNeighbours(netns.runner, "flannel.1")).map((n) => n.dst)).toEqual(["10.244.4.0"]);
    expect(
      (await readFdb(netns.runner, "flannel.1")).filter((e) => e.dst !== undefined).map((e) => e.mac),
    ).toEqual([fdb.mac]);
  });

  it("deletes exactly what it wrote", async () => {
    const channel = open();
    channel.watchDevices(["flannel.1"]);
    await vxlanDevice(channel);
    const objects = [...peerObjects(2), ...peerObjects(3)];
    await channel.apply(objects.map(replace));
    const outcomes = await channel.apply(peerObjects(2).map(remove));
    expect(outcomes).toEqual([{ ok: true }, { ok: true }, { ok: true }]);
    expect(
      byKey([
        ...(await channel.dumpFdb()).filter((e) => e.dst !== undefined),
        ...permanent(await channel.dumpNeighbours()),
        ...(await channel.dumpRoutes()).filter((r) => r.protocol === 151),
      ]),
    ).toEqual(byKey(peerObjects(3)));
  });

  it("creates vxlan and bridge devices with every attribute, as ip -d link reports them, and changes them", async () => {
    const channel = open();
    const spec: LinkSpec = {
      name: "vx42",
      kind: "vxlan",
      mac: "02:74:77:00:00:42",
      mtu: 1400,
      vxlan: { vni: 42, local: "198.18.0.1", port: 4789, learning: true, gbp: true, underlay: "eth0" },
    };
    await channel.createLink(spec);
    await channel.createLink({ name: "cni0", kind: "bridge", mac: "02:74:77:00:00:b0", mtu: 1380 });
    const links = await channel.dumpLinks();
    const witness = await readLink(netns.runner, "vx42");
    expect(links.find((l) => l.name === "vx42")).toEqual({
      index: witness?.index,
      name: "vx42",
      kind: "vxlan",
      mtu: 1400,
      up: false,
      mac: "02:74:77:00:00:42",
      master: undefined,
      vxlan: { vni: 42, local: "198.18.0.1", port: 4789, learning: true, gbp: true, underlay: "eth0" },
    });
    expect(witness).toMatchObject({
      kind: "vxlan",
      mtu: 1400,
      mac: "02:74:77:00:00:42",
      vxlan: { id: 42, local: "198.18.0.1", port: 4789, learning: true, gbp: true, underlay: "eth0" },
    });
    const bridge = await readLink(netns.runner, "cni0");
    expect(links.find((l) => l.name === "cni0")).toEqual({
      index: bridge?.index,
      name: "cni0",
      kind: "bridge",
      mtu: 1380,
      up: false,
      mac: "02:74:77:00:00:b0",
      master: undefined,
      vxlan: undefined,
    });

    await channel.setLink("cni0", { up: true, mtu: 1300, mac: "02:74:77:00:00:b1" });
    expect(await readLink(netns.runner, "cni0")).toMatchObject({
      up: true,
      mtu: 1300,
      mac: "02:74:77:00:00:b1",
    });
    await netns.ip("link", "set", "eth0p", "master", "cni0");
    expect((await channel.dumpLinks()).find((l) => l.name === "eth0p")?.master).toBe("cni0");

    await expect(channel.createLink(spec)).rejects.toMatchObject({ error: { code: "EEXIST" } });
    await channel.deleteLink("vx42");
    expect(await readLink(netns.runner, "vx42")).toBeUndefined();
    const gone = channel.deleteLink("vx42");
    await expect(gone).rejects.toBeInstanceOf(KernelCallError);
    await expect(gone).rejects.toThrow("delete device vx42: device vx42 does not exist (ENODEV)");
  });

  it("adds and deletes addresses of both families", async () => {
    const channel = open();
    await vxlanDevice(channel);
    const v4 = { family: 4, dev: "flannel.1", address: "10.244.1.0", prefixLength: 32, scope: 0 } as const;
    const v6 = { family: 6, dev: "flannel.1", address: "fd00:244:1::", prefixLength: 128, scope: 0 } as const;
    await channel.addAddress(v4);
    await channel.addAddress(v6);
    const addresses = await channel.dumpAddresses();
    expect(addresses).toEqual(expect.arrayContaining([v4, v6]));
    expect((await readAddresses(netns.runner, "flannel.1")).map((a) => a.cidr)).toEqual(
      expect.arrayContaining(["10.244.1.0/32", "fd00:244:1::/128"]),
    );
    await expect(channel.addAddress(v4)).rejects.toMatchObject({ error: { code: "EEXIST" } });
    await channel.deleteAddress(v4);
    expect((await readAddresses(netns.runner, "flannel.1")).map((a) => a.cidr)).not.toContain(
      "10.244.1.0/32",
    );
  });

  it("writes to a device re-created under the same name (a new ifindex) by someone else", async () => {
    const channel = open();
    const create = [
      "link",
      "add",
      "flannel.1",
      "type",
      "vxlan",
      "id",
      "1",
      "local",
      "198.18.0.1",
      "dev",
      "eth0",
      "dstport",
      "8472",
      "nolearning",
    ];
    await netns.ip(...create);
    await netns.ip("link", "set", "flannel.1", "up");
    const before = (await readLink(netns.runner, "flannel.1"))?.index;
    const [, neighbour, route] = peerObjects(2);
    expect(await channel.apply([replace(neighbour), replace(route)])).toEqual([{ ok: true }, { ok: true }]);

    await netns.ip("link", "del", "flannel.1");
    await netns.ip(...create);
    await netns.ip("link", "set", "flannel.1", "up");
    const after = (await readLink(netns.runner, "flannel.1"))?.index;
    expect(after).not.toBe(before);

    expect(await channel.apply([replace(neighbour), replace(route)])).toEqual([{ ok: true }, { ok: true }]);
    expect(await readRoutes(netns.runner, { protocol: 151 })).toMatchObject([
      { dst: route.dst, dev: "flannel.1", onlink: true },
    ]);
    expect((await channel.dumpRoutes()).filter((r) => r.protocol === 151)).toEqual([route]);
  });

  it("limits neighbour and FDB dumps and events to the watched devices, by name", async () => {
    const channel = open();
    await vxlanDevice(channel, {
      ...VXLAN,
      name: "vxa",
      mac: "02:74:77:00:00:0a",
      vxlan: { ...VXLAN_SETTINGS, vni: 10 },
    });
    await vxlanDevice(channel, {
      ...VXLAN,
      name: "vxb",
      mac: "02:74:77:00:00:0b",
      vxlan: { ...VXLAN_SETTINGS, vni: 11, port: 4789 },
    });
    await channel.apply([...peerObjects(2, "vxa"), ...peerObjects(3, "vxb")].map(replace));
    const { events } = collect(channel);

    expect(await channel.dumpNeighbours()).toEqual([]); // nothing watched yet
    channel.watchDevices(["vxa"]);
    expect(permanent(await channel.dumpNeighbours()).map((n) => n.dev)).toEqual(["vxa"]);
    expect(new Set((await channel.dumpFdb()).map((e) => e.dev))).toEqual(new Set(["vxa"]));

    await netns.bridge("fdb", "append", "00:00:00:00:00:00", "dev", "vxb", "dst", "198.18.0.33");
    await netns.bridge("fdb", "append", "00:00:00:00:00:00", "dev", "vxa", "dst", "198.18.0.22");
    await waitFor(
      "the FDB event on vxa",
      () => objectEvents(events, "fdb", (e) => e.dst === "198.18.0.22").length > 0,
    );
    expect(objectEvents(events, "fdb", (e) => e.dev === "vxb")).toEqual([]);

    channel.watchDevices(["vxb"]);
    expect(permanent(await channel.dumpNeighbours()).map((n) => n.dev)).toEqual(["vxb"]);
    await netns.ip(
      "neigh",
      "replace",
      "10.244.9.0",
      "lladdr",
      "02:00:00:00:00:09",
      "dev",
      "vxb",
      "nud",
      "permanent",
    );
    await waitFor(
      "the neighbour event on vxb",
      () => objectEvents(events, "neigh", (n) => n.dev === "vxb").length > 0,
    );
  });
});

describe("netlink channel: notifications", () => {
  it("reports changes made by hand: route, neighbour, FDB, address and link deletions", async () => {
    const channel = open();
    channel.watchDevices(["flannel.1"]);
    await vxlanDevice(channel);
    const [fdb, neighbour, route] = peerObjects(2);
    await channel.apply([fdb, neighbour, route].map(replace));
    await channel.addAddress({
      family: 4,
      dev: "flannel.1",
      address: "10.244.1.0",
      prefixLength: 32,
      scope: 0,
    });
    await channel.createLink({ name: "br9", kind: "bridge" });
    const { events } = collect(channel);

    await netns.ip("route", "del", route.dst);
    await netns.ip("neigh", "del", neighbour.dst, "dev", "flannel.1");
    await netns.bridge("fdb", "del", fdb.mac, "dev", "flannel.1", "self", "dst", fdb.dst ?? "");
    await netns.ip("addr", "del", "10.244.1.0/32", "dev", "flannel.1");
    await netns.ip("link", "del", "br9");

    await waitFor(
      "five deletions reported",
      () => events.filter((e) => e.type !== "overflow" && e.action === "del").length >= 5,
    );
    expect(objectEvents(events, "route", (r) => r.dst === route.dst)).toEqual([
      { action: "del", object: route },
    ]);
    // Verified on kernel 6.18: `ip neigh del` of a permanent entry is reported as a change to FAILED
    // (without lladdr), then as the deletion of that FAILED entry.
    expect(objectEvents(events, "neigh", (n) => n.dst === neighbour.dst).at(-1)).toEqual({
      action: "del",
      object: { ...neighbour, lladdr: undefined, state: NUD_FAILED },
    });
    expect(objectEvents(events, "fdb", (e) => e.mac === fdb.mac)).toEqual([{ action: "del", object: fdb }]);
    expect(events).toContainEqual({
      type: "address",
      action: "del",
      address: { family: 4, dev: "flannel.1", address: "10.244.1.0", prefixLength: 32, scope: 0 },
    });
    const linkGone = events.find((e) => e.type === "link" && e.action === "del" && e.link.name === "br9");
    expect(linkGone).toMatchObject({ link: { kind: "bridge" } });
  });

  it("reports a deleted device's entries by name before the device; its IPv4 routes vanish silently", async () => {
    const channel = open();
    channel.watchDevices(["flannel.1"]);
    await vxlanDevice(channel);
    const [fdb, neighbour, route] = peerObjects(2);
    await channel.apply([fdb, neighbour, route].map(replace));
    const { events } = collect(channel);
    await netns.ip("link", "del", "flannel.1");
    await waitFor("the link deletion", () => events.some((e) => e.type === "link" && e.action === "del"));
    const order = events.flatMap((e) =>
      e.type === "object" && (e.object.kind !== "neigh" || e.object.state === NUD_PERMANENT)
        ? [`${e.action} ${e.object.kind} ${e.object.dev ?? ""}`]
        : e.type === "link"
          ? [`${e.action} link ${e.link.name}`]
          : [],
    );
    // Verified on kernel 6.18: FDB, then neighbours, then the link; no notification for the IPv4
    // route through the device (a cache must drop those itself when the link goes).
    expect(order.filter((line) => !line.startsWith("new link") && !line.includes("route"))).toEqual([
      "del fdb flannel.1",
      "del neigh flannel.1",
      "del link flannel.1",
    ]);
    expect(objectEvents(events, "route", (r) => r.family === 4)).toEqual([]);
  });

  it("drops the echoes of its own route and neighbour writes but delivers FDB echoes, before apply resolves", async () => {
    const channel = open();
    channel.watchDevices(["flannel.1"]);
    await vxlanDevice(channel);
    const { events } = collect(channel);
    const [fdb, neighbour, route] = peerObjects(2);
    await channel.apply([fdb, neighbour, route].map(replace));
    // Already delivered: apply() drained the notifications its writes caused.
    expect(objectEvents(events, "fdb")).toEqual([{ action: "new", object: fdb }]);

    // The same kinds of change made by someone else are delivered, so the silence above is the filter.
    const [, foreignNeighbour, foreignRoute] = peerObjects(3);
    await netns.ip(
      "neigh",
      "replace",
      foreignNeighbour.dst,
      "lladdr",
      foreignNeighbour.lladdr ?? "",
      "dev",
      "flannel.1",
      "nud",
      "permanent",
    );
    await netns.ip(
      "route",
      "replace",
      foreignRoute.dst,
      "via",
      foreignRoute.gateway ?? "",
      "dev",
      "flannel.1",
      "onlink",
      "proto",
      "151",
    );
    const owned = (r: Route): boolean => r.protocol === 151;
    await waitFor("the foreign route", () => objectEvents(events, "route", owned).length > 0);
    expect(objectEvents(events, "route", owned)).toEqual([{ action: "new", object: foreignRoute }]);
    expect(objectEvents(events, "neigh", (n) => n.state === NUD_PERMANENT)).toEqual([
      { action: "new", object: foreignNeighbour },
    ]);
  });

  it("leaves other child processes alone when notifications arrive", async () => {
    // execa's signal-exit takes a SIGIO (as SIGPOLL) for a fatal signal and SIGTERMs every execa child.
    const channel = open();
    const { events } = collect(channel);
    const sleeper = execa("sleep", ["1"], { reject: false });
    await netns.ip("route", "add", "10.244.98.0/24", "dev", "eth0", "proto", "151");
    await waitFor(
      "the route event",
      () => objectEvents(events, "route", (r) => r.dst === "10.244.98.0/24").length > 0,
    );
    const result = await sleeper;
    expect({ exitCode: result.exitCode, signal: result.signal }).toEqual({ exitCode: 0, signal: undefined });
  });

  it("reports an overflow when notifications are lost, and keeps delivering afterwards", async () => {
    const channel = open({ subscriptionBufferBytes: 4096 });
    channel.watchDevices(["flannel.1"]);
    await vxlanDevice(channel);
    const { events } = collect(channel);
    // 500 foreign route writes while this thread is blocked in execFileSync: nothing drains the tiny buffer.
    const lines = Array.from(
      { length: 500 },
      (_, i) => `route add 10.245.${i >> 8}.${i & 255}/32 dev flannel.1 proto 151`,
    ).join("\n");
    execFileSync("ip", ["-n", netns.ns, "-batch", "-"], { input: `${lines}\n` });
    await waitFor("an overflow event", () => events.some((e) => e.type === "overflow"));

    const seen = events.length;
    await netns.ip("route", "add", "10.244.99.0/24", "dev", "flannel.1", "proto", "151");
    await waitFor(
      "a route event after the overflow",
      () => objectEvents(events.slice(seen), "route", (r) => r.dst === "10.244.99.0/24").length > 0,
    );
    // The link table survived the overflow: writes still resolve the device.
    expect(await channel.apply([replace(peerObjects(2)[2])])).toEqual([{ ok: true }]);
  });
});

describe("netlink channel: namespaces and lifetime", () => {
  const inode = (): number => statSync(THREAD_NETNS_PATH).ino;

  it("opens its sockets inside the namespace and leaves this thread in its own", async () => {
    await netns.ip("link", "add", `nl${tag}`, "type", "bridge");
    const before = inode();
    const channel = open();
    expect(inode()).toBe(before);
    expect(channel.where).toBe(`netns ${netns.ns}`);
    expect((await channel.dumpLinks()).map((l) => l.name)).toContain(`nl${tag}`);
  });

  it("returns the thread to its own namespace when socket creation fails, and names a missing namespace", () => {
    const before = inode();
    let inside = 0;
    expect(() =>
      insideNetns(netns.ns, () => {
        inside = inode();
        throw new Error("socket creation failed");
      }),
    ).toThrow("socket creation failed");
    expect(inside).not.toBe(before);
    expect(inode()).toBe(before);
    expect(() => openNetlinkChannel({ netns: `tw-${tag}-missing` })).toThrow(
      `network namespace tw-${tag}-missing does not exist`,
    );
    expect(inode()).toBe(before);
  });

  it("close() closes its sockets; later calls fail and a second close is harmless", async () => {
    const channel = open();
    const sockets = channel.fileDescriptors.map((fd) => readlinkSync(`/proc/self/fd/${fd}`));
    expect(sockets).toHaveLength(2);
    for (const socket of sockets) expect(socket).toMatch(/^socket:\[\d+\]$/);
    channel.close();
    const stillOpen = readdirSync("/proc/self/fd").flatMap((fd) => {
      try {
        return [readlinkSync(`/proc/self/fd/${fd}`)];
      } catch {
        return [];
      }
    });
    for (const socket of sockets) expect(stillOpen).not.toContain(socket);
    await expect(channel.dumpRoutes()).rejects.toThrow(`kernel channel (netns ${netns.ns}) is closed`);
    expect(() => channel.subscribe(() => undefined)).toThrow("closed");
    channel.close();
  });
});

describe("netlink socket", () => {
  it("stays usable after a dump abandoned halfway (its consumer threw)", async () => {
    const lines = Array.from(
      { length: 2000 },
      (_, i) => `route add 10.246.${i >> 8}.${i & 255}/32 dev eth0 proto 151`,
    );
    await execa("ip", ["-n", netns.ns, "-batch", "-"], { input: `${lines.join("\n")}\n` });
    const socket = insideNetns(netns.ns, () =>
      NetlinkSocket.open({ protocol: NETLINK_ROUTE, strictChecking: true }),
    );
    try {
      const routeDump = () => {
        const writer = new MessageWriter();
        encodeRouteDump(writer, 4, 254);
        return writer.finish();
      };
      let seen = 0;
      expect(() =>
        socket.dump(routeDump(), "dump routes", () => {
          if (++seen === 10) throw new Error("consumer failed");
        }),
      ).toThrow("consumer failed");
      const owned: string[] = [];
      socket.dump(routeDump(), "dump routes", (message) => {
        const route = decodeRoute(message, (index) => `if${index}`);
        if (route?.protocol === 151) owned.push(route.dst);
      });
      expect(owned).toHaveLength(2000);
    } finally {
      socket.close();
    }
  });
});
