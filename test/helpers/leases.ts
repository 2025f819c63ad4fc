// Lease fixtures shared by unit tests: peer n is 10.244.n.0/24 at 198.18.0.n with VTEP MAC 0a:00:…:n.
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import { subnetKey } from "../../src/lease/key.js";
import type { Lease } from "../../src/lease/lease.js";

export const leaseKey = (n: number): string => `/coreos.com/network/subnets/10.244.${n}.0-24`;
export const vtepMac = (n: number): string => `0a:00:00:00:00:${n.toString(16).padStart(2, "0")}`;

export interface PeerSpec {
  readonly type?: string | undefined;
  readonly publicIP?: string;
  /** Raw BackendData JSON; default {"VNI":1,"VtepMAC":vtepMac(n)} for vxlan, none otherwise. */
  readonly data?: string | undefined;
  readonly mac?: string;
}

/** Peer 10.244.<n>.0/24 (vxlan unless told otherwise). */
export function peerLease(n: number, spec: PeerSpec = {}): Lease {
  const type = "type" in spec ? spec.type : "vxlan";
  const mac = spec.mac ?? vtepMac(n);
  const data = "data" in spec ? spec.data : type === "vxlan" ? `{"VNI":1,"VtepMAC":"${mac}"}` : undefined;
  return {
    subnet: parseCidr(`10.244.${n}.0/24`),
    attrs: {
      publicIP: parseIPv4(spec.publicIP ?? `198.18.0.${n}`),
      publicIPv6: null,
      backendType: type,
      backendData: data,
      backendV6Data: undefined,
    },
    key: leaseKey(n),
    etcdLeaseId: "7",
    createRevision: n,
    modRevision: n,
  };
}

export interface FamilySpec {
  /** false: an IPv6-only lease (flannel's empty 0.0.0.0/0, PublicIP 0.0.0.0). */
  readonly v4?: boolean;
  /** false: no IPv6 subnet (and PublicIPv6 null). */
  readonly v6?: boolean;
  readonly type?: string;
  readonly publicIP?: string;
  /** null: a lease with an IPv6 subnet but no PublicIPv6. */
  readonly publicIPv6?: string | null;
  /** Raw BackendData; default {"VNI":1,"VtepMAC":vtepMac(n)} for vxlan with IPv4, none otherwise. */
  readonly data?: string | undefined;
  /** Raw BackendV6Data; default {"VNI":1,"VtepMAC":vtepMac(0x80 + n)} for vxlan with IPv6. */
  readonly v6Data?: string | undefined;
}

/**
 * Peer n of any family mix: 10.244.<n>.0/24 at 198.18.0.<n> and fd00:10:244:<n hex>::/64 at
 * 2001:db8:18::<n hex> (vxlan unless told otherwise), keyed as flannel's MakeSubnetKey.
 */
export function familyLease(n: number, spec: FamilySpec = {}): Lease {
  const h = n.toString(16);
  const v4 = spec.v4 ?? true;
  const v6 = spec.v6 ?? true;
  const type = spec.type ?? "vxlan";
  const subnet = parseCidr(v4 ? `10.244.${n}.0/24` : "0.0.0.0/0");
  const ipv6Subnet = v6 ? parseCidr6(`fd00:10:244:${h}::/64`) : undefined;
  const vxlanData = (mac: string): string | undefined =>
    type === "vxlan" ? `{"VNI":1,"VtepMAC":"${mac}"}` : undefined;
  return {
    subnet,
    ipv6Subnet,
    attrs: {
      publicIP: v4 ? parseIPv4(spec.publicIP ?? `198.18.0.${n}`) : 0,
      publicIPv6: v6 ? (spec.publicIPv6 === undefined ? `2001:db8:18::${h}` : spec.publicIPv6) : null,
      backendType: type,
      backendData: "data" in spec ? spec.data : v4 ? vxlanData(vtepMac(n)) : undefined,
      backendV6Data: "v6Data" in spec ? spec.v6Data : v6 ? vxlanData(vtepMac(0x80 + n)) : undefined,
    },
    key: subnetKey("/coreos.com/network", subnet, ipv6Subnet),
    etcdLeaseId: "7",
    createRevision: n,
    modRevision: n,
  };
}
