// The cached kernel view: filled by a dump, patched by our own writes, kept true by notifications,
// and reporting what changed as slots (for the planner) and devices (for the device checks).
import { describe, expect, it } from "vitest";
import type { KernelEvent } from "../../src/dataplane/channel.js";
import { DesiredState } from "../../src/dataplane/desired.js";
import { keyOf, slotId, slotIdOf, type OwnershipScope } from "../../src/dataplane/kinds/index.js";
import { KernelView, type KernelSnapshot } from "../../src/dataplane/kernel-view.js";
import {
  NTF_MASTER,
  NTF_SELF,
  NUD_PERMANENT,
  NUD_REACHABLE,
  ownedRoute,
  permanentFdb,
  permanentNeighbour,
  TWILL_ROUTE_PROTOCOL,
  type Address,
  type FdbEntry,
  type KernelObject,
  type Link,
  type Route,
} from "../../src/dataplane/objects.js";
import { planSlots, type PlanInput } from "../../src/dataplane/planner.js";
import { vtepMac } from "../helpers/leases.js";

const DEV = "flannel.1";
const SCOPE: OwnershipScope = { routeProtocol: TWILL_ROUTE_PROTOCOL, devices: new Set([DEV]) };

function link(name: string, index: number, changes: Partial<Link> = {}): Link {
  return {
    index,
    name,
    kind: name === DEV ? "vxlan" : "veth",
    mtu: 1450,
    up: true,
    mac: vtepMac(index),
    master: undefined,
    vxlan: undefined,
    ...changes,
  };
}

function address(dev: string, text: string, prefixLength: number): Address {
  return { family: 4, dev, address: text, prefixLength, scope: 0 };
}

function tunnelRoute(n: number): Route {
  const gateway = `10.244.${n}.0`;
  return ownedRoute({ family: 4, dst: `${gateway}/24`, gateway, dev: DEV, onlink: true });
}

const neighbour = (n: number, mac = vtepMac(n)) =>
  permanentNeighbour({ family: 4, dev: DEV, dst: `10.244.${n}.0`, lladdr: mac });
const fdb = (n: number, dst = `198.18.0.${n}`) => permanentFdb({ dev: DEV, mac: vtepMac(n), dst });

const FLANNEL = link(DEV, 5);
const ETH0 = link("eth0", 2);

function snapshot(contents: Partial<KernelSnapshot> = {}): KernelSnapshot {
  return {
    links: [ETH0, FLANNEL],
    addresses: [address("eth0", "198.18.0.1", 24), address(DEV, "10.244.1.0", 32)],
    routes: [tunnelRoute(2)],
    neighbours: [neighbour(2)],
    fdb: [fdb(2)],
    ...contents,
  };
}

function loaded(contents: Partial<KernelSnapshot> = {}): KernelView {
  const view = new KernelView();
  view.watch(["eth0", DEV, "cni0"]);
  view.beginReload();
  view.finishReload(snapshot(contents));
  return view;
}

const added = (object: KernelObject): KernelEvent => ({ type: "object", action: "new", object });
const deleted = (object: KernelObject): KernelEvent => ({ type: "object", action: "del", object });
const linkEvent = (action: "new" | "del", l: Link): KernelEvent => ({ type: "link", action, link: l });

function objectsOf(view: KernelView, object: KernelObject): readonly KernelObject[] {
  return view.objects.get(object.kind, keyOf(object));
}

