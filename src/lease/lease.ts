// The lease model shared by the codec, the allocator, the registry and the peer view.
import type { IPv4, Subnet } from "../ip/ipv4.js";
import type { Subnet6 } from "../ip/ipv6.js";
import type { LeaseSubnets } from "./key.js";

/** flannel's LeaseAttrs: what a node publishes about itself in its subnet key's value. */
export interface LeaseAttrs {
  /** 0 (0.0.0.0) on an IPv6-only node, as flannel writes it. */
  readonly publicIP: IPv4;
  /** The node's IPv6 underlay address, canonical; null when IPv6 is off ("PublicIPv6":null, as flannel). */
  readonly publicIPv6: string | null;
  /** e.g. "vxlan", "host-gw"; undefined when the writer omitted it (flannel's udp/alloc backends). */
  readonly backendType: string | undefined;
  /** BackendData as compact JSON text (Go's json.RawMessage), undefined when omitted. */
  readonly backendData: string | undefined;
  /** BackendV6Data as compact JSON text, undefined when omitted. */
  readonly backendV6Data: string | undefined;
}

/** A lease as read from etcd. */
export interface Lease {
  /** The IPv4 subnet; flannel's empty 0.0.0.0/0 on an IPv6-only lease (see hasIPv4). */
  readonly subnet: Subnet;
  /** The IPv6 subnet of a dual-stack or IPv6-only lease. */
  readonly ipv6Subnet?: Subnet6 | undefined;
  readonly attrs: LeaseAttrs;
  /** The full etcd key, e.g. /coreos.com/network/subnets/10.244.3.0-24. */
  readonly key: string;
  /** etcd lease ID bound to the key, as a decimal string ("0" = no lease: a reservation). */
  readonly etcdLeaseId: string;
  /** etcd revisions: creation orders leases (the older of two overlapping keys wins). */
  readonly createRevision: number;
  readonly modRevision: number;
  /**
   * The peer's BackendData as the backend of its BackendType parsed it, once, in the peer view: an
   * instance of that backend's own class, which the backend narrows with instanceof. undefined when
   * twill has no backend of that type (or for leases not read through the peer view).
   */
  readonly peerData?: object | undefined;
}

/** A Lease from an etcd entry (its key, lease and revisions) and what was parsed out of it. */
export function leaseFrom(
  entry: Pick<Lease, "key" | "etcdLeaseId" | "createRevision" | "modRevision">,
  subnets: LeaseSubnets,
  attrs: LeaseAttrs,
  peerData?: object,
): Lease {
  const { key, etcdLeaseId, createRevision, modRevision } = entry;
  const { subnet, ipv6Subnet } = subnets;
  return { subnet, ipv6Subnet, attrs, key, etcdLeaseId, createRevision, modRevision, peerData };
}
