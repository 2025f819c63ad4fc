// A netlink socket of any protocol (NETLINK_ROUTE today, NETLINK_NETFILTER later), used in one of two
// ways:
//
// - Requests, synchronously on the main thread. The kernel runs a request inside the sender's sendmsg,
//   so every acknowledgement is already queued when send() returns, and a dump's next chunk is produced
//   inside each recv. Receives are therefore non-blocking, and a queue that runs dry before the kernel
//   has answered is an error, never a wait. Many requests share one datagram, each with NLM_F_ACK and its
//   own sequence number; the kernel goes on with the next message after one it refuses, so every
//   request gets its own outcome.
// - Subscriptions, without blocking and without threads: the socket is non-blocking with O_ASYNC and
//   this process as its owner, so the kernel signals the process when a notification is queued, and
//   one process-wide listener drains every subscribed socket until EAGAIN. (koffi's async calls would
//   block a worker thread in recv; a process that exits while one is blocked hangs.) Verified on kernel
//   6.18 inside `ip netns exec`: 105 route notifications delivered this way.
//
// The signal is SIGURG (F_SETSIG), not O_ASYNC's default SIGIO. execa's signal-exit listens for SIGIO
// under both its names, and when a SIGPOLL (= SIGIO) arrives with no other 'SIGPOLL' listener it decides
// the process is being killed and SIGTERMs every running execa child: verified here, `ip` children of a
// test died whenever a notification arrived. SIGURG is hooked by nobody, and its default action is to
// ignore it, so even a notification that arrives with no listener (or in a worker thread) is harmless.
import { constants } from "node:os";
import { isMainThread } from "node:worker_threads";
import {
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_OVERRUN,
  NLM_F_ACK,
  NLM_F_DUMP,
  NLM_F_DUMP_INTR,
  NLM_F_MULTI,
  NLM_F_REQUEST,
  forEachMessage,
  parseAcknowledgement,
  parseDone,
  type EncodedMessages,
  type MessageView,
} from "./codec.js";
import {
  AF_NETLINK,
  EAGAIN,
  EINTR,
  EIO,
  EMSGSIZE,
  ENOBUFS,
  EPERM,
  MSG_DONTWAIT,
  MSG_TRUNC,
  O_ASYNC,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_RAW,
  SOL_SOCKET,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SystemCallError,
  bind,
  close,
  errnoName,
  fcntlGetFlags,
  fcntlSetFlags,
  fcntlSetOwner,
  fcntlSetSignal,
  getsockname,
  getsockoptInt,
  recv,
  send,
  setsockoptInt,
  socket,
  strerror,
} from "./libc.js";

export const NETLINK_ROUTE = 0;
export const NETLINK_NETFILTER = 12;

const SOL_NETLINK = 270;
const NETLINK_ADD_MEMBERSHIP = 1;
const NETLINK_DROP_MEMBERSHIP = 2;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const NETLINK_GET_STRICT_CHK = 12;

/**
 * Datagram size for batched requests. The kernel accepts up to the send buffer (208 KiB by default);
 * 32 KiB keeps the acknowledgements of one datagram (a few hundred skbs) well inside the request socket's
 * receive buffer, so none is dropped.
 */
const DEFAULT_DATAGRAM_BYTES = 32 * 1024;
/** Receive space for one datagram: dumps come in chunks of at most 32 KiB (netlink_recvmsg caps them). */
const RECEIVE_BYTES = 64 * 1024;
/** A dump whose data changed while it was read (NLM_F_DUMP_INTR) is read again, this many times at most. */
const DUMP_ATTEMPTS = 5;

/** Why the kernel refused one request: errno, its name, and the kernel's text (else strerror's). */
export interface NetlinkError {
  readonly errno: number;
  readonly code: string;
  readonly message: string;
}

export type RequestOutcome = { readonly ok: true } | { readonly ok: false; readonly error: NetlinkError };

const OK: RequestOutcome = Object.freeze({ ok: true });

export function netlinkError(errno: number, text?: string): NetlinkError {
  return { errno, code: errnoName(errno), message: text ?? strerror(errno) };
}

