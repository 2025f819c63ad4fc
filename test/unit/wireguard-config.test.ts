// The wireguard backend's options in the network config: flannel's names, defaults and meaning;
// every bad value named by its field; and the backend as the registry and the config parser give it.
import { describe, expect, it } from "vitest";
import { backendForConfig, backendForLease, BACKENDS } from "../../src/backends/registry.js";
import {
  parseWireGuardOptions,
  WIREGUARD_MIN_MTU,
  WIREGUARD_OVERHEAD,
  type WireGuardOptions,
} from "../../src/backends/wireguard/config.js";
import { wireguardBackend } from "../../src/backends/wireguard/index.js";
import {
  autoEndpointFamily,
  isPrivateIPv6,
  tunnelDevices,
  type EndpointChoice,
} from "../../src/backends/wireguard/modes.js";
import type { BackendConfig } from "../../src/backends/backend.js";
import { JsonFieldError, type JsonObject } from "../../src/config/json-fields.js";
import { ConfigError, parseNetworkConfig } from "../../src/config/network-config.js";
import { parseIPv4 } from "../../src/ip/ipv4.js";

const PSK = "mNb7OIIXTdgW4khM7OFlzJ+UPs7lmcWHV7xjPgakMkQ=";

const DEFAULTS: WireGuardOptions = {
  listenPort: 51820,
  listenPortV6: 51821,
  mtu: undefined,
  psk: undefined,
  persistentKeepalive: 0,
  mode: "separate",
};

function parse(raw: JsonObject, warnings: string[] = []): WireGuardOptions {
  return parseWireGuardOptions(raw, warnings);
}

/** The JsonFieldError parsing `raw` throws (fails the test when it throws none or another kind). */
function fieldError(raw: JsonObject): JsonFieldError {
  try {
    parse(raw);
  } catch (error) {
    if (error instanceof JsonFieldError) return error;
    throw error;
  }
  throw new Error(`no error for ${JSON.stringify(raw)}`);
}

