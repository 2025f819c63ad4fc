// Test witnesses: typed readers over iproute2's JSON output (`ip -j`, `bridge -j`), validated field by field from `unknown`.
//
// Shapes on iproute2 6.1 (verified by experiment):
//   - `ip -j route show` omits every field that was used as a filter (dev, proto, table), omits `protocol`
//     for "boot" (3), `table` for main (254), `type` for unicast and `scope` for universe.
//   - Without -N, protocol is a name from /etc/iproute2/rt_protos (so an admin's file could rename ours);
//     with -N, protocol, scope, table and type are all numbers printed as strings. We read routes with -N
//     and give type back its kernel name (RTN_* numbers are kernel ABI).
//   - Host routes print dst without a prefix length ("10.244.1.1"); default routes print "default".
//   - A vxlan device's IPv6 source prints as "local6" (an IPv4 one as "local").
//   - `ip neigh show dev X` and `bridge fdb show dev X` omit the device; fdb `state` is absent for dynamic
//     entries.
//   - A filter naming a missing device fails ("Cannot find device …", "Device … does not exist."); a missing
//     routing table fails with "FIB table does not exist". Readers return [] for those.
import { CommandError, type CommandRunner } from "../../src/exec/command.js";

export interface VxlanInfo {
  readonly id: number;
  /** Source address of the tunnel (IPv4 or IPv6), when set. */
  readonly local?: string;
  /** UDP destination port (the kernel default is 8472). */
  readonly port?: number;
  readonly learning: boolean;
  /** Group-based policy extension (printed only when set). */
  readonly gbp: boolean;
  /** Underlay device name, when bound to one. */
  readonly underlay?: string;
}

export interface Link {
  readonly index: number;
  readonly name: string;
  readonly flags: string[];
  /** The administrative UP flag. */
  readonly up: boolean;
  readonly mtu: number;
  readonly mac?: string;
  readonly operstate?: string;
  /** Bridge (or bond) this link is enslaved to. */
  readonly master?: string;
  /** linkinfo kind: "vxlan", "bridge", "veth", …; absent for plain devices such as lo. */
  readonly kind?: string;
  readonly vxlan?: VxlanInfo;
}

export interface Address {
  readonly dev: string;
  readonly family: "inet" | "inet6";
  readonly local: string;
  readonly prefixLen: number;
  /** `${local}/${prefixLen}` */
  readonly cidr: string;
  /** Scope name as iproute2 prints it: "global", "link", "host". */
  readonly scope: string;
}

export interface Route {
  /** CIDR ("10.244.1.0/24"; host routes get /32 or /128) or "default". */
  readonly dst: string;
  readonly gateway?: string;
  /** Absent for multipath, blackhole and unreachable routes. */
  readonly dev?: string;
  /** Route protocol number (2 kernel, 3 boot, 4 static, …; twill uses its own). */
  readonly protocol: number;
  /** 0 universe, 253 link, 254 host. */
  readonly scope: number;
  /** 254 main, 255 local, or a custom table. */
  readonly table: number;
  /** "unicast", "local", "broadcast", "blackhole", … */
  readonly type: string;
  readonly onlink: boolean;
  readonly flags: string[];
  readonly metric?: number;
  readonly prefsrc?: string;
}

export interface RouteFilter {
  /** Table number or "all"; default main. */
  readonly table?: number | "all";
  readonly protocol?: number;
  readonly dev?: string;
  /** Address family; default 4. */
  readonly family?: 4 | 6;
}

export interface Neighbour {
  readonly dst: string;
  readonly dev: string;
  readonly lladdr?: string;
  /** NUD states, e.g. ["PERMANENT"], ["REACHABLE"], ["FAILED"]. */
  readonly state: string[];
}

export interface FdbEntry {
  readonly mac: string;
  readonly dev: string;
  /** Remote VTEP address for vxlan entries. */
  readonly dst?: string;
  /** e.g. ["self"], ["master"], ["extern_learn"]. */
  readonly flags: string[];
  /** "permanent", "static", "stale", or "dynamic" (iproute2 prints no state for dynamic entries). */
  readonly state: string;
  readonly master?: string;
  readonly vlan?: number;
}

// RTN_* route types (include/uapi/linux/rtnetlink.h), for `ip -N` output.
const ROUTE_TYPES = [
  "unspec",
  "unicast",
  "local",
  "broadcast",
  "anycast",
  "multicast",
  "blackhole",
  "unreachable",
  "prohibit",
  "throw",
  "nat",
  "xresolve",
];
const TABLE_MAIN = 254;
const PROTOCOL_BOOT = 3;

// --- small validators over unknown ---------------------------------------------------------------

type JsonObject = Record<string, unknown>;

