// Facts and settings of the node's own network namespace that live in /proc and /sys rather than in
// netlink. Read and written in-process: the agent runs in the namespace it programs.
import { readFile, writeFile } from "node:fs/promises";
import type { DeviceHost } from "../dataplane/devices.js";

export const IP_FORWARD_SYSCTL = "/proc/sys/net/ipv4/ip_forward";
/** IPv6 forwarding for every interface (a host that takes its default route from RAs needs accept_ra=2). */
export const IPV6_FORWARD_SYSCTL = "/proc/sys/net/ipv6/conf/all/forwarding";

/** Turns forwarding on when it is off (IPv4 by default); true when it changed something. Throws when it cannot. */
export async function ensureForwarding(path = IP_FORWARD_SYSCTL): Promise<boolean> {
  const current = (await readFile(path, "utf8")).trim();
  if (current === "1") return false;
  await writeFile(path, "1\n");
  return true;
}

/** addr_assign_type 3 (NET_ADDR_SET): the MAC was set explicitly and no longer follows the ports. */
export const sysfsDeviceHost: DeviceHost = {
  async macIsPinned(dev) {
    try {
      return (await readFile(`/sys/class/net/${dev}/addr_assign_type`, "utf8")).trim() === "3";
    } catch {
      return true; // unreadable: leave the MAC as it is
    }
  },
};
