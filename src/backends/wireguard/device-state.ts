// WireGuard's device configuration as data (pure): what the device has, what twill wants, the change
// from one to the other, and the two ways of saying it: WireGuard's configuration protocol (UAPI, what
// wireguard-go's socket speaks) and `wg`'s own formats (`wg show DEV dump`, `wg set` arguments).
import { keyFromHex, keyHex } from "./keys.js";

/** One peer as the device has it. Keys in WireGuard's base64 text form. */
export interface DevicePeer {
  readonly publicKey: string;
  readonly endpoint: string | undefined;
  readonly allowedIps: readonly string[];
  /** undefined = none. */
  readonly presharedKey: string | undefined;
  readonly keepalive: number;
  /** Unix ms; 0 = never. */
  readonly lastHandshakeMs: number;
  readonly rxBytes: number;
  readonly txBytes: number;
}

export interface DeviceState {
  /** undefined = not set yet (a fresh wireguard-go). */
  readonly privateKey: string | undefined;
  readonly listenPort: number;
  readonly peers: ReadonlyMap<string, DevicePeer>;
}

/** One peer as twill wants it. */
export interface WantedPeer {
  readonly publicKey: string;
  /** "198.18.0.2:51820" */
  readonly endpoint: string;
  readonly allowedIps: readonly string[];
  readonly presharedKey: string | undefined;
  readonly keepalive: number;
}

export interface WantedDevice {
  readonly privateKey: string;
  readonly listenPort: number;
  readonly peers: ReadonlyMap<string, WantedPeer>;
}

export type PeerChange =
  | { readonly publicKey: string; readonly remove: true }
  | (WantedPeer & {
      readonly remove?: false;
      readonly why: string;
      /** false: leave the device's endpoint (one learned by roaming); absent: set it. */
      readonly setEndpoint?: boolean;
    });

export interface DeviceChange {
  readonly privateKey?: string;
  readonly listenPort?: number;
  readonly peers: readonly PeerChange[];
}

const sameList = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && [...a].sort().join(",") === [...b].sort().join(",");

/**
 * What must change on the device. `endpointsFrom`: the peers whose endpoint twill set and must set
 * again if it differs; other peers keep the endpoint WireGuard learned from their packets (a peer
 * behind NAT roams, and flannel too sets an endpoint only when a lease arrives).
 */
export function deviceChange(
  wanted: WantedDevice,
  actual: DeviceState,
  endpointsFrom: ReadonlySet<string> | "all",
): DeviceChange | undefined {
  const peers: PeerChange[] = [];
  for (const want of wanted.peers.values()) {
    const have = actual.peers.get(want.publicKey);
    // The lease's endpoint goes on a new peer, on one without any, and when the lease's changed;
    // otherwise the one WireGuard learned from the peer's packets (NAT) stays, whatever else changes.
    const setEndpoint =
      have?.endpoint !== want.endpoint &&
      (have?.endpoint === undefined || endpointsFrom === "all" || endpointsFrom.has(want.publicKey));
    let why: string | undefined;
    if (have === undefined) why = "missing";
    else if (!sameList(have.allowedIps, want.allowedIps))
      why = `allowed IPs ${have.allowedIps.join(",") || "none"}`;
    else if (have.presharedKey !== want.presharedKey) why = "pre-shared key";
    else if (have.keepalive !== want.keepalive) why = `keepalive ${have.keepalive}`;
    else if (setEndpoint) why = `endpoint ${have.endpoint ?? "none"}`;
    if (why !== undefined) peers.push({ ...want, why, setEndpoint });
  }
  for (const key of actual.peers.keys()) {
    if (!wanted.peers.has(key)) peers.push({ publicKey: key, remove: true });
  }
  const change: DeviceChange = {
    ...(actual.privateKey !== wanted.privateKey ? { privateKey: wanted.privateKey } : {}),
    ...(actual.listenPort !== wanted.listenPort ? { listenPort: wanted.listenPort } : {}),
    peers,
  };
  return change.privateKey === undefined && change.listenPort === undefined && peers.length === 0
    ? undefined
    : change;
}

