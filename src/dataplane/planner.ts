// The pure planner: for a set of slots (kind + key), the desired object and the kernel's objects in
// each → the minimal operations, in the phase order of kinds/index.ts. A peer change plans only its
// own slots; start-up and resync plan every slot. Applying the plan and planning again yields [].
import { KIND_NAMES, PHASES, planSlot, slotOf, type OwnershipScope, type PlannedOp } from "./kinds/index.js";
import type { KernelObject, ObjectKind } from "./objects.js";

/** What the planner reads: the desired object of a slot and the kernel's objects in it. */
export interface PlanInput {
  desired(kind: ObjectKind, key: string): KernelObject | undefined;
  actual(kind: ObjectKind, key: string): readonly KernelObject[];
  /** Every key of the kind that has a desired object or kernel objects (for whole-state plans). */
  keys(kind: ObjectKind): Iterable<string>;
}

/** Phase index by kind and action, so placing an op costs a lookup. */
const PHASE_OF = new Map(PHASES.map(([kind, action], index) => [`${kind} ${action}`, index]));

function place(buckets: PlannedOp[][], ops: readonly PlannedOp[]): void {
  for (const op of ops) buckets[PHASE_OF.get(`${op.object.kind} ${op.action}`) ?? 0]?.push(op);
}

/** The ops for the given slots (ids from slotId), ordered by phase; slots in sync add nothing. */
export function planSlots(slotIds: Iterable<string>, input: PlanInput, scope: OwnershipScope): PlannedOp[] {
  const buckets: PlannedOp[][] = PHASES.map(() => []);
  for (const id of slotIds) {
    const { kind, key } = slotOf(id);
    place(buckets, planSlot(kind, input.desired(kind, key), input.actual(kind, key), scope));
  }
  return buckets.flat();
}

/**
 * The ops that bring the whole kernel view to the whole desired state: every key of every kind, each
 * once, walked kind by kind (no slot ids to build and parse: a cold start plans 15,000 slots).
 */
export function planAll(input: PlanInput, scope: OwnershipScope): PlannedOp[] {
  const buckets: PlannedOp[][] = PHASES.map(() => []);
  for (const kind of KIND_NAMES) {
    const seen = new Set<string>();
    for (const key of input.keys(kind)) {
      if (seen.has(key)) continue;
      seen.add(key);
      place(buckets, planSlot(kind, input.desired(kind, key), input.actual(kind, key), scope));
    }
  }
  return buckets.flat();
}
