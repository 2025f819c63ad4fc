// The CNI network configuration list: the one twill writes for its node (bridge + host-local + portmap,
// the standard plugins), and the parser `twill netns` uses to run any conflist the way libcni does.
import { firstHost, formatCidr, formatIPv4, type Subnet } from "../ip/ipv4.js";
import { firstHost6, formatCidr6, formatIPv6, type Subnet6 } from "../ip/ipv6.js";
import { parseSubnetEnv } from "../node/subnet-env.js";
import { isJsonObject, parseJsonObject, type JsonObject, type JsonValue } from "./json.js";
import { errorMessage } from "../util/log.js";
import { DEFAULT_CNI_VERSION } from "./version.js";

/**
 * The spec version twill writes unless told otherwise: Debian's plugins (v1.1.1) speak 0.1.0 … 1.0.0.
 * The agent declares what its installed plugins speak (src/cni/version.ts); CHECK needs ≥ 0.4.0.
 */
export const TWILL_CNI_VERSION = DEFAULT_CNI_VERSION;
export const TWILL_NETWORK_NAME = "twill";
export const DEFAULT_CNI_CONF_FILE = "/etc/cni/net.d/10-twill.conflist";

export interface TwillConflistInput {
  /** The IPv4 cluster network (FLANNEL_NETWORK); 0.0.0.0/0 on an IPv6-only node. */
  readonly network: Subnet;
  /**
   * The node's IPv4 lease, as a network (10.244.5.0/24). On an IPv6-only node 0.0.0.0/0 (prefix
   * length 0, as in SubnetEnv): then the conflist has no IPv4 range and no IPv4 routes.
   */
  readonly subnet: Subnet;
  /** The IPv6 cluster network (FLANNEL_IPV6_NETWORK), when IPv6 is on; given with ipv6Subnet. */
  readonly ipv6Network?: Subnet6 | undefined;
  /** The node's IPv6 subnet, as a network (fd00:10:244:5::/64); given with ipv6Network. */
  readonly ipv6Subnet?: Subnet6 | undefined;
  /** The backend MTU (FLANNEL_MTU): pods get exactly this. */
  readonly mtu: number;
  /** The bridge the agent manages (--bridge). */
  readonly bridge: string;
  /** twill masquerades (--ip-masq, FLANNEL_IPMASQ): then the bridge plugin must not do it too. */
  readonly ipMasq: boolean;
  /** Network name; default "twill". It also names host-local's store dir and the result cache. */
  readonly name?: string;
  /** host-local's store dir (default /var/lib/cni/networks): tests give each node its own. */
  readonly ipamDataDir?: string;
  /** The spec version to declare (default TWILL_CNI_VERSION): one every plugin of the list speaks. */
  readonly cniVersion?: string;
}

/**
 * The conflist for a node, as flannel's CNI plugin would delegate it (ipMasq = !FLANNEL_IPMASQ,
 * mtu = FLANNEL_MTU, isGateway, host-local over the node subnet with a route to the cluster network),
 * plus hairpin, a default route and portmap. Routes carry the gateway explicitly: the bridge plugin's
 * CHECK compares the result's routes with the kernel's, and the kernel route always has one.
 *
 * Dual-stack, as flannel's plugin: one host-local range set per family (IPv4 first, then IPv6), so a
 * pod gets one address of each, and the routes of each family (cluster network, then default) via that
 * family's gateway, the subnet's first host. An IPv6-only node (subnet 0.0.0.0/0) has only the IPv6 set.
 */
