import { formatCidr6, formatIPv6 } from "../../src/ip/ipv6.js";
import { describe, it, expect } from "vitest";
import {
  BACKEND_NOT_SET_WARNING,
  ConfigError,
  parseNetworkConfig,
  type NetworkConfig,
} from "../../src/config/network-config.js";
import { formatCidr, formatIPv4 } from "../../src/ip/ipv4.js";
import { foldKey, resolveFields } from "../../src/config/json-fields.js";

/** Builds config text from a Network plus extra top-level fields; Backend defaults to vxlan. */
function cfg(fields: Record<string, unknown>): string {
  return JSON.stringify({ Network: "10.0.0.0/16", Backend: { Type: "vxlan" }, ...fields });
}

function parseError(text: string): ConfigError {
  try {
    parseNetworkConfig(text);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`expected a ConfigError for ${text}`);
}

/** vxlan with every option at flannel's default, as BackendConfig.options shows it. */
const VXLAN_DEFAULTS = { VNI: 1, Port: 8472, MTU: null, GBP: false, Learning: false, DirectRouting: false };

/** The backend part of a config: its type and its options with defaults filled in. */
function backendOf(config: NetworkConfig): { type: string; options: Readonly<Record<string, unknown>> } {
  return { type: config.backend.type, options: config.backend.options };
}

/** The IPv4 part of a config as text, for readable expectations. */
function ipv4Summary(config: NetworkConfig): {
  network: string;
  subnetLen: number;
  min: string;
  max: string;
} {
  return {
    network: formatCidr(config.network),
    subnetLen: config.subnetLen,
    min: formatIPv4(config.subnetMin),
    max: formatIPv4(config.subnetMax),
  };
}

