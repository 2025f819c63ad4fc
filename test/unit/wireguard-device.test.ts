// WireGuard's device configuration as data: the change from what the device has to what twill wants,
// and its two wire forms (wireguard-go's UAPI, `wg`'s dump and `wg set` arguments).
import { describe, expect, it } from "vitest";
import {
  applyChange,
  deviceChange,
  encodeUapiSet,
  parseUapiGet,
  parseWgDump,
  uapiErrno,
  wgSetArgs,
  type DeviceChange,
  type DevicePeer,
  type DeviceState,
  type WantedDevice,
  type WantedPeer,
} from "../../src/backends/wireguard/device-state.js";

/** A key whose 32 bytes are all `n`: its hex is `n` 32 times, easy to read in expected text. */
const key = (n: number): string => Buffer.alloc(32, n).toString("base64");
const hex = (n: number): string => Buffer.alloc(32, n).toString("hex");
const ZERO = "0".repeat(64);

const PRIVATE = key(1);

function want(n: number, over: Partial<WantedPeer> = {}): WantedPeer {
  return {
    publicKey: key(n),
    endpoint: `198.18.0.${n}:51820`,
    allowedIps: [`10.244.${n}.0/24`],
    presharedKey: undefined,
    keepalive: 0,
    ...over,
  };
}

/** What the device has for a peer set as `want(n)`, plus its figures. */
function have(n: number, over: Partial<DevicePeer> = {}): DevicePeer {
  return {
    ...want(n),
    lastHandshakeMs: 1_700_000_000_000,
    rxBytes: 100,
    txBytes: 200,
    ...over,
  };
}

function wanted(peers: WantedPeer[], over: Partial<WantedDevice> = {}): WantedDevice {
  return {
    privateKey: PRIVATE,
    listenPort: 51820,
    peers: new Map(peers.map((p) => [p.publicKey, p])),
    ...over,
  };
}

function actual(peers: DevicePeer[], over: Partial<DeviceState> = {}): DeviceState {
  return {
    privateKey: PRIVATE,
    listenPort: 51820,
    peers: new Map(peers.map((p) => [p.publicKey, p])),
    ...over,
  };
}