describe("parseWireGuardOptions", () => {
  it("fills in flannel's defaults", () => {
    const warnings: string[] = [];
    expect(parse({ Type: "wireguard" }, warnings)).toEqual(DEFAULTS);
    expect(warnings).toEqual([]);
  });

  it("reads every option, with keys in any case (as Go's decoder matches them)", () => {
    const warnings: string[] = [];
    const options = parse(
      {
        type: "WireGuard",
        listenport: 51000,
        LISTENPORTV6: 51001,
        Mtu: 1400,
        psk: `${PSK}\n`,
        persistentKeepaliveInterval: 25,
        MODE: "auto",
      },
      warnings,
    );
    expect(options).toEqual({
      listenPort: 51000,
      listenPortV6: 51001,
      mtu: 1400,
      psk: PSK,
      persistentKeepalive: 25,
      mode: "auto",
    });
    expect(warnings).toEqual([]);
  });

  it.each([
    [{ MTU: 0 }, { mtu: undefined }],
    [{ MTU: null }, { mtu: undefined }],
    [{ MTU: WIREGUARD_MIN_MTU }, { mtu: WIREGUARD_MIN_MTU }],
    [{ MTU: 65535 }, { mtu: 65535 }],
    [{ PSK: "" }, { psk: undefined }],
    [{ ListenPort: 1 }, { listenPort: 1 }],
    [{ ListenPort: 65535 }, { listenPort: 65535 }],
    [{ PersistentKeepaliveInterval: 65535 }, { persistentKeepalive: 65535 }],
    [{ Mode: "separate" }, { mode: "separate" }],
    [{ Mode: "auto" }, { mode: "auto" }],
    [{ Mode: "ipv4" }, { mode: "ipv4" }],
    [{ Mode: "ipv6" }, { mode: "ipv6" }],
    [{ Mode: null }, { mode: "separate" }],
    [{ ListenPortV6: 1 }, { listenPortV6: 1 }],
  ])("accepts %j", (raw, want) => {
    expect(parse(raw)).toEqual({ ...DEFAULTS, ...want });
  });

  it("warns about unknown keys and keys given twice", () => {
    const warnings: string[] = [];
    parse({ ListenPort: 1, listenPort: 2, Bogus: true }, warnings);
    expect(warnings).toContain('unknown field "Backend.Bogus" ignored');
    expect(warnings.some((w) => w.includes('"Backend.ListenPort" given more than once'))).toBe(true);
  });

  it.each<[string, JsonObject, string, string]>([
    ["port 0", { ListenPort: 0 }, "Backend.ListenPort", "Backend.ListenPort 0: must be from 1 to 65535"],
    [
      "port 65536",
      { ListenPort: 65536 },
      "Backend.ListenPort",
      "Backend.ListenPort 65536: must be from 1 to 65535",
    ],
    ["port text", { ListenPort: "x" }, "Backend.ListenPort", "Backend.ListenPort"],
    ["port 1.5", { ListenPort: 1.5 }, "Backend.ListenPort", "Backend.ListenPort"],
    [
      "v6 port 0",
      { ListenPortV6: 0 },
      "Backend.ListenPortV6",
      "Backend.ListenPortV6 0: must be from 1 to 65535",
    ],
    ["v6 port 65536", { ListenPortV6: 65536 }, "Backend.ListenPortV6", "Backend.ListenPortV6 65536"],
    ["v6 port text", { ListenPortV6: "x" }, "Backend.ListenPortV6", "Backend.ListenPortV6"],
    [
      "MTU too small",
      { MTU: WIREGUARD_MIN_MTU - 1 },
      "Backend.MTU",
      `Backend.MTU ${WIREGUARD_MIN_MTU - 1}: MTU`,
    ],
    ["MTU 100", { MTU: 100 }, "Backend.MTU", `must be from ${WIREGUARD_MIN_MTU} to 65535`],
    ["MTU too large", { MTU: 65536 }, "Backend.MTU", "Backend.MTU 65536"],
    ["MTU negative", { MTU: -1 }, "Backend.MTU", "Backend.MTU -1"],
    ["MTU text", { MTU: "1400" }, "Backend.MTU", "Backend.MTU"],
    ["PSK not a key", { PSK: "secret" }, "Backend.PSK", "Backend.PSK: not a pre-shared key"],
    ["PSK too short", { PSK: PSK.slice(4) }, "Backend.PSK", "wg genpsk"],
    ["PSK a number", { PSK: 5 }, "Backend.PSK", "Backend.PSK"],
    [
      "keepalive -1",
      { PersistentKeepaliveInterval: -1 },
      "Backend.PersistentKeepaliveInterval",
      "Backend.PersistentKeepaliveInterval -1: seconds from 0 (off) to 65535",
    ],
    [
      "keepalive 70000",
      { PersistentKeepaliveInterval: 70000 },
      "Backend.PersistentKeepaliveInterval",
      "Backend.PersistentKeepaliveInterval 70000",
    ],
    [
      "keepalive text",
      { PersistentKeepaliveInterval: "25s" },
      "Backend.PersistentKeepaliveInterval",
      "Backend.PersistentKeepaliveInterval",
    ],
    [
      "Mode bogus",
      { Mode: "bogus" },
      "Backend.Mode",
      'Backend.Mode "bogus": no valid Mode; one of "separate"',
    ],
    // Go compares the text as it is: flannel refuses these too ("no valid Mode configured").
    ["Mode in capitals", { Mode: "IPv6" }, "Backend.Mode", 'Backend.Mode "IPv6": no valid Mode'],
    ["Mode Separate", { Mode: "Separate" }, "Backend.Mode", 'Backend.Mode "Separate": no valid Mode'],
    ["Mode empty", { Mode: "" }, "Backend.Mode", 'Backend.Mode "": no valid Mode'],
    ["Mode a number", { Mode: 4 }, "Backend.Mode", "Backend.Mode"],
    [
      "ListenPortV6 0",
      { ListenPortV6: 0 },
      "Backend.ListenPortV6",
      "Backend.ListenPortV6 0: must be from 1 to 65535 (default 51821)",
    ],
  ])("refuses %s, naming the field", (_name, raw, field, message) => {
    const error = fieldError(raw);
    expect(error.field).toBe(field);
    expect(error.message).toContain(field);
    expect(error.message).toContain(message);
  });

  it.each([
    ["without its padding", PSK.slice(0, 43)],
    ["in base64url", PSK.replace("+", "-")],
    ["with a character missing", PSK.slice(1)],
  ])("never shows a refused PSK (a secret, nearly right when %s) in the message", (_name, psk) => {
    const error = fieldError({ PSK: psk });
    expect(error.message).toContain("Backend.PSK");
    expect(error.message).not.toContain(psk.slice(0, 20));
  });
});

