// The netlink codec against hand-built buffers: framing and alignment, nested and big-endian attributes,
// acknowledgements with extended-ack text, multipart dumps, and the rtnetlink messages twill writes and
// reads, IPv4 and IPv6. Expected request bytes are what iproute2 6.1 sent for the same command (strace).
import { describe, expect, it } from "vitest";
import {
  ownedRoute,
  permanentFdb,
  permanentNeighbour,
  type FdbEntry,
  type Link,
  type Neighbour,
  type Route,
} from "../../src/dataplane/objects.js";
import {
  Attributes,
  MessageWriter,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLM_F_MULTI,
  NetlinkFormatError,
  forEachMessage,
  parseAcknowledgement,
  parseDone,
  type MessageView,
} from "../../src/netlink/codec.js";
import {
  EncodeError,
  RTM_NEWROUTE,
  decodeAddress,
  decodeLink,
  decodeNeighbour,
  decodeRoute,
  encodeAddress,
  encodeFdb,
  encodeLinkCreate,
  encodeLinkSet,
  encodeNeighbour,
  encodeRoute,
} from "../../src/netlink/rtnetlink.js";

// ---- hand-built netlink ----------------------------------------------------------------------------------

const pad = (bytes: Buffer): Buffer => Buffer.concat([bytes, Buffer.alloc((4 - (bytes.length % 4)) % 4)]);

function u16(value: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(value);
  return b;
}
function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value);
  return b;
}
function i32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value);
  return b;
}
const bytes = (...values: number[]): Buffer => Buffer.from(values);
const ip4 = (text: string): Buffer => Buffer.from(text.split(".").map(Number));
const cstring = (text: string): Buffer => Buffer.concat([Buffer.from(text), bytes(0)]);

/** One attribute, padded to 4 bytes; nla_len counts the unpadded value. */
function attr(type: number, value: Buffer): Buffer {
  return pad(Buffer.concat([u16(4 + value.length), u16(type), value]));
}
const nest = (type: number, ...children: Buffer[]): Buffer => attr(type | 0x8000, Buffer.concat(children));

/** One message: header (len, type, flags, seq, pid) and a body already padded. */
function nlmsg(type: number, flags: number, seq: number, pid: number, ...body: Buffer[]): Buffer {
  const payload = Buffer.concat(body);
  return Buffer.concat([u32(16 + payload.length), u16(type), u16(flags), u32(seq), u32(pid), payload]);
}

/** The single message in `buffer`, as the socket would hand it over. */
function only(buffer: Buffer): MessageView {
  const views: MessageView[] = [];
  forEachMessage(buffer, buffer.length, (view) => views.push({ ...view }));
  expect(views).toHaveLength(1);
  const [view] = views;
  if (view === undefined) throw new Error("no message");
  return view;
}

/** The messages a writer holds, without the sequence numbers the socket would add. */
function written(write: (writer: MessageWriter) => void): Buffer {
  const writer = new MessageWriter(16);
  write(writer);
  return Buffer.from(writer.finish().bytes);
}

const rtmsg = (
  family: number,
  dstLen: number,
  table: number,
  protocol: number,
  scope: number,
  type: number,
  flags = 0,
) => Buffer.concat([bytes(family, dstLen, 0, 0, table, protocol, scope, type), u32(flags)]);
const ndmsg = (family: number, ifindex: number, state: number, flags = 0) =>
  Buffer.concat([bytes(family, 0, 0, 0), i32(ifindex), u16(state), bytes(flags, 0)]);
const ifinfomsg = (index: number, flags: number, change = 0) =>
  Buffer.concat([bytes(0, 0), u16(0), i32(index), u32(flags), u32(change)]);
const ifaddrmsg = (family: number, prefixLength: number, scope: number, index: number) =>
  Buffer.concat([bytes(family, prefixLength, 0, scope), u32(index)]);

const names = new Map([
  [4, "flannel.1"],
  [2, "eth0"],
  [7, "cni0"],
]);
const nameOf = (index: number): string => names.get(index) ?? `if${index}`;

