// The generic planner over slots: a desired state (DesiredState) against what the kernel view holds
// (an ObjectTable of the objects the view caches) → the minimal ops, in phase order. Every case also
// applies its plan to a kernel model — the kinds' own afterWrite, which the fake kernel and the cache
// share — and plans again: nothing may be left to do.
import { describe, expect, it } from "vitest";
import { DesiredState } from "../../src/dataplane/desired.js";
import {
  afterWrite,
  isCached,
  keyOf,
  KIND_NAMES,
  slotId,
  type OwnershipScope,
  type PlannedOp,
} from "../../src/dataplane/kinds/index.js";
import {
  MAIN_TABLE,
  NTF_MASTER,
  NTF_SELF,
  NUD_NOARP,
  NUD_PERMANENT,
  NUD_REACHABLE,
  NUD_STALE,
  ownedRoute,
  permanentFdb,
  permanentNeighbour,
  SCOPE_LINK,
  TWILL_ROUTE_PROTOCOL,
  type FdbEntry,
  type KernelObject,
  type Neighbour,
  type Route,
} from "../../src/dataplane/objects.js";
import { planAll, planSlots, type PlanInput } from "../../src/dataplane/planner.js";
import { ObjectTable } from "../../src/dataplane/table.js";
import { vtepMac } from "../helpers/leases.js";

const DEV = "flannel.1";
const VXLAN_SCOPE: OwnershipScope = { routeProtocol: TWILL_ROUTE_PROTOCOL, devices: new Set([DEV]) };
const HOSTGW_SCOPE: OwnershipScope = { routeProtocol: TWILL_ROUTE_PROTOCOL, devices: new Set() };
const PROTO_BOOT = 3;
const PROTO_STATIC = 4;

// ---- objects ---------------------------------------------------------------------------------------

/** What the vxlan backend wants for peer n: FDB entry, neighbour entry and onlink route. */
function tunnel(n: number, publicIP = `198.18.0.${n}`, mac = vtepMac(n)): KernelObject[] {
  const gateway = `10.244.${n}.0`;
  return [
    permanentFdb({ dev: DEV, mac, dst: publicIP }),
    permanentNeighbour({ family: 4, dev: DEV, dst: gateway, lladdr: mac }),
    ownedRoute({ family: 4, dst: `${gateway}/24`, gateway, dev: DEV, onlink: true }),
  ];
}

/** What host-gw (or vxlan DirectRouting) wants for peer n: a route via its public IP on eth0. */
function direct(n: number, gateway = `198.18.0.${n}`): Route {
  return ownedRoute({ family: 4, dst: `10.244.${n}.0/24`, gateway, dev: "eth0", onlink: false });
}

function tunnelRoute(n: number): Route {
  const gateway = `10.244.${n}.0`;
  return ownedRoute({ family: 4, dst: `${gateway}/24`, gateway, dev: DEV, onlink: true });
}

/** The same route as someone else made it (another protocol, and whatever else `changes` says). */
function foreign(route: Route, changes: Partial<Route> = {}): Route {
  return { ...route, protocol: PROTO_BOOT, ...changes };
}

/** A permanent entry of ours with another NUD state, as a kernel or an operator may leave it. */
function withState<T extends Neighbour | FdbEntry>(entry: T, state: number): T {
  return { ...entry, state };
}

const UNDERLAY_ROUTE: Route = {
  kind: "route",
  family: 4,
  dst: "198.18.0.0/24",
  table: MAIN_TABLE,
  protocol: 2, // kernel
  type: "unicast",
  scope: SCOPE_LINK,
  metric: 0,
  gateway: undefined,
  dev: "eth0",
  onlink: false,
  multipath: false,
};

/** The VXLAN device's own address in its FDB (no destination): never a peer's, never touched. */
const LOCAL_FDB: FdbEntry = {
  kind: "fdb",
  dev: DEV,
  mac: vtepMac(1),
  dst: undefined,
  state: NUD_PERMANENT,
  flags: NTF_SELF,
  master: undefined,
};

// ---- desired state, kernel model and the planner's view of it ----------------------------------------

/** One contributor per group ("peer 0", "peer 1", …), ranked in order. */
function desiredOf(groups: readonly (readonly KernelObject[])[]): DesiredState {
  const desired = new DesiredState();
  groups.forEach((objects, i) => desired.set(`peer ${i}`, String(i).padStart(4, "0"), objects));
  return desired;
}

