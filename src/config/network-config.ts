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
  containsIp6,
  formatCidr6,
  formatIPv6,
  Ipv6ParseError,
  maskOf6,
  nextSubnetAddress6,
  parseCidr6,
  parseIPv6,
  sizeOf6,
  type IPv6,
  type Subnet6,
} from "../ip/ipv6.js";
import {
  describeJsonValue,
  isJsonObject,
  JsonFieldError,
  optionalBoolean,
  optionalString,
  optionalUint,
  resolveFields,
} from "./json-fields.js";
import { errorMessage } from "../util/log.js";
import type { BackendConfig } from "../backends/backend.js";
import { BACKENDS, backendForConfig, DEFAULT_BACKEND } from "../backends/registry.js";

export interface NetworkConfig {
  /**
   * EnableIPv4 (default true). When false (IPv6-only), network, subnetLen, subnetMin and subnetMax hold
   * flannel's empty values (0.0.0.0/0, 0) and leases carry the empty IPv4 subnet, as flannel writes them.
   */
  readonly enableIPv4: boolean;
  /** EnableIPv6: the IPv6 pool; undefined when IPv6 is off. */
  readonly ipv6: Ipv6Pool | undefined;
  /** The cluster network (host bits dropped), e.g. 10.244.0.0/16. */
  readonly network: Subnet;
  /** Prefix length of each node's lease, e.g. 24. */
  readonly subnetLen: number;
  /** First and last subnet addresses a lease may take (inclusive, aligned to subnetLen). */
  readonly subnetMin: IPv4;
  readonly subnetMax: IPv4;
  /** The backend (src/backends/<type>) with its options parsed. */
  readonly backend: BackendConfig;
}

/** The IPv6 half of a dual-stack or IPv6-only config. */
export interface Ipv6Pool {
  /** IPv6Network (host bits dropped), e.g. fd00:10:244::/56. */
  readonly network: Subnet6;
  /** IPv6SubnetLen, e.g. 64. */
  readonly subnetLen: number;
  /** IPv6SubnetMin and IPv6SubnetMax: first and last subnet addresses a lease may take (inclusive). */
  readonly subnetMin: IPv6;
  readonly subnetMax: IPv6;
}

/** The empty IPv4 values flannel keeps when EnableIPv4 is false. */
const NO_IPV4 = { network: { ip: 0, prefixLen: 0 }, subnetLen: 0, subnetMin: 0, subnetMax: 0 } as const;

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

export const BACKEND_NOT_SET_WARNING =
  `Backend not set: using ${DEFAULT_BACKEND.type}, as flanneld does for this config, so both agree; udp ` +
  `copies every packet through a userspace proxy and is far slower than vxlan: set "Backend": ` +
  `{"Type": "vxlan"} in the network config (twill config set) and restart every node`;

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
  const ipv6NetworkText = optionalString(
    values.get("IPv6Network"),
    "IPv6Network",
    'a CIDR string such as "fd00:10:244::/56"',
  );
  const ipv6SubnetLen = optionalUint(values.get("IPv6SubnetLen"), "IPv6SubnetLen");
  const ipv6SubnetMin = optionalIPv6(values.get("IPv6SubnetMin"), "IPv6SubnetMin");
  const ipv6SubnetMax = optionalIPv6(values.get("IPv6SubnetMax"), "IPv6SubnetMax");

  if (!enableIPv4 && !enableIPv6) {
    throw new ConfigError(
      "EnableIPv4",
      "EnableIPv4 and EnableIPv6 are both false: no address family is left; set EnableIPv4 or EnableIPv6 to true",
    );
  }
  if (enableNFTables) {
    throw new ConfigError(
      "EnableNFTables",
      "EnableNFTables: nftables mode is not supported by twill yet; set it to false (twill uses iptables)",
    );
  }

  // flannel checks only the families that are enabled: a disabled family's fields are ignored.
  const ipv4 = enableIPv4 ? checkIPv4(networkText, subnetLen, subnetMin, subnetMax) : NO_IPV4;
  const ipv6 = enableIPv6
    ? checkIPv6(ipv6NetworkText, ipv6SubnetLen, ipv6SubnetMin, ipv6SubnetMax)
    : undefined;
  const backend = parseBackend(values.has("Backend"), values.get("Backend"), warnings);
  if (ipv6 !== undefined && backendForConfig(backend.type)?.supportsIPv6 !== true) {
    const supported = BACKENDS.filter((plugin) => plugin.supportsIPv6 === true)
      .map((plugin) => plugin.type)
      .join(", ");
    throw new ConfigError(
      "EnableIPv6",
      `EnableIPv6: backend ${backend.type} carries IPv4 only (as in flannel); use ${supported}, or set EnableIPv6 to false`,
    );
  }
  backend.checkFamilies?.({ ipv4: enableIPv4, ipv6: ipv6 !== undefined });
  return { config: { enableIPv4, ipv6, ...ipv4, backend }, warnings };
}

/** An IPv6 address field; "::" means unset, as flannel's zero IP6 does. */
function optionalIPv6(value: unknown, field: string): IPv6 | undefined {
  const text = optionalString(value, field, 'an IPv6 address string such as "fd00:10:244:1::"');
  if (text === undefined) return undefined;
  let ip: IPv6;
  try {
    ip = parseIPv6(text);
  } catch (err) {
    if (err instanceof Ipv6ParseError)
      throw new ConfigError(field, `${field} ${JSON.stringify(text)}: ${err.message}`);
    throw err;
  }
  return ip === 0n ? undefined : ip;
}

