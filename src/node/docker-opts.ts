// Docker hosts: the options file flannel's mk-docker-opts.sh writes (sourced by a docker.service drop-in)
// and a daemon.json fragment for engines configured by file. Both say: docker0 gets the node subnet's
// first host (--bip), the backend MTU, and masquerades only when twill does not (--ip-masq inverted).
// IPv4 only, as flannel: mk-docker-opts.sh reads no FLANNEL_IPV6_* variable, so a dual-stack node's
// options are its IPv4 ones and an IPv6-only node's have no --bip (Docker keeps its own bridge address).
import { firstHost, formatIPv4 } from "../ip/ipv4.js";
import type { SubnetEnv } from "./subnet-env.js";
import { formatSubnetEnv, parseDotenv } from "./subnet-env.js";
import { errorMessage } from "../util/log.js";

export interface DockerOptsOptions {
  /** -i: individual DOCKER_OPT_* vars only; -c: the combined var only; default both (neither flag). */
  readonly output?: "both" | "individual" | "combined";
  /** -k: the combined var's name; default DOCKER_OPTS. */
  readonly combinedKey?: string;
  /** -m: leave out --ip-masq (older Docker). */
  readonly omitIpMasq?: boolean;
  /** The combined var's value already in the script's environment: mk-docker-opts prepends it. */
  readonly existing?: string;
}

export class DockerOptsError extends Error {
  override name = "DockerOptsError";
}

/**
 * mk-docker-opts.sh on subnet.env text, byte for byte: variables sorted by name (BIP, IPMASQ, MTU),
 * each `NAME="value"`, then the combined var with every value after a space (so it starts with one).
 * A missing FLANNEL_* var leaves its option out; FLANNEL_IPMASQ other than true/false is an error.
 * FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET are ignored, as by the script (it has no IPv6 option).
 */
export function dockerOptsFromSubnetEnv(text: string, options: DockerOptsOptions = {}): string {
  const vars = parseDotenv(text);
  const key = options.combinedKey ?? "DOCKER_OPTS";
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) {
    throw new DockerOptsError(`combined key "${key}" is not a shell variable name`);
  }
  const opts = new Map<string, string>();
  const subnet = vars.get("FLANNEL_SUBNET");
  if (subnet) opts.set("DOCKER_OPT_BIP", `--bip=${subnet}`);
  const mtu = vars.get("FLANNEL_MTU");
  if (mtu) opts.set("DOCKER_OPT_MTU", `--mtu=${mtu}`);
  const masq = vars.get("FLANNEL_IPMASQ");
  if (masq && options.omitIpMasq !== true) {
    if (masq === "true") opts.set("DOCKER_OPT_IPMASQ", "--ip-masq=false");
    else if (masq === "false") opts.set("DOCKER_OPT_IPMASQ", "--ip-masq=true");
    else throw new DockerOptsError(`Invalid value of FLANNEL_IPMASQ: ${masq}`);
  }
  const output = options.output ?? "both";
  const names = [...opts.keys()].sort();
  let combined = options.existing ? `${options.existing} ` : "";
  let text_ = "";
  for (const name of names) {
    const value = opts.get(name) ?? "";
    if (output !== "combined") text_ += `${name}="${value}"\n`;
    combined += ` ${value}`;
  }
  if (output !== "individual") text_ += `${key}="${combined}"\n`;
  return text_;
}

/** The options file for this node's lease, as mk-docker-opts would write it from twill's subnet.env. */
export function formatDockerOpts(env: SubnetEnv, options: DockerOptsOptions = {}): string {
  return dockerOptsFromSubnetEnv(formatSubnetEnv(env), options);
}

/**
 * The daemon.json keys twill owns: bip, mtu and ip-masq (inverted from twill's masquerade). Like the
 * options file, IPv4 only: an IPv6-only node (no IPv4 subnet) sets no bip, and leaves one in the file as is.
 */
export function daemonJsonFragment(
  env: SubnetEnv,
  options: { omitIpMasq?: boolean } = {},
): { bip?: string; mtu: number; "ip-masq"?: boolean } {
  return {
    ...(env.subnet.prefixLen > 0
      ? { bip: `${formatIPv4(firstHost(env.subnet))}/${env.subnet.prefixLen}` }
      : {}),
    mtu: env.mtu,
    ...(options.omitIpMasq === true ? {} : { "ip-masq": !env.ipMasq }),
  };
}

/** The fragment alone, as text. */
export function formatDaemonJson(env: SubnetEnv, options: { omitIpMasq?: boolean } = {}): string {
  return `${JSON.stringify(daemonJsonFragment(env, options), null, 2)}\n`;
}

/**
 * daemon.json with twill's keys set and everything else kept (dockerd reads one file, so twill must
 * not clobber the operator's other settings). Text that already has these values comes back as is,
 * so an unchanged lease never rewrites the file. Throws when the existing text is not a JSON object.
 */
export function mergeDaemonJson(
  existing: string | undefined,
  fragment: Readonly<Record<string, string | number | boolean>>,
): string {
  let current: Record<string, unknown> = {};
  if (existing !== undefined && existing.trim() !== "") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(existing);
    } catch (error) {
      throw new DockerOptsError(
        `the existing daemon.json is not valid JSON (${errorMessage(error)}); not touching it`,
      );
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new DockerOptsError("the existing daemon.json is not a JSON object; not touching it");
    }
    current = parsed as Record<string, unknown>;
    if (Object.entries(fragment).every(([k, v]) => current[k] === v)) return existing;
  }
  const merged: Record<string, unknown> = { ...current, ...fragment };
  return `${JSON.stringify(merged, null, 2)}\n`;
}
