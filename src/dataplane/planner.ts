// The pure planner: desired state + what the kernel reports → the minimal ordered list of operations.
// Only owned objects are ever changed or removed: main-table routes carrying our route protocol, and
// PERMANENT neighbour/FDB entries on our VXLAN device. Applying the plan and planning again yields [].
import type { FdbEntry, Neighbour, Route } from "./kernel/read.js";
import {
  MAIN_TABLE,
  type DesiredFdb,
  type DesiredNeighbour,
  type DesiredRoute,
  type DesiredState,
} from "./model.js";

/** What the kernel reported, as read by src/dataplane/kernel/read.ts. */
export interface ActualState {
  /** IPv4 routes of the main table (routes of other tables are ignored). */
  readonly routes: readonly Route[];
  /** Neighbour entries of the VXLAN device ([] for host-gw). */
  readonly neighbours: readonly Neighbour[];
  /** FDB entries of the VXLAN device ([] for host-gw). */
  readonly fdb: readonly FdbEntry[];
}

export interface OwnershipScope {
  /** Routes with this protocol are ours (TWILL_ROUTE_PROTOCOL). */
  readonly routeProtocol: number;
  /** The VXLAN device whose PERMANENT neighbour and FDB entries are ours; undefined for host-gw. */
  readonly vxlanDev: string | undefined;
  /**
   * false = add/repair only, never delete (for a round whose desired state may be incomplete, e.g.
   * before the peer list has been read once). Default true.
   */
  readonly prune?: boolean;
}

/** An existing route, identified precisely enough that deleting it can only hit that route. */
export interface RouteRef {
  readonly dst: string;
  readonly gateway?: string;
  readonly dev?: string;
  /** Omitted for metric 0. */
  readonly metric?: number;
  /** Route type as read ("unicast", "blackhole", …). */
  readonly type: string;
}

export interface NeighbourRef {
  readonly dev: string;
  readonly dst: string;
  /** As read, for logs only. */
  readonly lladdr?: string;
}

export type Op =
  | {
      readonly kind: "route";
      readonly action: "replace";
      readonly route: DesiredRoute;
      readonly reason: string;
    }
  | { readonly kind: "route"; readonly action: "delete"; readonly route: RouteRef; readonly reason: string }
  | {
      readonly kind: "neigh";
      readonly action: "replace";
      readonly neigh: DesiredNeighbour;
      readonly reason: string;
    }
  | {
      readonly kind: "neigh";
      readonly action: "delete";
      readonly neigh: NeighbourRef;
      readonly reason: string;
    }
  | {
      readonly kind: "fdb";
      readonly action: "replace" | "delete";
      readonly fdb: DesiredFdb;
      readonly reason: string;
    };

const STALE = "stale: no such peer";

const PROTOCOL_NAMES: Readonly<Record<number, string>> = { 2: "kernel", 3: "boot", 4: "static", 16: "dhcp" };

function protocolText(protocol: number): string {
  const name = PROTOCOL_NAMES[protocol];
  return name === undefined ? `proto ${protocol}` : `proto ${name}`;
}

function metricOf(route: Route): number {
  return route.metric ?? 0;
}

function describeRoute(route: Route): string {
  const parts: string[] = [];
  if (route.type !== "unicast") parts.push(route.type);
  if (route.gateway !== undefined) parts.push(`via ${route.gateway}`);
  if (route.dev !== undefined) parts.push(`dev ${route.dev}`);
  if (route.onlink) parts.push("onlink");
  parts.push(protocolText(route.protocol));
  if (metricOf(route) !== 0) parts.push(`metric ${metricOf(route)}`);
  return parts.join(" ");
}

function routeRef(route: Route): RouteRef {
  return {
    dst: route.dst,
    type: route.type,
    ...(route.gateway === undefined ? {} : { gateway: route.gateway }),
    ...(route.dev === undefined ? {} : { dev: route.dev }),
    ...(metricOf(route) === 0 ? {} : { metric: metricOf(route) }),
  };
}