/** flannel's CheckNetworkConfig for IPv6, messages prefixed with field and value. */
function checkIPv6(
  networkText: string | undefined,
  givenSubnetLen: number | undefined,
  givenMin: IPv6 | undefined,
  givenMax: IPv6 | undefined,
): Ipv6Pool {
  if (networkText === undefined || networkText === "") {
    throw new ConfigError(
      "IPv6Network",
      'IPv6Network: please define a correct IPv6Network parameter in the flannel config (e.g. "IPv6Network": "fd00:10:244::/56"), or set EnableIPv6 to false',
    );
  }
  const shownNetwork = JSON.stringify(networkText);
  let network: Subnet6;
  try {
    network = parseCidr6(networkText);
  } catch (err) {
    if (err instanceof Ipv6ParseError) {
      throw new ConfigError(
        "IPv6Network",
        `IPv6Network ${shownNetwork}: invalid IPv6 CIDR format (${err.message})`,
      );
    }
    throw err;
  }

  let subnetLen: number;
  if (givenSubnetLen !== undefined && givenSubnetLen > 0) {
    subnetLen = givenSubnetLen;
    if (subnetLen > 126) {
      throw new ConfigError("IPv6SubnetLen", `IPv6SubnetLen ${subnetLen}: SubnetLen must be less than /127`);
    }
    if (subnetLen < network.prefixLen + 2) {
      throw new ConfigError(
        "IPv6SubnetLen",
        `IPv6SubnetLen ${subnetLen}: network must be able to accommodate at least four subnets ` +
          `(IPv6Network ${formatCidr6(network)} needs IPv6SubnetLen ${network.prefixLen + 2} or more)`,
      );
    }
  } else if (network.prefixLen > 124) {
    throw new ConfigError(
      "IPv6Network",
      `IPv6Network ${shownNetwork}: IPv6Network is too small. Minimum useful network prefix is /124`,
    );
  } else {
    subnetLen = network.prefixLen <= 62 ? 64 : network.prefixLen + 2;
  }

  const size = sizeOf6(subnetLen);
  const networkName = formatCidr6(network);
  // As for IPv4, the default range skips the network's first subnet and ends at its last one.
  const subnetMin = givenMin ?? network.ip + size;
  if (givenMin !== undefined && !containsIp6(network, givenMin)) {
    throw new ConfigError(
      "IPv6SubnetMin",
      `IPv6SubnetMin ${formatIPv6(givenMin)}: IPv6SubnetMin is not in the range of the IPv6Network ${networkName}`,
    );
  }
  const subnetMax = givenMax ?? nextSubnetAddress6(network) - size;
  if (givenMax !== undefined && !containsIp6(network, givenMax)) {
    throw new ConfigError(
      "IPv6SubnetMax",
      `IPv6SubnetMax ${formatIPv6(givenMax)}: IPv6SubnetMax is not in the range of the IPv6Network ${networkName}`,
    );
  }
  const mask = maskOf6(subnetLen);
  if ((subnetMin & mask) !== subnetMin) {
    const ip = formatIPv6(subnetMin);
    throw new ConfigError(
      "IPv6SubnetMin",
      `IPv6SubnetMin ${ip}: IPv6SubnetMin is not on a SubnetLen boundary: ${ip}`,
    );
  }
  if ((subnetMax & mask) !== subnetMax) {
    const ip = formatIPv6(subnetMax);
    throw new ConfigError(
      "IPv6SubnetMax",
      `IPv6SubnetMax ${ip}: IPv6SubnetMax is not on a SubnetLen boundary: ${ip}`,
    );
  }
  // twill's own check, as for IPv4: flannel would fail every allocation with "out of subnets".
  if (subnetMin > subnetMax) {
    const field = givenMax !== undefined && givenMin === undefined ? "IPv6SubnetMax" : "IPv6SubnetMin";
    throw new ConfigError(
      field,
      `IPv6SubnetMin ${formatIPv6(subnetMin)} is after IPv6SubnetMax ${formatIPv6(subnetMax)}: no subnet could be allocated`,
    );
  }
  return { network, subnetLen, subnetMin, subnetMax };
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
): Pick<NetworkConfig, "network" | "subnetLen" | "subnetMin" | "subnetMax"> {
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
    return DEFAULT_BACKEND.parseConfig({}, []);
  }
  if (!isJsonObject(raw)) {
    throw new ConfigError(
      "Backend",
      `Backend: expected an object such as {"Type": "vxlan"}, got ${describeJsonValue(raw)}`,
    );
  }
  const supported = BACKENDS.map((backend) => backend.type).join(", ");
  // Type decides which other keys are known, so look it up on its own first.
  const typeText = optionalString(resolveFields(raw, ["Type"]).values.get("Type"), "Backend.Type");
  if (typeText === undefined || typeText === "") {
    throw new ConfigError(
      "Backend.Type",
      `Backend.Type is not set: choose one of ${supported} (flannel would fail with "unknown backend type")`,
    );
  }
  const plugin = backendForConfig(typeText);
  if (plugin === undefined) {
    throw new ConfigError(
      "Backend.Type",
      `Backend.Type ${JSON.stringify(typeText)} is not supported by twill (supported: ${supported})`,
    );
  }
  return plugin.parseConfig(raw, warnings);
}
