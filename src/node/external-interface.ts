// Choosing the external (underlay) interface and the public IP, as flanneld does (§9.2 of the
// reference): --iface (name or IP) in order, then --iface-regex (addresses first, then names), then
// the interface of the IPv4 default route. The choice is a pure function of what `ip -j` reports.
import { CommandError, localRunner, type CommandRunner } from "../exec/command.js";
import { formatIPv4, parseIPv4, tryParseIPv4, type IPv4 } from "../ip/ipv4.js";

export interface InterfaceAddress {
  readonly ip: IPv4;
  readonly prefixLen: number;
  /** "global", "link", "host"… */
  readonly scope: string;
  readonly dynamic: boolean;
  readonly deprecated: boolean;
}

export interface NodeInterface {
  readonly name: string;
  readonly index: number;
  readonly mtu: number;
  readonly up: boolean;
  readonly addresses: readonly InterfaceAddress[];
}

export interface ExternalInterface {
  readonly name: string;
  readonly index: number;
  readonly mtu: number;
  /** The interface's own IPv4 address. */
  readonly ifaceIp: IPv4;
  /** The address advertised to peers (--public-ip, else ifaceIp); 0 (0.0.0.0) on an IPv6-only node. */
  readonly publicIp: IPv4;
  /** The interface's own IPv6 address (canonical), when IPv6 is on. */
  readonly ifaceIpv6?: string | undefined;
  /** The IPv6 address advertised to peers (--public-ipv6, else ifaceIpv6), when IPv6 is on. */
  readonly publicIpv6?: string | undefined;
}

export interface SelectionRequest {
  readonly iface: readonly string[];
  /** --iface-regex, compiled (and checked) by the flag parser. */
  readonly ifaceRegex: readonly RegExp[];
  /** --public-ip, parsed and checked to be a usable unicast address by the flag parser. */
  readonly publicIp: IPv4 | undefined;
  /** --iface-can-reach: the interface the kernel routes this address through, after --iface/--iface-regex. */
  readonly ifaceCanReach?: IPv4 | undefined;
}

export class InterfaceSelectionError extends Error {
  override name = "InterfaceSelectionError";
}

/** flannel's address preference: global before link-local, permanent before dynamic, deprecated never. */
function bestAddress(iface: NodeInterface, allowHostScope = false): InterfaceAddress | undefined {
  const usable = iface.addresses.filter((a) => !a.deprecated && (allowHostScope || a.scope !== "host"));
  const rank = (a: InterfaceAddress): number => (a.scope === "global" ? 0 : 2) + (a.dynamic ? 1 : 0);
  return [...usable].sort((a, b) => rank(a) - rank(b))[0];
}

function chosen(
  iface: NodeInterface,
  address: InterfaceAddress,
  request: SelectionRequest,
): ExternalInterface {
  if (iface.mtu <= 0) throw new InterfaceSelectionError(`interface ${iface.name} reports MTU ${iface.mtu}`);
  const publicIp = request.publicIp ?? address.ip;
  return { name: iface.name, index: iface.index, mtu: iface.mtu, ifaceIp: address.ip, publicIp };
}

