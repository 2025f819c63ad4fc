// The kinds of kernel objects twill programs, and typed dispatch from a KernelObject to its kind. A new
// kind (e.g. WireGuard peers) is a module implementing Kind, its object type in objects.ts, and its
// cases here (dispatch and the phase table), in kernel-view.ts (identity) and in the channel's codec.
import type { KernelOp } from "../channel.js";
import type { FdbEntry, KernelObject, Neighbour, ObjectKind, Route } from "../objects.js";
import { fdbKind } from "./fdb.js";
import type { OwnershipScope, PlannedOp } from "./kind.js";
import { neighKind } from "./neigh.js";
import { routeKind } from "./route.js";

export type { Kind, OwnershipScope, PlannedOp } from "./kind.js";
export { nudText } from "./neigh.js";

export const KIND_NAMES: readonly ObjectKind[] = ["route", "neigh", "fdb"];

/**
 * The order of writes: route deletes first (traffic to gone peers stops before their entries vanish),
 * then FDB, then neighbours, and route replaces last — as flannel does, so the kernel never uses an
 * onlink route before the neighbour and FDB entries its gateway needs are in place.
 */
export const PHASES: readonly (readonly [ObjectKind, KernelOp["action"]])[] = [
  ["route", "delete"],
  ["fdb", "delete"],
  ["fdb", "replace"],
  ["neigh", "delete"],
  ["neigh", "replace"],
  ["route", "replace"],
];

const isRoute = (o: KernelObject): o is Route => o.kind === "route";
const isNeigh = (o: KernelObject): o is Neighbour => o.kind === "neigh";
const isFdb = (o: KernelObject): o is FdbEntry => o.kind === "fdb";

function only<T extends KernelObject>(
  o: KernelObject | undefined,
  guard: (o: KernelObject) => o is T,
): T | undefined {
  return o !== undefined && guard(o) ? o : undefined;
}

/** A place in the kernel: one key of one kind. */
export interface Slot {
  readonly kind: ObjectKind;
  readonly key: string;
}

/** The slot as one string, for sets and maps ("route|10.244.5.0/24"); keys never contain "|". */
export function slotId(kind: ObjectKind, key: string): string {
  return `${kind}|${key}`;
}

export function slotOf(id: string): Slot {
  const bar = id.indexOf("|");
  const kind = id.slice(0, bar);
  if (kind !== "route" && kind !== "neigh" && kind !== "fdb") throw new Error(`internal: bad slot id ${id}`);
  return { kind, key: id.slice(bar + 1) };
}

export function keyOf(object: KernelObject): string {
  switch (object.kind) {
    case "route":
      return routeKind.key(object);
    case "neigh":
      return neighKind.key(object);
    case "fdb":
      return fdbKind.key(object);
  }
}

export function slotIdOf(object: KernelObject): string {
  return slotId(object.kind, keyOf(object));
}

export function describeObject(object: KernelObject): string {
  switch (object.kind) {
    case "route":
      return routeKind.describe(object);
    case "neigh":
      return neighKind.describe(object);
    case "fdb":
      return fdbKind.describe(object);
  }
}

/** Whether the kernel view keeps this object. */
export function isCached(object: KernelObject): boolean {
  switch (object.kind) {
    case "route":
      return routeKind.cached(object);
    case "neigh":
      return neighKind.cached(object);
    case "fdb":
      return fdbKind.cached(object);
  }
}

export function isOwned(object: KernelObject, scope: OwnershipScope): boolean {
  switch (object.kind) {
    case "route":
      return routeKind.owned(object, scope);
    case "neigh":
      return neighKind.owned(object, scope);
    case "fdb":
      return fdbKind.owned(object, scope);
  }
}

/** The ops that make one slot right (see Kind.plan). */
export function planSlot(
  kind: ObjectKind,
  desired: KernelObject | undefined,
  actual: readonly KernelObject[],
  scope: OwnershipScope,
): PlannedOp[] {
  // Nothing in the kernel there (every slot of a cold start): every kind writes the desired object.
  if (actual.length === 0)
    return desired === undefined ? [] : [{ action: "replace", object: desired, reason: "missing" }];
  switch (kind) {
    case "route":
      return routeKind.plan(only(desired, isRoute), actual.filter(isRoute), scope);
    case "neigh":
      return neighKind.plan(only(desired, isNeigh), actual.filter(isNeigh), scope);
    case "fdb":
      return fdbKind.plan(only(desired, isFdb), actual.filter(isFdb), scope);
  }
}

/** The kernel objects of the op's slot after the op succeeded, given those before it. */
export function afterWrite(op: KernelOp, before: readonly KernelObject[]): KernelObject[] {
  const object = op.object;
  switch (object.kind) {
    case "route":
      return routeKind.afterWrite({ action: op.action, object }, before.filter(isRoute));
    case "neigh":
      return neighKind.afterWrite({ action: op.action, object }, before.filter(isNeigh));
    case "fdb":
      return fdbKind.afterWrite({ action: op.action, object }, before.filter(isFdb));
  }
}