export function twillConflist(input: TwillConflistInput): JsonObject {
  if (!Number.isInteger(input.mtu) || input.mtu < 68 || input.mtu > 65535) {
    throw new RangeError(`invalid MTU ${input.mtu} for the CNI config`);
  }
  if (input.cniVersion !== undefined && !/^\d+\.\d+\.\d+$/.test(input.cniVersion)) {
    throw new RangeError(`invalid cniVersion "${input.cniVersion}" for the CNI config`);
  }
  if ((input.ipv6Network === undefined) !== (input.ipv6Subnet === undefined)) {
    throw new RangeError(
      `the CNI config needs both the IPv6 network and the node's IPv6 subnet (got only the ${
        input.ipv6Network === undefined ? "subnet" : "network"
      })`,
    );
  }
  const ranges: JsonValue[] = [];
  const routes: JsonValue[] = [];
  if (input.subnet.prefixLen > 0) {
    const gateway = formatIPv4(firstHost(input.subnet));
    ranges.push([{ subnet: formatCidr(input.subnet), gateway }]);
    routes.push({ dst: formatCidr(input.network), gw: gateway }, { dst: "0.0.0.0/0", gw: gateway });
  }
  if (input.ipv6Network !== undefined && input.ipv6Subnet !== undefined) {
    const gateway = formatIPv6(firstHost6(input.ipv6Subnet));
    ranges.push([{ subnet: formatCidr6(input.ipv6Subnet), gateway }]);
    routes.push({ dst: formatCidr6(input.ipv6Network), gw: gateway }, { dst: "::/0", gw: gateway });
  }
  if (ranges.length === 0) {
    throw new RangeError("the CNI config needs an IPv4 or an IPv6 subnet; the lease has neither");
  }
  const ipam: JsonObject = {
    type: "host-local",
    ...(input.ipamDataDir === undefined ? {} : { dataDir: input.ipamDataDir }),
    ranges,
    routes,
  };
  return {
    cniVersion: input.cniVersion ?? TWILL_CNI_VERSION,
    name: input.name ?? TWILL_NETWORK_NAME,
    plugins: [
      {
        type: "bridge",
        bridge: input.bridge,
        isGateway: true,
        hairpinMode: true,
        ipMasq: !input.ipMasq,
        mtu: input.mtu,
        ipam,
      },
      { type: "portmap", capabilities: { portMappings: true } },
    ],
  };
}

/** Stable text: 2-space JSON and a trailing newline, so equal configs are equal bytes. */
export function formatConflist(conf: JsonObject): string {
  return `${JSON.stringify(conf, null, 2)}\n`;
}

/**
 * The node's conflist from its subnet.env text (flannel's or twill's), as flannel's CNI plugin reads it.
 * Either family may be absent (an IPv6-only node's file has no FLANNEL_NETWORK/FLANNEL_SUBNET), but not
 * both, and a family that is there must be whole: the error names every variable that is missing.
 */
export function conflistFromSubnetEnv(
  text: string,
  options: { bridge: string; name?: string; ipamDataDir?: string; cniVersion?: string },
): JsonObject {
  const env = parseSubnetEnv(text);
  const hasV4 = env.network !== undefined || env.subnet !== undefined;
  const hasV6 = env.ipv6Network !== undefined || env.ipv6Subnet !== undefined;
  const missing: string[] = [];
  if (!hasV4 && !hasV6) {
    missing.push("FLANNEL_NETWORK and FLANNEL_SUBNET (or FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET)");
  }
  if (hasV4) {
    if (env.network === undefined) missing.push("FLANNEL_NETWORK");
    if (env.subnet === undefined) missing.push("FLANNEL_SUBNET");
  }
  if (hasV6) {
    if (env.ipv6Network === undefined) missing.push("FLANNEL_IPV6_NETWORK");
    if (env.ipv6Subnet === undefined) missing.push("FLANNEL_IPV6_SUBNET");
  }
  if (env.mtu === undefined) missing.push("FLANNEL_MTU");
  if (env.ipMasq === undefined) missing.push("FLANNEL_IPMASQ");
  if (missing.length > 0 || env.mtu === undefined || env.ipMasq === undefined) {
    throw new Error(`subnet.env lacks ${missing.join(", ")}`);
  }
  return twillConflist({
    // No IPv4 lines: an IPv6-only node, whose IPv4 subnet is 0.0.0.0/0 as in SubnetEnv.
    network: env.network ?? NO_IPV4,
    subnet: env.subnet ?? NO_IPV4,
    ipv6Network: env.ipv6Network,
    ipv6Subnet: env.ipv6Subnet,
    mtu: env.mtu,
    ipMasq: env.ipMasq,
    ...options,
  });
}

