// An in-memory kernel behind the KernelChannel interface, for unit tests of the data-plane loop. Writes
// change it the way the kind models say the kernel does (kinds/*.ts afterWrite), and it notifies like
// the netlink channel: foreign changes and FDB echoes are delivered, echoes of our own route and
// neighbour writes are not. Tests change it "by hand" (foreign), make writes fail, and lose notifications.
import type {
  KernelChannel,
  KernelError,
  KernelEvent,
  KernelOp,
  LinkChanges,
  LinkSpec,
  OpOutcome,
  Subscription,
} from "../../src/dataplane/channel.js";
import { KernelCallError } from "../../src/dataplane/channel.js";
import { afterWrite, keyOf } from "../../src/dataplane/kinds/index.js";
import type { Address, FdbEntry, KernelObject, Link, Neighbour, Route } from "../../src/dataplane/objects.js";
import { ObjectTable, sameObject } from "../../src/dataplane/table.js";

const ERRORS = {
  ENODEV: { errno: 19, code: "ENODEV", message: "No such device" },
  ESRCH: { errno: 3, code: "ESRCH", message: "No such process" },
  ENOENT: { errno: 2, code: "ENOENT", message: "No such file or directory" },
  EEXIST: { errno: 17, code: "EEXIST", message: "File exists" },
  EPERM: { errno: 1, code: "EPERM", message: "Operation not permitted" },
} satisfies Record<string, KernelError>;

function deviceOf(object: KernelObject): string | undefined {
  return object.dev;
}

export class FakeKernel implements KernelChannel {
  readonly where = "fake";
  readonly objects = new ObjectTable();
  readonly links = new Map<string, Link>();
  readonly addresses: Address[] = [];
  /** What the channel was asked to do, for assertions ("apply 3", "dump routes", "createLink flannel.1"). */
  readonly calls: string[] = [];
  /** Every op applied, in order, with its outcome. */
  readonly applied: { op: KernelOp; outcome: OpOutcome }[] = [];
  private readonly listeners = new Set<(events: readonly KernelEvent[]) => void>();
  private readonly failures: { match: (op: KernelOp) => boolean; error: KernelError; times: number }[] = [];
  private watched = new Set<string>();
  private nextIndex = 10;
  private closed = false;

  constructor(options: { readonly external?: { name: string; address: string; prefixLength: number } } = {}) {
    const external = options.external ?? { name: "eth0", address: "198.18.0.1", prefixLength: 24 };
    this.putLink({
      name: "lo",
      kind: undefined,
      mtu: 65536,
      up: true,
      mac: undefined,
      master: undefined,
      vxlan: undefined,
    });
    this.putLink({
      name: external.name,
      kind: "veth",
      mtu: 1500,
      up: true,
      mac: "02:00:00:00:00:01",
      master: undefined,
      vxlan: undefined,
    });
    this.addresses.push({
      family: 4,
      dev: external.name,
      address: external.address,
      prefixLength: external.prefixLength,
      scope: 0,
    });
  }

  private putLink(spec: Omit<Link, "index">, index = this.nextIndex++): Link {
    const link: Link = { ...spec, index };
    this.links.set(link.name, link);
    return link;
  }

  private emit(events: KernelEvent[]): void {
    if (events.length === 0) return;
    for (const listener of [...this.listeners]) listener(events);
  }

  private ensureOpen(): void {
    if (this.closed) throw new Error("channel closed");
  }

  // ---- test controls ----------------------------------------------------------------------------

  /** The next `times` ops matching `match` fail with `code`. */
  failOps(match: (op: KernelOp) => boolean, code: keyof typeof ERRORS, times = 1): void {
    this.failures.push({ match, error: ERRORS[code], times });
  }

  /** A change made by someone else (e.g. `ip route del`): the kernel changes and notifies. */
  foreignDelete(object: KernelObject): void {
    const key = keyOf(object);
    const before = this.objects.get(object.kind, key);
    const after = before.filter((o) => !sameObject(o, object));
    if (after.length === before.length)
      throw new Error(`foreignDelete: no such object ${JSON.stringify(object)}`);
    this.objects.set(object.kind, key, after);
    this.emit([{ type: "object", action: "del", object }]);
  }

