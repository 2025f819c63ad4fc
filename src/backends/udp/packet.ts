// The udp backend's packet rules, as flannel's proxy (pkg/backend/udp/proxy_amd64.c) applies them, as
// pure functions over bytes: the forwarding table (destination subnet → peer endpoint), the TTL
// decrement with its incremental checksum fix, and the ICMP net-unreachable for a destination no peer
// owns. The proxy loop (proxy.ts) only moves bytes between the TUN device and the UDP socket.
import { maskOf, type IPv4 } from "../../ip/ipv4.js";

const IPV4_HEADER_BYTES = 20;
const ICMP_HEADER_BYTES = 8;
const PROTOCOL_ICMP = 1;
const ICMP_DEST_UNREACHABLE = 3;
const ICMP_NET_UNREACHABLE = 0;
/** ICMP types that are errors: destination unreachable, source quench, redirect, time exceeded, parameter problem. */
const ICMP_ERRORS: ReadonlySet<number> = new Set([3, 4, 5, 11, 12]);
/** flannel's proxy gives its ICMP errors a TTL of 8. */
const ICMP_TTL = 8;

/** The IPv4 destination address of a packet (no length check: callers check IPV4_HEADER_BYTES). */
export function destinationOf(packet: Uint8Array): IPv4 {
  return (
    (((packet[16] ?? 0) << 24) | ((packet[17] ?? 0) << 16) | ((packet[18] ?? 0) << 8) | (packet[19] ?? 0)) >>>
    0
  );
}

export function sourceOf(packet: Uint8Array): IPv4 {
  return (
    (((packet[12] ?? 0) << 24) | ((packet[13] ?? 0) << 16) | ((packet[14] ?? 0) << 8) | (packet[15] ?? 0)) >>>
    0
  );
}

/** Why a packet of `length` bytes cannot be forwarded as IPv4, or undefined when it can. */
export function malformedReason(packet: Uint8Array, length: number): string | undefined {
  if (length < IPV4_HEADER_BYTES) return "shorter than an IPv4 header";
  const first = packet[0] ?? 0;
  if (first >> 4 !== 4) return `IP version ${first >> 4}, not 4`;
  if ((first & 0x0f) * 4 < IPV4_HEADER_BYTES || (first & 0x0f) * 4 > length) return "bad header length";
  return undefined;
}

/**
 * Decrements the TTL in place and patches the header checksum incrementally (RFC 1624: the TTL is the
 * high byte of the fifth 16-bit word, so the checksum grows by 0x0100 in one's-complement arithmetic).
 * Returns false, leaving the packet to be dropped, when the TTL reaches 0.
 */
export function decrementTtl(packet: Uint8Array): boolean {
  const ttl = packet[8] ?? 0;
  if (ttl <= 1) {
    packet[8] = 0;
    return false;
  }
  packet[8] = ttl - 1;
  let checksum = (((packet[10] ?? 0) << 8) | (packet[11] ?? 0)) + 0x0100;
  if (checksum > 0xffff) checksum = (checksum & 0xffff) + 1;
  packet[10] = checksum >> 8;
  packet[11] = checksum & 0xff;
  return true;
}

