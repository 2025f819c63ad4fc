// flannel's LeaseAttrs JSON, byte for byte. The vxlan BackendData inside it is the vxlan backend's to
// read: see backends.test.ts.
import { describe, it, expect } from "vitest";
import { parseIPv4 } from "../../src/ip/ipv4.js";
import {
  decodeLeaseAttrs,
  encodeLeaseAttrs,
  LeaseDecodeError,
  publicIpProblem,
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
