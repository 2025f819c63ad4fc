// One WireGuard device's configuration, kept as twill wants it: the node's key and port, and a peer per
// node lease (public key, endpoint, the peer's subnets as allowed IPs, pre-shared key, keepalive). The
// data-plane loop feeds it every peer change (through WireGuardTunnels, which serves a node's one or
// two devices); a poll every POLL_MS reads the device again, restores what someone changed by hand,
// keeps the figures for metrics and status, and (userspace) starts wireguard-go again when it exited.
import type { Logger } from "pino";
import type {
  NodeFacts,
  UserspaceDataPath,
  UserspaceRoute,
  WireGuardPeerStatus,
  WireGuardStatus,
} from "../backend.js";
import { formatCidr, formatIPv4 } from "../../ip/ipv4.js";
import type { DeviceReading, WireGuardControl } from "./control.js";
import {
  applyChange,
  deviceChange,
  type DeviceChange,
  type DeviceState,
  type WantedDevice,
  type WantedPeer,
} from "./device-state.js";
import type { WireGuardGo } from "./wireguard-go.js";

export interface WireGuardSettings {
  readonly device: string;
  readonly implementation: "kernel" | "userspace";
  readonly listenPort: number;
  readonly psk: string | undefined;
  readonly keepalive: number;
  readonly privateKey: string;
  readonly publicKey: string;
}

export interface WireGuardDeps {
  readonly control: WireGuardControl;
  /** wireguard-go, when the implementation is userspace. */
  readonly process?: WireGuardGo;
  readonly log?: Logger;
  readonly pollMs?: number;
  /** Called when the node leaves the backend: whoever keeps this data path lets go of it. */
  readonly onRetired?: () => void;
}

/** Drift is restored within this (the bound is 1 s), while a poll is cheap. */
export const POLL_MS = 500;
/** A poll takes at most 1/100 (1 %) of the time, wireguard-go's answer included: 1,000 peers are read in ~8 ms. */
const POLL_BUDGET = 100;
/** However large the device, drift is found within this. */
const MAX_POLL_MS = 5_000;

/** One peer on one device, as the backend wants it. */
export interface DevicePeerRow {
  readonly device: string;
  readonly publicKey: string;
  /** "198.18.0.2:51820", "[2001:db8::2]:51821" */
  readonly endpoint: string;
  /** The peer's subnets this device carries (CIDR text). */
  readonly allowedIps: readonly string[];
}

/**
 * A peer's UserspaceRoute as the wireguard backend makes it: besides the IPv4 fields every
 * UserspaceRoute has (0.0.0.0/0 on an IPv6-only peer), its row on each of this node's devices.
 */
export interface WireGuardRoute extends UserspaceRoute {
  readonly devices: readonly DevicePeerRow[];
}

export function isWireGuardRoute(route: UserspaceRoute): route is WireGuardRoute {
  return "devices" in route && Array.isArray(route.devices);
}

/**
 * A peer's row on `device`: the wireguard backend's own, or, for a plain IPv4 UserspaceRoute, its
 * subnet at its address and port; undefined when the peer has none there (no key, another device).
 */
export function deviceRowOf(device: string, route: UserspaceRoute): DevicePeerRow | undefined {
  if (isWireGuardRoute(route)) return route.devices.find((row) => row.device === device);
  if (route.publicKey === undefined) return undefined;
  return {
    device,
    publicKey: route.publicKey,
    endpoint: `${formatIPv4(route.endpoint.address)}:${route.endpoint.port}`,
    allowedIps: [formatCidr(route.subnet)],
  };
}

function sameRow(a: DevicePeerRow | undefined, b: DevicePeerRow | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return (
    a.publicKey === b.publicKey &&
    a.endpoint === b.endpoint &&
    a.allowedIps.length === b.allowedIps.length &&
    a.allowedIps.every((ip, i) => ip === b.allowedIps[i])
  );
}

/** A reading of the device; a control without `read` is read with `get`, and always parsed. */
async function readDevice(control: WireGuardControl): Promise<DeviceReading> {
  if (control.read !== undefined) return control.read();
  const state = await control.get();
  return { fingerprint: undefined, state: () => state };
}

