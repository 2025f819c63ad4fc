// Fake peers for the data-plane benchmark, and the client side of bench/etcd-writer.ts.
//
// Peer number i (0 … 63,749) has subnet 10.0.0.0 + (i+1)·256 (/24, a /8 network), a MAC of its own and a
// PublicIP in 198.18.1.1 … (never a harness host's 198.18.0.x; vxlan does not need it on-link). A
// "version" other than 0 gives the same peer another MAC: a node that came back with a new VTEP.
// Dual-stack peers (dualStackPeer) add an IPv6 subnet, PublicIPv6 and IPv6 VTEP MAC.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { vxlanBackendData } from "../src/backends/vxlan/backend-data.js";
import { wireGuardBackendData } from "../src/backends/wireguard/index.js";
import { encodeKey, generatePrivateKey, publicKeyOf } from "../src/backends/wireguard/keys.js";
import { encodeLeaseAttrs } from "../src/lease/attrs.js";
import { subnetKey } from "../src/lease/key.js";
import { formatIPv4, parseIPv4 } from "../src/ip/ipv4.js";
import { formatIPv6, parseIPv6 } from "../src/ip/ipv6.js";
import type { WriterAnswer, WriterRequest } from "./etcd-writer.js";

/** 65,536 /24s: room for every peer the benchmark makes. The VNI is flannel's default, 1. */
export const NETWORK_CONFIG = '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}';
export const VXLAN_DEV = "flannel.1";

export interface Peer {
  readonly index: number;
  readonly key: string;
  readonly value: string;
  /** The route's dst as `ip route` prints it, e.g. "10.0.1.0/24". */
  readonly dst: string;
  /** The route's gateway and the neighbour's dst: the peer's subnet address. */
  readonly gateway: string;
  readonly mac: string;
  readonly publicIP: string;
}

const hex = (n: number): string => (n & 255).toString(16).padStart(2, "0");

export function peer(prefix: string, index: number, version = 0): Peer {
  if (index < 0 || index >= 63_750) throw new RangeError(`peer index ${index} out of range`);
  const subnet = (parseIPv4("10.0.0.0") + (index + 1) * 256) >>> 0;
  const gateway = formatIPv4(subnet);
  const publicIP = `198.18.${1 + Math.floor(index / 250)}.${1 + (index % 250)}`;
  const mac = `02:${hex(version)}:${hex(index >> 16)}:${hex(index >> 8)}:${hex(index)}:01`;
  const value = encodeLeaseAttrs({
    publicIP: parseIPv4(publicIP),
    publicIPv6: null,
    backendType: "vxlan",
    backendData: vxlanBackendData(1, mac),
    backendV6Data: undefined,
  });
  return {
    index,
    key: `${prefix}/subnets/${gateway}-24`,
    value,
    dst: `${gateway}/24`,
    gateway,
    mac,
    publicIP,
  };
}

export function peers(prefix: string, from: number, count: number): Peer[] {
  return Array.from({ length: count }, (_, i) => peer(prefix, from + i));
}

/**
 * The same /8, dual-stack: IPv6 subnets /64 out of fd00:10::/48, whose 16 bits of subnet number hold
 * 65,535 subnets (room for the 63,750 peers plus the agents' own leases).
 */
export const DUALSTACK_NETWORK_CONFIG =
  '{"Network":"10.0.0.0/8","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10::/48",' +
  '"IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}';
/** flannel's IPv6 VXLAN device for VNI 1. */
export const VXLAN_V6_DEV = "flannel-v6.1";

const IPV6_NETWORK = parseIPv6("fd00:10::");
/** PublicIPv6 of the fake peers: 2001:db8:1::/64 (documentation range; never a harness host's 2001:db8:18::). */
const PUBLIC_IPV6_BASE = parseIPv6("2001:db8:1::");

export interface DualStackPeer extends Peer {
  /** The IPv6 route's dst as `ip -6 route` prints it, e.g. "fd00:10:0:1::/64". */
  readonly dst6: string;
  /** The IPv6 route's gateway and the IPv6 neighbour's dst: the subnet's network address. */
  readonly gateway6: string;
  /** The VTEP MAC of its IPv6 device (BackendV6Data). */
  readonly mac6: string;
  readonly publicIPv6: string;
}

/**
 * A dual-stack vxlan peer: `peer()`'s IPv4 subnet, MAC and PublicIP, and the IPv6 subnet
 * fd00:10:0:<i+1>::/64, PublicIPv6 2001:db8:1::<i+1> and a MAC of its own for BackendV6Data (last octet
 * 02 where the IPv4 one has 01). Key and value as flannel writes them (subnetKey, encodeLeaseAttrs).
 */
export function dualStackPeer(prefix: string, index: number, version = 0): DualStackPeer {
  const base = peer(prefix, index, version);
  const subnet6 = IPV6_NETWORK + (BigInt(index + 1) << 64n);
  const gateway6 = formatIPv6(subnet6);
  const publicIPv6 = formatIPv6(PUBLIC_IPV6_BASE + BigInt(index + 1));
  const mac6 = `${base.mac.slice(0, -2)}02`;
  const value = encodeLeaseAttrs({
    publicIP: parseIPv4(base.publicIP),
    publicIPv6,
    backendType: "vxlan",
    backendData: vxlanBackendData(1, base.mac),
    backendV6Data: vxlanBackendData(1, mac6),
  });
  return {
    ...base,
    key: subnetKey(prefix, { ip: parseIPv4(base.gateway), prefixLen: 24 }, { ip: subnet6, prefixLen: 64 }),
    value,
    dst6: `${gateway6}/64`,
    gateway6,
    mac6,
    publicIPv6,
  };
}

