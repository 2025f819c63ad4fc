// rtnetlink (NETLINK_ROUTE) messages for the objects twill programs and watches: routes, neighbours,
// FDB entries, links and addresses, encoded with the field values iproute2 sends (checked with strace
// against iproute2 6.1) so that what twill writes and what a dump reads back compare equal, and decoded
// into the plain objects of dataplane/objects.ts. Devices are interface indexes here; the caller maps
// names (it keeps the link table).
import type { LinkChanges, LinkSpec } from "../dataplane/channel.js";
import type { Address, FdbEntry, Link, Neighbour, Route, VxlanInfo } from "../dataplane/objects.js";
import { formatAddress, parseAddressBytes, parsePrefix, prefixText, type Family } from "../ip/address.js";
import {
  Attributes,
  MessageWriter,
  NLM_F_CREATE,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  type MessageView,
} from "./codec.js";

// ---- constants (include/uapi/linux/rtnetlink.h, neighbour.h, if_link.h, if_addr.h) --------------------

export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;

/** Multicast groups (numbers for NETLINK_ADD_MEMBERSHIP). */
export const RTNLGRP_LINK = 1;
export const RTNLGRP_NEIGH = 3;
export const RTNLGRP_IPV4_IFADDR = 5;
export const RTNLGRP_IPV4_ROUTE = 7;
export const RTNLGRP_IPV6_IFADDR = 9;
export const RTNLGRP_IPV6_ROUTE = 11;

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const AF_INET6 = 10;

const RTM_F_CLONED = 0x200;
const RTNH_F_ONLINK = 4;
const RT_TABLE_UNSPEC = 0;
const RT_TABLE_COMPAT = 252;
const RT_SCOPE_NOWHERE = 255;

const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_PRIORITY = 6;
const RTA_MULTIPATH = 9;
const RTA_TABLE = 15;
const RTA_VIA = 18;

/** RTN_* by number. */
export const ROUTE_TYPES: readonly string[] = [
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

const NDA_DST = 1;
const NDA_LLADDR = 2;
const NDA_MASTER = 9;
const NDA_IFINDEX = 8;
const NTF_SELF = 0x02;
const NTF_MASTER = 0x04;
const NTF_PROXY = 0x08;

const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_MASTER = 10;
const IFLA_LINKINFO = 18;
const IFLA_EXT_MASK = 29;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const IFLA_VXLAN_ID = 1;
const IFLA_VXLAN_LINK = 3;
const IFLA_VXLAN_LOCAL = 4;
const IFLA_VXLAN_LEARNING = 7;
const IFLA_VXLAN_PORT = 15;
const IFLA_VXLAN_LOCAL6 = 17;
const IFLA_VXLAN_GBP = 23;
const IFF_UP = 0x1;
/** Link dumps without the per-device statistics, as `ip link show` asks. */
const RTEXT_FILTER_SKIP_STATS = 1 << 3;
/** The kernel's VXLAN port when none is given (and flannel's). */
const VXLAN_DEFAULT_PORT = 8472;

const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;

const RTMSG_BYTES = 12;
const NDMSG_BYTES = 12;
const IFINFOMSG_BYTES = 16;
const IFADDRMSG_BYTES = 8;

/** An object that cannot be encoded (e.g. an unknown route type): the op fails with EINVAL. */
export class EncodeError extends Error {
  override name = "EncodeError";
}

function familyNumber(family: Family): number {
  return family === 4 ? AF_INET : AF_INET6;
}

function familyOfNumber(af: number): Family | undefined {
  if (af === AF_INET) return 4;
  if (af === AF_INET6) return 6;
  return undefined;
}

/** Address bytes of `text`, which must be of `family`; what for the error message. */
function addressBytes(text: string, family: Family, what: string): Uint8Array {
  const bytes = parseAddressBytes(text);
  if (bytes.length !== (family === 4 ? 4 : 16)) {
    throw new EncodeError(`${what} ${text} is not an IPv${family} address`);
  }
  return bytes;
}

export function macBytes(mac: string): Uint8Array {
  // By hand rather than a regular expression and split: every FDB and neighbour write encodes one.
  const bytes = new Uint8Array(6);
  const hex = (code: number): number =>
    code >= 48 && code <= 57
      ? code - 48
      : code >= 97 && code <= 102
        ? code - 87
        : code >= 65 && code <= 70
          ? code - 55
          : -1;
  let ok = mac.length === 17;
  for (let i = 0; ok && i < 6; i++) {
    const high = hex(mac.charCodeAt(3 * i));
    const low = hex(mac.charCodeAt(3 * i + 1));
    if (high < 0 || low < 0 || (i < 5 && mac.charCodeAt(3 * i + 2) !== 58)) ok = false;
    else bytes[i] = high * 16 + low;
  }
  if (!ok) throw new EncodeError(`"${mac}" is not a MAC address`);
  return bytes;
}

/** Lower-case colon text of a hardware address. */
export function formatMac(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i++) {
    text += (i === 0 ? "" : ":") + (bytes[i] ?? 0).toString(16).padStart(2, "0");
  }
  return text;
}

