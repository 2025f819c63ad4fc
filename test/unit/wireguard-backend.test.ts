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
  WIREGUARD_DEVICE,
  wireguardBackend,
  wireGuardBackendData,
  WireGuardPeerData,
} from "../../src/backends/wireguard/index.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import { ownedRoute, type Link } from "../../src/dataplane/objects.js";
import { parsePrefix } from "../../src/ip/address.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
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
    expect(program.userspaceRoute).toEqual({
      subnet: parseCidr("10.244.3.0/24"),
      endpoint: { address: parseIPv4("198.18.0.3"), port: 51999 },
      publicKey: key,
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
