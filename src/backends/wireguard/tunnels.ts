// A node's WireGuard devices as the one userspace data path the data-plane loop knows: flannel-wg, and
// in Mode separate with IPv6 on, flannel-wg-v6 beside it (or alone, on an IPv6-only node). Every peer
// change goes to every device, each taking the rows of its own (WireGuardRoute.devices); each device
// has its own poll, wireguard-go and figures. The key file is watched here, once for all devices: a
// rotated key goes on every device before the agent is told to re-publish the lease.
import { readFile } from "node:fs/promises";
import type { Logger } from "pino";
import type {
  NodeFacts,
  UserspaceDataPath,
  UserspaceRoute,
  WireGuardPeerStatus,
  WireGuardStatus,
} from "../backend.js";
import { POLL_MS, type WireGuardDataPath } from "./datapath.js";
import { encodeKey, publicKeyOf } from "./keys.js";

/** A peer's figures on one device: WireGuardPeerStatus with the device it is a peer of. */
export interface WireGuardDevicePeerStatus extends WireGuardPeerStatus {
  readonly device: string;
}

/**
 * The status of a node with two WireGuard devices: the fields of WireGuardStatus sum (peers, restarts,
 * repairs) or join (what) both devices', name the first device (device, listenPort, pid,
 * implementation), and `devices` holds each device's own status.
 */
export interface WireGuardTunnelsStatus extends WireGuardStatus {
  readonly devices: readonly WireGuardStatus[];
  readonly peerDetails: readonly WireGuardDevicePeerStatus[];
}

export interface WireGuardTunnelsDeps {
  readonly log?: Logger;
  /** Reads the key file: the key in it now, or undefined. */
  readonly readKeyFile: (path: string) => Promise<string | undefined>;
  /** A device's ifindex now (to tell which device was made anew), or undefined when unknown. */
  readonly deviceIndex?: (device: string) => Promise<number | undefined>;
  readonly pollMs?: number;
  /** Called when the node leaves the backend: whoever keeps this data path lets go of it. */
  readonly onRetired?: () => void;
}

/** A device's ifindex as sysfs of the agent's network namespace has it. */
async function sysfsIndex(device: string): Promise<number | undefined> {
  try {
    const index = Number((await readFile(`/sys/class/net/${device}/ifindex`, "utf8")).trim());
    return Number.isInteger(index) ? index : undefined;
  } catch {
    return undefined;
  }
}

export class WireGuardTunnels implements UserspaceDataPath {
  private paths: WireGuardDataPath[] = [];
  private stoppedListener: ((reason: string) => void) | undefined;
  private keyChangedListener: (() => void) | undefined;
  private keyFile: string | undefined;
  /** Each device's ifindex when it was last started or checked. */
  private readonly indexes = new Map<string, number | undefined>();
  private timer: NodeJS.Timeout | undefined;
  private active = false;
  /** The key check in progress, awaited by stop(). */
  private checking: Promise<void> = Promise.resolve();
  private readonly pollMs: number;

  constructor(private readonly deps: WireGuardTunnelsDeps) {
    this.pollMs = deps.pollMs ?? POLL_MS;
  }

  /** The devices' data paths, in order (flannel-wg first). */
  get devices(): readonly WireGuardDataPath[] {
    return this.paths;
  }

  /**
   * The devices it serves from now on (a new preparation). Returns the data paths it no longer serves,
   * for the caller to retire.
   */
  setDevices(paths: readonly WireGuardDataPath[]): WireGuardDataPath[] {
    const gone = this.paths.filter((path) => !paths.includes(path));
    this.paths = [...paths];
    for (const path of gone) this.indexes.delete(path.device);
    for (const path of this.paths) this.listenTo(path);
    return gone;
  }

  /** The key file to watch, and whom to tell once a new key from it is on every device. */
  configure(keyFile: string, onKeyChanged: () => void): void {
    this.keyFile = keyFile;
    this.keyChangedListener = onKeyChanged;
  }

  async ensureRunning(node: NodeFacts, deviceRemade: boolean): Promise<boolean> {
    let started = false;
    let failure: Error | undefined;
    // Each device on its own: one that cannot run (its wireguard-go does not start) leaves the other
    // serving; the round fails, and its retry tries the failed one again.
    for (const path of this.paths) {
      try {
        const remade = await this.remade(path.device, deviceRemade);
        if (await path.ensureRunning(node, remade)) started = true;
      } catch (error) {
        failure ??= error instanceof Error ? error : new Error(`${path.device}: ${String(error)}`);
      }
    }
    this.active = true;
    this.startPolling();
    if (failure !== undefined) throw failure;
    return started;
  }

