// The wireguard backend on the backend seam: flannel's BackendData bytes and how a peer's is read, the
// choice between the kernel's WireGuard and wireguard-go, and a node prepared in a temp state dir
// (prepare only reads and writes the key file: nothing is started) with its devices, route and peers.
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { NodeBackend, NodeFacts } from "../../src/backends/backend.js";
import { FLANNEL_KEY_FILE, KEY_FILE_VARIABLE } from "../../src/backends/wireguard/key-file.js";
import { encodeKey, generatePrivateKey, publicKeyOf } from "../../src/backends/wireguard/keys.js";
import {
  chooseImplementation,
  parseWireGuardBackendData,
  parseWireGuardPeerData,
  WIREGUARD_DEVICE,
  wireguardBackend,
  wireGuardBackendData,
  WireGuardPeerData,
} from "../../src/backends/wireguard/index.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import { ownedRoute, type Link } from "../../src/dataplane/objects.js";
import { parsePrefix } from "../../src/ip/address.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import type { WireGuardTunnelsStatus } from "../../src/backends/wireguard/tunnels.js";
import { LeaseDecodeError } from "../../src/lease/attrs.js";
import type { Lease } from "../../src/lease/lease.js";
import { peerLease } from "../helpers/leases.js";

const KEY = "mNb7OIIXTdgW4khM7OFlzJ+UPs7lmcWHV7xjPgakMkQ=";
/** Peer n's public key: a real one, from a private key of n repeated. */
const peerKey = (n: number): string =>
  encodeKey(publicKeyOf(generatePrivateKey((len) => Buffer.alloc(len, n))));

/** What `f` throws (fails the test when it throws nothing). */
function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  throw new Error("nothing thrown");
}

describe("wireGuardBackendData", () => {
  it("is Go's encoding of flannel's struct, byte for byte", () => {
    expect(wireGuardBackendData(KEY, 51820)).toBe(`{"PublicKey":"${KEY}","Port":51820}`);
    expect(wireGuardBackendData(KEY, 1)).toBe(`{"PublicKey":"${KEY}","Port":1}`);
  });

  it("reads back what it writes", () => {
    const data = parseWireGuardBackendData(wireGuardBackendData(KEY, 51820));
    expect(data).toBeInstanceOf(WireGuardPeerData);
    expect(data).toEqual(new WireGuardPeerData(KEY, 51820));
  });
});

describe("parseWireGuardBackendData", () => {
  it.each<[string, string, WireGuardPeerData]>([
    ["flannel's bytes", `{"PublicKey":"${KEY}","Port":51820}`, new WireGuardPeerData(KEY, 51820)],
    ["keys in any case", `{"publickey":"${KEY}","PORT":51999}`, new WireGuardPeerData(KEY, 51999)],
    ["no Port (an older flannel): 0", `{"PublicKey":"${KEY}"}`, new WireGuardPeerData(KEY, 0)],
    ["Port null: 0", `{"PublicKey":"${KEY}","Port":null}`, new WireGuardPeerData(KEY, 0)],
    ["Port 0", `{"PublicKey":"${KEY}","Port":0}`, new WireGuardPeerData(KEY, 0)],
    ["Port 65535", `{"PublicKey":"${KEY}","Port":65535}`, new WireGuardPeerData(KEY, 65535)],
    ["extra keys ignored", `{"PublicKey":"${KEY}","Port":1,"Foo":[1]}`, new WireGuardPeerData(KEY, 1)],
    [
      "the last of two spellings wins, as in Go",
      `{"PublicKey":"x","publicKey":"${KEY}"}`,
      new WireGuardPeerData(KEY, 0),
    ],
  ])("reads %s", (_name, text, want) => {
    expect(parseWireGuardBackendData(text)).toEqual(want);
  });

  it.each<[string, string | undefined, string, string]>([
    ["missing BackendData", undefined, "BackendData", "BackendData is missing (wireguard needs PublicKey)"],
    ["bad JSON", "{", "BackendData", "BackendData is not valid JSON: "],
    ["an array", "[]", "BackendData", "BackendData is not a JSON object"],
    ["null", "null", "BackendData", "BackendData is not a JSON object"],
    ["a string", '"x"', "BackendData", "BackendData is not a JSON object"],
    [
      "no PublicKey (a vxlan lease's data)",
      '{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}',
      "BackendData.PublicKey",
      "BackendData.PublicKey is missing",
    ],
    [
      "PublicKey a number",
      '{"PublicKey":5}',
      "BackendData.PublicKey",
      "BackendData.PublicKey is not a string",
    ],
    [
      "PublicKey null",
      '{"PublicKey":null}',
      "BackendData.PublicKey",
      "BackendData.PublicKey is not a string",
    ],
    [
      "PublicKey not a key",
      '{"PublicKey":"abc"}',
      "BackendData.PublicKey",
      'BackendData.PublicKey "abc": its 3 characters are not a WireGuard key',
    ],
    ["PublicKey empty", '{"PublicKey":""}', "BackendData.PublicKey", 'BackendData.PublicKey "": it is empty'],
    [
      "Port text",
      `{"PublicKey":"${KEY}","Port":"51820"}`,
      "BackendData.Port",
      'BackendData.Port is "51820", not a port 0–65535',
    ],
    ["Port -1", `{"PublicKey":"${KEY}","Port":-1}`, "BackendData.Port", "BackendData.Port is -1"],
    ["Port 65536", `{"PublicKey":"${KEY}","Port":65536}`, "BackendData.Port", "BackendData.Port is 65536"],
    ["Port 1.5", `{"PublicKey":"${KEY}","Port":1.5}`, "BackendData.Port", "BackendData.Port is 1.5"],
  ])("refuses %s, naming the field", (_name, text, field, message) => {
    const error = thrown(() => parseWireGuardBackendData(text));
    expect(error).toBeInstanceOf(LeaseDecodeError);
    expect((error as LeaseDecodeError).field).toBe(field);
    expect((error as LeaseDecodeError).message).toContain(message);
  });

  it("is the plugin's parsePeerData", () => {
    expect(wireguardBackend.parsePeerData(`{"PublicKey":"${KEY}"}`)).toEqual(new WireGuardPeerData(KEY, 0));
  });
});

