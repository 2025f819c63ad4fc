// The vxlan backend, as flannel's: one device flannel.<VNI> (nolearning, the persisted VTEP MAC, the
// node's public IP as tunnel source, <subnet>/32 on it) and per peer a permanent FDB entry
// (VTEP MAC → peer's public IP), a permanent neighbour entry (peer subnet address → VTEP MAC) and an
// onlink route (peer subnet via its subnet address). With DirectRouting, peers on the same L2 segment
// get a plain route instead. With IPv6 on, flannel-v6.<VNI> does the same for the IPv6 subnets over the
// IPv6 underlay, with its own persisted VTEP MAC published as BackendV6Data.
import { prefixContains, type Family, type Prefix } from "../../ip/address.js";
import { formatIPv4 } from "../../ip/ipv4.js";
import { formatIPv6 } from "../../ip/ipv6.js";
import { hasIPv4, leaseName } from "../../lease/key.js";
import { combineFamilies, sharedFamilies, type PeerFamily } from "../families.js";
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
import { parseVxlanPeerData, vxlanBackendData, VxlanPeerData, type VxlanVtepData } from "./backend-data.js";
import { parseVxlanOptions, VXLAN_OVERHEAD, VXLAN_OVERHEAD_IPV6, type VxlanOptions } from "./config.js";
import { ensureTxChecksumOff } from "./offload.js";
import { loadOrCreateVtepMac } from "./vtep-mac.js";

/** flannel's IPv4 VXLAN device name. */
export function vxlanDeviceName(vni: number): string {
  return `flannel.${vni}`;
}