/** Maps an interface index to the device's name (the caller decides what an unknown index becomes). */
export type NameOf = (index: number) => string;

// ---- routes ---------------------------------------------------------------------------------------------

/**
 * RTM_NEWROUTE with NLM_F_CREATE|NLM_F_REPLACE (`ip route replace`) or RTM_DELROUTE. A delete names
 * the route exactly (dst, table, protocol, type, gateway, device, metric), with scope RT_SCOPE_NOWHERE,
 * which matches any scope, as `ip route del` sends it. `oif` is the device's index, if it has one.
 */
export function encodeRoute(
  writer: MessageWriter,
  action: "replace" | "delete",
  route: Route,
  oif: number | undefined,
): void {
  const type = ROUTE_TYPES.indexOf(route.type);
  if (type < 0) throw new EncodeError(`unknown route type "${route.type}"`);
  if (action === "replace" && route.multipath) {
    throw new EncodeError(
      `route ${route.dst}: multipath routes cannot be written (their next hops are not modelled)`,
    );
  }
  const prefix = parsePrefix(route.dst);
  if (prefix.family !== route.family) throw new EncodeError(`route ${route.dst} is not IPv${route.family}`);
  const gateway = route.gateway === undefined ? undefined : parseAddressBytes(route.gateway);
  writer.begin(
    action === "replace" ? RTM_NEWROUTE : RTM_DELROUTE,
    action === "replace" ? NLM_F_CREATE | NLM_F_REPLACE : 0,
  );
  const at = writer.fixed(RTMSG_BYTES);
  const bytes = writer.bytes;
  bytes[at] = familyNumber(route.family);
  bytes[at + 1] = prefix.length;
  bytes[at + 4] = route.table < 256 ? route.table : RT_TABLE_UNSPEC;
  bytes[at + 5] = route.protocol;
  bytes[at + 6] = action === "replace" ? route.scope : RT_SCOPE_NOWHERE;
  bytes[at + 7] = type;
  bytes.writeUInt32LE(route.onlink ? RTNH_F_ONLINK : 0, at + 8);
  if (route.table >= 256) writer.u32(RTA_TABLE, route.table);
  if (prefix.length > 0) writer.attr(RTA_DST, parseAddressBytes(prefix.address));
  if (gateway !== undefined) {
    if (gateway.length === (route.family === 4 ? 4 : 16)) {
      writer.attr(RTA_GATEWAY, gateway);
    } else {
      // An IPv4 route through an IPv6 next hop (RFC 5549): struct rtvia, family then address.
      const via = new Uint8Array(2 + gateway.length);
      via[0] = gateway.length === 4 ? AF_INET : AF_INET6;
      via.set(gateway, 2);
      writer.attr(RTA_VIA, via);
    }
  }
  if (oif !== undefined) writer.u32(RTA_OIF, oif);
  if (route.metric !== 0) writer.u32(RTA_PRIORITY, route.metric);
  writer.end();
}

/** The rtm_table byte of a route message, to drop other tables before decoding the rest. */
export function routeTableByte(message: MessageView): number {
  return message.buffer[message.payload + 4] ?? RT_TABLE_UNSPEC;
}

