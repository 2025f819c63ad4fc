import { describe, it, expect } from "vitest";
import type { BackendConfig, VxlanBackendConfig } from "../../src/config/network-config.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import type { Lease } from "../../src/lease/lease.js";
import { desiredFor, vxlanDeviceName } from "../../src/dataplane/backends.js";
import type { DesiredState, NodeFacts, PeerStatus } from "../../src/dataplane/model.js";

const VXLAN: VxlanBackendConfig = {
  type: "vxlan",
  vni: 1,
  port: 8472,
  mtu: undefined,
  gbp: false,
  learning: false,
  directRouting: false,
};
const DIRECT: VxlanBackendConfig = { ...VXLAN, directRouting: true };
const HOST_GW: BackendConfig = { type: "host-gw" };

const OWN = parseCidr("10.244.1.0/24");
const FACTS: NodeFacts = {
  external: {
    name: "eth0",
    index: 2,
    mtu: 1500,
    ifaceIp: parseIPv4("198.18.0.1"),
    publicIp: parseIPv4("198.18.0.1"),
  },
  connected: [parseCidr("198.18.0.0/24")],
};

const key = (n: number): string => `/coreos.com/network/subnets/10.244.${n}.0-24`;
const mac = (n: number): string => `0a:00:00:00:00:${n.toString(16).padStart(2, "0")}`;

interface PeerSpec {
  type?: string | undefined;
  publicIP?: string;
  /** Raw BackendData JSON; default {"VNI":1,"VtepMAC":mac(n)} for vxlan, none otherwise. */
  data?: string | undefined;
}

/** Peer 10.244.<n>.0/24 at 198.18.0.<n> (vxlan unless told otherwise). */
function peer(n: number, spec: PeerSpec = {}): Lease {
  const type = "type" in spec ? spec.type : "vxlan";
  const data = "data" in spec ? spec.data : type === "vxlan" ? `{"VNI":1,"VtepMAC":"${mac(n)}"}` : undefined;
  return {
    subnet: parseCidr(`10.244.${n}.0/24`),
    attrs: {
      publicIP: parseIPv4(spec.publicIP ?? `198.18.0.${n}`),
      publicIPv6: null,
      backendType: type,
      backendData: data,
      backendV6Data: undefined,
    },
    key: key(n),
    etcdLeaseId: "7",
    createRevision: n,
    modRevision: n,
  };
}

/** The full vxlan object triple for peer n (peer subnet address as gateway/neighbour). */
function vxlanObjects(n: number, publicIP = `198.18.0.${n}`): DesiredState {
  const gw = `10.244.${n}.0`;
  return {
    routes: [{ dst: `${gw}/24`, gateway: gw, dev: "flannel.1", onlink: true }],
    neighbours: [{ dev: "flannel.1", dst: gw, lladdr: mac(n) }],
    fdb: [{ dev: "flannel.1", mac: mac(n), dst: publicIP }],
  };
}

function merge(...parts: DesiredState[]): DesiredState {
  return {
    routes: parts.flatMap((p) => p.routes),
    neighbours: parts.flatMap((p) => p.neighbours),
    fdb: parts.flatMap((p) => p.fdb),
  };
}

const NONE: DesiredState = { routes: [], neighbours: [], fdb: [] };

function hostRoute(n: number, gateway = `198.18.0.${n}`): DesiredState {
  return {
    routes: [{ dst: `10.244.${n}.0/24`, gateway, dev: "eth0", onlink: false }],
    neighbours: [],
    fdb: [],
  };
}

interface Case {
  name: string;
  backend: BackendConfig;
  peers: Lease[];
  desired: DesiredState;
  /** Expected state per peer number; reasons checked with `reasonMatch` when given. */
  states: Record<number, PeerStatus["state"]>;
  reasonMatch?: Record<number, RegExp>;
}

