// flannel's LeaseAttrs JSON, byte for byte. The vxlan BackendData inside it is the vxlan backend's to
// read: see backends.test.ts.
import { describe, it, expect } from "vitest";
import { parseIPv4 } from "../../src/ip/ipv4.js";
import {
  decodeLeaseAttrs,
  encodeLeaseAttrs,
  LeaseDecodeError,
  publicIpProblem,
  publicIpv6Problem,
} from "../../src/lease/attrs.js";
import type { LeaseAttrs } from "../../src/lease/lease.js";

function attrs(over: Partial<LeaseAttrs> = {}): LeaseAttrs {
  return {
    publicIP: parseIPv4("10.0.0.2"),
    publicIPv6: null,
    backendType: undefined,
    backendData: undefined,
    backendV6Data: undefined,
    ...over,
  };
}

function errorOf(fn: () => unknown): LeaseDecodeError {
  try {
    fn();
  } catch (err) {
    if (err instanceof LeaseDecodeError) return err;
    throw err;
  }
  throw new Error("expected a LeaseDecodeError");
}

describe("encode/decode LeaseAttrs — flannel's own examples, byte for byte", () => {
  it.each([
    '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
    '{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"host-gw"}',
    '{"PublicIP":"10.0.0.2","PublicIPv6":null}',
  ])("%s", (text) => {
    expect(encodeLeaseAttrs(decodeLeaseAttrs(text))).toBe(text);
  });

  it("decodes the vxlan example into its fields", () => {
    const text =
      '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}';
    expect(decodeLeaseAttrs(text)).toEqual({
      publicIP: parseIPv4("192.168.64.3"),
      publicIPv6: null,
      backendType: "vxlan",
      backendData: '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}',
      backendV6Data: undefined,
    });
  });
});

describe("encodeLeaseAttrs", () => {
  it.each<[string, Partial<LeaseAttrs>, string]>([
    ["empty BackendType omitted", { backendType: "" }, '{"PublicIP":"10.0.0.2","PublicIPv6":null}'],
    [
      "BackendV6Data last",
      { backendType: "vxlan", backendData: '{"VNI":1}', backendV6Data: '{"VNI":2}' },
      '{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1},"BackendV6Data":{"VNI":2}}',
    ],
    ["a PublicIPv6 string", { publicIPv6: "fd00::1" }, '{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::1"}'],
    [
      "Go's HTML-safe escapes",
      { backendType: "a<b>&", backendData: '{"x":"<&>"}' },
      '{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"a\\u003cb\\u003e\\u0026","BackendData":{"x":"\\u003c\\u0026\\u003e"}}',
    ],
    ["PublicIP 0.0.0.0 (Go's zero value)", { publicIP: 0 }, '{"PublicIP":"0.0.0.0","PublicIPv6":null}'],
  ])("%s", (_name, over, expected) => {
    expect(encodeLeaseAttrs(attrs(over))).toBe(expected);
  });
});

