// The few libc calls a netlink socket needs, bound with koffi (prebuilt binaries in its npm tarball, so
// no compiler on the target). Every call here is synchronous on the calling thread: koffi's `.async`
// variants run on worker threads, and a process that exits while one of them is blocked in poll/recv
// hangs (one still outstanding at a natural exit segfaults), so nothing in twill blocks in the kernel —
// sockets are non-blocking and readiness comes from a signal (O_ASYNC, socket.ts).
import { constants } from "node:os";
import koffi from "koffi";

export const AF_NETLINK = 16;
export const AF_UNIX = 1;
export const SOCK_DGRAM = 2;
export const AF_INET = 2;
export const IPPROTO_RAW = 255;
/** Level of IPv4 socket options, the legacy iptables ones among them. */
export const SOL_IP = 0;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_RCVBUFFORCE = 33;
export const MSG_PEEK = 0x02;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_SETOWN = 8;
/** Which signal O_ASYNC raises instead of SIGIO. */
export const F_SETSIG = 10;
/** O_ASYNC (FASYNC): the kernel signals the F_SETOWN owner when the socket has data. */
export const O_ASYNC = 0o20000;
export const CLONE_NEWNET = 0x40000000;

export const EINTR = 4;
export const ENOENT = 2;
export const ENODEV = 19;
export const EINVAL = 22;
export const EAGAIN = 11;
export const EMSGSIZE = 90;
export const ENOBUFS = 105;
export const EPERM = 1;
export const EIO = 5;

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  // Aliases (EWOULDBLOCK = EAGAIN, EDEADLOCK = EDEADLK) keep the first, classic, name.
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** "ESRCH" for 3; "E<n>" for a number the platform does not name. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** A system call that failed: names the call, the errno and the reason. */
export class SystemCallError extends Error {
  override name = "SystemCallError";
  readonly code: string;
  constructor(
    readonly call: string,
    readonly errno: number,
    /** The kernel's own text when it sent one (netlink extended ack), else strerror's. */
    readonly reason: string = strerror(errno),
  ) {
    const code = errnoName(errno);
    super(`${call}: ${reason} (${code})`);
    this.code = code;
  }
}

// koffi types every binding as `(...args: any[]) => any`; these are the C prototypes, narrowed. A
// Buffer (or a subarray of one) passed for `void *` is passed in place, without a copy.
interface Bindings {
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, address: Buffer, length: number): number;
  getsockname(fd: number, address: Buffer, length: Buffer): number;
  send(fd: number, data: Uint8Array, length: number, flags: number): number;
  recv(fd: number, data: Uint8Array, length: number, flags: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, length: number): number;
  getsockopt(fd: number, level: number, name: number, value: Buffer, length: Buffer): number;
  close(fd: number): number;
  fcntl(fd: number, command: number, ...variadic: (string | number)[]): number;
  setns(fd: number, nstype: number): number;
  strerror(errno: number): string;
  sendto(fd: number, buf: Uint8Array, len: number, flags: number, addr: Buffer, addrlen: number): number;
  read(fd: number, buf: Uint8Array, len: number): number;
  write(fd: number, buf: Uint8Array, len: number): number;
  ioctl(fd: number, request: number, ...variadic: (string | number | Buffer)[]): number;
  poll(fds: Buffer, count: number, timeoutMs: number): number;
  eventfd(initial: number, flags: number): number;
  sendmmsg(fd: number, messages: Buffer, count: number, flags: number): number;
  recvmmsg(fd: number, messages: Buffer, count: number, flags: number, timeout: null): number;
}

let bound: Bindings | undefined;