describe("deviceChange", () => {
  const none = new Set<string>();

  it.each<[string, WantedDevice, DeviceState, ReadonlySet<string> | "all", DeviceChange | undefined]>([
    ["nothing to do", wanted([want(2), want(3)]), actual([have(2), have(3)]), "all", undefined],
    [
      "nothing to do when allowed IPs only come in another order",
      wanted([want(2, { allowedIps: ["10.244.2.0/24", "10.244.20.0/24"] })]),
      actual([have(2, { allowedIps: ["10.244.20.0/24", "10.244.2.0/24"] })]),
      "all",
      undefined,
    ],
    [
      "a missing peer",
      wanted([want(2), want(3)]),
      actual([have(2)]),
      none,
      { peers: [{ ...want(3), why: "missing", setEndpoint: true }] },
    ],
    [
      "an extra peer is removed",
      wanted([want(2)]),
      actual([have(2), have(9)]),
      none,
      { peers: [{ publicKey: key(9), remove: true }] },
    ],
    [
      "allowed IPs changed",
      wanted([want(2)]),
      actual([have(2, { allowedIps: ["10.244.9.0/24"] })]),
      none,
      { peers: [{ ...want(2), why: "allowed IPs 10.244.9.0/24", setEndpoint: false }] },
    ],
    [
      "allowed IPs gone",
      wanted([want(2)]),
      actual([have(2, { allowedIps: [] })]),
      none,
      { peers: [{ ...want(2), why: "allowed IPs none", setEndpoint: false }] },
    ],
    [
      "a PSK added",
      wanted([want(2, { presharedKey: key(7) })]),
      actual([have(2)]),
      none,
      { peers: [{ ...want(2, { presharedKey: key(7) }), why: "pre-shared key", setEndpoint: false }] },
    ],
    [
      "a PSK removed",
      wanted([want(2)]),
      actual([have(2, { presharedKey: key(7) })]),
      none,
      { peers: [{ ...want(2), why: "pre-shared key", setEndpoint: false }] },
    ],
    [
      "another PSK",
      wanted([want(2, { presharedKey: key(8) })]),
      actual([have(2, { presharedKey: key(7) })]),
      none,
      { peers: [{ ...want(2, { presharedKey: key(8) }), why: "pre-shared key", setEndpoint: false }] },
    ],
    [
      "keepalive changed",
      wanted([want(2, { keepalive: 25 })]),
      actual([have(2)]),
      none,
      { peers: [{ ...want(2, { keepalive: 25 }), why: "keepalive 0", setEndpoint: false }] },
    ],
    [
      "a roamed endpoint is kept when twill did not set it this time",
      wanted([want(2)]),
      actual([have(2, { endpoint: "203.0.113.9:40000" })]),
      none,
      undefined,
    ],
    [
      "a roamed endpoint is kept when only other peers' endpoints are due",
      wanted([want(2)]),
      actual([have(2, { endpoint: "203.0.113.9:40000" })]),
      new Set([key(3)]),
      undefined,
    ],
    [
      "an endpoint is set when the peer's lease changed it",
      wanted([want(2)]),
      actual([have(2, { endpoint: "203.0.113.9:40000" })]),
      new Set([key(2)]),
      { peers: [{ ...want(2), why: "endpoint 203.0.113.9:40000", setEndpoint: true }] },
    ],
    [
      'every endpoint is set with "all"',
      wanted([want(2), want(3)]),
      actual([have(2, { endpoint: "203.0.113.9:40000" }), have(3)]),
      "all",
      { peers: [{ ...want(2), why: "endpoint 203.0.113.9:40000", setEndpoint: true }] },
    ],
    [
      "an endpoint is set where the device has none",
      wanted([want(2)]),
      actual([have(2, { endpoint: undefined })]),
      none,
      { peers: [{ ...want(2), why: "endpoint none", setEndpoint: true }] },
    ],
    [
      "a roamed endpoint stays when something else about the peer changes",
      wanted([want(2, { keepalive: 25 })]),
      actual([have(2, { endpoint: "203.0.113.9:40000" })]),
      none,
      { peers: [{ ...want(2, { keepalive: 25 }), why: "keepalive 0", setEndpoint: false }] },
    ],
    [
      "a fresh wireguard-go: no private key, port 0",
      wanted([]),
      actual([], { privateKey: undefined, listenPort: 0 }),
      none,
      { privateKey: PRIVATE, listenPort: 51820, peers: [] },
    ],
    [
      "another private key",
      wanted([want(2)]),
      actual([have(2)], { privateKey: key(5) }),
      none,
      { privateKey: PRIVATE, peers: [] },
    ],
    [
      "another listen port",
      wanted([want(2)], { listenPort: 51999 }),
      actual([have(2)]),
      none,
      { listenPort: 51999, peers: [] },
    ],
    [
      "several changes at once, wanted peers first, then removals",
      wanted([want(2), want(3, { keepalive: 25 }), want(4)], { listenPort: 51999 }),
      actual([have(9), have(3), have(8)]),
      none,
      {
        listenPort: 51999,
        peers: [
          { ...want(2), why: "missing", setEndpoint: true },
          { ...want(3, { keepalive: 25 }), why: "keepalive 0", setEndpoint: false },
          { ...want(4), why: "missing", setEndpoint: true },
          { publicKey: key(9), remove: true },
          { publicKey: key(8), remove: true },
        ],
      },
    ],
  ])("%s", (_name, w, a, endpointsFrom, change) => {
    expect(deviceChange(w, a, endpointsFrom)).toEqual(change);
  });
});