/** An owned route already doing exactly what `want` asks (twill never sets a metric). */
function routeMatches(route: Route, want: DesiredRoute): boolean {
  return (
    route.type === "unicast" &&
    route.gateway === want.gateway &&
    route.dev === want.dev &&
    route.onlink === want.onlink &&
    metricOf(route) === 0
  );
}

function routeDifferences(route: Route, want: DesiredRoute): string {
  const diffs: string[] = [];
  if (route.type !== "unicast") diffs.push(`type ${route.type} → unicast`);
  if (route.gateway !== want.gateway) diffs.push(`gateway ${route.gateway ?? "none"} → ${want.gateway}`);
  if (route.dev !== want.dev) diffs.push(`dev ${route.dev ?? "none"} → ${want.dev}`);
  if (route.onlink !== want.onlink) diffs.push(`onlink ${route.onlink ? "on → off" : "off → on"}`);
  return `differs: ${diffs.join(", ")}`;
}

function firstBy<T>(items: readonly T[], key: (item: T) => string): Map<string, T> {
  const map = new Map<string, T>();
  for (const item of items) {
    const k = key(item);
    if (!map.has(k)) map.set(k, item);
  }
  return map;
}

function groupBy<T>(items: Iterable<T>, key: (item: T) => string): Map<string, T[]> {
  const map = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = map.get(k);
    if (list === undefined) map.set(k, [item]);
    else list.push(item);
  }
  return map;
}

interface Buckets {
  routeDeletes: Op[];
  fdbDeletes: Op[];
  fdbReplaces: Op[];
  neighDeletes: Op[];
  neighReplaces: Op[];
  routeReplaces: Op[];
}

function planRoutes(
  desired: readonly DesiredRoute[],
  actual: readonly Route[],
  scope: OwnershipScope,
  out: Buckets,
): void {
  const owned = (r: Route): boolean => r.protocol === scope.routeProtocol;
  const byDst = groupBy(
    actual.filter((r) => r.table === MAIN_TABLE),
    (r) => r.dst,
  );
  const wanted = firstBy(desired, (r) => r.dst);
  const drop = (route: Route, reason: string): void => {
    out.routeDeletes.push({ kind: "route", action: "delete", route: routeRef(route), reason });
  };

  for (const want of wanted.values()) {
    const here = byDst.get(want.dst) ?? [];
    const exact = here.find((r) => owned(r) && routeMatches(r, want));
    if (exact !== undefined) {
      for (const r of here) {
        if (r !== exact && owned(r)) drop(r, `duplicate of the desired route (${describeRoute(r)})`);
      }
      continue;
    }
    // `route replace` overwrites the metric-0 route on this dst, whoever installed it.
    const front = here.find((r) => metricOf(r) === 0);
    let reason: string;
    if (front === undefined) {
      const foreign = here.filter((r) => !owned(r));
      reason =
        foreign.length === 0
          ? "missing"
          : `missing; foreign route (${foreign.map(describeRoute).join("; ")}) left in place`;
    } else if (owned(front)) {
      reason = routeDifferences(front, want);
    } else {
      reason = `missing; takes over foreign route (${describeRoute(front)})`;
    }
    out.routeReplaces.push({ kind: "route", action: "replace", route: want, reason });
    // Other owned routes on this dst would survive the replace (other metric, or appended twins).
    for (const r of here) {
      if (r !== front && owned(r)) drop(r, `stale: ${describeRoute(r)} (ours carry no metric)`);
    }
  }

  for (const [dst, routes] of byDst) {
    if (wanted.has(dst)) continue;
    for (const r of routes) if (owned(r)) drop(r, STALE);
  }
}

function isPermanent(n: Neighbour): boolean {
  return n.state.includes("PERMANENT");
}

const neighKey = (n: { dev: string; dst: string }): string => `${n.dev} ${n.dst}`;

