// Backends as pure functions: (backend config, own subnet, peer leases, node facts) → the kernel objects
// twill wants plus a per-peer verdict. No I/O; the planner diffs the result against the kernel.
import {
  VXLAN_OVERHEAD,
  type BackendConfig,
  type NetworkConfig,
  type VxlanBackendConfig,
} from "../config/network-config.js";
import type { ExternalInterface } from "../node/external-interface.js";
import { containsIp, formatCidr, formatIPv4, overlaps, type Subnet } from "../ip/ipv4.js";
import { parseVxlanBackendData } from "../lease/attrs.js";
import type { Lease } from "../lease/lease.js";
import type {
  BackendResult,
  DesiredFdb,
  DesiredNeighbour,
  DesiredRoute,
  NodeFacts,
  PeerStatus,
} from "./model.js";
import { errorMessage } from "../util/log.js";

/** flannel's IPv4 VXLAN device name. */
/** The MTU pods get: VXLAN takes its overhead off the configured (or external interface's) MTU. */
export function backendMtu(config: NetworkConfig, external: ExternalInterface): number {
  return config.backend.type === "vxlan"
    ? (config.backend.mtu ?? external.mtu) - VXLAN_OVERHEAD
    : external.mtu;
}

export function vxlanDeviceName(vni: number): string {
  return `flannel.${vni}`;
}

/** True when `ip` lies in one of the external interface's on-link networks. */
export function isOnLink(ip: number, facts: NodeFacts): boolean {
  return facts.connected.some((net) => containsIp(net, ip));
}

function connectedText(facts: NodeFacts): string {
  return facts.connected.length === 0 ? "no IPv4 networks" : facts.connected.map(formatCidr).join(", ");
}

function typeText(type: string | undefined): string {
  return type === undefined ? "no BackendType (flannel udp/alloc?)" : `"${type}"`;
}

function mismatch(lease: Lease, ours: string): PeerStatus {
  return {
    state: "backend-mismatch",
    reason:
      `peer ${formatCidr(lease.subnet)} uses backend ${typeText(lease.attrs.backendType)}, ` +
      `this node uses "${ours}"; not programmed`,
  };
}

/** Sorted by subnet (then key) so desired state, ops and logs come out in a stable order. */
function sortedPeers(peers: Iterable<Lease>): Lease[] {
  return [...peers].sort(
    (a, b) =>
      a.subnet.ip - b.subnet.ip ||
      a.subnet.prefixLen - b.subnet.prefixLen ||
      (a.key < b.key ? -1 : a.key > b.key ? 1 : 0),
  );
}

interface Collector {
  routes: DesiredRoute[];
  neighbours: DesiredNeighbour[];
  fdb: DesiredFdb[];
  peers: Map<string, PeerStatus>;
}

/**
 * Common screening: peers overlapping our own subnet are skipped (the peer view already reports them
 * as invalid; programming one would steal our own pods' route), and a peer advertising our own public
 * IP (typically a stale lease of this very node) is never programmed: it would route or tunnel to
 * ourselves.
 */
function screen(lease: Lease, own: Subnet, facts: NodeFacts, out: Collector): boolean {
  if (overlaps(lease.subnet, own)) return false;
  if (lease.attrs.publicIP === facts.external.publicIp) {
    out.peers.set(lease.key, {
      state: "unreachable",
      reason:
        `peer ${formatCidr(lease.subnet)} advertises this node's own public IP ` +
        `${formatIPv4(lease.attrs.publicIP)} (a stale lease of this node?); not programmed`,
    });
    return false;
  }
  return true;
}

function hostRoute(lease: Lease, facts: NodeFacts): DesiredRoute {
  return {
    dst: formatCidr(lease.subnet),
    gateway: formatIPv4(lease.attrs.publicIP),
    dev: facts.external.name,
    onlink: false,
  };
}