/** Picks the external interface; throws InterfaceSelectionError saying what was tried. */
export function selectExternalInterface(
  interfaces: readonly NodeInterface[],
  defaultRouteDev: string | undefined,
  request: SelectionRequest,
  /** The device `ip route get <--iface-can-reach>` names; undefined when there is no route. */
  canReachDev?: string,
): ExternalInterface {
  for (const wanted of request.iface) {
    const asIp = tryParseIPv4(wanted);
    for (const iface of interfaces) {
      const address =
        asIp === undefined
          ? iface.name === wanted
            ? bestAddress(iface, true) // named explicitly: even a host-scope address (lo) will do
            : undefined
          : iface.addresses.find((a) => a.ip === asIp);
      if (address) return chosen(iface, address, request);
    }
  }
  for (const regex of request.ifaceRegex) {
    for (const iface of interfaces) {
      const address = iface.addresses.find(
        (a) => !a.deprecated && a.scope !== "host" && regex.test(formatIPv4(a.ip)),
      );
      if (address) return chosen(iface, address, request);
    }
    for (const iface of interfaces) {
      const address = regex.test(iface.name) ? bestAddress(iface) : undefined;
      if (address) return chosen(iface, address, request);
    }
  }
  if (request.ifaceCanReach !== undefined && canReachDev !== undefined) {
    const iface = interfaces.find((i) => i.name === canReachDev);
    const address = iface ? bestAddress(iface) : undefined;
    if (iface && address) return chosen(iface, address, request);
  }
  if (request.iface.length > 0 || request.ifaceRegex.length > 0 || request.ifaceCanReach !== undefined) {
    const reach = request.ifaceCanReach;
    const tried = [
      ...request.iface.map((i) => `--iface ${i}`),
      ...request.ifaceRegex.map((r) => `--iface-regex ${r.source}`),
      ...(reach === undefined
        ? []
        : [
            canReachDev === undefined
              ? `--iface-can-reach ${formatIPv4(reach)} (no route to it)`
              : `--iface-can-reach ${formatIPv4(reach)} (routed through ${canReachDev})`,
          ]),
    ];
    const available = interfaces.filter((i) => bestAddress(i)).map((i) => i.name);
    throw new InterfaceSelectionError(
      `no interface with an IPv4 address matches ${tried.join(", ")} (interfaces with addresses: ${available.join(", ") || "none"})`,
    );
  }
  if (defaultRouteDev === undefined) {
    throw new InterfaceSelectionError(
      "no IPv4 default route to pick the external interface from; set --iface",
    );
  }
  const iface = interfaces.find((i) => i.name === defaultRouteDev);
  const address = iface ? bestAddress(iface) : undefined;
  if (!iface || !address) {
    throw new InterfaceSelectionError(
      `the default route's interface ${defaultRouteDev} has no IPv4 address; set --iface`,
    );
  }
  return chosen(iface, address, request);
}

interface IpAddrJson {
  ifname?: unknown;
  ifindex?: unknown;
  mtu?: unknown;
  flags?: unknown;
  addr_info?: unknown;
}

function asRecordArray(value: unknown): Record<string, unknown>[] {
  return Array.isArray(value)
    ? value.filter((v): v is Record<string, unknown> => typeof v === "object" && v !== null)
    : [];
}

/** Parses `ip -j -4 addr show` output. */
export function parseIpAddrJson(text: string): NodeInterface[] {
  const parsed: unknown = JSON.parse(text || "[]");
  return asRecordArray(parsed).map((raw: IpAddrJson) => {
    const flags = Array.isArray(raw.flags) ? raw.flags.map(String) : [];
    const addresses = asRecordArray(raw.addr_info)
      .filter((a) => a.family === "inet" && typeof a.local === "string")
      .map((a) => ({
        ip: parseIPv4(String(a.local)),
        prefixLen: Number(a.prefixlen),
        scope: typeof a.scope === "string" ? a.scope : "global",
        dynamic: a.dynamic === true,
        deprecated: a.deprecated === true,
      }));
    return {
      name: String(raw.ifname),
      index: Number(raw.ifindex),
      mtu: Number(raw.mtu),
      up: flags.includes("UP"),
      addresses,
    };
  });
}

async function ipJson(runner: CommandRunner, args: readonly string[]): Promise<string> {
  const result = await runner.run("ip", args);
  if (result.exitCode !== 0) throw new CommandError(`ip ${args.join(" ")} (${runner.where})`, result);
  return result.stdout;
}

/**
 * Reads the interfaces and default route of the runner's network namespace and selects. Two `ip -j`
 * calls, once at start: interface selection is rare, and iproute2's view of address flags
 * (dynamic, deprecated) is exactly what flannel's selection needs.
 */
export async function detectExternalInterface(
  request: SelectionRequest,
  runner: CommandRunner = localRunner,
): Promise<ExternalInterface> {
  const addrs = await ipJson(runner, ["-j", "-4", "addr", "show"]);
  const routes = await ipJson(runner, ["-j", "-4", "route", "show", "default"]);
  const defaultRoute = asRecordArray(JSON.parse(routes || "[]"))[0];
  const dev = typeof defaultRoute?.dev === "string" ? defaultRoute.dev : undefined;
  let canReachDev: string | undefined;
  if (request.ifaceCanReach !== undefined) {
    // No route is not an error here: the selection then says so, with what else was tried.
    const result = await runner.run("ip", ["-j", "-4", "route", "get", formatIPv4(request.ifaceCanReach)]);
    const route = result.exitCode === 0 ? asRecordArray(JSON.parse(result.stdout || "[]"))[0] : undefined;
    canReachDev = typeof route?.dev === "string" ? route.dev : undefined;
  }
  return selectExternalInterface(parseIpAddrJson(addrs), dev, request, canReachDev);
}
