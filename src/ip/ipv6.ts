// IPv6 addresses and subnets as 128-bit bigints, the IPv6 twin of ipv4.ts: the allocator steps through
// an IPv6 pool and compares subnets numerically. Text goes through address.ts, so an IPv6 address has
// one spelling everywhere (RFC 5952, which is also what Go's net.IP.String writes into flannel's keys).
import { formatAddress, parseAddressBytes } from "./address.js";

/** An IPv6 address as an unsigned 128-bit integer. */
export type IPv6 = bigint;

/** An IPv6 network: `ip` is the network address (host bits zero), `prefixLen` 0–128. */
export interface Subnet6 {
  readonly ip: IPv6;
  readonly prefixLen: number;
}

export class Ipv6ParseError extends Error {
  override name = "Ipv6ParseError";
}

const ALL_ONES = (1n << 128n) - 1n;

/** Parses IPv6 text (any valid spelling, no zone); throws Ipv6ParseError naming the text. */
export function parseIPv6(text: string): IPv6 {
  let bytes: Uint8Array;
  try {
    bytes = parseAddressBytes(text);
  } catch {
    throw new Ipv6ParseError(`"${text}" is not an IPv6 address`);
  }
  if (bytes.length !== 16) throw new Ipv6ParseError(`"${text}" is not an IPv6 address`);
  let value = 0n;
  for (const byte of bytes) value = (value << 8n) | BigInt(byte);
  return value;
}

/** Like parseIPv6 but returns undefined instead of throwing. */
export function tryParseIPv6(text: string): IPv6 | undefined {
  try {
    return parseIPv6(text);
  } catch {
    return undefined;
  }
}

/** The 16 bytes of an address. */
export function ipv6Bytes(ip: IPv6): Uint8Array {
  const bytes = new Uint8Array(16);
  let rest = ip;
  for (let i = 15; i >= 0; i--) {
    bytes[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  return bytes;
}

/** Canonical text (RFC 5952). */
export function formatIPv6(ip: IPv6): string {
  return formatAddress(ipv6Bytes(ip));
}

/** The netmask of a prefix length, as a number. */
export function maskOf6(prefixLen: number): IPv6 {
  return prefixLen === 0 ? 0n : (ALL_ONES << BigInt(128 - prefixLen)) & ALL_ONES;
}

/** Number of addresses in a prefix of this length. */
export function sizeOf6(prefixLen: number): bigint {
  return 1n << BigInt(128 - prefixLen);
}

/** Parses "fd00:1::/48"; host bits are dropped, as Go's net.ParseCIDR does. Throws Ipv6ParseError. */
export function parseCidr6(text: string): Subnet6 {
  const slash = text.indexOf("/");
  if (slash < 0) throw new Ipv6ParseError(`"${text}" is not in CIDR notation (address/prefix-length)`);
  const lengthText = text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(lengthText) || Number(lengthText) > 128) {
    throw new Ipv6ParseError(`"${text}" has an invalid prefix length (0–128)`);
  }
  const prefixLen = Number(lengthText);
  return { ip: parseIPv6(text.slice(0, slash)) & maskOf6(prefixLen), prefixLen };
}

export function formatCidr6(subnet: Subnet6): string {
  return `${formatIPv6(subnet.ip)}/${subnet.prefixLen}`;
}

/** flannel's key spelling of an IPv6 subnet: "fd00:12:13::-56". */
export function keyText6(subnet: Subnet6): string {
  return `${formatIPv6(subnet.ip)}-${subnet.prefixLen}`;
}

/** The first address after the subnet. */
export function nextSubnetAddress6(subnet: Subnet6): IPv6 {
  return subnet.ip + sizeOf6(subnet.prefixLen);
}

export function containsIp6(subnet: Subnet6, ip: IPv6): boolean {
  return (ip & maskOf6(subnet.prefixLen)) === subnet.ip;
}

export function containsSubnet6(outer: Subnet6, inner: Subnet6): boolean {
  return inner.prefixLen >= outer.prefixLen && containsIp6(outer, inner.ip);
}

export function overlaps6(a: Subnet6, b: Subnet6): boolean {
  return containsSubnet6(a, b) || containsSubnet6(b, a);
}

export function sameSubnet6(a: Subnet6 | undefined, b: Subnet6 | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.ip === b.ip && a.prefixLen === b.prefixLen;
}

/** The first host address (network + 1): the bridge's IPv6 gateway, FLANNEL_IPV6_SUBNET. */
export function firstHost6(subnet: Subnet6): IPv6 {
  return subnet.ip + 1n;
}

/**
 * Why an address cannot be a node's public (underlay) IPv6 address, or undefined if it can.
 * Rejected: unspecified, loopback, IPv4-mapped, link-local, multicast.
 */
export function unusableUnicastReason6(ip: IPv6): string | undefined {
  if (ip === 0n) return "the unspecified address";
  if (ip === 1n) return "the loopback address";
  if (ip >> 32n === 0xffffn) return "an IPv4-mapped address";
  if (ip >> 118n === 0x3fan) return "a link-local address (fe80::/10)";
  if (ip >> 120n === 0xffn) return "a multicast address";
  return undefined;
}