/** flannel's IPv6 VXLAN device name. */
export function vxlanV6DeviceName(vni: number): string {
  return `flannel-v6.${vni}`;
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

function mismatch(name: string, reason: string): PeerProgram {
  return {
    objects: [],
    status: { state: "backend-mismatch", reason: `peer ${name} ${reason}; not programmed` },
  };
}

function typeText(type: string | undefined): string {
  return type === undefined ? "no BackendType (flannel udp/alloc?)" : `"${type}"`;
}

function isOnLink(node: NodeFacts, ip: string): boolean {
  return node.connected.some((prefix) => prefixContains(prefix, ip));
}

/** One VXLAN device of this node: flannel.<VNI> for IPv4, flannel-v6.<VNI> for IPv6. */
interface Vtep {
  readonly family: Family;
  readonly dev: string;
  readonly mac: string;
}

class VxlanNode implements NodeBackend {
  readonly leaseData: string | undefined;
  readonly leaseV6Data: string | undefined;
  readonly ownedDevices: readonly string[];
  readonly identity: string;

  constructor(
    readonly config: VxlanConfig,
    private readonly v4: Vtep | undefined,
    private readonly v6: Vtep | undefined,
    private readonly txChecksumOffload: boolean,
    readonly identityOrigin: IdentityOrigin,
  ) {
    const vni = config.vxlan.vni;
    this.ownedDevices = [v4, v6].flatMap((vtep) => (vtep === undefined ? [] : [vtep.dev]));
    this.leaseData = v4 === undefined ? undefined : vxlanBackendData(vni, v4.mac);
    this.leaseV6Data = v6 === undefined ? undefined : vxlanBackendData(vni, v6.mac);
    // An IPv6-only node is known by its IPv6 VTEP.
    this.identity = vtepIdentity((v4 ?? v6)?.mac ?? "");
  }

  devices(node: NodeFacts): DeviceSpec[] {
    const specs: DeviceSpec[] = [];
    if (this.v4 !== undefined && hasIPv4(node.subnet)) {
      specs.push(
        this.device(this.v4, node, formatIPv4(node.external.publicIp), {
          address: formatIPv4(node.subnet.ip),
          prefixLength: 32,
          scope: { family: 4, address: formatIPv4(node.network.ip), length: node.network.prefixLen },
        }),
      );
    }
    const { ipv6Subnet, ipv6Network } = node;
    const local6 = node.external.publicIpv6;
    if (
      this.v6 !== undefined &&
      ipv6Subnet !== undefined &&
      ipv6Network !== undefined &&
      local6 !== undefined
    ) {
      specs.push(
        this.device(this.v6, node, local6, {
          address: formatIPv6(ipv6Subnet.ip),
          prefixLength: 128,
          scope: { family: 6, address: formatIPv6(ipv6Network.ip), length: ipv6Network.prefixLen },
        }),
      );
    }
    return specs;
  }

  /** A VXLAN device with the subnet's network address as a host address (flannel's /32, /128). */
  private device(
    vtep: Vtep,
    node: NodeFacts,
    local: string,
    own: { address: string; prefixLength: number; scope: Prefix },
  ): DeviceSpec {
    const { vni, port, learning, gbp } = this.config.vxlan;
    const want = { vni, local, port, learning, gbp, underlay: node.external.name };
    const mtu = this.config.deviceMtu(node.external, vtep.family);
    return {
      link: { name: vtep.dev, kind: "vxlan", mac: vtep.mac, mtu, vxlan: want },
      mtu,
      mac: vtep.mac,
      addresses: [{ address: own.address, prefixLength: own.prefixLength }],
      addressScope: [own.scope],
      incompatibility: (link) => vxlanIncompatibility(link, want),
      ...(this.txChecksumOffload ? {} : { extraChecks: (runner) => ensureTxChecksumOff(runner, vtep.dev) }),
    };
  }

  peer(node: NodeFacts, lease: Lease): PeerProgram {
    const name = leaseName(lease);
    if (lease.attrs.backendType !== "vxlan") {
      return mismatch(name, `uses backend ${typeText(lease.attrs.backendType)}, this node uses "vxlan"`);
    }
    let data: VxlanPeerData;
    try {
      // Parsed once in the peer view; a lease built elsewhere (tests, tools) is parsed here.
      data =
        lease.peerData instanceof VxlanPeerData
          ? lease.peerData
          : parseVxlanPeerData(lease.attrs.backendData, lease.attrs.backendV6Data);
    } catch (error) {
      return mismatch(
        name,
        `has bad vxlan BackendData: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
    const parts = sharedFamilies(node, lease).map((family) => ({
      family: family.family,
      program: this.peerFamily(node, name, family, family.family === 4 ? data.v4 : data.v6),
    }));
    return combineFamilies(parts, name);
  }

  /** A peer's objects in one family: FDB, neighbour and onlink route, or a direct route. */
  private peerFamily(
    node: NodeFacts,
    name: string,
    peer: PeerFamily,
    data: VxlanVtepData | undefined,
  ): PeerProgram {
    const vtep = peer.family === 4 ? this.v4 : this.v6;
    const field = peer.family === 4 ? "BackendData" : "BackendV6Data";
    if (vtep === undefined)
      return mismatch(name, `has IPv${peer.family}, which this node's vxlan does not carry`);
    if (data === undefined)
      return mismatch(name, `publishes no vxlan ${field} for its IPv${peer.family} subnet`);
    const vni = this.config.vxlan.vni;
    // VNI 0 means the peer did not publish one (older flannel); flannel never checks it, so accept.
    if (data.vni !== 0 && data.vni !== vni) {
      return mismatch(
        name,
        `uses VNI ${data.vni}, this node uses VNI ${vni}; frames would be tagged with the wrong VNI`,
      );
    }
    const { family, publicAddress, subnet, subnetAddress } = peer;
    if (this.config.vxlan.directRouting && isOnLink(node, publicAddress)) {
      return {
        objects: [
          ownedRoute({ family, dst: subnet, gateway: publicAddress, dev: node.external.name, onlink: false }),
        ],
        status: {
          state: "programmed",
          reason: `direct route via ${publicAddress} dev ${node.external.name} (DirectRouting, on-link)`,
        },
      };
    }
    return {
      objects: [
        permanentFdb({ dev: vtep.dev, mac: data.vtepMac, dst: publicAddress }),
        permanentNeighbour({ family, dev: vtep.dev, dst: subnetAddress, lladdr: data.vtepMac }),
        ownedRoute({ family, dst: subnet, gateway: subnetAddress, dev: vtep.dev, onlink: true }),
      ],
      status: { state: "programmed", reason: `vxlan via ${vtep.dev} to ${publicAddress}` },
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

  /** Pods' MTU: with IPv6 on, small enough for the IPv6 underlay too (flannel keeps 50 and drops). */
  mtu(external: { readonly mtu: number }, ipv6 = false): number {
    return (this.vxlan.mtu ?? external.mtu) - (ipv6 ? VXLAN_OVERHEAD_IPV6 : VXLAN_OVERHEAD);
  }

  /** A device's MTU: its own family's encapsulation. */
  deviceMtu(external: { readonly mtu: number }, family: Family): number {
    return this.mtu(external, family === 6);
  }

  async prepare(context: Parameters<BackendConfig["prepare"]>[0]): Promise<NodeBackend> {
    const families = context.families ?? { ipv4: true, ipv6: false };
    const vni = this.vxlan.vni;
    let origin: IdentityOrigin = "persisted";
    const vtep = async (family: Family, dev: string): Promise<Vtep> => {
      const existing = await context.existingLink(dev);
      const choice = await loadOrCreateVtepMac(context.stateDir, vni, {
        binding: context.nodeBinding,
        existingMac: existing?.mac,
        renew: context.renewIdentity ?? false,
        device: dev,
      });
      // The identity's origin is the first family's (IPv4 unless IPv6-only).
      if (family === 4 || !families.ipv4) origin = choice.origin;
      return { family, dev, mac: choice.mac };
    };
    const v4 = families.ipv4 ? await vtep(4, vxlanDeviceName(vni)) : undefined;
    const v6 = families.ipv6 ? await vtep(6, vxlanV6DeviceName(vni)) : undefined;
    return new VxlanNode(this, v4, v6, context.txChecksumOffload, origin);
  }
}

export const vxlanBackend: BackendPlugin = {
  type: "vxlan",
  supportsIPv6: true,
  parseConfig: (raw, warnings) => new VxlanConfig(parseVxlanOptions(raw, warnings)),
  parsePeerData: (data, v6Data) => parseVxlanPeerData(data, v6Data),
  describePeerData: (data) => (data instanceof VxlanPeerData ? data.vtepMac : undefined),
  identityOf: (data) => (data instanceof VxlanPeerData ? vtepIdentity(data.vtepMac) : undefined),
};
