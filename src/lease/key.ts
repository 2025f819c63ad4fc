// etcd key naming for subnet leases, byte-compatible with flannel: <prefix>/subnets/10.244.3.0-24, and
// with IPv6 <prefix>/subnets/10.244.3.0-24&fd00:10:244:3::-64 (IPv6-only: 0.0.0.0-0&fd00:…).
import { formatIPv4, maskOf, tryParseIPv4, type Subnet } from "../ip/ipv4.js";
import { formatCidr6, formatIPv6, keyText6, maskOf6, tryParseIPv6, type Subnet6 } from "../ip/ipv6.js";

/** A key under <prefix>/subnets/ that does not name a usable subnet. */
export class SubnetKeyError extends Error {
  constructor(
    readonly key: string,
    /** Why, without the key (e.g. "prefix length 32 is out of range 0–31"). */
    readonly reason: string,
  ) {
    super(`invalid subnet key "${key}": ${reason}`);
    this.name = "SubnetKeyError";
  }
}

const SUBNETS_SEGMENT = "/subnets/";

/**
 * `${prefix}/subnets/`. Trailing slashes on the prefix are dropped, as flannel's path.Join does,
 * so "/coreos.com/network/" and "/coreos.com/network" name the same keys.
 */
export function subnetsPrefix(prefix: string): string {
  return `${prefix.replace(/\/+$/, "")}${SUBNETS_SEGMENT}`;
}

/** The subnets a lease key names: IPv4 (0.0.0.0/0 for an IPv6-only lease, as flannel writes it) and IPv6. */
export interface LeaseSubnets {
  readonly subnet: Subnet;
  readonly ipv6Subnet?: Subnet6 | undefined;
}

/**
 * The etcd key of a lease, flannel's MakeSubnetKey: /coreos.com/network/subnets/10.244.3.0-24, a
 * dual-stack one …/10.244.3.0-24&fd00:10:244:3::-64, an IPv6-only one …/0.0.0.0-0&fd00:10:244:3::-64.
 */
export function subnetKey(prefix: string, subnet: Subnet, ipv6Subnet?: Subnet6): string {
  const v4 = `${subnetsPrefix(prefix)}${formatIPv4(subnet.ip)}-${subnet.prefixLen}`;
  return ipv6Subnet === undefined ? v4 : `${v4}&${keyText6(ipv6Subnet)}`;
}

// flannel's regex, except that twill matches the whole last path segment: flannel's is anchored only
// at the end, so it would also accept "foo10.5.52.0-24", which no flannel ever writes.
const KEY_RE = /^(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$/;

/**
 * Parses the subnets named by a lease key (the part after the last "/subnets/"; a bare
 * "10.5.52.0-24" is accepted too). Throws SubnetKeyError naming the key and the problem.
 */
export function parseSubnetKey(key: string): LeaseSubnets {
  const at = key.lastIndexOf(SUBNETS_SEGMENT);
  const tail = at < 0 ? key : key.slice(at + SUBNETS_SEGMENT.length);
  const match = KEY_RE.exec(tail);
  if (!match) throw new SubnetKeyError(key, `"${tail}" does not have the form A.B.C.D-LEN[&IPV6-LEN]`);
  const [, ipText = "", lenText = "", v6Address, v6Len = ""] = match;
  const ip = tryParseIPv4(ipText);
  if (ip === undefined) throw new SubnetKeyError(key, `"${ipText}" is not an IPv4 address`);
  // flannel parses the length as a 5-bit number (Go ParseUint(s, 10, 5)): leading zeros are fine,
  // 32 and above are not — so a /32 key is not a subnet to flannel either.
  const prefixLen = Number(lenText);
  if (prefixLen > 31) {
    throw new SubnetKeyError(key, `prefix length ${lenText} is out of range 0–31 (flannel rejects /32 keys)`);
  }
  const network = (ip & maskOf(prefixLen)) >>> 0;
  if (network !== ip) {
    // flannel would keep the host bits and route a misaligned prefix; name it instead.
    throw new SubnetKeyError(
      key,
      `${ipText} has host bits set for /${prefixLen} (the network address is ${formatIPv4(network)})`,
    );
  }
  if (v6Address === undefined) return { subnet: { ip, prefixLen }, ipv6Subnet: undefined };
  // As flannel parses it: an IPv6 address, and a length that fits 7 bits.
  const ip6 = tryParseIPv6(v6Address);
  if (ip6 === undefined) throw new SubnetKeyError(key, `"${v6Address}" is not an IPv6 address`);
  const v6PrefixLen = Number(v6Len);
  if (v6PrefixLen > 127 || v6PrefixLen === 0) {
    throw new SubnetKeyError(key, `IPv6 prefix length ${v6Len} is out of range 1–127`);
  }
  const network6 = ip6 & maskOf6(v6PrefixLen);
  if (network6 !== ip6) {
    throw new SubnetKeyError(
      key,
      `${v6Address} has host bits set for /${v6PrefixLen} (the network address is ${formatIPv6(network6)})`,
    );
  }
  return { subnet: { ip, prefixLen }, ipv6Subnet: { ip: ip6, prefixLen: v6PrefixLen } };
}

/** Like parseSubnetKey but returns undefined for keys that are not subnets. */
export function tryParseSubnetKey(key: string): LeaseSubnets | undefined {
  try {
    return parseSubnetKey(key);
  } catch {
    return undefined;
  }
}

/** Whether a lease holds an IPv4 subnet (an IPv6-only lease holds flannel's empty 0.0.0.0/0). */
export function hasIPv4(subnet: Subnet): boolean {
  return subnet.prefixLen > 0;
}

/** The name a lease goes by in logs and status: its IPv4 subnet, its IPv6 one, or both. */
export function leaseName(subnets: LeaseSubnets): string {
  const v6 = subnets.ipv6Subnet === undefined ? undefined : formatCidr6(subnets.ipv6Subnet);
  if (!hasIPv4(subnets.subnet)) return v6 ?? "0.0.0.0/0";
  const v4 = `${formatIPv4(subnets.subnet.ip)}/${subnets.subnet.prefixLen}`;
  return v6 === undefined ? v4 : `${v4}+${v6}`;
}

/**
 * Leases in subnet order: by IPv4 subnet, then by IPv6 subnet (IPv6-only leases all hold 0.0.0.0/0),
 * for listings (`twill leases`, `twill status`).
 */
export function compareBySubnets(a: LeaseSubnets, b: LeaseSubnets): number {
  const a6 = a.ipv6Subnet?.ip ?? 0n;
  const b6 = b.ipv6Subnet?.ip ?? 0n;
  return (
    a.subnet.ip - b.subnet.ip || a.subnet.prefixLen - b.subnet.prefixLen || (a6 < b6 ? -1 : a6 > b6 ? 1 : 0)
  );
}