describe("parseNetworkConfig: defaults (flannel's CheckNetworkConfig)", () => {
  it.each([
    // [Network, SubnetLen, SubnetMin, SubnetMax] → derived
    ["10.3.0.0/16", undefined, undefined, undefined, "10.3.0.0/16", 24, "10.3.1.0", "10.3.255.0"],
    ["10.244.0.0/16", undefined, undefined, undefined, "10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0"],
    ["10.0.0.0/8", undefined, undefined, undefined, "10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"],
    ["10.4.0.0/22", undefined, undefined, undefined, "10.4.0.0/22", 24, "10.4.1.0", "10.4.3.0"],
    ["10.5.0.0/24", undefined, undefined, undefined, "10.5.0.0/24", 26, "10.5.0.64", "10.5.0.192"],
    ["10.6.0.0/28", undefined, undefined, undefined, "10.6.0.0/28", 30, "10.6.0.4", "10.6.0.12"],
    ["10.7.0.0/23", undefined, undefined, undefined, "10.7.0.0/23", 25, "10.7.0.128", "10.7.1.128"],
    // host bits are dropped, as Go's net.ParseCIDR does
    ["10.5.1.7/16", undefined, undefined, undefined, "10.5.0.0/16", 24, "10.5.1.0", "10.5.255.0"],
    // explicit SubnetLen, 0 = unset
    ["10.0.0.0/16", 20, undefined, undefined, "10.0.0.0/16", 20, "10.0.16.0", "10.0.240.0"],
    ["10.0.0.0/16", 0, undefined, undefined, "10.0.0.0/16", 24, "10.0.1.0", "10.0.255.0"],
    ["10.0.0.0/16", 18, undefined, undefined, "10.0.0.0/16", 18, "10.0.64.0", "10.0.192.0"],
    ["10.0.0.0/16", 30, undefined, undefined, "10.0.0.0/16", 30, "10.0.0.4", "10.0.255.252"],
    // explicit bounds; "0.0.0.0" = unset
    ["10.0.0.0/16", undefined, "10.0.0.0", "10.0.255.0", "10.0.0.0/16", 24, "10.0.0.0", "10.0.255.0"],
    ["10.0.0.0/16", undefined, "10.0.10.0", "10.0.20.0", "10.0.0.0/16", 24, "10.0.10.0", "10.0.20.0"],
    ["10.0.0.0/16", undefined, "0.0.0.0", "0.0.0.0", "10.0.0.0/16", 24, "10.0.1.0", "10.0.255.0"],
    ["10.0.0.0/16", undefined, "10.0.7.0", "10.0.7.0", "10.0.0.0/16", 24, "10.0.7.0", "10.0.7.0"],
    // a /28 with an explicit /30: exactly four subnets; the first is skipped
    ["10.9.0.0/28", 30, undefined, undefined, "10.9.0.0/28", 30, "10.9.0.4", "10.9.0.12"],
    // the whole IPv4 space wraps correctly
    ["0.0.0.0/0", undefined, undefined, undefined, "0.0.0.0/0", 24, "0.0.1.0", "255.255.255.0"],
  ])(
    "Network %s SubnetLen %s Min %s Max %s → %s /%i %s..%s",
    (network, len, min, max, eNet, eLen, eMin, eMax) => {
      const { config } = parseNetworkConfig(
        cfg({ Network: network, SubnetLen: len, SubnetMin: min, SubnetMax: max }),
      );
      expect(ipv4Summary(config)).toEqual({ network: eNet, subnetLen: eLen, min: eMin, max: eMax });
    },
  );

  it("a minimal vxlan config has no warnings and vxlan defaults", () => {
    const { config, warnings } = parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}');
    expect(warnings).toEqual([]);
    expect(backendOf(config)).toEqual({ type: "vxlan", options: VXLAN_DEFAULTS });
  });

  it("the flannel manifest's net-conf.json is accepted", () => {
    const text =
      '{\n  "Network": "10.244.0.0/16",\n  "EnableNFTables": false,\n  "Backend": {\n    "Type": "vxlan"\n  }\n}';
    const { config, warnings } = parseNetworkConfig(text);
    expect(warnings).toEqual([]);
    expect(formatCidr(config.network)).toBe("10.244.0.0/16");
  });

  it.each([
    ["EnableIPv4", true],
    ["EnableIPv6", false],
    ["EnableNFTables", false],
  ])("%s may be given explicitly as its default (%s)", (field, value) => {
    expect(parseNetworkConfig(cfg({ [field]: value })).warnings).toEqual([]);
  });

  it.each([["EnableIPv4"], ["EnableIPv6"], ["EnableNFTables"], ["SubnetLen"], ["SubnetMin"], ["SubnetMax"]])(
    "%s: null means not set, as in Go",
    (field) => {
      const { config } = parseNetworkConfig(cfg({ [field]: null }));
      expect(ipv4Summary(config)).toEqual({
        network: "10.0.0.0/16",
        subnetLen: 24,
        min: "10.0.1.0",
        max: "10.0.255.0",
      });
    },
  );

  it("IPv6 defaults as flannel's TestIPv6ConfigDefaults: /64 subnets, the first and last skipped", () => {
    const { config } = parseNetworkConfig(
      '{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false, "Backend": {"Type": "vxlan"} }',
    );
    expect(config.enableIPv4).toBe(false);
    expect(config.ipv6 && formatCidr6(config.ipv6.network)).toBe("fc00::/48");
    expect(config.ipv6 && formatIPv6(config.ipv6.subnetMin)).toBe("fc00:0:0:1::");
    expect(config.ipv6 && formatIPv6(config.ipv6.subnetMax)).toBe("fc00:0:0:ffff::");
    expect(config.ipv6?.subnetLen).toBe(64);
    // IPv6-only: flannel's empty IPv4 values
    expect(formatCidr(config.network)).toBe("0.0.0.0/0");
    expect(config.subnetLen).toBe(0);
  });

  it("IPv6 overrides as flannel's TestIPv6ConfigOverrides", () => {
    const { config } = parseNetworkConfig(
      '{ "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::", "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "enableIPv4": false, "Backend": {"Type": "host-gw"} }',
    );
    expect(config.ipv6 && formatIPv6(config.ipv6.subnetMin)).toBe("fc00:0:0:1::");
    expect(config.ipv6 && formatIPv6(config.ipv6.subnetMax)).toBe("fc00:0:0:f::");
    expect(config.ipv6?.subnetLen).toBe(124);
  });

  it.each([
    ["fd00:10:244::/56", 64, "fd00:10:244:1::", "fd00:10:244:ff::"],
    ["fd00::/62", 64, "fd00:0:0:1::", "fd00:0:0:3::"],
    ["fd00::/100", 102, "fd00::400:0", "fd00::c00:0"],
    ["fd00::/124", 126, "fd00::4", "fd00::c"],
  ])("dual-stack %s: IPv6SubnetLen %d, pool %s … %s, beside the IPv4 pool", (network, len, min, max) => {
    const { config } = parseNetworkConfig(
      cfg({ EnableIPv6: true, IPv6Network: network, Backend: { Type: "vxlan" } }),
    );
    expect(config.enableIPv4).toBe(true);
    expect(config.subnetLen).toBe(24);
    expect(config.ipv6?.subnetLen).toBe(len);
    expect(config.ipv6 && formatIPv6(config.ipv6.subnetMin)).toBe(min);
    expect(config.ipv6 && formatIPv6(config.ipv6.subnetMax)).toBe(max);
  });

  it("an IPv6-only config ignores the IPv4 fields, as flannel does", () => {
    const { config } = parseNetworkConfig(
      '{"EnableIPv4": false, "EnableIPv6": true, "Network": "nonsense", "IPv6Network": "fd00::/48", "Backend": {"Type": "vxlan"}}',
    );
    expect(config.enableIPv4).toBe(false);
    expect(config.ipv6?.subnetLen).toBe(64);
  });

  it("IPv6 fields are accepted and ignored while EnableIPv6 is false", () => {
    const { config, warnings } = parseNetworkConfig(
      cfg({
        EnableIPv6: false,
        IPv6Network: "fc00::/48",
        IPv6SubnetLen: 64,
        IPv6SubnetMin: "fc00:0:0:1::",
        IPv6SubnetMax: "fc00:0:0:ffff::",
      }),
    );
    expect(warnings).toEqual([]);
    expect(config.subnetLen).toBe(24);
  });
});

