// The pod bridge (cni0) as a device spec: the gateway of each family the node has (<first host>/<lease
// length>), a fixed MAC derived from the gateway, the backend's MTU.
import { describe, expect, it } from "vitest";
import type { Link } from "../../src/dataplane/objects.js";
import { parsePrefix } from "../../src/ip/address.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import { bridgeMac, bridgeSpec, type BridgeSubnets } from "../../src/node/bridge.js";

const V4: BridgeSubnets = { subnet: parseCidr("10.244.1.0/24"), network: parseCidr("10.244.0.0/16") };
const DUAL: BridgeSubnets = {
  ...V4,
  ipv6Subnet: parseCidr6("fd00:10:244:1::/64"),
  ipv6Network: parseCidr6("fd00:10:244::/56"),
};
const V6_ONLY: BridgeSubnets = {
  subnet: parseCidr("0.0.0.0/0"),
  network: parseCidr("0.0.0.0/0"),
  ipv6Subnet: parseCidr6("fd00:10:244:1::/64"),
  ipv6Network: parseCidr6("fd00:10:244::/56"),
};

describe("bridgeSpec", () => {
  it.each<[string, BridgeSubnets, number, { address: string; prefixLength: number }[], string[], string]>([
    [
      "IPv4-only: the IPv4 gateway",
      V4,
      1450,
      [{ address: "10.244.1.1", prefixLength: 24 }],
      ["10.244.0.0/16"],
      "0a:58:0a:f4:01:01",
    ],
    [
      "dual-stack: both gateways, each scoped to its network; the MAC from the IPv4 gateway",
      DUAL,
      1430,
      [
        { address: "10.244.1.1", prefixLength: 24 },
        { address: "fd00:10:244:1::1", prefixLength: 64 },
      ],
      ["10.244.0.0/16", "fd00:10:244::/56"],
      "0a:58:0a:f4:01:01",
    ],
    [
      "IPv6-only: the IPv6 gateway alone, no 0.0.0.1/0",
      V6_ONLY,
      1430,
      [{ address: "fd00:10:244:1::1", prefixLength: 64 }],
      ["fd00:10:244::/56"],
      "0a:58:02:44:00:01",
    ],
    [
      "IPv6-only with /120 subnets: the MAC follows the low 32 bits of the subnet's number",
      {
        subnet: parseCidr("0.0.0.0/0"),
        network: parseCidr("0.0.0.0/0"),
        ipv6Subnet: parseCidr6("fd00:10:244::a:f401:100/120"),
        ipv6Network: parseCidr6("fd00:10:244::/104"),
      },
      1430,
      [{ address: "fd00:10:244::a:f401:101", prefixLength: 120 }],
      ["fd00:10:244::/104"],
      "0a:58:0a:f4:01:01",
    ],
    [
      "an IPv6 subnet without its network is not addressed (both come with EnableIPv6)",
      { ...V4, ipv6Subnet: parseCidr6("fd00:10:244:1::/64") },
      1450,
      [{ address: "10.244.1.1", prefixLength: 24 }],
      ["10.244.0.0/16"],
      "0a:58:0a:f4:01:01",
    ],
  ])("%s", (_name, subnets, mtu, addresses, scope, mac) => {
    const spec = bridgeSpec("cni0", subnets, mtu);
    expect(spec.link).toEqual({ name: "cni0", kind: "bridge", mac, mtu });
    expect(spec.mtu).toBe(mtu);
    // An existing bridge keeps the MAC it has, pinned; only a new one gets this one.
    expect(spec.mac).toBeUndefined();
    expect(spec.pinMac).toBe(true);
    expect(spec.addresses).toEqual(addresses);
    expect(spec.addressScope).toEqual(scope.map((text) => parsePrefix(text)));
  });

  it("an existing device of that name must be a bridge", () => {
    const spec = bridgeSpec("cni0", DUAL, 1430);
    const link: Link = {
      index: 5,
      name: "cni0",
      kind: "bridge",
      mtu: 1430,
      up: true,
      mac: "0a:58:0a:f4:01:01",
      master: undefined,
      vxlan: undefined,
    };
    expect(spec.incompatibility(link)).toBeUndefined();
    expect(spec.incompatibility({ ...link, kind: "veth" })).toBe("it is a veth device, not a bridge");
    expect(spec.incompatibility({ ...link, kind: undefined })).toBe("it is a plain device, not a bridge");
  });
});

describe("bridgeMac", () => {
  it.each<[string, string | undefined, string]>([
    ["10.244.1.0/24", undefined, "0a:58:0a:f4:01:01"],
    ["10.244.255.0/24", undefined, "0a:58:0a:f4:ff:01"],
    ["192.168.0.64/26", undefined, "0a:58:c0:a8:00:41"],
    // dual-stack: the IPv4 gateway decides, whatever the IPv6 subnet
    ["10.244.1.0/24", "fd00:10:244:1::/64", "0a:58:0a:f4:01:01"],
    ["10.244.1.0/24", "fd00:10:244:99::/64", "0a:58:0a:f4:01:01"],
    // IPv6-only: the low 32 bits of the subnet's number (its address shifted right by the host bits)
    ["0.0.0.0/0", "fd00:10:244:1::/64", "0a:58:02:44:00:01"],
    ["0.0.0.0/0", "2001:db8::c0a8:100/120", "0a:58:00:c0:a8:01"],
  ])("%s + %s → %s", (cidr, cidr6, mac) => {
    expect(bridgeMac(parseCidr(cidr), cidr6 === undefined ? undefined : parseCidr6(cidr6))).toBe(mac);
  });

  it("is locally administered and unicast in every case", () => {
    for (const mac of [bridgeMac(V4.subnet), bridgeMac(V6_ONLY.subnet, V6_ONLY.ipv6Subnet)]) {
      const first = parseInt(mac.slice(0, 2), 16);
      expect(first & 0x02).toBe(0x02);
      expect(first & 0x01).toBe(0);
    }
  });

  it("differs between IPv6-only nodes with /64 subnets, though each gateway is <prefix>::1", () => {
    const a = bridgeMac(parseCidr("0.0.0.0/0"), parseCidr6("fd00:10:244:1::/64"));
    const b = bridgeMac(parseCidr("0.0.0.0/0"), parseCidr6("fd00:10:244:2::/64"));
    expect(a).not.toBe(b);
  });
});
