// Lease fixtures shared by unit tests: peer n is 10.244.n.0/24 at 198.18.0.n with VTEP MAC 0a:00:…:n.
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
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
