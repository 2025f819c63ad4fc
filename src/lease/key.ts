// etcd key naming for subnet leases, byte-compatible with flannel: <prefix>/subnets/10.244.3.0-24.
import { isIPv6 } from "node:net";
import { formatIPv4, maskOf, tryParseIPv4, type Subnet } from "../ip/ipv4.js";

/** A key under <prefix>/subnets/ that does not name a usable IPv4 subnet. */
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

/** The etcd key of a subnet's lease, e.g. /coreos.com/network/subnets/10.244.3.0-24. */
export function subnetKey(prefix: string, subnet: Subnet): string {
  return `${subnetsPrefix(prefix)}${formatIPv4(subnet.ip)}-${subnet.prefixLen}`;
}

// flannel's regex, except that twill matches the whole last path segment: flannel's is anchored only
// at the end, so it would also accept "foo10.5.52.0-24", which no flannel ever writes.
const KEY_RE = /^(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$/;

/**
 * Parses the subnet named by a lease key (the part after the last "/subnets/"; a bare
 * "10.5.52.0-24" is accepted too). Throws SubnetKeyError naming the key and the problem.
 */
export function parseSubnetKey(key: string): Subnet {
  const { subnet, ipv6Part } = parseKey(key);
  if (ipv6Part !== undefined) {
    throw new SubnetKeyError(key, "it is a dual-stack key (IPv6 not supported by twill yet)");
  }
  return subnet;
}

/**
 * The IPv4 subnet a key holds, a dual-stack key's too ("10.12.13.0-24&fd00:12:13::-56", what
 * flanneld nodes with EnableIPv6 write): its IPv4 subnet is taken, so allocation must not hand it out
 * again, though twill cannot be that node's peer. Throws SubnetKeyError as parseSubnetKey does.
 */
export function ipv4SubnetOfKey(key: string): Subnet {
  return parseKey(key).subnet;
}

function parseKey(key: string): { subnet: Subnet; ipv6Part: string | undefined } {
  const at = key.lastIndexOf(SUBNETS_SEGMENT);
  const tail = at < 0 ? key : key.slice(at + SUBNETS_SEGMENT.length);
  const match = KEY_RE.exec(tail);
  if (!match) throw new SubnetKeyError(key, `"${tail}" does not have the form A.B.C.D-LEN`);
  const [, ipText = "", lenText = "", v6Address, v6Len = ""] = match;
  if (v6Address !== undefined) {
    // As flannel parses it: an IPv6 address, and a length that fits 7 bits.
    if (!isIPv6(v6Address)) throw new SubnetKeyError(key, `"${v6Address}" is not an IPv6 address`);
    if (Number(v6Len) > 127)
      throw new SubnetKeyError(key, `IPv6 prefix length ${v6Len} is out of range 0–127`);
  }
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
  return {
    subnet: { ip, prefixLen },
    ipv6Part: v6Address === undefined ? undefined : `${v6Address}-${v6Len}`,
  };
}

/** Like parseSubnetKey but returns undefined for keys that are not subnets. */
export function tryParseSubnetKey(key: string): Subnet | undefined {
  try {
    return parseSubnetKey(key);
  } catch {
    return undefined;
  }
}
