import { describe, expect, it } from "vitest";
import type { CommandResult, CommandRunner } from "../../src/exec/command.js";
import { formatIPv4, parseIPv4 } from "../../src/ip/ipv4.js";
import {
  detectExternalInterface,
  familyProblem,
  InterfaceSelectionError,
  parseIpAddrJson,
  routeDev,
  selectExternalInterface,
  type ExternalInterface,
  type InterfaceAddress6,
  type NodeInterface,
  type RouteFacts,
  type SelectionRequest,
} from "../../src/node/external-interface.js";

/** An IPv6 address of an interface: "2001:db8::5", with flags after a slash ("…/dynamic,deprecated"). */
function v6(spec: string): InterfaceAddress6 {
  const [ip = "", flagText = ""] = spec.split("/");
  const flags = flagText.split(",");
  return {
    ip,
    prefixLen: 64,
    scope: ip.startsWith("fe80:") ? "link" : ip === "::1" ? "host" : "global",
    dynamic: flags.includes("dynamic"),
    deprecated: flags.includes("deprecated"),
    tentative: flags.includes("tentative"),
    dadFailed: flags.includes("dadfailed"),
    temporary: flags.includes("temporary"),
  };
}

function iface(
  name: string,
  index: number,
  ips: string[],
  scope = "global",
  mtu = 1500,
  ips6: string[] = [],
): NodeInterface {
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
    addresses6: ips6.map(v6),
  };
}

/** The fields of `actual` that `expected` lists (undefined included, unlike toMatchObject). */
function fieldsOf(
  actual: ExternalInterface,
  expected: Partial<ExternalInterface>,
): Partial<ExternalInterface> {
  return Object.fromEntries(
    Object.keys(expected).map((key) => [key, actual[key as keyof ExternalInterface]]),
  );
}

const node = [
  iface("lo", 1, ["127.0.0.1"], "host", 65536, ["::1"]),
  iface("eth0", 2, ["198.18.0.5"]),
  iface("eth1", 3, ["198.19.0.5"], "global", 9000),
];
const none: SelectionRequest = { iface: [], ifaceRegex: [], publicIp: undefined };
const viaEth0: RouteFacts = { defaultDev: "eth0" };
const noRoutes: RouteFacts = {};

describe("external interface selection", () => {
  it("defaults to the interface of the default route", () => {
    const chosen = selectExternalInterface(node, viaEth0, none);
    expect(chosen.name).toBe("eth0");
    expect(formatIPv4(chosen.publicIp)).toBe("198.18.0.5");
    expect(chosen.mtu).toBe(1500);
    expect(chosen.ifaceIpv6).toBeUndefined();
    expect(chosen.publicIpv6).toBeUndefined();
  });

  it("takes --iface by name or by IP, in order", () => {
    expect(selectExternalInterface(node, viaEth0, { ...none, iface: ["eth1"] }).name).toBe("eth1");
    expect(selectExternalInterface(node, viaEth0, { ...none, iface: ["198.19.0.5"] }).name).toBe("eth1");
    expect(selectExternalInterface(node, viaEth0, { ...none, iface: ["wlan0", "eth1"] }).name).toBe("eth1");
  });

  it("matches --iface-regex against addresses first, then names", () => {
    expect(selectExternalInterface(node, viaEth0, { ...none, ifaceRegex: [/^198\.19\./] }).name).toBe("eth1");
    expect(selectExternalInterface(node, noRoutes, { ...none, ifaceRegex: [/eth1/] }).name).toBe("eth1");
  });

  it("advertises --public-ip instead of the interface address", () => {
    const chosen = selectExternalInterface(node, viaEth0, { ...none, publicIp: parseIPv4("203.0.113.7") });
    expect(formatIPv4(chosen.ifaceIp)).toBe("198.18.0.5");
    expect(formatIPv4(chosen.publicIp)).toBe("203.0.113.7");
  });

  it("accepts a host-scope address only for an interface named explicitly", () => {
    const chosen = selectExternalInterface(node, noRoutes, { ...none, iface: ["lo"] });
    expect(chosen.name).toBe("lo");
    expect(formatIPv4(chosen.ifaceIp)).toBe("127.0.0.1");
    expect(chosen.ifaceIpv6).toBeUndefined(); // ::1 never
  });

  // Bad --iface-regex and --public-ip values are rejected by the flag parser (agent-options tests).
  it.each<[RouteFacts, Partial<SelectionRequest>, RegExp]>([
    [
      viaEth0,
      { iface: ["wlan0"] },
      /^no interface with an IPv4 or global IPv6 address matches --iface wlan0 \(interfaces with addresses: eth0, eth1\)$/,
    ],
    [noRoutes, {}, /^no IPv4 or IPv6 default route to pick the external interface from; set --iface$/],
    [
      { defaultDev: "wlan0" },
      {},
      /^the IPv4 default route's interface wlan0 has no IPv4 or global IPv6 address; set --iface$/,
    ],
  ])("fails clearly (routes %j, %j)", (routes, request, message) => {
    const call = () => selectExternalInterface(node, routes, { ...none, ...request });
    expect(call).toThrow(InterfaceSelectionError);
    expect(call).toThrow(message);
  });
});

