// The vxlan backend, as flannel's: one device flannel.<VNI> (nolearning, the persisted VTEP MAC, the
// node's public IP as tunnel source, <subnet>/32 on it) and per peer a permanent FDB entry
// (VTEP MAC → peer's public IP), a permanent neighbour entry (peer subnet address → VTEP MAC) and an
// onlink route (peer subnet via its subnet address). With DirectRouting, peers on the same L2 segment
// get a plain route instead.
import { prefixContains } from "../../ip/address.js";
import { formatCidr, formatIPv4 } from "../../ip/ipv4.js";
import { ownedRoute, permanentFdb, permanentNeighbour, type Link } from "../../dataplane/objects.js";
import type { Lease } from "../../lease/lease.js";
import type {
  BackendConfig,
  BackendPlugin,
  DeviceSpec,
  IdentityOrigin,
  NodeBackend,
  NodeFacts,
  PeerProgram,
} from "../backend.js";
import { parseVxlanBackendData, vxlanBackendData, VxlanPeerData } from "./backend-data.js";
import { parseVxlanOptions, VXLAN_OVERHEAD, type VxlanOptions } from "./config.js";
import { ensureTxChecksumOff } from "./offload.js";
import { loadOrCreateVtepMac } from "./vtep-mac.js";

/** flannel's IPv4 VXLAN device name. */
export function vxlanDeviceName(vni: number): string {
  return `flannel.${vni}`;
}

/** Why an existing device cannot serve as this VXLAN device (it is then re-created), or undefined. */
export function vxlanIncompatibility(
  link: Link,
  want: { vni: number; local: string; port: number; learning: boolean; gbp: boolean; underlay: string },
): string | undefined {
  const v = link.vxlan;
  if (link.kind !== "vxlan" || v === undefined) return `it is a ${link.kind ?? "plain"} device, not vxlan`;
  if (v.vni !== want.vni) return `VNI ${v.vni}, want ${want.vni}`;
  if (v.local !== undefined && v.local !== want.local) return `local ${v.local}, want ${want.local}`;
  if (v.underlay !== undefined && v.underlay !== want.underlay)
    return `underlay ${v.underlay}, want ${want.underlay}`;
  if (v.port !== want.port) return `port ${v.port}, want ${want.port}`;
  if (v.learning !== want.learning)
    return `learning ${v.learning ? "on" : "off"}, want ${want.learning ? "on" : "off"}`;
  if (v.gbp !== want.gbp) return `gbp ${v.gbp ? "on" : "off"}, want ${want.gbp ? "on" : "off"}`;
  return undefined;
}

/** The identity a VTEP MAC gives a node: two leases with one MAC cannot both be reached. */
function vtepIdentity(mac: string): string {
  return `VTEP MAC ${mac}`;
}

function mismatch(lease: Lease, reason: string): PeerProgram {
  return {
    objects: [],
    status: {
      state: "backend-mismatch",
      reason: `peer ${formatCidr(lease.subnet)} ${reason}; not programmed`,
    },
  };
}

function typeText(type: string | undefined): string {
  return type === undefined ? "no BackendType (flannel udp/alloc?)" : `"${type}"`;
}

function isOnLink(node: NodeFacts, ip: string): boolean {
  return node.connected.some((prefix) => prefixContains(prefix, ip));
}

/** A host-gw style route for a peer on the same segment (DirectRouting). */
function directRoute(node: NodeFacts, lease: Lease) {
  return ownedRoute({
    family: 4,
    dst: formatCidr(lease.subnet),
    gateway: formatIPv4(lease.attrs.publicIP),
    dev: node.external.name,
    onlink: false,
  });
}

class VxlanNode implements NodeBackend {
  readonly leaseData: string;
  readonly ownedDevices: readonly string[];
  readonly identity: string;
  private readonly dev: string;

  constructor(
    readonly config: VxlanConfig,
    private readonly vtepMac: string,
    private readonly txChecksumOffload: boolean,
    readonly identityOrigin: IdentityOrigin,
  ) {
    this.dev = vxlanDeviceName(config.vxlan.vni);
    this.ownedDevices = [this.dev];
    this.leaseData = vxlanBackendData(config.vxlan.vni, vtepMac);
    this.identity = vtepIdentity(vtepMac);
  }