function tableOf(objects: readonly KernelObject[]): ObjectTable {
  const table = new ObjectTable();
  for (const object of objects) table.add(object);
  return table;
}

/** What the kernel view would hold of this kernel: the objects it caches. */
function viewOf(kernel: ObjectTable): ObjectTable {
  const view = new ObjectTable();
  for (const kind of KIND_NAMES)
    for (const object of kernel.objects(kind)) if (isCached(object)) view.add(object);
  return view;
}

function planInput(desired: DesiredState, view: ObjectTable): PlanInput {
  return {
    desired: (kind, key) => desired.get(kind, key),
    actual: (kind, key) => view.get(kind, key),
    keys: (kind) => [...desired.keys(kind), ...view.keys(kind)],
  };
}

function planKernel(desired: DesiredState, kernel: ObjectTable, scope: OwnershipScope): PlannedOp[] {
  return planAll(planInput(desired, viewOf(kernel)), scope);
}

/** Applies ops to the kernel model, as the kernel does; a delete that would find nothing throws. */
function applyOps(kernel: ObjectTable, ops: readonly PlannedOp[]): void {
  for (const op of ops) {
    const key = keyOf(op.object);
    const before = kernel.get(op.object.kind, key);
    const after = afterWrite(op, before);
    if (op.action === "delete" && after.length === before.length) {
      throw new Error(`the kernel would refuse: ${op.action} ${JSON.stringify(op.object)}`);
    }
    kernel.set(op.object.kind, key, after);
  }
}

/** "route replace 10.244.2.0/24 via 10.244.2.0", to compare plans at a glance. */
function summary(op: PlannedOp): string {
  const object = op.object;
  switch (object.kind) {
    case "route":
      return `route ${op.action} ${object.dst}${op.action === "replace" ? ` via ${object.gateway ?? "-"}` : ""}`;
    case "neigh":
      return `neigh ${op.action} ${object.dst}${op.action === "replace" ? ` ${object.lladdr ?? "-"}` : ""}`;
    case "fdb":
      return `fdb ${op.action} ${object.mac} ${object.dst ?? "-"}`;
  }
}

// ---- the table -----------------------------------------------------------------------------------------

interface Case {
  readonly name: string;
  /** What each peer wants. */
  readonly desired: readonly (readonly KernelObject[])[];
  /** What the kernel holds. */
  readonly kernel: readonly KernelObject[];
  readonly scope?: OwnershipScope;
  readonly ops: readonly string[];
  /** Reason pattern per op index. */
  readonly reasons?: Readonly<Record<number, RegExp>>;
}

