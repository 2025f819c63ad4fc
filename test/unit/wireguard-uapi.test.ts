// UapiControl's reading of a device over a UNIX socket that answers as wireguard-go does: replies in
// chunks, peers in a different order at every read (Go's map order). The real wireguard-go is in
// test/integration/wireguard-control.test.ts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UapiControl } from "../../src/backends/wireguard/control.js";
import { keyFromHex } from "../../src/backends/wireguard/keys.js";

const hex = (n: number): string => n.toString(16).padStart(2, "0").repeat(32);
const peerBlock = (n: number, handshake: number): string =>
  [
    `public_key=${hex(n)}`,
    `preshared_key=${"0".repeat(64)}`,
    "protocol_version=1",
    `endpoint=198.18.0.${n}:51820`,
    `last_handshake_time_sec=${handshake}`,
    "last_handshake_time_nsec=0",
    `tx_bytes=${handshake * 10}`,
    `rx_bytes=${handshake * 20}`,
    "persistent_keepalive_interval=0",
    `allowed_ip=10.244.${n}.0/24`,
  ].join("\n");

let dir: string;
let server: Server;
let reads = 0;
/** Peers on the fake device; peer 3's allowed IP can be changed by a test. */
let thirdAllowed = "10.244.3.0/24";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "twill-uapi-"));
  server = createServer((socket) => {
    socket.once("data", () => {
      reads++;
      const order = reads % 2 === 0 ? [1, 2, 3] : [3, 1, 2];
      const reply =
        `private_key=${hex(9)}\nlisten_port=51820\n` +
        order.map((n) => peerBlock(n, reads).replace("10.244.3.0/24", thirdAllowed)).join("\n") +
        "\nerrno=0\n\n";
      // In small chunks, as a large reply arrives.
      for (let at = 0; at < reply.length; at += 100) socket.write(reply.slice(at, at + 100));
      socket.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(join(dir, "wgt0.sock"), resolve));
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

describe("UapiControl.read", () => {
  it("gives one fingerprint for one configuration, whatever the peer order, handshakes and counters", async () => {
    const control = new UapiControl("wgt0", dir);
    const first = await control.read();
    const second = await control.read();
    expect(first.fingerprint).toBe(second.fingerprint);
    const state = second.state();
    expect([...state.peers.keys()].sort()).toEqual([1, 2, 3].map((n) => keyFromHex(hex(n))).sort());
    expect(state.peers.get(keyFromHex(hex(3)))?.allowedIps).toEqual(["10.244.3.0/24"]);
  });

  it("gives another fingerprint when the configuration changed", async () => {
    const control = new UapiControl("wgt0", dir);
    const before = await control.read();
    thirdAllowed = "10.244.99.0/24";
    const after = await control.read();
    thirdAllowed = "10.244.3.0/24";
    expect(after.fingerprint).not.toBe(before.fingerprint);
    expect(after.state().peers.get(keyFromHex(hex(3)))?.allowedIps).toEqual(["10.244.99.0/24"]);
  });
});
