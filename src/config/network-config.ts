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
  optionalString,
  optionalUint,
  resolveFields,
} from "./json-fields.js";
import { errorMessage } from "../util/log.js";
import type { BackendConfig } from "../backends/backend.js";
import { BACKENDS, backendForConfig, DEFAULT_BACKEND } from "../backends/registry.js";

export interface NetworkConfig {
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