// ---- framing --------------------------------------------------------------------------------------------

describe("MessageWriter", () => {
  it("pads every attribute to 4 bytes and counts only the value in nla_len", () => {
    const out = written((w) => w.begin(18, 0).string(3, "eth0").u8(7, 1).end());
    expect(out).toEqual(nlmsg(18, 0, 0, 0, attr(3, cstring("eth0")), attr(7, bytes(1))));
    expect(out.length % 4).toBe(0);
    expect(out.readUInt16LE(16)).toBe(9); // 4 + "eth0\0"
  });

  it("writes ports big-endian and other integers in host order", () => {
    const out = written((w) => w.begin(16, 0).u16be(15, 8472).u32(1, 0x01020304).u16(2, 0x0a0b).end());
    expect(out.subarray(16)).toEqual(
      Buffer.concat([attr(15, bytes(0x21, 0x18)), attr(1, bytes(4, 3, 2, 1)), attr(2, bytes(0x0b, 0x0a))]),
    );
  });

  it("nests attributes with NLA_F_NESTED and a length that covers the children", () => {
    const out = written((w) =>
      w
        .begin(16, 0)
        .beginNested(18)
        .string(1, "vxlan")
        .beginNested(2)
        .u32(1, 42)
        .flag(23)
        .endNested()
        .endNested()
        .end(),
    );
    expect(out.subarray(16)).toEqual(
      nest(18, attr(1, cstring("vxlan")), nest(2, attr(1, u32(42)), attr(23, Buffer.alloc(0)))),
    );
  });

  it("keeps messages back to back and knows where each starts; cancel drops the last one", () => {
    const writer = new MessageWriter(8);
    writer.begin(1, 0).u32(1, 1).end();
    writer.begin(2, 0).string(1, "x").end();
    writer.begin(3, 0).u32(1, 3);
    writer.cancel();
    const { bytes: out, starts } = writer.finish();
    expect(starts).toEqual([0, 24]);
    expect(Buffer.from(out)).toEqual(
      Buffer.concat([nlmsg(1, 0, 0, 0, attr(1, u32(1))), nlmsg(2, 0, 0, 0, attr(1, cstring("x")))]),
    );
  });

  it("refuses to end a message inside a nested attribute", () => {
    const writer = new MessageWriter();
    writer.begin(1, 0).beginNested(2);
    expect(() => writer.end()).toThrow(/nested/);
  });
});

describe("forEachMessage and Attributes", () => {
  it("walks messages of unaligned lengths by their padded size", () => {
    const first = nlmsg(RTM_NEWROUTE, NLM_F_MULTI, 7, 0, bytes(1, 2, 3)); // nlmsg_len 19
    const second = nlmsg(NLMSG_DONE, NLM_F_MULTI, 7, 0, i32(0));
    const buffer = Buffer.concat([pad(first), second]);
    const seen: [number, number, number][] = [];
    forEachMessage(buffer, buffer.length, (m) => seen.push([m.type, m.offset, m.end]));
    expect(seen).toEqual([
      [RTM_NEWROUTE, 0, 19],
      [NLMSG_DONE, 20, 40],
    ]);
  });

  it("rejects a message that claims more bytes than were received", () => {
    const message = nlmsg(RTM_NEWROUTE, 0, 1, 0, Buffer.alloc(8));
    expect(() => forEachMessage(message, message.length - 4, () => undefined)).toThrow(NetlinkFormatError);
  });

  it("reads values, nested sets and flags in place; the last of a repeated type wins", () => {
    const body = Buffer.concat([
      attr(3, cstring("flannel.1")),
      attr(4, u32(1450)),
      attr(4, u32(1400)),
      nest(18, attr(1, cstring("vxlan")), nest(2, attr(15, bytes(0x12, 0xb5)), attr(23, Buffer.alloc(0)))),
    ]);
    const attributes = new Attributes(body, 0, body.length);
    expect(attributes.string(3)).toBe("flannel.1");
    expect(attributes.u32(4)).toBe(1400);
    const data = attributes.nested(18)?.nested(2);
    expect(data?.u16be(15)).toBe(4789);
    expect(data?.has(23)).toBe(true);
    expect(data?.has(24)).toBe(false);
    expect(attributes.u32(99)).toBeUndefined();
  });

  it("rejects an attribute running past its container", () => {
    const body = Buffer.concat([u16(12), u16(1), u32(5)]);
    expect(() => new Attributes(body, 0, body.length)).toThrow(NetlinkFormatError);
  });
});

