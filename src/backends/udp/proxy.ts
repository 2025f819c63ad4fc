// The udp backend's packet path, as flannel's C proxy: one loop that polls the TUN device, the UDP
// socket and a wake-up eventfd, and moves each IP packet unchanged between them (packet.ts decides).
// It runs on a worker thread of its own (proxy-worker.ts), never on the agent's event loop: the main
// thread only sends it forwarding-table changes (a MessagePort, plus the eventfd to wake it) and reads
// its counters (a SharedArrayBuffer). The descriptors belong to the main thread, which opened them.
import { receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import {
  EAGAIN,
  EINTR,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  poll,
  read,
  recvfrom,
  sendtoLength,
  strerror,
  writeLength,
} from "../../netlink/libc.js";
import {
  decrementTtl,
  destinationOf,
  ForwardingTable,
  malformedReason,
  sockaddrOf,
  netUnreachable,
  type Endpoint,
  type ForwardingEntry,
} from "./packet.js";

/** The proxy's counters, by index into its shared Float64Array. */
export const PROXY_COUNTERS = [
  "txPackets",
  "txBytes",
  "rxPackets",
  "rxBytes",
  "dropNoRoute",
  "dropTtl",
  "dropUnknownSender",
  "dropMalformed",
  "dropNotIpv4",
  "dropSendError",
  "dropTunWriteError",
  "icmpUnreachableSent",
] as const;
export type ProxyCounter = (typeof PROXY_COUNTERS)[number];
/** Counter name → index, computed once: the packet path bumps several counters per packet. */
const AT = Object.fromEntries(PROXY_COUNTERS.map((name, i) => [name, i])) as Record<ProxyCounter, number>;

/** Changes to the forwarding table, main thread → proxy. */
export type ProxyCommand =
  | { readonly type: "set"; readonly key: string; readonly entry: ForwardingEntry }
  | { readonly type: "delete"; readonly key: string }
  | { readonly type: "clear" };

/** What the proxy tells the main thread: it stopped because of `reason` (the TUN went away, …). */
export interface ProxyFailure {
  readonly type: "failed";
  readonly reason: string;
}

export interface ProxySetup {
  readonly tunFd: number;
  readonly socketFd: number;
  /** An eventfd the main thread writes after each batch of commands (and to stop). */
  readonly wakeFd: number;
  /** Commands arrive here. */
  readonly port: MessagePort;
  /** Float64Array over it, indexed as PROXY_COUNTERS. */
  readonly counters: SharedArrayBuffer;
  /** Int32Array over it: [0] = 1 asks the loop to end. */
  readonly control: SharedArrayBuffer;
}

/** An endpoint with its sockaddr_in made once, so a packet's send needs no allocation. */
interface SocketEndpoint extends Endpoint {
  readonly sockaddr: Buffer;
}

/** At most this many packets per device per wake-up, so neither direction starves the other. */
const BATCH = 64;
/** The loop looks at the stop flag at least this often even when nothing arrives. */
const IDLE_POLL_MS = 500;
/** Big enough for any datagram: the TUN's MTU is the underlay's less 28. */
const BUFFER_BYTES = 65_536;
const EBADF = 9;
/**
 * At most this many ICMP net-unreachables a second, as the kernel limits its own ICMP errors: a pod
 * that floods an address nobody owns gets a few answers, not one per packet.
 */
const ICMP_PER_SECOND = 100;
/** EBADFD: the TUN device this descriptor was attached to was deleted. */
const EBADFD = 77;

/** Applies one command to the table. */
export function applyCommand(table: ForwardingTable<SocketEndpoint>, command: ProxyCommand): void {
  if (command.type === "clear") table.clear();
  else if (command.type === "delete") table.delete(command.key);
  else
    table.set(command.key, command.entry, {
      ...command.entry.endpoint,
      sockaddr: sockaddrOf(command.entry.endpoint),
    });
}

class ProxyStopped extends Error {}

/** Runs until the control flag is set or a descriptor fails; returns why it stopped (undefined: asked to). */
export function runProxy(setup: ProxySetup): string | undefined {
  const table = new ForwardingTable<SocketEndpoint>();
  const counters = new Float64Array(setup.counters);
  const control = new Int32Array(setup.control);
  const packet = Buffer.alloc(BUFFER_BYTES);
  const from = Buffer.alloc(16);
  const fromLength = Buffer.alloc(4);
  const wakeCount = Buffer.alloc(8);
  const fds = Buffer.alloc(24);
  [setup.tunFd, setup.socketFd, setup.wakeFd].forEach((fd, i) => {
    fds.writeInt32LE(fd, i * 8);
    fds.writeInt16LE(POLLIN, i * 8 + 4);
  });
  const count = (name: ProxyCounter, by = 1): void => {
    const i = AT[name];
    counters[i] = (counters[i] ?? 0) + by;
  };

  let icmpWindow = 0;
  let icmpInWindow = 0;

  const drainCommands = (): void => {
    read(setup.wakeFd, wakeCount);
    for (
      let message = receiveMessageOnPort(setup.port);
      message !== undefined;
      message = receiveMessageOnPort(setup.port)
    ) {
      applyCommand(table, message.message as ProxyCommand);
    }
  };

  const tunToUdp = (): void => {
    for (let i = 0; i < BATCH; i++) {
      const length = read(setup.tunFd, packet);
      if (length === -EAGAIN) return;
      if (length < 0) {
        throw new ProxyStopped(
          length === -EBADFD ? "the TUN device was deleted" : `reading the TUN device: ${strerror(-length)}`,
        );
      }
      if (length > 0 && (packet[0] ?? 0) >> 4 !== 4) {
        // IPv6 the kernel sends on its own (router solicitations, MLD): udp carries IPv4 only.
        count("dropNotIpv4");
        continue;
      }
      if (malformedReason(packet, length) !== undefined) {
        count("dropMalformed");
        continue;
      }
      const next = table.lookup(destinationOf(packet));
      if (next === undefined) {
        count("dropNoRoute");
        const now = Date.now();
        if (now - icmpWindow >= 1000) {
          icmpWindow = now;
          icmpInWindow = 0;
        }
        const reply = icmpInWindow < ICMP_PER_SECOND ? netUnreachable(packet, length) : undefined;
        if (reply !== undefined) icmpInWindow++;
        if (reply !== undefined && writeLength(setup.tunFd, reply, reply.length) === reply.length)
          count("icmpUnreachableSent");
        continue;
      }
      if (!decrementTtl(packet)) {
        count("dropTtl");
        continue;
      }
      if (sendtoLength(setup.socketFd, packet, length, next.sockaddr) === length) {
        count("txPackets");
        count("txBytes", length);
      } else {
        count("dropSendError");
      }
    }
  };

  const udpToTun = (): void => {
    for (let i = 0; i < BATCH; i++) {
      const length = recvfrom(setup.socketFd, packet, 0, from, fromLength);
      if (length === -EAGAIN) return;
      if (length === -EBADF) throw new ProxyStopped("the UDP socket was closed");
      // Nothing else is expected (the socket is unconnected and has no IP_RECVERR); drain next time.
      if (length < 0) return;
      if (!table.isPeer(from.readUInt32BE(4))) {
        count("dropUnknownSender");
        continue;
      }
      if (malformedReason(packet, length) !== undefined) {
        count("dropMalformed");
        continue;
      }
      if (!decrementTtl(packet)) {
        count("dropTtl");
        continue;
      }
      if (writeLength(setup.tunFd, packet, length) === length) {
        count("rxPackets");
        count("rxBytes", length);
      } else {
        count("dropTunWriteError");
      }
    }
  };

  try {
    drainCommands();
    while (Atomics.load(control, 0) === 0) {
      const ready = poll(fds, IDLE_POLL_MS);
      if (ready === -EINTR || ready === 0) continue;
      if (ready < 0) return `poll: ${strerror(-ready)}`;
      const tunEvents = fds.readInt16LE(6);
      const socketEvents = fds.readInt16LE(14);
      if ((fds.readInt16LE(22) & POLLIN) !== 0) drainCommands();
      if ((tunEvents & (POLLERR | POLLHUP | POLLNVAL)) !== 0 && (tunEvents & POLLIN) === 0) {
        return "the TUN device was deleted";
      }
      if ((socketEvents & (POLLERR | POLLNVAL)) !== 0 && (socketEvents & POLLIN) === 0) {
        return "the UDP socket failed";
      }
      if ((tunEvents & POLLIN) !== 0) tunToUdp();
      if ((socketEvents & POLLIN) !== 0) udpToTun();
    }
    return undefined;
  } catch (error) {
    if (error instanceof ProxyStopped) return error.message;
    throw error;
  }
}