describe("chooseImplementation", () => {
  const link = (kind: string | undefined): Link => ({
    index: 9,
    name: WIREGUARD_DEVICE,
    kind,
    mtu: 1420,
    up: true,
    mac: undefined,
    master: undefined,
    vxlan: undefined,
  });

  it.each<
    [string, "auto" | "kernel" | "userspace", Link | undefined, boolean, "kernel" | "userspace", string]
  >([
    ["the kernel flag", "kernel", undefined, false, "kernel", "--wireguard-implementation=kernel"],
    [
      "the kernel flag over a TUN device",
      "kernel",
      link("tun"),
      false,
      "kernel",
      "--wireguard-implementation=kernel",
    ],
    ["the userspace flag", "userspace", undefined, true, "userspace", "--wireguard-implementation=userspace"],
    [
      "the userspace flag over a kernel device",
      "userspace",
      link("wireguard"),
      true,
      "userspace",
      "--wireguard-implementation=userspace",
    ],
    [
      "auto with a kernel WireGuard device already there",
      "auto",
      link("wireguard"),
      false,
      "kernel",
      "flannel-wg is a kernel WireGuard device",
    ],
    ["auto with the module loaded", "auto", undefined, true, "kernel", "the kernel has the wireguard module"],
    [
      "auto with the module, but wireguard-go's TUN device there (switching would re-create it)",
      "auto",
      link("tun"),
      true,
      "userspace",
      "flannel-wg is wireguard-go's TUN device already",
    ],
    [
      "auto without the module",
      "auto",
      undefined,
      false,
      "userspace",
      "the kernel has no wireguard module (neither /sys/module/wireguard nor one in /lib/modules)",
    ],
    [
      "auto without the module, wireguard-go's TUN device there",
      "auto",
      link("tun"),
      false,
      "userspace",
      "flannel-wg is wireguard-go's TUN device already",
    ],
  ])("%s", (_name, wanted, existing, moduleLoaded, implementation, why) => {
    expect(chooseImplementation(wanted, existing, moduleLoaded)).toEqual({ implementation, why });
  });
});

describe("the wireguard plugin's peer data hooks", () => {
  it("names a peer's identity and describes its data by its public key", () => {
    const data = new WireGuardPeerData(KEY, 51820);
    expect(wireguardBackend.identityOf?.(data)).toBe(`WireGuard public key ${KEY}`);
    expect(wireguardBackend.describePeerData?.(data)).toBe(`key ${KEY}`);
  });

  it("says nothing of another backend's data", () => {
    expect(wireguardBackend.identityOf?.({ vni: 1 })).toBeUndefined();
    expect(wireguardBackend.describePeerData?.({ vni: 1 })).toBeUndefined();
  });
});

