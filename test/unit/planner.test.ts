import { describe, it, expect } from "vitest";
import type { FdbEntry, Neighbour, Route } from "../../src/dataplane/kernel/read.js";
import type { DesiredFdb, DesiredNeighbour, DesiredRoute, DesiredState } from "../../src/dataplane/model.js";
import { TWILL_ROUTE_PROTOCOL } from "../../src/dataplane/model.js";
import { plan, type ActualState, type Op, type OwnershipScope } from "../../src/dataplane/planner.js";

const P = TWILL_ROUTE_PROTOCOL;
const DEV = "flannel.1";
const VXLAN_SCOPE: OwnershipScope = { routeProtocol: P, vxlanDev: DEV };
const HOSTGW_SCOPE: OwnershipScope = { routeProtocol: P, vxlanDev: undefined };
const mac = (n: number): string => `0a:00:00:00:00:${n.toString(16).padStart(2, "0")}`;

// ---- builders for desired and kernel objects -----------------------------------------------------

/** The desired vxlan triple for peer n (public IP 198.18.0.<n> unless given). */
function peerDesired(n: number, publicIP = `198.18.0.${n}`, vtep = mac(n)): DesiredState {
  const gw = `10.244.${n}.0`;
  return {
    routes: [{ dst: `${gw}/24`, gateway: gw, dev: DEV, onlink: true }],
    neighbours: [{ dev: DEV, dst: gw, lladdr: vtep }],
    fdb: [{ dev: DEV, mac: vtep, dst: publicIP }],
  };
}

function merge(...parts: DesiredState[]): DesiredState {
  return {
    routes: parts.flatMap((p) => p.routes),
    neighbours: parts.flatMap((p) => p.neighbours),
    fdb: parts.flatMap((p) => p.fdb),
  };
}

const EMPTY: DesiredState = { routes: [], neighbours: [], fdb: [] };

function kRoute(
  dst: string,
  gateway: string | undefined,
  dev: string | undefined,
  over: Partial<Route> = {},
): Route {
  const onlink = over.onlink ?? false;
  return {
    dst,
    ...(gateway === undefined ? {} : { gateway }),
    ...(dev === undefined ? {} : { dev }),
    protocol: P,
    scope: 0,
    table: 254,
    type: "unicast",
    onlink,
    flags: onlink ? ["onlink"] : [],
    ...over,
  };
}

function kNeigh(dst: string, lladdr: string, state = ["PERMANENT"]): Neighbour {
  return { dst, dev: DEV, lladdr, state };
}

function kFdb(m: string, dst: string | undefined, state = "permanent"): FdbEntry {
  return { mac: m, dev: DEV, ...(dst === undefined ? {} : { dst }), flags: ["self"], state };
}

/** What the kernel holds once the desired state has been applied by twill. */
function kernelOf(desired: DesiredState): ActualState {
  return {
    routes: desired.routes.map((r) => kRoute(r.dst, r.gateway, r.dev, { onlink: r.onlink })),
    neighbours: desired.neighbours.map((n) => kNeigh(n.dst, n.lladdr)),
    fdb: desired.fdb.map((f) => kFdb(f.mac, f.dst)),
  };
}

const UNDERLAY_ROUTE = kRoute("198.18.0.0/24", undefined, "eth0", { protocol: 2, scope: 253 });
const LOCAL_FDB = kFdb("0a:00:00:00:00:01", undefined); // the device's own entry, no dst

// ---- a pure model of what the kernel does with each op (semantics verified with iproute2 6.1) ---------

function applyOps(actual: ActualState, ops: readonly Op[]): ActualState {
  let routes = [...actual.routes];
  let neighbours = [...actual.neighbours];
  let fdb = [...actual.fdb];
  for (const op of ops) {
    if (op.kind === "route" && op.action === "replace") {
      const r: DesiredRoute = op.route;
      // replace overwrites the route with the same dst and metric 0, whatever its protocol.
      routes = routes.filter((x) => !(x.table === 254 && x.dst === r.dst && (x.metric ?? 0) === 0));
      routes.push(kRoute(r.dst, r.gateway, r.dev, { onlink: r.onlink }));
    } else if (op.kind === "route") {
      const ref = op.route;
      const i = routes.findIndex(
        (x) =>
          x.dst === ref.dst &&
          x.protocol === P &&
          (ref.gateway === undefined || x.gateway === ref.gateway) &&
          (ref.dev === undefined || x.dev === ref.dev) &&
          (ref.metric === undefined || x.metric === ref.metric),
      );
      if (i < 0) throw new Error(`route del would fail: ${JSON.stringify(ref)}`);
      routes.splice(i, 1);
    } else if (op.kind === "neigh" && op.action === "replace") {
      const n: DesiredNeighbour = op.neigh;
      neighbours = neighbours.filter((x) => !(x.dev === n.dev && x.dst === n.dst));
      neighbours.push(kNeigh(n.dst, n.lladdr));
    } else if (op.kind === "neigh") {
      const before = neighbours.length;
      neighbours = neighbours.filter((x) => !(x.dev === op.neigh.dev && x.dst === op.neigh.dst));
      if (neighbours.length === before) throw new Error(`neigh del would fail: ${op.neigh.dst}`);
    } else if (op.action === "replace") {
      const f: DesiredFdb = op.fdb;
      // A unicast MAC has one remote: replace rewrites its dst (and state) in place.
      const i = fdb.findIndex((x) => x.dev === f.dev && x.mac === f.mac && x.dst !== undefined);
      if (i >= 0) fdb.splice(i, 1, kFdb(f.mac, f.dst));
      else fdb.push(kFdb(f.mac, f.dst));
    } else {
      const f = op.fdb;
      if (!fdb.some((x) => x.dev === f.dev && x.mac === f.mac))
        throw new Error(`fdb del would fail: ${f.mac}`);
      // With a non-matching dst the kernel answers 0 and keeps the entry.
      fdb = fdb.filter((x) => !(x.dev === f.dev && x.mac === f.mac && x.dst === f.dst));
    }
  }
  return { routes, neighbours, fdb };
}

