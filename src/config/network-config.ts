// The cluster-wide network configuration stored at <prefix>/config, in flannel's JSON format.
// Parsing is pure: text in, a validated NetworkConfig (or a ConfigError naming the field) out.
import {
  containsIp,
  formatCidr,
  formatIPv4,
  IpParseError,
  maskOf,
  nextSubnetAddress,
  parseCidr,
  parseIPv4,
  sizeOf,
  type IPv4,
  type Subnet,
} from "../ip/ipv4.js";
import {
  describeJsonValue,
  isJsonObject,
  JsonFieldError,
  optionalBoolean,
  optionalInt,
  optionalString,
  optionalUint,
  resolveFields,
  type JsonObject,
} from "./json-fields.js";
import { errorMessage } from "../util/log.js";

export type BackendType = "vxlan" | "host-gw";

export interface VxlanBackendConfig {
  readonly type: "vxlan";
  /** VXLAN network identifier, also the device suffix (flannel.<VNI>). Default 1. */
  readonly vni: number;
  /** UDP destination port. Default 8472 (flannel's 0 means the kernel default, 8472). */
  readonly port: number;
  /** Base MTU before the 50-byte VXLAN overhead; undefined = the external interface's MTU. */
  readonly mtu: number | undefined;
  readonly gbp: boolean;
  readonly learning: boolean;
  readonly directRouting: boolean;
}

export interface HostGwBackendConfig {
  readonly type: "host-gw";
}

export type BackendConfig = VxlanBackendConfig | HostGwBackendConfig;

export interface NetworkConfig {
  /** The cluster network (host bits dropped), e.g. 10.244.0.0/16. */
  readonly network: Subnet;
  /** Prefix length of each node's lease, e.g. 24. */
  readonly subnetLen: number;
  /** First and last subnet addresses a lease may take (inclusive, aligned to subnetLen). */
  readonly subnetMin: IPv4;
  readonly subnetMax: IPv4;
  readonly backend: BackendConfig;
}

/** A config problem; `field` is the JSON field at fault (e.g. "SubnetLen", "Backend.VNI"). */
export class ConfigError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = "ConfigError";
  }
}

export const SUPPORTED_BACKEND_TYPES: readonly BackendType[] = ["vxlan", "host-gw"];

/** Linux's legacy VXLAN port, which the kernel uses when flannel passes Port 0. */
export const VXLAN_DEFAULT_PORT = 8472;
export const VXLAN_DEFAULT_VNI = 1;
export const VXLAN_MAX_VNI = 0xffffff;
/** Bytes of VXLAN encapsulation (outer IPv4 + UDP + VXLAN + inner Ethernet); device MTU = MTU - 50. */
export const VXLAN_OVERHEAD = 50;
/**
 * Smallest accepted Backend.MTU: the VXLAN device gets MTU - 50, and the kernel refuses a device MTU
 * below 68 (the IPv4 minimum), so a smaller value could only fail later with an opaque netlink error.
 */
export const VXLAN_MIN_MTU = 68 + VXLAN_OVERHEAD;
export const VXLAN_MAX_MTU = 65535;

export const BACKEND_NOT_SET_WARNING =
  "Backend not set: using vxlan (flannel's code would pick udp, which twill does not implement)";

const TOP_LEVEL_FIELDS = [
  "EnableIPv4",
  "EnableIPv6",
  "EnableNFTables",
  "Network",
  "SubnetLen",
  "SubnetMin",
  "SubnetMax",
  "IPv6Network",
  "IPv6SubnetLen",
  "IPv6SubnetMin",
  "IPv6SubnetMax",
  "Backend",
] as const;

const VXLAN_FIELDS = ["Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting"] as const;

const DEFAULT_VXLAN: VxlanBackendConfig = {
  type: "vxlan",
  vni: VXLAN_DEFAULT_VNI,
  port: VXLAN_DEFAULT_PORT,
  mtu: undefined,
  gbp: false,
  learning: false,
  directRouting: false,
};

/**
 * Parses and validates flannel's network config JSON (etcd <prefix>/config or net-conf.json), filling
 * defaults exactly as flannel's CheckNetworkConfig does. Throws ConfigError on anything twill cannot
 * run with; `warnings` lists what was accepted but deserves an operator's attention.
 */
export function parseNetworkConfig(text: string): { config: NetworkConfig; warnings: string[] } {
  try {
    return parseConfig(text);
  } catch (err) {
    // The JSON helpers are generic; give callers one error type to catch.
    if (err instanceof JsonFieldError) throw new ConfigError(err.field, err.message);
    throw err;
  }
}