function planNeighbours(
  desired: readonly DesiredNeighbour[],
  actual: readonly Neighbour[],
  scope: OwnershipScope,
  out: Buckets,
): void {
  const have = firstBy(actual, neighKey);
  const wanted = firstBy(desired, neighKey);
  for (const want of wanted.values()) {
    const entry = have.get(neighKey(want));
    const lladdr = entry?.lladdr?.toLowerCase();
    let reason: string | undefined;
    if (entry === undefined) reason = "missing";
    else if (!isPermanent(entry)) reason = `not permanent (${entry.state.join(",") || "no state"})`;
    else if (lladdr !== want.lladdr.toLowerCase())
      reason = `differs: lladdr ${lladdr ?? "none"} → ${want.lladdr}`;
    if (reason !== undefined)
      out.neighReplaces.push({ kind: "neigh", action: "replace", neigh: want, reason });
  }
  for (const entry of actual) {
    // Non-permanent entries are the kernel's own (ARP/NDP); only PERMANENT ones on our device are ours.
    if (entry.dev !== scope.vxlanDev || !isPermanent(entry) || wanted.has(neighKey(entry))) continue;
    const neigh: NeighbourRef = {
      dev: entry.dev,
      dst: entry.dst,
      ...(entry.lladdr === undefined ? {} : { lladdr: entry.lladdr }),
    };
    out.neighDeletes.push({ kind: "neigh", action: "delete", neigh, reason: STALE });
  }
}

const fdbKey = (e: { dev: string; mac: string }): string => `${e.dev} ${e.mac.toLowerCase()}`;

function planFdb(
  desired: readonly DesiredFdb[],
  actual: readonly FdbEntry[],
  scope: OwnershipScope,
  out: Buckets,
): void {
  // Entries without dst are the device's own (local) entries; master entries belong to a bridge.
  const remotes = actual.filter((e) => e.dst !== undefined && e.master === undefined);
  const have = groupBy(remotes, fdbKey);
  const wanted = firstBy(desired, fdbKey);
  for (const want of wanted.values()) {
    const entries = have.get(fdbKey(want)) ?? [];
    const same = entries.find((e) => e.dst === want.dst);
    let reason: string | undefined;
    if (same?.state === "permanent") continue;
    if (same !== undefined) reason = `not permanent (${same.state})`;
    else if (entries.length === 0) reason = "missing";
    // A unicast MAC has exactly one remote on a vxlan device; replace rewrites its dst in place.
    else reason = `differs: dst ${entries.map((e) => e.dst).join(",")} → ${want.dst}`;
    out.fdbReplaces.push({ kind: "fdb", action: "replace", fdb: want, reason });
  }
  for (const entry of remotes) {
    if (entry.dev !== scope.vxlanDev || entry.state !== "permanent" || entry.dst === undefined) continue;
    if (wanted.has(fdbKey(entry))) continue;
    out.fdbDeletes.push({
      kind: "fdb",
      action: "delete",
      fdb: { dev: entry.dev, mac: entry.mac.toLowerCase(), dst: entry.dst },
      reason: "stale: no peer has this VTEP MAC",
    });
  }
}

/**
 * The operations that turn `actual` into `desired`, in a safe order: route deletes first (traffic to gone
 * peers stops before their entries vanish), then FDB, then neighbours, then route replaces last — as
 * flannel does, so the kernel never ARPs for an onlink gateway it has no neighbour entry for yet.
 */
export function plan(desired: DesiredState, actual: ActualState, scope: OwnershipScope): Op[] {
  const out: Buckets = {
    routeDeletes: [],
    fdbDeletes: [],
    fdbReplaces: [],
    neighDeletes: [],
    neighReplaces: [],
    routeReplaces: [],
  };
  planRoutes(desired.routes, actual.routes, scope, out);
  planNeighbours(desired.neighbours, actual.neighbours, scope, out);
  planFdb(desired.fdb, actual.fdb, scope, out);
  const prune = scope.prune ?? true;
  return [
    ...(prune ? out.routeDeletes : []),
    ...(prune ? out.fdbDeletes : []),
    ...out.fdbReplaces,
    ...(prune ? out.neighDeletes : []),
    ...out.neighReplaces,
    ...out.routeReplaces,
  ];
}