/** "route replace 10.244.2.0/24" style summaries, to compare plans at a glance. */
function summary(ops: readonly Op[]): string[] {
  return ops.map((op) => {
    switch (op.kind) {
      case "route":
        return `route ${op.action} ${op.route.dst}${op.action === "replace" ? ` via ${op.route.gateway}` : ""}`;
      case "neigh":
        return `neigh ${op.action} ${op.neigh.dst}${op.action === "replace" ? ` ${op.neigh.lladdr}` : ""}`;
      case "fdb":
        return `fdb ${op.action} ${op.fdb.mac} ${op.fdb.dst}`;
    }
  });
}

// ---- table -------------------------------------------------------------------------------------------

interface Case {
  name: string;
  desired: DesiredState;
  actual: ActualState;
  scope?: OwnershipScope;
  ops: string[];
  /** Reason pattern per op index. */
  reasons?: Record<number, RegExp>;
}

const withUnderlay = (a: ActualState): ActualState => ({
  ...a,
  routes: [UNDERLAY_ROUTE, ...a.routes],
  fdb: [LOCAL_FDB, ...a.fdb],
});

const cases: Case[] = [
  {
    name: "add: empty kernel → FDB, neighbour, then route",
    desired: peerDesired(2),
    actual: withUnderlay({ routes: [], neighbours: [], fdb: [] }),
    ops: [
      "fdb replace 0a:00:00:00:00:02 198.18.0.2",
      "neigh replace 10.244.2.0 0a:00:00:00:00:02",
      "route replace 10.244.2.0/24 via 10.244.2.0",
    ],
    reasons: { 0: /^missing$/, 1: /^missing$/, 2: /^missing$/ },
  },
  {
    name: "adopt-existing: kernel already correct → no ops",
    desired: merge(peerDesired(2), peerDesired(3)),
    actual: withUnderlay(kernelOf(merge(peerDesired(2), peerDesired(3)))),
    ops: [],
  },
  {
    name: "adopt-existing: MACs read in upper case still match",
    desired: peerDesired(2),
    actual: {
      routes: kernelOf(peerDesired(2)).routes,
      neighbours: [kNeigh("10.244.2.0", "0A:00:00:00:00:02")],
      fdb: [kFdb("0A:00:00:00:00:02", "198.18.0.2")],
    },
    ops: [],
  },
  {
    name: "change: peer VTEP MAC changed → old FDB deleted, new FDB, neighbour replaced",
    desired: peerDesired(2, "198.18.0.2", mac(0x22)),
    actual: withUnderlay(kernelOf(peerDesired(2))),
    ops: [
      "fdb delete 0a:00:00:00:00:02 198.18.0.2",
      "fdb replace 0a:00:00:00:00:22 198.18.0.2",
      "neigh replace 10.244.2.0 0a:00:00:00:00:22",
    ],
    reasons: { 0: /^stale/, 1: /^missing$/, 2: /^differs: lladdr 0a:00:00:00:00:02 → 0a:00:00:00:00:22$/ },
  },
  {
    name: "change: peer public IP changed → FDB dst rewritten in place (no delete)",
    desired: peerDesired(2, "198.18.0.42"),
    actual: kernelOf(peerDesired(2)),
    ops: ["fdb replace 0a:00:00:00:00:02 198.18.0.42"],
    reasons: { 0: /^differs: dst 198\.18\.0\.2 → 198\.18\.0\.42$/ },
  },
  {
    name: "change: host-gw peer public IP changed → route replaced",
    desired: {
      routes: [{ dst: "10.244.2.0/24", gateway: "198.18.0.42", dev: "eth0", onlink: false }],
      neighbours: [],
      fdb: [],
    },
    actual: { routes: [kRoute("10.244.2.0/24", "198.18.0.2", "eth0")], neighbours: [], fdb: [] },
    scope: HOSTGW_SCOPE,
    ops: ["route replace 10.244.2.0/24 via 198.18.0.42"],
    reasons: { 0: /^differs: gateway 198\.18\.0\.2 → 198\.18\.0\.42$/ },
  },
  {
    name: "change: DirectRouting turned on → vxlan route becomes a plain route, entries removed",
    desired: {
      routes: [{ dst: "10.244.2.0/24", gateway: "198.18.0.2", dev: "eth0", onlink: false }],
      neighbours: [],
      fdb: [],
    },
    actual: kernelOf(peerDesired(2)),
    ops: [
      "fdb delete 0a:00:00:00:00:02 198.18.0.2",
      "neigh delete 10.244.2.0",
      "route replace 10.244.2.0/24 via 198.18.0.2",
    ],
    reasons: {
      2: /^differs: gateway 10\.244\.2\.0 → 198\.18\.0\.2, dev flannel\.1 → eth0, onlink on → off$/,
    },
  },
  {
    name: "remove: peer gone → route, FDB and neighbour deleted (route first)",
    desired: peerDesired(3),
    actual: withUnderlay(kernelOf(merge(peerDesired(2), peerDesired(3)))),
    ops: ["route delete 10.244.2.0/24", "fdb delete 0a:00:00:00:00:02 198.18.0.2", "neigh delete 10.244.2.0"],
    reasons: { 0: /^stale: no such peer$/ },
  },
  {
    name: "garbage-collect: owned leftovers go, foreign routes elsewhere stay, foreign on desired dst is taken over",
    desired: merge(peerDesired(2), peerDesired(3)),
    actual: {
      routes: [
        UNDERLAY_ROUTE,
        kRoute("10.244.9.0/24", "10.244.9.0", DEV, { onlink: true }), // ours, peer vanished while down
        kRoute("10.244.8.0/24", "198.18.0.8", "eth0", { protocol: 3 }), // someone else's: untouched
        kRoute("10.244.3.0/24", "10.244.3.0", DEV, { protocol: 3, onlink: true }), // flannel's: taken over
        kRoute("10.244.2.0/24", "10.244.2.0", DEV, { onlink: true }),
      ],
      neighbours: [
        kNeigh("10.244.2.0", mac(2)),
        kNeigh("10.244.3.0", mac(3)),
        kNeigh("10.244.9.0", mac(9)),
        kNeigh("10.244.77.0", mac(77), ["REACHABLE"]), // kernel-learned: not ours
      ],
      fdb: [LOCAL_FDB, kFdb(mac(2), "198.18.0.2"), kFdb(mac(3), "198.18.0.3"), kFdb(mac(9), "198.18.0.9")],
    },
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
    name: "foreign route with another metric on a desired dst is left in place, said so",
    desired: peerDesired(2),
    actual: {
      ...kernelOf(peerDesired(2)),
      routes: [kRoute("10.244.2.0/24", "198.18.0.99", "eth0", { protocol: 4, metric: 100 })],
    },
    ops: ["route replace 10.244.2.0/24 via 10.244.2.0"],
    reasons: {
      0: /^missing; foreign route \(via 198\.18\.0\.99 dev eth0 proto static metric 100\) left in place$/,
    },
  },
  {
    name: "owned route with a metric on a desired dst is replaced by a metric-0 one and deleted",
    desired: peerDesired(2),
    actual: {
      ...kernelOf(peerDesired(2)),
      routes: [kRoute("10.244.2.0/24", "10.244.2.0", DEV, { onlink: true, metric: 5 })],
    },
    ops: ["route delete 10.244.2.0/24", "route replace 10.244.2.0/24 via 10.244.2.0"],
  },
  {
    name: "non-permanent neighbour on a desired dst is made permanent; FDB not permanent is fixed",
    desired: peerDesired(2),
    actual: {
      routes: kernelOf(peerDesired(2)).routes,
      neighbours: [kNeigh("10.244.2.0", mac(2), ["STALE"])],
      fdb: [kFdb(mac(2), "198.18.0.2", "static")],
    },
    ops: ["fdb replace 0a:00:00:00:00:02 198.18.0.2", "neigh replace 10.244.2.0 0a:00:00:00:00:02"],
    reasons: { 0: /^not permanent \(static\)$/, 1: /^not permanent \(STALE\)$/ },
  },
  {
    name: "entries on other devices and non-permanent FDB entries are never touched",
    desired: EMPTY,
    actual: {
      routes: [],
      neighbours: [{ dst: "10.0.0.1", dev: "eth0", lladdr: mac(1), state: ["PERMANENT"] }],
      fdb: [
        { mac: mac(5), dev: "vxlan0", dst: "198.18.0.5", flags: ["self"], state: "permanent" },
        kFdb(mac(6), "198.18.0.6", "dynamic"),
      ],
    },
    ops: [],
  },
  {
    name: "host-gw: no vxlan device → neighbours and FDB never garbage-collected",
    desired: EMPTY,
    actual: {
      routes: [kRoute("10.244.2.0/24", "198.18.0.2", "eth0")],
      neighbours: [kNeigh("10.244.2.0", mac(2))],
      fdb: [kFdb(mac(2), "198.18.0.2")],
    },
    scope: HOSTGW_SCOPE,
    ops: ["route delete 10.244.2.0/24"],
  },
  {
    name: "prune off: only additions and repairs",
    desired: peerDesired(3),
    actual: kernelOf(peerDesired(2)),
    scope: { ...VXLAN_SCOPE, prune: false },
    ops: [
      "fdb replace 0a:00:00:00:00:03 198.18.0.3",
      "neigh replace 10.244.3.0 0a:00:00:00:00:03",
      "route replace 10.244.3.0/24 via 10.244.3.0",
    ],
  },
  {
    name: "routes of other tables are ignored",
    desired: EMPTY,
    actual: {
      routes: [kRoute("10.244.2.0/24", "198.18.0.2", "eth0", { table: 100 })],
      neighbours: [],
      fdb: [],
    },
    ops: [],
  },
];