describe("encodeUapiSet", () => {
  it("says a change as wireguard-go's set request: keys in hex, no PSK as zeros, ending with a blank line", () => {
    const change: DeviceChange = {
      privateKey: key(1),
      listenPort: 51820,
      peers: [
        { ...want(2), why: "missing" },
        {
          ...want(3, {
            presharedKey: key(7),
            keepalive: 25,
            allowedIps: ["10.244.3.0/24", "10.244.30.0/24"],
          }),
          why: "keepalive 0",
        },
        { publicKey: key(4), remove: true },
      ],
    };
    expect(encodeUapiSet(change)).toBe(
      [
        "set=1",
        `private_key=${hex(1)}`,
        "listen_port=51820",
        `public_key=${hex(2)}`,
        "endpoint=198.18.0.2:51820",
        `preshared_key=${ZERO}`,
        "persistent_keepalive_interval=0",
        "replace_allowed_ips=true",
        "allowed_ip=10.244.2.0/24",
        `public_key=${hex(3)}`,
        "endpoint=198.18.0.3:51820",
        `preshared_key=${hex(7)}`,
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=10.244.3.0/24",
        "allowed_ip=10.244.30.0/24",
        `public_key=${hex(4)}`,
        "remove=true",
        "",
        "",
      ].join("\n"),
    );
  });

  it("leaves out the key and port when they stay", () => {
    expect(encodeUapiSet({ peers: [{ publicKey: key(4), remove: true }] })).toBe(
      `set=1\npublic_key=${hex(4)}\nremove=true\n\n`,
    );
  });
});

/** A reply to get=1 as wireguard-go writes it (device/uapi.go's IpcGetOperation). */
const UAPI_GET_REPLY = [
  `private_key=${hex(1)}`,
  "listen_port=51820",
  `public_key=${hex(2)}`,
  `preshared_key=${ZERO}`,
  "protocol_version=1",
  "endpoint=198.18.0.2:51820",
  "last_handshake_time_sec=1763812800",
  "last_handshake_time_nsec=123456789",
  "tx_bytes=92",
  "rx_bytes=148",
  "persistent_keepalive_interval=0",
  "allowed_ip=10.244.2.0/24",
  `public_key=${hex(3)}`,
  `preshared_key=${hex(7)}`,
  "protocol_version=1",
  "last_handshake_time_sec=0",
  "last_handshake_time_nsec=0",
  "tx_bytes=0",
  "rx_bytes=0",
  "persistent_keepalive_interval=25",
  "allowed_ip=10.244.3.0/24",
  "allowed_ip=10.244.30.0/24",
  "errno=0",
  "",
  "",
].join("\n");

describe("parseUapiGet", () => {
  it("reads wireguard-go's reply", () => {
    expect(parseUapiGet(UAPI_GET_REPLY)).toEqual({
      privateKey: key(1),
      listenPort: 51820,
      peers: new Map([
        [
          key(2),
          {
            publicKey: key(2),
            endpoint: "198.18.0.2:51820",
            allowedIps: ["10.244.2.0/24"],
            presharedKey: undefined,
            keepalive: 0,
            lastHandshakeMs: 1_763_812_800_123,
            rxBytes: 148,
            txBytes: 92,
          },
        ],
        [
          key(3),
          {
            publicKey: key(3),
            endpoint: undefined,
            allowedIps: ["10.244.3.0/24", "10.244.30.0/24"],
            presharedKey: key(7),
            keepalive: 25,
            lastHandshakeMs: 0,
            rxBytes: 0,
            txBytes: 0,
          },
        ],
      ]),
    });
  });

  it("reads a fresh wireguard-go: no key (none or zeros), port 0, no peers", () => {
    expect(parseUapiGet("listen_port=0\nerrno=0\n\n")).toEqual({
      privateKey: undefined,
      listenPort: 0,
      peers: new Map(),
    });
    expect(parseUapiGet(`private_key=${ZERO}\nlisten_port=0\nerrno=0\n\n`).privateKey).toBeUndefined();
  });

  it("ignores keys it does not know (fwmark, protocol_version)", () => {
    expect(parseUapiGet(`private_key=${hex(1)}\nlisten_port=1\nfwmark=51\nerrno=0\n\n`)).toEqual({
      privateKey: key(1),
      listenPort: 1,
      peers: new Map(),
    });
  });

  it.each([
    [
      "no errno line",
      UAPI_GET_REPLY.replace("errno=0\n", ""),
      "not a WireGuard configuration reply: no errno line",
    ],
    ["an empty reply", "", "not a WireGuard configuration reply: no errno line"],
    ["errno nonzero", "errno=1\n\n", "WireGuard answered errno 1 to get"],
    ["a line without =", "hello\nerrno=0\n\n", 'not a WireGuard configuration reply: line "hello"'],
  ])("throws on %s", (_name, reply, message) => {
    expect(() => parseUapiGet(reply)).toThrow(message);
  });
});

