// The pod bridge (cni0, or docker0 on Docker hosts): the gateway of the node's subnet for its pods.
import type { DeviceSpec } from "../backends/backend.js";
import { firstHost, formatIPv4, type Subnet } from "../ip/ipv4.js";
import { firstHost6, formatIPv6, type Subnet6 } from "../ip/ipv6.js";

/**
 * The bridge's MAC, derived from its gateway address like OVN-Kubernetes' 0a:58:<IPv4> gateway MACs:
 * locally administered, unique per node subnet, and the same when the bridge is re-created.
 */
export function bridgeMac(subnet: Subnet, ipv6Subnet?: Subnet6): string {
  // An IPv6-only node (subnet 0.0.0.0/0) takes the low 32 bits of its subnet's number in the IPv6
  // network instead (the gateway's low bits are ::1 on every node).
  const gw =
    subnet.prefixLen === 0 && ipv6Subnet !== undefined
      ? Number((ipv6Subnet.ip >> BigInt(128 - ipv6Subnet.prefixLen)) & 0xffffffffn)
      : firstHost(subnet);
  const bytes = [0x0a, 0x58, gw >>> 24, (gw >>> 16) & 255, (gw >>> 8) & 255, gw & 255];
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** The node's subnets as the bridge serves them; IPv4 ones are 0.0.0.0/0 on an IPv6-only node. */
export interface BridgeSubnets {
  readonly subnet: Subnet;
  readonly network: Subnet;
  readonly ipv6Subnet?: Subnet6 | undefined;
  readonly ipv6Network?: Subnet6 | undefined;
}

/**
 * The bridge: created with a fixed MAC if missing (a bridge without one takes its lowest port's MAC and
 * changes it as pods come and go, leaving pods with a stale ARP entry for their gateway), the gateway
 * address <first host>/<lease length> of each family, the backend's MTU, up. An existing bridge keeps
 * its MAC (pinned).
 */
export function bridgeSpec(name: string, subnets: BridgeSubnets, mtu: number): DeviceSpec {
  const { subnet, network, ipv6Subnet, ipv6Network } = subnets;
  const addresses: { address: string; prefixLength: number }[] = [];
  const addressScope: DeviceSpec["addressScope"][number][] = [];
  if (subnet.prefixLen > 0) {
    addresses.push({ address: formatIPv4(firstHost(subnet)), prefixLength: subnet.prefixLen });
    addressScope.push({ family: 4, address: formatIPv4(network.ip), length: network.prefixLen });
  }
  if (ipv6Subnet !== undefined && ipv6Network !== undefined) {
    addresses.push({ address: formatIPv6(firstHost6(ipv6Subnet)), prefixLength: ipv6Subnet.prefixLen });
    addressScope.push({ family: 6, address: formatIPv6(ipv6Network.ip), length: ipv6Network.prefixLen });
  }
  return {
    link: { name, kind: "bridge", mac: bridgeMac(subnet, ipv6Subnet), mtu },
    mtu,
    mac: undefined,
    addresses,
    addressScope,
    incompatibility: (link) =>
      link.kind === "bridge" ? undefined : `it is a ${link.kind ?? "plain"} device, not a bridge`,
    pinMac: true,
  };
}