/** Peers as WireGuard gets them: by public key, each key once (the first lease by key order wins). */
export function wantedPeers(
  rows: ReadonlyMap<string, DevicePeerRow>,
  settings: Pick<WireGuardSettings, "publicKey" | "psk" | "keepalive">,
): Map<string, WantedPeer> {
  const peers = new Map<string, WantedPeer>();
  for (const key of [...rows.keys()].sort()) {
    const row = rows.get(key);
    if (row === undefined) continue;
    const publicKey = row.publicKey;
    // Our own key on a peer's lease is a copied identity, which the peer view sets aside; two leases
    // with one key cannot both be WireGuard peers, so the first by key order is, deterministically.
    if (publicKey === settings.publicKey || peers.has(publicKey)) continue;
    peers.set(publicKey, {
      publicKey,
      endpoint: row.endpoint,
      allowedIps: [...row.allowedIps],
      presharedKey: settings.psk,
      keepalive: settings.keepalive,
    });
  }
  return peers;
}

function describeChange(change: DeviceChange): string {
  const parts: string[] = [];
  if (change.privateKey !== undefined) parts.push("private key");
  if (change.listenPort !== undefined) parts.push(`listen port ${change.listenPort}`);
  for (const peer of change.peers) {
    parts.push(
      peer.remove === true ? `removed peer ${peer.publicKey}` : `peer ${peer.publicKey} (${peer.why})`,
    );
  }
  return parts.join(", ");
}

export class WireGuardDataPath implements UserspaceDataPath {
  /** This device's rows, by lease key. */
  private readonly rows = new Map<string, DevicePeerRow>();
  /** Peers whose endpoint changed in their lease: set again even if WireGuard learned another. */
  private readonly endpointsToSet = new Set<string>();
  /** The loop's; set again when it takes this data path up again (a backend switched back). */
  private stoppedListener: ((reason: string) => void) | undefined;
  private last: DeviceReading | undefined;
  /** The device as twill knows it: the last reading, with twill's changes since; undefined: read it. */
  private known: DeviceState | undefined;
  /** The fingerprint of the last reading that matched what was wanted, while nothing changed since. */
  private matched: string | undefined;
  private active = false;
  private lastFailure: string | undefined;
  private restarts = 0;
  private repairs = 0;
  private timer: NodeJS.Timeout | undefined;
  private queue: Promise<void> = Promise.resolve();
  /** Bumped by every peer change; the version the device was last made to match. */
  private rowsVersion = 0;
  private syncedVersion = 0;
  private everSynced = false;
  /** Bumped by new settings or a fresh device (the next sync's changes are twill's own); synced. */
  private settingsVersion = 1;
  private syncedSettings = 0;
  /** The last reads' durations: the poll's interval follows the smallest (one stall is no trend). */
  private readCosts: number[] = [];
  /** The wireguard-go whose exit was counted. */
  private exitCounted: number | undefined;
  private readonly pollMs: number;

  constructor(
    private settings: WireGuardSettings,
    private readonly deps: WireGuardDeps,
  ) {
    this.pollMs = deps.pollMs ?? POLL_MS;
  }

  /** New settings from a new preparation (a rotated key, another port): the next sync applies them. */
  configure(settings: WireGuardSettings): void {
    this.settings = settings;
    this.matched = undefined;
    this.settingsVersion++;
  }

  get implementation(): "kernel" | "userspace" {
    return this.settings.implementation;
  }

  get device(): string {
    return this.settings.device;
  }

  /** The private key the device is to have. */
  get privateKey(): string {
    return this.settings.privateKey;
  }

  /** The public key of privateKey, as published. */
  get publicKey(): string {
    return this.settings.publicKey;
  }

  /**
   * Sets a new key pair on the device now; throws, keeping the old one, when the device does not take
   * it (a rotated key: see WireGuardTunnels).
   */
  async setKey(privateKey: string, publicKey: string): Promise<void> {
    const previous = this.settings;
    this.settings = { ...previous, privateKey, publicKey };
    this.matched = undefined;
    this.settingsVersion++;
    try {
      await this.sync();
    } catch (error) {
      // Not on the device (or only in part): what it should have is the old key, until told again.
      if (this.settings.privateKey === privateKey) this.settings = previous;
      this.settingsVersion++;
      this.lastFailure = `cannot set the new key on ${previous.device}: ${(error as Error).message}`;
      throw error;
    }
  }