describe("a wireguard node prepared in a temp state dir (userspace)", () => {
  const NODE: NodeFacts = {
    subnet: parseCidr("10.244.1.0/24"),
    network: parseCidr("10.244.0.0/16"),
    external: {
      name: "eth0",
      index: 2,
      mtu: 1500,
      ifaceIp: parseIPv4("198.18.0.1"),
      publicIp: parseIPv4("198.18.0.1"),
    },
    connected: [parsePrefix("198.18.0.0/24")],
  };

  const dirs: string[] = [];
  beforeEach(() => {
    // The key file must come from the state dir, whatever the test's environment says.
    vi.stubEnv(KEY_FILE_VARIABLE, "");
  });
  afterEach(async () => {
    vi.unstubAllEnvs();
    await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  });

  async function prepare(
    backend = '{"Type":"wireguard"}',
    dir?: string,
  ): Promise<{ node: NodeBackend; dir: string }> {
    const stateDir = dir ?? (await mkdtemp(join(tmpdir(), "twill-wg-backend-")));
    if (dir === undefined) dirs.push(stateDir);
    const config = parseNetworkConfig(`{"Network":"10.244.0.0/16","Backend":${backend}}`).config;
    const asked: string[] = [];
    const node = await config.backend.prepare({
      stateDir,
      existingLink: (name) => {
        asked.push(name);
        return Promise.resolve(undefined);
      },
      txChecksumOffload: true,
      nodeBinding: "node-a",
      wireguard: { implementation: "userspace", binary: "wireguard-go", keyFile: "" },
    });
    expect(asked).toEqual([WIREGUARD_DEVICE]);
    return { node, dir: stateDir };
  }

  const wgLease = (n: number, data: string | undefined, parsed = false): Lease => {
    const lease = peerLease(n, { type: "wireguard", data });
    return parsed && data !== undefined
      ? { ...lease, peerData: wireguardBackend.parsePeerData(data) }
      : lease;
  };

  it("publishes its public key and port, from a key file it made in the state dir, and starts nothing", async () => {
    const { node, dir } = await prepare();
    const privateKey = (await readFile(join(dir, "wireguard.key"), "utf8")).trim();
    const publicKey = encodeKey(publicKeyOf(Buffer.from(privateKey, "base64")));
    expect(node.leaseData).toBe(`{"PublicKey":"${publicKey}","Port":51820}`);
    expect(node.identity).toBe(`WireGuard public key ${publicKey}`);
    expect(node.identityOrigin).toBe(existsSync(FLANNEL_KEY_FILE) ? "adopted" : "first-start");
    expect(node.ownedDevices).toEqual([WIREGUARD_DEVICE]);
    expect(node.config.type).toBe("wireguard");
    // Nothing started: no wireguard-go pid file, and the data path is not running.
    expect(existsSync(join(dir, `wireguard-go-${WIREGUARD_DEVICE}.json`))).toBe(false);
    const status = node.userspace?.status();
    expect(status).toMatchObject({
      kind: "wireguard",
      implementation: "userspace",
      device: WIREGUARD_DEVICE,
      running: false,
      publicKey,
      listenPort: 51820,
      pid: undefined,
      peers: 0,
    });

    // Prepared again (an agent restart): the same key, read from the file.
    const again = await prepare('{"Type":"wireguard"}', dir);
    expect(again.node.identityOrigin).toBe("persisted");
    expect(again.node.leaseData).toBe(node.leaseData);
  });

  it("needs flannel-wg as a TUN device for wireguard-go, MTU 1420, address <subnet>/32", async () => {
    const { node } = await prepare();
    const devices = node.devices(NODE);
    expect(devices).toHaveLength(1);
    const [device] = devices;
    expect(device).toMatchObject({
      link: { name: "flannel-wg", kind: "tun", mtu: 1420 },
      mtu: 1420,
      mac: undefined,
      addresses: [{ address: "10.244.1.0", prefixLength: 32 }],
      addressScope: [{ family: 4, address: "10.244.0.0", length: 16 }],
    });
    const link = (kind: string | undefined): Link => ({
      index: 9,
      name: "flannel-wg",
      kind,
      mtu: 1420,
      up: true,
      mac: undefined,
      master: undefined,
      vxlan: undefined,
    });
    expect(device?.incompatibility(link("tun"))).toBeUndefined();
    expect(device?.incompatibility(link("wireguard"))).toBe(
      "flannel-wg is a wireguard device, not a TUN device for wireguard-go",
    );
    expect(device?.incompatibility(link(undefined))).toBe(
      "flannel-wg is a plain device, not a TUN device for wireguard-go",
    );
  });

  it("follows the configured MTU (less 80)", async () => {
    const { node } = await prepare('{"Type":"wireguard","MTU":9000}');
    expect(node.devices(NODE)[0]?.mtu).toBe(8920);
  });

  it("routes the whole cluster network into flannel-wg", async () => {
    const { node } = await prepare();
    expect(node.nodeObjects?.(NODE)).toEqual([
      ownedRoute({ family: 4, dst: "10.244.0.0/16", gateway: undefined, dev: "flannel-wg", onlink: false }),
    ]);
  });

  it.each([
    ["its BackendData parsed in the peer view", true],
    ["its BackendData parsed here", false],
  ])("programs a wireguard peer (%s): its key, PublicIP:Port, its subnet", async (_name, parsed) => {
    const { node } = await prepare();
    const key = peerKey(2);
    const program = node.peer(NODE, wgLease(2, `{"PublicKey":"${key}","Port":51830}`, parsed));
    expect(program).toEqual({
      objects: [],
      status: { state: "programmed", reason: "wireguard via flannel-wg to 198.18.0.2:51830" },
      userspaceRoute: {
        subnet: parseCidr("10.244.2.0/24"),
        endpoint: { address: parseIPv4("198.18.0.2"), port: 51830 },
        publicKey: key,
        devices: [
          {
            device: "flannel-wg",
            publicKey: key,
            endpoint: "198.18.0.2:51830",
            allowedIps: ["10.244.2.0/24"],
          },
        ],
      },
    });
  });

  it.each([
    ["Port 0", ',"Port":0'],
    ["no Port", ""],
  ])("sends to a peer with %s at this node's own ListenPort", async (_name, port) => {
    const { node } = await prepare('{"Type":"wireguard","ListenPort":51999}');
    expect(node.leaseData).toMatch(/,"Port":51999\}$/);
    const key = peerKey(3);
    const program = node.peer(NODE, wgLease(3, `{"PublicKey":"${key}"${port}}`));
    expect(program.userspaceRoute).toMatchObject({
      devices: [
        { device: "flannel-wg", publicKey: key, endpoint: "198.18.0.3:51999", allowedIps: ["10.244.3.0/24"] },
      ],
    });
    expect(program.status.reason).toBe("wireguard via flannel-wg to 198.18.0.3:51999");
  });

  it.each<[string, Lease, string]>([
    [
      "a vxlan peer",
      peerLease(2),
      'peer 10.244.2.0/24 uses backend "vxlan", this node uses "wireguard"; not programmed',
    ],
    [
      "a udp peer (no BackendType)",
      peerLease(2, { type: undefined }),
      'peer 10.244.2.0/24 uses backend "", this node uses "wireguard"; not programmed',
    ],
    [
      "a peer without BackendData",
      peerLease(2, { type: "wireguard", data: undefined }),
      "peer 10.244.2.0/24 has bad wireguard BackendData: BackendData is missing",
    ],
    [
      "a peer without a PublicKey",
      peerLease(2, { type: "wireguard", data: '{"Port":51820}' }),
      "peer 10.244.2.0/24 has bad wireguard BackendData: BackendData.PublicKey is missing",
    ],
    [
      "a peer with a bad PublicKey",
      peerLease(2, { type: "wireguard", data: '{"PublicKey":"nope","Port":51820}' }),
      'peer 10.244.2.0/24 has bad wireguard BackendData: BackendData.PublicKey "nope": its 4 characters are not a WireGuard key',
    ],
    [
      "a peer with a bad Port",
      peerLease(2, { type: "wireguard", data: `{"PublicKey":"${KEY}","Port":"x"}` }),
      'peer 10.244.2.0/24 has bad wireguard BackendData: BackendData.Port is "x"',
    ],
  ])("does not program %s: backend-mismatch, saying why", async (_name, lease, reason) => {
    const { node } = await prepare();
    const program = node.peer(NODE, lease);
    expect(program.objects).toEqual([]);
    expect(program.userspaceRoute).toBeUndefined();
    expect(program.status.state).toBe("backend-mismatch");
    expect(program.status.reason).toContain(reason);
  });
});