/** Whether a route message may be of table `table` (tables ≥ 256 say RT_TABLE_COMPAT in the header). */
export function routeMayBeInTable(message: MessageView, table: number): boolean {
  const byte = routeTableByte(message);
  return byte === table || byte === RT_TABLE_COMPAT || table >= 256;
}

/** A route message as a Route; undefined for other families and for cached (RTM_F_CLONED) routes. */
export function decodeRoute(message: MessageView, nameOf: NameOf): Route | undefined {
  const { buffer, payload, end } = message;
  const family = familyOfNumber(buffer[payload] ?? 0);
  if (family === undefined) return undefined;
  const flags = buffer.readUInt32LE(payload + 8);
  if (flags & RTM_F_CLONED) return undefined;
  const attributes = new Attributes(buffer, payload + RTMSG_BYTES, end);
  const dstLength = buffer[payload + 1] ?? 0;
  const dst = attributes.bytes(RTA_DST) ?? new Uint8Array(family === 4 ? 4 : 16);
  const typeNumber = buffer[payload + 7] ?? 0;
  const multipath = attributes.has(RTA_MULTIPATH);
  const oif = attributes.u32(RTA_OIF);
  return {
    kind: "route",
    family,
    dst: prefixText(dst, dstLength),
    table: attributes.u32(RTA_TABLE) ?? buffer[payload + 4] ?? RT_TABLE_UNSPEC,
    protocol: buffer[payload + 5] ?? 0,
    type: ROUTE_TYPES[typeNumber] ?? String(typeNumber),
    scope: buffer[payload + 6] ?? 0,
    metric: attributes.u32(RTA_PRIORITY) ?? 0,
    gateway: multipath ? undefined : routeGateway(attributes),
    dev: multipath || oif === undefined ? undefined : nameOf(oif),
    onlink: (flags & RTNH_F_ONLINK) !== 0,
    multipath,
  };
}

function routeGateway(attributes: Attributes): string | undefined {
  const gateway = attributes.bytes(RTA_GATEWAY);
  if (gateway !== undefined) return formatAddress(gateway);
  const via = attributes.bytes(RTA_VIA);
  return via === undefined || via.length < 6 ? undefined : formatAddress(via.subarray(2));
}

/** A dump of one family's routes in one table (NETLINK_GET_STRICT_CHK makes the kernel filter). */
export function encodeRouteDump(writer: MessageWriter, family: Family, table: number): void {
  writer.begin(RTM_GETROUTE, 0);
  const at = writer.fixed(RTMSG_BYTES);
  writer.bytes[at] = familyNumber(family);
  writer.u32(RTA_TABLE, table);
  writer.end();
}

// ---- neighbours and FDB entries ----------------------------------------------------------------------

/** RTM_NEWNEIGH (CREATE|REPLACE, `ip neigh replace … nud <state>`) or RTM_DELNEIGH (`ip neigh del`). */
export function encodeNeighbour(
  writer: MessageWriter,
  action: "replace" | "delete",
  neighbour: Neighbour,
  ifindex: number,
): void {
  const dst = addressBytes(neighbour.dst, neighbour.family, "neighbour");
  const lladdr =
    neighbour.lladdr === undefined || action === "delete" ? undefined : macBytes(neighbour.lladdr);
  writer.begin(
    action === "replace" ? RTM_NEWNEIGH : RTM_DELNEIGH,
    action === "replace" ? NLM_F_CREATE | NLM_F_REPLACE : 0,
  );
  const at = writer.fixed(NDMSG_BYTES);
  const bytes = writer.bytes;
  bytes[at] = familyNumber(neighbour.family);
  bytes.writeInt32LE(ifindex, at + 4);
  bytes.writeUInt16LE(neighbour.state, at + 8);
  writer.attr(NDA_DST, dst);
  if (lladdr !== undefined) writer.attr(NDA_LLADDR, lladdr);
  writer.end();
}

/**
 * FDB replace as `bridge fdb replace MAC dev D self dst IP permanent` (AF_BRIDGE, NTF_SELF, NDA_LLADDR,
 * NDA_DST) or delete as `bridge fdb del MAC dev D self dst IP`, in the device's own table or its
 * bridge's, as the entry's NTF_SELF/NTF_MASTER say (its own when neither). The state is the entry's:
 * iproute2 itself sends NUD_NOARP|NUD_PERMANENT for "permanent" and the vxlan driver stores (and
 * reports) whatever it is given, so the entry reads back with exactly the state written.
 */