describe("IPv6 and dual-stack selection", () => {
  const dual = [
    iface("lo", 1, ["127.0.0.1"], "host", 65536, ["::1"]),
    iface("eth0", 2, ["198.18.0.5"], "global", 1500, ["2001:db8::5", "fe80::5"]),
    iface("eth1", 3, ["198.19.0.5"], "global", 9000, ["fe80::6"]),
    iface("eth2", 4, [], "global", 1500, ["fd00:1::9", "2001:db8:1::9", "fe80::9"]),
    iface("eth3", 5, [], "global", 1500, ["fe80::7"]),
  ];
  type Case = [string, RouteFacts, Partial<SelectionRequest>, Partial<ExternalInterface>];
  it.each<Case>([
    [
      "dual-stack: both families from the IPv4 default route's interface",
      { defaultDev: "eth0", defaultDev6: "eth2" },
      {},
      { name: "eth0", ifaceIpv6: "2001:db8::5", publicIpv6: "2001:db8::5" },
    ],
    [
      "IPv6-only host: the IPv6 default route's interface when there is no IPv4 one; no IPv4 address (0)",
      { defaultDev6: "eth2" },
      {},
      { name: "eth2", ifaceIp: 0, publicIp: 0, ifaceIpv6: "fd00:1::9", publicIpv6: "fd00:1::9" },
    ],
    [
      "--iface with an IPv6 address, in any spelling: that address, not the interface's first",
      { defaultDev: "eth0" },
      { iface: ["2001:DB8:1:0::9"] },
      { name: "eth2", ifaceIpv6: "2001:db8:1::9" },
    ],
    [
      "--iface with a link-local IPv6 address: its interface, with its global address",
      { defaultDev: "eth0" },
      { iface: ["fe80::9"] },
      { name: "eth2", ifaceIpv6: "fd00:1::9" },
    ],
    [
      "--iface with an IPv4 address: that interface's IPv6 address too",
      {},
      { iface: ["198.18.0.5"] },
      { name: "eth0", ifaceIpv6: "2001:db8::5" },
    ],
    [
      "--iface-regex matched against IPv6 text",
      { defaultDev: "eth0" },
      { ifaceRegex: [/^2001:db8:1:/] },
      { name: "eth2", ifaceIp: 0, ifaceIpv6: "2001:db8:1::9" },
    ],
    [
      "--iface-regex: an interface's IPv4 addresses before its IPv6 ones, interfaces in order",
      {},
      { ifaceRegex: [/^(198\.19\.|2001:db8::)/] },
      { name: "eth0", ifaceIp: parseIPv4("198.18.0.5"), ifaceIpv6: "2001:db8::5" },
    ],
    [
      "--public-ipv6 is advertised instead of the interface's",
      { defaultDev: "eth0" },
      { publicIpv6: "2001:db8:ff::1" },
      { name: "eth0", ifaceIpv6: "2001:db8::5", publicIpv6: "2001:db8:ff::1" },
    ],
    [
      "--public-ipv6 on an interface without a global IPv6 address",
      { defaultDev: "eth1" },
      { publicIpv6: "2001:db8:ff::1" },
      { name: "eth1", ifaceIpv6: undefined, publicIpv6: "2001:db8:ff::1" },
    ],
    [
      "a link-local-only interface gives no IPv6 address, and says why",
      { defaultDev: "eth1" },
      {},
      {
        name: "eth1",
        ifaceIpv6: undefined,
        publicIpv6: undefined,
        ipv6Unusable: ["fe80::6: a link-local address (fe80::/10)"],
      },
    ],
    [
      "--iface-can-reach an IPv6 address",
      { defaultDev: "eth0", canReachDev: "eth2" },
      { ifaceCanReach: "2001:db8:7::7" },
      { name: "eth2", ifaceIpv6: "fd00:1::9" },
    ],
  ])("%s", (_, routes, request, expected) => {
    expect(fieldsOf(selectExternalInterface(dual, routes, { ...none, ...request }), expected)).toEqual(
      expected,
    );
  });

  it.each<[string, string[], string | undefined]>([
    ["deprecated skipped", ["2001:db8::1/deprecated", "2001:db8::2"], "2001:db8::2"],
    ["tentative skipped", ["2001:db8::1/tentative", "2001:db8::2/dynamic"], "2001:db8::2"],
    ["duplicate skipped", ["2001:db8::1/tentative,dadfailed", "2001:db8::2"], "2001:db8::2"],
    ["permanent before dynamic", ["2001:db8::1/dynamic", "2001:db8::2"], "2001:db8::2"],
    ["stable before temporary", ["2001:db8::1/dynamic,temporary", "2001:db8::2/dynamic"], "2001:db8::2"],
    ["global before link-local", ["fe80::1", "2001:db8::2/dynamic"], "2001:db8::2"],
    ["otherwise the kernel's order", ["2001:db8::1", "2001:db8::2"], "2001:db8::1"],
    ["only deprecated: none", ["2001:db8::1/deprecated", "fe80::1"], undefined],
    ["IPv4-mapped: none", ["::ffff:198.18.0.1"], undefined],
  ])("picks the best IPv6 address: %s", (_, addresses, expected) => {
    const host = [iface("eth0", 2, ["198.18.0.5"], "global", 1500, addresses)];
    expect(selectExternalInterface(host, viaEth0, none).ifaceIpv6).toBe(expected);
  });

  it.each<[RouteFacts, Partial<SelectionRequest>, RegExp]>([
    [
      { defaultDev6: "eth3" },
      {},
      /^the IPv6 default route's interface eth3 has no IPv4 or global IPv6 address \(fe80::7: a link-local address \(fe80::\/10\)\); set --iface$/,
    ],
    [
      {},
      { iface: ["eth3", "fe80::7"] },
      /^no interface with an IPv4 or global IPv6 address matches --iface eth3, --iface fe80::7 \(interfaces with addresses: eth0, eth1, eth2\)$/,
    ],
    [
      {},
      { ifaceRegex: [/^fe80::7$/] },
      /^no interface with an IPv4 or global IPv6 address matches --iface-regex \^fe80::7\$/,
    ],
    [{}, { ifaceCanReach: "2001:db8:9::1" }, /--iface-can-reach 2001:db8:9::1 \(no route to it\)/],
  ])(
    "an interface with no usable address of either family is no choice (%j, %j)",
    (routes, request, message) => {
      expect(() => selectExternalInterface(dual, routes, { ...none, ...request })).toThrow(message);
    },
  );
});