const NO_IPV4: Subnet = { ip: 0, prefixLen: 0 };

/** A conflist problem: says which file and which field. */
export class CniConfigError extends Error {
  override name = "CniConfigError";
}

export interface PluginConf {
  readonly type: string;
  /** Capabilities the plugin asks the runtime for (e.g. portMappings). */
  readonly capabilities: ReadonlySet<string>;
  /** The plugin's object as written, passed on (with name, cniVersion, prevResult …) on stdin. */
  readonly raw: JsonObject;
}

export interface NetworkConfigList {
  readonly name: string;
  readonly cniVersion: string;
  readonly disableCheck: boolean;
  readonly plugins: readonly PluginConf[];
  /** The whole list as read, kept in the result cache so DEL runs what ADD ran. */
  readonly raw: JsonObject;
}

// From the CNI spec: network names and container IDs.
const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
// A plugin type is a file name in CNI_PATH: never a path.
const TYPE_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.+-]*$/;

export function isValidNetworkName(name: string): boolean {
  return NAME_PATTERN.test(name);
}

/**
 * Parses a network config list (.conflist), or a single network config (.conf: one plugin, converted
 * to a list as libcni does). Checks what running it needs: name, cniVersion, plugin types.
 */
export function parseConflist(text: string, source: string): NetworkConfigList {
  let raw: JsonObject;
  try {
    raw = parseJsonObject(text, source);
  } catch (error) {
    throw new CniConfigError(errorMessage(error));
  }
  return conflistFromObject(raw, source);
}

export function conflistFromObject(raw: JsonObject, source: string): NetworkConfigList {
  const name = raw.name;
  if (typeof name !== "string" || name === "") throw new CniConfigError(`${source}: "name" is missing`);
  if (!NAME_PATTERN.test(name)) {
    throw new CniConfigError(`${source}: network name "${name}" is invalid (letters, digits, _ . -)`);
  }
  const cniVersion = raw.cniVersion;
  if (typeof cniVersion !== "string" || !/^\d+\.\d+\.\d+$/.test(cniVersion)) {
    throw new CniConfigError(`${source}: "cniVersion" is missing or not a version like 1.0.0`);
  }
  let pluginValues: JsonValue[];
  if (raw.plugins === undefined && typeof raw.type === "string") {
    pluginValues = [raw];
  } else if (Array.isArray(raw.plugins)) {
    pluginValues = raw.plugins;
  } else {
    throw new CniConfigError(`${source}: "plugins" is missing or not a list`);
  }
  if (pluginValues.length === 0) throw new CniConfigError(`${source}: "plugins" is empty`);
  const plugins = pluginValues.map((value, index): PluginConf => {
    const where = `${source}: plugins[${index}]`;
    if (!isJsonObject(value)) throw new CniConfigError(`${where} is not an object`);
    const type = value.type;
    if (typeof type !== "string" || type === "") throw new CniConfigError(`${where}: "type" is missing`);
    if (!TYPE_PATTERN.test(type)) {
      throw new CniConfigError(`${where}: plugin type "${type}" is not a plain file name`);
    }
    const capabilities = new Set<string>();
    const caps = value.capabilities;
    if (caps !== undefined) {
      if (!isJsonObject(caps)) throw new CniConfigError(`${where}: "capabilities" is not an object`);
      for (const [key, enabled] of Object.entries(caps)) if (enabled === true) capabilities.add(key);
    }
    return { type, capabilities, raw: value };
  });
  // libcni accepts the boolean or its text.
  const disable = raw.disableCheck;
  const disableCheck = disable === true || disable === "true";
  return { name, cniVersion, disableCheck, plugins, raw };
}

/** Compares dotted versions numerically ("0.4.0" < "1.0.0"). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}