  async ensureRunning(_node: NodeFacts, deviceRemade: boolean): Promise<boolean> {
    const process = this.deps.process;
    let started = false;
    if (process !== undefined) {
      // Found dead by a round before the poll saw it: an exit all the same.
      if (process.pid !== undefined && !process.alive()) this.countExit(process.pid);
      // A device made anew has lost the wireguard-go that served it.
      if (deviceRemade && process.alive()) await process.terminate();
      const how = await process.ensure().catch((error: unknown) => {
        this.active = false;
        this.lastFailure = (error as Error).message;
        throw error;
      });
      started = how === "started";
      if (how !== "running") {
        this.deps.log?.info(
          { pid: process.pid, device: this.settings.device },
          how === "adopted" ? "adopted the running wireguard-go" : "started wireguard-go",
        );
        // A new wireguard-go knows no peer yet; an adopted one keeps the endpoints it learned.
        if (how === "started") for (const row of this.rows.values()) this.endpointsToSet.add(row.publicKey);
      }
    }
    if (!this.everSynced && !started && !deviceRemade) {
      // The first sync of this agent, on a device that served peers before it (an adopted
      // wireguard-go, a kernel device): the endpoints there may have been learned from the peers'
      // packets (NAT), and a peer whose address changed meanwhile is followed by WireGuard itself.
      this.endpointsToSet.clear();
    }
    // A new wireguard-go or device is empty, and this agent's first sync may find leases that changed
    // while no agent ran: twill's own changes, not drift.
    if (started || deviceRemade || !this.everSynced) this.settingsVersion++;
    if (started || deviceRemade) this.known = undefined;
    this.active = true;
    this.lastFailure = undefined;
    // Polling first: a device that cannot be configured now is tried again by the poll, and by the
    // loop's retry of this round.
    this.startPolling();
    await this.sync().catch((error: unknown) => {
      this.lastFailure = `cannot configure ${this.settings.device}: ${(error as Error).message}`;
      throw error;
    });
    return started;
  }

  update(changes: ReadonlyMap<string, UserspaceRoute | undefined>): void {
    for (const [key, route] of changes) {
      const before = this.rows.get(key);
      const row = route === undefined ? undefined : deviceRowOf(this.settings.device, route);
      // Only a real change makes the next sync's work expected (a resync hands over every row again).
      if (!sameRow(before, row)) this.rowsVersion++;
      if (row === undefined) this.rows.delete(key);
      else {
        this.rows.set(key, row);
        if (before === undefined || before.endpoint !== row.endpoint || before.publicKey !== row.publicKey)
          this.endpointsToSet.add(row.publicKey);
      }
    }
  }

  replaceAll(routes: ReadonlyMap<string, UserspaceRoute>): void {
    const changes = new Map<string, UserspaceRoute | undefined>(routes);
    for (const key of this.rows.keys()) if (!routes.has(key)) changes.set(key, undefined);
    this.update(changes);
  }

  onStopped(listener: (reason: string) => void): void {
    this.stoppedListener = listener;
  }

  async stop(): Promise<void> {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.active = false;
    await this.queue;
  }

  async retire(): Promise<void> {
    await this.stop();
    this.deps.onRetired?.();
    await this.deps.process?.terminate();
  }

  status(): WireGuardStatus {
    const s = this.settings;
    const subnets = new Map<string, string>();
    for (const row of this.rows.values()) subnets.set(row.publicKey, row.allowedIps.join(","));
    // The peers as twill knows them (rounds change them without reading the device back); their
    // handshakes and counters from the last reading, parsed here, at scrape, not at every poll.
    const read = this.last?.state();
    const peers = this.known ?? read;
    const peerDetails: WireGuardPeerStatus[] = [...(peers?.peers.values() ?? [])].map((peer) => {
      const seen = read?.peers.get(peer.publicKey) ?? peer;
      return {
        subnet: subnets.get(peer.publicKey) ?? "",
        publicKey: peer.publicKey,
        endpoint: seen.endpoint ?? peer.endpoint,
        lastHandshakeMs: seen.lastHandshakeMs,
        rxBytes: seen.rxBytes,
        txBytes: seen.txBytes,
      };
    });
    const how = s.implementation === "kernel" ? "kernel WireGuard" : "wireguard-go";
    return {
      kind: "wireguard",
      what: `${how} on ${s.device}, port ${s.listenPort}, public key ${s.publicKey}`,
      device: s.device,
      running: this.active,
      lastFailure: this.lastFailure,
      peers: peerDetails.length,
      restarts: this.restarts,
      implementation: s.implementation,
      publicKey: s.publicKey,
      listenPort: s.listenPort,
      pid: this.deps.process?.pid,
      peerDetails,
      repairs: this.repairs,
    };
  }