const cases: Case[] = [
  {
    name: "add: empty kernel → FDB, neighbour, then route",
    desired: [tunnel(2)],
    kernel: [UNDERLAY_ROUTE, LOCAL_FDB],
    ops: [
      "fdb replace 0a:00:00:00:00:02 198.18.0.2",
      "neigh replace 10.244.2.0 0a:00:00:00:00:02",
      "route replace 10.244.2.0/24 via 10.244.2.0",
    ],
    reasons: { 0: /^missing$/, 1: /^missing$/, 2: /^missing$/ },
  },
  {
    name: "adopt: the kernel already holds what is wanted → no ops",
    desired: [tunnel(2), tunnel(3)],
    kernel: [UNDERLAY_ROUTE, LOCAL_FDB, ...tunnel(2), ...tunnel(3)],
    ops: [],
  },
  {
    name: "change: peer VTEP MAC changed → old FDB deleted, new FDB, neighbour replaced, route kept",
    desired: [tunnel(2, "198.18.0.2", vtepMac(0x22))],
    kernel: [UNDERLAY_ROUTE, LOCAL_FDB, ...tunnel(2)],
    ops: [
      "fdb delete 0a:00:00:00:00:02 198.18.0.2",
      "fdb replace 0a:00:00:00:00:22 198.18.0.2",
      "neigh replace 10.244.2.0 0a:00:00:00:00:22",
    ],
    reasons: {
      0: /^stale: no peer has this VTEP MAC$/,
      1: /^missing$/,
      2: /^differs: lladdr 0a:00:00:00:00:02 → 0a:00:00:00:00:22$/,
    },
  },
  {
    name: "change: peer public IP changed → FDB dst rewritten in place (no delete)",
    desired: [tunnel(2, "198.18.0.42")],
    kernel: tunnel(2),
    ops: ["fdb replace 0a:00:00:00:00:02 198.18.0.42"],
    reasons: { 0: /^differs: dst 198\.18\.0\.2 → 198\.18\.0\.42$/ },
  },
  {
    name: "change: host-gw peer public IP changed → route replaced",
    desired: [[direct(2, "198.18.0.42")]],
    kernel: [direct(2)],
    scope: HOSTGW_SCOPE,
    ops: ["route replace 10.244.2.0/24 via 198.18.0.42"],
    reasons: { 0: /^differs: gateway 198\.18\.0\.2 → 198\.18\.0\.42$/ },
  },
  {
    name: "change: DirectRouting turned on → the tunnel route becomes a plain route, entries removed",
    desired: [[direct(2)]],
    kernel: tunnel(2),
    ops: [
      "fdb delete 0a:00:00:00:00:02 198.18.0.2",
      "neigh delete 10.244.2.0",
      "route replace 10.244.2.0/24 via 198.18.0.2",
    ],
    reasons: {
      0: /^stale: no peer has this VTEP MAC$/,
      1: /^stale: no such peer$/,
      2: /^differs: gateway 10\.244\.2\.0 → 198\.18\.0\.2, dev flannel\.1 → eth0, onlink on → off$/,
    },
  },
  {
    name: "remove: peer gone → route, FDB and neighbour deleted (route first)",
    desired: [tunnel(3)],
    kernel: [UNDERLAY_ROUTE, LOCAL_FDB, ...tunnel(2), ...tunnel(3)],
    ops: ["route delete 10.244.2.0/24", "fdb delete 0a:00:00:00:00:02 198.18.0.2", "neigh delete 10.244.2.0"],
    reasons: {
      0: /^stale: no such peer$/,
      1: /^stale: no peer has this VTEP MAC$/,
      2: /^stale: no such peer$/,
    },
  },
  {
    name: "garbage-collect: owned leftovers go, foreign routes elsewhere stay, a foreign route on a desired dst is taken over",
    desired: [tunnel(2), tunnel(3)],
    kernel: [
      UNDERLAY_ROUTE,
      LOCAL_FDB,
      ...tunnel(2),
      ...tunnel(3).filter((object) => object.kind !== "route"),
      foreign(tunnelRoute(3)), // flannel's: taken over
      ...tunnel(9), // ours, from a peer that vanished while the agent was down
      foreign(direct(8)), // someone else's, on no desired dst: untouched
      withState(
        permanentNeighbour({ family: 4, dev: DEV, dst: "10.244.77.0", lladdr: vtepMac(77) }),
        NUD_REACHABLE,
      ),
    ],
    ops: [
      "route delete 10.244.9.0/24",
      "fdb delete 0a:00:00:00:00:09 198.18.0.9",
      "neigh delete 10.244.9.0",
      "route replace 10.244.3.0/24 via 10.244.3.0",
    ],
    reasons: {
      3: /^missing; takes over foreign route \(via 10\.244\.3\.0 dev flannel\.1 onlink proto boot\)$/,
    },
  },
  {
    name: "a foreign route with another metric on a desired dst is left in place, and the reason says so",
    desired: [tunnel(2)],
    kernel: [
      ...tunnel(2).filter((object) => object.kind !== "route"),
      foreign(direct(2, "198.18.0.99"), { protocol: PROTO_STATIC, metric: 100 }),
    ],
    ops: ["route replace 10.244.2.0/24 via 10.244.2.0"],
    reasons: {
      0: /^missing; foreign route \(via 198\.18\.0\.99 dev eth0 proto static metric 100\) left in place$/,
    },
  },
  {
    name: "a stale owned route with a metric on a desired dst is deleted next to the replace",
    desired: [tunnel(2)],
    kernel: [...tunnel(2).filter((object) => object.kind !== "route"), { ...tunnelRoute(2), metric: 5 }],
    ops: ["route delete 10.244.2.0/24", "route replace 10.244.2.0/24 via 10.244.2.0"],
    reasons: {
      0: /^stale: via 10\.244\.2\.0 dev flannel\.1 onlink proto 151 metric 5 \(ours carry no metric\)$/,
      1: /^missing$/,
    },
  },
  {
    name: "duplicates: a second owned route on a desired dst (another gateway, another metric) is deleted",
    desired: [tunnel(2)],
    kernel: [...tunnel(2), { ...direct(2), metric: 10 }],
    ops: ["route delete 10.244.2.0/24"],
    reasons: {
      0: /^duplicate of the desired route \(via 198\.18\.0\.2 dev eth0 proto 151 metric 10\)$/,
    },
  },
  {
    name: "a non-permanent neighbour is made permanent; an FDB entry that is not permanent is fixed",
    desired: [tunnel(2)],
    kernel: [
      tunnelRoute(2),
      withState(
        permanentNeighbour({ family: 4, dev: DEV, dst: "10.244.2.0", lladdr: vtepMac(2) }),
        NUD_STALE,
      ),
      withState(permanentFdb({ dev: DEV, mac: vtepMac(2), dst: "198.18.0.2" }), NUD_NOARP), // "static"
    ],
    ops: ["fdb replace 0a:00:00:00:00:02 198.18.0.2", "neigh replace 10.244.2.0 0a:00:00:00:00:02"],
    reasons: { 0: /^not permanent \(NOARP\)$/, 1: /^not permanent \(STALE\)$/ },
  },
  {
    name: "entries on other devices and non-permanent FDB entries are never touched",
    desired: [],
    kernel: [
      permanentNeighbour({ family: 4, dev: "eth0", dst: "10.0.0.1", lladdr: vtepMac(1) }),
      permanentFdb({ dev: "vxlan0", mac: vtepMac(5), dst: "198.18.0.5" }),
      withState(permanentFdb({ dev: DEV, mac: vtepMac(6), dst: "198.18.0.6" }), NUD_REACHABLE), // learned
    ],
    ops: [],
  },
  {
    name: "local FDB entries (no dst) and a bridge's entries are left alone",
    desired: [tunnel(2)],
    kernel: [
      ...tunnel(2),
      LOCAL_FDB,
      { ...LOCAL_FDB, mac: vtepMac(0x33), flags: NTF_MASTER, master: "cni0" },
    ],
    ops: [],
  },
  {
    name: "host-gw: no device of its own → neighbours and FDB entries are never garbage-collected",
    desired: [],
    kernel: [direct(2), ...tunnel(3).filter((object) => object.kind !== "route")],
    scope: HOSTGW_SCOPE,
    ops: ["route delete 10.244.2.0/24"],
  },
  {
    name: "routes of other tables are not the view's, so never planned",
    desired: [],
    kernel: [{ ...direct(2), table: 100 }],
    ops: [],
  },
];