export interface NetlinkSocketOptions {
  readonly protocol: number;
  /** Multicast groups (numbers, not bit masks) to join at once. */
  readonly groups?: readonly number[];
  /** Receive buffer to ask for: SO_RCVBUFFORCE (needs CAP_NET_ADMIN), else SO_RCVBUF (capped by rmem_max). */
  readonly receiveBufferBytes?: number;
  /** Datagram size for batched requests (default 32 KiB). */
  readonly datagramBytes?: number;
  /** NETLINK_GET_STRICT_CHK: the kernel validates dump requests and honours their filters. */
  readonly strictChecking?: boolean;
}

/** What a subscription gets: each message (read in place), lost notifications, and the end of a drain. */
export interface SubscriptionListener {
  message(message: MessageView): void;
  /** The receive buffer overflowed (ENOBUFS): notifications were lost. Receiving goes on. */
  overflow(): void;
  /** Called after a drain that received anything or saw an overflow. */
  drained(): void;
}

// ---- the signal registry -----------------------------------------------------------------------------

/** What O_ASYNC raises for a subscribed socket (see the top of this file for why not SIGIO). */
const READY_SIGNAL = "SIGURG";

/** Sockets with O_ASYNC set; the one signal listener drains each of them. */
const asyncSockets = new Set<NetlinkSocket>();
let readyListenerInstalled = false;

function drainAsyncSockets(): void {
  let failure: { error: unknown } | undefined;
  for (const subscribed of asyncSockets) {
    try {
      subscribed.drain();
    } catch (error) {
      failure ??= { error };
    }
  }
  // One socket's failure does not starve the others; it still surfaces (as an uncaught exception).
  if (failure !== undefined) throw failure.error;
}

/**
 * The listener goes in before any socket gets O_ASYNC and then stays for the life of the process: a
 * signal raised just before the last socket closed may still be on its way. SIGIO (alias SIGPOLL) gets
 * the same listener as a guard: the kernel falls back to SIGIO if it cannot send the chosen signal, and
 * SIGIO's default action ends the process. Signal listeners do not keep the event loop alive.
 */
function installReadyListener(): void {
  if (readyListenerInstalled) return;
  if (!isMainThread) {
    throw new Error(
      "netlink subscriptions need the main thread: signals are not delivered to worker threads",
    );
  }
  process.on(READY_SIGNAL, drainAsyncSockets);
  process.on("SIGIO", drainAsyncSockets);
  process.on("SIGPOLL", drainAsyncSockets);
  readyListenerInstalled = true;
}

// ---- the socket --------------------------------------------------------------------------------------

export class NetlinkSocket {
  readonly protocol: number;
  /** The port id the kernel assigned at bind: requests from this socket carry it in notifications. */
  readonly portId: number;
  private fdOrClosed: number;
  private sequence = 0;
  private receiveBuffer = Buffer.alloc(RECEIVE_BYTES);
  private readonly datagramBytes: number;
  private listener: SubscriptionListener | undefined;
  private draining = false;
  private drainAgain = false;

  private constructor(fd: number, protocol: number, portId: number, datagramBytes: number) {
    this.fdOrClosed = fd;
    this.protocol = protocol;
    this.portId = portId;
    this.datagramBytes = datagramBytes;
  }

