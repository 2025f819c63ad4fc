// IPv4 addresses and subnets as plain unsigned 32-bit numbers: cheap to compare, hash and step through
// when thousands of peers are in play. Text goes through the one dotted-quad parser (address.ts), so
// what twill accepts is exactly dotted-quad notation (no leading zeros, no shorthand), like Go's
// net.ParseIP in flannel.
import { parseDottedQuad } from "./address.js";

/** An IPv4 address as an unsigned 32-bit integer. */
export type IPv4 = number;

/** An IPv4 network: `ip` is the network address (host bits zero), `prefixLen` 0–32. */
export interface Subnet {
  readonly ip: IPv4;
  readonly prefixLen: number;
}

export class IpParseError extends Error {}

/** Parses dotted-quad text; throws IpParseError naming the bad text. */
export function parseIPv4(text: string): IPv4 {
  const bytes = parseDottedQuad(text);
  if (bytes === undefined) throw new IpParseError(`"${text}" is not an IPv4 address`);
  return (((bytes[0] ?? 0) << 24) | ((bytes[1] ?? 0) << 16) | ((bytes[2] ?? 0) << 8) | (bytes[3] ?? 0)) >>> 0;
}

/** Like parseIPv4 but returns undefined instead of throwing. */
export function tryParseIPv4(text: string): IPv4 | undefined {
  try {
    return parseIPv4(text);
  } catch {
    return undefined;
  }
}

export function formatIPv4(ip: IPv4): string {
  return `${(ip >>> 24) & 255}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

/** The netmask for a prefix length, as a number (prefix 0 gives 0). */
export function maskOf(prefixLen: number): number {
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/** Number of addresses in a prefix of this length. */
export function sizeOf(prefixLen: number): number {
  return 2 ** (32 - prefixLen);
}

/**
 * Parses CIDR text such as "10.244.0.0/16". Host bits are dropped, as Go's net.ParseCIDR does
 * ("10.5.1.7/16" is 10.5.0.0/16), because flannel's configs rely on that.
 */
export function parseCidr(text: string): Subnet {
  const slash = text.indexOf("/");
  if (slash < 0) throw new IpParseError(`"${text}" is not in CIDR notation (address/prefix-length)`);
  const lenText = text.slice(slash + 1);
  if (!/^\d{1,2}$/.test(lenText) || Number(lenText) > 32) {
    throw new IpParseError(`"${text}" has an invalid prefix length (0–32)`);
  }
  const prefixLen = Number(lenText);
  const ip = parseIPv4(text.slice(0, slash));
  return { ip: (ip & maskOf(prefixLen)) >>> 0, prefixLen };
}

export function formatCidr(subnet: Subnet): string {
  return `${formatIPv4(subnet.ip)}/${subnet.prefixLen}`;
}

/** The first address after the subnet (wraps to 0 after 255.255.255.255). */
export function nextSubnetAddress(subnet: Subnet): IPv4 {
  return (subnet.ip + sizeOf(subnet.prefixLen)) >>> 0;
}

export function containsIp(subnet: Subnet, ip: IPv4): boolean {
  return (ip & maskOf(subnet.prefixLen)) >>> 0 === subnet.ip;
}

/** True when `inner` lies wholly inside `outer`. */
export function containsSubnet(outer: Subnet, inner: Subnet): boolean {
  return inner.prefixLen >= outer.prefixLen && containsIp(outer, inner.ip);
}

export function overlaps(a: Subnet, b: Subnet): boolean {
  return containsSubnet(a, b) || containsSubnet(b, a);
}

/** The first host address of a subnet (the network address + 1): the bridge gateway, FLANNEL_SUBNET. */
export function firstHost(subnet: Subnet): IPv4 {
  return (subnet.ip + 1) >>> 0;
}

/**
 * Why an address cannot be a node's public (underlay) unicast address, or undefined if it can.
 * Rejected: unspecified, loopback, link-local, multicast, reserved/broadcast.
 */
export function unusableUnicastReason(ip: IPv4): string | undefined {
  const first = ip >>> 24;
  if (ip === 0) return "the unspecified address";
  if (first === 0) return "in 0.0.0.0/8 (this network)";
  if (first === 127) return "a loopback address";
  if (first === 169 && ((ip >>> 16) & 255) === 254) return "a link-local address";
  if (first >= 224 && first < 240) return "a multicast address";
  if (first >= 240) return "a reserved or broadcast address";
  return undefined;
}
