// MAC addresses: one parser for every place twill reads one (lease BackendData, the persisted VTEP MAC,
// kernel dumps), accepting what Go's net.ParseMAC accepts for 6 octets, so flannel's leases read the same.
import { randomBytes } from "node:crypto";

/**
 * The lower-case colon form of a 6-octet MAC given as aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or
 * aabb.ccdd.eeff (any case, surrounding whitespace ignored); undefined for anything else.
 */
export function parseMac(text: string): string | undefined {
  const candidate = text.trim();
  let hex: string;
  if (/^[\da-f]{2}([:-])[\da-f]{2}(\1[\da-f]{2}){4}$/i.test(candidate)) hex = candidate.replace(/[:-]/g, "");
  else if (/^[\da-f]{4}\.[\da-f]{4}\.[\da-f]{4}$/i.test(candidate)) hex = candidate.replace(/\./g, "");
  else return undefined;
  return hex.toLowerCase().replace(/(..)(?!$)/g, "$1:");
}

/** Why a (parsed) MAC cannot be a unicast device address, or undefined if it can. */
export function unicastMacProblem(mac: string): string | undefined {
  if (mac === "00:00:00:00:00:00") return "the all-zero address";
  // The group bit is the low bit of the first octet, i.e. of its second hex digit.
  const digit = mac.charCodeAt(1);
  const value = digit <= 57 ? digit - 48 : (digit | 32) - 87;
  if (value & 1) return "a multicast/broadcast address";
  return undefined;
}

/** True for a unicast MAC (multicast bit clear), not all-zero. */
export function isUnicastMac(mac: string): boolean {
  return unicastMacProblem(mac) === undefined;
}

/** A random locally-administered unicast MAC, as flannel makes for its VTEP (bit0 clear, bit1 set). */
export function randomVtepMac(bytes: Uint8Array = randomBytes(6)): string {
  const octets = Array.from(bytes.slice(0, 6));
  octets[0] = ((octets[0] ?? 0) & 0xfe) | 0x02;
  return octets.map((b) => b.toString(16).padStart(2, "0")).join(":");
}
