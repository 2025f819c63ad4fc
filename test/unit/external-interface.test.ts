import { describe, expect, it } from "vitest";
import { formatIPv4, parseIPv4 } from "../../src/ip/ipv4.js";
import {
  InterfaceSelectionError,
  parseIpAddrJson,
  selectExternalInterface,
  type NodeInterface,
} from "../../src/node/external-interface.js";

function iface(name: string, index: number, ips: string[], scope = "global", mtu = 1500): NodeInterface {
  return {
    name,
    index,
    mtu,
    up: true,
    addresses: ips.map((ip) => ({
      ip: parseIPv4(ip),
      prefixLen: 24,
      scope,
      dynamic: false,
      deprecated: false,
    })),
  };
}

const node = [
  iface("lo", 1, ["127.0.0.1"], "host", 65536),
  iface("eth0", 2, ["198.18.0.5"]),
  iface("eth1", 3, ["198.19.0.5"], "global", 9000),
];
const none = { iface: [], ifaceRegex: [], publicIp: undefined };

describe("external interface selection", () => {
  it("defaults to the interface of the default route", () => {
    const chosen = selectExternalInterface(node, "eth0", none);
    expect(chosen.name).toBe("eth0");
    expect(formatIPv4(chosen.publicIp)).toBe("198.18.0.5");
    expect(chosen.mtu).toBe(1500);
  });

  it("takes --iface by name or by IP, in order", () => {
    expect(selectExternalInterface(node, "eth0", { ...none, iface: ["eth1"] }).name).toBe("eth1");
    expect(selectExternalInterface(node, "eth0", { ...none, iface: ["198.19.0.5"] }).name).toBe("eth1");
    expect(selectExternalInterface(node, "eth0", { ...none, iface: ["wlan0", "eth1"] }).name).toBe("eth1");
  });

  it("matches --iface-regex against addresses first, then names", () => {
    expect(selectExternalInterface(node, "eth0", { ...none, ifaceRegex: [/^198\.19\./] }).name).toBe("eth1");
    expect(selectExternalInterface(node, undefined, { ...none, ifaceRegex: [/eth1/] }).name).toBe("eth1");
  });

  it("advertises --public-ip instead of the interface address", () => {
    const chosen = selectExternalInterface(node, "eth0", { ...none, publicIp: parseIPv4("203.0.113.7") });
    expect(formatIPv4(chosen.ifaceIp)).toBe("198.18.0.5");
    expect(formatIPv4(chosen.publicIp)).toBe("203.0.113.7");
  });

  it("accepts a host-scope address only for an interface named explicitly", () => {
    expect(selectExternalInterface(node, undefined, { ...none, iface: ["lo"] }).name).toBe("lo");
  });

  // Bad --iface-regex and --public-ip values are rejected by the flag parser (agent-options tests).
  it.each<[string | undefined, { iface?: string[] }, RegExp]>([
    [
      "eth0",
      { iface: ["wlan0"] },
      /no interface with an IPv4 address matches --iface wlan0 \(interfaces with addresses: eth0, eth1\)/,
    ],
    [undefined, {}, /no IPv4 default route/],
  ])("fails clearly (default route %s, %j)", (dev, request, message) => {
    const call = () => selectExternalInterface(node, dev, { ...none, ...request });
    expect(call).toThrow(InterfaceSelectionError);
    expect(call).toThrow(message);
  });

  it("parses ip -j addr output", () => {
    const json = JSON.stringify([
      {
        ifindex: 7,
        ifname: "eth0",
        flags: ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
        mtu: 1450,
        addr_info: [
          { family: "inet", local: "198.18.0.9", prefixlen: 24, scope: "global", dynamic: true },
          { family: "inet6", local: "fe80::1", prefixlen: 64, scope: "link" },
        ],
      },
    ]);
    expect(parseIpAddrJson(json)).toEqual([
      {
        name: "eth0",
        index: 7,
        mtu: 1450,
        up: true,
        addresses: [
          { ip: parseIPv4("198.18.0.9"), prefixLen: 24, scope: "global", dynamic: true, deprecated: false },
        ],
      },
    ]);
  });
});

describe("--iface-can-reach", () => {
  const reach = { ...none, ifaceCanReach: parseIPv4("198.19.7.7") };

  it("picks the interface the kernel routes the address through, not the default route's", () => {
    expect(selectExternalInterface(node, "eth0", reach, "eth1").name).toBe("eth1");
  });

  it("comes after --iface", () => {
    expect(selectExternalInterface(node, "eth0", { ...reach, iface: ["eth0"] }, "eth1").name).toBe("eth0");
  });

  it("without a route to the address, fails naming it instead of falling back to the default route", () => {
    expect(() => selectExternalInterface(node, "eth0", reach, undefined)).toThrow(
      /--iface-can-reach 198\.19\.7\.7 \(no route to it\)/,
    );
  });
});
