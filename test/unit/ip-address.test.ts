// One spelling per address (so string equality is address equality in the kernel view's keys), and
// the MAC forms flannel's Go code accepts.
import { describe, expect, it } from "vitest";
import {
  AddressError,
  canonicalAddress,
  familyOf,
  formatAddress,
  formatPrefix,
  parseAddressBytes,
  parsePrefix,
  prefixContains,
  prefixText,
} from "../../src/ip/address.js";
import { isUnicastMac, parseMac, randomVtepMac, unicastMacProblem } from "../../src/ip/mac.js";

describe("canonical addresses", () => {
  it.each([
    ["10.244.5.1", "10.244.5.1"],
    ["0.0.0.0", "0.0.0.0"],
    // RFC 5952: lower case, no leading zeros, the longest run of zero groups as "::" …
    ["2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["FE80::1", "fe80::1"],
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
    // … the first one when two runs tie …
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    // … and never a single zero group.
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["0:0:0:0:0:0:0:0", "::"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["1:0:0:0:0:0:0:0", "1::"],
    ["fd00:1::", "fd00:1::"],
    // IPv4-mapped addresses keep their dotted tail, however they were written.
    ["::ffff:c000:0201", "::ffff:192.0.2.1"],
    ["::FFFF:192.0.2.1", "::ffff:192.0.2.1"],
    ["0:0:0:0:0:ffff:10.1.2.3", "::ffff:10.1.2.3"],
    // A dotted tail elsewhere is just two groups.
    ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
  ])("%s → %s", (text, canonical) => {
    expect(canonicalAddress(text)).toBe(canonical);
    expect(canonicalAddress(canonical)).toBe(canonical);
  });

  it("formats any 16 bytes so that parsing gives the same bytes back", () => {
    // Deterministic bytes with plenty of zero groups, so every "::" placement comes up.
    let seed = 7;
    const next = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    for (let i = 0; i < 2000; i++) {
      const bytes = new Uint8Array(16);
      for (let g = 0; g < 8; g++) {
        if (next() % 2 === 0) continue; // a zero group
        bytes[2 * g] = next() % 256;
        bytes[2 * g + 1] = next() % 256;
      }
      const text = formatAddress(bytes);
      expect(parseAddressBytes(text), text).toEqual(bytes);
      expect(canonicalAddress(text), text).toBe(text);
    }
  });

  it("parses IPv4 into 4 bytes and IPv6 (mapped too) into 16", () => {
    expect(parseAddressBytes("198.18.0.1")).toEqual(Uint8Array.from([198, 18, 0, 1]));
    expect(parseAddressBytes("::ffff:198.18.0.1")).toEqual(
      Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1]),
    );
    expect(familyOf("198.18.0.1")).toBe(4);
    expect(familyOf("::ffff:198.18.0.1")).toBe(6);
    expect(familyOf("fe80::1")).toBe(6);
  });

  it.each([
    "",
    "1.2.3",
    "256.1.1.1",
    "010.1.1.1",
    " 10.1.1.1",
    "1:2:3:4:5:6:7:8:9",
    "fe80::1%eth0",
    "2001:db8::g",
    "banana",
  ])("rejects %j, naming it", (text) => {
    expect(() => parseAddressBytes(text)).toThrow(AddressError);
    expect(() => parseAddressBytes(text)).toThrow(`"${text}" is not an IP address`);
    expect(() => canonicalAddress(text)).toThrow(`"${text}"`);
    expect(() => familyOf(text)).toThrow(`"${text}"`);
  });

  it("formats only 4 or 16 bytes", () => {
    expect(() => formatAddress(new Uint8Array(6))).toThrow("an address has 4 or 16 bytes, not 6");
  });
});

