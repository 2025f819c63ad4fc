// The two ways twill talks to a WireGuard device, against a real wireguard-go: its configuration
// socket (UAPI, what the agent uses for wireguard-go) and `wg` (what it uses for the kernel's device,
// since wg speaks the kernel's generic netlink and wireguard-go's socket alike; these machines have no
// WireGuard module, so wg is exercised here against wireguard-go). Both must read and write the same
// device state.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UapiControl, WgToolControl, type WireGuardControl } from "../../src/backends/wireguard/control.js";
import type { CommandRunner } from "../../src/exec/command.js";
import { encodeKey, generatePrivateKey, publicKeyOf } from "../../src/backends/wireguard/keys.js";
import { createUnderlay, type Cluster, type Host } from "../helpers/netns.js";
import type { Started } from "../helpers/processes.js";
import { startMountNamespace, type MountNamespace } from "../helpers/wireguard.js";
import { waitFor } from "../helpers/processes.js";

const DEVICE = "wgc0";
let host: Host;
let mountNs: MountNamespace;
let keyDir: string;
/** What beforeAll made, undone in reverse order, also when it failed halfway. */
const teardown: (() => Promise<void> | void)[] = [];

function newKey(): { privateKey: string; publicKey: string } {
  const key = generatePrivateKey();
  return { privateKey: encodeKey(key), publicKey: encodeKey(publicKeyOf(key)) };
}

beforeAll(async () => {
  const net: Cluster = await createUnderlay();
  teardown.push(() => net.destroy());
  host = await net.addHost(1);
  const ns = await startMountNamespace();
  mountNs = ns;
  teardown.push(() => ns.stop());
  const wireguardGo: Started = net.spawn(host.ns, "nsenter", [
    ...ns.enter(),
    "--",
    "wireguard-go",
    "-f",
    DEVICE,
  ]);
  teardown.push(() => wireguardGo.stop());
  await waitFor(
    "wireguard-go's socket",
    async () => (await mountNs.exec(host.ns, ["wg", "show", DEVICE])).exitCode === 0,
  );
  const dir = mkdtempSync(join(tmpdir(), "twill-wgc-"));
  keyDir = dir;
  teardown.push(() => rmSync(dir, { recursive: true, force: true }));
}, 60_000);

afterAll(async () => {
  for (const undo of teardown.splice(0).reverse()) await undo();
});

/** `wg` inside the host's network and mount namespaces, as the agent would run it there. */
const runner = (): CommandRunner => ({
  where: "test host",
  run: (cmd, args, input) => mountNs.exec(host.ns, [cmd, ...args], input),
});

/** The socket seen through the holder's mount namespace (/proc/<pid>/root). */
const uapi = (): UapiControl => new UapiControl(DEVICE, `/proc/${mountNs.pid}/root/run/wireguard`);

describe.each([
  ["UAPI socket", (): WireGuardControl => uapi()],
  ["wg", (): WireGuardControl => new WgToolControl(DEVICE, runner(), keyDir)],
])("WireGuard control through %s", (_name, control) => {
  it("sets the key, port and peers, reads them back, and removes a peer", async () => {
    const own = newKey();
    const peerA = newKey();
    const peerB = newKey();
    const psk = encodeKey(generatePrivateKey());
    await control().set({
      privateKey: own.privateKey,
      listenPort: 51830,
      peers: [
        {
          publicKey: peerA.publicKey,
          endpoint: "198.18.0.2:51820",
          allowedIps: ["10.244.2.0/24"],
          presharedKey: psk,
          keepalive: 25,
          why: "missing",
        },
        {
          publicKey: peerB.publicKey,
          endpoint: "198.18.0.3:51821",
          allowedIps: ["10.244.3.0/24"],
          presharedKey: undefined,
          keepalive: 0,
          why: "missing",
        },
      ],
    });
    for (const reader of [uapi(), new WgToolControl(DEVICE, runner(), keyDir)]) {
      const state = await reader.get();
      expect(state.privateKey).toBe(own.privateKey);
      expect(state.listenPort).toBe(51830);
      expect(state.peers.get(peerA.publicKey)).toMatchObject({
        endpoint: "198.18.0.2:51820",
        allowedIps: ["10.244.2.0/24"],
        presharedKey: psk,
        keepalive: 25,
      });
      expect(state.peers.get(peerB.publicKey)).toMatchObject({
        endpoint: "198.18.0.3:51821",
        allowedIps: ["10.244.3.0/24"],
        presharedKey: undefined,
        keepalive: 0,
      });
    }
    // The PSK and keepalive off again, the allowed IPs replaced, B removed.
    await control().set({
      peers: [
        {
          publicKey: peerA.publicKey,
          endpoint: "198.18.0.2:51820",
          allowedIps: ["10.244.9.0/24"],
          presharedKey: undefined,
          keepalive: 0,
          why: "changed",
        },
        { publicKey: peerB.publicKey, remove: true },
      ],
    });
    const state = await uapi().get();
    expect([...state.peers.keys()]).toEqual([peerA.publicKey]);
    expect(state.peers.get(peerA.publicKey)).toMatchObject({
      allowedIps: ["10.244.9.0/24"],
      presharedKey: undefined,
      keepalive: 0,
    });
    await control().set({ peers: [{ publicKey: peerA.publicKey, remove: true }] });
    expect((await control().get()).peers.size).toBe(0);
  });

  it("leaves no key file behind", async () => {
    const { readdirSync } = await import("node:fs");
    expect(readdirSync(keyDir)).toEqual([]);
  });
});

describe("the UAPI socket of a device that is not there", () => {
  it("fails naming the socket", async () => {
    await expect(new UapiControl("nosuch0", `/proc/${mountNs.pid}/root/run/wireguard`).get()).rejects.toThrow(
      /nosuch0\.sock: ENOENT/,
    );
  });
});