export function dualStackPeers(prefix: string, from: number, count: number): DualStackPeer[] {
  return Array.from({ length: count }, (_, i) => dualStackPeer(prefix, from + i));
}

/** The same /8 with the wireguard backend (flannel's defaults: port 51820, device flannel-wg). */
export const WIREGUARD_NETWORK_CONFIG =
  '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"wireguard"}}';
export const WIREGUARD_DEV = "flannel-wg";
export const WIREGUARD_PORT = 51820;

export interface WireGuardPeer {
  readonly index: number;
  readonly key: string;
  readonly value: string;
  /** The peer's subnet, its allowed IPs on the device ("10.0.1.0/24"). */
  readonly dst: string;
  readonly publicIP: string;
  /** "198.18.1.1:51820", as the device shows it. */
  readonly endpoint: string;
  /** WireGuard's base64 text form. */
  readonly publicKey: string;
}

/**
 * A WireGuard peer: subnet and PublicIP as `peer()`'s, BackendData {"PublicKey":…,"Port":51820}. Its
 * key is a real X25519 key (clamped like `wg genkey`), derived from the index so every run and every
 * agent sees the same distinct keys.
 */
export function wireguardPeer(prefix: string, index: number): WireGuardPeer {
  const base = peer(prefix, index);
  const seed = createHash("sha256").update(`twill-bench-wireguard-peer-${index}`).digest();
  const publicKey = encodeKey(publicKeyOf(generatePrivateKey(() => seed)));
  const value = encodeLeaseAttrs({
    publicIP: parseIPv4(base.publicIP),
    publicIPv6: null,
    backendType: "wireguard",
    backendData: wireGuardBackendData(publicKey, WIREGUARD_PORT),
    backendV6Data: undefined,
  });
  return {
    index,
    key: base.key,
    value,
    dst: base.dst,
    publicIP: base.publicIP,
    endpoint: `${base.publicIP}:${WIREGUARD_PORT}`,
    publicKey,
  };
}

export function wireguardPeers(prefix: string, from: number, count: number): WireGuardPeer[] {
  return Array.from({ length: count }, (_, i) => wireguardPeer(prefix, from + i));
}

export const kv = (p: Peer | WireGuardPeer): readonly [string, string] => [p.key, p.value];

const here = dirname(fileURLToPath(import.meta.url));

/**
 * The etcd writer child, inside the switch namespace (the benchmark, in the root namespace, cannot
 * reach etcd on 198.18.0.254). Requests are served in order, one at a time.
 */
export class Writer {
  private readonly child: ChildProcess;
  private readonly waiting = new Map<number, (answer: WriterAnswer) => void>();
  private nextId = 1;
  private stderr = "";
  readonly ready: Promise<void>;

  constructor(ns: string, endpoint: string) {
    // tsx's loader flags are in execArgv, so the child runs the .ts file the same way this one runs.
    const args = ["netns", "exec", ns, process.execPath, ...process.execArgv, join(here, "etcd-writer.ts")];
    this.child = spawn("ip", [...args, endpoint], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stderr?.on(
      "data",
      (chunk: Buffer) => (this.stderr = (this.stderr + chunk.toString()).slice(-4000)),
    );
    let hello: (() => void) | undefined;
    this.ready = new Promise((resolve, reject) => {
      hello = resolve;
      this.child.once("exit", (code) => reject(new Error(`etcd writer exited (${code}): ${this.stderr}`)));
    });
    this.ready.catch(() => undefined);
    const stdout = this.child.stdout;
    if (stdout === null) throw new Error("etcd writer has no stdout");
    createInterface({ input: stdout }).on("line", (line) => {
      const answer = JSON.parse(line) as WriterAnswer;
      if (answer.id === 0) hello?.();
      this.waiting.get(answer.id)?.(answer);
      this.waiting.delete(answer.id);
    });
  }

  private async send(
    op: WriterRequest["op"],
    kvs: WriterRequest["kvs"],
    concurrency: number,
  ): Promise<WriterAnswer> {
    const id = this.nextId++;
    const request: WriterRequest = { id, op, kvs, concurrency };
    const answer = new Promise<WriterAnswer>((resolve) => this.waiting.set(id, resolve));
    this.child.stdin?.write(`${JSON.stringify(request)}\n`);
    const result = await answer;
    if (result.error !== undefined) throw new Error(`etcd ${op} failed: ${result.error}`);
    return result;
  }

  put(kvs: readonly (readonly [string, string])[], concurrency = 64): Promise<WriterAnswer> {
    return this.send("put", kvs, concurrency);
  }

  delete(keys: readonly string[], concurrency = 64): Promise<WriterAnswer> {
    return this.send(
      "delete",
      keys.map((k) => [k, ""] as const),
      concurrency,
    );
  }

  /** Every key under `prefix`, with its value. */
  async list(prefix: string): Promise<(readonly [string, string])[]> {
    return [...((await this.send("list", [[prefix, ""]], 1)).kvs ?? [])];
  }

  /** Ends the child by the PID we started. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 3000);
    await gone;
    clearTimeout(timer);
  }
}