describe("prefixes", () => {
  it.each([
    ["10.244.5.7/24", 4, "10.244.5.0", 24],
    ["10.244.5.7/32", 4, "10.244.5.7", 32],
    ["10.244.255.255/13", 4, "10.240.0.0", 13],
    ["192.0.2.1/0", 4, "0.0.0.0", 0],
    ["2001:db8::1/64", 6, "2001:db8::", 64],
    ["fd00:1:2:ffff::/50", 6, "fd00:1:2:c000::", 50],
    ["FD00::1/128", 6, "fd00::1", 128],
    ["fd00::1/0", 6, "::", 0],
  ])("%s → %s %s/%s (host bits dropped)", (text, family, address, length) => {
    const prefix = parsePrefix(text);
    expect(prefix).toEqual({ family, address, length });
    expect(parsePrefix(formatPrefix(prefix))).toEqual(prefix);
    expect(prefixText(parseAddressBytes(text.split("/")[0] ?? ""), length)).toBe(formatPrefix(prefix));
  });

  it.each([
    ["10.0.0.0", '"10.0.0.0" is not in CIDR notation (address/prefix-length)'],
    ["10.0.0.0/33", '"10.0.0.0/33" has an invalid prefix length (0–32)'],
    ["fd00::/129", '"fd00::/129" has an invalid prefix length (0–128)'],
    ["10.0.0.0/-1", '"10.0.0.0/-1" has an invalid prefix length (0–32)'],
    ["10.0.0.0/", '"10.0.0.0/" has an invalid prefix length (0–32)'],
    ["banana/16", '"banana" is not an IP address'],
  ])("rejects %s: %s", (text, message) => {
    expect(() => parsePrefix(text)).toThrow(AddressError);
    expect(() => parsePrefix(text)).toThrow(message);
  });

  it.each([
    ["198.18.0.0/24", "198.18.0.7", true],
    ["198.18.0.0/24", "198.18.1.7", false],
    ["198.18.0.0/24", "198.18.0.255", true],
    ["0.0.0.0/0", "203.0.113.9", true],
    ["fd00:1::/64", "FD00:1::5", true],
    ["fd00:1::/64", "fd00:1:0:1::5", false],
    // Families never mix, not even through a mapped address.
    ["0.0.0.0/0", "::ffff:198.18.0.7", false],
    ["::/0", "198.18.0.7", false],
    ["::ffff:0:0/96", "::ffff:198.18.0.7", true],
  ])("%s contains %s: %s", (prefix, address, inside) => {
    expect(prefixContains(parsePrefix(prefix), address)).toBe(inside);
  });
});

describe("parseMac", () => {
  it.each([
    ["0a:00:00:00:00:02", "0a:00:00:00:00:02"],
    ["C6:D2:32:6F:8F:44", "c6:d2:32:6f:8f:44"],
    ["c6-d2-32-6f-8f-44", "c6:d2:32:6f:8f:44"],
    ["c6d2.326f.8f44", "c6:d2:32:6f:8f:44"],
    ["C6D2.326F.8F44", "c6:d2:32:6f:8f:44"],
    // The persisted VTEP MAC is a line in a file.
    ["c6:d2:32:6f:8f:44\n", "c6:d2:32:6f:8f:44"],
  ])("reads %j as %s", (text, mac) => {
    expect(parseMac(text)).toBe(mac);
  });

  it.each([
    ["c6:d2-32:6f:8f:44", "mixed separators (Go refuses them too)"],
    ["c6:d2:32:6f:8f", "five octets"],
    ["02:00:5e:10:00:00:00:01", "eight octets (EUI-64: Go reads it, but no VTEP has one)"],
    ["c6:d2:32:6f:8f:4", "a one-digit octet"],
    ["c:d2:32:6f:8f:44", "a one-digit first octet"],
    ["c6d2326f8f44", "no separators"],
    ["c6d2.326f.8f4", "a short dotted group"],
    ["c6:d2:32:6f:8f:44:", "a trailing separator"],
    ["zz:d2:32:6f:8f:44", "not hex"],
    ["", "nothing"],
  ])("refuses %j: %s", (text) => {
    expect(parseMac(text)).toBeUndefined();
  });

  it("tells unicast device addresses from those that cannot be one", () => {
    expect(unicastMacProblem("0a:00:00:00:00:02")).toBeUndefined();
    expect(unicastMacProblem("00:00:00:00:00:00")).toBe("the all-zero address");
    expect(unicastMacProblem("01:00:5e:00:00:01")).toBe("a multicast/broadcast address");
    expect(unicastMacProblem("ff:ff:ff:ff:ff:ff")).toBe("a multicast/broadcast address");
    expect(isUnicastMac("0a:00:00:00:00:02")).toBe(true);
    expect(isUnicastMac("33:33:00:00:00:01")).toBe(false);
  });

  it("makes random VTEP MACs that are locally administered unicast addresses, as flannel does", () => {
    expect(randomVtepMac(Uint8Array.from([0xff, 1, 2, 3, 4, 5]))).toBe("fe:01:02:03:04:05");
    expect(randomVtepMac(Uint8Array.from([0x00, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]))).toBe("02:aa:bb:cc:dd:ee");
    const mac = randomVtepMac();
    expect(parseMac(mac)).toBe(mac);
    expect(isUnicastMac(mac)).toBe(true);
  });
});