function vxlanDesired(
  config: VxlanBackendConfig,
  own: Subnet,
  peers: Iterable<Lease>,
  facts: NodeFacts,
): Collector {
  const dev = vxlanDeviceName(config.vni);
  const out: Collector = { routes: [], neighbours: [], fdb: [], peers: new Map() };
  for (const lease of sortedPeers(peers)) {
    if (!screen(lease, own, facts, out)) continue;
    if (lease.attrs.backendType !== "vxlan") {
      out.peers.set(lease.key, mismatch(lease, "vxlan"));
      continue;
    }
    const subnetText = formatCidr(lease.subnet);
    let data: { vni: number; vtepMac: string };
    try {
      data = parseVxlanBackendData(lease.attrs.backendData);
    } catch (err) {
      out.peers.set(lease.key, {
        state: "backend-mismatch",
        reason: `peer ${subnetText}: ${errorMessage(err)}; not programmed`,
      });
      continue;
    }
    // VNI 0 means the peer did not publish one (older flannel); flannel never checks it, so accept.
    if (data.vni !== 0 && data.vni !== config.vni) {
      out.peers.set(lease.key, {
        state: "backend-mismatch",
        reason:
          `peer ${subnetText} uses VNI ${data.vni}, this node uses VNI ${config.vni}; ` +
          `frames would be tagged with the wrong VNI, not programmed`,
      });
      continue;
    }
    const publicIp = formatIPv4(lease.attrs.publicIP);
    if (config.directRouting && isOnLink(lease.attrs.publicIP, facts)) {
      out.routes.push(hostRoute(lease, facts));
      out.peers.set(lease.key, {
        state: "programmed",
        reason: `direct route via ${publicIp} dev ${facts.external.name} (DirectRouting, on-link)`,
      });
      continue;
    }
    const gateway = formatIPv4(lease.subnet.ip);
    out.neighbours.push({ dev, dst: gateway, lladdr: data.vtepMac });
    out.fdb.push({ dev, mac: data.vtepMac, dst: publicIp });
    out.routes.push({ dst: subnetText, gateway, dev, onlink: true });
    out.peers.set(lease.key, { state: "programmed", reason: `vxlan via ${dev} to ${publicIp}` });
  }
  return out;
}

function hostGwDesired(own: Subnet, peers: Iterable<Lease>, facts: NodeFacts): Collector {
  const out: Collector = { routes: [], neighbours: [], fdb: [], peers: new Map() };
  const iface = facts.external.name;
  for (const lease of sortedPeers(peers)) {
    if (!screen(lease, own, facts, out)) continue;
    if (lease.attrs.backendType !== "host-gw") {
      out.peers.set(lease.key, mismatch(lease, "host-gw"));
      continue;
    }
    const publicIp = formatIPv4(lease.attrs.publicIP);
    // flannel would hand this to the kernel, get "network is unreachable" and only log it.
    if (!isOnLink(lease.attrs.publicIP, facts)) {
      out.peers.set(lease.key, {
        state: "unreachable",
        reason:
          `peer ${publicIp} is not on-link on ${iface} (${connectedText(facts)}); host-gw needs peers ` +
          `on the same L2 segment — use vxlan (or vxlan DirectRouting)`,
      });
      continue;
    }
    out.routes.push(hostRoute(lease, facts));
    out.peers.set(lease.key, { state: "programmed", reason: `route via ${publicIp} dev ${iface}` });
  }
  return out;
}

/** The desired kernel objects for `backend`, and what happened to each peer (by lease key). */
export function desiredFor(
  backend: BackendConfig,
  own: Subnet,
  peers: Iterable<Lease>,
  facts: NodeFacts,
): BackendResult {
  const out =
    backend.type === "vxlan" ? vxlanDesired(backend, own, peers, facts) : hostGwDesired(own, peers, facts);
  return { desired: { routes: out.routes, neighbours: out.neighbours, fdb: out.fdb }, peers: out.peers };
}