describe("plan", () => {
  it.each(cases)("$name", (c) => {
    const scope = c.scope ?? VXLAN_SCOPE;
    const ops = plan(c.desired, c.actual, scope);
    expect(summary(ops)).toEqual(c.ops);
    for (const [i, pattern] of Object.entries(c.reasons ?? {})) {
      expect(ops[Number(i)]?.reason).toMatch(pattern);
    }
    // Idempotence: once applied, the same desired state needs nothing more (prune off keeps leftovers).
    const after = applyOps(c.actual, ops);
    expect(plan(c.desired, after, scope)).toEqual([]);
  });

  it("orders route deletes, FDB, neighbours, route replaces", () => {
    const desired = merge(peerDesired(3), peerDesired(4, "198.18.0.4", mac(0x44)));
    const actual = kernelOf(merge(peerDesired(2), peerDesired(4)));
    const ops = plan(desired, actual, VXLAN_SCOPE);
    expect(ops.map((o) => `${o.kind} ${o.action}`)).toEqual([
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
  });

  it("delete ops identify the route exactly as read", () => {
    const actual: ActualState = {
      routes: [
        kRoute("10.244.9.0/24", "198.18.0.9", "eth0", { metric: 20 }),
        kRoute("10.244.8.0/24", undefined, undefined, { type: "blackhole" }),
      ],
      neighbours: [],
      fdb: [],
    };
    expect(plan(EMPTY, actual, HOSTGW_SCOPE)).toEqual([
      {
        kind: "route",
        action: "delete",
        route: { dst: "10.244.9.0/24", gateway: "198.18.0.9", dev: "eth0", metric: 20, type: "unicast" },
        reason: "stale: no such peer",
      },
      {
        kind: "route",
        action: "delete",
        route: { dst: "10.244.8.0/24", type: "blackhole" },
        reason: "stale: no such peer",
      },
    ]);
  });

  it("duplicate desired objects are planned once", () => {
    const desired = merge(peerDesired(2), peerDesired(2));
    const ops = plan(desired, { routes: [], neighbours: [], fdb: [] }, VXLAN_SCOPE);
    expect(ops).toHaveLength(3);
  });

  it("converges from a messy kernel in one round, for many peers", () => {
    const desired = merge(
      ...Array.from({ length: 50 }, (_, i) => peerDesired(i + 2, `198.18.0.${i + 2}`, mac(i + 2))),
    );
    // Half the peers present, some with old MACs or IPs, plus leftovers of vanished peers.
    const messy = kernelOf(
      merge(
        ...Array.from({ length: 25 }, (_, i) =>
          i % 3 === 0
            ? peerDesired(i + 2, `198.18.0.${i + 100}`)
            : i % 3 === 1
              ? peerDesired(i + 2, `198.18.0.${i + 2}`, mac(i + 150))
              : peerDesired(i + 2),
        ),
        ...Array.from({ length: 10 }, (_, i) => peerDesired(i + 200)),
      ),
    );
    const ops = plan(desired, messy, VXLAN_SCOPE);
    const after = applyOps(messy, ops);
    expect(plan(desired, after, VXLAN_SCOPE)).toEqual([]);
    expect(after.routes).toHaveLength(50);
    expect(after.neighbours).toHaveLength(50);
    expect(after.fdb).toHaveLength(50);
  });
});
