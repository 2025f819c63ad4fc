// The pod bridge (cni0, or docker0 on Docker hosts): the gateway of the node's subnet for its pods.
import type { DeviceSpec } from "../backends/backend.js";
import { firstHost, formatIPv4, type Subnet } from "../ip/ipv4.js";

/**
 * The bridge's MAC, derived from its gateway address like OVN-Kubernetes' 0a:58:<IPv4> gateway MACs:
 * locally administered, unique per node subnet, and the same when the bridge is re-created.
 */
export function bridgeMac(subnet: Subnet): string {
  const gw = firstHost(subnet);
  const bytes = [0x0a, 0x58, gw >>> 24, (gw >>> 16) & 255, (gw >>> 8) & 255, gw & 255];
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/**
 * The bridge: created with a fixed MAC if missing (a bridge without one takes its lowest port's MAC and
 * changes it as pods come and go, leaving pods with a stale ARP entry for their gateway), the gateway
 * address <first host>/<lease length>, the backend's MTU, up. An existing bridge keeps its MAC (pinned).
 */
export function bridgeSpec(name: string, subnet: Subnet, network: Subnet, mtu: number): DeviceSpec {
  return {
    link: { name, kind: "bridge", mac: bridgeMac(subnet), mtu },
    mtu,
    mac: undefined,
    addresses: [{ address: formatIPv4(firstHost(subnet)), prefixLength: subnet.prefixLen }],
    addressScope: [{ family: 4, address: formatIPv4(network.ip), length: network.prefixLen }],
    incompatibility: (link) =>
      link.kind === "bridge" ? undefined : `it is a ${link.kind ?? "plain"} device, not a bridge`,
    pinMac: true,
  };
}