describe("the wireguard backend in the registry and the network config", () => {
  const external = {
    name: "eth0",
    index: 2,
    mtu: 1500,
    ifaceIp: parseIPv4("198.18.0.1"),
    publicIp: parseIPv4("198.18.0.1"),
  };
  const config = (backend: string) =>
    parseNetworkConfig(`{"Network":"10.244.0.0/16","Backend":${backend}}`).config.backend;

  it.each(["wireguard", "WireGuard", "WIREGUARD"])("backendForConfig(%j) finds it", (type) => {
    expect(backendForConfig(type)).toBe(wireguardBackend);
  });

  it("is registered once, and its leases carry BackendType wireguard", () => {
    expect(BACKENDS.filter((b) => b.type === "wireguard")).toEqual([wireguardBackend]);
    expect(backendForLease("wireguard")).toBe(wireguardBackend);
  });

  it("gives pods the interface's MTU less WireGuard's 80 bytes, or the configured MTU less 80", () => {
    expect(WIREGUARD_OVERHEAD).toBe(80);
    expect(config('{"Type":"WireGuard"}').mtu({ ...external, mtu: 1500 })).toBe(1420);
    expect(config('{"Type":"WireGuard"}').mtu({ ...external, mtu: 9001 })).toBe(8921);
    expect(config('{"Type":"WireGuard","MTU":9000}').mtu({ ...external, mtu: 1500 })).toBe(8920);
  });

  it("shows its options with defaults filled in, and never the PSK", () => {
    const backend = config(`{"Type":"wireguard","PSK":"${PSK}","PersistentKeepaliveInterval":25}`);
    expect(backend.type).toBe("wireguard");
    expect(backend.options).toEqual({
      ListenPort: 51820,
      ListenPortV6: 51821,
      MTU: null,
      PSK: expect.stringMatching(/^set \(sha256 [0-9a-f]{8}\)$/) as unknown,
      PersistentKeepaliveInterval: 25,
      Mode: "separate",
    });
    // Another PSK is another config (the agent applies it at once); the same one is the same.
    const other = config(
      `{"Type":"wireguard","PSK":"${PSK.replace(/^./, PSK.startsWith("A") ? "B" : "A")}"}`,
    );
    expect(other.options.PSK).not.toBe(backend.options.PSK);
    expect(config(`{"Type":"wireguard","PSK":"${PSK}"}`).options.PSK).toBe(backend.options.PSK);
    const text = JSON.stringify(backend.options);
    expect(text).not.toContain(PSK);
    expect(text).not.toContain(PSK.slice(0, 20));
    expect(config('{"Type":"wireguard"}').options.PSK).toBeNull();
  });

  it("turns a bad option into a config error naming the field", () => {
    let caught: unknown;
    try {
      config('{"Type":"wireguard","PSK":"not-a-key"}');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).field).toBe("Backend.PSK");
  });
});

