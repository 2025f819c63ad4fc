// The udp backend's packet path, as flannel's C proxy: one loop that polls the TUN device, the UDP
// socket and a wake-up eventfd, and moves each IP packet unchanged between them (packet.ts decides).
// It runs on a worker thread of its own (proxy-worker.ts), never on the agent's event loop: the main
// thread only sends it forwarding-table changes (a MessagePort, plus the eventfd to wake it) and reads
// its counters (a SharedArrayBuffer). The descriptors belong to the main thread, which opened them.
//
// Datagrams go out and come in by the batch (sendmmsg, recvmmsg: one system call for up to BATCH of
// them, where flannel's proxy makes one per packet); the TUN has no batched read or write, so that
// side stays one call per packet. bench/throughput.ts: +50 % TCP, +28 % small packets over one call
// per datagram.
import { receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import {
  EAGAIN,
  EINTR,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  addressOf,
  poll,
  read,
  recvmmsg,
  sendmmsg,
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
const EBADF = 9;
/**
 * At most this many ICMP net-unreachables a second, as the kernel limits its own ICMP errors: a pod
 * that floods an address nobody owns gets a few answers, not one per packet.
 */
const ICMP_PER_SECOND = 100;
/** EBADFD: the TUN device this descriptor was attached to was deleted. */
const EBADFD = 77;

/** Applies one command to the table. */
function applyCommand(table: ForwardingTable<SocketEndpoint>, command: ProxyCommand): void {
  if (command.type === "clear") table.clear();
  else if (command.type === "delete") table.delete(command.key);
  else {
    const sockaddr = sockaddrOf(command.entry.endpoint);
    table.set(command.key, command.entry, {
      ...command.entry.endpoint,
      sockaddr,
    });
  }
}

/** struct iovec and struct mmsghdr on x86_64 Linux. */
const IOVEC_BYTES = 16;
const MMSGHDR_BYTES = 64;
const MSG_NAME = 0;
const MSG_NAMELEN = 8;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_LEN = 56;
const SOCKADDR_BYTES = 16;
/** One packet's room in a batch: a TUN's MTU is at most 65535. */
const SLOT_BYTES = 65_536;

/** BATCH packets' worth of buffers, iovecs and mmsghdrs, made once and pointed at each other. */
class MessageBatch {
  readonly slots: Buffer[] = [];
  readonly messages = Buffer.alloc(BATCH * MMSGHDR_BYTES);
  private readonly iovecs = Buffer.alloc(BATCH * IOVEC_BYTES);
  /**
   * The sockaddr_in of each message (its destination, or its sender once received), in one buffer: the
   * kernel follows pointers to these, and V8 may move a typed array of 64 bytes or less (it keeps such
   * small ones on its own heap), so nothing pointed at is allocated that small.
   */
  private readonly names = Buffer.alloc(BATCH * SOCKADDR_BYTES);

  constructor() {
    const iovecsAt = addressOf(this.iovecs);
    const namesAt = addressOf(this.names);
    for (let i = 0; i < BATCH; i++) {
      const slot = Buffer.alloc(SLOT_BYTES);
      this.slots.push(slot);
      this.iovecs.writeBigUInt64LE(addressOf(slot), i * IOVEC_BYTES);
      this.iovecs.writeBigUInt64LE(BigInt(SLOT_BYTES), i * IOVEC_BYTES + 8);
      const m = i * MMSGHDR_BYTES;
      this.messages.writeBigUInt64LE(namesAt + BigInt(i * SOCKADDR_BYTES), m + MSG_NAME);
      this.messages.writeUInt32LE(SOCKADDR_BYTES, m + MSG_NAMELEN);
      this.messages.writeBigUInt64LE(iovecsAt + BigInt(i * IOVEC_BYTES), m + MSG_IOV);
      this.messages.writeBigUInt64LE(1n, m + MSG_IOVLEN);
    }
  }

  /** The length of the datagram message i received (recvmmsg filled in msg_len). */
  receivedLength(i: number): number {
    return this.messages.readUInt32LE(i * MMSGHDR_BYTES + MSG_LEN);
  }

  /** The IPv4 address of the sender of message i (its sockaddr_in, filled in by recvmmsg). */
  senderOf(i: number): number {
    return this.names.readUInt32BE(i * SOCKADDR_BYTES + 4);
  }

  /** Message i sends `length` bytes of its slot to `sockaddr` (copied: 16 bytes). */
  prepareSend(i: number, length: number, sockaddr: Buffer): void {
    this.iovecs.writeBigUInt64LE(BigInt(length), i * IOVEC_BYTES + 8);
    sockaddr.copy(this.names, i * SOCKADDR_BYTES, 0, SOCKADDR_BYTES);
  }
}

class ProxyStopped extends Error {}

/** Runs until the control flag is set or a descriptor fails; returns why it stopped (undefined: asked to). */
export function runProxy(setup: ProxySetup): string | undefined {
  const table = new ForwardingTable<SocketEndpoint>();
  const counters = new Float64Array(setup.counters);
  const control = new Int32Array(setup.control);
  const wakeCount = Buffer.alloc(8);
  const fds = Buffer.alloc(24);
  [setup.tunFd, setup.socketFd, setup.wakeFd].forEach((fd, i) => {
    fds.writeInt32LE(fd, i * 8);
    fds.writeInt16LE(POLLIN, i * 8 + 4);
  });
  const bump = (name: ProxyCounter, by = 1): void => {
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

  const tx = new MessageBatch();
  /** Sends the first `count` prepared messages of `tx`; what the socket refuses is dropped. */
  const flush = (count: number): void => {
    let sent = 0;
    while (sent < count) {
      const n = sendmmsg(setup.socketFd, tx.messages.subarray(sent * MMSGHDR_BYTES), count - sent);
      if (n <= 0) break;
      for (let i = sent; i < sent + n; i++) {
        bump("txPackets");
        bump("txBytes", tx.messages.readUInt32LE(i * MMSGHDR_BYTES + MSG_LEN));
      }
      sent += n;
    }
    if (sent < count) bump("dropSendError", count - sent);
  };

  const tunToUdp = (): void => {
    let queued = 0;
    for (let i = 0; i < BATCH; i++) {
      const packet = tx.slots[queued] ?? tx.slots[0];
      if (packet === undefined) break;
      const length = read(setup.tunFd, packet);
      if (length === -EAGAIN) break;
      if (length < 0) {
        flush(queued);
        throw new ProxyStopped(
          length === -EBADFD ? "the TUN device was deleted" : `reading the TUN device: ${strerror(-length)}`,
        );
      }
      if (length > 0 && (packet[0] ?? 0) >> 4 !== 4) {
        // IPv6 the kernel sends on its own (router solicitations, MLD): udp carries IPv4 only.
        bump("dropNotIpv4");
        continue;
      }
      if (malformedReason(packet, length) !== undefined) {
        bump("dropMalformed");
        continue;
      }
      const next = table.lookup(destinationOf(packet));
      if (next === undefined) {
        bump("dropNoRoute");
        const now = Date.now();
        if (now - icmpWindow >= 1000) {
          icmpWindow = now;
          icmpInWindow = 0;
        }
        const reply = icmpInWindow < ICMP_PER_SECOND ? netUnreachable(packet, length) : undefined;
        if (reply !== undefined) icmpInWindow++;
        if (reply !== undefined && writeLength(setup.tunFd, reply, reply.length) === reply.length)
          bump("icmpUnreachableSent");
        continue;
      }
      if (!decrementTtl(packet)) {
        bump("dropTtl");
        continue;
      }
      tx.prepareSend(queued, length, next.sockaddr);
      queued++;
    }
    flush(queued);
  };

  const rx = new MessageBatch();
  const udpToTun = (): void => {
    const received = recvmmsg(setup.socketFd, rx.messages, BATCH);
    if (received === -EBADF) throw new ProxyStopped("the UDP socket was closed");
    // Nothing else is expected (the socket is unconnected and has no IP_RECVERR); drain next time.
    for (let i = 0; i < received; i++) {
      const packet = rx.slots[i];
      if (packet === undefined) break;
      const length = rx.receivedLength(i);
      if (!table.isPeer(rx.senderOf(i))) {
        bump("dropUnknownSender");
        continue;
      }
      if (malformedReason(packet, length) !== undefined) {
        bump("dropMalformed");
        continue;
      }
      if (!decrementTtl(packet)) {
        bump("dropTtl");
        continue;
      }
      if (writeLength(setup.tunFd, packet, length) === length) {
        bump("rxPackets");
        bump("rxBytes", length);
      } else {
        bump("dropTunWriteError");
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