describe("uapiErrno", () => {
  it.each<[string, number | undefined]>([
    ["errno=0\n\n", 0],
    [UAPI_GET_REPLY, 0],
    ["errno=22\n\n", 22],
    ["errno=-1\n\n", -1],
    ["listen_port=1\nerrno=5\n\n", 5],
    // Not complete yet: the blank line has not come.
    ["errno=0\n", undefined],
    ["errno=0", undefined],
    ["", undefined],
    [`private_key=${hex(1)}\n`, undefined],
    // Not an errno line of its own.
    ["my_errno=0\n\n", undefined],
  ])("%j → %s", (reply, errno) => {
    expect(uapiErrno(reply)).toBe(errno);
  });
});

describe("parseWgDump", () => {
  it("reads `wg show flannel-wg dump`, with (none) and off for nothing", () => {
    const dump =
      [
        [key(1), key(11), "51820", "off"],
        [key(2), "(none)", "198.18.0.2:51820", "10.244.2.0/24", "1763812800", "148", "92", "off"],
        [key(3), key(7), "(none)", "10.244.3.0/24,10.244.30.0/24", "0", "0", "0", "25"],
        [key(4), "(none)", "(none)", "(none)", "0", "0", "0", "off"],
      ]
        .map((fields) => fields.join("\t"))
        .join("\n") + "\n";
    expect(parseWgDump(dump)).toEqual({
      privateKey: key(1),
      listenPort: 51820,
      peers: new Map([
        [
          key(2),
          {
            publicKey: key(2),
            presharedKey: undefined,
            endpoint: "198.18.0.2:51820",
            allowedIps: ["10.244.2.0/24"],
            lastHandshakeMs: 1_763_812_800_000,
            rxBytes: 148,
            txBytes: 92,
            keepalive: 0,
          },
        ],
        [
          key(3),
          {
            publicKey: key(3),
            presharedKey: key(7),
            endpoint: undefined,
            allowedIps: ["10.244.3.0/24", "10.244.30.0/24"],
            lastHandshakeMs: 0,
            rxBytes: 0,
            txBytes: 0,
            keepalive: 25,
          },
        ],
        [
          key(4),
          {
            publicKey: key(4),
            presharedKey: undefined,
            endpoint: undefined,
            allowedIps: [],
            lastHandshakeMs: 0,
            rxBytes: 0,
            txBytes: 0,
            keepalive: 0,
          },
        ],
      ]),
    });
  });

  it("reads a device without a key yet", () => {
    expect(parseWgDump(`(none)\t(none)\t0\toff\n`)).toEqual({
      privateKey: undefined,
      listenPort: 0,
      peers: new Map(),
    });
  });

  it.each([
    ["nothing", ""],
    ["a short first line", `${key(1)}\t${key(11)}\n`],
  ])("throws on %s", (_name, text) => {
    expect(() => parseWgDump(text)).toThrow("not a wg dump");
  });
});

