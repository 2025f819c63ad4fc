// The cached kernel view: what the kernel holds, without asking it each time. Filled by one dump per
// kind at start and on resync, patched by every successful write (from its acknowledgement), and kept
// true by the kernel's notifications. Whatever a notification changes is reported as touched slots, so
// the data plane re-plans exactly those and repairs what someone else changed; an echo of our own write
// finds the slot already as desired and costs nothing more.
import { isUnicastMac } from "../ip/mac.js";
import type { KernelEvent, KernelOp } from "./channel.js";
import { afterWrite, isCached, keyOf, slotId } from "./kinds/index.js";
import type { Address, FdbEntry, KernelObject, Link, Neighbour, Route } from "./objects.js";
import { ObjectTable, sameObject } from "./table.js";

export interface KernelSnapshot {
  readonly links: readonly Link[];
  readonly addresses: readonly Address[];
  readonly routes: readonly Route[];
  readonly neighbours: readonly Neighbour[];
  readonly fdb: readonly FdbEntry[];
}

/** What a batch of notifications changed. */
export interface ViewChange {
  /** Slots (slotId) whose kernel objects changed. */
  readonly slots: Set<string>;
  /** Watched devices whose link or addresses changed. */
  readonly devices: Set<string>;
  /**
   * Watched devices that were deleted, re-created or went down: the kernel drops their routes and
   * entries without telling anyone, so the objects must be read again.
   */
  readonly lost: Set<string>;
  /** Notifications were lost: the whole view must be read again. */
  overflow: boolean;
}

export class KernelView {
  readonly objects = new ObjectTable();
  private readonly links = new Map<string, Link>();
  private readonly addresses = new Map<string, Address[]>();
  private watched = new Set<string>();
  /** Notifications that arrive while a reload is being read: replayed on top of the dump, in order. */
  private held: KernelEvent[] | undefined;

  /** The devices whose link and address changes matter (bridge, backend devices, external interface). */
  watch(devices: Iterable<string>): void {
    this.watched = new Set(devices);
  }

  link(name: string): Link | undefined {
    return this.links.get(name);
  }

  addressesOf(dev: string): readonly Address[] {
    return this.addresses.get(dev) ?? [];
  }

  /** Starts a reload: notifications are held until finishReload, then replayed over the dump. */
  beginReload(): void {
    this.held ??= [];
  }

  /** Replaces the whole view with a dump, then replays what arrived meanwhile; returns what that replay changed. */
  finishReload(snapshot: KernelSnapshot): ViewChange {
    const held = this.held ?? [];
    this.held = undefined;
    this.links.clear();
    for (const link of snapshot.links) this.links.set(link.name, link);
    this.addresses.clear();
    for (const address of snapshot.addresses) this.addAddress(address);
    this.objects.clear();
    for (const list of [snapshot.routes, snapshot.neighbours, snapshot.fdb]) {
      for (const object of list) if (isCached(object)) this.objects.add(object);
    }
    return this.apply(held);
  }

  /** Applies notifications (held while a reload is under way). */
  apply(events: readonly KernelEvent[]): ViewChange {
    const change: ViewChange = { slots: new Set(), devices: new Set(), lost: new Set(), overflow: false };
    if (this.held !== undefined) {
      this.held.push(...events);
      return change;
    }
    for (const event of events) {
      switch (event.type) {
        case "object":
          this.applyObject(event.action, event.object, change);
          break;
        case "link":
          this.applyLink(event.action, event.link, change);
          break;
        case "address":
          this.applyAddress(event.action, event.address, change);
          break;
        case "overflow":
          change.overflow = true;
          break;
      }
    }
    return change;
  }

  /** Records the effect of one of our own writes, from its acknowledgement. */
  patch(op: KernelOp): void {
    const key = keyOf(op.object);
    const before = this.objects.get(op.object.kind, key);
    // A write into an empty slot (a cold start's every write) leaves just the object written.
    if (before.length === 0 && op.action === "replace") {
      if (isCached(op.object)) this.objects.set(op.object.kind, key, [op.object]);
      return;
    }
    this.objects.set(op.object.kind, key, afterWrite(op, before).filter(isCached));
  }

  private applyObject(action: "new" | "del", object: KernelObject, change: ViewChange): void {
    if (!isCached(object)) return;
    const key = keyOf(object);
    const before = this.objects.get(object.kind, key);
    // An echo of a write already patched in (FDB notifications carry no writer): nothing changed.
    if (action === "new" && before.length === 1 && before[0] !== undefined && sameObject(before[0], object))
      return;
    let after: readonly KernelObject[];
    if (action === "del") {
      after = before.filter((o) => !sameIdentity(o, object));
    } else if (object.kind === "neigh" || (object.kind === "fdb" && isUnicastMac(object.mac))) {
      // One neighbour per address, one remote per unicast MAC: the notification is the whole slot.
      after = [object];
    } else if (object.kind === "route") {
      // A new route takes the place of the one with the same metric (what `route replace` does; an
      // `append`ed twin is rare and the next resync reads it back).
      after = [...before.filter((o) => !(o.kind === "route" && o.metric === object.metric)), object];
    } else {
      after = [...before.filter((o) => !sameIdentity(o, object)), object];
    }
    this.objects.set(object.kind, key, after);
    change.slots.add(slotId(object.kind, key));
  }

  private applyLink(action: "new" | "del", link: Link, change: ViewChange): void {
    // A rename leaves the old name behind: find the link by index too.
    for (const [name, known] of this.links) {
      if (known.index === link.index && name !== link.name) {
        this.links.delete(name);
        this.forgetDevice(name, change);
      }
    }
    const before = this.links.get(link.name);
    if (action === "del") {
      if (before !== undefined && before.index !== link.index) return; // an older device of that name
      this.links.delete(link.name);
      this.forgetDevice(link.name, change);
      return;
    }
    this.links.set(link.name, link);
    if (!this.watched.has(link.name)) return;
    change.devices.add(link.name);
    const recreated = before !== undefined && before.index !== link.index;
    const wentDown = before?.up === true && !link.up;
    if (recreated || wentDown) this.forgetDevice(link.name, change);
  }

  /** The kernel flushed this device's routes and entries (deleted, re-created or down). */
  private forgetDevice(name: string, change: ViewChange): void {
    this.addresses.delete(name);
    if (!this.watched.has(name)) return;
    change.devices.add(name);
    change.lost.add(name);
  }

  private applyAddress(action: "new" | "del", address: Address, change: ViewChange): void {
    const rest = this.addressesOf(address.dev).filter(
      (a) => !(a.address === address.address && a.prefixLength === address.prefixLength),
    );
    if (action === "new") rest.push(address);
    if (rest.length === 0) this.addresses.delete(address.dev);
    else this.addresses.set(address.dev, rest);
    if (this.watched.has(address.dev)) change.devices.add(address.dev);
  }

  private addAddress(address: Address): void {
    const list = this.addresses.get(address.dev) ?? [];
    list.push(address);
    this.addresses.set(address.dev, list);
  }
}

/** Whether two objects of one slot are the same kernel object (what a delete notification names). */
function sameIdentity(a: KernelObject, b: KernelObject): boolean {
  switch (a.kind) {
    case "route":
      return (
        b.kind === "route" &&
        a.metric === b.metric &&
        a.table === b.table &&
        (b.multipath || a.multipath || (a.gateway === b.gateway && a.dev === b.dev))
      );
    case "neigh":
      return b.kind === "neigh";
    case "fdb":
      return b.kind === "fdb" && a.dst === b.dst;
  }
}