export function encodeFdb(
  writer: MessageWriter,
  action: "replace" | "delete",
  entry: FdbEntry,
  ifindex: number,
): void {
  const mac = macBytes(entry.mac);
  const dst = entry.dst === undefined ? undefined : parseAddressBytes(entry.dst);
  const table = entry.flags & (NTF_SELF | NTF_MASTER) || NTF_SELF;
  writer.begin(
    action === "replace" ? RTM_NEWNEIGH : RTM_DELNEIGH,
    action === "replace" ? NLM_F_CREATE | NLM_F_REPLACE : 0,
  );
  const at = writer.fixed(NDMSG_BYTES);
  const bytes = writer.bytes;
  bytes[at] = AF_BRIDGE;
  bytes.writeInt32LE(ifindex, at + 4);
  bytes.writeUInt16LE(entry.state, at + 8);
  bytes[at + 10] = table;
  writer.attr(NDA_LLADDR, mac);
  if (dst !== undefined) writer.attr(NDA_DST, dst);
  writer.end();
}

/** The ndm_family of a neighbour message (AF_BRIDGE for FDB entries). */
export function neighbourFamily(message: MessageView): number {
  return message.buffer[message.payload] ?? AF_UNSPEC;
}

/** The ndm_ifindex of a neighbour message, to filter by device before decoding the rest. */
export function neighbourIfindex(message: MessageView): number {
  return message.buffer.readInt32LE(message.payload + 4);
}

/**
 * A neighbour message as a Neighbour (AF_INET/AF_INET6) or an FdbEntry (AF_BRIDGE); undefined for
 * proxy entries, other families, and entries without the address that identifies them.
 */
export function decodeNeighbour(message: MessageView, nameOf: NameOf): Neighbour | FdbEntry | undefined {
  const { buffer, payload, end } = message;
  const af = buffer[payload] ?? AF_UNSPEC;
  const ifindex = buffer.readInt32LE(payload + 4);
  const state = buffer.readUInt16LE(payload + 8);
  const flags = buffer[payload + 10] ?? 0;
  const attributes = new Attributes(buffer, payload + NDMSG_BYTES, end);
  const lladdr = attributes.bytes(NDA_LLADDR);
  const dst = attributes.bytes(NDA_DST);
  if (af === AF_BRIDGE) {
    if (lladdr === undefined) return undefined;
    const master = attributes.u32(NDA_MASTER);
    return {
      kind: "fdb",
      dev: nameOf(ifindex),
      mac: formatMac(lladdr),
      dst: dst === undefined ? undefined : formatAddress(dst),
      state,
      flags,
      master: master === undefined || master === 0 ? undefined : nameOf(master),
    };
  }
  const family = familyOfNumber(af);
  if (family === undefined || flags & NTF_PROXY || dst === undefined) return undefined;
  return {
    kind: "neigh",
    family,
    dev: nameOf(ifindex),
    dst: formatAddress(dst),
    lladdr: lladdr === undefined || lladdr.length === 0 ? undefined : formatMac(lladdr),
    state,
  };
}

/** A dump of the IPv4 and IPv6 neighbours of one device (strict checking: filtered by NDA_IFINDEX). */
export function encodeNeighbourDump(writer: MessageWriter, ifindex: number): void {
  writer.begin(RTM_GETNEIGH, 0);
  writer.fixed(NDMSG_BYTES);
  writer.u32(NDA_IFINDEX, ifindex);
  writer.end();
}

/** A dump of one device's FDB (`bridge fdb show dev D`: AF_BRIDGE with ndm_ifindex as the port). */
export function encodeFdbDump(writer: MessageWriter, ifindex: number): void {
  writer.begin(RTM_GETNEIGH, 0);
  const at = writer.fixed(NDMSG_BYTES);
  writer.bytes[at] = AF_BRIDGE;
  writer.bytes.writeInt32LE(ifindex, at + 4);
  writer.end();
}

// ---- links -----------------------------------------------------------------------------------------------

