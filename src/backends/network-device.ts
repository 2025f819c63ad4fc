// The one device of a backend that routes the whole cluster network into it and picks the peer
// itself (udp's flannel0: its proxy's table; WireGuard's flannel-wg: the peers' allowed IPs), as
// flannel sets both up: the node's subnet address as /32 on it, and the Network routed into it.
import type { LinkSpec } from "../dataplane/channel.js";
import { ownedRoute, type KernelObject } from "../dataplane/objects.js";
import { formatCidr, formatIPv4 } from "../ip/ipv4.js";
import type { DeviceSpec, NodeFacts } from "./backend.js";

export function networkDeviceSpec(
  node: NodeFacts,
  device: {
    readonly name: string;
    readonly kind: LinkSpec["kind"];
    readonly mtu: number;
    readonly what: string;
  },
): DeviceSpec {
  return {
    link: { name: device.name, kind: device.kind, mtu: device.mtu },
    mtu: device.mtu,
    mac: undefined,
    addresses: [{ address: formatIPv4(node.subnet.ip), prefixLength: 32 }],
    addressScope: [{ family: 4, address: formatIPv4(node.network.ip), length: node.network.prefixLen }],
    incompatibility: (link) =>
      link.kind === device.kind
        ? undefined
        : `${device.name} is a ${link.kind ?? "plain"} device, not ${device.what}`,
  };
}

/** The whole cluster network into `dev`: an owned route, drift-repaired like every other. */
export function networkRoute(node: NodeFacts, dev: string): KernelObject {
  return ownedRoute({ family: 4, dst: formatCidr(node.network), gateway: undefined, dev, onlink: false });
}