describe("familyProblem", () => {
  const base: ExternalInterface = {
    name: "eth0",
    index: 2,
    mtu: 1500,
    ifaceIp: parseIPv4("198.18.0.5"),
    publicIp: parseIPv4("198.18.0.5"),
  };
  const dualStack: ExternalInterface = { ...base, ifaceIpv6: "2001:db8::5", publicIpv6: "2001:db8::5" };
  const v6only: ExternalInterface = { ...dualStack, ifaceIp: 0, publicIp: 0 };
  const v4only: ExternalInterface = { ...base, ipv6Unusable: ["fe80::1: a link-local address (fe80::/10)"] };
  it.each<[string, ExternalInterface, { ipv4: boolean; ipv6: boolean }, string | undefined]>([
    ["dual-stack interface, dual-stack config", dualStack, { ipv4: true, ipv6: true }, undefined],
    ["IPv4 interface, IPv4 config", base, { ipv4: true, ipv6: false }, undefined],
    ["IPv6-only interface, IPv6-only config", v6only, { ipv4: false, ipv6: true }, undefined],
    [
      "--public-ipv6 without an interface address",
      { ...base, publicIpv6: "2001:db8::9" },
      { ipv4: true, ipv6: true },
      undefined,
    ],
    [
      "--public-ip without an interface address",
      { ...v6only, publicIp: parseIPv4("203.0.113.7") },
      { ipv4: true, ipv6: true },
      undefined,
    ],
    [
      "IPv4-only interface, IPv6 on",
      v4only,
      { ipv4: true, ipv6: true },
      "EnableIPv6 is on but interface eth0 has no global IPv6 address (fe80::1: a link-local address (fe80::/10)); " +
        "add one, or set --public-ipv6, or pick an interface that has one with --iface (a name or an IPv6 address), --iface-regex or --iface-can-reach",
    ],
    [
      "interface without any IPv6 address, IPv6 on",
      base,
      { ipv4: false, ipv6: true },
      "EnableIPv6 is on but interface eth0 has no global IPv6 address; " +
        "add one, or set --public-ipv6, or pick an interface that has one with --iface (a name or an IPv6 address), --iface-regex or --iface-can-reach",
    ],
    [
      "IPv6-only interface, IPv4 on",
      v6only,
      { ipv4: true, ipv6: true },
      "EnableIPv4 is on but interface eth0 has no IPv4 address; " +
        "add one, or set --public-ip, or pick an interface that has one with --iface (a name or an IPv4 address), --iface-regex or --iface-can-reach",
    ],
  ])("%s", (_, external, want, expected) => {
    expect(familyProblem(external, want)).toBe(expected);
  });
});

