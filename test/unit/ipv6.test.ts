// IPv6 addresses and subnets as bigints (src/ip/ipv6.ts): text in any valid spelling in, RFC 5952 out
// (what Go's net.IP.String writes into flannel's keys and lease values), and the arithmetic the
// allocator and the peer view do on them. flannel's own cases (pkg/ip/ip6net_test.go, fuzz_test.go)
// are transcribed where twill has the same operation.
import { describe, expect, it } from "vitest";
import {
  containsIp6,
  containsSubnet6,
  firstHost6,
  formatCidr6,
  formatIPv6,
  ipv6Bytes,
  Ipv6ParseError,
  keyText6,
  maskOf6,
  nextSubnetAddress6,
  overlaps6,
  parseCidr6,
  parseIPv6,
  sameSubnet6,
  sizeOf6,
  tryParseIPv6,
  unusableUnicastReason6,
  type Subnet6,
} from "../../src/ip/ipv6.js";

const ALL_ONES = (1n << 128n) - 1n;
const cidr = (text: string): Subnet6 => parseCidr6(text);

/** mulberry32: a small seeded PRNG, so a failing case can be replayed from its seed. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * An independent RFC 5952 oracle: the WHATWG URL serializer compresses the first longest run (> 1) of
 * zero groups, as RFC 5952 and Go do (it writes IPv4-mapped addresses in hex, so those are left out).
 */
function urlSpelling(text: string): string {
  return new URL(`http://[${text}]/`).hostname.slice(1, -1);
}