/**
 * The device after `change` went through (what twill then knows of it without reading it back): the
 * new key and port, changed peers as set (an endpoint kept where the change kept it; handshakes and
 * counters as they were), removed peers gone.
 */
export function applyChange(state: DeviceState, change: DeviceChange): DeviceState {
  const peers = new Map(state.peers);
  for (const peer of change.peers) {
    if (peer.remove === true) {
      peers.delete(peer.publicKey);
      continue;
    }
    const had = peers.get(peer.publicKey);
    peers.set(peer.publicKey, {
      publicKey: peer.publicKey,
      endpoint: peer.setEndpoint === false ? had?.endpoint : peer.endpoint,
      allowedIps: [...peer.allowedIps],
      presharedKey: peer.presharedKey,
      keepalive: peer.keepalive,
      lastHandshakeMs: had?.lastHandshakeMs ?? 0,
      rxBytes: had?.rxBytes ?? 0,
      txBytes: had?.txBytes ?? 0,
    });
  }
  return {
    privateKey: change.privateKey ?? state.privateKey,
    listenPort: change.listenPort ?? state.listenPort,
    peers,
  };
}

const ZERO_KEY_HEX = "0".repeat(64);

/** A change as a UAPI `set` request (wireguard-go's socket), ending with the blank line. */
export function encodeUapiSet(change: DeviceChange): string {
  const lines = ["set=1"];
  if (change.privateKey !== undefined) lines.push(`private_key=${keyHex(change.privateKey)}`);
  if (change.listenPort !== undefined) lines.push(`listen_port=${change.listenPort}`);
  for (const peer of change.peers) {
    lines.push(`public_key=${keyHex(peer.publicKey)}`);
    if (peer.remove === true) {
      lines.push("remove=true");
      continue;
    }
    if (peer.setEndpoint !== false) lines.push(`endpoint=${peer.endpoint}`);
    lines.push(`preshared_key=${peer.presharedKey === undefined ? ZERO_KEY_HEX : keyHex(peer.presharedKey)}`);
    lines.push(`persistent_keepalive_interval=${peer.keepalive}`);
    lines.push("replace_allowed_ips=true");
    for (const ip of peer.allowedIps) lines.push(`allowed_ip=${ip}`);
  }
  return `${lines.join("\n")}\n\n`;
}

/** The errno a UAPI reply carries (0 = done), or undefined when the reply is not complete. */
export function uapiErrno(reply: string): number | undefined {
  const match = /(?:^|\n)errno=(-?\d+)\n\n$/.exec(reply);
  return match === null ? undefined : Number(match[1]);
}