  private wanted(): WantedDevice {
    const s = this.settings;
    return { privateKey: s.privateKey, listenPort: s.listenPort, peers: wantedPeers(this.rows, s) };
  }

  /** Peers or settings changed since the last sync: the next change is twill's own. */
  private wantedChanged(): boolean {
    return this.rowsVersion !== this.syncedVersion || this.settingsVersion !== this.syncedSettings;
  }

  /**
   * Makes the device as wanted; one at a time. A round ("known") works from what twill knows of the
   * device (its last reading, with twill's own changes applied since): a peer event costs one set, no
   * read of the whole device. The poll ("read") reads it, and finds what someone else changed. A
   * change needed with nothing changed on twill's side (peers, settings, a fresh device) is drift.
   */
  private sync(read: "read" | "known" = "known"): Promise<void> {
    const run = async (): Promise<void> => {
      const control = this.deps.control;
      let actual = read === "known" ? this.known : undefined;
      let fingerprint: string | undefined;
      if (actual === undefined) {
        const started = performance.now();
        const reading = await readDevice(control);
        this.readCosts = [...this.readCosts.slice(-2), performance.now() - started];
        this.last = reading;
        fingerprint = reading.fingerprint;
        // The device as it was when it last matched, and nothing wanted has changed: nothing to parse.
        if (
          !this.wantedChanged() &&
          this.endpointsToSet.size === 0 &&
          fingerprint !== undefined &&
          fingerprint === this.matched
        )
          return;
        actual = reading.state();
        this.known = actual;
      }
      // Taken after the read, with the wanted state below: a peer or settings change that arrived
      // while the device was read is the loop's own, not someone else's.
      const version = this.rowsVersion;
      const settingsVersion = this.settingsVersion;
      const expected = this.wantedChanged();
      const endpoints = new Set(this.endpointsToSet);
      const change = deviceChange(this.wanted(), actual, endpoints);
      if (change !== undefined) {
        try {
          await control.set(change);
        } catch (error) {
          this.known = undefined; // in part, or not at all: read it again next time
          throw error;
        }
        this.known = applyChange(actual, change);
        // The device's text changed: the next poll parses it once and takes it as matched.
        fingerprint = undefined;
        if (!expected) {
          this.repairs++;
          this.deps.log?.warn(
            { device: this.settings.device, changes: describeChange(change) },
            "WireGuard device changed by someone else; restored",
          );
        }
      }
      // Their endpoints are on the device now: from now on they may roam.
      for (const key of endpoints) this.endpointsToSet.delete(key);
      this.syncedVersion = version;
      this.syncedSettings = settingsVersion;
      this.everSynced = true;
      this.matched = fingerprint;
    };
    const next = this.queue.then(run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private startPolling(): void {
    if (this.timer !== undefined) return;
    this.schedulePoll(this.pollMs);
  }

  /**
   * The next poll comes POLL_MS after this one, or later when reading the device got expensive (a
   * full read of 5,000 peers is 1.7 MB): reads may take at most 1/POLL_BUDGET of the time. The
   * smallest of the last three reads counts, so a read that waited on a busy event loop does not
   * stretch the interval.
   */
  private schedulePoll(delayMs: number): void {
    const timer = setTimeout(() => {
      void this.poll().finally(() => {
        if (this.timer !== timer) return; // stopped meanwhile
        const cost = this.readCosts.length === 0 ? 0 : Math.min(...this.readCosts);
        this.schedulePoll(Math.min(MAX_POLL_MS, Math.max(this.pollMs, cost * POLL_BUDGET)));
      });
    }, delayMs);
    timer.unref();
    this.timer = timer;
  }

  /** Counts wireguard-go's exit once, whoever notices it first (the poll, or a round). */
  private countExit(pid: number | undefined): void {
    if (pid === this.exitCounted) return;
    this.exitCounted = pid;
    this.restarts++;
  }

  private async poll(): Promise<void> {
    if (!this.active) return;
    const process = this.deps.process;
    if (process !== undefined && !process.alive()) {
      this.active = false;
      this.countExit(process.pid);
      const reason = `wireguard-go (pid ${process.pid ?? "?"}) on ${this.settings.device} exited`;
      this.lastFailure = reason;
      this.stoppedListener?.(reason);
      return;
    }
    try {
      await this.sync("read");
      this.lastFailure = undefined;
    } catch (error) {
      this.lastFailure = `cannot read or set ${this.settings.device}: ${(error as Error).message}`;
    }
  }
}
