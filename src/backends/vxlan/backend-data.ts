// The vxlan BackendData in a lease, {"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}, byte-identical to what
// flanneld writes, and read the way flanneld reads it.
import { LeaseDecodeError } from "../../lease/attrs.js";
import { parseMac, unicastMacProblem } from "../../ip/mac.js";
import { VXLAN_MAX_VNI } from "./config.js";

/** One VTEP a peer publishes: BackendData (IPv4) or BackendV6Data (IPv6). */
export interface VxlanVtepData {
  /** 0 when the peer did not publish one (older flannel). */
  readonly vni: number;
  /** Lower-case colon form. */
  readonly vtepMac: string;
}

/**
 * A peer's vxlan BackendData and BackendV6Data, parsed once in the peer view (Lease.peerData).
 * vni/vtepMac are its first VTEP's (IPv4, or IPv6 on an IPv6-only peer): what identifies it.
 */
export class VxlanPeerData implements VxlanVtepData {
  constructor(
    readonly vni: number,
    readonly vtepMac: string,
    /** BackendV6Data, when published. */
    readonly v6?: VxlanVtepData,
    /** Whether BackendData was published (not on an IPv6-only peer). */
    private readonly v4Published = true,
  ) {}

  /** BackendData, when published. */
  get v4(): VxlanVtepData | undefined {
    return this.v4Published ? { vni: this.vni, vtepMac: this.vtepMac } : undefined;
  }
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
  const vtep = parseVtep(text, "BackendData");
  return new VxlanPeerData(vtep.vni, vtep.vtepMac);
}

/**
 * A peer's BackendData and BackendV6Data (an IPv6-only peer publishes only the latter, a dual-stack one
 * both). Throws LeaseDecodeError naming the field.
 */
export function parseVxlanPeerData(text: string | undefined, v6Text: string | undefined): VxlanPeerData {
  // Go leaves a nil RawMessage out (omitempty); JSON null reads as absent too.
  const v6 = v6Text === undefined || v6Text === "null" ? undefined : parseVtep(v6Text, "BackendV6Data");
  if ((text === undefined || text === "null") && v6 !== undefined) {
    return new VxlanPeerData(v6.vni, v6.vtepMac, v6, false);
  }
  if (text === undefined && v6Text === undefined) {
    throw new LeaseDecodeError(
      "BackendData",
      "BackendData is missing (vxlan needs VtepMAC; an IPv6-only peer publishes it as BackendV6Data)",
    );
  }
  const v4 = parseVtep(text, "BackendData");
  return new VxlanPeerData(v4.vni, v4.vtepMac, v6);
}

function parseVtep(text: string | undefined, name: "BackendData" | "BackendV6Data"): VxlanVtepData {
  if (text === undefined) {
    throw new LeaseDecodeError(name, `${name} is missing (vxlan needs VtepMAC)`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LeaseDecodeError(name, `${name} is not valid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(parsed)) {
    throw new LeaseDecodeError(name, `${name} is ${describe(parsed)}, not a JSON object`);
  }
  const vniField = field(parsed, "VNI");
  const vni = vniField.found && vniField.value !== null ? vniField.value : 0;
  if (typeof vni !== "number" || !Number.isInteger(vni) || vni < 0 || vni > VXLAN_MAX_VNI) {
    throw new LeaseDecodeError(
      `${name}.VNI`,
      `${name}.VNI is ${describe(vni)}, not an integer 0–${VXLAN_MAX_VNI}`,
    );
  }
  const macField = field(parsed, "VtepMAC");
  if (!macField.found) throw new LeaseDecodeError(`${name}.VtepMAC`, `${name}.VtepMAC is missing`);
  const macText = macField.value;
  if (typeof macText !== "string") {
    throw new LeaseDecodeError(`${name}.VtepMAC`, `${name}.VtepMAC is ${describe(macText)}, not a string`);
  }
  const vtepMac = parseMac(macText);
  if (vtepMac === undefined || macText !== macText.trim()) {
    throw new LeaseDecodeError(
      `${name}.VtepMAC`,
      `${name}.VtepMAC "${macText}" is not a 6-octet MAC address`,
    );
  }
  const problem = unicastMacProblem(vtepMac);
  if (problem !== undefined) {
    throw new LeaseDecodeError(`${name}.VtepMAC`, `${name}.VtepMAC "${macText}" is ${problem}`);
  }
  return { vni, vtepMac };
}