  /**
   * Whether this device was made anew, when the loop says one of them was: its ifindex changed (or is
   * not known). A device not made anew keeps its wireguard-go, and its traffic flows on.
   */
  private async remade(device: string, anyRemade: boolean): Promise<boolean> {
    const known = this.indexes.has(device);
    const before = this.indexes.get(device);
    const now = await (this.deps.deviceIndex ?? sysfsIndex)(device);
    this.indexes.set(device, now);
    if (!anyRemade) return false;
    return !known || before === undefined || now === undefined || now !== before;
  }

  update(changes: ReadonlyMap<string, UserspaceRoute | undefined>): void {
    for (const path of this.paths) path.update(changes);
  }

  replaceAll(routes: ReadonlyMap<string, UserspaceRoute>): void {
    for (const path of this.paths) path.replaceAll(routes);
  }

  onStopped(listener: (reason: string) => void): void {
    this.stoppedListener = listener;
    for (const path of this.paths) this.listenTo(path);
  }

  private listenTo(path: WireGuardDataPath): void {
    path.onStopped((reason) => this.stoppedListener?.(reason));
  }

  async stop(): Promise<void> {
    this.active = false;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.checking;
    await Promise.all(this.paths.map((path) => path.stop()));
  }

  async retire(): Promise<void> {
    await this.stop();
    const paths = this.paths;
    this.paths = [];
    for (const path of paths) await path.retire();
    this.deps.onRetired?.();
  }

  status(): WireGuardStatus {
    const statuses = this.paths.map((path) => path.status());
    const [first] = statuses;
    if (first === undefined) {
      return {
        kind: "wireguard",
        what: "WireGuard (no device)",
        device: "",
        running: false,
        lastFailure: undefined,
        peers: 0,
        restarts: 0,
        implementation: "userspace",
        publicKey: "",
        listenPort: 0,
        pid: undefined,
        peerDetails: [],
        repairs: 0,
      };
    }
    if (statuses.length === 1) return first;
    const sum = (f: (s: WireGuardStatus) => number): number => statuses.reduce((n, s) => n + f(s), 0);
    const status: WireGuardTunnelsStatus = {
      ...first,
      what: statuses.map((s) => s.what).join("; "),
      running: statuses.every((s) => s.running),
      lastFailure: statuses.find((s) => s.lastFailure !== undefined)?.lastFailure,
      peers: sum((s) => s.peers),
      restarts: sum((s) => s.restarts),
      repairs: sum((s) => s.repairs),
      peerDetails: statuses.flatMap((s) => s.peerDetails.map((peer) => ({ ...peer, device: s.device }))),
      devices: statuses,
    };
    return status;
  }

  /** Read anew after every await (a method: not narrowed by an earlier check). */
  private isActive(): boolean {
    return this.active;
  }

  private startPolling(): void {
    if (this.timer !== undefined) return;
    const tick = (): void => {
      const timer = setTimeout(() => {
        this.checking = this.checkKeyFile().finally(() => {
          if (this.timer === timer) tick();
        });
      }, this.pollMs);
      timer.unref();
      this.timer = timer;
    };
    tick();
  }

  /**
   * A new key in the key file (twill wireguard rotate-key) goes on every device first, then into the
   * lease: a peer that learns the new key from the lease then finds it in use already, and its first
   * handshake succeeds. (The other order lets a fast peer's handshake meet the old key and be dropped,
   * and WireGuard tries again only after 5 s.) A device that does not take it gets its old key back,
   * and the lease keeps the old key until the next poll succeeds on every device.
   */
  private async checkKeyFile(): Promise<void> {
    const keyFile = this.keyFile;
    const paths = this.paths;
    const current = paths[0]?.privateKey;
    if (!this.isActive() || keyFile === undefined || current === undefined) return;
    const inFile = await this.deps.readKeyFile(keyFile);
    // Stopped while the file was read: nothing more.
    if (!this.isActive() || inFile === undefined || inFile === current) return;
    this.deps.log?.info(
      { keyFile, devices: paths.map((path) => path.device) },
      "a new WireGuard private key in the key file: setting it on the device and re-publishing",
    );
    const publicKey = encodeKey(publicKeyOf(Buffer.from(inFile, "base64")));
    const done: { path: WireGuardDataPath; privateKey: string; publicKey: string }[] = [];
    for (const path of paths) {
      if (path.privateKey === inFile) continue;
      const before = { path, privateKey: path.privateKey, publicKey: path.publicKey };
      try {
        await path.setKey(inFile, publicKey);
        done.push(before);
      } catch {
        // The device keeps its old key (setKey says why in its status); so must the others.
        for (const other of done)
          await other.path.setKey(other.privateKey, other.publicKey).catch(() => undefined);
        return;
      }
    }
    this.keyChangedListener?.();
  }
}
