// The production kernel channel: in-process rtnetlink over two long-lived sockets.
//
// - The request socket sends every write, dump and link change, synchronously (netlink/socket.ts says
//   why that is safe and fast); a large apply yields to the event loop (a macrotask) every few
//   milliseconds so the etcd watch and HTTP keep running.
// - The notification socket is always in RTNLGRP_LINK, so the channel's own link table (name ↔ ifindex)
//   follows devices being created, re-created with a new index, renamed and deleted; while anyone is
//   subscribed it is also in the neighbour, route and address groups. Its signal drains it; so does every
//   call, first, so names resolve against the current table, and apply() again at the end, so the
//   notifications its writes caused are delivered before it resolves.
import type {
  KernelChannel,
  KernelError,
  KernelEvent,
  KernelOp,
  LinkChanges,
  LinkSpec,
  OpOutcome,
  Subscription,
} from "./channel.js";
import { KernelCallError } from "./channel.js";
import { MAIN_TABLE, type Address, type FdbEntry, type Link, type Neighbour, type Route } from "./objects.js";
import { AddressError } from "../ip/address.js";
import { MessageWriter, NetlinkFormatError, type MessageView } from "../netlink/codec.js";
import { EINVAL, ENODEV, SystemCallError } from "../netlink/libc.js";
import { insideNetns } from "../netlink/netns.js";
import { createPersistentTun } from "../netlink/tun.js";
import {
  AF_BRIDGE,
  EncodeError,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELNEIGH,
  RTM_DELROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
  RTNLGRP_IPV4_IFADDR,
  RTNLGRP_IPV4_ROUTE,
  RTNLGRP_IPV6_IFADDR,
  RTNLGRP_IPV6_ROUTE,
  RTNLGRP_LINK,
  RTNLGRP_NEIGH,
  decodeAddress,
  decodeLink,
  decodeNeighbour,
  decodeRoute,
  encodeAddress,
  encodeAddressDump,
  encodeFdb,
  encodeFdbDump,
  encodeLinkCreate,
  encodeLinkDelete,
  encodeLinkDump,
  encodeLinkSet,
  encodeNeighbour,
  encodeNeighbourDump,
  encodeRoute,
  encodeRouteDump,
  linkIdentity,
  neighbourFamily,
  neighbourIfindex,
  routeMayBeInTable,
  type NameOf,
} from "../netlink/rtnetlink.js";
import { NETLINK_ROUTE, NetlinkSocket, netlinkError, type SubscriptionListener } from "../netlink/socket.js";

/**
 * The subscription's receive buffer. Every write comes back as a notification (a cold start of 5,000
 * peers: 15,000 of them; the route and neighbour echoes are dropped unread, but they still occupy the
 * queue until read), and a queued notification costs its skb's truesize, not its ~100 bytes: 832 bytes
 * each, measured on kernel 6.18 (/proc/net/netlink Rmem after 300 route, neighbour and FDB writes
 * alike), so an undrained cold start would need 12.5 MiB. apply() drains after every batch of 128 ops
 * (104 KiB), so the queue only has to absorb what arrives while the event loop is busy elsewhere. Asked
 * for with SO_RCVBUFFORCE (the agent has CAP_NET_ADMIN), 8 MiB becomes a 16 MiB limit (the kernel
 * doubles it for its bookkeeping): about 20,000 notifications. The fallback, SO_RCVBUF, is capped at
 * net.core.rmem_max (4 MiB here, 208 KiB on many hosts).
 */
export const SUBSCRIPTION_BUFFER_BYTES = 8 * 1024 * 1024;
/**
 * The request socket's receive buffer: it must hold every acknowledgement of one datagram at once, 832
 * bytes of truesize each (kernel 6.18), or the outcome of the op whose acknowledgement was dropped is
 * unknown. An apply batch of 128 ops needs 104 KiB; a full 32 KiB datagram of 48-byte FDB requests
 * (682) would need 554 KiB, more than the default 208 KiB.
 */
const REQUEST_BUFFER_BYTES = 1024 * 1024;
/** Ops per request datagram in an apply (each 40–60 bytes, each acknowledgement 832 bytes of buffer). */
const OPS_PER_BATCH = 128;
/**
 * How long an apply may hold the event loop before it lets other work (etcd watch, HTTP) run. A 5,000
 * peer cold start takes 0.5–1 s of mostly kernel time; with 512-op slices the loop was blocked for up
 * to 85 ms at a time (load 4.7), so the slices are cut by time instead.
 */
