// The desired state, kept up to date one contributor at a time: each peer contributes the kernel
// objects it needs, and a slot wanted by several contributors goes to the one with the lowest rank
// (the lowest subnet), so the outcome never depends on the
// order events arrived in. Changing one peer touches only that peer's slots: that is what makes a
// peer event cost O(1) instead of O(peers).
import { keyOf, slotId } from "./kinds/index.js";
import type { KernelObject, ObjectKind } from "./objects.js";
import { sameObject } from "./table.js";

interface Contribution {
  readonly contributor: string;
  readonly rank: string;
  readonly object: KernelObject;
}

/** Several contributors want one slot and disagree: the winner gets it, the others are not programmed. */
export interface Contest {
  readonly slot: string;
  readonly winner: string;
  readonly losers: readonly string[];
}

export class DesiredState {
  private readonly slots = new Map<ObjectKind, Map<string, Contribution[]>>();
  private readonly contributors = new Map<string, { readonly objects: readonly KernelObject[] }>();
  /** Slots wanted by more than one contributor (slot ids). */
  private readonly shared = new Set<string>();

  private table(kind: ObjectKind): Map<string, Contribution[]> {
    let table = this.slots.get(kind);
    if (table === undefined) {
      table = new Map();
      this.slots.set(kind, table);
    }
    return table;
  }

  /**
   * Sets everything `contributor` wants (replacing what it wanted before); returns the ids of the
   * slots whose desired object may have changed.
   */
  set(contributor: string, rank: string, objects: readonly KernelObject[]): string[] {
    const touched = this.withdraw(contributor);
    for (const object of objects) {
      const key = keyOf(object);
      const table = this.table(object.kind);
      const id = slotId(object.kind, key);
      const list = table.get(key);
      if (list === undefined) {
        // The common case: nobody else wants this slot.
        table.set(key, [{ contributor, rank, object }]);
      } else {
        const mine = list.filter((c) => c.contributor !== contributor);
        mine.push({ contributor, rank, object });
        mine.sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0));
        table.set(key, mine);
        if (mine.length > 1) this.shared.add(id);
      }
      touched.add(id);
    }
    if (objects.length > 0) this.contributors.set(contributor, { objects });
    return [...touched];
  }

  /** Removes everything `contributor` wants; returns the touched slot ids. */
  remove(contributor: string): string[] {
    return [...this.withdraw(contributor)];
  }

  private withdraw(contributor: string): Set<string> {
    const touched = new Set<string>();
    const previous = this.contributors.get(contributor);
    if (previous === undefined) return touched;
    this.contributors.delete(contributor);
    for (const object of previous.objects) {
      const key = keyOf(object);
      const table = this.table(object.kind);
      const rest = (table.get(key) ?? []).filter((c) => c.contributor !== contributor);
      const id = slotId(object.kind, key);
      if (rest.length === 0) table.delete(key);
      else table.set(key, rest);
      if (rest.length <= 1) this.shared.delete(id);
      touched.add(id);
    }
    return touched;
  }

  clear(): void {
    this.slots.clear();
    this.contributors.clear();
    this.shared.clear();
  }

  /** Slots more than one contributor wants (contested or not: see contest()). */
  contested(): IterableIterator<string> {
    return this.shared.values();
  }

  /** The object a slot should hold: the lowest-ranked contributor's. */
  get(kind: ObjectKind, key: string): KernelObject | undefined {
    return this.slots.get(kind)?.get(key)?.[0]?.object;
  }

  keys(kind: ObjectKind): IterableIterator<string> {
    return (this.slots.get(kind) ?? new Map<string, Contribution[]>()).keys();
  }

  /** Slots of a kind with a desired object. */
  count(kind: ObjectKind): number {
    return this.slots.get(kind)?.size ?? 0;
  }

  /** The contributors a slot's winner beat, when they wanted something else there; undefined if none. */
  contest(kind: ObjectKind, key: string): Contest | undefined {
    const list = this.slots.get(kind)?.get(key);
    const winner = list?.[0];
    if (list === undefined || winner === undefined) return undefined;
    const losers = list.slice(1).filter((c) => !sameObject(c.object, winner.object));
    if (losers.length === 0) return undefined;
    return { slot: slotId(kind, key), winner: winner.contributor, losers: losers.map((c) => c.contributor) };
  }
}
