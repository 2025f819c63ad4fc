// Choosing the external (underlay) interface and its addresses, as flanneld does (§9.2 of the
// reference), for both address families at once: the network config (EnableIPv4, EnableIPv6) is not
// known yet when the agent selects, so selection never depends on it. The interface: --iface (name,
// IPv4 or IPv6 address) in order, then --iface-regex (IPv4 and IPv6 addresses first, then names), then
// --iface-can-reach (IPv4 or IPv6), else the interface of the IPv4 default route, or of the IPv6 one
// when there is no IPv4 default route. On it, the best IPv4 address (may be absent: ifaceIp 0) and the
// best global IPv6 address (may be absent). familyProblem says, once the config is known, whether the
// interface lacks a family the config turns on. The choice is a pure function of what `ip -j` reports.
import { CommandError, localRunner, type CommandRunner } from "../exec/command.js";
import { canonicalAddress, familyOf } from "../ip/address.js";
import { formatIPv4, parseIPv4, tryParseIPv4, type IPv4 } from "../ip/ipv4.js";
import { tryParseIPv6, unusableUnicastReason6 } from "../ip/ipv6.js";

/** An IPv4 address of an interface. */
export interface InterfaceAddress {
  readonly ip: IPv4;
  readonly prefixLen: number;
  /** "global", "link", "host"… */
  readonly scope: string;
  readonly dynamic: boolean;
  readonly deprecated: boolean;
}

/** An IPv6 address of an interface, with the flags that decide whether it can be the node's. */
export interface InterfaceAddress6 {
  /** Canonical text (RFC 5952). */
  readonly ip: string;
  readonly prefixLen: number;
  /** "global" (also for ULAs), "link", "host"… */
  readonly scope: string;
  /** Not permanent: from SLAAC or DHCPv6, or given a lifetime. */
  readonly dynamic: boolean;
  /** Its preferred lifetime is over: not for new connections. */
  readonly deprecated: boolean;
  /** Duplicate address detection has not finished: the kernel does not use it yet. */
  readonly tentative: boolean;
  /** Duplicate address detection found another node with it. */
  readonly dadFailed: boolean;
  /** A privacy address (RFC 8981), replaced every day or so. */
  readonly temporary: boolean;
}

export interface NodeInterface {
  readonly name: string;
  readonly index: number;
  readonly mtu: number;
  readonly up: boolean;
  /** IPv4 addresses, in the kernel's order. */
  readonly addresses: readonly InterfaceAddress[];
  /** IPv6 addresses, in the kernel's order (newest first). */
  readonly addresses6: readonly InterfaceAddress6[];
}

export interface ExternalInterface {
  readonly name: string;
  readonly index: number;
  readonly mtu: number;
  /** The interface's own IPv4 address; 0 (0.0.0.0) when it has none. */
  readonly ifaceIp: IPv4;
  /** The address advertised to peers (--public-ip, else ifaceIp); 0 (0.0.0.0) on an IPv6-only node. */
  readonly publicIp: IPv4;
  /** The interface's own global IPv6 address (canonical); undefined when it has none. */
  readonly ifaceIpv6?: string | undefined;
  /** The IPv6 address advertised to peers (--public-ipv6, else ifaceIpv6); canonical. */
  readonly publicIpv6?: string | undefined;
  /**
   * When there is no ifaceIpv6: the interface's IPv6 addresses that could not be it, each with why
   * ("fe80::1: a link-local address (fe80::/10)"), for familyProblem's message.
   */
  readonly ipv6Unusable?: readonly string[] | undefined;
}

export interface SelectionRequest {
  /** --iface: interface names, IPv4 or IPv6 addresses (any spelling), tried in order. */
  readonly iface: readonly string[];
  /** --iface-regex, compiled (and checked) by the flag parser. */
  readonly ifaceRegex: readonly RegExp[];
  /** --public-ip, parsed and checked to be a usable unicast address by the flag parser. */
  readonly publicIp: IPv4 | undefined;
  /** --public-ipv6, canonical, checked to be a usable unicast IPv6 address by the flag parser. */
  readonly publicIpv6?: string | undefined;
  /**
   * --iface-can-reach, canonical IPv4 or IPv6 text: the interface the kernel routes this address
   * through, after --iface/--iface-regex.
   */
  readonly ifaceCanReach?: string | undefined;
}

