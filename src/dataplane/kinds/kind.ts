// What every kind of kernel object tells the generic planner and the cache: its key, what the cache
// keeps of it, which objects are twill's own, what makes a kernel object satisfy a desired one, the
// operations that bring one key to the desired state, and how the kernel changes when such an
// operation succeeds (so a write can patch the cache, and a fake kernel can behave like the real one).
import type { KernelOp } from "../channel.js";
import type { KernelObject } from "../objects.js";

/** What twill may change or remove. */
export interface OwnershipScope {
  /** Routes with this protocol are ours. */
  readonly routeProtocol: number;
  /** Devices whose PERMANENT neighbour and FDB entries are ours (the backend's own devices). */
  readonly devices: ReadonlySet<string>;
}

/** An operation with the reason the planner chose it, for logs ("missing", "stale: no such peer"). */
export interface PlannedOp extends KernelOp {
  readonly reason: string;
}

export interface Kind<T extends KernelObject> {
  readonly name: T["kind"];
  /** Identity within the kind: objects with the same key compete for one place in the kernel. */
  key(object: T): string;
  /** Whether the kernel view keeps this object at all (e.g. FDB: remote entries only). */
  cached(object: T): boolean;
  /** Whether twill owns (may change or remove) this kernel object. */
  owned(object: T, scope: OwnershipScope): boolean;
  /**
   * The operations that make one key right: `desired` is what twill wants there (undefined = nothing),
   * `actual` every kernel object under that key. Owned objects that are not wanted are removed;
   * foreign ones are left alone unless a replace takes their place.
   */
  plan(desired: T | undefined, actual: readonly T[], scope: OwnershipScope): PlannedOp[];
  /** The kernel objects under the op's key after the op succeeded, given those before it. */
  afterWrite(op: { readonly action: KernelOp["action"]; readonly object: T }, before: readonly T[]): T[];
  /** A short text naming the object, for logs ("route 10.244.5.0/24 via 10.244.5.0 dev flannel.1"). */
  describe(object: T): string;
}
