// TUN devices: the one kind of device rtnetlink cannot create (the kernel answers EOPNOTSUPP), so it
// is made the way `ip tuntap add` makes it, with ioctls on /dev/net/tun (koffi, libc.ts).
//
// twill's TUN devices are persistent (TUNSETPERSIST): the device, its address, MTU and the routes
// through it outlive the process that attached to it, so an agent that exits or restarts leaves the
// data plane as it was, and the next agent attaches to the same device again.
import { closeSync, constants, openSync } from "node:fs";
import { ioctlPointer, ioctlValue, SystemCallError } from "./libc.js";

const TUN_PATH = "/dev/net/tun";
/** _IOW('T', 202, int) */
const TUNSETIFF = 0x400454ca;
/** _IOW('T', 203, int) */
const TUNSETPERSIST = 0x400454cb;
const IFF_TUN = 0x0001;
/** No packet-information header: each read and write is one bare IP packet, as flannel's flannel0. */
const IFF_NO_PI = 0x1000;
/** struct ifreq: char ifr_name[16], then a union whose first member is short ifr_flags. */
const IFREQ_BYTES = 40;
const IFNAMSIZ = 16;

function ifreq(name: string, flags: number): Buffer {
  const bytes = Buffer.alloc(IFREQ_BYTES);
  if (Buffer.byteLength(name) >= IFNAMSIZ) throw new Error(`device name ${name} is longer than 15 bytes`);
  bytes.write(name, 0, "latin1");
  bytes.writeUInt16LE(flags, IFNAMSIZ);
  return bytes;
}

function openTunFile(): number {
  try {
    return openSync(TUN_PATH, constants.O_RDWR | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "error";
    throw new Error(
      `cannot open ${TUN_PATH} (${code}): the udp backend needs the tun module (modprobe tun) and, in a ` +
        `container, the device /dev/net/tun (DaemonSet: a hostPath volume for /dev/net/tun)`,
      { cause: error },
    );
  }
}

/**
 * Attaches a new non-blocking file descriptor to TUN device `name`, creating the device if it does not
 * exist; with `persist` the device outlives the descriptor. The caller owns the descriptor (closeSync).
 */
export function attachTun(name: string, options: { readonly persist: boolean }): number {
  const fd = openTunFile();
  try {
    ioctlPointer(fd, TUNSETIFF, ifreq(name, IFF_TUN | IFF_NO_PI), `TUNSETIFF ${name}`);
    if (options.persist) ioctlValue(fd, TUNSETPERSIST, 1, `TUNSETPERSIST ${name}`);
    return fd;
  } catch (error) {
    closeSync(fd);
    if (error instanceof SystemCallError && error.code === "EBUSY") {
      throw new Error(
        `${name} is held by another process (a flanneld still running on this node?); stop it, and ` +
          `twill attaches to ${name} on its next try`,
        { cause: error },
      );
    }
    if (error instanceof SystemCallError && error.code === "EINVAL") {
      throw new Error(
        `${name} exists but is not a TUN device without packet information (a TAP device, or one made ` +
          `with other flags); delete it (ip link delete ${name}) and twill makes it again`,
        { cause: error },
      );
    }
    throw error;
  }
}

/** Creates persistent TUN device `name` (as `ip tuntap add dev NAME mode tun`) and lets go of it. */
export function createPersistentTun(name: string): void {
  closeSync(attachTun(name, { persist: true }));
}