describe("decodeLeaseAttrs", () => {
  it.each<[string, string, Partial<LeaseAttrs>]>([
    ["lower-case keys", '{"publicip":"10.0.0.2","backendtype":"host-gw"}', { backendType: "host-gw" }],
    [
      "mixed-case keys",
      '{"PUBLICIP":"10.0.0.2","BackEndType":"vxlan","backenddata":{"a":1}}',
      {
        backendType: "vxlan",
        backendData: '{"a":1}',
      },
    ],
    ["unknown keys ignored", '{"PublicIP":"10.0.0.2","Expiration":"x","Foo":[1,2]}', {}],
    ["empty BackendType → undefined", '{"PublicIP":"10.0.0.2","BackendType":""}', { backendType: undefined }],
    ["null BackendType → undefined (Go leaves it empty)", '{"PublicIP":"10.0.0.2","BackendType":null}', {}],
    ["PublicIPv6 absent → null", '{"PublicIP":"10.0.0.2"}', { publicIPv6: null }],
    ["PublicIPv6 string kept", '{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::1"}', { publicIPv6: "fd00::1" }],
    [
      "BackendData compacted",
      '{ "PublicIP" : "10.0.0.2", "BackendData" : { "VNI" : 1 ,"VtepMAC": "aa:bb:cc:dd:ee:01" } }',
      {
        backendData: '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}',
      },
    ],
    [
      "BackendData null kept as raw null",
      '{"PublicIP":"10.0.0.2","BackendData":null}',
      { backendData: "null" },
    ],
    [
      "BackendV6Data kept",
      '{"PublicIP":"10.0.0.2","BackendV6Data":{"VNI":1}}',
      { backendV6Data: '{"VNI":1}' },
    ],
    ["last duplicate key wins", '{"publicip":"10.0.0.1","PublicIP":"10.0.0.2"}', {}],
  ])("%s", (_name, text, over) => {
    expect(decodeLeaseAttrs(text)).toEqual(attrs(over));
  });

  it.each([
    ["", "(root)", "not valid JSON"],
    ["{", "(root)", "not valid JSON"],
    ["[]", "(root)", "is an array, not a JSON object"],
    ["null", "(root)", "is null, not a JSON object"],
    ['"10.0.0.2"', "(root)", 'is string "10.0.0.2", not a JSON object'],
    ["{}", "PublicIP", "PublicIP is missing"],
    ['{"PublicIP":null}', "PublicIP", "PublicIP is null, not a string"],
    ['{"PublicIP":167772162}', "PublicIP", "PublicIP is number 167772162, not a string"],
    ['{"PublicIP":"10.0.0"}', "PublicIP", 'PublicIP "10.0.0" is not an IPv4 address'],
    ['{"PublicIP":"fd00::1"}', "PublicIP", 'PublicIP "fd00::1" is not an IPv4 address'],
    ['{"PublicIP":"10.0.0.2","PublicIPv6":1}', "PublicIPv6", "PublicIPv6 is number 1, not null or a string"],
    ['{"PublicIP":"10.0.0.2","BackendType":7}', "BackendType", "BackendType is number 7, not a string"],
    ['{"PublicIP":"10.0.0.2","BackendType":{}}', "BackendType", "BackendType is an object, not a string"],
  ])("rejects %s naming %s", (text, field, message) => {
    const err = errorOf(() => decodeLeaseAttrs(text));
    expect(err.field).toBe(field);
    expect(err.message).toContain(message);
  });
});

describe("publicIpProblem", () => {
  it.each([
    ["10.0.0.2", undefined],
    ["192.168.64.3", undefined],
    ["0.0.0.0", "PublicIP 0.0.0.0 is the unspecified address"],
    ["127.0.0.1", "PublicIP 127.0.0.1 is a loopback address"],
    ["169.254.1.1", "PublicIP 169.254.1.1 is a link-local address"],
    ["224.0.0.1", "PublicIP 224.0.0.1 is a multicast address"],
    ["255.255.255.255", "PublicIP 255.255.255.255 is a reserved or broadcast address"],
  ])("%s → %s", (ip, problem) => {
    expect(publicIpProblem(parseIPv4(ip))).toBe(problem);
  });
});

// What a dual-stack and an IPv6-only flanneld write (vxlan: RegisterNetwork sets BackendData only with
// EnableIPv4 and BackendV6Data only with EnableIPv6; an IPv6-only node leaves PublicIP at 0.0.0.0).
const V4_MAC = "0a:58:c6:12:00:05";
const V6_MAC = "0a:58:c6:12:00:06";
const DUAL_STACK_VXLAN =
  `{"PublicIP":"198.18.0.5","PublicIPv6":"2001:db8:18::5","BackendType":"vxlan",` +
  `"BackendData":{"VNI":1,"VtepMAC":"${V4_MAC}"},"BackendV6Data":{"VNI":1,"VtepMAC":"${V6_MAC}"}}`;
const IPV6_ONLY_VXLAN =
  `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:18::5","BackendType":"vxlan",` +
  `"BackendV6Data":{"VNI":1,"VtepMAC":"${V6_MAC}"}}`;