  /** Opens, configures and binds a socket; closes it again if any step fails. */
  static open(options: NetlinkSocketOptions): NetlinkSocket {
    const fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, options.protocol);
    try {
      // Error texts from the kernel, and acknowledgements without a copy of the request.
      setsockoptInt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1, "setsockopt(NETLINK_EXT_ACK)");
      setsockoptInt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1, "setsockopt(NETLINK_CAP_ACK)");
      if (options.strictChecking === true) {
        setsockoptInt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1, "setsockopt(NETLINK_GET_STRICT_CHK)");
      }
      if (options.receiveBufferBytes !== undefined) setReceiveBuffer(fd, options.receiveBufferBytes);
      const address = Buffer.alloc(12);
      address.writeUInt16LE(AF_NETLINK, 0);
      bind(fd, address);
      const portId = getsockname(fd, 12).readUInt32LE(4);
      const opened = new NetlinkSocket(
        fd,
        options.protocol,
        portId,
        options.datagramBytes ?? DEFAULT_DATAGRAM_BYTES,
      );
      for (const group of options.groups ?? []) opened.joinGroup(group);
      return opened;
    } catch (error) {
      close(fd);
      throw error;
    }
  }

  get closed(): boolean {
    return this.fdOrClosed < 0;
  }

  /** The file descriptor (for diagnostics); throws once closed. */
  get fd(): number {
    if (this.fdOrClosed < 0) throw new Error("netlink socket is closed");
    return this.fdOrClosed;
  }

  /** The receive buffer the kernel granted (it reports twice what was asked, for its bookkeeping). */
  receiveBufferBytes(): number {
    return getsockoptInt(this.fd, SOL_SOCKET, SO_RCVBUF, "getsockopt(SO_RCVBUF)");
  }

  joinGroup(group: number): void {
    setsockoptInt(this.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group, `join netlink group ${group}`);
  }

  leaveGroup(group: number): void {
    setsockoptInt(this.fd, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, group, `leave netlink group ${group}`);
  }

  /**
   * Sends the requests (NLM_F_REQUEST|NLM_F_ACK are set, sequence numbers assigned here) in datagrams of
   * whole messages and returns one outcome per request, in order. Throws SystemCallError only when the
   * exchange itself fails (send refused, the kernel fell silent).
   */
  request(messages: EncodedMessages, options: { readonly quietSuccess?: boolean } = {}): RequestOutcome[] {
    const fd = this.fd;
    this.discardStale(fd);
    const { bytes, starts } = messages;
    const outcomes = new Array<RequestOutcome>(starts.length);
    let first = 0;
    while (first < starts.length) {
      // Whole messages up to the datagram size; at least one, however large.
      const from = starts[first] ?? 0;
      let last = first + 1;
      while (
        last < starts.length &&
        (starts[last] ?? 0) - from + messageLength(bytes, starts, last) <= this.datagramBytes
      ) {
        last++;
      }
      const to = last < starts.length ? (starts[last] ?? bytes.length) : bytes.length;
      const firstSeq = (this.sequence + 1) >>> 0;
      for (let i = first; i < last; i++) {
        const at = starts[i] ?? 0;
        // quietSuccess: only the datagram's last request asks for an acknowledgement; the kernel answers
        // every failed request anyway, and it handles a datagram's requests in order inside send(), so
        // the last acknowledgement means every request without an error message succeeded.
        const ack = options.quietSuccess === true && i < last - 1 ? 0 : NLM_F_ACK;
        bytes.writeUInt16LE(bytes.readUInt16LE(at + 6) | NLM_F_REQUEST | ack, at + 6);
        bytes.writeUInt32LE(this.nextSequence(), at + 8);
      }
      send(fd, bytes.subarray(from, to), 0);
      this.collectAcknowledgements(
        fd,
        firstSeq,
        last - first,
        outcomes,
        first,
        options.quietSuccess === true,
      );
      first = last;
    }
    return outcomes;
  }

  /**
   * Runs a dump (the single request in `request`, NLM_F_DUMP is set here) and hands every reply message
   * to `each`, read in place. A dump the kernel marks as interrupted by concurrent changes is read again
   * from the start; `restart` is called before each new attempt so the caller can drop what it collected.
   */
  dump(
    request: EncodedMessages,
    call: string,
    each: (message: MessageView) => void,
    restart?: () => void,
  ): void {
    for (let attempt = 1; ; attempt++) {
      if (this.dumpOnce(request, call, each) === "complete") return;
      if (attempt === DUMP_ATTEMPTS) {
        throw new SystemCallError(
          call,
          EINTR,
          `the dump was interrupted by concurrent changes ${DUMP_ATTEMPTS} times`,
        );
      }
      restart?.();
    }
  }

  /**
   * Makes this socket a subscription: from now on each notification's signal drains it into `listener`.
   * The signal listener is installed before O_ASYNC is set.
   */
  listen(listener: SubscriptionListener): void {
    const fd = this.fd;
    if (this.listener !== undefined) throw new Error("netlink socket already has a subscription listener");
    installReadyListener();
    this.listener = listener;
    asyncSockets.add(this);
    try {
      fcntlSetOwner(fd, process.pid);
      fcntlSetSignal(fd, constants.signals[READY_SIGNAL]);
      fcntlSetFlags(fd, fcntlGetFlags(fd) | O_ASYNC);
    } catch (error) {
      asyncSockets.delete(this);
      this.listener = undefined;
      throw error;
    }
  }

  /**
   * Receives every queued notification into the listener, until EAGAIN. Safe to call at any time (the
   * signal listener does; so does a writer that wants its echoes delivered now). A call from inside the
   * listener makes the running drain go round once more instead of nesting.
   */
  drain(): void {
    const listener = this.listener;
    if (listener === undefined || this.closed) return;
    if (this.draining) {
      this.drainAgain = true;
      return;
    }
    this.draining = true;
    try {
      do {
        if (this.receiveQueued(listener)) listener.drained();
      } while (this.takeDrainRequest());
    } finally {
      this.draining = false;
    }
  }

  /** Whether a drain was asked for while one was running (and the socket is still open). */
  private takeDrainRequest(): boolean {
    const again = this.drainAgain;
    this.drainAgain = false;
    return again && this.fdOrClosed >= 0;
  }

  /** Closes the socket and takes it out of the signal registry; a second call does nothing. */
  close(): void {
    if (this.fdOrClosed < 0) return;
    const fd = this.fdOrClosed;
    this.fdOrClosed = -1;
    asyncSockets.delete(this);
    this.listener = undefined;
    close(fd);
  }

  /** Sequence numbers run modulo 2^32, so those of one datagram stay consecutive across the wrap. */
  private nextSequence(): number {
    this.sequence = (this.sequence + 1) >>> 0;
    return this.sequence;
  }

  /**
   * Reads and drops whatever is still queued from an exchange that was abandoned (an exception in the
   * middle of a dump leaves its remaining parts, which the kernel keeps producing until it is done), so
   * the next exchange starts on an empty queue and a new dump is not refused with EBUSY.
   */
  private discardStale(fd: number): void {
    while (this.receive(fd) !== -EAGAIN) {
      // dropped
    }
  }

  /** One recv: the byte count, or the negated errno. Grows the buffer when a datagram did not fit. */
  private receive(fd: number): number {
    const received = recv(fd, this.receiveBuffer, MSG_DONTWAIT | MSG_TRUNC);
    if (received > this.receiveBuffer.length) {
      this.receiveBuffer = Buffer.alloc(received);
      return -EMSGSIZE;
    }
    return received;
  }

  /** Receives until `count` acknowledgements from `firstSeq` on are in; fills outcomes from `into`. */
  private collectAcknowledgements(
    fd: number,
    firstSeq: number,
    count: number,
    outcomes: RequestOutcome[],
    into: number,
    quietSuccess = false,
  ): void {
    let missing = count;
    let lost = false;
    while (missing > 0) {
      const received = this.receive(fd);
      if (received === -EAGAIN) break;
      if (received === -ENOBUFS) {
        // Acknowledgements were dropped: whatever is still unanswered has an unknown outcome.
        lost = true;
        continue;
      }
      if (received < 0) throw new SystemCallError("recv (netlink acknowledgements)", -received);
      forEachMessage(this.receiveBuffer, received, (message) => {
        if (message.type !== NLMSG_ERROR) return;
        const ack = parseAcknowledgement(message);
        const index = ((ack.seq - firstSeq) >>> 0) + into;
        // Stale answers (to an earlier, abandoned exchange) fall outside this datagram's range.
        if (index < into || index >= into + count || outcomes[index] !== undefined) return;
        outcomes[index] = ack.errno === 0 ? OK : { ok: false, error: netlinkError(ack.errno, ack.text) };
        missing--;
        if (quietSuccess && index === into + count - 1) {
          // The last request's answer: the silent ones before it succeeded.
          for (let i = into; i < into + count; i++) {
            if (outcomes[i] === undefined) {
              outcomes[i] = OK;
              missing--;
            }
          }
        }
      });
    }
    if (missing === 0) return;
    if (!lost) {
      throw new SystemCallError(
        "recv (netlink acknowledgements)",
        EIO,
        `the kernel acknowledged ${count - missing} of ${count} requests and then went silent`,
      );
    }
    const unknown: RequestOutcome = {
      ok: false,
      error: netlinkError(
        ENOBUFS,
        "acknowledgement lost (receive buffer overflow): the request may or may not have been applied",
      ),
    };
    for (let i = into; i < into + count; i++) outcomes[i] ??= unknown;
  }

  /**
   * One dump attempt: "again" when it must be read once more, because the kernel flagged it as
   * interrupted by concurrent changes or a part did not fit the receive buffer (which has grown since).
   */
  private dumpOnce(
    request: EncodedMessages,
    call: string,
    each: (message: MessageView) => void,
  ): "complete" | "again" {
    const fd = this.fd;
    const start = request.starts[0];
    if (start === undefined || request.starts.length !== 1) {
      throw new Error(`${call}: a dump takes exactly one request`);
    }
    this.discardStale(fd);
    const seq = this.nextSequence();
    const flags = request.bytes.readUInt16LE(start + 6) | NLM_F_REQUEST | NLM_F_DUMP;
    request.bytes.writeUInt16LE(flags, start + 6);
    request.bytes.writeUInt32LE(seq, start + 8);
    send(fd, request.bytes.subarray(start), 0);
    const state = { done: false, again: false, failure: undefined as SystemCallError | undefined };
    while (!state.done) {
      const received = this.receive(fd);
      if (received === -EMSGSIZE) {
        state.again = true; // a lost part; the rest still comes, and DONE may have been in it
        continue;
      }
      if (received === -EAGAIN) {
        if (state.again) return "again";
        throw new SystemCallError(call, EIO, "the kernel stopped answering in the middle of a dump");
      }
      if (received < 0) throw new SystemCallError(call, -received);
      forEachMessage(this.receiveBuffer, received, (message) => {
        if (message.seq !== seq || state.done) return;
        if (message.flags & NLM_F_DUMP_INTR) state.again = true;
        if (message.type === NLMSG_DONE) {
          state.done = true;
          const status = parseDone(message);
          if (status.errno !== 0)
            state.failure = new SystemCallError(call, status.errno, status.text ?? strerror(status.errno));
        } else if (message.type === NLMSG_ERROR) {
          state.done = true;
          const ack = parseAcknowledgement(message);
          if (ack.errno !== 0)
            state.failure = new SystemCallError(call, ack.errno, ack.text ?? strerror(ack.errno));
        } else if (message.type === NLMSG_OVERRUN) {
          state.done = true;
          state.failure = new SystemCallError(
            call,
            ENOBUFS,
            "the kernel reported an overrun in the middle of a dump",
          );
        } else if (message.flags & NLM_F_MULTI) {
          each(message);
        }
      });
    }
    if (state.failure !== undefined) throw state.failure;
    return state.again ? "again" : "complete";
  }

  /** Drains the queue into the listener; true when anything was received or lost. */
  private receiveQueued(listener: SubscriptionListener): boolean {
    let anything = false;
    for (;;) {
      if (this.closed) return anything;
      const received = this.receive(this.fdOrClosed);
      if (received === -EAGAIN) return anything;
      anything = true;
      if (received === -ENOBUFS || received === -EMSGSIZE) {
        // Lost notifications (or one too large for the buffer, which is now larger): say so, go on.
        listener.overflow();
        continue;
      }
      if (received === -EINTR) continue;
      if (received < 0) throw new SystemCallError("recv (netlink notifications)", -received);
      forEachMessage(this.receiveBuffer, received, (message) => listener.message(message));
    }
  }
}

function messageLength(bytes: Buffer, starts: readonly number[], index: number): number {
  const at = starts[index] ?? 0;
  return bytes.readUInt32LE(at);
}

function setReceiveBuffer(fd: number, bytes: number): void {
  try {
    setsockoptInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, bytes, "setsockopt(SO_RCVBUFFORCE)");
  } catch (error) {
    // Without CAP_NET_ADMIN the kernel refuses FORCE; the plain option is capped at net.core.rmem_max.
    if (!(error instanceof SystemCallError) || error.errno !== EPERM) throw error;
    setsockoptInt(fd, SOL_SOCKET, SO_RCVBUF, bytes, "setsockopt(SO_RCVBUF)");
  }
}
