// The kernel objects twill programs or watches, as plain values. The same shape serves as desired
// state (what a backend wants), as a cache entry (what the kernel has) and as an op's payload, so a
// successful write can patch the cache with the very object it wrote. Addresses are canonical text
// (ip/address.ts), so a key built from them identifies the object; devices are named, and the kernel
// channel translates names to interface indexes.
import type { Family } from "../ip/address.js";

/** Route protocol number on every route twill installs (`proto 151`): only such routes are "owned". */
export const TWILL_ROUTE_PROTOCOL = 151;
/** The kernel's main routing table, the only table twill writes. */
export const MAIN_TABLE = 254;
/** Route scopes (RT_SCOPE_*). */
export const SCOPE_UNIVERSE = 0;
export const SCOPE_LINK = 253;

/** Neighbour and FDB states (NUD_*), a bit set. */
export const NUD_REACHABLE = 0x02;
export const NUD_STALE = 0x04;
export const NUD_FAILED = 0x20;
export const NUD_NOARP = 0x40;
export const NUD_PERMANENT = 0x80;

/** Neighbour and FDB flags (NTF_*). */
export const NTF_SELF = 0x02;
export const NTF_MASTER = 0x04;

export interface Route {
  readonly kind: "route";
  readonly family: Family;
  /** Canonical CIDR ("10.244.5.0/24", host routes "/32" or "/128"). */
  readonly dst: string;
  readonly table: number;
  readonly protocol: number;
  /** "unicast", "blackhole", "unreachable", "prohibit", "local", "broadcast", "throw", … (RTN_*). */
  readonly type: string;
  readonly scope: number;
  /** The route's priority; 0 when the kernel reports none. */
  readonly metric: number;
  /** Canonical next-hop address. */
  readonly gateway: string | undefined;
  /** Output device; undefined for multipath, blackhole and unreachable routes. */
  readonly dev: string | undefined;
  readonly onlink: boolean;
  /** A route with several next hops (never ours; its hops are not modelled). */
  readonly multipath: boolean;
}

export interface Neighbour {
  readonly kind: "neigh";
  readonly family: Family;
  readonly dev: string;
  /** Canonical IP address. */
  readonly dst: string;
  /** Lower-case colon MAC; undefined while unresolved. */
  readonly lladdr: string | undefined;
  /** NUD_* bits. */
  readonly state: number;
}

/** A forwarding database entry (AF_BRIDGE neighbour): on a VXLAN device, "frames for mac go to dst". */
export interface FdbEntry {
  readonly kind: "fdb";
  readonly dev: string;
  /** Lower-case colon MAC. */
  readonly mac: string;
  /** Remote VTEP address (canonical) for VXLAN entries; undefined for local ones. */
  readonly dst: string | undefined;
  /** NUD_* bits: NUD_PERMANENT for static entries, NUD_REACHABLE for learned ones. */
  readonly state: number;
  /** NTF_* bits (NTF_SELF: the device's own table; NTF_MASTER: its bridge's). */
  readonly flags: number;
  /** Bridge the device is enslaved to, for NTF_MASTER entries. */
  readonly master: string | undefined;
}

/** The objects the planner diffs; new kinds (e.g. WireGuard peers) join this union. */
export type KernelObject = Route | Neighbour | FdbEntry;
export type ObjectKind = KernelObject["kind"];

/** VXLAN device attributes (IFLA_VXLAN_*). */
export interface VxlanInfo {
  readonly vni: number;
  /** Tunnel source address, canonical. */
  readonly local: string | undefined;
  /** UDP destination port (the kernel's default is 8472). */
  readonly port: number;
  readonly learning: boolean;
  readonly gbp: boolean;
  /** Underlay device name. */
  readonly underlay: string | undefined;
}

export interface Link {
  readonly index: number;
  readonly name: string;
  /** linkinfo kind: "vxlan", "bridge", "veth", "tun", "wireguard", …; undefined for plain devices. */
  readonly kind: string | undefined;
  readonly mtu: number;
  /** The administrative UP flag. */
  readonly up: boolean;
  /** Lower-case colon MAC; undefined for devices without one (tun). */
  readonly mac: string | undefined;
  /** Bridge this link is enslaved to. */
  readonly master: string | undefined;
  readonly vxlan: VxlanInfo | undefined;
}

export interface Address {
  readonly family: Family;
  readonly dev: string;
  /** The local address, canonical. */
  readonly address: string;
  readonly prefixLength: number;
  /** 0 global, 253 link, 254 host. */
  readonly scope: number;
}

/**
 * The metric the kernel gives an IPv6 route written without one (IP6_RT_PRIO_USER); an IPv4 route's is 0.
 */
export const IPV6_DEFAULT_METRIC = 1024;

/**
 * An owned route as twill writes it (main table, proto 151, unicast), with the scope and metric the
 * kernel reports back for it, so a dump of what was written compares equal to it.
 */
export function ownedRoute(spec: {
  readonly family: Family;
  readonly dst: string;
  readonly gateway: string | undefined;
  readonly dev: string;
  readonly onlink: boolean;
}): Route {
  return {
    kind: "route",
    family: spec.family,
    dst: spec.dst,
    table: MAIN_TABLE,
    protocol: TWILL_ROUTE_PROTOCOL,
    type: "unicast",
    // A route through a gateway has universe scope; one straight onto a device, link scope. IPv6 has
    // no route scopes and no metric 0: verified on kernel 6.18, an IPv6 route written with scope link
    // and no metric reads back with scope universe and metric 1024.
    scope: spec.gateway === undefined && spec.family === 4 ? SCOPE_LINK : SCOPE_UNIVERSE,
    metric: spec.family === 6 ? IPV6_DEFAULT_METRIC : 0,
    gateway: spec.gateway,
    dev: spec.dev,
    onlink: spec.onlink,
    multipath: false,
  };
}

/** A permanent neighbour entry as twill writes it. */
export function permanentNeighbour(spec: {
  readonly family: Family;
  readonly dev: string;
  readonly dst: string;
  readonly lladdr: string;
}): Neighbour {
  return { kind: "neigh", ...spec, state: NUD_PERMANENT };
}

/** A permanent FDB entry in the device's own table (`bridge fdb replace … self dst … permanent`). */
export function permanentFdb(spec: {
  readonly dev: string;
  readonly mac: string;
  readonly dst: string;
}): FdbEntry {
  return { kind: "fdb", ...spec, state: NUD_PERMANENT, flags: NTF_SELF, master: undefined };
}

/**
 * --ip-blackhole-route: the node's own subnet (of each family) dropped at `metric`, far behind the bridge's connected
 * route, so its traffic never leaves by the default route while the bridge is down or unaddressed.
 * (flannel adds it at metric 0, where it and the connected route contend.)
 */
export function blackholeRoute(family: Family, subnetCidr: string, metric: number): Route {
  return {
    kind: "route",
    family,
    dst: subnetCidr,
    table: MAIN_TABLE,
    protocol: TWILL_ROUTE_PROTOCOL,
    type: "blackhole",
    scope: SCOPE_UNIVERSE,
    metric,
    gateway: undefined,
    dev: undefined,
    onlink: false,
    multipath: false,
  };
}