describe("planAll", () => {
  it.each(cases)("$name", (c) => {
    const scope = c.scope ?? VXLAN_SCOPE;
    const desired = desiredOf(c.desired);
    const kernel = tableOf(c.kernel);
    const ops = planKernel(desired, kernel, scope);
    expect(ops.map(summary)).toEqual(c.ops);
    for (const [i, pattern] of Object.entries(c.reasons ?? {})) {
      expect(ops[Number(i)]?.reason).toMatch(pattern);
    }
    // Idempotence: once applied, the same desired state needs nothing more.
    applyOps(kernel, ops);
    expect(planKernel(desired, kernel, scope)).toEqual([]);
  });

  it("orders route deletes, FDB deletes, FDB replaces, neighbour deletes, neighbour replaces, route replaces", () => {
    // Peer 2 goes, peer 3 comes, peer 4 changes its VTEP MAC: every phase has work.
    const desired = desiredOf([tunnel(3), tunnel(4, "198.18.0.4", vtepMac(0x44))]);
    const kernel = tableOf([...tunnel(2), ...tunnel(4)]);
    const ops = planKernel(desired, kernel, VXLAN_SCOPE);
    expect(ops.map((op) => `${op.object.kind} ${op.action}`)).toEqual([
      "route delete",
      "fdb delete",
      "fdb delete",
      "fdb replace",
      "fdb replace",
      "neigh delete",
      "neigh replace",
      "neigh replace",
      "route replace",
    ]);
    applyOps(kernel, ops);
    expect(planKernel(desired, kernel, VXLAN_SCOPE)).toEqual([]);
  });

  it("deletes name the kernel's own objects, exactly as read", () => {
    const metric20 = { ...direct(9), metric: 20 };
    const blackhole: Route = { ...direct(8), type: "blackhole", gateway: undefined, dev: undefined };
    const ops = planKernel(desiredOf([]), tableOf([metric20, blackhole]), HOSTGW_SCOPE);
    expect(ops).toHaveLength(2);
    expect(ops.find((op) => op.object.dst === "10.244.9.0/24")?.object).toBe(metric20);
    expect(ops.find((op) => op.object.dst === "10.244.8.0/24")?.object).toBe(blackhole);
    expect(ops.every((op) => op.action === "delete" && op.reason === "stale: no such peer")).toBe(true);
  });

  it("plans objects several peers want once", () => {
    const ops = planKernel(desiredOf([tunnel(2), tunnel(2)]), tableOf([]), VXLAN_SCOPE);
    expect(ops.map(summary)).toEqual([
      "fdb replace 0a:00:00:00:00:02 198.18.0.2",
      "neigh replace 10.244.2.0 0a:00:00:00:00:02",
      "route replace 10.244.2.0/24 via 10.244.2.0",
    ]);
  });

  it("never removes a local FDB entry, even when one reaches it", () => {
    // The view does not cache local entries; the ownership rule holds on its own as well.
    const ops = planSlots(
      [slotId("fdb", keyOf(LOCAL_FDB))],
      planInput(desiredOf([]), tableOf([LOCAL_FDB])),
      VXLAN_SCOPE,
    );
    expect(ops).toEqual([]);
  });

  it("converges from a messy kernel in one round, for many peers", () => {
    const desired = desiredOf(Array.from({ length: 50 }, (_, i) => tunnel(i + 2)));
    // Half the peers present, some with old public IPs or MACs, plus leftovers of vanished peers.
    const messy = tableOf([
      ...Array.from({ length: 25 }, (_, i) =>
        i % 3 === 0
          ? tunnel(i + 2, `198.18.0.${i + 100}`)
          : i % 3 === 1
            ? tunnel(i + 2, `198.18.0.${i + 2}`, vtepMac(i + 150))
            : tunnel(i + 2),
      ).flat(),
      ...Array.from({ length: 10 }, (_, i) => tunnel(i + 200)).flat(),
    ]);
    const ops = planKernel(desired, messy, VXLAN_SCOPE);
    applyOps(messy, ops);
    expect(planKernel(desired, messy, VXLAN_SCOPE)).toEqual([]);
    expect(messy.count("route")).toBe(50);
    expect(messy.count("neigh")).toBe(50);
    expect(messy.count("fdb")).toBe(50);
  });
});