  devices(node: NodeFacts): DeviceSpec[] {
    const { vni, port, learning, gbp } = this.config.vxlan;
    const want = {
      vni,
      local: formatIPv4(node.external.publicIp),
      port,
      learning,
      gbp,
      underlay: node.external.name,
    };
    return [
      {
        link: {
          name: this.dev,
          kind: "vxlan",
          mac: this.vtepMac,
          mtu: this.config.mtu(node.external),
          vxlan: want,
        },
        mtu: this.config.mtu(node.external),
        mac: this.vtepMac,
        addresses: [{ address: formatIPv4(node.subnet.ip), prefixLength: 32 }],
        addressScope: [{ family: 4, address: formatIPv4(node.network.ip), length: node.network.prefixLen }],
        incompatibility: (link) => vxlanIncompatibility(link, want),
        ...(this.txChecksumOffload ? {} : { extraChecks: (runner) => ensureTxChecksumOff(runner, this.dev) }),
      },
    ];
  }

  peer(node: NodeFacts, lease: Lease): PeerProgram {
    if (lease.attrs.backendType !== "vxlan") {
      return mismatch(lease, `uses backend ${typeText(lease.attrs.backendType)}, this node uses "vxlan"`);
    }
    let data: VxlanPeerData;
    try {
      // Parsed once in the peer view; a lease built elsewhere (tests, tools) is parsed here.
      data =
        lease.peerData instanceof VxlanPeerData
          ? lease.peerData
          : parseVxlanBackendData(lease.attrs.backendData);
    } catch (error) {
      return mismatch(
        lease,
        `has bad vxlan BackendData: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
    const vni = this.config.vxlan.vni;
    // VNI 0 means the peer did not publish one (older flannel); flannel never checks it, so accept.
    if (data.vni !== 0 && data.vni !== vni) {
      return mismatch(
        lease,
        `uses VNI ${data.vni}, this node uses VNI ${vni}; frames would be tagged with the wrong VNI`,
      );
    }
    const publicIp = formatIPv4(lease.attrs.publicIP);
    if (this.config.vxlan.directRouting && isOnLink(node, publicIp)) {
      return {
        objects: [directRoute(node, lease)],
        status: {
          state: "programmed",
          reason: `direct route via ${publicIp} dev ${node.external.name} (DirectRouting, on-link)`,
        },
      };
    }
    const gateway = formatIPv4(lease.subnet.ip);
    return {
      objects: [
        permanentFdb({ dev: this.dev, mac: data.vtepMac, dst: publicIp }),
        permanentNeighbour({ family: 4, dev: this.dev, dst: gateway, lladdr: data.vtepMac }),
        ownedRoute({ family: 4, dst: formatCidr(lease.subnet), gateway, dev: this.dev, onlink: true }),
      ],
      status: { state: "programmed", reason: `vxlan via ${this.dev} to ${publicIp}` },
    };
  }
}

class VxlanConfig implements BackendConfig {
  readonly type = "vxlan";
  readonly options: Readonly<Record<string, number | boolean | null>>;

  constructor(readonly vxlan: VxlanOptions) {
    this.options = {
      VNI: vxlan.vni,
      Port: vxlan.port,
      MTU: vxlan.mtu ?? null,
      GBP: vxlan.gbp,
      Learning: vxlan.learning,
      DirectRouting: vxlan.directRouting,
    };
  }

  mtu(external: { readonly mtu: number }): number {
    return (this.vxlan.mtu ?? external.mtu) - VXLAN_OVERHEAD;
  }

  async prepare(context: Parameters<BackendConfig["prepare"]>[0]): Promise<NodeBackend> {
    const existing = await context.existingLink(vxlanDeviceName(this.vxlan.vni));
    const { mac, origin } = await loadOrCreateVtepMac(context.stateDir, this.vxlan.vni, {
      binding: context.nodeBinding,
      existingMac: existing?.mac,
      renew: context.renewIdentity ?? false,
    });
    return new VxlanNode(this, mac, context.txChecksumOffload, origin);
  }
}

export const vxlanBackend: BackendPlugin = {
  type: "vxlan",
  supportsIPv6: true,
  parseConfig: (raw, warnings) => new VxlanConfig(parseVxlanOptions(raw, warnings)),
  parsePeerData: (data) => parseVxlanBackendData(data),
  describePeerData: (data) => (data instanceof VxlanPeerData ? data.vtepMac : undefined),
  identityOf: (data) => (data instanceof VxlanPeerData ? vtepIdentity(data.vtepMac) : undefined),
};
