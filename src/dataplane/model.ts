// The data plane's desired-state model: what the backends want in the kernel, as plain values the
// planner can diff against what the kernel reports. Pure data, no I/O.
import type { Subnet } from "../ip/ipv4.js";
import type { ExternalInterface } from "../node/external-interface.js";

/**
 * Route protocol number on every route twill installs (`proto 151`). Only main-table routes with this
 * protocol are "owned": changed or garbage-collected. Everything else is foreign and left alone, except
 * that a foreign route sitting on a desired destination is replaced (how flannel's routes are taken over).
 * Neighbour and FDB entries need no mark: the VXLAN device is ours, so its PERMANENT entries are owned.
 */
export const TWILL_ROUTE_PROTOCOL = 151;

/** The kernel's main routing table, the only table twill writes. */
export const MAIN_TABLE = 254;

export interface DesiredRoute {
  /** CIDR, e.g. "10.244.5.0/24". */
  readonly dst: string;
  readonly gateway: string;
  readonly dev: string;
  /** vxlan routes point at the peer's subnet address, which is never on-link without this flag. */
  readonly onlink: boolean;
}

/** A permanent neighbour (ARP) entry. */
export interface DesiredNeighbour {
  readonly dev: string;
  /** IPv4 address, e.g. the peer subnet's network address "10.244.5.0". */
  readonly dst: string;
  /** Lower-case colon MAC. */
  readonly lladdr: string;
}

/** A permanent FDB entry on the VXLAN device: frames for `mac` go to the VTEP at `dst`. */
export interface DesiredFdb {
  readonly dev: string;
  /** Lower-case colon MAC (the peer's VtepMAC). */
  readonly mac: string;
  /** The peer's public (underlay) IPv4 address. */
  readonly dst: string;
}

export interface DesiredState {
  readonly routes: readonly DesiredRoute[];
  readonly neighbours: readonly DesiredNeighbour[];
  readonly fdb: readonly DesiredFdb[];
}

/** What the backends need to know about this node beyond the config and the leases. */
export interface NodeFacts {
  readonly external: ExternalInterface;
  /** The external interface's on-link IPv4 networks: a peer whose PublicIP is inside one is reachable at L2. */
  readonly connected: readonly Subnet[];
}

/**
 * Per-peer outcome, for logs, metrics and status:
 * - programmed: the peer's objects are in the desired state;
 * - unreachable: this backend cannot reach the peer (e.g. host-gw peer not on-link), nothing programmed;
 * - backend-mismatch: the peer runs another backend, VNI, or published unusable BackendData.
 */
export type PeerState = "programmed" | "unreachable" | "backend-mismatch";

export interface PeerStatus {
  readonly state: PeerState;
  /** Why (for programmed peers: how, e.g. "vxlan via flannel.1"). */
  readonly reason?: string;
}

export interface BackendResult {
  readonly desired: DesiredState;
  /** By lease key (the etcd key). */
  readonly peers: Map<string, PeerStatus>;
}
