// The lease value (flannel's LeaseAttrs JSON). Encoding must be byte-identical to Go's encoding/json so
// that flannel and twill nodes can share one etcd. BackendData is kept as raw JSON text here: each
// backend reads its own (src/backends/<name>, e.g. vxlan/backend-data.ts).
import { formatIPv4, tryParseIPv4, unusableUnicastReason, type IPv4 } from "../ip/ipv4.js";
import { formatIPv6, tryParseIPv6, unusableUnicastReason6 } from "../ip/ipv6.js";
import type { LeaseAttrs } from "./lease.js";

/** A lease value that cannot be used; `field` is the JSON field at fault ("(root)" for the whole value). */
export class LeaseDecodeError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = "LeaseDecodeError";
  }
}

/**
 * A string as Go's encoding/json writes it: like JSON.stringify (Go ≥ 1.22 also writes \b and \f),
 * plus Go's HTML-safe escapes of <, > and & and of U+2028/U+2029.
 */
function goEscape(json: string): string {
  return json.replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

function goString(text: string): string {
  return goEscape(JSON.stringify(text));
}

/** flannel's LeaseAttrs JSON: PublicIP, PublicIPv6 (null when unused), then the omitempty fields. */
export function encodeLeaseAttrs(attrs: LeaseAttrs): string {
  let out = `{"PublicIP":${goString(formatIPv4(attrs.publicIP))},"PublicIPv6":`;
  out += attrs.publicIPv6 === null ? "null" : goString(attrs.publicIPv6);
  if (attrs.backendType !== undefined && attrs.backendType !== "") {
    out += `,"BackendType":${goString(attrs.backendType)}`;
  }
  // json.RawMessage is embedded as is; Go compacts it and applies the HTML escapes (they can only
  // occur inside JSON strings, so a global replace is exact).
  if (attrs.backendData !== undefined) out += `,"BackendData":${goEscape(attrs.backendData)}`;
  if (attrs.backendV6Data !== undefined) out += `,"BackendV6Data":${goEscape(attrs.backendV6Data)}`;
  return out + "}";
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Go's field matching: keys are compared case-insensitively, the last matching key wins,
 * unknown keys are ignored. Returns the values of the wanted fields (absent = not present).
 */
function pickFields<K extends string>(obj: Record<string, unknown>, names: readonly K[]): Map<K, unknown> {
  const byLower = new Map(names.map((n) => [n.toLowerCase(), n] as const));
  const found = new Map<K, unknown>();
  for (const [key, value] of Object.entries(obj)) {
    const name = byLower.get(key.toLowerCase());
    if (name !== undefined) found.set(name, value);
  }
  return found;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return `${typeof value} ${JSON.stringify(value)}`;
}

const ATTR_FIELDS = ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"] as const;

/** Decodes a lease value; throws LeaseDecodeError naming the field at fault. */
export function decodeLeaseAttrs(text: string): LeaseAttrs {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LeaseDecodeError("(root)", `lease value is not valid JSON: ${(err as Error).message}`);
  }
  if (!isPlainObject(parsed)) {
    throw new LeaseDecodeError("(root)", `lease value is ${describe(parsed)}, not a JSON object`);
  }
  const fields = pickFields(parsed, ATTR_FIELDS);

  if (!fields.has("PublicIP")) throw new LeaseDecodeError("PublicIP", "PublicIP is missing");
  const publicIPText = fields.get("PublicIP");
  if (typeof publicIPText !== "string") {
    throw new LeaseDecodeError("PublicIP", `PublicIP is ${describe(publicIPText)}, not a string`);
  }
  const publicIP = tryParseIPv4(publicIPText);
  if (publicIP === undefined) {
    throw new LeaseDecodeError("PublicIP", `PublicIP "${publicIPText}" is not an IPv4 address`);
  }

  // Absent and null are the same to Go (a nil *IP6).
  const publicIPv6Text = fields.get("PublicIPv6") ?? null;
  if (publicIPv6Text !== null && typeof publicIPv6Text !== "string") {
    throw new LeaseDecodeError(
      "PublicIPv6",
      `PublicIPv6 is ${describe(publicIPv6Text)}, not null or a string`,
    );
  }
  let publicIPv6: string | null = null;
  if (publicIPv6Text !== null) {
    // Go's IP6 decoder rejects what net.ParseIP does not take for IPv6; kept canonical here.
    const ip6 = tryParseIPv6(publicIPv6Text);
    if (ip6 === undefined) {
      throw new LeaseDecodeError("PublicIPv6", `PublicIPv6 "${publicIPv6Text}" is not an IPv6 address`);
    }
    publicIPv6 = formatIPv6(ip6);
  }

  // Go leaves a string untouched for null, so null reads as absent.
  const backendType = fields.get("BackendType") ?? undefined;
  if (backendType !== undefined && typeof backendType !== "string") {
    throw new LeaseDecodeError("BackendType", `BackendType is ${describe(backendType)}, not a string`);
  }

  return {
    publicIP,
    publicIPv6,
    backendType: backendType === "" ? undefined : backendType,
    backendData: rawField(fields, "BackendData"),
    backendV6Data: rawField(fields, "BackendV6Data"),
  };
}

// A json.RawMessage field as compact JSON text; JSON null is kept as "null", as Go does.
function rawField(fields: Map<string, unknown>, name: string): string | undefined {
  return fields.has(name) ? JSON.stringify(fields.get(name)) : undefined;
}

/** Why an address cannot be a node's PublicIP (naming it), or undefined if it can. */
export function publicIpProblem(ip: IPv4): string | undefined {
  const reason = unusableUnicastReason(ip);
  return reason === undefined ? undefined : `PublicIP ${formatIPv4(ip)} is ${reason}`;
}

/** Why a lease's PublicIPv6 cannot carry its IPv6 subnet (naming it), or undefined if it can. */
export function publicIpv6Problem(ip: string | null): string | undefined {
  if (ip === null) return "PublicIPv6 is missing, but the lease has an IPv6 subnet";
  const parsed = tryParseIPv6(ip);
  if (parsed === undefined) return `PublicIPv6 ${ip} is not an IPv6 address`;
  const reason = unusableUnicastReason6(parsed);
  return reason === undefined ? undefined : `PublicIPv6 ${ip} is ${reason}`;
}
