// The vxlan BackendData in a lease, {"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}, byte-identical to what
// flanneld writes, and read the way flanneld reads it.
import { LeaseDecodeError } from "../../lease/attrs.js";
import { parseMac, unicastMacProblem } from "../../ip/mac.js";
import { VXLAN_MAX_VNI } from "./config.js";

/** A peer's vxlan BackendData, parsed once in the peer view (Lease.peerData). */
export class VxlanPeerData {
  constructor(
    /** 0 when the peer did not publish one (older flannel). */
    readonly vni: number,
    /** Lower-case colon form. */
    readonly vtepMac: string,
  ) {}
}

/** The BackendData a vxlan node publishes. Throws on a bad VNI or MAC (a bug in the caller). */
export function vxlanBackendData(vni: number, mac: string): string {
  if (!Number.isInteger(vni) || vni < 0 || vni > VXLAN_MAX_VNI)
    throw new RangeError(`VNI ${vni} is out of range`);
  const normal = parseMac(mac);
  if (normal === undefined || unicastMacProblem(normal) !== undefined) {
    throw new RangeError(`"${mac}" is not a unicast MAC address`);
  }
  return `{"VNI":${vni},"VtepMAC":"${normal}"}`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return `${typeof value} ${JSON.stringify(value)}`;
}

/** Go's field matching: case-insensitive keys, the last match wins. */
function field(obj: Record<string, unknown>, name: string): { found: boolean; value: unknown } {
  let found = false;
  let value: unknown;
  for (const [key, v] of Object.entries(obj)) {
    if (key.toLowerCase() === name.toLowerCase()) {
      found = true;
      value = v;
    }
  }
  return { found, value };
}

/**
 * Reads a peer's vxlan BackendData. VtepMAC is required (6 octets, unicast), returned in lower-case
 * colon form. VNI defaults to 0 when absent (older flannel releases did not publish it; flannel itself
 * never reads a peer's VNI) and must otherwise be an integer 0–2^24−1. Throws LeaseDecodeError naming
 * the field.
 */
export function parseVxlanBackendData(text: string | undefined): VxlanPeerData {
  if (text === undefined) {
    throw new LeaseDecodeError("BackendData", "BackendData is missing (vxlan needs VtepMAC)");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LeaseDecodeError("BackendData", `BackendData is not valid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(parsed)) {
    throw new LeaseDecodeError("BackendData", `BackendData is ${describe(parsed)}, not a JSON object`);
  }
  const vniField = field(parsed, "VNI");
  const vni = vniField.found && vniField.value !== null ? vniField.value : 0;
  if (typeof vni !== "number" || !Number.isInteger(vni) || vni < 0 || vni > VXLAN_MAX_VNI) {
    throw new LeaseDecodeError(
      "BackendData.VNI",
      `BackendData.VNI is ${describe(vni)}, not an integer 0–${VXLAN_MAX_VNI}`,
    );
  }
  const macField = field(parsed, "VtepMAC");
  if (!macField.found) throw new LeaseDecodeError("BackendData.VtepMAC", "BackendData.VtepMAC is missing");
  const macText = macField.value;
  if (typeof macText !== "string") {
    throw new LeaseDecodeError(
      "BackendData.VtepMAC",
      `BackendData.VtepMAC is ${describe(macText)}, not a string`,
    );
  }
  const vtepMac = parseMac(macText);
  if (vtepMac === undefined || macText !== macText.trim()) {
    throw new LeaseDecodeError(
      "BackendData.VtepMAC",
      `BackendData.VtepMAC "${macText}" is not a 6-octet MAC address`,
    );
  }
  const problem = unicastMacProblem(vtepMac);
  if (problem !== undefined) {
    throw new LeaseDecodeError("BackendData.VtepMAC", `BackendData.VtepMAC "${macText}" is ${problem}`);
  }
  return new VxlanPeerData(vni, vtepMac);
}