export class KernelParseError extends Error {
  override name = "KernelParseError";
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function objects(stdout: string, what: string): JsonObject[] {
  const text = stdout.trim();
  if (text === "") return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new KernelParseError(`${what}: output is not JSON (${String(error)}): ${text.slice(0, 200)}`);
  }
  if (!Array.isArray(parsed)) throw new KernelParseError(`${what}: expected a JSON array`);
  return parsed.map((item: unknown, i) => {
    if (!isObject(item)) throw new KernelParseError(`${what}: element ${i} is not an object`);
    return item;
  });
}

function optString(o: JsonObject, key: string, what: string): string | undefined {
  const value = o[key];
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw new KernelParseError(`${what}: "${key}" is not a string`);
  return value;
}

function reqString(o: JsonObject, key: string, what: string): string {
  const value = optString(o, key, what);
  if (value === undefined) throw new KernelParseError(`${what}: "${key}" is missing`);
  return value;
}

/** Numbers, and numbers printed as strings (as `ip -N` does). */
function optNumber(o: JsonObject, key: string, what: string): number | undefined {
  const value = o[key];
  if (value === undefined) return undefined;
  if (typeof value === "number") return value;
  if (typeof value === "string" && /^\d+$/.test(value)) return Number(value);
  throw new KernelParseError(`${what}: "${key}" is not a number: ${JSON.stringify(value)}`);
}

function reqNumber(o: JsonObject, key: string, what: string): number {
  const value = optNumber(o, key, what);
  if (value === undefined) throw new KernelParseError(`${what}: "${key}" is missing`);
  return value;
}

function optBoolean(o: JsonObject, key: string, what: string): boolean | undefined {
  const value = o[key];
  if (value === undefined) return undefined;
  if (typeof value !== "boolean") throw new KernelParseError(`${what}: "${key}" is not a boolean`);
  return value;
}

function strings(o: JsonObject, key: string, what: string): string[] {
  const value = o[key];
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((v): v is string => typeof v === "string")) {
    throw new KernelParseError(`${what}: "${key}" is not a list of strings`);
  }
  return value;
}

function optObject(o: JsonObject, key: string, what: string): JsonObject | undefined {
  const value = o[key];
  if (value === undefined) return undefined;
  if (!isObject(value)) throw new KernelParseError(`${what}: "${key}" is not an object`);
  return value;
}

/** Drops undefined values so optional fields are absent rather than present-but-undefined. */
function compact<T extends object>(record: T): T {
  return Object.fromEntries(Object.entries(record).filter(([, v]) => v !== undefined)) as T;
}

const MISSING = /Cannot find device "|Device ".*" does not exist|FIB table does not exist/;

/** Runs a JSON read; a filter naming a device or table that does not exist yields "". */
async function readJson(runner: CommandRunner, cmd: string, args: readonly string[]): Promise<string> {
  const result = await runner.run(cmd, args);
  if (result.exitCode === 0) return result.stdout;
  if (MISSING.test(result.stderr)) return "";
  throw new CommandError(`${cmd} ${args.join(" ")} (${runner.where})`, result);
}

// --- readers -----------------------------------------------------------------------------------------

function parseLink(o: JsonObject): Link {
  const what = "ip link";
  const name = reqString(o, "ifname", what);
  const flags = strings(o, "flags", `${what} ${name}`);
  const info = optObject(o, "linkinfo", `${what} ${name}`);
  const kind = info === undefined ? undefined : optString(info, "info_kind", `${what} ${name}`);
  const data = info === undefined ? undefined : optObject(info, "info_data", `${what} ${name}`);
  let vxlan: VxlanInfo | undefined;
  if (kind === "vxlan" && data !== undefined) {
    const w = `${what} ${name} vxlan`;
    vxlan = compact({
      id: reqNumber(data, "id", w),
      // iproute2 prints an IPv6 source as "local6".
      local: optString(data, "local", w) ?? optString(data, "local6", w),
      port: optNumber(data, "port", w),
      learning: optBoolean(data, "learning", w) ?? false,
      gbp: optBoolean(data, "gbp", w) ?? false,
      underlay: optString(data, "link", w),
    });
  }
  return compact({
    index: reqNumber(o, "ifindex", what),
    name,
    flags,
    up: flags.includes("UP"),
    mtu: reqNumber(o, "mtu", `${what} ${name}`),
    mac: optString(o, "address", `${what} ${name}`),
    operstate: optString(o, "operstate", `${what} ${name}`),
    master: optString(o, "master", `${what} ${name}`),
    kind,
    vxlan,
  });
}

/** All links with details (`ip -d -j link show`). */
export async function readLinks(runner: CommandRunner): Promise<Link[]> {
  return objects(await readJson(runner, "ip", ["-d", "-j", "link", "show"]), "ip link").map(parseLink);
}

/** One link by name, or undefined when it does not exist. */
export async function readLink(runner: CommandRunner, name: string): Promise<Link | undefined> {
  const out = await readJson(runner, "ip", ["-d", "-j", "link", "show", "dev", name]);
  return objects(out, "ip link").map(parseLink)[0];
}