function bindings(): Bindings {
  if (bound !== undefined) return bound;
  const lib = koffi.load("libc.so.6");
  const fn = (prototype: string): unknown => lib.func(prototype);
  bound = {
    socket: fn("int socket(int domain, int type, int protocol)"),
    bind: fn("int bind(int fd, const void *addr, uint32_t addrlen)"),
    getsockname: fn("int getsockname(int fd, void *addr, void *addrlen)"),
    send: fn("intptr_t send(int fd, const void *buf, size_t len, int flags)"),
    recv: fn("intptr_t recv(int fd, void *buf, size_t len, int flags)"),
    setsockopt: fn("int setsockopt(int fd, int level, int optname, const void *optval, uint32_t optlen)"),
    getsockopt: fn("int getsockopt(int fd, int level, int optname, void *optval, void *optlen)"),
    close: fn("int close(int fd)"),
    fcntl: fn("int fcntl(int fd, int cmd, ...)"),
    setns: fn("int setns(int fd, int nstype)"),
    strerror: fn("const char *strerror(int errnum)"),
    sendto: fn(
      "intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)",
    ),
    read: fn("intptr_t read(int fd, void *buf, size_t count)"),
    write: fn("intptr_t write(int fd, const void *buf, size_t count)"),
    ioctl: fn("int ioctl(int fd, unsigned long request, ...)"),
    poll: fn("int poll(void *fds, unsigned long nfds, int timeout)"),
    eventfd: fn("int eventfd(unsigned int initval, int flags)"),
    sendmmsg: fn("int sendmmsg(int fd, void *msgvec, unsigned int vlen, int flags)"),
    recvmmsg: fn("int recvmmsg(int fd, void *msgvec, unsigned int vlen, int flags, void *timeout)"),
  } as Bindings;
  return bound;
}

/** -1 from a call becomes a SystemCallError carrying errno; anything else is returned. */
function checked(call: string, result: number): number {
  if (result === -1) throw new SystemCallError(call, koffi.errno());
  return result;
}

export function strerror(errno: number): string {
  return bindings().strerror(errno);
}

export function socket(domain: number, type: number, protocol: number): number {
  return checked("socket", bindings().socket(domain, type, protocol));
}

export function bind(fd: number, address: Buffer): void {
  checked("bind", bindings().bind(fd, address, address.length));
}

/** The socket's own address, into a buffer of `size` bytes. */
export function getsockname(fd: number, size: number): Buffer {
  const address = Buffer.alloc(size);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(size, 0);
  checked("getsockname", bindings().getsockname(fd, address, length));
  return address;
}

/** Sends `data` as one datagram; returns the bytes sent. */
export function send(fd: number, data: Uint8Array, flags: number): number {
  return checked("send", bindings().send(fd, data, data.length, flags));
}

/**
 * Receives one datagram into `into`. Returns the byte count (with MSG_TRUNC: the datagram's real size,
 * which may exceed `into`), or the negated errno: a drain loop ends on -EAGAIN every time, and an
 * exception per drain would be the common path, not the exceptional one.
 */
export function recv(fd: number, into: Uint8Array, flags: number): number {
  const result = bindings().recv(fd, into, into.length, flags);
  return result === -1 ? -koffi.errno() : result;
}

/** Sends `data` as one datagram to `address` (a sockaddr); returns the bytes sent. */
export function sendto(fd: number, data: Uint8Array, flags: number, address: Buffer): number {
  return checked("sendto", bindings().sendto(fd, data, data.length, flags, address, address.length));
}

/** write(2) of the first `length` bytes of `data`; returns the bytes written or the negated errno. */
export function writeLength(fd: number, data: Uint8Array, length: number): number {
  const result = bindings().write(fd, data, length);
  return result === -1 ? -koffi.errno() : result;
}

/** read(2) of up to `into.length` bytes; returns the byte count or the negated errno (see recv). */
export function read(fd: number, into: Uint8Array): number {
  const result = bindings().read(fd, into, into.length);
  return result === -1 ? -koffi.errno() : result;
}

/** write(2) of all of `data`; returns the bytes written or the negated errno (see recv). */
export function write(fd: number, data: Uint8Array): number {
  const result = bindings().write(fd, data, data.length);
  return result === -1 ? -koffi.errno() : result;
}

/** ioctl(2) whose argument is a structure the kernel reads and may fill (struct ifreq). */
export function ioctlPointer(fd: number, request: number, argument: Buffer, call: string): void {
  checked(call, bindings().ioctl(fd, request, "void *", argument));
}