  /** `ip route replace` / `ip neigh replace` / `bridge fdb replace` by someone else. */
  foreignReplace(object: KernelObject): void {
    const key = keyOf(object);
    this.objects.set(
      object.kind,
      key,
      afterWrite({ action: "replace", object }, this.objects.get(object.kind, key)),
    );
    this.emit([{ type: "object", action: "new", object }]);
  }

  foreignAdd(object: KernelObject): void {
    this.objects.add(object);
    this.emit([{ type: "object", action: "new", object }]);
  }

  /** `ip link del`: the device and, silently, every route and entry on it. */
  foreignDeleteLink(name: string): void {
    const link = this.links.get(name);
    if (link === undefined) throw new Error(`no link ${name}`);
    this.dropLink(name);
    this.emit([{ type: "link", action: "del", link }]);
  }

  foreignDeleteAddress(dev: string, address: string): void {
    const index = this.addresses.findIndex((a) => a.dev === dev && a.address === address);
    const removed = this.addresses.splice(index, 1)[0];
    if (index < 0 || removed === undefined) throw new Error(`no address ${address} on ${dev}`);
    this.emit([{ type: "address", action: "del", address: removed }]);
  }

  /** Notifications were lost: the listener gets an overflow (and not the change itself). */
  loseNotifications(change: () => void): void {
    const listeners = [...this.listeners];
    this.listeners.clear();
    try {
      change();
    } finally {
      for (const listener of listeners) this.listeners.add(listener);
    }
    this.emit([{ type: "overflow" }]);
  }

  routes(): Route[] {
    return [...this.objects.objects("route")].filter((o): o is Route => o.kind === "route");
  }

  neighbours(): Neighbour[] {
    return [...this.objects.objects("neigh")].filter((o): o is Neighbour => o.kind === "neigh");
  }

  fdb(): FdbEntry[] {
    return [...this.objects.objects("fdb")].filter((o): o is FdbEntry => o.kind === "fdb");
  }

  private dropLink(name: string): void {
    this.links.delete(name);
    for (let i = this.addresses.length - 1; i >= 0; i--)
      if (this.addresses[i]?.dev === name) this.addresses.splice(i, 1);
    for (const kind of ["route", "neigh", "fdb"] as const) {
      for (const key of [...this.objects.keys(kind)]) {
        this.objects.set(
          kind,
          key,
          this.objects.get(kind, key).filter((o) => deviceOf(o) !== name),
        );
      }
    }
  }

  // ---- KernelChannel ----------------------------------------------------------------------------

  apply(ops: readonly KernelOp[]): Promise<OpOutcome[]> {
    this.ensureOpen();
    this.calls.push(`apply ${ops.length}`);
    const outcomes: OpOutcome[] = [];
    const events: KernelEvent[] = [];
    for (const op of ops) {
      const outcome = this.applyOne(op);
      outcomes.push(outcome);
      this.applied.push({ op, outcome });
      // The kernel sends FDB notifications without the writer; route and neighbour echoes of our own
      // writes are dropped by the channel.
      if (outcome.ok && op.object.kind === "fdb") {
        events.push({ type: "object", action: op.action === "replace" ? "new" : "del", object: op.object });
      }
    }
    this.emit(events);
    return Promise.resolve(outcomes);
  }

  private applyOne(op: KernelOp): OpOutcome {
    const failure = this.failures.find((f) => f.times > 0 && f.match(op));
    if (failure !== undefined) {
      failure.times -= 1;
      return { ok: false, error: failure.error };
    }
    const dev = deviceOf(op.object);
    if (dev !== undefined && !this.links.has(dev)) {
      return { ok: false, error: { ...ERRORS.ENODEV, message: `device ${dev} does not exist` } };
    }
    const key = keyOf(op.object);
    const before = this.objects.get(op.object.kind, key);
    const after = afterWrite(op, before);
    if (op.action === "delete" && after.length === before.length) {
      return { ok: false, error: op.object.kind === "route" ? ERRORS.ESRCH : ERRORS.ENOENT };
    }
    this.objects.set(op.object.kind, key, after);
    return { ok: true };
  }

