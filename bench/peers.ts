// Fake peers for the data-plane benchmark, and the client side of bench/etcd-writer.ts.
//
// Peer number i (0 … 63,749) has subnet 10.0.0.0 + (i+1)·256 (/24, a /8 network), a MAC of its own and a
// PublicIP in 198.18.1.1 … (never a harness host's 198.18.0.x; vxlan does not need it on-link). A
// "version" other than 0 gives the same peer another MAC: a node that came back with a new VTEP.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { vxlanBackendData } from "../src/backends/vxlan/backend-data.js";
import { wireGuardBackendData } from "../src/backends/wireguard/index.js";
import { encodeKey, generatePrivateKey, publicKeyOf } from "../src/backends/wireguard/keys.js";
import { encodeLeaseAttrs } from "../src/lease/attrs.js";
import { formatIPv4, parseIPv4 } from "../src/ip/ipv4.js";
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
