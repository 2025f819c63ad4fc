// The peer view with IPv6: dual-stack, IPv4-only and IPv6-only leases under dual-stack, IPv4-only and
// IPv6-only network configs. Each family the config carries is checked on its own (inside its network,
// overlaps, the own subnet of that family); a family the config does not carry is ignored, but a lease
// must share one with it. LivePeerView must equal computeView over any mix of them.
import { describe, expect, it } from "vitest";
import { VxlanPeerData } from "../../src/backends/vxlan/backend-data.js";
import { identityByBackend, parsePeerDataByBackend } from "../../src/backends/registry.js";
import { parseNetworkConfig, type NetworkConfig } from "../../src/config/network-config.js";
import { formatCidr, parseCidr } from "../../src/ip/ipv4.js";
import { formatCidr6, parseCidr6 } from "../../src/ip/ipv6.js";
import { leaseName } from "../../src/lease/key.js";
import {
  computeView,
  diffViews,
  LivePeerView,
  ParseCache,
  type EntryChange,
  type InvalidEntry,
  type PeerEvent,
  type PeerView,
  type RawEntry,
  type ViewContext,
} from "../../src/lease/peer-view.js";

const PREFIX = "/coreos.com/network";
const K = (tail: string): string => `${PREFIX}/subnets/${tail}`;

const DUAL: NetworkConfig = parseNetworkConfig(
  '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}',
).config;
const V6_ONLY: NetworkConfig = parseNetworkConfig(
  '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}',
).config;
const V4_ONLY: NetworkConfig = parseNetworkConfig(
  '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}',
).config;

/** A dual-stack node at 10.244.1.0/24 + fd00:10:244:1::/64, wired as the agent wires its view. */
const DUAL_CTX: ViewContext = {
  prefix: PREFIX,
  config: DUAL,
  ownKey: K("10.244.1.0-24&fd00:10:244:1::-64"),
  ownSubnet: parseCidr("10.244.1.0/24"),
  ownIpv6Subnet: parseCidr6("fd00:10:244:1::/64"),
  parsePeerData: parsePeerDataByBackend,
};
/** An IPv6-only node: flannel's empty 0.0.0.0/0 beside fd00:10:244:1::/64. */
const V6_CTX: ViewContext = {
  prefix: PREFIX,
  config: V6_ONLY,
  ownKey: K("0.0.0.0-0&fd00:10:244:1::-64"),
  ownSubnet: parseCidr("0.0.0.0/0"),
  ownIpv6Subnet: parseCidr6("fd00:10:244:1::/64"),
  parsePeerData: parsePeerDataByBackend,
};
const V4_CTX: ViewContext = {
  prefix: PREFIX,
  config: V4_ONLY,
  ownKey: K("10.244.1.0-24"),
  ownSubnet: parseCidr("10.244.1.0/24"),
  parsePeerData: parsePeerDataByBackend,
};

const mac = (n: number): string => `02:00:00:00:00:${n.toString(16).padStart(2, "0")}`;

/** A dual-stack flanneld's vxlan value: both VTEPs. */
function dualValue(publicIP: string, publicIPv6: string | null, mac4 = mac(1), mac6 = mac(0x81)): string {
  const v6 = publicIPv6 === null ? "null" : `"${publicIPv6}"`;
  return (
    `{"PublicIP":"${publicIP}","PublicIPv6":${v6},"BackendType":"vxlan",` +
    `"BackendData":{"VNI":1,"VtepMAC":"${mac4}"},"BackendV6Data":{"VNI":1,"VtepMAC":"${mac6}"}}`
  );
}

/** An IPv6-only flanneld's vxlan value: PublicIP 0.0.0.0, BackendV6Data only. */
function v6OnlyValue(publicIPv6: string | null, mac6 = mac(0x82)): string {
  const v6 = publicIPv6 === null ? "null" : `"${publicIPv6}"`;
  return `{"PublicIP":"0.0.0.0","PublicIPv6":${v6},"BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"${mac6}"}}`;
}

/** An IPv4-only flanneld's vxlan value. */
function v4Value(publicIP: string, mac4 = mac(1)): string {
  return `{"PublicIP":"${publicIP}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac4}"}}`;
}

let revision = 100;
function entry(key: string, value: string, over: Partial<RawEntry> = {}): RawEntry {
  revision++;
  return { key, value, etcdLeaseId: "42", createRevision: revision, modRevision: revision, ...over };
}

/** Dual-stack peer n: 10.244.n.0/24 + fd00:10:244:n::/64 at 198.18.0.n and 2001:db8:18::n. */
function dualPeer(n: number, over: Partial<RawEntry> = {}): RawEntry {
  const h = n.toString(16);
  return entry(
    K(`10.244.${n}.0-24&fd00:10:244:${h}::-64`),
    dualValue(`198.18.0.${n}`, `2001:db8:18::${h}`, mac(n), mac(0x80 + n)),
    over,
  );
}

