// The host-gw backend, as flannel's: no device of its own; per peer one route to its subnet via its
// public IP on the external interface. Peers must share the node's L2 segment: one that does not is
// reported unreachable and gets no route (flannel would hand it to the kernel and only log the error).
import { formatPrefix, prefixContains } from "../../ip/address.js";
import { formatCidr, formatIPv4 } from "../../ip/ipv4.js";
import { ownedRoute } from "../../dataplane/objects.js";
import { resolveFields } from "../../config/json-fields.js";
import type { BackendConfig, BackendPlugin, NodeBackend, NodeFacts, PeerProgram } from "../backend.js";
import type { Lease } from "../../lease/lease.js";

/** flannel's host-gw peers publish no BackendData; whatever they publish is ignored, as flannel does. */
const NO_PEER_DATA: object = Object.freeze({});

function connectedText(node: NodeFacts): string {
  return node.connected.length === 0 ? "no IPv4 networks" : node.connected.map(formatPrefix).join(", ");
}

function typeText(type: string | undefined): string {
  return type === undefined ? "no BackendType (flannel udp/alloc?)" : `"${type}"`;
}

class HostGwNode implements NodeBackend {
  readonly leaseData = undefined;
  readonly identity = undefined;
  readonly ownedDevices: readonly string[] = [];

  constructor(readonly config: BackendConfig) {}

  devices(): [] {
    return [];
  }

  peer(node: NodeFacts, lease: Lease): PeerProgram {
    const subnet = formatCidr(lease.subnet);
    if (lease.attrs.backendType !== "host-gw") {
      return {
        objects: [],
        status: {
          state: "backend-mismatch",
          reason: `peer ${subnet} uses backend ${typeText(lease.attrs.backendType)}, this node uses "host-gw"; not programmed`,
        },
      };
    }
    const publicIp = formatIPv4(lease.attrs.publicIP);
    const iface = node.external.name;
    if (!node.connected.some((prefix) => prefixContains(prefix, publicIp))) {
      return {
        objects: [],
        status: {
          state: "unreachable",
          reason:
            `peer ${publicIp} is not on-link on ${iface} (${connectedText(node)}); host-gw needs peers ` +
            `on the same L2 segment — use vxlan (or vxlan DirectRouting)`,
        },
      };
    }
    return {
      objects: [ownedRoute({ family: 4, dst: subnet, gateway: publicIp, dev: iface, onlink: false })],
      status: { state: "programmed", reason: `route via ${publicIp} dev ${iface}` },
    };
  }
}

const hostGwConfig: BackendConfig = {
  type: "host-gw",
  options: {},
  mtu: (external) => external.mtu,
  prepare: () => Promise.resolve(new HostGwNode(hostGwConfig)),
};

export const hostGwBackend: BackendPlugin = {
  type: "host-gw",
  supportsIPv6: true,
  parseConfig(raw, warnings) {
    warnings.push(...resolveFields(raw, ["Type"], "Backend.").warnings);
    return hostGwConfig;
  },
  parsePeerData: () => NO_PEER_DATA,
};
