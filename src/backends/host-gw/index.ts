// The host-gw backend, as flannel's: no device of its own; per peer one route to its subnet via its
// public IP on the external interface. Peers must share the node's L2 segment: one that does not is
// reported unreachable and gets no route (flannel would hand it to the kernel and only log the error).
// With IPv6 on, each family gets its route: the IPv6 subnet via the peer's PublicIPv6.
import { formatPrefix, prefixContains, type Family } from "../../ip/address.js";
import { leaseName } from "../../lease/key.js";
import { combineFamilies, sharedFamilies, type PeerFamily } from "../families.js";
import { ownedRoute } from "../../dataplane/objects.js";
import { resolveFields } from "../../config/json-fields.js";
import type { BackendConfig, BackendPlugin, NodeBackend, NodeFacts, PeerProgram } from "../backend.js";
import type { Lease } from "../../lease/lease.js";

/** flannel's host-gw peers publish no BackendData; whatever they publish is ignored, as flannel does. */
const NO_PEER_DATA: object = Object.freeze({});

function connectedText(node: NodeFacts, family: Family): string {
  const networks = node.connected.filter((prefix) => prefix.family === family);
  return networks.length === 0 ? `no IPv${family} networks` : networks.map(formatPrefix).join(", ");
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
    const name = leaseName(lease);
    if (lease.attrs.backendType !== "host-gw") {
      return {
        objects: [],
        status: {
          state: "backend-mismatch",
          reason: `peer ${name} uses backend ${typeText(lease.attrs.backendType)}, this node uses "host-gw"; not programmed`,
        },
      };
    }
    const parts = sharedFamilies(node, lease).map((family) => ({
      family: family.family,
      program: this.route(node, family),
    }));
    return combineFamilies(parts, name);
  }

  /** One family's route: the peer's subnet via its public address of that family. */
  private route(node: NodeFacts, peer: PeerFamily): PeerProgram {
    const { family, publicAddress, subnet } = peer;
    const iface = node.external.name;
    if (!node.connected.some((prefix) => prefixContains(prefix, publicAddress))) {
      return {
        objects: [],
        status: {
          state: "unreachable",
          reason:
            `peer ${publicAddress} is not on-link on ${iface} (${connectedText(node, family)}); host-gw needs peers ` +
            `on the same L2 segment — use vxlan (or vxlan DirectRouting)`,
        },
      };
    }
    return {
      objects: [ownedRoute({ family, dst: subnet, gateway: publicAddress, dev: iface, onlink: false })],
      status: { state: "programmed", reason: `route via ${publicAddress} dev ${iface}` },
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
