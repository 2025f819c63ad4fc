// The kernel channel: the one door between the data plane and the kernel's networking. The data plane
// only ever talks to this interface; production uses in-process netlink (netlink-channel.ts), the
// unit tests an in-memory kernel (test/helpers/fake-kernel.ts). A channel is long-lived: it is opened
// once and reused for every write, dump and notification, never a process per round.
import type { Address, FdbEntry, KernelObject, Link, Neighbour, Route } from "./objects.js";

export interface KernelOp {
  readonly action: "replace" | "delete";
  /**
   * replace: the object as it must be (route replace / neigh replace / fdb replace). delete: the
   * object as the kernel reported it, so exactly that one is removed.
   */
  readonly object: KernelObject;
}

/** Why the kernel refused an operation. */
export interface KernelError {
  /** errno, e.g. 3 */
  readonly errno: number;
  /** Its name, e.g. "ESRCH". */
  readonly code: string;
  /** The kernel's extended-ack text when it sent one, else strerror's. */
  readonly message: string;
}

export type OpOutcome = { readonly ok: true } | { readonly ok: false; readonly error: KernelError };

/**
 * A change the kernel reported. Notifications the kernel attributes to this channel's own route and
 * neighbour writes are not delivered (the writer patches its cache from the acknowledgement instead);
 * FDB notifications carry no writer, so the echoes of FDB writes are delivered like any other.
 */
export type KernelEvent =
  | { readonly type: "object"; readonly action: "new" | "del"; readonly object: KernelObject }
  | { readonly type: "link"; readonly action: "new" | "del"; readonly link: Link }
  | { readonly type: "address"; readonly action: "new" | "del"; readonly address: Address }
  /** Notifications were lost (the receive buffer overflowed): whatever was cached must be re-read. */
  | { readonly type: "overflow" };

export interface Subscription {
  close(): void;
}

/** A device to create. */
export interface LinkSpec {
  readonly name: string;
  /** "tun": a persistent TUN device without packet information (made with ioctls, not rtnetlink). */
  /** "wireguard": the kernel's WireGuard device (configured through `wg`, not rtnetlink). */
  readonly kind: "vxlan" | "bridge" | "tun" | "wireguard";
  readonly mac?: string;
  readonly mtu?: number;
  readonly vxlan?: {
    readonly vni: number;
    /** Tunnel source, canonical; IPv4 or IPv6. */
    readonly local: string;
    readonly port: number;
    readonly learning: boolean;
    readonly gbp: boolean;
    /** Underlay device name. */
    readonly underlay: string;
  };
}

export interface LinkChanges {
  readonly mtu?: number;
  readonly up?: boolean;
  readonly mac?: string;
}

/** A kernel call that failed as a whole (not one op of a batch): names the call and the kernel's reason. */
export class KernelCallError extends Error {
  override name = "KernelCallError";
  constructor(
    readonly call: string,
    readonly error: KernelError,
  ) {
    super(`${call}: ${error.message} (${error.code})`);
  }
}

export interface KernelChannel {
  /** Where it operates, for messages: "local" or "netns <name>". */
  readonly where: string;

  /**
   * Applies the ops in order, each on its own: one refused op never stops the others. Resolves with
   * one outcome per op. Before it resolves, every notification the kernel sent up to the last op's
   * acknowledgement has been delivered to the subscribers, so a cache sees the echoes of these writes
   * before the caller looks at it again.
   */
  apply(ops: readonly KernelOp[]): Promise<OpOutcome[]>;

  /** Routes of the main table, both families. */
  dumpRoutes(): Promise<Route[]>;
  /** Neighbour entries of the watched devices (see watchDevices), both families. */
  dumpNeighbours(): Promise<Neighbour[]>;
  /** FDB entries of the watched devices. */
  dumpFdb(): Promise<FdbEntry[]>;
  dumpLinks(): Promise<Link[]>;
  /** Addresses of every device, both families. */
  dumpAddresses(): Promise<Address[]>;

  /**
   * Limits neighbour and FDB dumps and notifications to these devices (by name, so a re-created
   * device stays watched). Routes, links and addresses are always reported.
   */
  watchDevices(names: readonly string[]): void;

  /** Delivers kernel notifications in the order the kernel sent them, until closed. */
  subscribe(onEvents: (events: readonly KernelEvent[]) => void): Subscription;

  /** Creates a device; throws KernelCallError (e.g. EEXIST, EPERM). */
  createLink(spec: LinkSpec): Promise<void>;
  deleteLink(name: string): Promise<void>;
  setLink(name: string, changes: LinkChanges): Promise<void>;
  addAddress(address: Address): Promise<void>;
  deleteAddress(address: Address): Promise<void>;

  /** Closes every socket; later calls throw. */
  close(): void;
}