/** The interface index and name of a link message, without decoding the rest. */
export function linkIdentity(message: MessageView): {
  readonly index: number;
  readonly name: string | undefined;
} {
  const { buffer, payload, end } = message;
  return {
    index: buffer.readInt32LE(payload + 4),
    name: new Attributes(buffer, payload + IFINFOMSG_BYTES, end).string(IFLA_IFNAME),
  };
}

export function decodeLink(message: MessageView, nameOf: NameOf): Link | undefined {
  const { buffer, payload, end } = message;
  const attributes = new Attributes(buffer, payload + IFINFOMSG_BYTES, end);
  const name = attributes.string(IFLA_IFNAME);
  if (name === undefined) return undefined;
  const info = attributes.nested(IFLA_LINKINFO);
  const kind = info?.string(IFLA_INFO_KIND);
  const data = kind === "vxlan" ? info?.nested(IFLA_INFO_DATA) : undefined;
  const address = attributes.bytes(IFLA_ADDRESS);
  const master = attributes.u32(IFLA_MASTER);
  return {
    index: buffer.readInt32LE(payload + 4),
    name,
    kind,
    mtu: attributes.u32(IFLA_MTU) ?? 0,
    up: (buffer.readUInt32LE(payload + 8) & IFF_UP) !== 0,
    mac: address?.length === 6 ? formatMac(address) : undefined,
    master: master === undefined || master === 0 ? undefined : nameOf(master),
    vxlan: data === undefined ? undefined : decodeVxlan(data, nameOf),
  };
}

function decodeVxlan(data: Attributes, nameOf: NameOf): VxlanInfo {
  const local = data.bytes(IFLA_VXLAN_LOCAL) ?? data.bytes(IFLA_VXLAN_LOCAL6);
  const underlay = data.u32(IFLA_VXLAN_LINK);
  return {
    vni: data.u32(IFLA_VXLAN_ID) ?? 0,
    local: local === undefined ? undefined : formatAddress(local),
    port: data.u16be(IFLA_VXLAN_PORT) ?? VXLAN_DEFAULT_PORT,
    learning: (data.u8(IFLA_VXLAN_LEARNING) ?? 0) !== 0,
    gbp: data.has(IFLA_VXLAN_GBP),
    underlay: underlay === undefined || underlay === 0 ? undefined : nameOf(underlay),
  };
}

/**
 * RTM_NEWLINK with NLM_F_CREATE|NLM_F_EXCL, as `ip link add NAME [address MAC] [mtu N] type vxlan id
 * VNI local IP dev UNDERLAY dstport PORT [no]learning [gbp]` or `… type bridge` sends it.
 */