describe("acknowledgements", () => {
  const request = (seq: number) => Buffer.concat([u32(52), u16(RTM_NEWROUTE), u16(0x405), u32(seq), u32(0)]);

  it("a capped success names the request's sequence number", () => {
    const ack = parseAcknowledgement(only(nlmsg(NLMSG_ERROR, NLM_F_CAPPED, 41, 999, i32(0), request(41))));
    expect(ack).toEqual({ errno: 0, seq: 41, text: undefined, attributeOffset: undefined });
  });

  it("an error carries errno and the extended-ack text and offset", () => {
    const tlvs = Buffer.concat([attr(1, cstring("Nexthop device required for onlink")), attr(2, u32(36))]);
    const ack = parseAcknowledgement(
      only(nlmsg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 9, 0, i32(-22), request(9), tlvs)),
    );
    expect(ack).toEqual({
      errno: 22,
      seq: 9,
      text: "Nexthop device required for onlink",
      attributeOffset: 36,
    });
  });

  it("without NETLINK_CAP_ACK the copied request is skipped before the TLVs", () => {
    const copied = Buffer.concat([u32(24), u16(RTM_NEWROUTE), u16(5), u32(3), u32(0), Buffer.alloc(8, 0xee)]);
    const tlvs = attr(1, cstring("bad"));
    const ack = parseAcknowledgement(only(nlmsg(NLMSG_ERROR, NLM_F_ACK_TLVS, 3, 0, i32(-3), copied, tlvs)));
    expect(ack).toMatchObject({ errno: 3, seq: 3, text: "bad" });
  });

  it("a dump's DONE carries 0, or the dump's error with its text", () => {
    expect(parseDone(only(nlmsg(NLMSG_DONE, NLM_F_MULTI, 5, 0, i32(0))))).toMatchObject({ errno: 0, seq: 5 });
    const failed = nlmsg(
      NLMSG_DONE,
      NLM_F_MULTI | NLM_F_ACK_TLVS,
      5,
      0,
      i32(-95),
      attr(1, cstring("not supported")),
    );
    expect(parseDone(only(failed))).toMatchObject({ errno: 95, text: "not supported" });
  });
});

// ---- rtnetlink requests (the bytes iproute2 sends) -------------------------------------------------------