// Captured from a throwaway network namespace (iproute2 6.x): veth d0 (IPv4 and IPv6 addresses in every
// state: 2001:db8:3::3 still tentative, 2001:db8:5::1 a duplicate of d1's, 2001:db8:2::9 with a
// lifetime, 2001:db8:1::7 deprecated) and its peer d1 (IPv6 only); veth e0 (IPv4 and link-local) and its
// peer e1 (link-local only).
const REAL_IP_ADDR = [
  '{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_life_time":4294967295,"preferred_life_time":4294967295}]}',
  '{"ifindex":2,"link":"d0","ifname":"d1","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"aa:ee:bb:18:17:08","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet6","local":"2001:db8:5::1","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::a8ee:bbff:fe18:1708","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]}',
  '{"ifindex":3,"link":"d1","ifname":"d0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"b6:d7:d9:19:a7:d8","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"198.18.0.5","prefixlen":24,"scope":"global","label":"d0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"2001:db8:3::3","prefixlen":64,"scope":"global","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"2001:db8:5::1","prefixlen":64,"scope":"global","dadfailed":true,"tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"2001:db8:2::9","prefixlen":64,"scope":"global","nodad":true,"dynamic":true,"valid_life_time":3594,"preferred_life_time":1794},{"family":"inet6","local":"2001:db8:1::7","prefixlen":64,"scope":"global","nodad":true,"deprecated":true,"valid_life_time":4294967295,"preferred_life_time":0},{"family":"inet6","local":"2001:db8::5","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::b4d7:d9ff:fe19:a7d8","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]}',
  '{"ifindex":4,"link":"e0","ifname":"e1","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"b6:ab:66:05:54:b4","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet6","local":"fe80::b4ab:66ff:fe05:54b4","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]}',
  '{"ifindex":5,"link":"e1","ifname":"e0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"46:92:81:1d:e6:e2","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"198.19.0.5","prefixlen":24,"scope":"global","label":"e0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::4492:81ff:fe1d:e6e2","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]}',
].join(",");