describe("parseWireGuardPeerData: BackendData and BackendV6Data", () => {
  const data = (port: number, key = KEY): string => `{"PublicKey":"${key}","Port":${port}}`;
  const other = peerKey(9);

  it.each<[string, string | undefined, string | undefined, WireGuardPeerData]>([
    ["IPv4 only", data(51820), undefined, new WireGuardPeerData(KEY, 51820)],
    [
      "dual-stack (Mode separate: the IPv6 device's port)",
      data(51820),
      data(51821),
      new WireGuardPeerData(KEY, 51820, { publicKey: KEY, port: 51821 }),
    ],
    [
      "IPv6-only: no BackendData",
      undefined,
      data(51821),
      new WireGuardPeerData(KEY, 51821, { publicKey: KEY, port: 51821 }, false),
    ],
    [
      "IPv6-only: BackendData null",
      "null",
      data(51821),
      new WireGuardPeerData(KEY, 51821, { publicKey: KEY, port: 51821 }, false),
    ],
    ["BackendV6Data null", data(51820), "null", new WireGuardPeerData(KEY, 51820)],
    [
      "another key for IPv6",
      data(51820),
      data(0, other),
      new WireGuardPeerData(KEY, 51820, { publicKey: other, port: 0 }),
    ],
  ])("reads %s", (_name, v4, v6, want) => {
    const parsed = parseWireGuardPeerData(v4, v6);
    expect(parsed).toEqual(want);
    expect(wireguardBackend.parsePeerData(v4, v6)).toEqual(want);
  });

  it("names each family's data, and identifies an IPv6-only peer by its IPv6 key", () => {
    const dual = parseWireGuardPeerData(data(51820), data(51821, other));
    expect(dual.v4).toEqual({ publicKey: KEY, port: 51820 });
    expect(dual.v6).toEqual({ publicKey: other, port: 51821 });
    expect(wireguardBackend.identityOf?.(dual)).toBe(`WireGuard public key ${KEY}`);
    const v6only = parseWireGuardPeerData(undefined, data(51821, other));
    expect(v6only.v4).toBeUndefined();
    expect(wireguardBackend.identityOf?.(v6only)).toBe(`WireGuard public key ${other}`);
    expect(wireguardBackend.describePeerData?.(v6only)).toBe(`key ${other}`);
  });

  it.each<[string, string | undefined, string | undefined, string, string]>([
    ["neither", undefined, undefined, "BackendData", "BackendData is missing"],
    ["a bad BackendV6Data", data(51820), "{", "BackendV6Data", "BackendV6Data is not valid JSON"],
    [
      "BackendV6Data without PublicKey",
      undefined,
      '{"Port":51821}',
      "BackendV6Data.PublicKey",
      "BackendV6Data.PublicKey is missing",
    ],
    [
      "BackendV6Data with a bad Port",
      data(51820),
      `{"PublicKey":"${KEY}","Port":70000}`,
      "BackendV6Data.Port",
      "BackendV6Data.Port is 70000",
    ],
    [
      "a bad BackendData beside a good BackendV6Data",
      '{"PublicKey":1}',
      data(51821),
      "BackendData.PublicKey",
      "BackendData.PublicKey is not a string",
    ],
  ])("refuses %s, naming the field", (_name, v4, v6, field, message) => {
    const error = thrown(() => parseWireGuardPeerData(v4, v6));
    expect(error).toBeInstanceOf(LeaseDecodeError);
    expect((error as LeaseDecodeError).field).toBe(field);
    expect((error as LeaseDecodeError).message).toContain(message);
  });
});