describe("rtnetlink requests", () => {
  const vxlanRoute = ownedRoute({
    family: 4,
    dst: "10.244.5.0/24",
    gateway: "10.244.5.0",
    dev: "flannel.1",
    onlink: true,
  });

  it("route replace: `ip route replace 10.244.5.0/24 via 10.244.5.0 dev flannel.1 onlink proto 151`", () => {
    expect(written((w) => encodeRoute(w, "replace", vxlanRoute, 4))).toEqual(
      nlmsg(
        24,
        0x500, // NLM_F_CREATE | NLM_F_REPLACE
        0,
        0,
        rtmsg(2, 24, 254, 151, 0, 1, 4),
        attr(1, ip4("10.244.5.0")),
        attr(5, ip4("10.244.5.0")),
        attr(4, u32(4)),
      ),
    );
  });

  it("route delete names the route exactly, with scope NOWHERE", () => {
    const route: Route = { ...vxlanRoute, metric: 100 };
    expect(written((w) => encodeRoute(w, "delete", route, 4))).toEqual(
      nlmsg(
        25,
        0,
        0,
        0,
        rtmsg(2, 24, 254, 151, 255, 1, 4),
        attr(1, ip4("10.244.5.0")),
        attr(5, ip4("10.244.5.0")),
        attr(4, u32(4)),
        attr(6, u32(100)),
      ),
    );
  });

  it("a table above 255 goes in RTA_TABLE; a default route has no RTA_DST; IPv6 gateways are 16 bytes", () => {
    const route: Route = {
      ...ownedRoute({ family: 6, dst: "::/0", gateway: "fd00::1", dev: "eth0", onlink: false }),
      table: 1000,
      metric: 1024,
    };
    const gateway = Buffer.alloc(16);
    gateway.writeUInt16BE(0xfd00, 0);
    gateway[15] = 1;
    expect(written((w) => encodeRoute(w, "replace", route, 2))).toEqual(
      nlmsg(
        24,
        0x500,
        0,
        0,
        rtmsg(10, 0, 0, 151, 0, 1),
        attr(15, u32(1000)),
        attr(5, gateway),
        attr(4, u32(2)),
        attr(6, u32(1024)),
      ),
    );
  });

  it("refuses what it cannot write: unknown types, multipath routes, a family that does not match", () => {
    expect(() => written((w) => encodeRoute(w, "replace", { ...vxlanRoute, type: "bogus" }, 4))).toThrow(
      EncodeError,
    );
    expect(() => written((w) => encodeRoute(w, "replace", { ...vxlanRoute, multipath: true }, 4))).toThrow(
      /multipath/,
    );
    expect(() => written((w) => encodeRoute(w, "replace", { ...vxlanRoute, family: 6 }, 4))).toThrow(/IPv6/);
  });

  it("neighbour replace: `ip neigh replace 10.244.5.0 lladdr 02:00:00:00:00:05 dev flannel.1 nud permanent`", () => {
    const neighbour = permanentNeighbour({
      family: 4,
      dev: "flannel.1",
      dst: "10.244.5.0",
      lladdr: "02:00:00:00:00:05",
    });
    expect(written((w) => encodeNeighbour(w, "replace", neighbour, 4))).toEqual(
      nlmsg(28, 0x500, 0, 0, ndmsg(2, 4, 0x80), attr(1, ip4("10.244.5.0")), attr(2, bytes(2, 0, 0, 0, 0, 5))),
    );
  });

  it("FDB replace: `bridge fdb replace 02:00:00:00:00:05 dev flannel.1 self dst 198.18.0.5 permanent`", () => {
    const entry = permanentFdb({ dev: "flannel.1", mac: "02:00:00:00:00:05", dst: "198.18.0.5" });
    // iproute2 sends NUD_NOARP|NUD_PERMANENT; the entry's own state (NUD_PERMANENT) is written instead.
    expect(written((w) => encodeFdb(w, "replace", entry, 4))).toEqual(
      nlmsg(
        28,
        0x500,
        0,
        0,
        ndmsg(7, 4, 0x80, 0x02),
        attr(2, bytes(2, 0, 0, 0, 0, 5)),
        attr(1, ip4("198.18.0.5")),
      ),
    );
  });

  it("vxlan create: `ip link add flannel.1 address … mtu 1450 type vxlan id 1 local … dev eth0 dstport 8472 nolearning`", () => {
    const out = written((w) =>
      encodeLinkCreate(
        w,
        {
          name: "flannel.1",
          kind: "vxlan",
          mac: "02:aa:bb:cc:dd:01",
          mtu: 1450,
          vxlan: { vni: 1, local: "198.18.0.1", port: 8472, learning: false, gbp: false, underlay: "eth0" },
        },
        3,
      ),
    );
    // 128 bytes, attribute for attribute what iproute2 sent (INFO_DATA: LINK, ID, LOCAL, LEARNING, PORT).
    expect(out).toEqual(
      nlmsg(
        16,
        0x600, // NLM_F_CREATE | NLM_F_EXCL
        0,
        0,
        ifinfomsg(0, 0),
        attr(1, bytes(2, 0xaa, 0xbb, 0xcc, 0xdd, 1)),
        attr(4, u32(1450)),
        attr(3, cstring("flannel.1")),
        nest(
          18,
          attr(1, cstring("vxlan")),
          nest(
            2,
            attr(3, u32(3)),
            attr(1, u32(1)),
            attr(4, ip4("198.18.0.1")),
            attr(7, bytes(0)),
            attr(15, bytes(0x21, 0x18)),
          ),
        ),
      ),
    );
    expect(out.length).toBe(128);
  });

  it("wireguard create: the kernel's WireGuard device, kind wireguard and no INFO_DATA (no module here to run it against)", () => {
    expect(
      written((w) => encodeLinkCreate(w, { name: "flannel-wg", kind: "wireguard", mtu: 1420 }, undefined)),
    ).toEqual(
      nlmsg(
        16,
        0x600,
        0,
        0,
        ifinfomsg(0, 0),
        attr(4, u32(1420)),
        attr(3, cstring("flannel-wg")),
        nest(18, attr(1, cstring("wireguard"))),
      ),
    );
  });

  it("link set up with an MTU: `ip link set flannel.1 mtu 1400 up`", () => {
    expect(written((w) => encodeLinkSet(w, 4, { up: true, mtu: 1400 }))).toEqual(
      nlmsg(16, 0, 0, 0, ifinfomsg(4, 1, 1), attr(4, u32(1400))),
    );
  });

  it("address add: `ip addr add 10.244.1.0/32 dev flannel.1`", () => {
    expect(
      written((w) =>
        encodeAddress(
          w,
          "add",
          { family: 4, dev: "flannel.1", address: "10.244.1.0", prefixLength: 32, scope: 0 },
          4,
        ),
      ),
    ).toEqual(
      nlmsg(20, 0x600, 0, 0, ifaddrmsg(2, 32, 0, 4), attr(2, ip4("10.244.1.0")), attr(1, ip4("10.244.1.0"))),
    );
  });
});

