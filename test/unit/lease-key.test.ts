import { formatCidr6, parseCidr6 } from "../../src/ip/ipv6.js";
import { describe, it, expect } from "vitest";
import { formatCidr, parseCidr } from "../../src/ip/ipv4.js";
import { leasesForAllocation } from "../../src/lease/keeper.js";
import {
  hasIPv4,
  leaseName,
  parseSubnetKey,
  SubnetKeyError,
  subnetKey,
  subnetsPrefix,
  tryParseSubnetKey,
} from "../../src/lease/key.js";

const P = "/coreos.com/network";

describe("subnetsPrefix / subnetKey", () => {
  it.each([
    [P, "/coreos.com/network/subnets/"],
    ["/coreos.com/network/", "/coreos.com/network/subnets/"],
    ["/twill", "/twill/subnets/"],
  ])("subnetsPrefix(%s) = %s", (prefix, expected) => {
    expect(subnetsPrefix(prefix)).toBe(expected);
  });

  it.each([
    ["10.244.3.0/24", "/coreos.com/network/subnets/10.244.3.0-24"],
    ["10.5.52.0/24", "/coreos.com/network/subnets/10.5.52.0-24"],
    ["10.0.0.0/8", "/coreos.com/network/subnets/10.0.0.0-8"],
    ["192.168.0.64/26", "/coreos.com/network/subnets/192.168.0.64-26"],
  ])("subnetKey(%s)", (cidr, key) => {
    expect(subnetKey(P, parseCidr(cidr))).toBe(key);
    expect(formatCidr(parseSubnetKey(key).subnet)).toBe(cidr);
  });
});

describe("parseSubnetKey", () => {
  it.each([
    ["/coreos.com/network/subnets/10.5.52.0-24", "10.5.52.0/24"],
    ["10.5.52.0-24", "10.5.52.0/24"],
    ["/other/prefix/subnets/10.244.3.0-24", "10.244.3.0/24"],
    ["/a/subnets/b/subnets/10.1.2.0-24", "10.1.2.0/24"],
    ["/coreos.com/network/subnets/10.0.0.0-8", "10.0.0.0/8"],
    ["/coreos.com/network/subnets/0.0.0.0-0", "0.0.0.0/0"],
    ["/coreos.com/network/subnets/10.1.2.4-31", "10.1.2.4/31"],
    // Go's ParseUint accepts leading zeros.
    ["/coreos.com/network/subnets/10.5.52.0-024", "10.5.52.0/24"],
  ])("%s → %s", (key, cidr) => {
    expect(formatCidr(parseSubnetKey(key).subnet)).toBe(cidr);
  });

  it.each([
    ["/coreos.com/network/subnets/10.5.52.0-32", "out of range 0–31"],
    ["/coreos.com/network/subnets/10.5.52.1-32", "out of range 0–31"],
    ["/coreos.com/network/subnets/10.5.52.0-99999999999999999999", "out of range 0–31"],
    ["/coreos.com/network/subnets/garbage", "does not have the form A.B.C.D-LEN"],
    ["/coreos.com/network/subnets/", "does not have the form"],
    ["/coreos.com/network/subnets/10.5.52.0/24", "does not have the form"],
    ["/coreos.com/network/subnets/10.5.52.0-24x", "does not have the form"],
    ["/coreos.com/network/subnets/foo10.5.52.0-24", "does not have the form"],
    ["/coreos.com/network/subnets/10.5.52.0--24", "does not have the form"],
    ["/coreos.com/network/subnets/300.5.52.0-24", '"300.5.52.0" is not an IPv4 address'],
    ["/coreos.com/network/subnets/10.05.52.0-24", '"10.05.52.0" is not an IPv4 address'],
    ["/coreos.com/network/subnets/10.5.52x0-24", '"10.5.52x0" is not an IPv4 address'],
    [
      "/coreos.com/network/subnets/10.244.3.1-24",
      "10.244.3.1 has host bits set for /24 (the network address is 10.244.3.0)",
    ],
    ["/coreos.com/network/subnets/10.244.3.0-16", "has host bits set for /16"],
    ["/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::1-56", "fd00:12:13::1 has host bits set for /56"],
    ["/coreos.com/network/subnets/10.0.0.0-0&fd00::-64", "10.0.0.0 has host bits set for /0"],
    [
      "/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-0",
      "IPv6 prefix length 0 is out of range 1–127",
    ],
  ])("rejects %s (%s)", (key, why) => {
    let caught: unknown;
    try {
      parseSubnetKey(key);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SubnetKeyError);
    const err = caught as SubnetKeyError;
    expect(err.key).toBe(key);
    expect(err.message).toContain(key);
    expect(err.message).toContain(why);
    expect(tryParseSubnetKey(key)).toBeUndefined();
  });
});

