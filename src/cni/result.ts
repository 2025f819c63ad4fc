// CNI results and errors: what a plugin prints on stdout. Results are validated into a typed view for
// printing and checks, while the raw object is what travels on as prevResult and into the cache.
import { isIP } from "node:net";
import { isJsonObject, type JsonObject, type JsonValue } from "./json.js";

export interface CniInterface {
  readonly name: string;
  readonly mac: string | undefined;
  readonly mtu: number | undefined;
  /** The netns path for interfaces inside the container; undefined for host-side ones. */
  readonly sandbox: string | undefined;
}

export interface CniIpConfig {
  /** CIDR form, e.g. "10.244.5.2/24". */
  readonly address: string;
  readonly gateway: string | undefined;
  /** Index into interfaces. */
  readonly interface: number | undefined;
}

export interface CniRoute {
  readonly dst: string;
  readonly gw: string | undefined;
}

export interface CniDns {
  readonly nameservers: readonly string[];
  readonly domain: string | undefined;
  readonly search: readonly string[];
}

export interface CniResult {
  readonly cniVersion: string;
  readonly interfaces: readonly CniInterface[];
  readonly ips: readonly CniIpConfig[];
  readonly routes: readonly CniRoute[];
  readonly dns: CniDns;
  /** As the plugin printed it (0.1.0/0.2.0 results are passed on unconverted). */
  readonly raw: JsonObject;
}

export class CniResultError extends Error {
  override name = "CniResultError";
}

function fail(what: string, message: string): never {
  throw new CniResultError(`${what}: ${message}`);
}

function optionalString(obj: JsonObject, key: string, what: string): string | undefined {
  const value = obj[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") fail(what, `"${key}" is not a string`);
  return value;
}

function isCidr(text: string): boolean {
  const slash = text.lastIndexOf("/");
  if (slash < 0) return false;
  const family = isIP(text.slice(0, slash));
  const len = text.slice(slash + 1);
  return family !== 0 && /^\d{1,3}$/.test(len) && Number(len) <= (family === 4 ? 32 : 128);
}

function checkIp(text: string | undefined, what: string, key: string): void {
  if (text !== undefined && isIP(text) === 0)
    fail(what, `"${key}" ${JSON.stringify(text)} is not an IP address`);
}

function parseRoutes(value: JsonValue | undefined, what: string): CniRoute[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) fail(what, `"routes" is not a list`);
  return value.map((route, i) => {
    const where = `${what} routes[${i}]`;
    if (!isJsonObject(route)) fail(where, "not an object");
    const dst = optionalString(route, "dst", where);
    if (dst === undefined || !isCidr(dst)) fail(where, `"dst" is missing or not a CIDR`);
    const gw = optionalString(route, "gw", where);
    checkIp(gw, where, "gw");
    return { dst, gw };
  });
}

function stringList(obj: JsonObject, key: string, what: string): string[] {
  const value = obj[key];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || !value.every((v): v is string => typeof v === "string")) {
    fail(what, `"${key}" is not a list of strings`);
  }
  return value;
}

function parseDns(value: JsonValue | undefined, what: string): CniDns {
  if (value === undefined || value === null) return { nameservers: [], domain: undefined, search: [] };
  if (!isJsonObject(value)) fail(what, `"dns" is not an object`);
  return {
    nameservers: stringList(value, "nameservers", `${what} dns`),
    domain: optionalString(value, "domain", `${what} dns`),
    search: stringList(value, "search", `${what} dns`),
  };
}

/**
 * Validates a plugin's result. Accepts the 0.3.x–1.x shape (interfaces, ips, routes, dns) and the
 * legacy 0.1.0/0.2.0 shape (ip4/ip6), which is viewed in the modern shape.
 */
export function parseCniResult(value: unknown, what = "result"): CniResult {
  if (!isJsonObject(value)) fail(what, "not a JSON object");
  const cniVersion = optionalString(value, "cniVersion", what);
  if (cniVersion === undefined) fail(what, `"cniVersion" is missing`);
  if (value.ip4 !== undefined || value.ip6 !== undefined) return legacyResult(value, cniVersion, what);

  const rawInterfaces = value.interfaces ?? [];
  if (!Array.isArray(rawInterfaces)) fail(what, `"interfaces" is not a list`);
  const interfaces = rawInterfaces.map((iface, i): CniInterface => {
    const where = `${what} interfaces[${i}]`;
    if (!isJsonObject(iface)) fail(where, "not an object");
    const name = optionalString(iface, "name", where);
    if (name === undefined || name === "") fail(where, `"name" is missing`);
    const mtu = iface.mtu;
    if (mtu !== undefined && mtu !== null && (typeof mtu !== "number" || !Number.isInteger(mtu))) {
      fail(where, `"mtu" is not an integer`);
    }
    return {
      name,
      mac: optionalString(iface, "mac", where),
      mtu: typeof mtu === "number" ? mtu : undefined,
      sandbox: optionalString(iface, "sandbox", where) || undefined,
    };
  });

  const rawIps = value.ips ?? [];
  if (!Array.isArray(rawIps)) fail(what, `"ips" is not a list`);
  const ips = rawIps.map((ip, i): CniIpConfig => {
    const where = `${what} ips[${i}]`;
    if (!isJsonObject(ip)) fail(where, "not an object");
    const address = optionalString(ip, "address", where);
    if (address === undefined || !isCidr(address)) fail(where, `"address" is missing or not a CIDR`);
    const gateway = optionalString(ip, "gateway", where);
    checkIp(gateway, where, "gateway");
    const index = ip.interface;
    let iface: number | undefined;
    if (index !== undefined && index !== null) {
      if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= interfaces.length) {
        fail(where, `"interface" ${JSON.stringify(index)} is not an index into interfaces`);
      }
      iface = index;
    }
    return { address, gateway, interface: iface };
  });

  return {
    cniVersion,
    interfaces,
    ips,
    routes: parseRoutes(value.routes, what),
    dns: parseDns(value.dns, what),
    raw: value,
  };
}