const cases: Case[] = [
  {
    name: "vxlan: neighbour, FDB and onlink route per peer",
    backend: VXLAN,
    peers: [peer(2), peer(3)],
    desired: merge(vxlanObjects(2), vxlanObjects(3)),
    states: { 2: "programmed", 3: "programmed" },
    reasonMatch: { 2: /vxlan via flannel\.1 to 198\.18\.0\.2/ },
  },
  {
    name: "vxlan: peer MAC published in upper case / dashes is normalised",
    backend: VXLAN,
    peers: [peer(2, { data: '{"VNI":1,"VtepMAC":"0A-00-00-00-00-02"}' })],
    desired: vxlanObjects(2),
    states: { 2: "programmed" },
  },
  {
    name: "vxlan: BackendData without VNI (older flannel) is accepted",
    backend: VXLAN,
    peers: [peer(2, { data: `{"VtepMAC":"${mac(2)}"}` })],
    desired: vxlanObjects(2),
    states: { 2: "programmed" },
  },
  {
    name: "vxlan DirectRouting: on-link peer gets a plain route, off-link peer is encapsulated",
    backend: DIRECT,
    peers: [peer(2), peer(9, { publicIP: "198.19.0.9" })],
    desired: merge(hostRoute(2), vxlanObjects(9, "198.19.0.9")),
    states: { 2: "programmed", 9: "programmed" },
    reasonMatch: { 2: /direct route via 198\.18\.0\.2 dev eth0/, 9: /vxlan via flannel\.1/ },
  },
  {
    name: "vxlan: host-gw and typeless peers are backend mismatches",
    backend: VXLAN,
    peers: [peer(2, { type: "host-gw" }), peer(3, { type: undefined }), peer(4)],
    desired: vxlanObjects(4),
    states: { 2: "backend-mismatch", 3: "backend-mismatch", 4: "programmed" },
    reasonMatch: { 2: /uses backend "host-gw", this node uses "vxlan"/, 3: /no BackendType/ },
  },
  {
    name: "vxlan: a peer on another VNI is a mismatch",
    backend: VXLAN,
    peers: [peer(2, { data: `{"VNI":2,"VtepMAC":"${mac(2)}"}` })],
    desired: NONE,
    states: { 2: "backend-mismatch" },
    reasonMatch: { 2: /VNI 2, this node uses VNI 1/ },
  },
  {
    name: "vxlan: bad BackendData is skipped without affecting other peers",
    backend: VXLAN,
    peers: [
      peer(2, { data: undefined }),
      peer(3, { data: '{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}' }),
      peer(4, { data: '"nope"' }),
      peer(5),
    ],
    desired: vxlanObjects(5),
    states: { 2: "backend-mismatch", 3: "backend-mismatch", 4: "backend-mismatch", 5: "programmed" },
    reasonMatch: { 2: /BackendData is missing/, 3: /multicast/, 4: /not a JSON object/ },
  },
  {
    name: "vxlan: device name follows the VNI",
    backend: { ...VXLAN, vni: 7 },
    peers: [peer(2, { data: `{"VNI":7,"VtepMAC":"${mac(2)}"}` })],
    desired: {
      routes: [{ dst: "10.244.2.0/24", gateway: "10.244.2.0", dev: "flannel.7", onlink: true }],
      neighbours: [{ dev: "flannel.7", dst: "10.244.2.0", lladdr: mac(2) }],
      fdb: [{ dev: "flannel.7", mac: mac(2), dst: "198.18.0.2" }],
    },
    states: { 2: "programmed" },
  },
  {
    name: "host-gw: route via the peer's public IP on the external interface",
    backend: HOST_GW,
    peers: [peer(3, { type: "host-gw" }), peer(2, { type: "host-gw" })],
    desired: merge(hostRoute(2), hostRoute(3)),
    states: { 2: "programmed", 3: "programmed" },
  },
  {
    name: "host-gw: a peer off the L2 segment is reported unreachable, not black-holed",
    backend: HOST_GW,
    peers: [peer(9, { type: "host-gw", publicIP: "198.19.0.9" }), peer(2, { type: "host-gw" })],
    desired: hostRoute(2),
    states: { 2: "programmed", 9: "unreachable" },
  },
  {
    name: "host-gw: vxlan peers are backend mismatches",
    backend: HOST_GW,
    peers: [peer(2)],
    desired: NONE,
    states: { 2: "backend-mismatch" },
    reasonMatch: { 2: /uses backend "vxlan", this node uses "host-gw"/ },
  },
  {
    name: "a peer overlapping our own subnet is never programmed",
    backend: VXLAN,
    peers: [peer(1)],
    desired: NONE,
    states: {},
  },
  {
    name: "a peer advertising our own public IP (stale lease of this node) is unreachable",
    backend: HOST_GW,
    peers: [peer(2, { type: "host-gw", publicIP: "198.18.0.1" })],
    desired: NONE,
    states: { 2: "unreachable" },
    reasonMatch: { 2: /own public IP 198\.18\.0\.1/ },
  },
];

describe("desiredFor", () => {
  it.each(cases)("$name", (c) => {
    const result = desiredFor(c.backend, OWN, c.peers, FACTS);
    expect(result.desired).toEqual(c.desired);
    const states = Object.fromEntries(
      [...result.peers].map(([k, s]) => [Number(/10\.244\.(\d+)\./.exec(k)?.[1]), s.state]),
    );
    expect(states).toEqual(c.states);
    for (const [n, pattern] of Object.entries(c.reasonMatch ?? {})) {
      expect(result.peers.get(key(Number(n)))?.reason).toMatch(pattern);
    }
  });

  it("explains an unreachable host-gw peer in full", () => {
    const result = desiredFor(HOST_GW, OWN, [peer(9, { type: "host-gw", publicIP: "198.19.0.9" })], FACTS);
    expect(result.peers.get(key(9))).toEqual({
      state: "unreachable",
      reason:
        "peer 198.19.0.9 is not on-link on eth0 (198.18.0.0/24); host-gw needs peers on the same L2 " +
        "segment — use vxlan (or vxlan DirectRouting)",
    });
  });

  it("sorts output by subnet whatever the input order", () => {
    const peers = [peer(30), peer(4), peer(200), peer(12)];
    const a = desiredFor(VXLAN, OWN, peers, FACTS);
    const b = desiredFor(VXLAN, OWN, [...peers].reverse(), FACTS);
    expect(a).toEqual(b);
    expect(a.desired.routes.map((r) => r.dst)).toEqual([
      "10.244.4.0/24",
      "10.244.12.0/24",
      "10.244.30.0/24",
      "10.244.200.0/24",
    ]);
    expect([...a.peers.keys()]).toEqual([key(4), key(12), key(30), key(200)]);
  });

  it("DirectRouting with no connected networks encapsulates everyone", () => {
    const result = desiredFor(DIRECT, OWN, [peer(2)], { ...FACTS, connected: [] });
    expect(result.desired).toEqual(vxlanObjects(2));
  });

  it("names the vxlan device like flannel", () => {
    expect(vxlanDeviceName(1)).toBe("flannel.1");
    expect(vxlanDeviceName(4096)).toBe("flannel.4096");
  });
});