describe("Mode: the devices of a node, by the network's families", () => {
  const options = (mode: WireGuardOptions["mode"]) => ({ mode, listenPort: 51820, listenPortV6: 51821 });
  const v4 = { name: "flannel-wg", listenPort: 51820, carries: [4], endpoints: 4 };
  const v6 = { name: "flannel-wg-v6", listenPort: 51821, carries: [6], endpoints: 6 };
  const one = (carries: number[], endpoints: number | "auto") => ({
    name: "flannel-wg",
    listenPort: 51820,
    carries,
    endpoints,
  });

  it.each<[WireGuardOptions["mode"], { ipv4: boolean; ipv6: boolean }, unknown[]]>([
    ["separate", { ipv4: true, ipv6: false }, [v4]],
    ["separate", { ipv4: true, ipv6: true }, [v4, v6]],
    ["separate", { ipv4: false, ipv6: true }, [v6]],
    ["auto", { ipv4: true, ipv6: false }, [one([4], "auto")]],
    ["auto", { ipv4: true, ipv6: true }, [one([4, 6], "auto")]],
    ["auto", { ipv4: false, ipv6: true }, [one([6], "auto")]],
    ["ipv4", { ipv4: true, ipv6: false }, [one([4], 4)]],
    ["ipv4", { ipv4: true, ipv6: true }, [one([4, 6], 4)]],
    ["ipv6", { ipv4: true, ipv6: true }, [one([4, 6], 6)]],
    ["ipv6", { ipv4: false, ipv6: true }, [one([6], 6)]],
  ])("%s with %j", (mode, families, want) => {
    expect(tunnelDevices(options(mode), families)).toEqual(want);
  });

  it.each<[WireGuardOptions["mode"], { ipv4: boolean; ipv6: boolean }, string]>([
    ["ipv6", { ipv4: true, ipv6: false }, 'Backend.Mode "ipv6": peers are reached at their PublicIPv6'],
    ["ipv4", { ipv4: false, ipv6: true }, 'Backend.Mode "ipv4": peers are reached at their IPv4 PublicIP'],
  ])("refuses %s with %j, naming Backend.Mode", (mode, families, message) => {
    let caught: unknown;
    try {
      tunnelDevices(options(mode), families);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(JsonFieldError);
    expect((caught as JsonFieldError).field).toBe("Backend.Mode");
    expect((caught as JsonFieldError).message).toContain(message);
  });

  it("is what the config's checkFamilies and prepare refuse", async () => {
    const backend = parseNetworkConfig(
      '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"wireguard","Mode":"ipv6"}}',
    ).config.backend as BackendConfig & { checkFamilies(f: { ipv4: boolean; ipv6: boolean }): void };
    expect(() => backend.checkFamilies({ ipv4: true, ipv6: false })).toThrow(JsonFieldError);
    expect(() => backend.checkFamilies({ ipv4: true, ipv6: true })).not.toThrow();
    await expect(
      backend.prepare({
        families: { ipv4: true, ipv6: false },
        stateDir: "/nonexistent",
        existingLink: () => Promise.resolve(undefined),
        txChecksumOffload: true,
        nodeBinding: "node-a",
      }),
    ).rejects.toThrow('Backend.Mode "ipv6"');
  });
});

describe("Mode auto: the underlay family of each peer, as flannel's selectMode picks it", () => {
  const ip = parseIPv4;
  it.each<[string, EndpointChoice, 4 | 6 | undefined]>([
    [
      "peer without IPv6",
      { peerIPv4: ip("10.0.0.2"), peerIPv6: undefined, localIPv4: ip("10.0.0.1"), localIPv6: "2001:db8::1" },
      4,
    ],
    [
      "peer's IPv4 public",
      {
        peerIPv4: ip("198.18.0.2"),
        peerIPv6: "2001:db8::2",
        localIPv4: ip("198.18.0.1"),
        localIPv6: "2001:db8::1",
      },
      4,
    ],
    [
      "private IPv4, public IPv6 both ends",
      {
        peerIPv4: ip("10.0.0.2"),
        peerIPv6: "2001:db8::2",
        localIPv4: ip("10.0.0.1"),
        localIPv6: "2001:db8::1",
      },
      6,
    ],
    [
      "172.16/12 is private",
      {
        peerIPv4: ip("172.31.0.2"),
        peerIPv6: "2001:db8::2",
        localIPv4: ip("172.31.0.1"),
        localIPv6: "2001:db8::1",
      },
      6,
    ],
    [
      "192.168/16 is private",
      {
        peerIPv4: ip("192.168.1.2"),
        peerIPv6: "2001:db8::2",
        localIPv4: ip("192.168.1.1"),
        localIPv6: "2001:db8::1",
      },
      6,
    ],
    [
      "private IPv4, peer's IPv6 a ULA",
      { peerIPv4: ip("10.0.0.2"), peerIPv6: "fd00::2", localIPv4: ip("10.0.0.1"), localIPv6: "2001:db8::1" },
      4,
    ],
    [
      "private IPv4, own IPv6 a ULA",
      { peerIPv4: ip("10.0.0.2"), peerIPv6: "2001:db8::2", localIPv4: ip("10.0.0.1"), localIPv6: "fc00::1" },
      4,
    ],
    [
      "this node without IPv6",
      { peerIPv4: ip("10.0.0.2"), peerIPv6: "2001:db8::2", localIPv4: ip("10.0.0.1"), localIPv6: undefined },
      4,
    ],
    // flannel would aim at 0.0.0.0 here; twill reaches them over IPv6.
    [
      "an IPv6-only peer",
      { peerIPv4: 0, peerIPv6: "fd00::2", localIPv4: ip("10.0.0.1"), localIPv6: "fd00::1" },
      6,
    ],
    [
      "an IPv6-only node",
      { peerIPv4: ip("198.18.0.2"), peerIPv6: "fd00::2", localIPv4: 0, localIPv6: "fd00::1" },
      6,
    ],
    [
      "nothing in common",
      { peerIPv4: 0, peerIPv6: "fd00::2", localIPv4: ip("10.0.0.1"), localIPv6: undefined },
      undefined,
    ],
  ])("%s", (_name, choice, want) => {
    expect(autoEndpointFamily(choice)).toBe(want);
  });

  it.each<[string, boolean]>([
    ["fc00::1", true],
    ["fdff:ffff::1", true],
    ["fe80::1", false],
    ["2001:db8::1", false],
    ["::1", false],
  ])("IPv6 %s private: %s", (text, want) => {
    expect(isPrivateIPv6(text)).toBe(want);
  });
});

describe("the wireguard backend with IPv6 in the network config", () => {
  it.each([
    ["dual-stack", '"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"'],
    ["IPv6-only", '"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"'],
  ])("accepts a %s network", (_name, fields) => {
    const { config } = parseNetworkConfig(`{${fields},"Backend":{"Type":"wireguard"}}`);
    expect(config.backend.type).toBe("wireguard");
    expect(config.ipv6).toBeDefined();
    expect(wireguardBackend.supportsIPv6).toBe(true);
  });

  it("keeps the MTU at MTU − 80 with IPv6 on (80 already counts IPv6's outer header)", () => {
    const backend = parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}').config
      .backend;
    const external = { name: "eth0", index: 2, mtu: 1500, ifaceIp: 0, publicIp: 0 };
    expect(backend.mtu(external, true)).toBe(1420);
    expect(backend.mtu(external, false)).toBe(1420);
  });
});