/** The Internet checksum of bytes [start, end) (an odd length is padded with a zero byte). */
export function internetChecksum(bytes: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i + 1 < end; i += 2) sum += ((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0);
  if ((end - start) % 2 === 1) sum += (bytes[end - 1] ?? 0) << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * The ICMP "destination net unreachable" flannel's proxy writes back into the TUN for a packet whose
 * destination no peer owns, to the packet's source, quoting its header and first 8 payload bytes.
 * flannel sends it from the node's TUN address, and the kernel drops it as a martian (a packet that
 * arrives from outside with one of the node's own addresses as its source), so it never reaches the
 * pod; twill sends it from the unreachable destination itself. undefined where none is due (RFC
 * 792/1812): the offender is itself an ICMP error, or a fragment other than the first, or malformed.
 */
export function netUnreachable(offender: Uint8Array, length: number): Uint8Array | undefined {
  if (malformedReason(offender, length) !== undefined) return undefined;
  const headerBytes = ((offender[0] ?? 0) & 0x0f) * 4;
  // No ICMP error about an ICMP error (RFC 1812 4.3.2.7); an echo request gets one. (flannel answers no
  // ICMP at all, so a ping to a subnet nobody owns times out.)
  if (offender[9] === PROTOCOL_ICMP && (length <= headerBytes || ICMP_ERRORS.has(offender[headerBytes] ?? 0)))
    return undefined;
  // Never to a source that names no single host (RFC 1812 4.3.2.7): 0.0.0.0, multicast, broadcast.
  const source = sourceOf(offender);
  if (source === 0 || source >>> 28 === 0xe || source === 0xffffffff) return undefined;
  const fragmentOffset = (((offender[6] ?? 0) & 0x1f) << 8) | (offender[7] ?? 0);
  if (fragmentOffset !== 0) return undefined;
  const quoted = Math.min(length, headerBytes + 8);
  const total = IPV4_HEADER_BYTES + ICMP_HEADER_BYTES + quoted;
  const reply = new Uint8Array(total);
  const view = new DataView(reply.buffer);
  reply[0] = 0x45;
  view.setUint16(2, total);
  reply[8] = ICMP_TTL;
  reply[9] = PROTOCOL_ICMP;
  view.setUint32(12, destinationOf(offender));
  view.setUint32(16, sourceOf(offender));
  view.setUint16(10, internetChecksum(reply, 0, IPV4_HEADER_BYTES));
  reply[IPV4_HEADER_BYTES] = ICMP_DEST_UNREACHABLE;
  reply[IPV4_HEADER_BYTES + 1] = ICMP_NET_UNREACHABLE;
  reply.set(offender.subarray(0, quoted), IPV4_HEADER_BYTES + ICMP_HEADER_BYTES);
  view.setUint16(IPV4_HEADER_BYTES + 2, internetChecksum(reply, IPV4_HEADER_BYTES, total));
  return reply;
}

/** The sockaddr_in of an endpoint (x86_64 Linux layout: family, port and address in network order). */
export function sockaddrOf(endpoint: Endpoint): Buffer {
  const sockaddr = Buffer.alloc(16);
  sockaddr.writeUInt16LE(2, 0); // AF_INET
  sockaddr.writeUInt16BE(endpoint.port, 2);
  sockaddr.writeUInt32BE(endpoint.address, 4);
  return sockaddr;
}

/** Where a peer subnet's packets go. */
export interface Endpoint {
  readonly address: IPv4;
  readonly port: number;
}

/** One row of the forwarding table: a peer's subnet and its endpoint (PublicIP:Port). */
export interface ForwardingEntry {
  readonly network: IPv4;
  readonly prefixLen: number;
  readonly endpoint: Endpoint;
}

/**
 * Destination subnet → endpoint, longest prefix first. Leases of one network usually share one prefix
 * length, so a lookup is one mask and one map lookup per length present. Also answers "is this sender
 * a peer?" for datagrams that arrive.
 */
export class ForwardingTable<T extends Endpoint = Endpoint> {
  private readonly byLength = new Map<number, Map<IPv4, T>>();
  private lengths: number[] = [];
  private readonly senders = new Map<IPv4, number>();
  private readonly rows = new Map<string, { readonly entry: ForwardingEntry; readonly value: T }>();

  get size(): number {
    return this.rows.size;
  }

  /** Sets (or replaces) the row under `key`; `value` is the endpoint as the caller keeps it. */
  set(key: string, entry: ForwardingEntry, value: T): void {
    this.delete(key);
    const network = (entry.network & maskOf(entry.prefixLen)) >>> 0;
    let table = this.byLength.get(entry.prefixLen);
    if (table === undefined) {
      table = new Map();
      this.byLength.set(entry.prefixLen, table);
      this.lengths = [...this.byLength.keys()].sort((a, b) => b - a);
    }
    table.set(network, value);
    this.rows.set(key, { entry: { ...entry, network }, value });
    this.senders.set(entry.endpoint.address, (this.senders.get(entry.endpoint.address) ?? 0) + 1);
  }

  delete(key: string): void {
    const row = this.rows.get(key);
    if (row === undefined) return;
    this.rows.delete(key);
    const { network, prefixLen, endpoint } = row.entry;
    const table = this.byLength.get(prefixLen);
    if (table?.get(network) === row.value) table.delete(network);
    if (table?.size === 0) {
      this.byLength.delete(prefixLen);
      this.lengths = [...this.byLength.keys()].sort((a, b) => b - a);
    }
    const count = (this.senders.get(endpoint.address) ?? 1) - 1;
    if (count <= 0) this.senders.delete(endpoint.address);
    else this.senders.set(endpoint.address, count);
  }

  clear(): void {
    this.byLength.clear();
    this.lengths = [];
    this.senders.clear();
    this.rows.clear();
  }

  /** The endpoint of the longest prefix holding `destination`, or undefined. */
  lookup(destination: IPv4): T | undefined {
    for (const length of this.lengths) {
      const found = this.byLength.get(length)?.get((destination & maskOf(length)) >>> 0);
      if (found !== undefined) return found;
    }
    return undefined;
  }

  /** Whether `address` is the endpoint address of some row: a datagram from it comes from a peer. */
  isPeer(address: IPv4): boolean {
    return this.senders.has(address);
  }
}