const SLICE_BUDGET_MS = 8;
const OBJECT_GROUPS = [
  RTNLGRP_NEIGH,
  RTNLGRP_IPV4_ROUTE,
  RTNLGRP_IPV6_ROUTE,
  RTNLGRP_IPV4_IFADDR,
  RTNLGRP_IPV6_IFADDR,
];
const OK: OpOutcome = Object.freeze({ ok: true });

export interface NetlinkChannelOptions {
  /** Open the sockets inside this named network namespace (/run/netns/NAME): tests, benchmarks, tools. */
  readonly netns?: string;
  /** The subscription's receive buffer; default SUBSCRIPTION_BUFFER_BYTES. */
  readonly subscriptionBufferBytes?: number;
}

/** Opens a channel to the kernel of this process's network namespace, or of `options.netns`. */
export function openNetlinkChannel(options: NetlinkChannelOptions = {}): NetlinkChannel {
  const open = (): { requests: NetlinkSocket; notifications: NetlinkSocket } => {
    const requests = NetlinkSocket.open({
      protocol: NETLINK_ROUTE,
      strictChecking: true,
      receiveBufferBytes: REQUEST_BUFFER_BYTES,
    });
    try {
      const notifications = NetlinkSocket.open({
        protocol: NETLINK_ROUTE,
        groups: [RTNLGRP_LINK],
        receiveBufferBytes: options.subscriptionBufferBytes ?? SUBSCRIPTION_BUFFER_BYTES,
      });
      return { requests, notifications };
    } catch (error) {
      requests.close();
      throw error;
    }
  };
  const { netns } = options;
  const sockets = netns === undefined ? open() : insideNetns(netns, open);
  try {
    return new NetlinkChannel(
      netns === undefined ? "local" : `netns ${netns}`,
      sockets.requests,
      sockets.notifications,
      netns,
    );
  } catch (error) {
    sockets.requests.close();
    sockets.notifications.close();
    throw error;
  }
}

/** Interface names by index and back, kept from a link dump and the link notifications after it. */
class LinkTable {
  private readonly byIndex = new Map<number, string>();
  private readonly byName = new Map<string, number>();

  index(name: string): number | undefined {
    return this.byName.get(name);
  }

  name(index: number): string | undefined {
    return this.byIndex.get(index);
  }

  set(index: number, name: string): void {
    const previous = this.byIndex.get(index);
    if (previous !== undefined && this.byName.get(previous) === index) this.byName.delete(previous);
    this.byIndex.set(index, name);
    this.byName.set(name, index);
  }

  delete(index: number): void {
    const name = this.byIndex.get(index);
    if (name === undefined) return;
    this.byIndex.delete(index);
    // A device re-created under the same name has a new index; its entry must survive the old one's deletion.
    if (this.byName.get(name) === index) this.byName.delete(name);
  }

  clear(): void {
    this.byIndex.clear();
    this.byName.clear();
  }
}

interface Subscriber {
  readonly onEvents: (events: readonly KernelEvent[]) => void;
}

function noSuchDevice(name: string): KernelError {
  return netlinkError(ENODEV, `device ${name} does not exist`);
}

function kernelError(error: SystemCallError): KernelError {
  return { errno: error.errno, code: error.code, message: error.reason };
}