function parseConfig(text: string): { config: NetworkConfig; warnings: string[] } {
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (err) {
    throw new ConfigError("(json)", `invalid JSON: ${errorMessage(err)}`);
  }
  if (!isJsonObject(root)) {
    throw new ConfigError(
      "(json)",
      `the network config must be a JSON object, got ${describeJsonValue(root)}`,
    );
  }
  const { values, warnings } = resolveFields(root, TOP_LEVEL_FIELDS);

  // Type-check everything first, as Go's decoder does before any validation runs.
  const enableIPv4 = optionalBoolean(values.get("EnableIPv4"), "EnableIPv4") ?? true;
  const enableIPv6 = optionalBoolean(values.get("EnableIPv6"), "EnableIPv6") ?? false;
  const enableNFTables = optionalBoolean(values.get("EnableNFTables"), "EnableNFTables") ?? false;
  const networkText = optionalString(
    values.get("Network"),
    "Network",
    'a CIDR string such as "10.244.0.0/16"',
  );
  const subnetLen = optionalUint(values.get("SubnetLen"), "SubnetLen");
  const subnetMin = optionalIPv4(values.get("SubnetMin"), "SubnetMin");
  const subnetMax = optionalIPv4(values.get("SubnetMax"), "SubnetMax");
  // IPv6Network, IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax are accepted and ignored: they only
  // matter with EnableIPv6, which is refused below.

  if (enableIPv6) {
    throw new ConfigError("EnableIPv6", "EnableIPv6: IPv6 is not supported by twill yet; set it to false");
  }
  if (!enableIPv4) {
    throw new ConfigError(
      "EnableIPv4",
      "EnableIPv4 false: twill needs IPv4 (IPv6-only networks are not supported); set it to true or remove it",
    );
  }
  if (enableNFTables) {
    throw new ConfigError(
      "EnableNFTables",
      "EnableNFTables: nftables mode is not supported by twill yet; set it to false (twill uses iptables)",
    );
  }

  const ipv4 = checkIPv4(networkText, subnetLen, subnetMin, subnetMax);
  const backend = parseBackend(values.has("Backend"), values.get("Backend"), warnings);
  return { config: { ...ipv4, backend }, warnings };
}

/** An IPv4 address field; "0.0.0.0" means unset, as flannel's zero IP4 value does. */
function optionalIPv4(value: unknown, field: string): IPv4 | undefined {
  const text = optionalString(value, field, 'an IPv4 address string such as "10.244.1.0"');
  if (text === undefined) return undefined;
  let ip: IPv4;
  try {
    ip = parseIPv4(text);
  } catch (err) {
    if (err instanceof IpParseError)
      throw new ConfigError(field, `${field} ${JSON.stringify(text)}: ${err.message}`);
    throw err;
  }
  return ip === 0 ? undefined : ip;
}

/** flannel's CheckNetworkConfig for IPv4 (pkg/subnet/config.go), messages prefixed with field and value. */
function checkIPv4(
  networkText: string | undefined,
  givenSubnetLen: number | undefined,
  givenMin: IPv4 | undefined,
  givenMax: IPv4 | undefined,
): Omit<NetworkConfig, "backend"> {
  if (networkText === undefined || networkText === "") {
    throw new ConfigError(
      "Network",
      'Network: please define a correct Network parameter in the flannel config (e.g. "Network": "10.244.0.0/16")',
    );
  }
  const shownNetwork = JSON.stringify(networkText);
  let network: Subnet;
  try {
    network = parseCidr(networkText);
  } catch (err) {
    if (err instanceof IpParseError) {
      throw new ConfigError("Network", `Network ${shownNetwork}: invalid IPv4 CIDR format (${err.message})`);
    }
    throw err;
  }

  let subnetLen: number;
  if (givenSubnetLen !== undefined && givenSubnetLen > 0) {
    subnetLen = givenSubnetLen;
    if (subnetLen > 30) {
      throw new ConfigError("SubnetLen", `SubnetLen ${subnetLen}: SubnetLen must be less than /31`);
    }
    if (subnetLen < network.prefixLen + 2) {
      throw new ConfigError(
        "SubnetLen",
        `SubnetLen ${subnetLen}: network must be able to accommodate at least four subnets ` +
          `(Network ${formatCidr(network)} needs SubnetLen ${network.prefixLen + 2} or more)`,
      );
    }
  } else if (network.prefixLen > 28) {
    throw new ConfigError(
      "Network",
      `Network ${shownNetwork}: network is too small. Minimum useful network prefix is /28`,
    );
  } else {
    subnetLen = network.prefixLen <= 22 ? 24 : network.prefixLen + 2;
  }

  const size = sizeOf(subnetLen);
  const networkName = formatCidr(network);
  // Like flannel, the default range skips the network's first subnet and ends at its last one.
  const subnetMin = givenMin ?? (network.ip + size) >>> 0;
  if (givenMin !== undefined && !containsIp(network, givenMin)) {
    throw new ConfigError(
      "SubnetMin",
      `SubnetMin ${formatIPv4(givenMin)}: SubnetMin is not in the range of the Network ${networkName}`,
    );
  }
  const subnetMax = givenMax ?? (nextSubnetAddress(network) - size) >>> 0;
  if (givenMax !== undefined && !containsIp(network, givenMax)) {
    throw new ConfigError(
      "SubnetMax",
      `SubnetMax ${formatIPv4(givenMax)}: SubnetMax is not in the range of the Network ${networkName}`,
    );
  }
  const mask = maskOf(subnetLen);
  if ((subnetMin & mask) >>> 0 !== subnetMin) {
    const ip = formatIPv4(subnetMin);
    throw new ConfigError("SubnetMin", `SubnetMin ${ip}: SubnetMin is not on a SubnetLen boundary: ${ip}`);
  }
  if ((subnetMax & mask) >>> 0 !== subnetMax) {
    const ip = formatIPv4(subnetMax);
    throw new ConfigError("SubnetMax", `SubnetMax ${ip}: SubnetMax is not on a SubnetLen boundary: ${ip}`);
  }
  // twill's own check: flannel accepts this and then fails every allocation with "out of subnets".
  if (subnetMin > subnetMax) {
    // Blame the bound the operator set (SubnetMin when both or neither were set).
    const field = givenMax !== undefined && givenMin === undefined ? "SubnetMax" : "SubnetMin";
    throw new ConfigError(
      field,
      `SubnetMin ${formatIPv4(subnetMin)} is after SubnetMax ${formatIPv4(subnetMax)}: no subnet could be allocated`,
    );
  }
  return { network, subnetLen, subnetMin, subnetMax };
}

