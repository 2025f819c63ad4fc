// The node's devices: the pod bridge (cni0 / docker0) and the VXLAN device. Each ensure* reads the
// device, compares it with what it should be and fixes only the difference, so it is cheap when all
// is well and repairs drift (a deleted device, address or MTU) when not. Unlike flannel, an existing
// VXLAN device with the wrong MAC or MTU is corrected, not reused as is.
import { containsIp, firstHost, formatIPv4, maskOf, parseIPv4, type Subnet } from "../ip/ipv4.js";
import type { CommandRunner } from "./kernel/runner.js";
import { readAddresses, readLink, type Link } from "./kernel/read.js";

export class DeviceError extends Error {
  override name = "DeviceError";
}

/** One change made to a device, for logs and drift metrics. */
export interface DeviceRepair {
  readonly device: string;
  /** "created", "recreated", "address", "mtu", "up", "mac", "forwarding" */
  readonly what: string;
  readonly detail: string;
}

async function ip(runner: CommandRunner, args: readonly string[]): Promise<void> {
  const result = await runner.run("ip", args);
  if (result.exitCode !== 0) {
    throw new DeviceError(`ip ${args.join(" ")}: ${result.stderr.trim() || `exit ${result.exitCode}`}`);
  }
}

/**
 * Makes `dev` carry exactly `wanted` among its addresses inside `network` (stale addresses from an
 * earlier lease are removed); addresses outside the cluster network are not ours and stay.
 */
async function ensureOnlyAddress(
  runner: CommandRunner,
  dev: string,
  wanted: string,
  network: Subnet,
  repairs: DeviceRepair[],
): Promise<void> {
  const addresses = (await readAddresses(runner, dev)).filter((a) => a.family === "inet");
  for (const address of addresses) {
    if (address.cidr !== wanted && containsIp(network, parseIPv4(address.local))) {
      await ip(runner, ["addr", "del", address.cidr, "dev", dev]);
      repairs.push({ device: dev, what: "address", detail: `removed stale ${address.cidr}` });
    }
  }
  if (!addresses.some((a) => a.cidr === wanted)) {
    await ip(runner, ["addr", "add", wanted, "dev", dev]);
    repairs.push({ device: dev, what: "address", detail: `added ${wanted}` });
  }
}

async function ensureMtuAndUp(
  runner: CommandRunner,
  link: Link,
  mtu: number,
  repairs: DeviceRepair[],
): Promise<void> {
  if (link.mtu !== mtu) {
    await ip(runner, ["link", "set", "dev", link.name, "mtu", String(mtu)]);
    repairs.push({ device: link.name, what: "mtu", detail: `${link.mtu} → ${mtu}` });
  }
  if (!link.up) {
    await ip(runner, ["link", "set", "dev", link.name, "up"]);
    repairs.push({ device: link.name, what: "up", detail: "set up" });
  }
}

export interface BridgeSpec {
  readonly name: string;
  /** The node's lease: the bridge gets its first host with the lease's prefix (10.244.5.1/24). */
  readonly subnet: Subnet;
  readonly network: Subnet;
  readonly mtu: number;
}

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
 * Whether the kernel keeps `dev`'s MAC (addr_assign_type 3, "set"); a bridge whose MAC is not set takes
 * its lowest port's MAC and changes it as ports come and go. Unreadable counts as pinned: leave it be.
 */
async function macIsPinned(runner: CommandRunner, dev: string): Promise<boolean> {
  const result = await runner.run("cat", [`/sys/class/net/${dev}/addr_assign_type`]);
  return result.exitCode !== 0 || result.stdout.trim() === "3";
}

/** The pod bridge: created if missing (with a fixed MAC), an existing one's MAC pinned, gateway address, backend MTU, up. */
export async function ensureBridge(runner: CommandRunner, spec: BridgeSpec): Promise<DeviceRepair[]> {
  const repairs: DeviceRepair[] = [];
  let link = await readLink(runner, spec.name);
  if (link && link.kind !== "bridge") {
    throw new DeviceError(
      `${spec.name} exists but is a ${link.kind ?? "plain"} device, not a bridge; remove it or choose --bridge`,
    );
  }
  if (!link) {
    // Created with an explicit MAC, which the kernel then keeps: a bridge without one takes its lowest
    // port's MAC and changes it as pods come and go, leaving pods with a stale ARP entry for their gateway
    // (and failing the bridge plugin's CHECK, which compares the MAC with the one ADD reported).
    await ip(runner, ["link", "add", spec.name, "address", bridgeMac(spec.subnet), "type", "bridge"]);
    repairs.push({ device: spec.name, what: "created", detail: "bridge" });
    link = await readLink(runner, spec.name);
    if (!link) throw new DeviceError(`${spec.name}: created but not found`);
  }
  if (link.mac !== undefined && !(await macIsPinned(runner, spec.name))) {
    // A bridge someone else made without a MAC: pin the one it has now, so that it stops following its
    // lowest port (pods' ARP entries for the gateway stay right) without changing it under them today.
    await ip(runner, ["link", "set", "dev", spec.name, "address", link.mac]);
    repairs.push({ device: spec.name, what: "mac", detail: `pinned ${link.mac}` });
  }
  const gateway = `${formatIPv4(firstHost(spec.subnet))}/${spec.subnet.prefixLen}`;
  await ensureOnlyAddress(runner, spec.name, gateway, spec.network, repairs);
  await ensureMtuAndUp(runner, link, spec.mtu, repairs);
  return repairs;
}

