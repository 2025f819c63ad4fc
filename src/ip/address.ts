// One address type for IPv4 and IPv6: canonical text tagged with its family. Canonical means one
// spelling per address (dotted quad for IPv4, RFC 5952 for IPv6: lower case, longest zero run as ::),
// so string equality is address equality and kernel objects can use addresses in their keys. The
// netlink codec converts to and from bytes; the allocator keeps its numeric IPv4 (ipv4.ts).
import { isIPv6 } from "node:net";

export type Family = 4 | 6;

export class AddressError extends Error {
  override name = "AddressError";
}

/** Bytes of an address of this family. */
export function addressLength(family: Family): 4 | 16 {
  return family === 4 ? 4 : 16;
}

/** The family of canonical or non-canonical address text; throws AddressError if it is neither. */
export function familyOf(text: string): Family {
  // Through the parser, so both agree on what an address is (node:net also accepts a zone, "fe80::1%eth0").
  return parseAddressBytes(text).length === 4 ? 4 : 6;
}

function formatV6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0));
  // IPv4-mapped addresses keep their dotted tail, as the kernel and iproute2 print them.
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes[12] ?? 0}.${bytes[13] ?? 0}.${bytes[14] ?? 0}.${bytes[15] ?? 0}`;
  }
  // RFC 5952: the longest run (≥ 2) of zero groups becomes "::", the first one on a tie.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

/** Canonical text of 4 or 16 address bytes. */
export function formatAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return `${bytes[0] ?? 0}.${bytes[1] ?? 0}.${bytes[2] ?? 0}.${bytes[3] ?? 0}`;
  if (bytes.length === 16) return formatV6(bytes);
  throw new AddressError(`an address has 4 or 16 bytes, not ${bytes.length}`);
}

function parseV6(text: string): Uint8Array {
  let head = text;
  const tail: number[] = [];
  // A dotted IPv4 tail ("::ffff:1.2.3.4") stands for the last two groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted?.[1] !== undefined) {
    const v4 = parseAddressBytes(dotted[1]);
    tail.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
    head = text.slice(0, -dotted[1].length);
    if (head.endsWith(":") && !head.endsWith("::")) head = head.slice(0, -1);
  }
  const [left = "", right] = head.split("::");
  const toGroups = (part: string): number[] =>
    part === "" ? [] : part.split(":").map((g) => parseInt(g, 16));
  const leftGroups = toGroups(left);
  const rightGroups = [...(right === undefined ? [] : toGroups(right)), ...tail];
  const fill = 8 - leftGroups.length - rightGroups.length;
  const groups =
    right === undefined
      ? leftGroups.concat(tail)
      : [...leftGroups, ...Array<number>(fill).fill(0), ...rightGroups];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 255;
  });
  return bytes;
}

/**
 * Dotted-quad text to 4 bytes without a regular expression (this runs for every object a cold start
 * writes), or undefined when it is not exactly four decimal octets without leading zeros.
 */
export function parseDottedQuad(text: string): Uint8Array | undefined {
  const bytes = new Uint8Array(4);
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i <= text.length; i++) {
    const code = i === text.length ? 46 : text.charCodeAt(i);
    if (code === 46) {
      if (digits === 0 || part > 3) return undefined;
      bytes[part++] = value;
      value = 0;
      digits = 0;
    } else if (code >= 48 && code <= 57) {
      if (digits > 0 && value === 0) return undefined; // a leading zero
      value = value * 10 + (code - 48);
      digits += 1;
      if (value > 255) return undefined;
    } else {
      return undefined;
    }
  }
  return part === 4 ? bytes : undefined;
}

/** The 4 or 16 bytes of address text (any valid spelling); throws AddressError naming the text. */
export function parseAddressBytes(text: string): Uint8Array {
  const quad = parseDottedQuad(text);
  if (quad !== undefined) return quad;
  if (isIPv6(text) && !text.includes("%")) return parseV6(text);
  throw new AddressError(`"${text}" is not an IP address`);
}

/** The canonical spelling of address text; throws AddressError when it is not an address. */
export function canonicalAddress(text: string): string {
  return formatAddress(parseAddressBytes(text));
}

/** A network in canonical form: host bits cleared, "10.244.5.0/24" or "fd00:1::/64". */
export interface Prefix {
  readonly family: Family;
  /** The network address, canonical. */
  readonly address: string;
  readonly length: number;
}

function maskBytes(bytes: Uint8Array, length: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  for (let i = 0; i < out.length; i++) {
    const bits = Math.max(0, Math.min(8, length - 8 * i));
    out[i] = (out[i] ?? 0) & ((0xff << (8 - bits)) & 0xff);
  }
  return out;
}

/** Parses "address/length"; host bits are dropped. Throws AddressError naming the text. */
export function parsePrefix(text: string): Prefix {
  const slash = text.indexOf("/");
  if (slash < 0) throw new AddressError(`"${text}" is not in CIDR notation (address/prefix-length)`);
  const bytes = parseAddressBytes(text.slice(0, slash));
  const family: Family = bytes.length === 4 ? 4 : 6;
  const lengthText = text.slice(slash + 1);
  const max = bytes.length * 8;
  if (!/^\d{1,3}$/.test(lengthText) || Number(lengthText) > max) {
    throw new AddressError(`"${text}" has an invalid prefix length (0–${max})`);
  }
  const length = Number(lengthText);
  return { family, address: formatAddress(maskBytes(bytes, length)), length };
}

export function formatPrefix(prefix: Prefix): string {
  return `${prefix.address}/${prefix.length}`;
}

/** The canonical CIDR text of a network given as bytes and length (host bits dropped). */
export function prefixText(bytes: Uint8Array, length: number): string {
  return `${formatAddress(maskBytes(bytes, length))}/${length}`;
}

/** Whether `address` (canonical or not) lies inside `prefix`. */
export function prefixContains(prefix: Prefix, address: string): boolean {
  const bytes = parseAddressBytes(address);
  if (bytes.length !== addressLength(prefix.family)) return false;
  return formatAddress(maskBytes(bytes, prefix.length)) === prefix.address;
}