/** ioctl(2) whose argument is a plain integer (TUNSETPERSIST). */
export function ioctlValue(fd: number, request: number, value: number, call: string): void {
  checked(call, bindings().ioctl(fd, request, "unsigned long", value));
}

export const POLLIN = 0x001;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

/**
 * poll(2) over `fds` (struct pollfd, 8 bytes each: fd, events, revents), waiting at most `timeoutMs`.
 * Returns how many are ready, or the negated errno (EINTR when a signal arrived).
 */
export function poll(fds: Buffer, timeoutMs: number): number {
  const result = bindings().poll(fds, fds.length / 8, timeoutMs);
  return result === -1 ? -koffi.errno() : result;
}

/** Where a buffer's bytes are in memory, for structures that point at them (iovec, msghdr). */
export function addressOf(buffer: Uint8Array): bigint {
  return koffi.address(buffer);
}

/**
 * sendmmsg(2) of the first `count` struct mmsghdr in `messages`, without waiting. Returns how many
 * were sent (each message's msg_len is filled in), or the negated errno.
 */
export function sendmmsg(fd: number, messages: Buffer, count: number): number {
  const result = bindings().sendmmsg(fd, messages, count, MSG_DONTWAIT);
  return result === -1 ? -koffi.errno() : result;
}

/** recvmmsg(2) into up to `count` struct mmsghdr, without waiting; the count received or the negated errno. */
export function recvmmsg(fd: number, messages: Buffer, count: number): number {
  const result = bindings().recvmmsg(fd, messages, count, MSG_DONTWAIT, null);
  return result === -1 ? -koffi.errno() : result;
}

export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

/** An eventfd(2): a counter another thread can poll for, to be woken when it is written. */
export function eventfd(flags: number): number {
  return checked("eventfd", bindings().eventfd(0, flags));
}

export function setsockoptInt(fd: number, level: number, name: number, value: number, call: string): void {
  const option = Buffer.alloc(4);
  option.writeInt32LE(value, 0);
  checked(call, bindings().setsockopt(fd, level, name, option, 4));
}

export function getsockoptInt(fd: number, level: number, name: number, call: string): number {
  const option = Buffer.alloc(4);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(4, 0);
  checked(call, bindings().getsockopt(fd, level, name, option, length));
  return option.readInt32LE(0);
}

/**
 * getsockopt with a structure for a value: `value` goes in as the kernel's input (e.g. a table name)
 * and comes back filled; returns the length the kernel wrote.
 */
export function getsockoptBytes(
  fd: number,
  level: number,
  name: number,
  value: Buffer,
  call: string,
): number {
  const length = Buffer.alloc(4);
  length.writeUInt32LE(value.length, 0);
  checked(call, bindings().getsockopt(fd, level, name, value, length));
  return length.readUInt32LE(0);
}

export function close(fd: number): void {
  checked("close", bindings().close(fd));
}

export function fcntlGetFlags(fd: number): number {
  return checked("fcntl(F_GETFL)", bindings().fcntl(fd, F_GETFL));
}

export function fcntlSetFlags(fd: number, flags: number): void {
  checked("fcntl(F_SETFL)", bindings().fcntl(fd, F_SETFL, "int", flags));
}

/** Makes `pid` the process that is signalled when this descriptor has data (with O_ASYNC). */
export function fcntlSetOwner(fd: number, pid: number): void {
  checked("fcntl(F_SETOWN)", bindings().fcntl(fd, F_SETOWN, "int", pid));
}

/** The signal O_ASYNC raises for this descriptor (0: SIGIO). */
export function fcntlSetSignal(fd: number, signal: number): void {
  checked("fcntl(F_SETSIG)", bindings().fcntl(fd, F_SETSIG, "int", signal));
}

/** Moves the calling thread into the namespace `fd` refers to. */
export function setns(fd: number, nstype: number): void {
  checked("setns", bindings().setns(fd, nstype));
}