describe("planSlots", () => {
  it("plans the given slots only: a peer change costs that peer's objects", () => {
    const desired = desiredOf([tunnel(2)]);
    // Peer 9 is stale in the kernel and peer 2 is missing; only peer 3's slots are planned.
    const kernel = tableOf([...tunnel(9)]);
    const touched = desired.set("peer 3", "0003", tunnel(3));
    const ops = planSlots(touched, planInput(desired, viewOf(kernel)), VXLAN_SCOPE);
    expect(ops.map(summary)).toEqual([
      "fdb replace 0a:00:00:00:00:03 198.18.0.3",
      "neigh replace 10.244.3.0 0a:00:00:00:00:03",
      "route replace 10.244.3.0/24 via 10.244.3.0",
    ]);
  });

  it("adds nothing for slots in sync, and orders the slots it is given by phase", () => {
    const desired = desiredOf([tunnel(2)]);
    const kernel = tableOf([...tunnel(2), ...tunnel(9)]);
    const input = planInput(desired, viewOf(kernel));
    const slots = [...tunnel(2), ...tunnel(9)].reverse().map((object) => slotId(object.kind, keyOf(object)));
    expect(planSlots(slots, input, VXLAN_SCOPE).map(summary)).toEqual([
      "route delete 10.244.9.0/24",
      "fdb delete 0a:00:00:00:00:09 198.18.0.9",
      "neigh delete 10.244.9.0",
    ]);
  });

  it("planAll visits every desired and every cached slot once, though a slot in both is listed twice", () => {
    const desired = desiredOf([tunnel(2)]);
    const input = planInput(desired, viewOf(tableOf([...tunnel(2), direct(8)])));
    expect(planAll(input, VXLAN_SCOPE).map(summary)).toEqual(["route delete 10.244.8.0/24"]);
  });
});