function legacyResult(value: JsonObject, cniVersion: string, what: string): CniResult {
  const ips: CniIpConfig[] = [];
  const routes: CniRoute[] = [];
  for (const key of ["ip4", "ip6"]) {
    const block = value[key];
    if (block === undefined || block === null) continue;
    const where = `${what} ${key}`;
    if (!isJsonObject(block)) fail(where, "not an object");
    const address = optionalString(block, "ip", where);
    if (address === undefined || !isCidr(address)) fail(where, `"ip" is missing or not a CIDR`);
    const gateway = optionalString(block, "gateway", where);
    checkIp(gateway, where, "gateway");
    ips.push({ address, gateway, interface: undefined });
    routes.push(...parseRoutes(block.routes, where));
  }
  return { cniVersion, interfaces: [], ips, routes, dns: parseDns(value.dns, what), raw: value };
}

/** Human-readable lines: interfaces, addresses, routes, DNS. */
export function formatCniResult(result: CniResult): string[] {
  const lines: string[] = [];
  if (result.interfaces.length > 0) {
    lines.push("interfaces:");
    for (const iface of result.interfaces) {
      const parts = [`  ${iface.name}`];
      if (iface.mac !== undefined) parts.push(`mac ${iface.mac}`);
      if (iface.mtu !== undefined) parts.push(`mtu ${iface.mtu}`);
      parts.push(iface.sandbox === undefined ? "(host)" : `(in ${iface.sandbox})`);
      lines.push(parts.join("  "));
    }
  }
  lines.push("addresses:");
  if (result.ips.length === 0) lines.push("  (none)");
  for (const ip of result.ips) {
    const parts = [`  ${ip.address}`];
    if (ip.gateway !== undefined) parts.push(`gateway ${ip.gateway}`);
    const iface = ip.interface === undefined ? undefined : result.interfaces[ip.interface];
    if (iface !== undefined) parts.push(`on ${iface.name}`);
    lines.push(parts.join("  "));
  }
  if (result.routes.length > 0) {
    lines.push("routes:");
    for (const route of result.routes) {
      lines.push(`  ${route.dst}${route.gw === undefined ? "" : ` via ${route.gw}`}`);
    }
  }
  const dns = result.dns;
  if (dns.nameservers.length > 0 || dns.domain !== undefined || dns.search.length > 0) {
    const parts = ["dns:"];
    if (dns.nameservers.length > 0) parts.push(`nameservers ${dns.nameservers.join(", ")}`);
    if (dns.domain !== undefined) parts.push(`domain ${dns.domain}`);
    if (dns.search.length > 0) parts.push(`search ${dns.search.join(", ")}`);
    lines.push(parts.join("  "));
  }
  return lines;
}

/** The error object a failing plugin prints (CNI spec "Error"). */
export interface CniErrorBody {
  readonly code: number;
  readonly msg: string;
  readonly details: string | undefined;
}

/** Reads a plugin's error output, or undefined when it is not the spec's error object. */
export function parseCniError(stdout: string): CniErrorBody | undefined {
  let value: unknown;
  try {
    value = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  if (!isJsonObject(value)) return undefined;
  const { code, msg, details } = value;
  if (typeof code !== "number" || !Number.isInteger(code)) return undefined;
  return {
    code,
    msg: typeof msg === "string" ? msg : "",
    details: typeof details === "string" && details !== "" ? details : undefined,
  };
}

/** Well-known codes from the CNI spec, for messages. */
export const CNI_ERROR_CODES: ReadonlyMap<number, string> = new Map([
  [1, "incompatible CNI version"],
  [2, "unsupported field in network configuration"],
  [3, "container unknown or does not exist"],
  [4, "invalid necessary environment variables"],
  [5, "I/O failure"],
  [6, "failed to decode content"],
  [7, "invalid network config"],
  [11, "try again later"],
]);