export function encodeLinkCreate(
  writer: MessageWriter,
  spec: LinkSpec,
  underlayIndex: number | undefined,
): void {
  const mac = spec.mac === undefined ? undefined : macBytes(spec.mac);
  const vxlan = spec.vxlan;
  if (spec.kind === "vxlan" && vxlan === undefined)
    throw new EncodeError(`vxlan device ${spec.name} needs its vxlan settings`);
  const local = vxlan === undefined ? undefined : parseAddressBytes(vxlan.local);
  writer.begin(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  writer.fixed(IFINFOMSG_BYTES);
  if (mac !== undefined) writer.attr(IFLA_ADDRESS, mac);
  if (spec.mtu !== undefined) writer.u32(IFLA_MTU, spec.mtu);
  writer.string(IFLA_IFNAME, spec.name);
  writer.beginNested(IFLA_LINKINFO).string(IFLA_INFO_KIND, spec.kind);
  if (vxlan !== undefined && local !== undefined) {
    writer.beginNested(IFLA_INFO_DATA);
    if (underlayIndex !== undefined) writer.u32(IFLA_VXLAN_LINK, underlayIndex);
    writer.u32(IFLA_VXLAN_ID, vxlan.vni);
    writer.attr(local.length === 4 ? IFLA_VXLAN_LOCAL : IFLA_VXLAN_LOCAL6, local);
    writer.u8(IFLA_VXLAN_LEARNING, vxlan.learning ? 1 : 0);
    writer.u16be(IFLA_VXLAN_PORT, vxlan.port);
    if (vxlan.gbp) writer.flag(IFLA_VXLAN_GBP);
    writer.endNested();
  }
  writer.endNested();
  writer.end();
}

/** RTM_NEWLINK on an existing device, as `ip link set D [mtu N] [address MAC] [up|down]`. */
export function encodeLinkSet(writer: MessageWriter, index: number, changes: LinkChanges): void {
  const mac = changes.mac === undefined ? undefined : macBytes(changes.mac);
  writer.begin(RTM_NEWLINK, 0);
  const at = writer.fixed(IFINFOMSG_BYTES);
  const bytes = writer.bytes;
  bytes.writeInt32LE(index, at + 4);
  if (changes.up !== undefined) {
    bytes.writeUInt32LE(changes.up ? IFF_UP : 0, at + 8);
    bytes.writeUInt32LE(IFF_UP, at + 12);
  }
  if (changes.mtu !== undefined) writer.u32(IFLA_MTU, changes.mtu);
  if (mac !== undefined) writer.attr(IFLA_ADDRESS, mac);
  writer.end();
}

export function encodeLinkDelete(writer: MessageWriter, index: number): void {
  writer.begin(RTM_DELLINK, 0);
  const at = writer.fixed(IFINFOMSG_BYTES);
  writer.bytes.writeInt32LE(index, at + 4);
  writer.end();
}

/** A dump of every link, without statistics. */
export function encodeLinkDump(writer: MessageWriter): void {
  writer.begin(RTM_GETLINK, 0);
  writer.fixed(IFINFOMSG_BYTES);
  writer.u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  writer.end();
}

// ---- addresses -------------------------------------------------------------------------------------------

/**
 * RTM_NEWADDR with NLM_F_CREATE|NLM_F_EXCL (`ip addr add`, so an existing address is EEXIST) or
 * RTM_DELADDR; both carry IFA_LOCAL and IFA_ADDRESS, as iproute2 does for an address without a peer.
 */
/** ifa_flags: skip duplicate address detection. */
const IFA_F_NODAD = 0x02;

export function encodeAddress(
  writer: MessageWriter,
  action: "add" | "delete",
  address: Address,
  index: number,
): void {
  const bytes = addressBytes(address.address, address.family, "address");
  writer.begin(
    action === "add" ? RTM_NEWADDR : RTM_DELADDR,
    action === "add" ? NLM_F_CREATE | NLM_F_EXCL : 0,
  );
  const at = writer.fixed(IFADDRMSG_BYTES);
  const header = writer.bytes;
  header[at] = familyNumber(address.family);
  header[at + 1] = address.prefixLength;
  // IPv6: no duplicate address detection. The addresses are the node's own by its lease, and a
  // tentative gateway would leave pods without one for the ~1 s DAD takes after every (re)creation.
  if (address.family === 6 && action === "add") header[at + 2] = IFA_F_NODAD;
  header[at + 3] = address.scope;
  header.writeUInt32LE(index, at + 4);
  writer.attr(IFA_LOCAL, bytes);
  writer.attr(IFA_ADDRESS, bytes);
  writer.end();
}

/** An address message as an Address; undefined for families other than IPv4 and IPv6. */
export function decodeAddress(message: MessageView, nameOf: NameOf): Address | undefined {
  const { buffer, payload, end } = message;
  const family = familyOfNumber(buffer[payload] ?? 0);
  if (family === undefined) return undefined;
  const attributes = new Attributes(buffer, payload + IFADDRMSG_BYTES, end);
  // IFA_LOCAL is the local address; IFA_ADDRESS is the peer on point-to-point links (IPv6 sends only it).
  const local = attributes.bytes(IFA_LOCAL) ?? attributes.bytes(IFA_ADDRESS);
  if (local === undefined) return undefined;
  return {
    family,
    dev: nameOf(buffer.readUInt32LE(payload + 4)),
    address: formatAddress(local),
    prefixLength: buffer[payload + 1] ?? 0,
    scope: buffer[payload + 3] ?? 0,
  };
}

/** A dump of every address of both families. */
export function encodeAddressDump(writer: MessageWriter): void {
  writer.begin(RTM_GETADDR, 0);
  writer.fixed(IFADDRMSG_BYTES);
  writer.end();
}