/** What the routing table says, as `ip -j route` reports it. */
export interface RouteFacts {
  /** The device of the IPv4 default route; undefined when there is none. */
  readonly defaultDev?: string | undefined;
  /** The device of the IPv6 default route; only looked at when there is no IPv4 default route. */
  readonly defaultDev6?: string | undefined;
  /** The device `ip route get <--iface-can-reach>` names; undefined when there is no route. */
  readonly canReachDev?: string | undefined;
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

/**
 * Why an IPv6 address cannot be the node's, or undefined if it can: it must be a global unicast
 * address the kernel uses (not link-local, unlike flannel, which would advertise fe80:: to its peers).
 */
export function unusableReason6(address: InterfaceAddress6): string | undefined {
  const ip = tryParseIPv6(address.ip);
  const reason = ip === undefined ? "not an IPv6 address" : unusableUnicastReason6(ip);
  if (reason !== undefined) return reason;
  if (address.scope !== "global") return `scope ${address.scope}`;
  if (address.dadFailed) return "duplicate address detection failed (another node has it)";
  if (address.tentative) return "tentative (duplicate address detection has not finished)";
  if (address.deprecated) return "deprecated";
  return undefined;
}

/** flannel's order among the usable: permanent before dynamic, then not temporary before temporary. */
function bestAddress6(iface: NodeInterface): InterfaceAddress6 | undefined {
  const usable = iface.addresses6.filter((a) => unusableReason6(a) === undefined);
  const rank = (a: InterfaceAddress6): number => (a.dynamic ? 2 : 0) + (a.temporary ? 1 : 0);
  return [...usable].sort((a, b) => rank(a) - rank(b))[0];
}

/** Addresses a selector pinned: the one --iface named, or the one --iface-regex matched. */
interface Pinned {
  readonly v4?: IPv4;
  readonly v6?: InterfaceAddress6;
  /** Named explicitly by --iface: even a host-scope IPv4 address (lo) will do. */
  readonly allowHostScope?: boolean;
}

/** The interface with its addresses, or undefined when it has no usable address of either family. */
function chosen(
  iface: NodeInterface,
  request: SelectionRequest,
  pinned: Pinned = {},
): ExternalInterface | undefined {
  const v4 = pinned.v4 ?? bestAddress(iface, pinned.allowHostScope)?.ip;
  const v6 =
    pinned.v6 !== undefined && unusableReason6(pinned.v6) === undefined
      ? pinned.v6.ip
      : bestAddress6(iface)?.ip;
  if (v4 === undefined && v6 === undefined) return undefined;
  if (iface.mtu <= 0) throw new InterfaceSelectionError(`interface ${iface.name} reports MTU ${iface.mtu}`);
  const publicIpv6 = request.publicIpv6 ?? v6;
  return {
    name: iface.name,
    index: iface.index,
    mtu: iface.mtu,
    ifaceIp: v4 ?? 0,
    publicIp: request.publicIp ?? v4 ?? 0,
    ...(v6 === undefined ? {} : { ifaceIpv6: v6 }),
    ...(publicIpv6 === undefined ? {} : { publicIpv6 }),
    ...(v6 === undefined && iface.addresses6.length > 0 ? { ipv6Unusable: unusable6(iface) } : {}),
  };
}

function unusable6(iface: NodeInterface): string[] {
  return iface.addresses6.map((a) => `${a.ip}: ${unusableReason6(a) ?? "usable"}`);
}

/** Whether the interface has an address of either family that selection would take. */
function hasUsableAddress(iface: NodeInterface): boolean {
  return bestAddress(iface) !== undefined || bestAddress6(iface) !== undefined;
}

/** An --iface value as an address: canonical text and family; undefined for an interface name. */
function asAddress(text: string): { readonly family: 4 | 6; readonly text: string } | undefined {
  try {
    return { family: familyOf(text), text: canonicalAddress(text) };
  } catch {
    return undefined;
  }
}

function byIface(
  interfaces: readonly NodeInterface[],
  wanted: string,
  request: SelectionRequest,
): ExternalInterface | undefined {
  const address = asAddress(wanted);
  for (const iface of interfaces) {
    let result: ExternalInterface | undefined;
    if (address === undefined) {
      result = iface.name === wanted ? chosen(iface, request, { allowHostScope: true }) : undefined;
    } else if (address.family === 4) {
      const v4 = tryParseIPv4(address.text);
      result = iface.addresses.some((a) => a.ip === v4) ? chosen(iface, request, { v4 }) : undefined;
    } else {
      const v6 = iface.addresses6.find((a) => a.ip === address.text);
      result = v6 ? chosen(iface, request, { v6 }) : undefined;
    }
    if (result) return result;
  }
  return undefined;
}

function byRegex(
  interfaces: readonly NodeInterface[],
  regex: RegExp,
  request: SelectionRequest,
): ExternalInterface | undefined {
  // Addresses first, as flannel: each interface's IPv4 addresses, then its IPv6 ones (canonical text).
  for (const iface of interfaces) {
    const v4 = iface.addresses.find(
      (a) => !a.deprecated && a.scope !== "host" && regex.test(formatIPv4(a.ip)),
    );
    const v6 = iface.addresses6.find((a) => !a.deprecated && a.scope !== "host" && regex.test(a.ip));
    const result =
      v4 !== undefined
        ? chosen(iface, request, { v4: v4.ip })
        : v6 !== undefined
          ? chosen(iface, request, { v6 })
          : undefined;
    if (result) return result;
  }
  for (const iface of interfaces) {
    const result = regex.test(iface.name) ? chosen(iface, request) : undefined;
    if (result) return result;
  }
  return undefined;
}

/** Picks the external interface; throws InterfaceSelectionError saying what was tried. */
export function selectExternalInterface(
  interfaces: readonly NodeInterface[],
  routes: RouteFacts,
  request: SelectionRequest,
): ExternalInterface {
  for (const wanted of request.iface) {
    const result = byIface(interfaces, wanted, request);
    if (result) return result;
  }
  for (const regex of request.ifaceRegex) {
    const result = byRegex(interfaces, regex, request);
    if (result) return result;
  }
  const { canReachDev } = routes;
  if (request.ifaceCanReach !== undefined && canReachDev !== undefined) {
    const iface = interfaces.find((i) => i.name === canReachDev);
    const result = iface ? chosen(iface, request) : undefined;
    if (result) return result;
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
              ? `--iface-can-reach ${reach} (no route to it)`
              : `--iface-can-reach ${reach} (routed through ${canReachDev})`,
          ]),
    ];
    const available = interfaces.filter(hasUsableAddress).map((i) => i.name);
    throw new InterfaceSelectionError(
      `no interface with an IPv4 or global IPv6 address matches ${tried.join(", ")} (interfaces with addresses: ${available.join(", ") || "none"})`,
    );
  }
  const family = routes.defaultDev !== undefined ? "IPv4" : "IPv6";
  const dev = routes.defaultDev ?? routes.defaultDev6;
  if (dev === undefined) {
    throw new InterfaceSelectionError(
      "no IPv4 or IPv6 default route to pick the external interface from; set --iface",
    );
  }
  const iface = interfaces.find((i) => i.name === dev);
  const result = iface ? chosen(iface, request) : undefined;
  if (!result) {
    const why = iface && iface.addresses6.length > 0 ? ` (${unusable6(iface).join("; ")})` : "";
    throw new InterfaceSelectionError(
      `the ${family} default route's interface ${dev} has no IPv4 or global IPv6 address${why}; set --iface`,
    );
  }
  return result;
}

