// Devices: the pod bridge and each backend's own devices, made to match their DeviceSpec through the
// kernel channel. Reads come from the cached kernel view, so a check where all is well costs nothing;
// only a difference costs a kernel call. Unlike flannel, an existing device with the wrong MAC or MTU is
// corrected, and an incompatible one (another VNI, port, …) is re-created, not reused as is.
import { prefixContains } from "../ip/address.js";
import type { DeviceRepair, DeviceSpec } from "../backends/backend.js";
import type { KernelChannel } from "./channel.js";
import type { KernelView } from "./kernel-view.js";
import type { Link } from "./objects.js";

export class DeviceError extends Error {
  override name = "DeviceError";
}

/** What device checks need besides the channel: facts the netlink API does not report. */
export interface DeviceHost {
  /** Whether the kernel keeps the device's MAC (/sys/class/net/<dev>/addr_assign_type is 3, "set"). */
  macIsPinned(dev: string): Promise<boolean>;
}

/** Repairs after which the device holds none of its old routes and entries (they must be replayed). */
export function lostObjects(repairs: readonly DeviceRepair[]): boolean {
  return repairs.some((r) => r.what === "created" || r.what === "recreated" || r.what === "up");
}

async function freshLink(channel: KernelChannel, name: string): Promise<Link> {
  const link = (await channel.dumpLinks()).find((l) => l.name === name);
  if (link === undefined) throw new DeviceError(`${name}: created but not found`);
  return link;
}

/**
 * Whether the view shows the device exactly as its spec asks (present, compatible, MAC, addresses, MTU,
 * up): a notification that leaves every device in this state is an echo of our own change and needs
 * no check. Pure: reads the view only.
 */
export function deviceInSync(view: KernelView, spec: DeviceSpec): boolean {
  const link = view.link(spec.link.name);
  if (link === undefined || spec.incompatibility(link) !== undefined) return false;
  if (spec.mac !== undefined && link.mac !== spec.mac) return false;
  if (link.mtu !== spec.mtu || !link.up) return false;
  const have = view.addressesOf(spec.link.name);
  const wanted = (a: { address: string; prefixLength: number }): boolean =>
    spec.addresses.some((w) => w.address === a.address && w.prefixLength === a.prefixLength);
  if (
    !spec.addresses.every((w) =>
      have.some((a) => a.address === w.address && a.prefixLength === w.prefixLength),
    )
  ) {
    return false;
  }
  return !have.some((a) => !wanted(a) && spec.addressScope.some((scope) => prefixContains(scope, a.address)));
}

/** Brings one device in line with its spec; returns what it changed. Throws KernelCallError/DeviceError. */
export async function ensureDevice(
  channel: KernelChannel,
  view: KernelView,
  spec: DeviceSpec,
  host: DeviceHost,
): Promise<DeviceRepair[]> {
  const name = spec.link.name;
  const repairs: DeviceRepair[] = [];
  let link = view.link(name);
  let made = false;
  if (link !== undefined) {
    const problem = spec.incompatibility(link);
    if (problem !== undefined) {
      await channel.deleteLink(name);
      repairs.push({ device: name, what: "recreated", detail: problem });
      link = undefined;
    }
  }
  if (link === undefined) {
    await channel.createLink(spec.link);
    if (repairs.length === 0) repairs.push({ device: name, what: "created", detail: spec.link.kind });
    link = await freshLink(channel, name);
    made = true;
  } else if (spec.pinMac === true && link.mac !== undefined && !(await host.macIsPinned(name))) {
    // A bridge someone else made without a MAC: pin the one it has now, so that it stops following its
    // lowest port (pods' ARP entries for the gateway stay right) without changing it under them today.
    await channel.setLink(name, { mac: link.mac });
    repairs.push({ device: name, what: "mac", detail: `pinned ${link.mac}` });
  }
  if (spec.mac !== undefined && link.mac !== spec.mac) {
    await channel.setLink(name, { mac: spec.mac });
    repairs.push({ device: name, what: "mac", detail: `${link.mac ?? "none"} → ${spec.mac}` });
  }
  // A device just made has no addresses yet, whatever the view still remembers of an older one.
  const have = made ? [] : view.addressesOf(name);
  const wanted = (a: { address: string; prefixLength: number }): boolean =>
    spec.addresses.some((w) => w.address === a.address && w.prefixLength === a.prefixLength);
  for (const address of have) {
    if (!wanted(address) && spec.addressScope.some((scope) => prefixContains(scope, address.address))) {
      await channel.deleteAddress(address);
      repairs.push({
        device: name,
        what: "address",
        detail: `removed stale ${address.address}/${address.prefixLength}`,
      });
    }
  }
  for (const want of spec.addresses) {
    if (have.some((a) => a.address === want.address && a.prefixLength === want.prefixLength)) continue;
    const family = want.address.includes(":") ? 6 : 4;
    await channel.addAddress({
      family,
      dev: name,
      address: want.address,
      prefixLength: want.prefixLength,
      scope: 0,
    });
    repairs.push({ device: name, what: "address", detail: `added ${want.address}/${want.prefixLength}` });
  }
  if (link.mtu !== spec.mtu) {
    await channel.setLink(name, { mtu: spec.mtu });
    repairs.push({ device: name, what: "mtu", detail: `${link.mtu} → ${spec.mtu}` });
  }
  if (!link.up) {
    await channel.setLink(name, { up: true });
    // A device just made comes up as part of its creation, not as a repair of its own.
    if (!made) repairs.push({ device: name, what: "up", detail: "set up" });
  }
  return repairs;
}
