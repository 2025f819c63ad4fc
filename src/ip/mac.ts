// MAC addresses for VXLAN VTEPs.
import { randomBytes } from "node:crypto";

const macPattern = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Lower-case colon form, or undefined when `text` is not a 6-octet MAC. Accepts - separators. */
export function normalizeMac(text: string): string | undefined {
  const candidate = text.trim().toLowerCase().replace(/-/g, ":");
  return macPattern.test(candidate) ? candidate : undefined;
}

/** True for a unicast MAC (multicast bit clear), not all-zero. */
export function isUnicastMac(mac: string): boolean {
  const first = parseInt(mac.slice(0, 2), 16);
  return (first & 1) === 0 && mac !== "00:00:00:00:00:00";
}

/** A random locally-administered unicast MAC, as flannel makes for its VTEP (bit0 clear, bit1 set). */
export function randomVtepMac(bytes: Uint8Array = randomBytes(6)): string {
  const octets = Array.from(bytes.slice(0, 6));
  octets[0] = ((octets[0] ?? 0) & 0xfe) | 0x02;
  return octets.map((b) => b.toString(16).padStart(2, "0")).join(":");
}