describe("dual-stack and IPv6-only lease values, byte for byte as flanneld writes them", () => {
  it.each([
    ["dual-stack vxlan", DUAL_STACK_VXLAN],
    ["IPv6-only vxlan", IPV6_ONLY_VXLAN],
    ["dual-stack host-gw", '{"PublicIP":"198.18.0.5","PublicIPv6":"2001:db8:18::5","BackendType":"host-gw"}'],
    ["IPv6-only host-gw", '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::5","BackendType":"host-gw"}'],
    // flannel's TestEtcdRegistry: the value createSubnet writes for PublicIP 1.2.3.4 alone
    ["TestEtcdRegistry's value", '{"PublicIP":"1.2.3.4","PublicIPv6":null}'],
    // flannel's TestIP6: an IP6 marshals as its net.IP text
    ["TestIP6's fc00::1", '{"PublicIP":"10.0.0.2","PublicIPv6":"fc00::1"}'],
  ])("%s: decode then encode gives the same bytes", (_name, text) => {
    expect(encodeLeaseAttrs(decodeLeaseAttrs(text))).toBe(text);
  });

  it("decodes the dual-stack value into both families' fields", () => {
    expect(decodeLeaseAttrs(DUAL_STACK_VXLAN)).toEqual({
      publicIP: parseIPv4("198.18.0.5"),
      publicIPv6: "2001:db8:18::5",
      backendType: "vxlan",
      backendData: `{"VNI":1,"VtepMAC":"${V4_MAC}"}`,
      backendV6Data: `{"VNI":1,"VtepMAC":"${V6_MAC}"}`,
    });
  });

  it("decodes the IPv6-only value: PublicIP 0.0.0.0, no BackendData", () => {
    expect(decodeLeaseAttrs(IPV6_ONLY_VXLAN)).toEqual({
      publicIP: 0,
      publicIPv6: "2001:db8:18::5",
      backendType: "vxlan",
      backendData: undefined,
      backendV6Data: `{"VNI":1,"VtepMAC":"${V6_MAC}"}`,
    });
  });

  it.each<[string, Partial<LeaseAttrs>, string]>([
    [
      "dual-stack vxlan",
      {
        publicIP: parseIPv4("198.18.0.5"),
        publicIPv6: "2001:db8:18::5",
        backendType: "vxlan",
        backendData: `{"VNI":1,"VtepMAC":"${V4_MAC}"}`,
        backendV6Data: `{"VNI":1,"VtepMAC":"${V6_MAC}"}`,
      },
      DUAL_STACK_VXLAN,
    ],
    [
      "IPv6-only vxlan: BackendData omitted, BackendV6Data after BackendType",
      {
        publicIP: 0,
        publicIPv6: "2001:db8:18::5",
        backendType: "vxlan",
        backendV6Data: `{"VNI":1,"VtepMAC":"${V6_MAC}"}`,
      },
      IPV6_ONLY_VXLAN,
    ],
    [
      "BackendV6Data with Go's HTML-safe escapes",
      { publicIPv6: "fd00::1", backendType: "x", backendV6Data: '{"k":"<&>"}' },
      '{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::1","BackendType":"x","BackendV6Data":{"k":"\\u003c\\u0026\\u003e"}}',
    ],
    [
      "BackendV6Data without a BackendType",
      { publicIPv6: "fd00::1", backendV6Data: '{"VNI":1}' },
      '{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::1","BackendV6Data":{"VNI":1}}',
    ],
  ])("encodes %s", (_name, over, expected) => {
    expect(encodeLeaseAttrs(attrs(over))).toBe(expected);
  });

  it.each<[string, string, Partial<LeaseAttrs>]>([
    [
      "a long-form PublicIPv6 is kept canonical (as Go re-marshals it)",
      '{"PublicIP":"10.0.0.2","PublicIPv6":"2001:0DB8:0018:0000:0000:0000:0000:0005"}',
      { publicIPv6: "2001:db8:18::5" },
    ],
    ["PublicIPv6 null → null", '{"PublicIP":"10.0.0.2","PublicIPv6":null}', { publicIPv6: null }],
    [
      "lower-case publicipv6 and backendv6data (Go matches keys case-insensitively)",
      '{"publicip":"10.0.0.2","publicipv6":"fd00::1","backendv6data":{"VNI":1}}',
      { publicIPv6: "fd00::1", backendV6Data: '{"VNI":1}' },
    ],
    [
      "the last PublicIPv6 of two spellings wins",
      '{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::1","PUBLICIPV6":"fd00::2"}',
      { publicIPv6: "fd00::2" },
    ],
    [
      "BackendV6Data compacted",
      '{"PublicIP":"10.0.0.2","BackendV6Data": { "VNI" : 1, "VtepMAC" : "0a:00:00:00:00:01" } }',
      { backendV6Data: '{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}' },
    ],
    [
      "BackendV6Data null kept as raw null",
      '{"PublicIP":"10.0.0.2","BackendV6Data":null}',
      { backendV6Data: "null" },
    ],
    // FuzzKvToIPLease's seeds that decode
    [
      "FuzzKvToIPLease: vxlan, no PublicIPv6",
      '{"PublicIP":"192.168.0.1","BackendType":"vxlan"}',
      {
        publicIP: parseIPv4("192.168.0.1"),
        backendType: "vxlan",
      },
    ],
    [
      "FuzzKvToIPLease: PublicIPv6 fc00::1",
      '{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}',
      {
        publicIP: parseIPv4("192.168.0.1"),
        publicIPv6: "fc00::1",
      },
    ],
  ])("decodes %s", (_name, text, over) => {
    expect(decodeLeaseAttrs(text)).toEqual(attrs(over));
  });

  it.each([
    ['{"PublicIP":"10.0.0.2","PublicIPv6":""}', 'PublicIPv6 "" is not an IPv6 address'],
    ['{"PublicIP":"10.0.0.2","PublicIPv6":"nope"}', 'PublicIPv6 "nope" is not an IPv6 address'],
    // flannel's ParseIP6 would read this as ::ffff:1.2.3.4, which no node can be reached at over IPv6
    ['{"PublicIP":"10.0.0.2","PublicIPv6":"1.2.3.4"}', 'PublicIPv6 "1.2.3.4" is not an IPv6 address'],
    [
      '{"PublicIP":"10.0.0.2","PublicIPv6":"fe80::1%eth0"}',
      'PublicIPv6 "fe80::1%eth0" is not an IPv6 address',
    ],
    [
      '{"PublicIP":"10.0.0.2","PublicIPv6":"2001:db8::/64"}',
      'PublicIPv6 "2001:db8::/64" is not an IPv6 address',
    ],
    ['{"PublicIP":"10.0.0.2","PublicIPv6":true}', "PublicIPv6 is boolean true, not null or a string"],
    ['{"PublicIP":"10.0.0.2","PublicIPv6":{}}', "PublicIPv6 is an object, not null or a string"],
    ['{"PublicIP":"10.0.0.2","PublicIPv6":["fd00::1"]}', "PublicIPv6 is an array, not null or a string"],
  ])("rejects %s naming PublicIPv6", (text, message) => {
    const err = errorOf(() => decodeLeaseAttrs(text));
    expect(err.field).toBe("PublicIPv6");
    expect(err.message).toBe(message);
  });

  it("an IPv6 PublicIP (FuzzKvToIPLease's third seed) is rejected naming PublicIP, as flannel's IP4 decoder does", () => {
    const err = errorOf(() => decodeLeaseAttrs('{"PublicIP":"2001:db8::1"}'));
    expect(err.field).toBe("PublicIP");
    expect(err.message).toBe('PublicIP "2001:db8::1" is not an IPv4 address');
  });
});

describe("publicIpv6Problem: whether a lease's PublicIPv6 can carry its IPv6 subnet", () => {
  it.each<[string | null, string | undefined]>([
    ["2001:db8:18::5", undefined],
    ["fd00::1", undefined],
    [null, "PublicIPv6 is missing, but the lease has an IPv6 subnet"],
    ["nope", "PublicIPv6 nope is not an IPv6 address"],
    ["10.0.0.2", "PublicIPv6 10.0.0.2 is not an IPv6 address"],
    ["::", "PublicIPv6 :: is the unspecified address"],
    ["::1", "PublicIPv6 ::1 is the loopback address"],
    ["::ffff:1.2.3.4", "PublicIPv6 ::ffff:1.2.3.4 is an IPv4-mapped address"],
    ["fe80::1", "PublicIPv6 fe80::1 is a link-local address (fe80::/10)"],
    ["ff02::1", "PublicIPv6 ff02::1 is a multicast address"],
  ])("%j → %j", (ip, problem) => {
    expect(publicIpv6Problem(ip)).toBe(problem);
  });
});