export interface VxlanSpec {
  readonly name: string;
  readonly vni: number;
  readonly port: number;
  readonly learning: boolean;
  readonly gbp: boolean;
  readonly mac: string;
  /** Tunnel source: the node's public IP. */
  readonly local: string;
  /** The external interface. */
  readonly underlay: string;
  readonly mtu: number;
  readonly subnet: Subnet;
  readonly network: Subnet;
}

/** Why an existing device cannot serve as this VXLAN device, or undefined if it can. */
export function vxlanIncompatibility(link: Link, spec: VxlanSpec): string | undefined {
  if (link.kind !== "vxlan" || !link.vxlan) return `it is a ${link.kind ?? "plain"} device, not vxlan`;
  const v = link.vxlan;
  if (v.id !== spec.vni) return `VNI ${v.id}, want ${spec.vni}`;
  if (v.local !== undefined && v.local !== spec.local) return `local ${v.local}, want ${spec.local}`;
  if (v.underlay !== undefined && v.underlay !== spec.underlay)
    return `underlay ${v.underlay}, want ${spec.underlay}`;
  if ((v.port ?? 8472) !== spec.port) return `port ${v.port ?? 8472}, want ${spec.port}`;
  if (v.learning !== spec.learning)
    return `learning ${v.learning ? "on" : "off"}, want ${spec.learning ? "on" : "off"}`;
  if (v.gbp !== spec.gbp) return `gbp ${v.gbp ? "on" : "off"}, want ${spec.gbp ? "on" : "off"}`;
  return undefined;
}

/**
 * The VXLAN device flannel.<VNI>: created (or re-created when incompatible) with the persisted MAC,
 * then MAC, MTU, address <subnet>/32 and up are made right. `recreated` tells the caller that every
 * neighbour/FDB entry and route on it is gone and must be replayed (the planner does that from a
 * fresh read).
 */
export async function ensureVxlanDevice(runner: CommandRunner, spec: VxlanSpec): Promise<DeviceRepair[]> {
  const repairs: DeviceRepair[] = [];
  let link = await readLink(runner, spec.name);
  if (link) {
    const problem = vxlanIncompatibility(link, spec);
    if (problem) {
      await ip(runner, ["link", "del", spec.name]);
      repairs.push({ device: spec.name, what: "recreated", detail: problem });
      link = undefined;
    }
  }
  if (!link) {
    const args = ["link", "add", spec.name, "address", spec.mac, "type", "vxlan", "id", String(spec.vni)];
    args.push("local", spec.local, "dev", spec.underlay, "dstport", String(spec.port));
    args.push(spec.learning ? "learning" : "nolearning");
    if (spec.gbp) args.push("gbp");
    await ip(runner, args);
    if (!repairs.some((r) => r.what === "recreated"))
      repairs.push({ device: spec.name, what: "created", detail: "vxlan" });
    link = await readLink(runner, spec.name);
    if (!link) throw new DeviceError(`${spec.name}: created but not found`);
  }
  if (link.mac !== undefined && link.mac !== spec.mac) {
    await ip(runner, ["link", "set", "dev", spec.name, "address", spec.mac]);
    repairs.push({ device: spec.name, what: "mac", detail: `${link.mac} → ${spec.mac}` });
  }
  await ensureOnlyAddress(runner, spec.name, `${formatIPv4(spec.subnet.ip)}/32`, spec.network, repairs);
  await ensureMtuAndUp(runner, link, spec.mtu, repairs);
  return repairs;
}

/** IPv4 forwarding on, as pods' traffic is forwarded by the node. */
export async function ensureForwarding(runner: CommandRunner): Promise<DeviceRepair[]> {
  const current = await runner.run("sysctl", ["-n", "net.ipv4.ip_forward"]);
  if (current.stdout.trim() === "1") return [];
  const result = await runner.run("sysctl", ["-w", "net.ipv4.ip_forward=1"]);
  if (result.exitCode !== 0)
    throw new DeviceError(`cannot enable net.ipv4.ip_forward: ${result.stderr.trim()}`);
  return [{ device: "-", what: "forwarding", detail: "net.ipv4.ip_forward=1" }];
}

/** The on-link IPv4 networks of the external interface, for the backends' reachability check. */
export async function connectedNetworks(runner: CommandRunner, dev: string): Promise<Subnet[]> {
  const addresses = await readAddresses(runner, dev);
  return addresses
    .filter((a) => a.family === "inet" && a.scope !== "host")
    .map((a) => ({ ip: (parseIPv4(a.local) & maskOf(a.prefixLen)) >>> 0, prefixLen: a.prefixLen }));
}
