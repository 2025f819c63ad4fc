// What a peer shares with this node, per address family: a dual-stack node programs each family a
// peer has on its own, as flannel does (a dual-stack peer is an IPv4 peer to an IPv4-only node), and
// reports one verdict for the peer.
import type { Family } from "../ip/address.js";
import { formatCidr, formatIPv4 } from "../ip/ipv4.js";
import { formatCidr6, formatIPv6 } from "../ip/ipv6.js";
import { hasIPv4 } from "../lease/key.js";
import type { Lease } from "../lease/lease.js";
import type { NodeFacts, PeerProgram } from "./backend.js";

/** One family of a peer, as a backend programs it. */
export interface PeerFamily {
  readonly family: Family;
  /** The peer's subnet of this family, CIDR text. */
  readonly subnet: string;
  /** The peer's subnet's network address: the vxlan gateway of that subnet. */
  readonly subnetAddress: string;
  /** The peer's public address of this family (PublicIP, PublicIPv6). */
  readonly publicAddress: string;
}

/** The families this node and the peer both have, IPv4 first. */
export function sharedFamilies(node: NodeFacts, lease: Lease): PeerFamily[] {
  const families: PeerFamily[] = [];
  if (hasIPv4(node.subnet) && hasIPv4(lease.subnet)) {
    families.push({
      family: 4,
      subnet: formatCidr(lease.subnet),
      subnetAddress: formatIPv4(lease.subnet.ip),
      publicAddress: formatIPv4(lease.attrs.publicIP),
    });
  }
  const v6 = lease.ipv6Subnet;
  if (node.ipv6Subnet !== undefined && v6 !== undefined && lease.attrs.publicIPv6 !== null) {
    families.push({
      family: 6,
      subnet: formatCidr6(v6),
      subnetAddress: formatIPv6(v6.ip),
      publicAddress: lease.attrs.publicIPv6,
    });
  }
  return families;
}

/**
 * One verdict from each family's program: every object of the families that could be programmed, and
 * the peer "programmed" only when all were (else the first other verdict, naming its family). A peer
 * sharing no family with this node is unreachable.
 */
export function combineFamilies(
  parts: readonly { readonly family: Family; readonly program: PeerProgram }[],
  peerName: string,
): PeerProgram {
  if (parts.length === 0) {
    return {
      objects: [],
      status: {
        state: "unreachable",
        reason: `peer ${peerName} shares no address family with this node; not programmed`,
      },
    };
  }
  const [only] = parts;
  if (parts.length === 1 && only !== undefined) return only.program;
  const objects = parts.flatMap((part) => part.program.objects);
  const failed = parts.find((part) => part.program.status.state !== "programmed");
  const reasons = parts.map(
    (part) => `IPv${part.family}: ${part.program.status.reason ?? part.program.status.state}`,
  );
  return {
    objects,
    status: { state: failed?.program.status.state ?? "programmed", reason: reasons.join("; ") },
  };
}
