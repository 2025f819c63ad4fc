// Kernel objects grouped by kind and key: the kernel view's storage.
import { keyOf } from "./kinds/index.js";
import type { KernelObject, ObjectKind } from "./objects.js";

export class ObjectTable {
  private readonly kinds = new Map<ObjectKind, Map<string, readonly KernelObject[]>>();

  private of(kind: ObjectKind): Map<string, readonly KernelObject[]> {
    let table = this.kinds.get(kind);
    if (table === undefined) {
      table = new Map();
      this.kinds.set(kind, table);
    }
    return table;
  }

  get(kind: ObjectKind, key: string): readonly KernelObject[] {
    return this.kinds.get(kind)?.get(key) ?? [];
  }

  /** Replaces the objects under one key ([] removes the key). */
  set(kind: ObjectKind, key: string, objects: readonly KernelObject[]): void {
    if (objects.length === 0) this.kinds.get(kind)?.delete(key);
    else this.of(kind).set(key, objects);
  }

  /** Adds one object under its key, replacing an equal one. */
  add(object: KernelObject): void {
    const key = keyOf(object);
    const here = this.get(object.kind, key).filter((o) => !sameObject(o, object));
    this.set(object.kind, key, [...here, object]);
  }

  keys(kind: ObjectKind): IterableIterator<string> {
    return (this.kinds.get(kind) ?? new Map<string, readonly KernelObject[]>()).keys();
  }

  /** Every object of a kind. */
  *objects(kind: ObjectKind): IterableIterator<KernelObject> {
    for (const list of this.kinds.get(kind)?.values() ?? []) yield* list;
  }

  count(kind: ObjectKind): number {
    let n = 0;
    for (const list of this.kinds.get(kind)?.values() ?? []) n += list.length;
    return n;
  }

  clear(kind?: ObjectKind): void {
    if (kind === undefined) this.kinds.clear();
    else this.kinds.delete(kind);
  }
}

/** Field-by-field equality of two kernel objects (they are flat records of primitives). */
export function sameObject(a: KernelObject, b: KernelObject): boolean {
  if (a.kind !== b.kind) return false;
  const left: [string, unknown][] = Object.entries(a);
  const right = new Map<string, unknown>(Object.entries(b));
  return left.length === right.size && left.every(([key, value]) => right.get(key) === value);
}