function parseBackend(present: boolean, raw: unknown, warnings: string[]): BackendConfig {
  if (!present) {
    warnings.push(BACKEND_NOT_SET_WARNING);
    return DEFAULT_VXLAN;
  }
  if (!isJsonObject(raw)) {
    throw new ConfigError(
      "Backend",
      `Backend: expected an object such as {"Type": "vxlan"}, got ${describeJsonValue(raw)}`,
    );
  }
  const supported = SUPPORTED_BACKEND_TYPES.join(", ");
  // Type decides which other keys are known, so look it up on its own first.
  const typeText = optionalString(resolveFields(raw, ["Type"]).values.get("Type"), "Backend.Type");
  if (typeText === undefined || typeText === "") {
    throw new ConfigError(
      "Backend.Type",
      `Backend.Type is not set: choose one of ${supported} (flannel would fail with "unknown backend type")`,
    );
  }
  const type = typeText.toLowerCase();
  if (type === "host-gw") {
    warnings.push(...resolveFields(raw, ["Type"], "Backend.").warnings);
    return { type: "host-gw" };
  }
  if (type === "vxlan") return parseVxlan(raw, warnings);
  throw new ConfigError(
    "Backend.Type",
    `Backend.Type ${JSON.stringify(typeText)} is not supported by twill (supported: ${supported})`,
  );
}

function parseVxlan(raw: JsonObject, warnings: string[]): VxlanBackendConfig {
  const { values, warnings: fieldWarnings } = resolveFields(raw, VXLAN_FIELDS, "Backend.");
  warnings.push(...fieldWarnings);

  const vni = optionalInt(values.get("VNI"), "Backend.VNI") ?? VXLAN_DEFAULT_VNI;
  if (vni < 1 || vni > VXLAN_MAX_VNI) {
    throw new ConfigError("Backend.VNI", `Backend.VNI ${vni}: VNI must be from 1 to ${VXLAN_MAX_VNI}`);
  }
  if (vni > 0xffff) {
    // flannel decodes BackendData's VNI as a 16-bit number: its nodes could not read this lease.
    warnings.push(`Backend.VNI ${vni} is above 65535: flanneld nodes in the same cluster cannot read it`);
  }
  const port = optionalInt(values.get("Port"), "Backend.Port") ?? 0;
  if (port < 0 || port > 65535) {
    throw new ConfigError(
      "Backend.Port",
      `Backend.Port ${port}: Port must be from 0 to 65535 (0 means ${VXLAN_DEFAULT_PORT})`,
    );
  }
  const mtu = optionalInt(values.get("MTU"), "Backend.MTU") ?? 0;
  if (mtu !== 0 && (mtu < VXLAN_MIN_MTU || mtu > VXLAN_MAX_MTU)) {
    throw new ConfigError(
      "Backend.MTU",
      `Backend.MTU ${mtu}: MTU must be from ${VXLAN_MIN_MTU} to ${VXLAN_MAX_MTU}, or 0 for the interface's MTU ` +
        `(the VXLAN device gets MTU - ${VXLAN_OVERHEAD}, and the kernel needs at least 68)`,
    );
  }
  return {
    type: "vxlan",
    vni,
    port: port === 0 ? VXLAN_DEFAULT_PORT : port,
    mtu: mtu === 0 ? undefined : mtu,
    gbp: optionalBoolean(values.get("GBP"), "Backend.GBP") ?? false,
    learning: optionalBoolean(values.get("Learning"), "Backend.Learning") ?? false,
    directRouting: optionalBoolean(values.get("DirectRouting"), "Backend.DirectRouting") ?? false,
  };
}