describe("KernelView: reload", () => {
  it("keeps what it caches of a dump: main-table routes, neighbours, remote FDB entries", () => {
    const local: FdbEntry = { ...fdb(1), dst: undefined };
    const bridged: FdbEntry = { ...fdb(3), flags: NTF_MASTER | NTF_SELF, master: "cni0" };
    const otherTable: Route = { ...tunnelRoute(4), table: 100 };
    const view = loaded({ routes: [tunnelRoute(2), otherTable], fdb: [fdb(2), local, bridged] });
    expect(view.objects.count("route")).toBe(1);
    expect(view.objects.count("neigh")).toBe(1);
    expect([...view.objects.objects("fdb")]).toEqual([fdb(2)]);
    expect(view.link(DEV)).toEqual(FLANNEL);
    expect(view.addressesOf(DEV)).toEqual([address(DEV, "10.244.1.0", 32)]);
  });

  it("holds notifications that arrive while the dump is read, then replays them over it", () => {
    const view = loaded();
    view.beginReload();
    // While the dump is read: route 2 goes, route 3 comes, a neighbour changes.
    const during = view.apply([
      deleted(tunnelRoute(2)),
      added(tunnelRoute(3)),
      added(neighbour(2, vtepMac(0x22))),
    ]);
    expect(during.slots.size).toBe(0);
    // The dump was taken before those changes.
    const change = view.finishReload(snapshot());
    expect(objectsOf(view, tunnelRoute(2))).toEqual([]);
    expect(objectsOf(view, tunnelRoute(3))).toEqual([tunnelRoute(3)]);
    expect(objectsOf(view, neighbour(2))).toEqual([neighbour(2, vtepMac(0x22))]);
    expect([...change.slots].sort()).toEqual(
      [slotIdOf(tunnelRoute(2)), slotIdOf(tunnelRoute(3)), slotIdOf(neighbour(2))].sort(),
    );
    // After the reload, notifications apply at once again.
    expect(view.apply([deleted(tunnelRoute(3))]).slots).toEqual(new Set([slotIdOf(tunnelRoute(3))]));
    expect(objectsOf(view, tunnelRoute(3))).toEqual([]);
  });

  it("replaces everything it held before", () => {
    const view = loaded();
    view.beginReload();
    view.finishReload(snapshot({ routes: [], neighbours: [], fdb: [], addresses: [] }));
    expect(view.objects.count("route") + view.objects.count("neigh") + view.objects.count("fdb")).toBe(0);
    expect(view.addressesOf(DEV)).toEqual([]);
  });
});

describe("KernelView: our own writes", () => {
  it("patches the cache from the acknowledgement of a write", () => {
    const view = loaded({ routes: [], neighbours: [], fdb: [] });
    view.patch({ action: "replace", object: fdb(2) });
    view.patch({ action: "replace", object: tunnelRoute(2) });
    expect(objectsOf(view, fdb(2))).toEqual([fdb(2)]);
    expect(objectsOf(view, tunnelRoute(2))).toEqual([tunnelRoute(2)]);
    view.patch({ action: "replace", object: fdb(2, "198.18.0.42") });
    expect(objectsOf(view, fdb(2))).toEqual([fdb(2, "198.18.0.42")]);
    view.patch({ action: "delete", object: tunnelRoute(2) });
    expect(objectsOf(view, tunnelRoute(2))).toEqual([]);
  });

  it("finds the slot as desired when the echo of its own write arrives: nothing more to plan", () => {
    const view = loaded({ routes: [], neighbours: [], fdb: [] });
    const desired = new DesiredState();
    desired.set("peer 2", "0002", [fdb(2), neighbour(2)]);
    for (const object of [fdb(2), neighbour(2)]) view.patch({ action: "replace", object });
    const echo = view.apply([added(fdb(2)), added(neighbour(2))]);
    // The echo equals what the acknowledgement already put there: it does not even touch the slot.
    expect(echo.slots).toEqual(new Set());
    const input: PlanInput = {
      desired: (kind, key) => desired.get(kind, key),
      actual: (kind, key) => view.objects.get(kind, key),
      keys: () => [],
    };
    expect(planSlots(echo.slots, input, SCOPE)).toEqual([]);
    // A foreign change to the same slot is something to repair.
    const foreignChange = view.apply([added(fdb(2, "198.18.0.66"))]);
    expect(planSlots(foreignChange.slots, input, SCOPE).map((op) => op.reason)).toEqual([
      "differs: dst 198.18.0.66 → 198.18.0.2",
    ]);
  });
});