describe("parseIPv6 / formatIPv6: RFC 5952 text, as Go's net.IP.String writes it", () => {
  it.each([
    // flannel's TestIP6 and FuzzParseIP6 seeds
    ["fc00::1", "fc00::1"],
    ["::", "::"],
    ["::1", "::1"],
    ["2001:db8::ff00:42:8329", "2001:db8::ff00:42:8329"],
    // the prefixes and addresses of twill's tests and docs
    ["fd00:10:244:1::", "fd00:10:244:1::"],
    ["FD00:0010:0244:0001:0000:0000:0000:0000", "fd00:10:244:1::"],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["2001:db8:18::5", "2001:db8:18::5"],
    ["2001:DB8::A", "2001:db8::a"],
    // leading zeros dropped; at most four hex digits per group
    ["0001:0002::", "1:2::"],
    // one zero group is never "::" (RFC 5952 4.2.2)
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
    ["::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"],
    // the longest run is compressed (4.2.3) …
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
    ["2001:db8:0:1:0:0:0:0", "2001:db8:0:1::"],
    // … the first one on a tie
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["1:0:0:2:0:0:3:4", "1::2:0:0:3:4"],
    ["1::", "1::"],
    ["fe80::1:2", "fe80::1:2"],
    ["ff02::1", "ff02::1"],
    // a dotted tail stands for the last two groups; only IPv4-mapped addresses keep it (below)
    ["::1.2.3.4", "::102:304"],
    ["64:ff9b::1.2.3.4", "64:ff9b::102:304"],
    ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
    ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ])("%s → %s", (text, canonical) => {
    const ip = parseIPv6(text);
    expect(formatIPv6(ip)).toBe(canonical);
    // Canonical text reads back to the same number and is its own canonical form.
    expect(parseIPv6(canonical)).toBe(ip);
    expect(formatIPv6(parseIPv6(canonical))).toBe(canonical);
    expect(tryParseIPv6(text)).toBe(ip);
  });

  it("writes an IPv4-mapped address with its dotted tail (RFC 5952 section 5, as iproute2 prints it)", () => {
    // Go's net.IP.String would write "1.2.3.4" here; such an address is never a usable PublicIPv6
    // (unusableUnicastReason6) and never inside an IPv6Network flannel could key, so no key or lease
    // value twill writes can differ from flannel's because of it.
    expect(formatIPv6(parseIPv6("::ffff:1.2.3.4"))).toBe("::ffff:1.2.3.4");
    expect(formatIPv6(parseIPv6("::FFFF:102:304"))).toBe("::ffff:1.2.3.4");
    expect(formatIPv6(parseIPv6("::ffff:0:0"))).toBe("::ffff:0.0.0.0");
    expect(parseIPv6("::ffff:1.2.3.4")).toBe(0xffff01020304n);
  });

  it.each([
    "",
    "not-an-ip", // FuzzParseIP6's seed
    "1.2.3.4", // an IPv4 address: flannel's ParseIP6 would take it as ::ffff:1.2.3.4
    "10.244.0.0",
    ":::",
    "1::2::3",
    "12345::",
    "00001::",
    "g::",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "1::2:3:4:5:6:7:8", // "::" must stand for at least one group, as in Go
    "1:2:3:4:5:6:7:1.2.3.4",
    "::ffff:1.2.3.04", // Go ≥ 1.17 rejects leading zeros in the dotted part
    "::ffff:256.1.1.1",
    "::ffff:1.2.3",
    "::ffff:1.2.3.4:5",
    "fe80::1%eth0", // no zones
    "[::1]",
    " ::1",
    "::1 ",
    "::-1",
    "fd00::/64",
  ])("rejects %j naming the text", (text) => {
    expect(() => parseIPv6(text)).toThrow(Ipv6ParseError);
    expect(() => parseIPv6(text)).toThrow(`"${text}" is not an IPv6 address`);
    expect(tryParseIPv6(text)).toBeUndefined();
  });

  it("Ipv6ParseError is an Error with its own name", () => {
    let caught: unknown;
    try {
      parseIPv6("nope");
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(Error);
    expect((caught as Error).name).toBe("Ipv6ParseError");
  });

  it("round-trips 5,000 random addresses, and agrees with an independent RFC 5952 serializer (FuzzParseIP6's property)", () => {
    const random = seeded(6);
    for (let i = 0; i < 5000; i++) {
      // Groups are zero half the time, so zero runs of every length and position come up.
      let ip = 0n;
      for (let g = 0; g < 8; g++) {
        const group = random() < 0.5 ? 0 : Math.floor(random() * 0x10000);
        ip = (ip << 16n) | BigInt(group);
      }
      const text = formatIPv6(ip);
      const where = `${ip.toString(16)} → ${text}`;
      expect(parseIPv6(text), where).toBe(ip);
      expect(text, where).toBe(text.toLowerCase());
      expect(text.split("::").length, where).toBeLessThanOrEqual(2);
      expect(text, where).not.toMatch(/(^|:)0[0-9a-f]/);
      if (ip >> 32n !== 0xffffn) expect(text, where).toBe(urlSpelling(text));
    }
  });
});

describe("ipv6Bytes", () => {
  it.each([
    ["::", "00000000000000000000000000000000"],
    ["::1", "00000000000000000000000000000001"],
    ["fd00:10:244:1::", "fd000010024400010000000000000000"],
    ["2001:db8::ff00:42:8329", "20010db8000000000000ff0000428329"],
  ])("%s → %s", (text, hex) => {
    const bytes = ipv6Bytes(parseIPv6(text));
    expect(bytes).toHaveLength(16);
    expect(Buffer.from(bytes).toString("hex")).toBe(hex);
  });
});

describe("maskOf6 / sizeOf6", () => {
  it.each<[number, bigint, bigint]>([
    [0, 0n, 1n << 128n],
    [1, 1n << 127n, 1n << 127n],
    [48, ((1n << 48n) - 1n) << 80n, 1n << 80n],
    [56, ((1n << 56n) - 1n) << 72n, 1n << 72n],
    [64, ((1n << 64n) - 1n) << 64n, 1n << 64n],
    [124, ALL_ONES ^ 0xfn, 16n],
    [127, ALL_ONES ^ 1n, 2n],
    [128, ALL_ONES, 1n],
  ])("/%i: its mask and its number of addresses", (prefixLen, mask, size) => {
    expect(maskOf6(prefixLen)).toBe(mask);
    expect(sizeOf6(prefixLen)).toBe(size);
    // A mask is prefixLen ones and then zeros, 128 bits in all.
    const bits = maskOf6(prefixLen).toString(2).padStart(128, "0");
    expect(bits).toBe("1".repeat(prefixLen) + "0".repeat(128 - prefixLen));
  });

  it("/64 is ffff:ffff:ffff:ffff::", () => {
    expect(formatIPv6(maskOf6(64))).toBe("ffff:ffff:ffff:ffff::");
    expect(formatIPv6(maskOf6(56))).toBe("ffff:ffff:ffff:ff00::");
  });
});

describe("parseCidr6 / formatCidr6 / keyText6", () => {
  it.each([
    ["fd00:10:244::/56", "fd00:10:244::/56", "fd00:10:244::-56"],
    ["fd00:10:244:1::/64", "fd00:10:244:1::/64", "fd00:10:244:1::-64"],
    // host bits are dropped, as Go's net.ParseCIDR does
    ["fd00:10:244:1::5/64", "fd00:10:244:1::/64", "fd00:10:244:1::-64"],
    ["fd00:12:13:ff::/56", "fd00:12:13::/56", "fd00:12:13::-56"],
    ["FC00:1::/64", "fc00:1::/64", "fc00:1::-64"],
    ["2001:db8:0:1::/64", "2001:db8:0:1::/64", "2001:db8:0:1::-64"],
    ["::/0", "::/0", "::-0"],
    ["2001:db8::1/128", "2001:db8::1/128", "2001:db8::1-128"],
    // leading zeros in the length, as Go's dtoi takes them
    ["fd00::/064", "fd00::/64", "fd00::-64"],
  ])("%s → %s (key text %s)", (text, canonical, key) => {
    const subnet = parseCidr6(text);
    expect(formatCidr6(subnet)).toBe(canonical);
    expect(keyText6(subnet)).toBe(key);
    expect(parseCidr6(canonical)).toEqual(subnet);
  });

  it.each([
    ["fd00::", "is not in CIDR notation (address/prefix-length)"],
    ["fd00::/129", "has an invalid prefix length (0–128)"],
    ["fd00::/1000", "has an invalid prefix length (0–128)"],
    ["fd00::/-1", "has an invalid prefix length (0–128)"],
    ["fd00::/", "has an invalid prefix length (0–128)"],
    ["fd00::/64x", "has an invalid prefix length (0–128)"],
    ["fd00::/ 64", "has an invalid prefix length (0–128)"],
    ["10.244.0.0/16", '"10.244.0.0" is not an IPv6 address'],
    ["fd00::g/64", '"fd00::g" is not an IPv6 address'],
    ["/64", '"" is not an IPv6 address'],
  ])("rejects %s (%s)", (text, why) => {
    expect(() => parseCidr6(text)).toThrow(Ipv6ParseError);
    expect(() => parseCidr6(text)).toThrow(why);
  });
});

describe("nextSubnetAddress6 / firstHost6", () => {
  it.each([
    ["fd00:10:244:1::/64", "fd00:10:244:2::", "fd00:10:244:1::1"],
    ["fd00:10:244:ff::/64", "fd00:10:244:100::", "fd00:10:244:ff::1"],
    ["fd00:10:244::/56", "fd00:10:244:100::", "fd00:10:244::1"],
    ["fc00:1::/64", "fc00:1:0:1::", "fc00:1::1"], // flannel's TestIP6Net IncrementIP: fc00:1::1/64
    ["2001:db8::/127", "2001:db8::2", "2001:db8::1"],
    ["2001:db8::5/128", "2001:db8::6", "2001:db8::6"],
  ])("%s: next subnet at %s, first host %s", (text, next, first) => {
    expect(formatIPv6(nextSubnetAddress6(cidr(text)))).toBe(next);
    expect(formatIPv6(firstHost6(cidr(text)))).toBe(first);
  });

  it("the last subnet's successor is 2^128, past every address, never wrapping to ::", () => {
    expect(nextSubnetAddress6(cidr("ffff:ffff:ffff:ffff::/64"))).toBe(1n << 128n);
    expect(nextSubnetAddress6(cidr("::/0"))).toBe(1n << 128n);
  });

  it("steps through a pool: SubnetMin + k·size", () => {
    let subnet = cidr("fd00:10:244:1::/64");
    const seen: string[] = [];
    for (let i = 0; i < 3; i++) {
      seen.push(formatCidr6(subnet));
      subnet = { ip: nextSubnetAddress6(subnet), prefixLen: 64 };
    }
    expect(seen).toEqual(["fd00:10:244:1::/64", "fd00:10:244:2::/64", "fd00:10:244:3::/64"]);
  });
});

describe("containsIp6 / containsSubnet6 / overlaps6 (flannel's TestIP6Net)", () => {
  const n1 = cidr("fc00:1::/64");

  it.each([
    ["fc00:1::", true],
    ["fc00:1::1", true],
    ["fc00:1::ffff:ffff:ffff:ffff", true],
    ["fc00:2::", false],
    ["fc00:1:0:1::", false],
    ["fc00::", false],
  ])("fc00:1::/64 contains %s: %s", (ip, expected) => {
    expect(containsIp6(n1, parseIPv6(ip))).toBe(expected);
  });

  it.each([
    ["fc00:1::/64", "fc00:1::/64", true], // n1.Overlaps(n1)
    ["fc00:1::/64", "fc00::/16", true], // … fc00::/16
    ["fc00:1::/64", "fc00:2::/64", false],
    ["fc00:1::/64", "fb00:2::/48", false],
    ["fd00:10:244::/56", "fd00:10:244:7::/64", true],
    ["fd00:10:244::/56", "fd00:10:245::/64", false],
    ["fd00:10:244:7::/64", "fd00:10:244:7:8000::/65", true],
    ["::/0", "2001:db8::/32", true],
    ["2001:db8::1/128", "2001:db8::/127", true],
    ["2001:db8::2/128", "2001:db8::/127", false],
  ])("%s and %s overlap: %s (both ways)", (a, b, expected) => {
    expect(overlaps6(cidr(a), cidr(b))).toBe(expected);
    expect(overlaps6(cidr(b), cidr(a))).toBe(expected);
  });

  it.each([
    ["fd00:10:244::/56", "fd00:10:244:7::/64", true],
    ["fd00:10:244:7::/64", "fd00:10:244::/56", false],
    ["fd00:10:244:7::/64", "fd00:10:244:7::/64", true],
    ["fd00:10:244::/56", "fd00:10:245::/64", false],
    ["fd00:10:244::/56", "fd00:10:244::/48", false],
    ["::/0", "ffff::/16", true],
  ])("%s contains %s: %s", (outer, inner, expected) => {
    expect(containsSubnet6(cidr(outer), cidr(inner))).toBe(expected);
  });

  it("sameSubnet6 compares address and length; two undefined are the same", () => {
    expect(sameSubnet6(cidr("fd00:1::/64"), cidr("fd00:1::5/64"))).toBe(true);
    expect(sameSubnet6(cidr("fd00:1::/64"), cidr("fd00:1::/63"))).toBe(false);
    expect(sameSubnet6(cidr("fd00:1::/64"), cidr("fd00:2::/64"))).toBe(false);
    expect(sameSubnet6(cidr("fd00:1::/64"), undefined)).toBe(false);
    expect(sameSubnet6(undefined, cidr("fd00:1::/64"))).toBe(false);
    expect(sameSubnet6(undefined, undefined)).toBe(true);
  });
});

describe("unusableUnicastReason6: what cannot be a node's PublicIPv6", () => {
  it.each<[string, string | undefined]>([
    ["::", "the unspecified address"],
    ["::1", "the loopback address"],
    ["::ffff:1.2.3.4", "an IPv4-mapped address"],
    ["::ffff:0.0.0.0", "an IPv4-mapped address"],
    ["::ffff:255.255.255.255", "an IPv4-mapped address"],
    ["fe80::1", "a link-local address (fe80::/10)"],
    ["fe80::", "a link-local address (fe80::/10)"],
    ["febf:ffff::1", "a link-local address (fe80::/10)"],
    ["ff02::1", "a multicast address"],
    ["ff00::", "a multicast address"],
    ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "a multicast address"],
    // usable: global, unique-local, documentation, just outside the ranges above
    ["2001:db8::1", undefined],
    ["2001:db8:18::5", undefined],
    ["fd00::1", undefined],
    ["fc00::1", undefined],
    ["fec0::1", undefined],
    ["fe7f:ffff::1", undefined],
    ["::2", undefined],
    ["::fffe:1.2.3.4", undefined],
    ["1::ffff:1.2.3.4", undefined],
    ["64:ff9b::1.2.3.4", undefined],
  ])("%s → %s", (ip, reason) => {
    expect(unusableUnicastReason6(parseIPv6(ip))).toBe(reason);
  });
});