describe("dual-stack and IPv6-only keys (as flannel's ParseSubnetKey and MakeSubnetKey handle them)", () => {
  it.each([
    ["10.12.13.0-24", "10.12.13.0/24", undefined],
    ["10.12.13.0-24&fd00:12:13::-56", "10.12.13.0/24", "fd00:12:13::/56"],
    [`${P}/subnets/10.244.5.0-24&fd00:5::-64`, "10.244.5.0/24", "fd00:5::/64"],
    [`${P}/subnets/0.0.0.0-0&fd00:10:244:3::-64`, "0.0.0.0/0", "fd00:10:244:3::/64"],
  ])("%s holds %s and %s", (key, cidr, cidr6) => {
    const { subnet, ipv6Subnet } = parseSubnetKey(key);
    expect(formatCidr(subnet)).toBe(cidr);
    expect(ipv6Subnet === undefined ? undefined : formatCidr6(ipv6Subnet)).toBe(cidr6);
  });

  it.each([
    ["10.12.13.0/24", "fd00:12:13::/56", `${P}/subnets/10.12.13.0-24&fd00:12:13::-56`],
    ["0.0.0.0/0", "fd00:10:244:3::/64", `${P}/subnets/0.0.0.0-0&fd00:10:244:3::-64`],
    ["10.244.0.0/24", "2001:db8:0:1::/64", `${P}/subnets/10.244.0.0-24&2001:db8:0:1::-64`],
  ])("subnetKey(%s, %s) is %s, as flannel's MakeSubnetKey writes it", (cidr, cidr6, key) => {
    expect(subnetKey(P, parseCidr(cidr), parseCidr6(cidr6))).toBe(key);
  });

  it("names a lease by both subnets", () => {
    expect(leaseName(parseSubnetKey("10.12.13.0-24&fd00:12:13::-56"))).toBe("10.12.13.0/24+fd00:12:13::/56");
    expect(leaseName(parseSubnetKey("0.0.0.0-0&fd00:12:13::-56"))).toBe("fd00:12:13::/56");
    expect(leaseName(parseSubnetKey("10.12.13.0-24"))).toBe("10.12.13.0/24");
  });

  it.each([
    ["10.12.13.0-24&fd00:12:13::-128", "IPv6 prefix length 128 is out of range 1–127"],
    ["10.12.13.0-24&fd00:12:13:::-56", '"fd00:12:13:::" is not an IPv6 address'],
    ["10.12.13.1-24&fd00:12:13::-56", "has host bits set for /24"],
  ])("rejects %s (%s)", (key, why) => {
    expect(() => parseSubnetKey(key)).toThrow(why);
  });
});

describe("leasesForAllocation", () => {
  it("counts a dual-stack lease's IPv4 subnet as taken, so it is never handed out again", () => {
    const leases = leasesForAllocation([
      {
        key: `${P}/subnets/10.244.5.0-24&fd00:5::-64`,
        value: '{"PublicIP":"198.18.0.5","PublicIPv6":"2001:db8::5"}',
        etcdLeaseId: "1",
        createRevision: 2,
        modRevision: 2,
      },
      {
        key: `${P}/subnets/10.244.6.0-24`,
        value: "garbage",
        etcdLeaseId: "1",
        createRevision: 3,
        modRevision: 3,
      },
      { key: `${P}/subnets/not-a-subnet`, value: "{}", etcdLeaseId: "1", createRevision: 4, modRevision: 4 },
    ]);
    expect(leases.map((l) => formatCidr(l.subnet))).toEqual(["10.244.5.0/24", "10.244.6.0/24"]);
    expect(leases.map((l) => l.ipv6Subnet && formatCidr6(l.ipv6Subnet))).toEqual(["fd00:5::/64", undefined]);
  });
});