describe("wgSetArgs", () => {
  const files = new Map<string, string>();
  const keyFile = (k: string): string => {
    const known = files.get(k);
    if (known !== undefined) return known;
    const path = `/state/.wg-key-${files.size}`;
    files.set(k, path);
    return path;
  };

  it("says a change as `wg set` arguments, keys through files, no PSK as /dev/null", () => {
    files.clear();
    const change: DeviceChange = {
      privateKey: key(1),
      listenPort: 51820,
      peers: [
        { ...want(2), why: "missing" },
        {
          ...want(3, {
            presharedKey: key(7),
            keepalive: 25,
            allowedIps: ["10.244.3.0/24", "10.244.30.0/24"],
          }),
          why: "keepalive 0",
        },
        { publicKey: key(4), remove: true },
      ],
    };
    expect(wgSetArgs("flannel-wg", change, keyFile)).toEqual([
      "set",
      "flannel-wg",
      "listen-port",
      "51820",
      "private-key",
      "/state/.wg-key-0",
      "peer",
      key(2),
      "endpoint",
      "198.18.0.2:51820",
      "allowed-ips",
      "10.244.2.0/24",
      "persistent-keepalive",
      "off",
      "preshared-key",
      "/dev/null",
      "peer",
      key(3),
      "endpoint",
      "198.18.0.3:51820",
      "allowed-ips",
      "10.244.3.0/24,10.244.30.0/24",
      "persistent-keepalive",
      "25",
      "preshared-key",
      "/state/.wg-key-1",
      "peer",
      key(4),
      "remove",
    ]);
    expect([...files.keys()]).toEqual([key(1), key(7)]);
  });

  it("is just the device for a change of nothing", () => {
    expect(wgSetArgs("flannel-wg", { peers: [] }, keyFile)).toEqual(["set", "flannel-wg"]);
  });
});

describe("a peer change that keeps the device's endpoint (setEndpoint false)", () => {
  const change: DeviceChange = {
    peers: [
      {
        publicKey: key(2),
        endpoint: "198.18.0.2:51820",
        allowedIps: ["10.244.2.0/24"],
        presharedKey: undefined,
        keepalive: 25,
        why: "keepalive 0",
        setEndpoint: false,
      },
    ],
  };

  it("has no endpoint line in the UAPI request", () => {
    const text = encodeUapiSet(change);
    expect(text).toContain("persistent_keepalive_interval=25\n");
    expect(text).not.toContain("endpoint=");
  });

  it("has no endpoint argument for wg", () => {
    const args = wgSetArgs("flannel-wg", change, () => "/k");
    expect(args).toContain("persistent-keepalive");
    expect(args).not.toContain("endpoint");
  });
});

describe("applyChange", () => {
  it("gives the device as the change leaves it: peers set or removed, a kept endpoint, counters as they were", () => {
    const before = actual([have(2, { endpoint: "203.0.113.9:40000", rxBytes: 7 }), have(9)]);
    const after = applyChange(before, {
      listenPort: 51999,
      peers: [
        { ...want(2, { keepalive: 25 }), why: "keepalive 0", setEndpoint: false },
        { ...want(3), why: "missing", setEndpoint: true },
        { publicKey: key(9), remove: true },
      ],
    });
    expect(after.listenPort).toBe(51999);
    expect(after.privateKey).toBe(before.privateKey);
    expect([...after.peers.keys()].sort()).toEqual([key(2), key(3)].sort());
    expect(after.peers.get(key(2))).toMatchObject({
      endpoint: "203.0.113.9:40000",
      keepalive: 25,
      rxBytes: 7,
    });
    expect(after.peers.get(key(3))).toMatchObject({
      endpoint: want(3).endpoint,
      rxBytes: 0,
      lastHandshakeMs: 0,
    });
    // And nothing is left to change against what was wanted.
    expect(
      deviceChange(wanted([want(2, { keepalive: 25 }), want(3)], { listenPort: 51999 }), after, new Set()),
    ).toBeUndefined();
  });
});