/** IPv6-only peer n: 0.0.0.0/0 + fd00:10:244:n::/64 at 2001:db8:18::n. */
function v6Peer(n: number, over: Partial<RawEntry> = {}): RawEntry {
  const h = n.toString(16);
  return entry(K(`0.0.0.0-0&fd00:10:244:${h}::-64`), v6OnlyValue(`2001:db8:18::${h}`, mac(0x80 + n)), over);
}

function v4Peer(n: number, over: Partial<RawEntry> = {}): RawEntry {
  return entry(K(`10.244.${n}.0-24`), v4Value(`198.18.0.${n}`, mac(n)), over);
}

const peerKeys = (view: PeerView): string[] => [...view.peers.keys()].sort();
const eventSummary = (events: readonly PeerEvent[]): string[] =>
  events.map((e) => `${e.type} ${leaseName(e.lease)}`);

describe("computeView: a dual-stack node", () => {
  it("takes dual-stack, IPv4-only and IPv6-only peers, with both subnets and both VTEPs parsed once", () => {
    const dual = dualPeer(2);
    const v4 = v4Peer(3);
    const v6 = v6Peer(4);
    const own = entry(DUAL_CTX.ownKey ?? "", dualValue("198.18.0.1", "2001:db8:18::1"));
    const view = computeView([dual, v4, v6, own], DUAL_CTX);
    expect(peerKeys(view)).toEqual([v6.key, dual.key, v4.key].sort());
    expect(view.invalid.size).toBe(0);

    const lease = view.peers.get(dual.key);
    expect(lease && formatCidr(lease.subnet)).toBe("10.244.2.0/24");
    expect(lease?.ipv6Subnet && formatCidr6(lease.ipv6Subnet)).toBe("fd00:10:244:2::/64");
    expect(lease?.attrs.publicIPv6).toBe("2001:db8:18::2");
    expect(lease?.peerData).toEqual(new VxlanPeerData(1, mac(2), { vni: 1, vtepMac: mac(0x82) }));

    const only6 = view.peers.get(v6.key);
    expect(only6 && formatCidr(only6.subnet)).toBe("0.0.0.0/0");
    expect(only6?.attrs.publicIP).toBe(0);
    expect(only6?.peerData).toBeInstanceOf(VxlanPeerData);
    expect((only6?.peerData as VxlanPeerData).v4).toBeUndefined();
    expect((only6?.peerData as VxlanPeerData).v6).toEqual({ vni: 1, vtepMac: mac(0x84) });

    expect(view.peers.get(v4.key)?.ipv6Subnet).toBeUndefined();
  });

  it("takes a dual-stack peer without BackendV6Data (the backend names what is missing), and host-gw peers", () => {
    const noV6Data = entry(
      K("10.244.5.0-24&fd00:10:244:5::-64"),
      `{"PublicIP":"198.18.0.5","PublicIPv6":"2001:db8:18::5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac(5)}"}}`,
    );
    const hostGw = entry(
      K("10.244.6.0-24&fd00:10:244:6::-64"),
      '{"PublicIP":"198.18.0.6","PublicIPv6":"2001:db8:18::6","BackendType":"host-gw"}',
    );
    const hostGw6 = entry(
      K("0.0.0.0-0&fd00:10:244:7::-64"),
      '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:18::7","BackendType":"host-gw"}',
    );
    const view = computeView([noV6Data, hostGw, hostGw6], DUAL_CTX);
    expect(peerKeys(view)).toEqual([hostGw6.key, noV6Data.key, hostGw.key].sort());
    expect((view.peers.get(noV6Data.key)?.peerData as VxlanPeerData).v6).toBeUndefined();
  });

  it.each<[string, RawEntry, string]>([
    [
      "IPv6 subnet outside the IPv6Network, naming it",
      entry(K("10.244.5.0-24&fd00:10:245:5::-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      "IPv6 subnet fd00:10:245:5::/64 is outside the IPv6Network fd00:10:244::/56",
    ],
    [
      "IPv6 subnet larger than the IPv6Network",
      entry(K("10.244.5.0-24&fd00:10::-48"), dualValue("198.18.0.5", "2001:db8:18::5")),
      "IPv6 subnet fd00:10::/48 is outside the IPv6Network fd00:10:244::/56",
    ],
    [
      "IPv6-only lease outside the IPv6Network",
      entry(K("0.0.0.0-0&2001:db8:1::-64"), v6OnlyValue("2001:db8:18::5")),
      "IPv6 subnet 2001:db8:1::/64 is outside the IPv6Network fd00:10:244::/56",
    ],
    [
      "IPv4 subnet outside the Network, though the IPv6 one is fine",
      entry(K("10.9.5.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      "subnet 10.9.5.0/24 is outside the network 10.244.0.0/16",
    ],
    [
      "PublicIPv6 missing on a dual-stack lease",
      entry(K("10.244.5.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", null)),
      "PublicIPv6 is missing, but the lease has an IPv6 subnet",
    ],
    [
      "PublicIPv6 missing on an IPv6-only lease",
      entry(K("0.0.0.0-0&fd00:10:244:5::-64"), v6OnlyValue(null)),
      "PublicIPv6 is missing, but the lease has an IPv6 subnet",
    ],
    [
      "link-local PublicIPv6",
      entry(K("10.244.5.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", "fe80::5")),
      "PublicIPv6 fe80::5 is a link-local address (fe80::/10)",
    ],
    [
      "IPv4-mapped PublicIPv6",
      entry(K("0.0.0.0-0&fd00:10:244:5::-64"), v6OnlyValue("::ffff:198.18.0.5")),
      "PublicIPv6 ::ffff:198.18.0.5 is an IPv4-mapped address",
    ],
    [
      "PublicIPv6 that is not an address",
      entry(
        K("10.244.5.0-24&fd00:10:244:5::-64"),
        '{"PublicIP":"198.18.0.5","PublicIPv6":"nope","BackendType":"vxlan"}',
      ),
      'bad value: PublicIPv6 "nope" is not an IPv6 address',
    ],
    [
      "the own IPv6 subnet under another IPv4 subnet",
      entry(K("10.244.5.0-24&fd00:10:244:1::-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      "overlaps this node's own IPv6 subnet fd00:10:244:1::/64",
    ],
    [
      "an IPv6-only lease inside the own IPv6 subnet",
      entry(K("0.0.0.0-0&fd00:10:244:1:8000::-65"), v6OnlyValue("2001:db8:18::5")),
      "overlaps this node's own IPv6 subnet fd00:10:244:1::/64",
    ],
    [
      "an IPv6-only lease containing the own IPv6 subnet",
      entry(K("0.0.0.0-0&fd00:10:244::-60"), v6OnlyValue("2001:db8:18::5")),
      "overlaps this node's own IPv6 subnet fd00:10:244:1::/64",
    ],
    [
      "the own IPv4 subnet under another IPv6 subnet",
      entry(K("10.244.1.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      "overlaps this node's own subnet 10.244.1.0/24",
    ],
    [
      "a bad BackendV6Data VtepMAC, naming the field",
      entry(
        K("10.244.5.0-24&fd00:10:244:5::-64"),
        dualValue("198.18.0.5", "2001:db8:18::5", mac(5), "01:00:5e:00:00:01"),
      ),
      'bad vxlan BackendData: BackendV6Data.VtepMAC "01:00:5e:00:00:01" is a multicast/broadcast address',
    ],
    [
      "an IPv6-only vxlan lease without any VTEP",
      entry(
        K("0.0.0.0-0&fd00:10:244:5::-64"),
        '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:18::5","BackendType":"vxlan"}',
      ),
      "bad vxlan BackendData:",
    ],
    [
      "a dual-stack lease whose PublicIP is 0.0.0.0",
      entry(K("10.244.5.0-24&fd00:10:244:5::-64"), dualValue("0.0.0.0", "2001:db8:18::5")),
      "PublicIP 0.0.0.0 is the unspecified address",
    ],
    [
      "an IPv6 key with host bits",
      entry(K("10.244.5.0-24&fd00:10:244:5::1-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      "fd00:10:244:5::1 has host bits set for /64",
    ],
  ])("invalid: %s", (_name, bad, reason) => {
    const good = dualPeer(2);
    const view = computeView([good, bad], DUAL_CTX);
    expect(peerKeys(view)).toEqual([good.key]);
    expect([...view.invalid.keys()]).toEqual([bad.key]);
    expect(view.invalid.get(bad.key)?.reason).toContain(reason);
    expect(view.invalid.get(bad.key)?.modRevision).toBe(bad.modRevision);
  });

  it("an IPv6-only vxlan lease without any VTEP is set aside", () => {
    // parseVxlanPeerData is not told the lease is IPv6-only, so it asks for BackendData.
    const bad = entry(
      K("0.0.0.0-0&fd00:10:244:5::-64"),
      '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:18::5","BackendType":"vxlan"}',
    );
    expect(computeView([bad], DUAL_CTX).invalid.get(bad.key)?.reason).toContain("vxlan needs VtepMAC");
  });
});

describe("computeView: overlaps per family, the older lease wins", () => {
  it.each<[string, [string, string], [string, string], string]>([
    [
      "two dual-stack leases with one IPv6 subnet",
      ["10.244.5.0-24&fd00:10:244:5::-64", dualValue("198.18.0.5", "2001:db8:18::5")],
      ["10.244.6.0-24&fd00:10:244:5::-64", dualValue("198.18.0.6", "2001:db8:18::6")],
      "subnet 10.244.6.0/24+fd00:10:244:5::/64 overlaps 10.244.5.0/24+fd00:10:244:5::/64",
    ],
    [
      "a dual-stack and an IPv6-only lease with one IPv6 subnet",
      ["10.244.5.0-24&fd00:10:244:5::-64", dualValue("198.18.0.5", "2001:db8:18::5")],
      ["0.0.0.0-0&fd00:10:244:5::-64", v6OnlyValue("2001:db8:18::6")],
      "subnet fd00:10:244:5::/64 overlaps 10.244.5.0/24+fd00:10:244:5::/64",
    ],
    [
      "an IPv6-only lease and a dual-stack one inside it",
      ["0.0.0.0-0&fd00:10:244:4::-62", v6OnlyValue("2001:db8:18::4")],
      ["10.244.6.0-24&fd00:10:244:5::-64", dualValue("198.18.0.6", "2001:db8:18::6")],
      "subnet 10.244.6.0/24+fd00:10:244:5::/64 overlaps fd00:10:244:4::/62",
    ],
    [
      "two IPv6-only leases, the newer containing the older",
      ["0.0.0.0-0&fd00:10:244:5::-64", v6OnlyValue("2001:db8:18::5")],
      ["0.0.0.0-0&fd00:10:244:4::-62", v6OnlyValue("2001:db8:18::4")],
      "subnet fd00:10:244:4::/62 overlaps fd00:10:244:5::/64",
    ],
    [
      "one IPv6 subnet under two spellings of the key",
      ["0.0.0.0-0&fd00:10:244:5::-64", v6OnlyValue("2001:db8:18::5")],
      ["0.0.0.0-0&fd00:10:244:5:0:0::-64", v6OnlyValue("2001:db8:18::6")],
      "subnet fd00:10:244:5::/64 overlaps fd00:10:244:5::/64",
    ],
    [
      "a dual-stack lease overlapping an IPv4-only one in IPv4 only",
      ["10.244.5.0-24", v4Value("198.18.0.5")],
      ["10.244.5.0-24&fd00:10:244:5::-64", dualValue("198.18.0.6", "2001:db8:18::6")],
      "subnet 10.244.5.0/24+fd00:10:244:5::/64 overlaps 10.244.5.0/24",
    ],
  ])("%s", (_name, [olderTail, olderValue], [newerTail, newerValue], reason) => {
    const older = entry(K(olderTail), olderValue, { createRevision: 7 });
    const newer = entry(K(newerTail), newerValue, { createRevision: 9 });
    // Whatever order they come in.
    for (const entries of [
      [older, newer],
      [newer, older],
    ]) {
      const view = computeView(entries, DUAL_CTX);
      expect(peerKeys(view)).toEqual([older.key]);
      expect(view.invalid.get(newer.key)?.reason).toBe(
        `${reason} of older key ${older.key} (createRevision 7 < 9)`,
      );
    }
  });

  it("IPv6-only leases never overlap each other through their empty 0.0.0.0/0", () => {
    const view = computeView([v6Peer(2), v6Peer(3), v6Peer(4), dualPeer(5), v4Peer(6)], DUAL_CTX);
    expect(view.peers.size).toBe(5);
    expect(view.invalid.size).toBe(0);
  });

  it("the same numbers in the two families are no overlap", () => {
    // 10.244.5.0/24 is 0x0af40500/24 and ::af4:500/120 is 0x0af40500/120: no address in common.
    const view = computeView(
      [
        entry(K("10.244.5.0-24"), v4Value("198.18.0.5")),
        entry(K("0.0.0.0-0&::af4:500-120"), v6OnlyValue("2001:db8:18::6")),
        entry(K("0.0.0.0-0&::af4:400-120"), v6OnlyValue("2001:db8:18::7")),
        entry(K("10.244.4.0-24"), v4Value("198.18.0.4")),
      ],
      { ...DUAL_CTX, config: { ...DUAL, ipv6: { ...(DUAL.ipv6 ?? fail()), network: parseCidr6("::/0") } } },
    );
    expect(view.invalid).toEqual(new Map());
    expect(view.peers.size).toBe(4);
  });

  it("an overlap loser never hides a third lease it overlaps", () => {
    const a = entry(K("0.0.0.0-0&fd00:10:244:4::-64"), v6OnlyValue("2001:db8:18::4"), { createRevision: 5 });
    const b = entry(K("0.0.0.0-0&fd00:10:244:4::-62"), v6OnlyValue("2001:db8:18::5"), { createRevision: 6 });
    const c = entry(K("10.244.7.0-24&fd00:10:244:6::-64"), dualValue("198.18.0.7", "2001:db8:18::7"), {
      createRevision: 7,
    });
    const view = computeView([c, b, a], DUAL_CTX);
    expect(peerKeys(view)).toEqual([a.key, c.key].sort());
    expect(view.invalid.get(b.key)?.reason).toContain(`of older key ${a.key}`);
  });
});

function fail(): never {
  throw new Error("fixture");
}

describe("computeView: families the config does not carry", () => {
  it.each<[string, ViewContext, RawEntry, string | undefined]>([
    [
      "IPv4-only network: a dual-stack lease is an IPv4 peer, its PublicIPv6 unchecked",
      V4_CTX,
      entry(K("10.244.5.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", null)),
      undefined,
    ],
    [
      "IPv4-only network: a dual-stack lease's IPv6 subnet may lie anywhere",
      V4_CTX,
      entry(K("10.244.5.0-24&2001:db8:99::-64"), dualValue("198.18.0.5", "fe80::1")),
      undefined,
    ],
    [
      "IPv4-only network: an IPv6-only lease is invalid",
      V4_CTX,
      v6Peer(5),
      "the lease has only an IPv6 subnet, and this network carries IPv4 only",
    ],
    [
      "IPv4-only network: a dual-stack lease on this node's IPv6 subnet is no overlap",
      { ...V4_CTX, ownIpv6Subnet: undefined },
      entry(K("10.244.5.0-24&fd00:10:244:1::-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      undefined,
    ],
    ["IPv6-only network: an IPv6-only lease is a peer", V6_CTX, v6Peer(5), undefined],
    [
      "IPv6-only network: a dual-stack lease is an IPv6 peer, its IPv4 subnet unchecked",
      V6_CTX,
      entry(K("10.9.5.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      undefined,
    ],
    [
      "IPv6-only network: a dual-stack lease's unusable PublicIP does not matter",
      V6_CTX,
      entry(K("10.244.5.0-24&fd00:10:244:5::-64"), dualValue("127.0.0.1", "2001:db8:18::5")),
      undefined,
    ],
    [
      "IPv6-only network: an IPv4-only lease is invalid",
      V6_CTX,
      v4Peer(5),
      "the lease has only an IPv4 subnet, and this network carries IPv6 only",
    ],
    [
      "IPv6-only network: PublicIPv6 missing on a dual-stack lease",
      V6_CTX,
      entry(K("10.244.5.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", null)),
      "PublicIPv6 is missing, but the lease has an IPv6 subnet",
    ],
    [
      "IPv6-only network: the own IPv6 subnet under another spelling of the own key",
      V6_CTX,
      entry(K("0.0.0.0-0&fd00:10:244:1:0::-64"), v6OnlyValue("2001:db8:18::5"), { createRevision: 1 }),
      "overlaps this node's own IPv6 subnet fd00:10:244:1::/64",
    ],
    [
      "IPv6-only network: the own empty 0.0.0.0/0 overlaps no dual-stack lease",
      V6_CTX,
      entry(K("10.244.1.0-24&fd00:10:244:5::-64"), dualValue("198.18.0.5", "2001:db8:18::5")),
      undefined,
    ],
    [
      "IPv6-only network: outside the IPv6Network",
      V6_CTX,
      entry(K("0.0.0.0-0&fd00:10:245:5::-64"), v6OnlyValue("2001:db8:18::5")),
      "IPv6 subnet fd00:10:245:5::/64 is outside the IPv6Network fd00:10:244::/56",
    ],
  ])("%s", (_name, ctx, candidate, reason) => {
    const view = computeView([candidate], ctx);
    if (reason === undefined) {
      expect(view.invalid.get(candidate.key)?.reason).toBeUndefined();
      expect(peerKeys(view)).toEqual([candidate.key]);
    } else {
      expect(view.peers.size).toBe(0);
      expect(view.invalid.get(candidate.key)?.reason).toContain(reason);
    }
  });
});

describe("peer data of a family the config does not carry", () => {
  it("IPv6-only network: a dual-stack lease with a bad BackendData is an IPv6 peer", () => {
    const lease = entry(
      K("10.244.5.0-24&fd00:10:244:5::-64"),
      dualValue("198.18.0.5", "2001:db8:18::5", "01:00:5e:00:00:01", mac(0x85)),
    );
    const view = computeView([lease], V6_CTX);
    expect(peerKeys(view)).toEqual([lease.key]);
  });

  it("BUG: IPv4-only network: a dual-stack lease with a bad BackendV6Data is an IPv4 peer (flanneld never reads it there)", () => {
    const lease = entry(
      K("10.244.5.0-24&fd00:10:244:5::-64"),
      dualValue("198.18.0.5", "2001:db8:18::5", mac(5), "01:00:5e:00:00:01"),
    );
    const view = computeView([lease], V4_CTX);
    expect(view.invalid.get(lease.key)?.reason).toBeUndefined();
    expect(peerKeys(view)).toEqual([lease.key]);
  });
});

describe("diffViews with IPv6 attributes", () => {
  it.each<[string, string, string[]]>([
    ["a new PublicIPv6 is a change", dualValue("198.18.0.5", "2001:db8:18::55"), ["changed"]],
    [
      "a new BackendV6Data is a change",
      dualValue("198.18.0.5", "2001:db8:18::5", mac(5), mac(0x99)),
      ["changed"],
    ],
    ["the same value again (a renewal) is no event", dualValue("198.18.0.5", "2001:db8:18::5"), []],
  ])("%s", (_name, value, types) => {
    const key = K("10.244.5.0-24&fd00:10:244:5::-64");
    const before = computeView([entry(key, dualValue("198.18.0.5", "2001:db8:18::5"))], DUAL_CTX);
    const after = computeView([entry(key, value, { createRevision: 1 })], DUAL_CTX);
    expect(diffViews(before, after).map((e) => e.type)).toEqual(types);
  });
});

describe("LivePeerView with IPv6", () => {
  it("an IPv6-only and a dual-stack peer come and go on the fast path once the index knows /64s", () => {
    const live = new LivePeerView(DUAL_CTX);
    live.replaceAll([dualPeer(2), v6Peer(3), v4Peer(4)]);
    const added = live.apply([{ type: "put", entry: v6Peer(5) }]);
    expect(added.path).toBe("incremental");
    expect(eventSummary(added.events)).toEqual(["added fd00:10:244:5::/64"]);
    const dual = live.apply([{ type: "put", entry: dualPeer(6) }]);
    expect(dual.path).toBe("incremental");
    expect(eventSummary(dual.events)).toEqual(["added 10.244.6.0/24+fd00:10:244:6::/64"]);
    const gone = live.apply([{ type: "delete", key: v6Peer(3).key }]);
    expect(gone.path).toBe("incremental");
    expect(eventSummary(gone.events)).toEqual(["removed fd00:10:244:3::/64"]);
  });

  it("an IPv6 overlap is resolved in full; the newer peer appears when the older goes", () => {
    const live = new LivePeerView(DUAL_CTX);
    const older = entry(K("0.0.0.0-0&fd00:10:244:4::-62"), v6OnlyValue("2001:db8:18::4"));
    live.replaceAll([older, dualPeer(9)]);
    const inside = dualPeer(5);
    const update = live.apply([{ type: "put", entry: inside }]);
    expect(update.path).toBe("full");
    expect(update.events).toEqual([]);
    expect(update.newlyInvalid.map((e) => e.key)).toEqual([inside.key]);
    const freed = live.apply([{ type: "delete", key: older.key }]);
    expect(freed.path).toBe("full");
    // Sorted by key: …/0.0.0.0-0&… before …/10.244.5.0-24&….
    expect(eventSummary(freed.events)).toEqual([
      "removed fd00:10:244:4::/62",
      "added 10.244.5.0/24+fd00:10:244:5::/64",
    ]);
  });

  it("a new own IPv6 subnet (setContext) sets aside the peer that holds it", () => {
    const live = new LivePeerView(DUAL_CTX);
    live.replaceAll([dualPeer(2), v6Peer(3)]);
    const update = live.setContext({ ...DUAL_CTX, ownIpv6Subnet: parseCidr6("fd00:10:244:3::/64") });
    expect(eventSummary(update.events)).toEqual(["removed fd00:10:244:3::/64"]);
    expect(live.view.invalid.get(v6Peer(3).key)?.reason).toContain(
      "overlaps this node's own IPv6 subnet fd00:10:244:3::/64",
    );
  });

  it("equals computeView and diffViews after every batch, for random mixes of families (seeded)", () => {
    const tails = [
      ...Array.from({ length: 12 }, (_, i) => `10.244.${10 + i}.0-24`), // IPv4-only
      ...Array.from(
        { length: 12 },
        (_, i) => `10.244.${30 + i}.0-24&fd00:10:244:${(0x30 + i).toString(16)}::-64`,
      ),
      ...Array.from({ length: 12 }, (_, i) => `0.0.0.0-0&fd00:10:244:${(0x50 + i).toString(16)}::-64`),
      "10.244.10.0-24&fd00:10:244:50::-64", // the IPv4 of one lease and the IPv6 of another
      "0.0.0.0-0&fd00:10:244:30::-64", // the IPv6 of a dual-stack lease
      "0.0.0.0-0&fd00:10:244:50:0::-64", // an IPv6 subnet under a second spelling
      "0.0.0.0-0&fd00:10:244:30::-63", // containing a dual-stack lease's IPv6
      "0.0.0.0-0&fd00:10:244:52:8000::-65", // inside an IPv6-only lease
      "10.244.12.0-23&fd00:10:244:70::-64", // containing an IPv4-only lease
      "10.244.70.0-24&fd00:10:244:1::-64", // the own IPv6 subnet
      "0.0.0.0-0&fd00:10:244:1::-64", // the IPv6-only own key
      "10.244.1.0-24&fd00:10:244:1::-64", // the dual-stack own key
      "10.244.1.0-24", // the IPv4-only own key
      "0.0.0.0-0&fd00:10:245::-64", // outside the IPv6Network
      "10.244.71.0-24&fd00:10:245:1::-64",
      "10.9.0.0-24&fd00:10:244:72::-64", // outside the Network
      "10.244.5.1-24&fd00::-64",
      "10.244.5.0-24&fd00:10:244:5::1-64",
      "garbage",
    ];
    const values = [
      dualValue("198.18.0.2", "2001:db8:18::2", mac(2), mac(0x82)),
      dualValue("198.18.0.3", "2001:db8:18::3", mac(3), mac(0x83)),
      v6OnlyValue("2001:db8:18::4", mac(0x84)),
      v6OnlyValue("2001:db8:18::5", mac(0x85)),
      v4Value("198.18.0.6", mac(6)),
      '{"PublicIP":"198.18.0.9","PublicIPv6":"2001:db8:18::9","BackendType":"host-gw"}',
      '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:18::a","BackendType":"host-gw"}',
      dualValue("198.18.0.7", "fe80::7"),
      dualValue("198.18.0.8", null),
      dualValue("198.18.0.9", "2001:db8:18::9", mac(9), "01:00:5e:00:00:01"),
      v6OnlyValue(null),
      v6OnlyValue("2001:db8:18::b", mac(2)), // the IPv4 VTEP MAC of the first value
      "{not json",
    ];
    const contexts: ViewContext[] = [
      DUAL_CTX,
      V6_CTX,
      V4_CTX,
      { ...DUAL_CTX, ownKey: undefined, ownSubnet: undefined, ownIpv6Subnet: undefined },
      {
        ...DUAL_CTX,
        identityOf: identityByBackend,
        ownIdentity: `VTEP MAC ${mac(3)}`,
        ownCreateRevision: 30,
      },
      {
        ...V6_CTX,
        identityOf: identityByBackend,
        ownIdentity: `VTEP MAC ${mac(0x85)}`,
        ownCreateRevision: 30,
      },
    ];
    const byKey = <T extends { key: string }>(items: Iterable<T>): T[] =>
      [...items].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    let incremental = 0;
    let batches = 0;
    /** What the runs went through, so the comparison is known to cover every family mix. */
    const seen = new Set<string>();
    for (let seed = 1; seed <= 120; seed++) {
      const random = seeded(seed);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
      let revision = 1;
      let ctx = contexts[seed % contexts.length] ?? DUAL_CTX;
      const entries = new Map<string, RawEntry>();
      const live = new LivePeerView(ctx);
      const referenceCache = new ParseCache();
      let reference: PeerView = computeView([], ctx, referenceCache);
      live.replaceAll([]);
      const put = (key: string): EntryChange => {
        const mod = ++revision;
        const existing = entries.get(key);
        return {
          type: "put",
          entry: {
            key,
            value: pick(values),
            etcdLeaseId: String(1000 + mod),
            createRevision: existing?.createRevision ?? mod,
            modRevision: mod,
          },
        };
      };
      for (let step = 0; step < 60; step++) {
        const roll = random();
        let update;
        let familiesChanged = false;
        if (roll < 0.04) {
          const before = ctx;
          ctx = pick(contexts);
          familiesChanged =
            before.config.enableIPv4 !== ctx.config.enableIPv4 ||
            (before.config.ipv6 === undefined) !== (ctx.config.ipv6 === undefined);
          update = live.setContext(ctx);
        } else if (roll < 0.07) {
          for (const key of [...entries.keys()]) if (random() < 0.2) entries.delete(key);
          update = live.replaceAll(entries.values());
        } else {
          const changes: EntryChange[] = [];
          const size = 1 + Math.floor(random() * 4);
          for (let i = 0; i < size; i++) {
            const existing = [...entries.keys()];
            const change: EntryChange =
              existing.length > 0 && random() < 0.25
                ? { type: "delete", key: pick(existing) }
                : put(K(pick(tails)));
            if (change.type === "put") entries.set(change.entry.key, change.entry);
            else entries.delete(change.key);
            changes.push(change);
          }
          update = live.apply(changes);
          batches++;
          if (update.path === "incremental") incremental++;
        }
        const next = computeView(entries.values(), ctx, referenceCache);
        const where = `seed ${seed}, step ${step}`;
        // A context with other families also reports every remaining peer as changed: its data was
        // parsed anew for them.
        const expected = diffViews(reference, next);
        if (familiesChanged) {
          const reported = new Set(expected.map((event) => event.lease.key));
          for (const [key, lease] of next.peers) {
            const previous = reference.peers.get(key);
            if (previous !== undefined && !reported.has(key))
              expected.push({ type: "changed", lease, previous });
          }
          expected.sort((a, b) => (a.lease.key < b.lease.key ? -1 : a.lease.key > b.lease.key ? 1 : 0));
        }
        expect(update.events, where).toEqual(expected);
        const expectedInvalid: InvalidEntry[] = [...next.invalid.values()].filter(
          (e) => reference.invalid.get(e.key)?.modRevision !== e.modRevision,
        );
        expect(byKey(update.newlyInvalid), where).toEqual(byKey(expectedInvalid));
        expect(byKey(live.view.peers.values()), where).toEqual(byKey(next.peers.values()));
        expect(byKey(live.view.invalid.values()), where).toEqual(byKey(next.invalid.values()));
        reference = next;
        for (const lease of next.peers.values()) {
          const kind =
            lease.ipv6Subnet === undefined ? "ipv4" : lease.subnet.prefixLen === 0 ? "ipv6" : "dual";
          seen.add(`${update.path} ${kind} peer`);
        }
        for (const invalid of next.invalid.values()) {
          if (/overlaps .*fd00:10:244:[0-9a-f:]+\/6\d of older key/.test(invalid.reason))
            seen.add("IPv6 overlap");
          if (invalid.reason.includes("own IPv6 subnet")) seen.add("own IPv6 overlap");
          if (invalid.reason.includes("outside the IPv6Network")) seen.add("outside IPv6Network");
          if (invalid.reason.includes("carries IPv")) seen.add("no shared family");
          if (invalid.reason.startsWith("PublicIPv6")) seen.add("bad PublicIPv6");
          if (invalid.identityConflict === true) seen.add("identity");
        }
      }
    }
    expect([...seen].sort()).toEqual([
      "IPv6 overlap",
      "bad PublicIPv6",
      "full dual peer",
      "full ipv4 peer",
      "full ipv6 peer",
      "identity",
      "incremental dual peer",
      "incremental ipv4 peer",
      "incremental ipv6 peer",
      "no shared family",
      "outside IPv6Network",
      "own IPv6 overlap",
    ]);
    // Both paths ran, and the fast one often.
    expect(incremental).toBeGreaterThan(batches / 3);
    expect(incremental).toBeLessThan(batches);
  });
});

/** mulberry32: a small seeded PRNG, so a failing sequence can be replayed from its seed. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("LivePeerView: a context with other families", () => {
  it("turning IPv6 on reports every remaining peer as changed: its BackendV6Data now counts", () => {
    const live = new LivePeerView(V4_CTX);
    const a = dualPeer(5);
    const b = v4Peer(6);
    live.replaceAll([a, b]);
    const before = live.view.peers.get(a.key)?.peerData;
    expect(before).toBeInstanceOf(VxlanPeerData);
    expect((before as VxlanPeerData).v6).toBeUndefined();
    const update = live.setContext(DUAL_CTX);
    expect(update.events.map((e) => `${e.type} ${e.lease.key}`)).toEqual([
      `changed ${a.key}`,
      `changed ${b.key}`,
    ]);
    const after = live.view.peers.get(a.key)?.peerData;
    expect((after as VxlanPeerData).v6?.vtepMac).toMatch(/^02:00:00:00:00:[0-9a-f]{2}$/);
  });

  it("a context with the same families reports no change for unchanged peers", () => {
    const live = new LivePeerView(DUAL_CTX);
    live.replaceAll([dualPeer(5)]);
    expect(live.setContext({ ...DUAL_CTX, ownKey: K("10.244.9.0-24&fd00:10:244:9::-64") }).events).toEqual(
      [],
    );
  });
});