describe("parsing ip -j output", () => {
  it("parses ip -j addr output of both families", () => {
    const json = JSON.stringify([
      {
        ifindex: 7,
        ifname: "eth0",
        flags: ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
        mtu: 1450,
        addr_info: [
          { family: "inet", local: "198.18.0.9", prefixlen: 24, scope: "global", dynamic: true },
          { family: "inet6", local: "2001:DB8:0:0::9", prefixlen: 64, scope: "global", temporary: true },
          { family: "inet6", local: "fe80::1", prefixlen: 64, scope: "link", tentative: true },
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
        addresses6: [
          { ...v6("2001:db8::9/temporary"), prefixLen: 64 },
          { ...v6("fe80::1/tentative"), prefixLen: 64 },
        ],
      },
    ]);
  });

  it("parses a real ip -j addr show with inet6 entries in every state", () => {
    const interfaces = parseIpAddrJson(`[${REAL_IP_ADDR}]`);
    expect(interfaces.map((i) => [i.name, i.index, i.mtu, i.up])).toEqual([
      ["lo", 1, 65536, true],
      ["d1", 2, 1500, true],
      ["d0", 3, 1500, true],
      ["e1", 4, 1500, true],
      ["e0", 5, 1500, true],
    ]);
    const d0 = interfaces.find((i) => i.name === "d0");
    expect(d0?.addresses.map((a) => formatIPv4(a.ip))).toEqual(["198.18.0.5"]);
    expect(d0?.addresses6).toEqual([
      v6("2001:db8:3::3/tentative"),
      v6("2001:db8:5::1/tentative,dadfailed"),
      v6("2001:db8:2::9/dynamic"),
      v6("2001:db8:1::7/deprecated"),
      v6("2001:db8::5"),
      v6("fe80::b4d7:d9ff:fe19:a7d8"),
    ]);
  });

  it.each<[string, RouteFacts, Partial<SelectionRequest>, Partial<ExternalInterface> | RegExp]>([
    [
      "dual-stack d0: the one permanent, preferred, unique, settled global IPv6 address",
      { defaultDev: "d0" },
      {},
      { name: "d0", index: 3, ifaceIp: parseIPv4("198.18.0.5"), ifaceIpv6: "2001:db8::5" },
    ],
    [
      "IPv6-only d1 from the IPv6 default route",
      { defaultDev6: "d1" },
      {},
      { name: "d1", ifaceIp: 0, publicIp: 0, ifaceIpv6: "2001:db8:5::1", publicIpv6: "2001:db8:5::1" },
    ],
    [
      "--iface naming d0's IPv6 address that d1 also has: the first interface that has it",
      {},
      { iface: ["2001:db8:5::1"] },
      { name: "d1", ifaceIpv6: "2001:db8:5::1" },
    ],
    [
      "--iface e0: IPv4 only",
      {},
      { iface: ["e0"] },
      {
        name: "e0",
        ifaceIpv6: undefined,
        ipv6Unusable: ["fe80::4492:81ff:fe1d:e6e2: a link-local address (fe80::/10)"],
      },
    ],
    [
      "--iface e1: link-local only is no choice",
      {},
      { iface: ["e1"] },
      /matches --iface e1 \(interfaces with addresses: d1, d0, e0\)/,
    ],
  ])("selects on the real sample: %s", (_, routes, request, expected) => {
    const interfaces = parseIpAddrJson(`[${REAL_IP_ADDR}]`);
    const call = () => selectExternalInterface(interfaces, routes, { ...none, ...request });
    if (expected instanceof RegExp) expect(call).toThrow(expected);
    else expect(fieldsOf(call(), expected)).toEqual(expected);
  });

  it.each<[string, string | undefined]>([
    ['[{"dst":"default","gateway":"2001:db8::1","dev":"d0","metric":1024,"flags":[],"pref":"medium"}]', "d0"],
    [
      '[{"dst":"2001:db8:9::1","from":"::","gateway":"2001:db8::1","dev":"d0","prefsrc":"2001:db8:2::9","metric":1024,"flags":[],"pref":"medium"}]',
      "d0",
    ],
    ["[]", undefined],
    ["", undefined],
  ])("reads the device of ip -j route output %s", (text, dev) => {
    expect(routeDev(text)).toBe(dev);
  });
});

describe("detectExternalInterface", () => {
  /** A runner that answers `ip` from a table and records what it was asked. */
  function fakeIp(answers: Record<string, string>): CommandRunner & { calls: string[] } {
    const calls: string[] = [];
    return {
      where: "fake",
      calls,
      run(cmd: string, args: readonly string[]): Promise<CommandResult> {
        const line = [cmd, ...args].join(" ");
        calls.push(line);
        const stdout = answers[line];
        return Promise.resolve(
          stdout === undefined
            ? { stdout: "", stderr: "no route", exitCode: 2 }
            : { stdout, stderr: "", exitCode: 0 },
        );
      },
    };
  }
  const addrs = `[${REAL_IP_ADDR}]`;

  it("reads both families' addresses, and the IPv6 default route only when there is no IPv4 one", async () => {
    const v4 = fakeIp({
      "ip -j addr show": addrs,
      "ip -j -4 route show default": '[{"dst":"default","gateway":"198.18.0.1","dev":"d0"}]',
    });
    expect(await detectExternalInterface(none, v4)).toMatchObject({ name: "d0", ifaceIpv6: "2001:db8::5" });
    expect(v4.calls).toEqual(["ip -j addr show", "ip -j -4 route show default"]);

    const v6only = fakeIp({
      "ip -j addr show": addrs,
      "ip -j -4 route show default": "[]",
      "ip -j -6 route show default": '[{"dst":"default","gateway":"2001:db8:5::fe","dev":"d1"}]',
    });
    expect(await detectExternalInterface(none, v6only)).toMatchObject({ name: "d1", ifaceIp: 0 });
    expect(v6only.calls).toEqual([
      "ip -j addr show",
      "ip -j -4 route show default",
      "ip -j -6 route show default",
    ]);
  });

  it("takes a kernel without IPv6 refusing `ip -6 route` as no IPv6 default route", async () => {
    const runner = fakeIp({ "ip -j addr show": addrs, "ip -j -4 route show default": "[]" });
    await expect(detectExternalInterface(none, runner)).rejects.toThrow(
      /^no IPv4 or IPv6 default route to pick the external interface from; set --iface$/,
    );
  });

  it("asks the route to an IPv6 --iface-can-reach with -6", async () => {
    const runner = fakeIp({
      "ip -j addr show": addrs,
      "ip -j -4 route show default": '[{"dst":"default","dev":"e0"}]',
      "ip -j -6 route get 2001:db8:9::1": '[{"dst":"2001:db8:9::1","dev":"d1","prefsrc":"2001:db8:5::1"}]',
    });
    const chosen = await detectExternalInterface({ ...none, ifaceCanReach: "2001:db8:9::1" }, runner);
    expect(chosen).toMatchObject({ name: "d1", ifaceIpv6: "2001:db8:5::1" });
    expect(runner.calls).toContain("ip -j -6 route get 2001:db8:9::1");
  });
});

describe("--iface-can-reach", () => {
  const reach = { ...none, ifaceCanReach: "198.19.7.7" };

  it("picks the interface the kernel routes the address through, not the default route's", () => {
    expect(selectExternalInterface(node, { defaultDev: "eth0", canReachDev: "eth1" }, reach).name).toBe(
      "eth1",
    );
  });

  it("comes after --iface", () => {
    expect(
      selectExternalInterface(
        node,
        { defaultDev: "eth0", canReachDev: "eth1" },
        { ...reach, iface: ["eth0"] },
      ).name,
    ).toBe("eth0");
  });

  it("without a route to the address, fails naming it instead of falling back to the default route", () => {
    expect(() => selectExternalInterface(node, viaEth0, reach)).toThrow(
      /--iface-can-reach 198\.19\.7\.7 \(no route to it\)/,
    );
  });
});