/** Resolves on the next turn of the event loop, after pending I/O callbacks. */
function nextMacrotask(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The KernelChannel over rtnetlink (see channel.ts for the contract). Beyond it:
 * - Devices are resolved by name at the moment of each call; an op naming a device that does not exist
 *   fails on its own with ENODEV ("device flannel.1 does not exist"), a link or address call throws
 *   KernelCallError with the same error.
 * - Until watchDevices() is called no device is watched: neighbour and FDB dumps are empty and their
 *   notifications are dropped.
 * - Notifications of devices that have since disappeared name them "if<index>", as iproute2 does.
 * - A subscriber's exception is rethrown on a later tick; the other subscribers still get the events.
 * - After close(), calls returning a promise reject and the others throw.
 */
export class NetlinkChannel implements KernelChannel {
  private readonly links = new LinkTable();
  private watched: ReadonlySet<string> = new Set();
  private readonly subscribers = new Set<Subscriber>();
  private pending: KernelEvent[] = [];
  private linksStale = false;
  private closed = false;
  /** Every call runs after the previous one finished, so an apply's slices are never interleaved. */
  private tail: Promise<unknown> = Promise.resolve();
  private readonly writer = new MessageWriter(64 * 1024);
  private readonly nameOf: NameOf = (index) => this.links.name(index) ?? `if${index}`;

  constructor(
    readonly where: string,
    private readonly requests: NetlinkSocket,
    private readonly notifications: NetlinkSocket,
    private readonly netns?: string,
  ) {
    const listener: SubscriptionListener = {
      message: (message) => this.notified(message),
      overflow: () => this.overflowed(),
      drained: () => this.delivered(),
    };
    notifications.listen(listener);
    this.refreshLinks();
  }

  /** The sockets' file descriptors (diagnostics and tests). */
  get fileDescriptors(): readonly number[] {
    return this.closed ? [] : [this.requests.fd, this.notifications.fd];
  }

  /** The request socket's netlink port id: the nlmsg_pid of notifications caused by this channel's writes. */
  get portId(): number {
    return this.requests.portId;
  }

  /** The subscription's receive buffer as the kernel granted it (twice what was asked). */
  subscriptionBufferBytes(): number {
    return this.notifications.receiveBufferBytes();
  }

  apply(ops: readonly KernelOp[]): Promise<OpOutcome[]> {
    return this.serialized(async () => {
      const outcomes = new Array<OpOutcome>(ops.length);
      let sliceStart = performance.now();
      for (let from = 0; from < ops.length || from === 0; from += OPS_PER_BATCH) {
        if (performance.now() - sliceStart >= SLICE_BUDGET_MS) {
          await nextMacrotask();
          this.ensureOpen();
          sliceStart = performance.now();
        }
        this.applyBatch(ops, from, Math.min(ops.length, from + OPS_PER_BATCH), outcomes);
      }
      return outcomes;
    });
  }

  dumpRoutes(): Promise<Route[]> {
    return this.serialized(() =>
      this.withCurrentNames((nameOf) => {
        const routes: Route[] = [];
        for (const family of [4, 6] as const) {
          this.dumpInto(
            "dump routes",
            (writer) => encodeRouteDump(writer, family, MAIN_TABLE),
            routes,
            (message) => {
              const route = decodeRoute(message, nameOf);
              return route?.table === MAIN_TABLE ? route : undefined;
            },
          );
        }
        return routes;
      }),
    );
  }

  dumpNeighbours(): Promise<Neighbour[]> {
    return this.serialized(() =>
      this.withCurrentNames((nameOf) => {
        const neighbours: Neighbour[] = [];
        for (const index of this.watchedIndexes()) {
          this.dumpInto(
            "dump neighbours",
            (writer) => encodeNeighbourDump(writer, index),
            neighbours,
            (message) => {
              if (neighbourIfindex(message) !== index) return undefined;
              const entry = decodeNeighbour(message, nameOf);
              return entry?.kind === "neigh" ? entry : undefined;
            },
          );
        }
        return neighbours;
      }),
    );
  }

  dumpFdb(): Promise<FdbEntry[]> {
    return this.serialized(() =>
      this.withCurrentNames((nameOf) => {
        const entries: FdbEntry[] = [];
        for (const index of this.watchedIndexes()) {
          this.dumpInto(
            "dump fdb",
            (writer) => encodeFdbDump(writer, index),
            entries,
            (message) => {
              if (neighbourIfindex(message) !== index) return undefined;
              const entry = decodeNeighbour(message, nameOf);
              return entry?.kind === "fdb" ? entry : undefined;
            },
          );
        }
        return entries;
      }),
    );
  }

  dumpLinks(): Promise<Link[]> {
    return this.serialized(() =>
      this.withCurrentNames((nameOf) => {
        const links: Link[] = [];
        this.dumpInto("dump links", encodeLinkDump, links, (message) => decodeLink(message, nameOf));
        return links;
      }),
    );
  }

  dumpAddresses(): Promise<Address[]> {
    return this.serialized(() =>
      this.withCurrentNames((nameOf) => {
        const addresses: Address[] = [];
        this.dumpInto("dump addresses", encodeAddressDump, addresses, (message) =>
          decodeAddress(message, nameOf),
        );
        return addresses;
      }),
    );
  }

  watchDevices(names: readonly string[]): void {
    this.ensureOpen();
    this.watched = new Set(names);
  }

  subscribe(onEvents: (events: readonly KernelEvent[]) => void): Subscription {
    this.ensureOpen();
    const subscriber: Subscriber = { onEvents };
    if (this.subscribers.size === 0) {
      for (const group of OBJECT_GROUPS) this.notifications.joinGroup(group);
    }
    this.subscribers.add(subscriber);
    return {
      close: () => {
        if (!this.subscribers.delete(subscriber) || this.subscribers.size > 0 || this.closed) return;
        // Nobody listens: stop the kernel copying every route and neighbour change to us.
        for (const group of OBJECT_GROUPS) this.notifications.leaveGroup(group);
        this.pending = [];
      },
    };
  }

  createLink(spec: LinkSpec): Promise<void> {
    if (spec.kind === "tun") return this.serialized(() => this.createTun(spec));
    return this.serialized(() => {
      const call = `create ${spec.kind} device ${spec.name}`;
      const underlay = spec.vxlan?.underlay;
      const underlayIndex = underlay === undefined ? undefined : this.deviceIndex(underlay, call);
      this.request(call, (writer) => encodeLinkCreate(writer, spec, underlayIndex));
    });
  }

  /** rtnetlink cannot make a TUN device: ioctls do, in the channel's namespace; MTU as a second step. */
  private createTun(spec: LinkSpec): void {
    const netns = this.netns;
    try {
      if (netns === undefined) createPersistentTun(spec.name);
      else insideNetns(netns, () => createPersistentTun(spec.name));
    } catch (error) {
      if (!(error instanceof SystemCallError)) throw error;
      const reason = { errno: error.errno, code: error.code, message: error.reason };
      throw new KernelCallError(`create tun device ${spec.name}`, reason);
    }
    this.refreshLinks();
    if (spec.mtu !== undefined) {
      const call = `set device ${spec.name}`;
      const index = this.deviceIndex(spec.name, call);
      this.request(call, (writer) => encodeLinkSet(writer, index, { mtu: spec.mtu }));
    }
  }

  deleteLink(name: string): Promise<void> {
    return this.serialized(() => {
      const call = `delete device ${name}`;
      const index = this.deviceIndex(name, call);
      this.request(call, (writer) => encodeLinkDelete(writer, index));
    });
  }

  setLink(name: string, changes: LinkChanges): Promise<void> {
    return this.serialized(() => {
      const call = `set device ${name}`;
      const index = this.deviceIndex(name, call);
      this.request(call, (writer) => encodeLinkSet(writer, index, changes));
    });
  }

  addAddress(address: Address): Promise<void> {
    return this.serialized(() => {
      const call = `add address ${address.address}/${address.prefixLength} to ${address.dev}`;
      const index = this.deviceIndex(address.dev, call);
      this.request(call, (writer) => encodeAddress(writer, "add", address, index));
    });
  }

  deleteAddress(address: Address): Promise<void> {
    return this.serialized(() => {
      const call = `delete address ${address.address}/${address.prefixLength} from ${address.dev}`;
      const index = this.deviceIndex(address.dev, call);
      this.request(call, (writer) => encodeAddress(writer, "delete", address, index));
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.subscribers.clear();
    this.pending = [];
    this.requests.close();
    this.notifications.close();
  }

  // ---- calls -------------------------------------------------------------------------------------------

  private ensureOpen(): void {
    if (this.closed) throw new Error(`kernel channel (${this.where}) is closed`);
  }

  private serialized<T>(work: () => T | Promise<T>): Promise<T> {
    const run = this.tail.then(() => {
      this.ensureOpen();
      return work();
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** One batch of ops: encode (with the current link table), send, deliver the echoes. */
  private applyBatch(ops: readonly KernelOp[], from: number, to: number, outcomes: OpOutcome[]): void {
    this.notifications.drain();
    const writer = this.writer.reset();
    const sent: number[] = [];
    for (let i = from; i < to; i++) {
      const op = ops[i];
      if (op === undefined) continue;
      const problem = this.encodeOp(writer, op);
      if (problem === undefined) sent.push(i);
      else outcomes[i] = { ok: false, error: problem };
    }
    if (sent.length > 0) {
      this.exchange("apply", writer, true).forEach((outcome, k) => {
        const i = sent[k];
        if (i !== undefined) outcomes[i] = outcome.ok ? OK : { ok: false, error: outcome.error };
      });
    }
    this.notifications.drain();
  }

  /** Sends what the writer holds; a failure of the exchange as a whole becomes a KernelCallError. */
  private exchange(call: string, writer: MessageWriter, quietSuccess = false): OpOutcome[] {
    try {
      return this.requests.request(writer.finish(), { quietSuccess });
    } catch (error) {
      if (error instanceof SystemCallError) throw new KernelCallError(call, kernelError(error));
      throw error;
    }
  }

  /** Encodes one op; what is wrong with it instead when it cannot be sent. */
  private encodeOp(writer: MessageWriter, op: KernelOp): KernelError | undefined {
    const { object, action } = op;
    const dev = object.dev;
    const index = dev === undefined ? undefined : this.links.index(dev);
    if (dev !== undefined && index === undefined) return noSuchDevice(dev);
    const messages = writer.messageCount;
    try {
      if (object.kind === "route") encodeRoute(writer, action, object, index);
      else if (index === undefined) return netlinkError(EINVAL, `${object.kind} entry without a device`);
      else if (object.kind === "neigh") encodeNeighbour(writer, action, object, index);
      else encodeFdb(writer, action, object, index);
      return undefined;
    } catch (error) {
      if (!(error instanceof EncodeError || error instanceof AddressError)) throw error;
      if (writer.messageCount > messages) writer.cancel();
      return netlinkError(EINVAL, error.message);
    }
  }

  /** Sends one request; throws KernelCallError naming `call` when the kernel refuses it. */
  private request(call: string, encode: (writer: MessageWriter) => void): void {
    this.writer.reset();
    try {
      encode(this.writer);
    } catch (error) {
      if (error instanceof EncodeError || error instanceof AddressError) {
        throw new KernelCallError(call, netlinkError(EINVAL, error.message));
      }
      throw error;
    }
    const [outcome] = this.exchange(call, this.writer);
    if (outcome !== undefined && !outcome.ok) throw new KernelCallError(call, outcome.error);
    this.notifications.drain();
  }

  /** The index of a device by name (after catching up on link notifications), or KernelCallError. */
  private deviceIndex(name: string, call: string): number {
    this.notifications.drain();
    const index = this.links.index(name);
    if (index === undefined) throw new KernelCallError(call, noSuchDevice(name));
    return index;
  }

  private watchedIndexes(): number[] {
    const indexes: number[] = [];
    for (const name of this.watched) {
      const index = this.links.index(name);
      if (index !== undefined) indexes.push(index);
    }
    return indexes;
  }

  /**
   * Runs `read` with names from the link table, caught up on notifications first. A device made since
   * then shows up as an unknown index: the table is then re-read and `read` runs once more.
   */
  private withCurrentNames<T>(read: (nameOf: NameOf) => T): T {
    this.notifications.drain();
    for (let attempt = 1; ; attempt++) {
      const unknown = new Set<number>();
      const nameOf: NameOf = (index) => {
        const name = this.links.name(index);
        if (name !== undefined) return name;
        unknown.add(index);
        return `if${index}`;
      };
      const result = read(nameOf);
      if (unknown.size === 0 || attempt === 2) return result;
      this.refreshLinks();
    }
  }

  /** Runs one dump and appends what `decode` keeps to `into`. */
  private dumpInto<T>(
    call: string,
    encode: (writer: MessageWriter) => void,
    into: T[],
    decode: (message: MessageView) => T | undefined,
  ): void {
    const collected: T[] = [];
    this.runDump(
      call,
      encode,
      (message) => {
        const decoded = decode(message);
        if (decoded !== undefined) collected.push(decoded);
      },
      () => (collected.length = 0),
    );
    for (const item of collected) into.push(item);
  }

  /** Runs a dump; the kernel's refusal becomes a KernelCallError naming `call`. */
  private runDump(
    call: string,
    encode: (writer: MessageWriter) => void,
    each: (message: MessageView) => void,
    restart: () => void,
  ): void {
    // Its own writer: a link refresh can run from a drain in the middle of an apply's batch.
    const writer = new MessageWriter(256);
    encode(writer);
    try {
      this.requests.dump(writer.finish(), call, each, restart);
    } catch (error) {
      if (error instanceof SystemCallError) throw new KernelCallError(call, kernelError(error));
      throw error;
    }
  }

  // ---- the link table ------------------------------------------------------------------------------------

  /** Makes the link table exactly what a link dump says. */
  private refreshLinks(): void {
    const identities: { index: number; name: string }[] = [];
    this.runDump(
      "dump links",
      encodeLinkDump,
      (message) => {
        const { index, name } = linkIdentity(message);
        if (name !== undefined) identities.push({ index, name });
      },
      () => (identities.length = 0),
    );
    this.links.clear();
    for (const { index, name } of identities) this.links.set(index, name);
    this.linksStale = false;
  }

  // ---- notifications ---------------------------------------------------------------------------------------

  private notified(message: MessageView): void {
    try {
      this.decodeNotification(message);
    } catch (error) {
      // A notification that cannot be read is a lost one: say so (the cache re-reads), never throw
      // out of the signal listener.
      if (!(error instanceof NetlinkFormatError)) throw error;
      this.overflowed();
    }
  }

  private decodeNotification(message: MessageView): void {
    const listening = this.subscribers.size > 0;
    switch (message.type) {
      case RTM_NEWLINK:
      case RTM_DELLINK: {
        const action = message.type === RTM_NEWLINK ? "new" : "del";
        // Decode before the table changes: a deleted device's master and underlay still have names.
        const link = listening ? decodeLink(message, this.nameOf) : undefined;
        const { index, name } = link ?? linkIdentity(message);
        if (action === "del") this.links.delete(index);
        else if (name !== undefined) this.links.set(index, name);
        if (link !== undefined) this.pending.push({ type: "link", action, link });
        return;
      }
      case RTM_NEWROUTE:
      case RTM_DELROUTE: {
        // The echo of this channel's own write (the kernel stamps it with the writer's port id): the
        // writer patches its cache from the acknowledgement instead, so decoding it would be wasted
        // work, 10,000 times over at a cold start of 5,000 peers.
        if (!listening || message.portId === this.requests.portId) return;
        if (!routeMayBeInTable(message, MAIN_TABLE)) return;
        const route = decodeRoute(message, this.nameOf);
        if (route?.table !== MAIN_TABLE) return;
        this.pending.push({
          type: "object",
          action: message.type === RTM_NEWROUTE ? "new" : "del",
          object: route,
        });
        return;
      }
      case RTM_NEWNEIGH:
      case RTM_DELNEIGH: {
        if (!listening) return;
        // Own neighbour echoes carry our port id like routes; FDB notifications always carry 0 (the
        // vxlan and bridge drivers do not pass the writer on), so FDB echoes are delivered.
        if (neighbourFamily(message) !== AF_BRIDGE && message.portId === this.requests.portId) return;
        const name = this.links.name(neighbourIfindex(message));
        if (name === undefined || !this.watched.has(name)) return;
        const object = decodeNeighbour(message, this.nameOf);
        if (object === undefined) return;
        this.pending.push({ type: "object", action: message.type === RTM_NEWNEIGH ? "new" : "del", object });
        return;
      }
      case RTM_NEWADDR:
      case RTM_DELADDR: {
        if (!listening) return;
        const address = decodeAddress(message, this.nameOf);
        if (address === undefined) return;
        this.pending.push({ type: "address", action: message.type === RTM_NEWADDR ? "new" : "del", address });
        return;
      }
      default:
        return;
    }
  }

  private overflowed(): void {
    // Link notifications may be among the lost: re-read the table once this drain is over.
    this.linksStale = true;
    if (this.subscribers.size > 0) this.pending.push({ type: "overflow" });
  }

  /** End of a drain: catch the link table up if notifications were lost, then deliver. */
  private delivered(): void {
    if (this.closed) return;
    if (this.linksStale) {
      try {
        this.refreshLinks();
      } catch (error) {
        // Still stale: the next drain tries again, and until then names resolve from the old table.
        if (!(error instanceof KernelCallError)) throw error;
      }
    }
    if (this.pending.length === 0) return;
    const events = this.pending;
    this.pending = [];
    let failure: { error: unknown } | undefined;
    for (const subscriber of [...this.subscribers]) {
      try {
        subscriber.onEvents(events);
      } catch (error) {
        failure ??= { error };
      }
    }
    // A subscriber's exception is its own bug: the others still get the events, this channel's state
    // stays whole, and the exception surfaces as an uncaught one instead of failing an unrelated apply().
    if (failure !== undefined) {
      const { error } = failure;
      process.nextTick(() => {
        throw error;
      });
    }
  }
}