describe("flannel's pkg/subnet/subnet_test.go, transcribed", () => {
  it("TestSubnetNodev4: 10.12.13.0-24 is 10.12.13.0/24 without IPv6, and MakeSubnetKey gives the key back", () => {
    const { subnet, ipv6Subnet } = parseSubnetKey("10.12.13.0-24");
    expect(formatCidr(subnet)).toBe("10.12.13.0/24");
    expect(ipv6Subnet).toBeUndefined();
    expect(subnetKey(P, subnet, ipv6Subnet)).toBe(`${P}/subnets/10.12.13.0-24`);
  });

  it("TestSubnetNodev6: 10.12.13.0-24&fd00:12:13::-56 is both, and MakeSubnetKey gives the key back", () => {
    const { subnet, ipv6Subnet } = parseSubnetKey("10.12.13.0-24&fd00:12:13::-56");
    expect(formatCidr(subnet)).toBe("10.12.13.0/24");
    expect(ipv6Subnet && formatCidr6(ipv6Subnet)).toBe("fd00:12:13::/56");
    expect(subnetKey(P, subnet, ipv6Subnet)).toBe(`${P}/subnets/10.12.13.0-24&fd00:12:13::-56`);
  });

  it.each([
    "10",
    "10.12.13.0",
    "10.12.13-24",
    "10.12.13.300-24",
    "10.12.13.0-24hi",
    "&2001::-56",
    "10.12.13.0-24&:12:13:-56",
    "10.12.13.0-24&20011::-56",
    "10.12.13.0-24&2001-56",
    "10.12.13.0-24&2001::",
    "10.12.13.0-24&2001::-56hi",
  ])("TestSubnetNodeInvalid: %s is not a lease key", (key) => {
    expect(() => parseSubnetKey(key)).toThrow(SubnetKeyError);
    expect(tryParseSubnetKey(key)).toBeUndefined();
  });

  it.each([
    ["10.5.1.0-24", "10.5.1.0/24", undefined],
    ["10.5.1.0-24&fc00::-64", "10.5.1.0/24", "fc00::/64"],
    ["255.255.255.255-32", undefined, undefined],
    ["garbage", undefined, undefined],
    ["", undefined, undefined],
  ])("FuzzParseSubnetKey's seed %j", (key, cidr, cidr6) => {
    const parsed = tryParseSubnetKey(key);
    expect(parsed && formatCidr(parsed.subnet)).toBe(cidr);
    expect(parsed?.ipv6Subnet && formatCidr6(parsed.ipv6Subnet)).toBe(cidr6);
  });
});

