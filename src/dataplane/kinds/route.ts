// Routes. Key: the destination (the kernel view holds main-table routes only). Owned: our protocol
// number. A replace takes the place of the route with the same destination and metric, whoever
// installed it (that is how flannel's routes are taken over in a migration); any other owned route on
// the destination is removed, so exactly one route of ours remains.
import { MAIN_TABLE, type Route } from "../objects.js";
import type { Kind, PlannedOp } from "./kind.js";

const PROTOCOL_NAMES: Readonly<Record<number, string>> = { 2: "kernel", 3: "boot", 4: "static", 16: "dhcp" };

function protocolText(protocol: number): string {
  return `proto ${PROTOCOL_NAMES[protocol] ?? String(protocol)}`;
}

function describeRoute(route: Route): string {
  const parts = [`route ${route.dst}`];
  if (route.type !== "unicast") parts.push(route.type);
  if (route.multipath) parts.push("multipath");
  if (route.gateway !== undefined) parts.push(`via ${route.gateway}`);
  if (route.dev !== undefined) parts.push(`dev ${route.dev}`);
  if (route.onlink) parts.push("onlink");
  parts.push(protocolText(route.protocol));
  if (route.metric !== 0) parts.push(`metric ${route.metric}`);
  return parts.join(" ");
}

/** The route part of a description, without the leading "route <dst>". */
function shape(route: Route): string {
  return describeRoute(route).slice(`route ${route.dst} `.length);
}

/** An owned route already doing exactly what `want` asks. */
function satisfies(route: Route, want: Route): boolean {
  return (
    route.type === want.type &&
    !route.multipath &&
    route.gateway === want.gateway &&
    route.dev === want.dev &&
    route.onlink === want.onlink &&
    route.metric === want.metric
  );
}

function differences(route: Route, want: Route): string {
  const diffs: string[] = [];
  if (route.type !== want.type) diffs.push(`type ${route.type} → ${want.type}`);
  if (route.multipath) diffs.push("multipath → single hop");
  if (route.gateway !== want.gateway)
    diffs.push(`gateway ${route.gateway ?? "none"} → ${want.gateway ?? "none"}`);
  if (route.dev !== want.dev) diffs.push(`dev ${route.dev ?? "none"} → ${want.dev ?? "none"}`);
  if (route.onlink !== want.onlink) diffs.push(`onlink ${route.onlink ? "on → off" : "off → on"}`);
  return `differs: ${diffs.join(", ")}`;
}

/** Whether a delete op naming `target` removes `route` (the kernel matches these fields). */
function sameRoute(route: Route, target: Route): boolean {
  return (
    route.dst === target.dst &&
    route.table === target.table &&
    route.metric === target.metric &&
    route.protocol === target.protocol &&
    route.type === target.type &&
    route.gateway === target.gateway &&
    route.dev === target.dev
  );
}

export const routeKind: Kind<Route> = {
  name: "route",
  key: (route) => route.dst,
  cached: (route) => route.table === MAIN_TABLE,
  owned: (route, scope) => route.protocol === scope.routeProtocol,

  plan(want, here, scope) {
    const owned = (route: Route): boolean => route.protocol === scope.routeProtocol;
    const ops: PlannedOp[] = [];
    const drop = (route: Route, reason: string): void => {
      ops.push({ action: "delete", object: route, reason });
    };
    if (want === undefined) {
      for (const route of here) if (owned(route)) drop(route, "stale: no such peer");
      return ops;
    }
    const exact = here.find((route) => owned(route) && satisfies(route, want));
    if (exact !== undefined) {
      for (const route of here) {
        if (route !== exact && owned(route)) drop(route, `duplicate of the desired route (${shape(route)})`);
      }
      return ops;
    }
    // The replace overwrites the route on this destination with the same metric, whoever made it.
    const front = here.find((route) => route.metric === want.metric);
    let reason: string;
    if (front === undefined) {
      const foreign = here.filter((route) => !owned(route));
      reason =
        foreign.length === 0
          ? "missing"
          : `missing; foreign route (${foreign.map(shape).join("; ")}) left in place`;
    } else if (owned(front)) {
      reason = differences(front, want);
    } else {
      reason = `missing; takes over foreign route (${shape(front)})`;
    }
    ops.push({ action: "replace", object: want, reason });
    // Other owned routes on this destination would survive the replace (another metric).
    for (const route of here) {
      if (route !== front && owned(route)) drop(route, `stale: ${shape(route)} (ours carry no metric)`);
    }
    return ops;
  },

  afterWrite(op, before) {
    if (op.action === "delete") {
      const index = before.findIndex((route) => sameRoute(route, op.object));
      return index < 0 ? [...before] : before.filter((_, i) => i !== index);
    }
    const replaced = before.findIndex((route) => route.metric === op.object.metric);
    return [...before.filter((_, i) => i !== replaced), op.object];
  },

  describe: describeRoute,
};