/** A UAPI `get` reply → the device's state. Throws on a reply that is not one. */
export function parseUapiGet(reply: string): DeviceState {
  let privateKey: string | undefined;
  let listenPort = 0;
  const peers = new Map<string, DevicePeer>();
  type Mutable = { -readonly [K in keyof DevicePeer]: DevicePeer[K] } & { allowedIps: string[] };
  let peer: Mutable | undefined;
  let handshakeSec = 0;
  let handshakeNsec = 0;
  const finish = (): void => {
    if (peer === undefined) return;
    peer.lastHandshakeMs = handshakeSec * 1000 + Math.floor(handshakeNsec / 1e6);
    peers.set(peer.publicKey, peer);
    peer = undefined;
  };
  let errno: number | undefined;
  for (const line of reply.split("\n")) {
    if (line === "") continue;
    const eq = line.indexOf("=");
    if (eq < 0) throw new Error(`not a WireGuard configuration reply: line "${line}"`);
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (key === "errno") {
      errno = Number(value);
      continue;
    }
    if (key === "public_key") {
      finish();
      handshakeSec = 0;
      handshakeNsec = 0;
      peer = {
        publicKey: keyFromHex(value),
        endpoint: undefined,
        allowedIps: [],
        presharedKey: undefined,
        keepalive: 0,
        lastHandshakeMs: 0,
        rxBytes: 0,
        txBytes: 0,
      };
      continue;
    }
    if (peer === undefined) {
      if (key === "private_key") privateKey = value === ZERO_KEY_HEX ? undefined : keyFromHex(value);
      else if (key === "listen_port") listenPort = Number(value);
      continue;
    }
    switch (key) {
      case "endpoint":
        peer.endpoint = value;
        break;
      case "allowed_ip":
        peer.allowedIps.push(value);
        break;
      case "preshared_key":
        peer.presharedKey = value === ZERO_KEY_HEX ? undefined : keyFromHex(value);
        break;
      case "persistent_keepalive_interval":
        peer.keepalive = Number(value);
        break;
      case "last_handshake_time_sec":
        handshakeSec = Number(value);
        break;
      case "last_handshake_time_nsec":
        handshakeNsec = Number(value);
        break;
      case "rx_bytes":
        peer.rxBytes = Number(value);
        break;
      case "tx_bytes":
        peer.txBytes = Number(value);
        break;
      default:
        break;
    }
  }
  finish();
  if (errno === undefined) throw new Error("not a WireGuard configuration reply: no errno line");
  if (errno !== 0) throw new Error(`WireGuard answered errno ${errno} to get`);
  return { privateKey, listenPort, peers };
}

/**
 * `wg show DEV dump` → the device's state. Its first line is the device (private key, public key,
 * listen port, fwmark), then a line per peer (public key, pre-shared key, endpoint, allowed IPs,
 * latest handshake in seconds, rx bytes, tx bytes, keepalive), tab-separated; "(none)" and "off" mean none.
 */
export function parseWgDump(text: string): DeviceState {
  const lines = text.split("\n").filter((line) => line !== "");
  const [device, ...peerLines] = lines;
  const fields = device?.split("\t") ?? [];
  // Never quoted: a dump's first field is the private key.
  if (fields.length < 4) throw new Error(`not a wg dump: its first line has ${fields.length} fields, not 4`);
  const none = (value: string | undefined): string | undefined =>
    value === undefined || value === "(none)" || value === "off" ? undefined : value;
  const peers = new Map<string, DevicePeer>();
  for (const line of peerLines) {
    const [publicKey = "", psk, endpoint, allowed, handshake, rx, tx, keepalive] = line.split("\t");
    peers.set(publicKey, {
      publicKey,
      presharedKey: none(psk),
      endpoint: none(endpoint),
      allowedIps: none(allowed)?.split(",") ?? [],
      lastHandshakeMs: Number(handshake ?? 0) * 1000,
      rxBytes: Number(rx ?? 0),
      txBytes: Number(tx ?? 0),
      keepalive: Number(none(keepalive) ?? 0),
    });
  }
  return { privateKey: none(fields[0]), listenPort: Number(fields[2]), peers };
}

/**
 * A change as `wg set DEV …` arguments. Keys go through files (wg reads private and pre-shared keys
 * only from files): `keyFile(key)` returns the path of a file holding it.
 */
export function wgSetArgs(device: string, change: DeviceChange, keyFile: (key: string) => string): string[] {
  const args = ["set", device];
  if (change.listenPort !== undefined) args.push("listen-port", String(change.listenPort));
  if (change.privateKey !== undefined) args.push("private-key", keyFile(change.privateKey));
  for (const peer of change.peers) {
    args.push("peer", peer.publicKey);
    if (peer.remove === true) {
      args.push("remove");
      continue;
    }
    if (peer.setEndpoint !== false) args.push("endpoint", peer.endpoint);
    args.push(
      "allowed-ips",
      peer.allowedIps.join(","),
      "persistent-keepalive",
      peer.keepalive === 0 ? "off" : String(peer.keepalive),
      "preshared-key",
      peer.presharedKey === undefined ? "/dev/null" : keyFile(peer.presharedKey),
    );
  }
  return args;
}