describe("parseNetworkConfig: keys are matched like Go's encoding/json", () => {
  it("top-level and Backend keys are case-insensitive", () => {
    const { config, warnings } = parseNetworkConfig(
      '{"network":"10.1.0.0/16","SUBNETLEN":20,"subnetmin":"10.1.16.0","enableipv4":true,' +
        '"backend":{"type":"VXLAN","vni":7,"PORT":4789,"mtu":9000,"gbp":true,"learning":true,"directrouting":true}}',
    );
    expect(warnings).toEqual([]);
    expect(ipv4Summary(config)).toEqual({
      network: "10.1.0.0/16",
      subnetLen: 20,
      min: "10.1.16.0",
      max: "10.1.240.0",
    });
    expect(backendOf(config)).toEqual({
      type: "vxlan",
      options: { VNI: 7, Port: 4789, MTU: 9000, GBP: true, Learning: true, DirectRouting: true },
    });
  });

  it("Go's Unicode folding: long s and Kelvin sign match s and k", () => {
    expect(foldKey("\u017fubnetLen")).toBe(foldKey("SubnetLen"));
    expect(foldKey("\u212aey")).toBe(foldKey("key"));
    const { config } = parseNetworkConfig(cfg({ "\u017fubnetLen": 20 }));
    expect(config.subnetLen).toBe(20);
  });

  it("when a field is given twice under different case, the last one wins (Go) and it is warned about", () => {
    const { config, warnings } = parseNetworkConfig(
      '{"Network":"10.1.0.0/16","network":"10.2.0.0/16","Backend":{"Type":"vxlan"}}',
    );
    expect(formatCidr(config.network)).toBe("10.2.0.0/16");
    expect(warnings).toEqual([
      'field "Network" given more than once (as "Network", "network"); using the last one',
    ]);
  });

  it("resolveFields names nested fields with the prefix", () => {
    const { values, warnings } = resolveFields({ vni: 3, Bogus: 1 }, ["VNI"], "Backend.");
    expect(values.get("VNI")).toBe(3);
    expect(warnings).toEqual(['unknown field "Backend.Bogus" ignored']);
  });

  it.each([
    [cfg({ Foo: 1 }), ['unknown field "Foo" ignored']],
    [
      cfg({ Networks: ["10.1.0.0/16"], Bar: null }),
      ['unknown field "Networks" ignored', 'unknown field "Bar" ignored'],
    ],
    [cfg({ Backend: { Type: "vxlan", Name: "x" } }), ['unknown field "Backend.Name" ignored']],
    [cfg({ Backend: { Type: "vxlan", ListenPort: 51820 } }), ['unknown field "Backend.ListenPort" ignored']],
    [cfg({ Backend: { Type: "host-gw", VNI: 1 } }), ['unknown field "Backend.VNI" ignored']],
    [
      cfg({ Backend: { Type: "vxlan", VNI: 70000 } }),
      ["Backend.VNI 70000 is above 65535: flanneld nodes in the same cluster cannot read it"],
    ],
    [
      cfg({ Backend: { Type: "host-gw", DirectRouting: true, X: 1 } }),
      ['unknown field "Backend.DirectRouting" ignored', 'unknown field "Backend.X" ignored'],
    ],
  ])("warns (unknown keys ignored, a VNI flanneld cannot read): %s", (text, expected) => {
    expect(parseNetworkConfig(text).warnings).toEqual(expected);
  });
});