describe("DesiredState", () => {
  const neighbourFor = (mac: string): Neighbour =>
    permanentNeighbour({ family: 4, dev: DEV, dst: "10.244.2.0", lladdr: mac });
  const SLOT = slotId("neigh", `${DEV} 10.244.2.0`);

  it("gives a contested slot to the lowest rank, whatever the order the contributors came in", () => {
    const lowFirst = new DesiredState();
    lowFirst.set("peer a", "0001", [neighbourFor(vtepMac(1))]);
    lowFirst.set("peer b", "0002", [neighbourFor(vtepMac(2))]);
    const highFirst = new DesiredState();
    highFirst.set("peer b", "0002", [neighbourFor(vtepMac(2))]);
    highFirst.set("peer a", "0001", [neighbourFor(vtepMac(1))]);
    for (const desired of [lowFirst, highFirst]) {
      expect(desired.get("neigh", `${DEV} 10.244.2.0`)).toEqual(neighbourFor(vtepMac(1)));
      expect(desired.count("neigh")).toBe(1);
    }
  });

  it("hands the slot to the next contributor when the winner leaves, and reports the slot touched", () => {
    const desired = new DesiredState();
    desired.set("peer a", "0001", [neighbourFor(vtepMac(1))]);
    desired.set("peer b", "0002", [neighbourFor(vtepMac(2))]);
    expect(desired.remove("peer a")).toEqual([SLOT]);
    expect(desired.get("neigh", `${DEV} 10.244.2.0`)).toEqual(neighbourFor(vtepMac(2)));
    expect(desired.remove("peer b")).toEqual([SLOT]);
    expect(desired.get("neigh", `${DEV} 10.244.2.0`)).toBeUndefined();
    expect([...desired.keys("neigh")]).toEqual([]);
    expect(desired.remove("peer b")).toEqual([]);
  });

  it("reports a contest only while contributors disagree", () => {
    const desired = new DesiredState();
    desired.set("peer a", "0001", [neighbourFor(vtepMac(1))]);
    desired.set("peer c", "0003", [neighbourFor(vtepMac(1))]);
    expect(desired.contest("neigh", `${DEV} 10.244.2.0`)).toBeUndefined();
    desired.set("peer b", "0002", [neighbourFor(vtepMac(2))]);
    expect(desired.contest("neigh", `${DEV} 10.244.2.0`)).toEqual({
      slot: SLOT,
      winner: "peer a",
      losers: ["peer b"],
    });
    desired.remove("peer b");
    expect(desired.contest("neigh", `${DEV} 10.244.2.0`)).toBeUndefined();
    expect(desired.contest("neigh", `${DEV} 10.244.99.0`)).toBeUndefined();
  });

  it("replaces what a contributor wanted before, touching the old slots and the new", () => {
    const desired = new DesiredState();
    desired.set("peer 2", "0002", tunnel(2));
    const touched = desired.set("peer 2", "0002", [direct(2)]);
    expect([...touched].sort()).toEqual(
      ["fdb|flannel.1 0a:00:00:00:00:02", "neigh|flannel.1 10.244.2.0", "route|10.244.2.0/24"].sort(),
    );
    expect(desired.get("route", "10.244.2.0/24")).toEqual(direct(2));
    expect(desired.get("fdb", `${DEV} ${vtepMac(2)}`)).toBeUndefined();
    expect(desired.count("fdb")).toBe(0);
    // Wanting nothing is leaving.
    expect(desired.set("peer 2", "0002", [])).toEqual(["route|10.244.2.0/24"]);
    expect(desired.count("route")).toBe(0);
  });

  it("clear forgets every contributor", () => {
    const desired = desiredOf([tunnel(2), tunnel(3)]);
    desired.clear();
    expect(desired.count("route") + desired.count("neigh") + desired.count("fdb")).toBe(0);
    expect(desired.remove("peer 0")).toEqual([]);
  });
});
