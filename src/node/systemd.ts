// systemd's readiness protocol (sd_notify): with Type=notify, systemd starts units ordered after twill
// (docker, kubelet) only once twill says READY=1, which it does once subnet.env is written and the data
// plane programmed, as flanneld does. A datagram to $NOTIFY_SOCKET; Node has no AF_UNIX datagram
// sockets, so it goes through libc like the netlink sockets.
import { AF_UNIX, close, sendto, socket, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK } from "../netlink/libc.js";

/** sockaddr_un for a NOTIFY_SOCKET value: a path, or "@name" for the abstract namespace. */
export function notifyAddress(socketPath: string): Buffer {
  const abstract = socketPath.startsWith("@");
  const name = Buffer.from(abstract ? socketPath.slice(1) : socketPath, "utf8");
  if (name.length === 0 || name.length > 107)
    throw new Error(`NOTIFY_SOCKET "${socketPath}" is not a usable socket address`);
  // sa_family (AF_UNIX, host order), then the path: NUL-terminated, or NUL-led for an abstract name.
  const address = Buffer.alloc(2 + 1 + name.length);
  address.writeUInt16LE(AF_UNIX, 0);
  if (abstract) name.copy(address, 3);
  else name.copy(address, 2);
  return address;
}

/**
 * Sends `state` ("READY=1", "STOPPING=1", "STATUS=…", one per line) to systemd; false when not run by
 * systemd with a notify socket. Errors are thrown: the caller logs them, readiness never depends on it.
 */
export function sdNotify(
  state: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): boolean {
  const socketPath = env.NOTIFY_SOCKET;
  if (socketPath === undefined || socketPath === "") return false;
  const address = notifyAddress(socketPath);
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  try {
    sendto(fd, Buffer.from(state, "utf8"), 0, address);
  } finally {
    close(fd);
  }
  return true;
}