describe("wireguard nodes with IPv6: lease data, devices, routes and peers by Mode", () => {
  type Families = { readonly ipv4: boolean; readonly ipv6: boolean };
  const DUAL: Families = { ipv4: true, ipv6: true };
  const V4: Families = { ipv4: true, ipv6: false };
  const V6: Families = { ipv4: false, ipv6: true };

  const external = (ipv4: string | undefined, ipv6: string | undefined): NodeFacts["external"] => ({
    name: "eth0",
    index: 2,
    mtu: 1500,
    ifaceIp: ipv4 === undefined ? 0 : parseIPv4(ipv4),
    publicIp: ipv4 === undefined ? 0 : parseIPv4(ipv4),
    ...(ipv6 === undefined ? {} : { ifaceIpv6: ipv6, publicIpv6: ipv6 }),
  });
  const EMPTY = parseCidr("0.0.0.0/0");
  /** This node, 10.244.1.0/24 and fd00:10:244:1::/64, at 198.18.0.1 and 2001:db8::1 (by families). */
  const facts = (families: Families, publicIPv4 = "198.18.0.1"): NodeFacts => ({
    subnet: families.ipv4 ? parseCidr("10.244.1.0/24") : EMPTY,
    network: families.ipv4 ? parseCidr("10.244.0.0/16") : EMPTY,
    ...(families.ipv6
      ? { ipv6Subnet: parseCidr6("fd00:10:244:1::/64"), ipv6Network: parseCidr6("fd00:10:244::/56") }
      : {}),
    external: external(families.ipv4 ? publicIPv4 : undefined, families.ipv6 ? "2001:db8::1" : undefined),
    connected: [parsePrefix("198.18.0.0/24"), parsePrefix("2001:db8::/64")],
  });

  interface PeerOptions {
    readonly families?: Families;
    readonly v4Port?: number;
    readonly v6Port?: number;
    readonly v6Key?: string;
    readonly v6Data?: boolean;
    readonly publicIPv4?: string;
  }
  /** Peer n: 10.244.n.0/24 at 198.18.0.n, fd00:10:244:n::/64 at 2001:db8::n, key peerKey(n). */
  const peer = (n: number, o: PeerOptions = {}): Lease => {
    const families = o.families ?? DUAL;
    const key = peerKey(n);
    return {
      subnet: families.ipv4 ? parseCidr(`10.244.${n}.0/24`) : EMPTY,
      ...(families.ipv6 ? { ipv6Subnet: parseCidr6(`fd00:10:244:${n}::/64`) } : {}),
      attrs: {
        publicIP: families.ipv4 ? parseIPv4(o.publicIPv4 ?? `198.18.0.${n}`) : 0,
        publicIPv6: families.ipv6 ? `2001:db8::${n}` : null,
        backendType: "wireguard",
        backendData: families.ipv4 ? `{"PublicKey":"${key}","Port":${o.v4Port ?? 51820}}` : undefined,
        backendV6Data:
          families.ipv6 && o.v6Data !== false
            ? `{"PublicKey":"${o.v6Key ?? key}","Port":${o.v6Port ?? 51821}}`
            : undefined,
      },
      key: `/coreos.com/network/subnets/10.244.${n}.0-24`,
      etcdLeaseId: "7",
      createRevision: n,
      modRevision: n,
    };
  };

  const dirs: string[] = [];
  beforeEach(() => vi.stubEnv(KEY_FILE_VARIABLE, ""));
  afterEach(async () => {
    vi.unstubAllEnvs();
    await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  });

  async function prepare(
    backend: Record<string, unknown>,
    families: Families,
    dir?: string,
  ): Promise<{ node: NodeBackend; asked: string[]; publicKey: string; dir: string }> {
    const stateDir = dir ?? (await mkdtemp(join(tmpdir(), "twill-wg-v6-")));
    if (dir === undefined) dirs.push(stateDir);
    const config = parseNetworkConfig(
      JSON.stringify({
        ...(families.ipv4 ? { Network: "10.244.0.0/16" } : { EnableIPv4: false }),
        ...(families.ipv6 ? { EnableIPv6: true, IPv6Network: "fd00:10:244::/56" } : {}),
        Backend: { Type: "wireguard", ...backend },
      }),
    ).config;
    const asked: string[] = [];
    const node = await config.backend.prepare({
      families,
      stateDir,
      existingLink: (name) => {
        asked.push(name);
        return Promise.resolve(undefined);
      },
      txChecksumOffload: true,
      nodeBinding: "node-a",
      wireguard: { implementation: "userspace", binary: "wireguard-go", keyFile: "" },
    });
    const privateKey = (await readFile(join(stateDir, "wireguard.key"), "utf8")).trim();
    const publicKey = encodeKey(publicKeyOf(Buffer.from(privateKey, "base64")));
    return { node, asked, publicKey, dir: stateDir };
  }

  it.each<[string, Record<string, unknown>, Families, number | undefined, number | undefined, string[]]>([
    ["separate, IPv4 only", {}, V4, 51820, undefined, ["flannel-wg"]],
    ["separate, dual-stack", {}, DUAL, 51820, 51821, ["flannel-wg", "flannel-wg-v6"]],
    ["separate, IPv6 only", {}, V6, undefined, 51821, ["flannel-wg-v6"]],
    [
      "separate, other ports",
      { ListenPort: 4000, ListenPortV6: 6000 },
      DUAL,
      4000,
      6000,
      ["flannel-wg", "flannel-wg-v6"],
    ],
    // One device: both families' peers reach it at its one port.
    ["auto, dual-stack", { Mode: "auto", ListenPortV6: 6000 }, DUAL, 51820, 51820, ["flannel-wg"]],
    ["auto, IPv4 only", { Mode: "auto" }, V4, 51820, undefined, ["flannel-wg"]],
    ["ipv4, dual-stack", { Mode: "ipv4" }, DUAL, 51820, 51820, ["flannel-wg"]],
    ["ipv6, dual-stack", { Mode: "ipv6" }, DUAL, 51820, 51820, ["flannel-wg"]],
    ["ipv6, IPv6 only", { Mode: "ipv6" }, V6, undefined, 51820, ["flannel-wg"]],
  ])(
    "%s: publishes its key and ports, and owns its devices",
    async (_name, backend, families, port, port6, devices) => {
      const { node, asked, publicKey } = await prepare(backend, families);
      const data = (p: number | undefined) =>
        p === undefined ? undefined : `{"PublicKey":"${publicKey}","Port":${p}}`;
      expect(node.leaseData).toBe(data(port));
      expect(node.leaseV6Data).toBe(data(port6));
      expect(node.identity).toBe(`WireGuard public key ${publicKey}`);
      expect(node.ownedDevices).toEqual(devices);
      expect(asked).toEqual(devices);
      const status = node.userspace?.status();
      expect(status?.device).toBe(devices[0]);
      expect(status?.running).toBe(false);
    },
  );

  it("gives flannel-wg <subnet>/32 and flannel-wg-v6 <IPv6 subnet>/128, each with its network's route (separate)", async () => {
    const { node } = await prepare({}, DUAL);
    const node1 = facts(DUAL);
    expect(
      node.devices(node1).map((d) => ({
        name: d.link.name,
        kind: d.link.kind,
        mtu: d.mtu,
        addresses: d.addresses,
        scope: d.addressScope,
      })),
    ).toEqual([
      {
        name: "flannel-wg",
        kind: "tun",
        mtu: 1420,
        addresses: [{ address: "10.244.1.0", prefixLength: 32 }],
        scope: [{ family: 4, address: "10.244.0.0", length: 16 }],
      },
      {
        name: "flannel-wg-v6",
        kind: "tun",
        mtu: 1420,
        addresses: [{ address: "fd00:10:244:1::", prefixLength: 128 }],
        scope: [{ family: 6, address: "fd00:10:244::", length: 56 }],
      },
    ]);
    expect(node.nodeObjects?.(node1)).toEqual([
      ownedRoute({ family: 4, dst: "10.244.0.0/16", gateway: undefined, dev: "flannel-wg", onlink: false }),
      ownedRoute({
        family: 6,
        dst: "fd00:10:244::/56",
        gateway: undefined,
        dev: "flannel-wg-v6",
        onlink: false,
      }),
    ]);
    expect(
      node.devices(node1)[1]?.incompatibility({
        index: 9,
        name: "flannel-wg-v6",
        kind: "wireguard",
        mtu: 1420,
        up: true,
        mac: undefined,
        master: undefined,
        vxlan: undefined,
      }),
    ).toBe("flannel-wg-v6 is a wireguard device, not a TUN device for wireguard-go");
  });

  it.each<[string, Record<string, unknown>, Families, string[], string[]]>([
    [
      "auto, dual-stack: both on flannel-wg",
      { Mode: "auto" },
      DUAL,
      ["10.244.1.0/32", "fd00:10:244:1::/128"],
      ["10.244.0.0/16 flannel-wg", "fd00:10:244::/56 flannel-wg"],
    ],
    ["ipv6, IPv6 only", { Mode: "ipv6" }, V6, ["fd00:10:244:1::/128"], ["fd00:10:244::/56 flannel-wg"]],
    ["separate, IPv6 only", {}, V6, ["fd00:10:244:1::/128"], ["fd00:10:244::/56 flannel-wg-v6"]],
  ])("%s: addresses and routes", async (_name, backend, families, addresses, routes) => {
    const { node } = await prepare(backend, families);
    const node1 = facts(families);
    expect(
      node.devices(node1).flatMap((d) => d.addresses.map((a) => `${a.address}/${a.prefixLength}`)),
    ).toEqual(addresses);
    expect(
      (node.nodeObjects?.(node1) ?? []).map((o) => (o.kind === "route" ? `${o.dst} ${o.dev ?? ""}` : o.kind)),
    ).toEqual(routes);
  });

  const row = (device: string, n: number, endpoint: string, allowedIps: string[], key = peerKey(n)) => ({
    device,
    publicKey: key,
    endpoint,
    allowedIps,
  });
  const v4Row = (n: number, port = 51820) =>
    row("flannel-wg", n, `198.18.0.${n}:${port}`, [`10.244.${n}.0/24`]);
  const v6Row = (n: number, port = 51821) =>
    row("flannel-wg-v6", n, `[2001:db8::${n}]:${port}`, [`fd00:10:244:${n}::/64`]);

  it.each<[string, Record<string, unknown>, NodeFacts, Lease, string, unknown[], string]>([
    [
      "separate: a dual-stack peer on both devices",
      {},
      facts(DUAL),
      peer(2),
      "programmed",
      [v4Row(2), v6Row(2)],
      "IPv4: wireguard via flannel-wg to 198.18.0.2:51820; IPv6: wireguard via flannel-wg-v6 to [2001:db8::2]:51821",
    ],
    [
      "separate: an IPv4-only peer",
      {},
      facts(DUAL),
      peer(3, { families: V4 }),
      "programmed",
      [v4Row(3)],
      "wireguard via flannel-wg to 198.18.0.3:51820",
    ],
    [
      "separate: an IPv6-only peer",
      {},
      facts(DUAL),
      peer(4, { families: V6 }),
      "programmed",
      [v6Row(4)],
      "wireguard via flannel-wg-v6 to [2001:db8::4]:51821",
    ],
    [
      "separate: on an IPv6-only node",
      {},
      facts(V6),
      peer(2),
      "programmed",
      [v6Row(2)],
      "wireguard via flannel-wg-v6 to [2001:db8::2]:51821",
    ],
    [
      "separate: on an IPv4-only node",
      {},
      facts(V4),
      peer(2),
      "programmed",
      [v4Row(2)],
      "wireguard via flannel-wg to 198.18.0.2:51820",
    ],
    [
      "separate: the peer's own IPv6 port",
      {},
      facts(DUAL),
      peer(2, { v6Port: 7000 }),
      "programmed",
      [v4Row(2), v6Row(2, 7000)],
      "IPv6: wireguard via flannel-wg-v6 to [2001:db8::2]:7000",
    ],
    [
      "separate: IPv6 Port 0 (older flannel): this node's ListenPortV6",
      { ListenPortV6: 6000 },
      facts(DUAL),
      peer(2, { v6Port: 0 }),
      "programmed",
      [v4Row(2), v6Row(2, 6000)],
      "IPv6: wireguard via flannel-wg-v6 to [2001:db8::2]:6000",
    ],
    [
      "separate: another key for IPv6 goes on flannel-wg-v6",
      {},
      facts(DUAL),
      peer(2, { v6Key: peerKey(9) }),
      "programmed",
      [v4Row(2), row("flannel-wg-v6", 2, "[2001:db8::2]:51821", ["fd00:10:244:2::/64"], peerKey(9))],
      "IPv4: wireguard via flannel-wg",
    ],
    [
      "separate: an IPv6 subnet without BackendV6Data: IPv4 only, and why",
      {},
      facts(DUAL),
      peer(2, { v6Data: false }),
      "backend-mismatch",
      [v4Row(2)],
      "IPv6: peer 10.244.2.0/24+fd00:10:244:2::/64 publishes no wireguard BackendV6Data",
    ],
    [
      "separate: an IPv6-only peer on an IPv4-only node",
      {},
      facts(V4),
      peer(4, { families: V6 }),
      "unreachable",
      [],
      "peer fd00:10:244:4::/64 shares no address family with this node",
    ],
    [
      "auto: both subnets to the public IPv4",
      { Mode: "auto" },
      facts(DUAL),
      peer(2, { v6Port: 51820 }),
      "programmed",
      [row("flannel-wg", 2, "198.18.0.2:51820", ["10.244.2.0/24", "fd00:10:244:2::/64"])],
      "wireguard via flannel-wg to 198.18.0.2:51820",
    ],
    [
      "auto: private IPv4s, public IPv6s: over IPv6, at BackendV6Data's port",
      { Mode: "auto" },
      facts(DUAL, "10.0.0.1"),
      peer(2, { v6Port: 51822, publicIPv4: "10.0.0.2" }),
      "programmed",
      [row("flannel-wg", 2, "[2001:db8::2]:51822", ["10.244.2.0/24", "fd00:10:244:2::/64"])],
      "wireguard via flannel-wg to [2001:db8::2]:51822",
    ],
    [
      "auto: an IPv6-only peer",
      { Mode: "auto" },
      facts(DUAL),
      peer(4, { families: V6, v6Port: 51820 }),
      "programmed",
      [row("flannel-wg", 4, "[2001:db8::4]:51820", ["fd00:10:244:4::/64"])],
      "wireguard via flannel-wg to [2001:db8::4]:51820",
    ],
    [
      "auto: an IPv4-only peer",
      { Mode: "auto" },
      facts(DUAL),
      peer(3, { families: V4 }),
      "programmed",
      [row("flannel-wg", 3, "198.18.0.3:51820", ["10.244.3.0/24"])],
      "wireguard via flannel-wg to 198.18.0.3:51820",
    ],
    [
      "ipv4: both subnets to the IPv4 PublicIP",
      { Mode: "ipv4" },
      facts(DUAL, "10.0.0.1"),
      peer(2, { publicIPv4: "10.0.0.2" }),
      "programmed",
      [row("flannel-wg", 2, "10.0.0.2:51820", ["10.244.2.0/24", "fd00:10:244:2::/64"])],
      "wireguard via flannel-wg to 10.0.0.2:51820",
    ],
    [
      "ipv4: an IPv6-only peer cannot be reached",
      { Mode: "ipv4" },
      facts(DUAL),
      peer(4, { families: V6 }),
      "unreachable",
      [],
      "peer fd00:10:244:4::/64 publishes no PublicIP to reach it at over flannel-wg (Mode ipv4); not programmed",
    ],
    [
      "ipv6: both subnets to the PublicIPv6",
      { Mode: "ipv6" },
      facts(DUAL),
      peer(2, { v6Port: 51820 }),
      "programmed",
      [row("flannel-wg", 2, "[2001:db8::2]:51820", ["10.244.2.0/24", "fd00:10:244:2::/64"])],
      "wireguard via flannel-wg to [2001:db8::2]:51820",
    ],
    [
      "ipv6: on an IPv6-only node",
      { Mode: "ipv6" },
      facts(V6),
      peer(2, { v6Port: 51820 }),
      "programmed",
      [row("flannel-wg", 2, "[2001:db8::2]:51820", ["fd00:10:244:2::/64"])],
      "wireguard via flannel-wg to [2001:db8::2]:51820",
    ],
    [
      "ipv6: an IPv4-only peer cannot be reached",
      { Mode: "ipv6" },
      facts(DUAL),
      peer(3, { families: V4 }),
      "unreachable",
      [],
      "peer 10.244.3.0/24 publishes no PublicIPv6 to reach it at over flannel-wg (Mode ipv6)",
    ],
    [
      "auto: two keys for one tunnel",
      { Mode: "auto" },
      facts(DUAL),
      peer(2, { v6Key: peerKey(9) }),
      "backend-mismatch",
      [],
      "publishes two public keys",
    ],
  ])("%s", async (_name, backend, node1, lease, state, rows, reason) => {
    const families: Families = { ipv4: node1.subnet.prefixLen > 0, ipv6: node1.ipv6Subnet !== undefined };
    const { node } = await prepare(backend, families);
    for (const parsed of [false, true]) {
      const given = parsed
        ? {
            ...lease,
            peerData: wireguardBackend.parsePeerData(lease.attrs.backendData, lease.attrs.backendV6Data),
          }
        : lease;
      const program = node.peer(node1, given);
      expect(program.objects).toEqual([]);
      expect(program.status.state).toBe(state);
      expect(program.status.reason).toContain(reason);
      if (rows.length === 0) expect(program.userspaceRoute).toBeUndefined();
      else expect(program.userspaceRoute).toMatchObject({ devices: rows });
    }
  });

  it("serves both devices as one data path, and lets flannel-wg-v6 go when IPv6 is turned off", async () => {
    const { node, dir } = await prepare({}, DUAL);
    const status = node.userspace?.status() as WireGuardTunnelsStatus | undefined;
    expect(status?.devices.map((d) => [d.device, d.listenPort])).toEqual([
      ["flannel-wg", 51820],
      ["flannel-wg-v6", 51821],
    ]);
    const again = await prepare({}, V4, dir);
    // The same data path object (the loop keeps it), now with one device.
    expect(again.node.userspace).toBe(node.userspace);
    expect(again.node.userspace?.status()).toMatchObject({ device: "flannel-wg", listenPort: 51820 });
    expect(again.node.leaseData).toBe(`{"PublicKey":"${again.publicKey}","Port":51820}`);
  });
});