describe("parseNetworkConfig: Backend", () => {
  it("absent Backend → udp with a warning recommending vxlan, as flanneld picks udp", () => {
    const { config, warnings } = parseNetworkConfig('{"Network":"10.0.0.0/16"}');
    expect(backendOf(config)).toEqual({ type: "udp", options: { Port: 8285 } });
    expect(warnings).toEqual([BACKEND_NOT_SET_WARNING]);
    expect(BACKEND_NOT_SET_WARNING).toBe(
      'Backend not set: using udp, as flanneld does for this config, so both agree; udp copies every packet through a userspace proxy and is far slower than vxlan: set "Backend": {"Type": "vxlan"} in the network config (twill config set) and restart every node',
    );
  });

  it.each([
    [{ Type: "udp" }, 8285],
    [{ Type: "UDP", Port: 9000 }, 9000],
    [{ type: "udp", port: 1 }, 1],
  ])("Backend %j → udp on port %d", (backend, port) => {
    const { config, warnings } = parseNetworkConfig(cfg({ Backend: backend }));
    expect(backendOf(config)).toEqual({ type: "udp", options: { Port: port } });
    expect(warnings).toEqual([]);
  });

  it.each([["host-gw"], ["HOST-GW"], ["Host-Gw"]])("Type %s → host-gw", (type) => {
    const { config, warnings } = parseNetworkConfig(cfg({ Backend: { Type: type } }));
    expect(backendOf(config)).toEqual({ type: "host-gw", options: {} });
    expect(warnings).toEqual([]);
  });

  it.each([["vxlan"], ["VXLAN"], ["VxLan"]])("Type %s → vxlan", (type) => {
    expect(parseNetworkConfig(cfg({ Backend: { Type: type } })).config.backend.type).toBe("vxlan");
  });

  it.each([
    [{ Port: 0 }, { Port: 8472 }],
    [{ Port: 4789 }, { Port: 4789 }],
    [{ Port: 65535 }, { Port: 65535 }],
    [{ Port: null }, { Port: 8472 }],
    [{ VNI: 1 }, { VNI: 1 }],
    [{ VNI: 16777215 }, { VNI: 16777215 }],
    [{ VNI: 4096 }, { VNI: 4096 }],
    [{ MTU: 0 }, { MTU: null }],
    [{ MTU: 118 }, { MTU: 118 }],
    [{ MTU: 1500 }, { MTU: 1500 }],
    [{ MTU: 65535 }, { MTU: 65535 }],
    [{ GBP: true }, { GBP: true }],
    [{ Learning: true }, { Learning: true }],
    [{ DirectRouting: true }, { DirectRouting: true }],
    [
      { GBP: false, Learning: false, DirectRouting: false },
      { GBP: false, Learning: false, DirectRouting: false },
    ],
  ])("vxlan option %j → %j, the others at their defaults", (options, expected) => {
    const { config } = parseNetworkConfig(cfg({ Backend: { Type: "vxlan", ...options } }));
    expect(backendOf(config)).toEqual({ type: "vxlan", options: { ...VXLAN_DEFAULTS, ...expected } });
  });
});