describe("IPv6 in lease keys", () => {
  it.each([
    // Go's net.IP.String spelling of the subnet, which is what a flanneld writes
    ["10.244.5.0/24", "fd00:10:244:5::/64", `${P}/subnets/10.244.5.0-24&fd00:10:244:5::-64`],
    ["10.244.5.0/24", "2001:db8:0:5::/64", `${P}/subnets/10.244.5.0-24&2001:db8:0:5::-64`],
    ["10.244.5.0/24", "2001:db8::/64", `${P}/subnets/10.244.5.0-24&2001:db8::-64`],
    ["10.244.5.0/24", "fd00:10:244:5:8000::/65", `${P}/subnets/10.244.5.0-24&fd00:10:244:5:8000::-65`],
    ["0.0.0.0/0", "fd00:10:244:ff::/64", `${P}/subnets/0.0.0.0-0&fd00:10:244:ff::-64`],
    ["0.0.0.0/0", "fd00:10:244:100::/56", `${P}/subnets/0.0.0.0-0&fd00:10:244:100::-56`],
  ])("%s + %s → %s, and back", (cidr, cidr6, key) => {
    expect(subnetKey(P, parseCidr(cidr), parseCidr6(cidr6))).toBe(key);
    expect(subnetKey(`${P}/`, parseCidr(cidr), parseCidr6(cidr6))).toBe(key);
    const parsed = parseSubnetKey(key);
    expect(formatCidr(parsed.subnet)).toBe(cidr);
    expect(parsed.ipv6Subnet && formatCidr6(parsed.ipv6Subnet)).toBe(cidr6);
  });

  it("a key spelled with a long form of the IPv6 address still names the subnet", () => {
    const parsed = parseSubnetKey(`${P}/subnets/10.244.5.0-24&fd00:0010:0244:0005:0:0:0:0-64`);
    expect(parsed.ipv6Subnet && formatCidr6(parsed.ipv6Subnet)).toBe("fd00:10:244:5::/64");
    // Written back, it is the canonical (flannel's) spelling.
    expect(subnetKey(P, parsed.subnet, parsed.ipv6Subnet)).toBe(
      `${P}/subnets/10.244.5.0-24&fd00:10:244:5::-64`,
    );
  });

  it.each([
    ["10.244.5.0-24&FD00:10:244:5::-64", "does not have the form"], // flannel's regex is lower case only
    ["10.244.5.0-24&fd00:10:244:5::", "does not have the form"],
    ["10.244.5.0-24&fd00:10:244:5::-", "does not have the form"],
    ["10.244.5.0-24&fd00:10:244:5::/64", "does not have the form"],
    ["10.244.5.0-24&&fd00::-64", "does not have the form"],
    ["10.244.5.0-24&fd00::-64&fd01::-64", "does not have the form"],
    ["10.244.5.0-24&::ffff:1.2.3.0-120", "does not have the form"],
    ["10.244.5.0-24&fd00:10:244:5::-129", "IPv6 prefix length 129 is out of range 1–127"],
    ["10.244.5.0-24&fd00:10:244:5::-00", "IPv6 prefix length 00 is out of range 1–127"],
    ["10.244.5.0-24&1:2:3:4:5:6:7:8:9-64", '"1:2:3:4:5:6:7:8:9" is not an IPv6 address'],
    [
      "10.244.5.0-24&fd00:10:244:5::1-64",
      "fd00:10:244:5::1 has host bits set for /64 (the network address is fd00:10:244:5::)",
    ],
    ["10.244.5.0-24&fd00:10:244:5:8000::-64", "the network address is fd00:10:244:5::"],
    ["10.244.5.0-32&fd00:10:244:5::-64", "prefix length 32 is out of range 0–31"],
  ])("rejects %s (%s), naming the key", (tail, why) => {
    const key = `${P}/subnets/${tail}`;
    let caught: unknown;
    try {
      parseSubnetKey(key);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SubnetKeyError);
    expect((caught as SubnetKeyError).key).toBe(key);
    expect((caught as SubnetKeyError).reason).toContain(why);
  });
});

describe("hasIPv4 / leaseName", () => {
  it.each([
    ["10.244.5.0/24", true],
    ["10.0.0.0/8", true],
    ["0.0.0.0/0", false], // flannel's empty IPv4 subnet of an IPv6-only lease
  ])("hasIPv4(%s) = %s", (cidr, expected) => {
    expect(hasIPv4(parseCidr(cidr))).toBe(expected);
  });

  it.each<[string, string | undefined, string]>([
    ["10.244.5.0/24", undefined, "10.244.5.0/24"],
    ["10.244.5.0/24", "fd00:10:244:5::/64", "10.244.5.0/24+fd00:10:244:5::/64"],
    ["0.0.0.0/0", "fd00:10:244:5::/64", "fd00:10:244:5::/64"],
    // a key that names neither (never a lease twill writes) still gets a name
    ["0.0.0.0/0", undefined, "0.0.0.0/0"],
  ])("leaseName(%s, %s) = %s", (cidr, cidr6, name) => {
    expect(
      leaseName({ subnet: parseCidr(cidr), ipv6Subnet: cidr6 === undefined ? undefined : parseCidr6(cidr6) }),
    ).toBe(name);
  });
});