// ---- rtnetlink notifications and dump replies ------------------------------------------------------------

describe("rtnetlink decoding", () => {
  const v6 = (text: string): Buffer => {
    const out = Buffer.alloc(16);
    const groups = { "fd00:244:6::": [0xfd00, 0x244, 6], "fd00:18::6": [0xfd00, 0x18, 0, 0, 0, 0, 0, 6] }[
      text
    ];
    if (groups === undefined) throw new Error(text);
    groups.forEach((g, i) => out.writeUInt16BE(g, 2 * i));
    return out;
  };

  it("an onlink IPv4 route", () => {
    const message = nlmsg(
      24,
      0,
      0,
      0,
      rtmsg(2, 24, 254, 151, 0, 1, 4),
      attr(15, u32(254)),
      attr(1, ip4("10.244.5.0")),
      attr(5, ip4("10.244.5.0")),
      attr(4, u32(4)),
    );
    expect(decodeRoute(only(message), nameOf)).toEqual(
      ownedRoute({ family: 4, dst: "10.244.5.0/24", gateway: "10.244.5.0", dev: "flannel.1", onlink: true }),
    );
  });

  it("an IPv6 route keeps its metric; the table comes from RTA_TABLE over the header byte", () => {
    const message = nlmsg(
      24,
      0,
      0,
      0,
      rtmsg(10, 64, 252, 151, 0, 1),
      attr(15, u32(1000)),
      attr(1, v6("fd00:244:6::")),
      attr(6, u32(1024)),
      attr(4, u32(7)),
    );
    expect(decodeRoute(only(message), nameOf)).toEqual({
      kind: "route",
      family: 6,
      dst: "fd00:244:6::/64",
      table: 1000,
      protocol: 151,
      type: "unicast",
      scope: 0,
      metric: 1024,
      gateway: undefined,
      dev: "cni0",
      onlink: false,
      multipath: false,
    } satisfies Route);
  });

  it("a default route, a blackhole, a multipath route, an unknown device; cached routes are skipped", () => {
    const fallback = decodeRoute(
      only(nlmsg(24, 0, 0, 0, rtmsg(2, 0, 254, 3, 0, 1), attr(5, ip4("198.18.0.254")), attr(4, u32(2)))),
      nameOf,
    );
    expect(fallback).toMatchObject({ dst: "0.0.0.0/0", gateway: "198.18.0.254", dev: "eth0", protocol: 3 });
    const blackhole = decodeRoute(
      only(nlmsg(24, 0, 0, 0, rtmsg(2, 16, 254, 4, 0, 6), attr(1, ip4("10.244.0.0")))),
      nameOf,
    );
    expect(blackhole).toMatchObject({
      dst: "10.244.0.0/16",
      type: "blackhole",
      dev: undefined,
      gateway: undefined,
    });
    const hop = Buffer.concat([u16(16), bytes(0, 0), i32(2), attr(5, ip4("198.18.0.1"))]);
    const multipath = decodeRoute(
      only(
        nlmsg(
          24,
          0,
          0,
          0,
          rtmsg(2, 24, 254, 4, 0, 1),
          attr(1, ip4("10.9.0.0")),
          attr(9, Buffer.concat([hop, hop])),
        ),
      ),
      nameOf,
    );
    expect(multipath).toMatchObject({ multipath: true, dev: undefined, gateway: undefined });
    expect(
      decodeRoute(
        only(nlmsg(24, 0, 0, 0, rtmsg(2, 32, 254, 4, 0, 1), attr(1, ip4("10.9.0.1")), attr(4, u32(99)))),
        nameOf,
      )?.dev,
    ).toBe("if99");
    expect(
      decodeRoute(
        only(nlmsg(24, 0, 0, 0, rtmsg(2, 32, 254, 4, 0, 1, 0x200), attr(1, ip4("10.9.0.1")))),
        nameOf,
      ),
    ).toBeUndefined();
  });

  it("neighbours of both families; proxy entries are skipped", () => {
    const mac = bytes(2, 0, 0, 0, 0, 6);
    expect(
      decodeNeighbour(
        only(nlmsg(28, 0, 0, 0, ndmsg(10, 4, 0x80), attr(1, v6("fd00:244:6::")), attr(2, mac))),
        nameOf,
      ),
    ).toEqual(
      permanentNeighbour({
        family: 6,
        dev: "flannel.1",
        dst: "fd00:244:6::",
        lladdr: "02:00:00:00:00:06",
      }) satisfies Neighbour,
    );
    expect(
      decodeNeighbour(only(nlmsg(28, 0, 0, 0, ndmsg(2, 2, 0x20), attr(1, ip4("198.18.0.9")))), nameOf),
    ).toMatchObject({
      dst: "198.18.0.9",
      lladdr: undefined,
      state: 0x20,
    });
    expect(
      decodeNeighbour(only(nlmsg(28, 0, 0, 0, ndmsg(2, 2, 0x80, 0x08), attr(1, ip4("198.18.0.9")))), nameOf),
    ).toBeUndefined();
  });

  it("FDB entries (AF_BRIDGE): a VXLAN remote over IPv6, and a bridge port's entry with its master", () => {
    const remote = nlmsg(
      28,
      0,
      0,
      0,
      ndmsg(7, 4, 0x80, 0x02),
      attr(2, bytes(2, 0, 0, 0, 0, 6)),
      attr(1, v6("fd00:18::6")),
    );
    expect(decodeNeighbour(only(remote), nameOf)).toEqual(
      permanentFdb({ dev: "flannel.1", mac: "02:00:00:00:00:06", dst: "fd00:18::6" }) satisfies FdbEntry,
    );
    const learned = nlmsg(
      28,
      0,
      0,
      0,
      ndmsg(7, 2, 0x02, 0x04),
      attr(2, bytes(0xaa, 0, 0, 0, 0, 1)),
      attr(9, u32(7)),
    );
    expect(decodeNeighbour(only(learned), nameOf)).toEqual({
      kind: "fdb",
      dev: "eth0",
      mac: "aa:00:00:00:00:01",
      dst: undefined,
      state: 0x02,
      flags: 0x04,
      master: "cni0",
    } satisfies FdbEntry);
  });

  it("a vxlan link with an IPv6 source, GBP and learning; a port's master", () => {
    const local6 = v6("fd00:18::6");
    const vxlan = nlmsg(
      16,
      0,
      0,
      0,
      ifinfomsg(9, 0x1043),
      attr(3, cstring("vx6")),
      attr(4, u32(1430)),
      attr(1, bytes(2, 0xaa, 0xbb, 0xcc, 0xdd, 6)),
      nest(
        18,
        attr(1, cstring("vxlan")),
        nest(
          2,
          attr(1, u32(4096)),
          attr(3, u32(2)),
          attr(17, local6),
          attr(7, bytes(1)),
          attr(15, bytes(0x12, 0xb5)),
          attr(23, Buffer.alloc(0)),
        ),
      ),
    );
    expect(decodeLink(only(vxlan), nameOf)).toEqual({
      index: 9,
      name: "vx6",
      kind: "vxlan",
      mtu: 1430,
      up: true,
      mac: "02:aa:bb:cc:dd:06",
      master: undefined,
      vxlan: { vni: 4096, local: "fd00:18::6", port: 4789, learning: true, gbp: true, underlay: "eth0" },
    } satisfies Link);
    const port = nlmsg(
      16,
      0,
      0,
      0,
      ifinfomsg(12, 0),
      attr(3, cstring("veth1")),
      attr(4, u32(1500)),
      attr(10, u32(7)),
      nest(18, attr(1, cstring("veth"))),
    );
    expect(decodeLink(only(port), nameOf)).toMatchObject({
      name: "veth1",
      kind: "veth",
      up: false,
      mac: undefined,
      master: "cni0",
      vxlan: undefined,
    });
  });

  it("addresses: IFA_LOCAL over a point-to-point peer; IPv6 sends IFA_ADDRESS only", () => {
    const ptp = nlmsg(
      20,
      0,
      0,
      0,
      ifaddrmsg(2, 32, 0, 2),
      attr(1, ip4("10.0.0.2")),
      attr(2, ip4("10.0.0.1")),
    );
    expect(decodeAddress(only(ptp), nameOf)).toEqual({
      family: 4,
      dev: "eth0",
      address: "10.0.0.1",
      prefixLength: 32,
      scope: 0,
    });
    const linkLocal = Buffer.alloc(16);
    linkLocal.writeUInt16BE(0xfe80, 0);
    linkLocal[15] = 1;
    expect(
      decodeAddress(only(nlmsg(20, 0, 0, 0, ifaddrmsg(10, 64, 253, 4), attr(1, linkLocal))), nameOf),
    ).toEqual({
      family: 6,
      dev: "flannel.1",
      address: "fe80::1",
      prefixLength: 64,
      scope: 253,
    });
  });

  it("a multipart dump reply: each part, then DONE", () => {
    const part = (n: number) =>
      nlmsg(
        24,
        NLM_F_MULTI,
        3,
        0,
        rtmsg(2, 24, 254, 151, 0, 1),
        attr(1, ip4(`10.244.${n}.0`)),
        attr(4, u32(4)),
      );
    const reply = Buffer.concat([part(1), part(2), nlmsg(NLMSG_DONE, NLM_F_MULTI, 3, 0, i32(0))]);
    const seen: string[] = [];
    forEachMessage(reply, reply.length, (message) => {
      if (message.type === NLMSG_DONE) seen.push(`done ${parseDone(message).errno}`);
      else seen.push(decodeRoute(message, nameOf)?.dst ?? "?");
    });
    expect(seen).toEqual(["10.244.1.0/24", "10.244.2.0/24", "done 0"]);
  });
});