describe("parseNetworkConfig: errors name the field and the bad value", () => {
  it.each([
    // JSON and top level
    ["not json", "(json)", "invalid JSON"],
    ["", "(json)", "invalid JSON"],
    ['{"Network": "10.0.0.0/16",}', "(json)", "invalid JSON"],
    ["[]", "(json)", "must be a JSON object, got []"],
    ["null", "(json)", "must be a JSON object, got null"],
    ['"10.0.0.0/16"', "(json)", 'got "10.0.0.0/16"'],
    ["42", "(json)", "got 42"],
    // type errors
    [cfg({ EnableIPv4: "true" }), "EnableIPv4", 'EnableIPv4: expected true or false, got "true"'],
    [cfg({ EnableIPv6: 0 }), "EnableIPv6", "EnableIPv6: expected true or false, got 0"],
    [cfg({ EnableNFTables: "no" }), "EnableNFTables", 'EnableNFTables: expected true or false, got "no"'],
    [cfg({ Network: 10 }), "Network", "Network: expected a CIDR string"],
    [cfg({ Network: ["10.0.0.0/16"] }), "Network", 'got ["10.0.0.0/16"]'],
    [cfg({ SubnetLen: "24" }), "SubnetLen", 'SubnetLen: expected a non-negative integer, got "24"'],
    [cfg({ SubnetLen: -1 }), "SubnetLen", "SubnetLen: expected a non-negative integer, got -1"],
    [cfg({ SubnetLen: 24.5 }), "SubnetLen", "SubnetLen: expected a non-negative integer, got 24.5"],
    [cfg({ SubnetLen: true }), "SubnetLen", "got true"],
    [cfg({ SubnetMin: 167772416 }), "SubnetMin", "SubnetMin: expected an IPv4 address string"],
    [cfg({ SubnetMax: {} }), "SubnetMax", "got {}"],
    [cfg({ SubnetMin: "10.0.1" }), "SubnetMin", 'SubnetMin "10.0.1"'],
    [cfg({ SubnetMin: "" }), "SubnetMin", 'SubnetMin ""'],
    [cfg({ SubnetMax: "10.0.300.0" }), "SubnetMax", 'SubnetMax "10.0.300.0"'],
    // twill limits
    [cfg({ EnableIPv4: false }), "EnableIPv4", "EnableIPv4 and EnableIPv6 are both false"],
    // IPv6 (flannel's CheckNetworkConfig, each error naming the field)
    [
      cfg({ EnableIPv6: true }),
      "IPv6Network",
      "IPv6Network: please define a correct IPv6Network parameter in the flannel config",
    ],
    [cfg({ EnableIPv6: true, IPv6Network: "" }), "IPv6Network", "please define a correct IPv6Network"],
    [
      cfg({ EnableIPv6: true, IPv6Network: "10.1.0.0/16" }),
      "IPv6Network",
      'IPv6Network "10.1.0.0/16": invalid IPv6 CIDR format',
    ],
    [cfg({ EnableIPv6: true, IPv6Network: "fc00::" }), "IPv6Network", "not in CIDR notation"],
    [cfg({ EnableIPv6: true, IPv6Network: "fc00::/129" }), "IPv6Network", "invalid prefix length"],
    [cfg({ EnableIPv6: true, IPv6Network: 7 }), "IPv6Network", "IPv6Network: expected a CIDR string"],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/125" }),
      "IPv6Network",
      "IPv6Network is too small. Minimum useful network prefix is /124",
    ],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetLen: 127 }),
      "IPv6SubnetLen",
      "IPv6SubnetLen 127: SubnetLen must be less than /127",
    ],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetLen: 49 }),
      "IPv6SubnetLen",
      "IPv6SubnetLen 49: network must be able to accommodate at least four subnets (IPv6Network fc00::/48 needs IPv6SubnetLen 50 or more)",
    ],
    [cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetLen: "64" }), "IPv6SubnetLen", 'got "64"'],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetMin: "fc01::" }),
      "IPv6SubnetMin",
      "IPv6SubnetMin fc01::: IPv6SubnetMin is not in the range of the IPv6Network fc00::/48",
    ],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetMax: "fd00::" }),
      "IPv6SubnetMax",
      "IPv6SubnetMax fd00::: IPv6SubnetMax is not in the range of the IPv6Network fc00::/48",
    ],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetMin: "fc00:0:0:1::1" }),
      "IPv6SubnetMin",
      "IPv6SubnetMin fc00:0:0:1::1: IPv6SubnetMin is not on a SubnetLen boundary",
    ],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetMax: "fc00:0:0:2:1::" }),
      "IPv6SubnetMax",
      "IPv6SubnetMax fc00:0:0:2:1::: IPv6SubnetMax is not on a SubnetLen boundary",
    ],
    [
      cfg({
        EnableIPv6: true,
        IPv6Network: "fc00::/48",
        IPv6SubnetMin: "fc00:0:0:9::",
        IPv6SubnetMax: "fc00:0:0:2::",
      }),
      "IPv6SubnetMin",
      "IPv6SubnetMin fc00:0:0:9:: is after IPv6SubnetMax fc00:0:0:2::: no subnet could be allocated",
    ],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", IPv6SubnetMin: "fc00::x" }),
      "IPv6SubnetMin",
      'IPv6SubnetMin "fc00::x"',
    ],
    [
      cfg({ EnableIPv6: true, IPv6Network: "fc00::/48", Backend: { Type: "udp" } }),
      "EnableIPv6",
      "EnableIPv6: backend udp carries IPv4 only (as in flannel)",
    ],
    [
      cfg({ EnableNFTables: true }),
      "EnableNFTables",
      "EnableNFTables: nftables mode is not supported by twill yet; set it to false (twill uses iptables)",
    ],
    // Network
    [
      '{"Backend":{"Type":"vxlan"}}',
      "Network",
      "please define a correct Network parameter in the flannel config",
    ],
    [cfg({ Network: "" }), "Network", "please define a correct Network parameter in the flannel config"],
    [cfg({ Network: null }), "Network", "please define a correct Network parameter in the flannel config"],
    [cfg({ Network: "fc00::/48" }), "Network", 'Network "fc00::/48": invalid IPv4 CIDR format'],
    [cfg({ Network: "10.0.0.0" }), "Network", 'Network "10.0.0.0": invalid IPv4 CIDR format'],
    [cfg({ Network: "10.0.0.0/33" }), "Network", 'Network "10.0.0.0/33": invalid IPv4 CIDR format'],
    [cfg({ Network: "banana/16" }), "Network", 'Network "banana/16": invalid IPv4 CIDR format'],
    [
      cfg({ Network: "10.0.0.0/29" }),
      "Network",
      'Network "10.0.0.0/29": network is too small. Minimum useful network prefix is /28',
    ],
    [cfg({ Network: "10.0.0.0/32" }), "Network", 'Network "10.0.0.0/32": network is too small'],
    // SubnetLen
    [cfg({ SubnetLen: 31 }), "SubnetLen", "SubnetLen 31: SubnetLen must be less than /31"],
    [cfg({ SubnetLen: 32 }), "SubnetLen", "SubnetLen 32: SubnetLen must be less than /31"],
    [cfg({ SubnetLen: 99 }), "SubnetLen", "SubnetLen 99: SubnetLen must be less than /31"],
    [
      cfg({ SubnetLen: 17 }),
      "SubnetLen",
      "SubnetLen 17: network must be able to accommodate at least four subnets",
    ],
    [
      cfg({ SubnetLen: 16 }),
      "SubnetLen",
      "SubnetLen 16: network must be able to accommodate at least four subnets",
    ],
    [
      cfg({ Network: "10.0.0.0/29", SubnetLen: 30 }),
      "SubnetLen",
      "SubnetLen 30: network must be able to accommodate at least four subnets",
    ],
    // SubnetMin / SubnetMax
    [
      cfg({ SubnetMin: "10.1.0.0" }),
      "SubnetMin",
      "SubnetMin 10.1.0.0: SubnetMin is not in the range of the Network 10.0.0.0/16",
    ],
    [
      cfg({ SubnetMax: "11.0.0.0" }),
      "SubnetMax",
      "SubnetMax 11.0.0.0: SubnetMax is not in the range of the Network 10.0.0.0/16",
    ],
    [
      cfg({ SubnetMin: "10.0.1.7" }),
      "SubnetMin",
      "SubnetMin 10.0.1.7: SubnetMin is not on a SubnetLen boundary: 10.0.1.7",
    ],
    [
      cfg({ SubnetMax: "10.0.3.7" }),
      "SubnetMax",
      "SubnetMax 10.0.3.7: SubnetMax is not on a SubnetLen boundary: 10.0.3.7",
    ],
    [
      cfg({ SubnetLen: 20, SubnetMin: "10.0.1.0" }),
      "SubnetMin",
      "SubnetMin 10.0.1.0: SubnetMin is not on a SubnetLen boundary: 10.0.1.0",
    ],
    // twill's extra check
    [
      cfg({ SubnetMin: "10.0.20.0", SubnetMax: "10.0.10.0" }),
      "SubnetMin",
      "SubnetMin 10.0.20.0 is after SubnetMax 10.0.10.0",
    ],
    [cfg({ SubnetMax: "10.0.0.0" }), "SubnetMax", "SubnetMin 10.0.1.0 is after SubnetMax 10.0.0.0"],
    [cfg({ SubnetMin: "10.0.255.0", SubnetMax: "10.0.254.0" }), "SubnetMin", "is after SubnetMax 10.0.254.0"],
    // Backend
    [
      cfg({ Backend: "vxlan" }),
      "Backend",
      'Backend: expected an object such as {"Type": "vxlan"}, got "vxlan"',
    ],
    [cfg({ Backend: null }), "Backend", "got null"],
    [cfg({ Backend: [] }), "Backend", "got []"],
    [cfg({ Backend: {} }), "Backend.Type", "choose one of vxlan, host-gw, udp"],
    [cfg({ Backend: { Type: "" } }), "Backend.Type", "choose one of vxlan, host-gw, udp"],
    [cfg({ Backend: { Type: null } }), "Backend.Type", "choose one of vxlan, host-gw, udp"],
    [cfg({ Backend: { VNI: 1 } }), "Backend.Type", "Backend.Type is not set"],
    [cfg({ Backend: { Type: 1 } }), "Backend.Type", "Backend.Type: expected a string, got 1"],
    [
      cfg({ Backend: { Type: "udp", Port: 0 } }),
      "Backend.Port",
      "Backend.Port 0: Port must be from 1 to 65535",
    ],
    [
      cfg({ Backend: { Type: "udp", Port: 70000 } }),
      "Backend.Port",
      "Backend.Port 70000: Port must be from 1",
    ],
    [cfg({ Backend: { Type: "udp", Port: "8285" } }), "Backend.Port", "Backend.Port: expected an integer"],
    [cfg({ Backend: { Type: "udp", Port: 8285.5 } }), "Backend.Port", "Backend.Port: expected an integer"],
    [
      cfg({ Backend: { Type: "wireguard", ListenPort: 0 } }),
      "Backend.ListenPort",
      "Backend.ListenPort 0: must be from 1 to 65535",
    ],
    [
      cfg({ Backend: { Type: "wireguard", Mode: "tunnel" } }),
      "Backend.Mode",
      'Backend.Mode "tunnel": no valid Mode',
    ],
    [
      cfg({ Backend: { Type: "wireguard", PSK: "secret" } }),
      "Backend.PSK",
      "Backend.PSK: not a pre-shared key",
    ],
    [cfg({ Backend: { Type: "ipip" } }), "Backend.Type", 'Backend.Type "ipip" is not supported'],
    [cfg({ Backend: { Type: "ipsec" } }), "Backend.Type", 'Backend.Type "ipsec" is not supported'],
    [cfg({ Backend: { Type: "alloc" } }), "Backend.Type", 'Backend.Type "alloc" is not supported'],
    [cfg({ Backend: { Type: "extension" } }), "Backend.Type", 'Backend.Type "extension" is not supported'],
    [cfg({ Backend: { Type: "hostgw" } }), "Backend.Type", 'Backend.Type "hostgw" is not supported'],
    // vxlan options
    [
      cfg({ Backend: { Type: "vxlan", VNI: 0 } }),
      "Backend.VNI",
      "Backend.VNI 0: VNI must be from 1 to 16777215",
    ],
    [cfg({ Backend: { Type: "vxlan", VNI: -1 } }), "Backend.VNI", "Backend.VNI -1:"],
    [cfg({ Backend: { Type: "vxlan", VNI: 16777216 } }), "Backend.VNI", "Backend.VNI 16777216:"],
    [
      cfg({ Backend: { Type: "vxlan", VNI: "1" } }),
      "Backend.VNI",
      'Backend.VNI: expected an integer, got "1"',
    ],
    [cfg({ Backend: { Type: "vxlan", VNI: 1.5 } }), "Backend.VNI", "got 1.5"],
    [
      cfg({ Backend: { Type: "vxlan", Port: -1 } }),
      "Backend.Port",
      "Backend.Port -1: Port must be from 0 to 65535",
    ],
    [cfg({ Backend: { Type: "vxlan", Port: 65536 } }), "Backend.Port", "Backend.Port 65536:"],
    [cfg({ Backend: { Type: "vxlan", Port: "8472" } }), "Backend.Port", 'got "8472"'],
    [
      cfg({ Backend: { Type: "vxlan", MTU: 67 } }),
      "Backend.MTU",
      "Backend.MTU 67: MTU must be from 118 to 65535",
    ],
    [cfg({ Backend: { Type: "vxlan", MTU: 117 } }), "Backend.MTU", "Backend.MTU 117:"],
    [cfg({ Backend: { Type: "vxlan", MTU: -1500 } }), "Backend.MTU", "Backend.MTU -1500:"],
    [cfg({ Backend: { Type: "vxlan", MTU: 65536 } }), "Backend.MTU", "Backend.MTU 65536:"],
    [
      cfg({ Backend: { Type: "vxlan", MTU: "1500" } }),
      "Backend.MTU",
      'Backend.MTU: expected an integer, got "1500"',
    ],
    [
      cfg({ Backend: { Type: "vxlan", GBP: "true" } }),
      "Backend.GBP",
      'Backend.GBP: expected true or false, got "true"',
    ],
    [cfg({ Backend: { Type: "vxlan", Learning: 1 } }), "Backend.Learning", "got 1"],
    [cfg({ Backend: { Type: "vxlan", DirectRouting: "yes" } }), "Backend.DirectRouting", 'got "yes"'],
    [cfg({ Backend: { type: "vxlan", vni: 0 } }), "Backend.VNI", "Backend.VNI 0:"],
  ])("%s → field %s: %s", (text, field, message) => {
    const err = parseError(text);
    expect(err.field).toBe(field);
    expect(err.message).toContain(message);
    expect(err.name).toBe("ConfigError");
  });

  it("the JSON parser's own message is kept", () => {
    let parserMessage = "";
    try {
      JSON.parse("{oops");
    } catch (err) {
      parserMessage = (err as Error).message;
    }
    expect(parseError("{oops").message).toBe(`invalid JSON: ${parserMessage}`);
  });

  it("a huge bad value is shortened in the message", () => {
    const err = parseError(cfg({ SubnetLen: "x".repeat(500) }));
    expect(err.message.length).toBeLessThan(150);
    expect(err.message).toContain('SubnetLen: expected a non-negative integer, got "xxx');
  });
});