  dumpRoutes(): Promise<Route[]> {
    this.calls.push("dump routes");
    return Promise.resolve(this.routes());
  }

  dumpNeighbours(): Promise<Neighbour[]> {
    this.calls.push("dump neighbours");
    return Promise.resolve(this.neighbours().filter((n) => this.watched.has(n.dev)));
  }

  dumpFdb(): Promise<FdbEntry[]> {
    this.calls.push("dump fdb");
    return Promise.resolve(this.fdb().filter((f) => this.watched.has(f.dev)));
  }

  dumpLinks(): Promise<Link[]> {
    this.calls.push("dump links");
    return Promise.resolve([...this.links.values()]);
  }

  dumpAddresses(): Promise<Address[]> {
    this.calls.push("dump addresses");
    return Promise.resolve([...this.addresses]);
  }

  watchDevices(names: readonly string[]): void {
    this.watched = new Set(names);
  }

  subscribe(onEvents: (events: readonly KernelEvent[]) => void): Subscription {
    this.listeners.add(onEvents);
    return { close: () => this.listeners.delete(onEvents) };
  }

  createLink(spec: LinkSpec): Promise<void> {
    this.ensureOpen();
    this.calls.push(`createLink ${spec.name}`);
    if (this.links.has(spec.name))
      return Promise.reject(new KernelCallError(`create ${spec.name}`, ERRORS.EEXIST));
    const vxlan =
      spec.vxlan === undefined
        ? undefined
        : {
            vni: spec.vxlan.vni,
            local: spec.vxlan.local,
            port: spec.vxlan.port,
            learning: spec.vxlan.learning,
            gbp: spec.vxlan.gbp,
            underlay: spec.vxlan.underlay,
          };
    const link = this.putLink({
      name: spec.name,
      kind: spec.kind,
      mtu: spec.mtu ?? 1500,
      up: false,
      mac: spec.mac,
      master: undefined,
      vxlan,
    });
    this.emit([{ type: "link", action: "new", link }]);
    return Promise.resolve();
  }

  deleteLink(name: string): Promise<void> {
    this.calls.push(`deleteLink ${name}`);
    const link = this.links.get(name);
    if (link === undefined) return Promise.reject(new KernelCallError(`delete ${name}`, ERRORS.ENODEV));
    this.dropLink(name);
    this.emit([{ type: "link", action: "del", link }]);
    return Promise.resolve();
  }

  setLink(name: string, changes: LinkChanges): Promise<void> {
    this.calls.push(`setLink ${name} ${JSON.stringify(changes)}`);
    const link = this.links.get(name);
    if (link === undefined) return Promise.reject(new KernelCallError(`set ${name}`, ERRORS.ENODEV));
    const next: Link = { ...link, ...changes };
    this.links.set(name, next);
    this.emit([{ type: "link", action: "new", link: next }]);
    return Promise.resolve();
  }

  addAddress(address: Address): Promise<void> {
    this.calls.push(`addAddress ${address.dev} ${address.address}/${address.prefixLength}`);
    if (!this.links.has(address.dev))
      return Promise.reject(new KernelCallError(`address add`, ERRORS.ENODEV));
    this.addresses.push(address);
    this.emit([{ type: "address", action: "new", address }]);
    return Promise.resolve();
  }

  deleteAddress(address: Address): Promise<void> {
    this.calls.push(`deleteAddress ${address.dev} ${address.address}/${address.prefixLength}`);
    const index = this.addresses.findIndex((a) => a.dev === address.dev && a.address === address.address);
    if (index < 0) return Promise.reject(new KernelCallError(`address del`, ERRORS.ENOENT));
    this.addresses.splice(index, 1);
    this.emit([{ type: "address", action: "del", address }]);
    return Promise.resolve();
  }

  close(): void {
    this.closed = true;
    this.listeners.clear();
  }
}