/**
 * Once the network config is known: why the chosen interface cannot serve a family the config turns
 * on, or undefined. The message names the interface and the flags that fix it.
 */
export function familyProblem(
  external: ExternalInterface,
  want: { readonly ipv4: boolean; readonly ipv6: boolean },
): string | undefined {
  if (want.ipv4 && external.publicIp === 0) {
    return (
      `EnableIPv4 is on but interface ${external.name} has no IPv4 address; add one, or set --public-ip, ` +
      `or pick an interface that has one with --iface (a name or an IPv4 address), --iface-regex or --iface-can-reach`
    );
  }
  if (want.ipv6 && external.publicIpv6 === undefined) {
    const unusable = external.ipv6Unusable ?? [];
    const why = unusable.length > 0 ? ` (${unusable.join("; ")})` : "";
    return (
      `EnableIPv6 is on but interface ${external.name} has no global IPv6 address${why}; add one, or set ` +
      `--public-ipv6, or pick an interface that has one with --iface (a name or an IPv6 address), ` +
      `--iface-regex or --iface-can-reach`
    );
  }
  return undefined;
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

function scopeOf(a: Record<string, unknown>): string {
  return typeof a.scope === "string" ? a.scope : "global";
}

/** Parses `ip -j addr show` output (both families; `ip -j -4 addr show` gives no IPv6 addresses). */
export function parseIpAddrJson(text: string): NodeInterface[] {
  const parsed: unknown = JSON.parse(text || "[]");
  return asRecordArray(parsed).map((raw: IpAddrJson) => {
    const flags = Array.isArray(raw.flags) ? raw.flags.map(String) : [];
    const info = asRecordArray(raw.addr_info).filter((a) => typeof a.local === "string");
    const addresses = info
      .filter((a) => a.family === "inet")
      .map((a) => ({
        ip: parseIPv4(String(a.local)),
        prefixLen: Number(a.prefixlen),
        scope: scopeOf(a),
        dynamic: a.dynamic === true,
        deprecated: a.deprecated === true,
      }));
    const addresses6 = info
      .filter((a) => a.family === "inet6" && tryParseIPv6(String(a.local)) !== undefined)
      .map((a) => ({
        ip: canonicalAddress(String(a.local)),
        prefixLen: Number(a.prefixlen),
        scope: scopeOf(a),
        dynamic: a.dynamic === true,
        deprecated: a.deprecated === true,
        tentative: a.tentative === true,
        dadFailed: a.dadfailed === true,
        temporary: a.temporary === true,
      }));
    return {
      name: String(raw.ifname),
      index: Number(raw.ifindex),
      mtu: Number(raw.mtu),
      up: flags.includes("UP"),
      addresses,
      addresses6,
    };
  });
}

/** The `dev` of the first route in `ip -j route …` output. */
export function routeDev(text: string): string | undefined {
  const route = asRecordArray(JSON.parse(text || "[]"))[0];
  return typeof route?.dev === "string" ? route.dev : undefined;
}

async function ipJson(runner: CommandRunner, args: readonly string[]): Promise<string> {
  const result = await runner.run("ip", args);
  if (result.exitCode !== 0) throw new CommandError(`ip ${args.join(" ")} (${runner.where})`, result);
  return result.stdout;
}

/**
 * Reads the interfaces and default routes of the runner's network namespace and selects. A few `ip -j`
 * calls, once at start: interface selection is rare, and iproute2's view of address flags (dynamic,
 * deprecated, tentative) is exactly what flannel's selection needs. The IPv6 default route is read
 * only when there is no IPv4 one.
 */
export async function detectExternalInterface(
  request: SelectionRequest,
  runner: CommandRunner = localRunner,
): Promise<ExternalInterface> {
  const addrs = await ipJson(runner, ["-j", "addr", "show"]);
  const defaultDev = routeDev(await ipJson(runner, ["-j", "-4", "route", "show", "default"]));
  let defaultDev6: string | undefined;
  if (defaultDev === undefined) {
    // A kernel without IPv6 (ipv6.disable=1) refuses the question: that is no IPv6 default route either.
    const result = await runner.run("ip", ["-j", "-6", "route", "show", "default"]);
    defaultDev6 = result.exitCode === 0 ? routeDev(result.stdout) : undefined;
  }
  let canReachDev: string | undefined;
  const reach = request.ifaceCanReach;
  if (reach !== undefined) {
    // No route is not an error here: the selection then says so, with what else was tried.
    const family = familyOf(reach) === 4 ? "-4" : "-6";
    const result = await runner.run("ip", ["-j", family, "route", "get", reach]);
    canReachDev = result.exitCode === 0 ? routeDev(result.stdout) : undefined;
  }
  return selectExternalInterface(parseIpAddrJson(addrs), { defaultDev, defaultDev6, canReachDev }, request);
}