describe("KernelView: notifications", () => {
  it("a new route takes the place of the route with the same metric, not of one with another metric", () => {
    const flannels = { ...tunnelRoute(2), protocol: 3 };
    const view = loaded({ routes: [flannels] });
    view.apply([added(tunnelRoute(2))]);
    expect(objectsOf(view, tunnelRoute(2))).toEqual([tunnelRoute(2)]);
    const backup = { ...tunnelRoute(2), protocol: 4, metric: 100, gateway: "198.18.0.2", dev: "eth0" };
    view.apply([added(backup)]);
    expect(objectsOf(view, tunnelRoute(2))).toEqual([tunnelRoute(2), backup]);
    view.apply([deleted(tunnelRoute(2))]);
    expect(objectsOf(view, tunnelRoute(2))).toEqual([backup]);
  });

  it("a neighbour or FDB notification is the whole slot (one entry per address, one remote per unicast MAC)", () => {
    const view = loaded();
    const learned = { ...neighbour(2), state: NUD_REACHABLE };
    view.apply([added(learned), added(fdb(2, "198.18.0.42"))]);
    expect(objectsOf(view, neighbour(2))).toEqual([learned]);
    expect(objectsOf(view, fdb(2))).toEqual([fdb(2, "198.18.0.42")]);
    view.apply([deleted(learned), deleted(fdb(2, "198.18.0.42"))]);
    expect(objectsOf(view, neighbour(2))).toEqual([]);
    expect(objectsOf(view, fdb(2))).toEqual([]);
  });

  it("ignores what it does not cache, and reports nothing for it", () => {
    const view = loaded();
    const change = view.apply([
      added({ ...tunnelRoute(3), table: 100 }),
      added({ ...fdb(3), dst: undefined }),
      added({ ...fdb(4), flags: NTF_MASTER, master: "cni0", state: NUD_PERMANENT }),
    ]);
    expect(change.slots.size).toBe(0);
    expect(view.objects.count("route")).toBe(1);
    expect(view.objects.count("fdb")).toBe(1);
  });

  it("reports a deleted, re-created or downed watched device as lost; other link changes as device changes", () => {
    const view = loaded();
    const deletedChange = view.apply([linkEvent("del", FLANNEL)]);
    expect(deletedChange.lost).toEqual(new Set([DEV]));
    expect(view.link(DEV)).toBeUndefined();
    expect(view.addressesOf(DEV)).toEqual([]);

    const reloaded = loaded();
    const recreated = reloaded.apply([linkEvent("new", { ...FLANNEL, index: 99 })]);
    expect(recreated.lost).toEqual(new Set([DEV]));
    expect(reloaded.link(DEV)?.index).toBe(99);

    const downed = loaded().apply([linkEvent("new", { ...FLANNEL, up: false })]);
    expect(downed.lost).toEqual(new Set([DEV]));

    const mtu = loaded().apply([linkEvent("new", { ...FLANNEL, mtu: 1400 })]);
    expect(mtu.lost.size).toBe(0);
    expect(mtu.devices).toEqual(new Set([DEV]));
  });

  it("ignores devices it does not watch, and the deletion of an older device of a watched name", () => {
    const view = loaded({ links: [ETH0, FLANNEL, link("veth9", 9)] });
    const other = view.apply([linkEvent("del", link("veth9", 9))]);
    expect(other.lost.size + other.devices.size).toBe(0);
    const older = view.apply([linkEvent("del", { ...FLANNEL, index: 4 })]);
    expect(older.lost.size).toBe(0);
    expect(view.link(DEV)).toEqual(FLANNEL);
  });

  it("follows a rename by the link's index", () => {
    const view = loaded();
    const change = view.apply([linkEvent("new", { ...FLANNEL, name: "old-flannel" })]);
    expect(view.link(DEV)).toBeUndefined();
    expect(view.link("old-flannel")?.index).toBe(FLANNEL.index);
    expect(change.lost).toEqual(new Set([DEV]));
  });

  it("reports address changes of watched devices as device changes, and keeps every device's addresses", () => {
    const view = loaded();
    const removed = view.apply([{ type: "address", action: "del", address: address(DEV, "10.244.1.0", 32) }]);
    expect(removed.devices).toEqual(new Set([DEV]));
    expect(removed.lost.size).toBe(0);
    expect(view.addressesOf(DEV)).toEqual([]);
    const second = address("eth0", "198.19.0.1", 24);
    expect(view.apply([{ type: "address", action: "new", address: second }]).devices).toEqual(
      new Set(["eth0"]),
    );
    expect(view.addressesOf("eth0")).toEqual([address("eth0", "198.18.0.1", 24), second]);
    const unwatched = view.apply([
      { type: "address", action: "new", address: address("veth9", "10.9.0.1", 24) },
    ]);
    expect(unwatched.devices.size).toBe(0);
    expect(view.addressesOf("veth9")).toEqual([address("veth9", "10.9.0.1", 24)]);
  });

  it("says so when notifications were lost", () => {
    const view = loaded();
    expect(view.apply([{ type: "overflow" }]).overflow).toBe(true);
    expect(view.apply([added(tunnelRoute(5))]).overflow).toBe(false);
  });

  it("reports the slot of every object a notification changed", () => {
    const view = loaded();
    const change = view.apply([deleted(tunnelRoute(2)), added(neighbour(3))]);
    expect(change.slots).toEqual(
      new Set([slotId("route", "10.244.2.0/24"), slotId("neigh", `${DEV} 10.244.3.0`)]),
    );
  });
});