/** Addresses, flattened to one record per address; optionally of one device and of one family only. */
export async function readAddresses(runner: CommandRunner, dev?: string, family?: 4 | 6): Promise<Address[]> {
  const args = [
    "-j",
    ...(family === undefined ? [] : [`-${family}`]),
    "address",
    "show",
    ...(dev === undefined ? [] : ["dev", dev]),
  ];
  const addresses: Address[] = [];
  for (const link of objects(await readJson(runner, "ip", args), "ip address")) {
    const name = reqString(link, "ifname", "ip address");
    const infos = link.addr_info ?? [];
    if (!Array.isArray(infos)) throw new KernelParseError(`ip address ${name}: "addr_info" is not a list`);
    for (const info of infos as unknown[]) {
      if (!isObject(info)) throw new KernelParseError(`ip address ${name}: addr_info entry is not an object`);
      const what = `ip address ${name}`;
      const family = reqString(info, "family", what);
      if (family !== "inet" && family !== "inet6") continue;
      const local = reqString(info, "local", what);
      const prefixLen = reqNumber(info, "prefixlen", what);
      addresses.push({
        dev: name,
        family,
        local,
        prefixLen,
        cidr: `${local}/${prefixLen}`,
        scope: optString(info, "scope", what) ?? "global",
      });
    }
  }
  return addresses;
}

function parseRoute(o: JsonObject, filter: RouteFilter, family: 4 | 6): Route {
  const what = "ip route";
  const raw = reqString(o, "dst", what);
  const dst = raw === "default" || raw.includes("/") ? raw : `${raw}/${family === 4 ? 32 : 128}`;
  const typeNumber = optNumber(o, "type", `${what} ${dst}`);
  const flags = strings(o, "flags", `${what} ${dst}`);
  return compact({
    dst,
    gateway: optString(o, "gateway", `${what} ${dst}`),
    dev: optString(o, "dev", `${what} ${dst}`) ?? filter.dev,
    protocol: optNumber(o, "protocol", `${what} ${dst}`) ?? filter.protocol ?? PROTOCOL_BOOT,
    scope: optNumber(o, "scope", `${what} ${dst}`) ?? 0,
    table:
      optNumber(o, "table", `${what} ${dst}`) ??
      (typeof filter.table === "number" ? filter.table : TABLE_MAIN),
    type: typeNumber === undefined ? "unicast" : (ROUTE_TYPES[typeNumber] ?? String(typeNumber)),
    onlink: flags.includes("onlink"),
    flags,
    metric: optNumber(o, "metric", `${what} ${dst}`),
    prefsrc: optString(o, "prefsrc", `${what} ${dst}`),
  });
}

/** Routes (`ip -N -j route show …`), with the fields iproute2 omits for filters and defaults filled in. */
export async function readRoutes(runner: CommandRunner, filter: RouteFilter = {}): Promise<Route[]> {
  const family = filter.family ?? 4;
  const args = ["-N", "-j", family === 4 ? "-4" : "-6", "route", "show"];
  if (filter.table !== undefined) args.push("table", String(filter.table));
  if (filter.protocol !== undefined) args.push("proto", String(filter.protocol));
  if (filter.dev !== undefined) args.push("dev", filter.dev);
  return objects(await readJson(runner, "ip", args), "ip route").map((o) => parseRoute(o, filter, family));
}

/** Neighbour (ARP/NDP) entries of one device: both families, or only IPv4 (4) or IPv6 (6) ones. */
export async function readNeighbours(
  runner: CommandRunner,
  dev: string,
  family?: 4 | 6,
): Promise<Neighbour[]> {
  const args = ["-j", ...(family === undefined ? [] : [`-${family}`]), "neigh", "show", "dev", dev];
  const out = await readJson(runner, "ip", args);
  return objects(out, "ip neigh").map((o) => {
    const dst = reqString(o, "dst", "ip neigh");
    return compact({
      dst,
      dev: optString(o, "dev", `ip neigh ${dst}`) ?? dev,
      lladdr: optString(o, "lladdr", `ip neigh ${dst}`),
      state: strings(o, "state", `ip neigh ${dst}`),
    });
  });
}

/** Forwarding database entries of one device (`bridge -j fdb show dev …`). */
export async function readFdb(runner: CommandRunner, dev: string): Promise<FdbEntry[]> {
  const out = await readJson(runner, "bridge", ["-j", "fdb", "show", "dev", dev]);
  return objects(out, "bridge fdb").map((o) => {
    const mac = reqString(o, "mac", "bridge fdb");
    const what = `bridge fdb ${mac}`;
    return compact({
      mac,
      dev: optString(o, "ifname", what) ?? dev,
      dst: optString(o, "dst", what),
      flags: strings(o, "flags", what),
      state: optString(o, "state", what) ?? "dynamic",
      master: optString(o, "master", what),
      vlan: optNumber(o, "vlan", what),
    });
  });
}
