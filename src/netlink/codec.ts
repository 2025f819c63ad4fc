// Netlink framing, protocol-independent: message headers (struct nlmsghdr), attributes (struct nlattr,
// nested too) and the kernel's acknowledgements (struct nlmsgerr with extended-ack TLVs). Everything is
// host byte order (little-endian on every platform twill runs on) and 4-byte aligned, except values
// that the protocol defines as network byte order (ports), which have their own big-endian accessors.

export const NLMSG_HDRLEN = 16;
export const NLA_HDRLEN = 4;

export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;

export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_ECHO = 0x08;
/** The dump's data changed while it was being read; it may be inconsistent. */
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
/** On an acknowledgement: the request was not copied back (NETLINK_CAP_ACK). */
export const NLM_F_CAPPED = 0x100;
/** On an acknowledgement: extended-ack TLVs follow. */
export const NLM_F_ACK_TLVS = 0x200;

export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;

const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;

export function align4(length: number): number {
  return (length + 3) & ~3;
}

/** Encoded requests: one buffer, message i spanning starts[i] up to starts[i + 1] (or the end). */
export interface EncodedMessages {
  readonly bytes: Buffer;
  readonly starts: readonly number[];
}

/**
 * Writes netlink messages back to back into one growing buffer. The sequence number and port id are
 * left 0: the socket that sends the messages numbers them.
 */
export class MessageWriter {
  private buffer: Buffer;
  private length = 0;
  private readonly starts: number[] = [];
  private readonly nests: number[] = [];
  private messageStart = -1;

  constructor(initialBytes = 4096) {
    this.buffer = Buffer.alloc(initialBytes);
  }

  get messageCount(): number {
    return this.starts.length;
  }

  get byteLength(): number {
    return this.length;
  }

  /** Starts a message; its fixed header follows with fixed(). */
  begin(type: number, flags: number): this {
    if (this.messageStart >= 0)
      throw new Error("netlink writer: begin() before end() of the previous message");
    this.messageStart = this.length;
    this.starts.push(this.length);
    const at = this.reserve(NLMSG_HDRLEN);
    this.buffer.writeUInt16LE(type, at + 4);
    this.buffer.writeUInt16LE(flags, at + 6);
    return this;
  }

  /** Reserves `size` zeroed bytes (a family header such as rtmsg) and returns their offset in `bytes`. */
  fixed(size: number): number {
    return this.reserve(align4(size));
  }

  /** The buffer being written, for filling in a fixed header at the offset fixed() returned. */
  get bytes(): Buffer {
    return this.buffer;
  }

  attr(type: number, data: Uint8Array): this {
    const at = this.reserve(align4(NLA_HDRLEN + data.length));
    this.buffer.writeUInt16LE(NLA_HDRLEN + data.length, at);
    this.buffer.writeUInt16LE(type, at + 2);
    this.buffer.set(data, at + NLA_HDRLEN);
    return this;
  }

  u8(type: number, value: number): this {
    const at = this.header(type, 1);
    this.buffer.writeUInt8(value, at);
    return this;
  }

  u16(type: number, value: number): this {
    const at = this.header(type, 2);
    this.buffer.writeUInt16LE(value, at);
    return this;
  }

  /** A 16-bit value in network byte order (e.g. a UDP port). */
  u16be(type: number, value: number): this {
    const at = this.header(type, 2);
    this.buffer.writeUInt16BE(value, at);
    return this;
  }

  u32(type: number, value: number): this {
    const at = this.header(type, 4);
    this.buffer.writeUInt32LE(value, at);
    return this;
  }

  /** A NUL-terminated string. */
  string(type: number, value: string): this {
    const size = Buffer.byteLength(value);
    const at = this.header(type, size + 1);
    this.buffer.write(value, at);
    this.buffer.writeUInt8(0, at + size);
    return this;
  }

  /** A flag attribute: present means on. */
  flag(type: number): this {
    this.header(type, 0);
    return this;
  }

  beginNested(type: number): this {
    this.nests.push(this.length);
    const at = this.reserve(NLA_HDRLEN);
    this.buffer.writeUInt16LE(type | NLA_F_NESTED, at + 2);
    return this;
  }

  endNested(): this {
    const start = this.nests.pop();
    if (start === undefined) throw new Error("netlink writer: endNested() without beginNested()");
    this.buffer.writeUInt16LE(this.length - start, start);
    return this;
  }

  /** Ends the message: its length goes into its header. */
  end(): this {
    if (this.nests.length > 0) throw new Error("netlink writer: end() inside a nested attribute");
    if (this.messageStart < 0) throw new Error("netlink writer: end() without begin()");
    this.buffer.writeUInt32LE(this.length - this.messageStart, this.messageStart);
    this.messageStart = -1;
    return this;
  }

  /** Drops the message begun last (e.g. when it turned out it cannot be encoded). */
  cancel(): this {
    const start = this.starts.pop();
    if (start === undefined || this.messageStart !== start)
      throw new Error("netlink writer: nothing to cancel");
    this.length = start;
    this.messageStart = -1;
    this.nests.length = 0;
    return this;
  }

  /** The messages written so far (a view of the writer's buffer, valid until it is written again). */
  finish(): EncodedMessages {
    if (this.messageStart >= 0) throw new Error("netlink writer: finish() inside a message");
    return { bytes: this.buffer.subarray(0, this.length), starts: [...this.starts] };
  }

  reset(): this {
    this.length = 0;
    this.starts.length = 0;
    this.nests.length = 0;
    this.messageStart = -1;
    return this;
  }

  private header(type: number, size: number): number {
    const at = this.reserve(align4(NLA_HDRLEN + size));
    this.buffer.writeUInt16LE(NLA_HDRLEN + size, at);
    this.buffer.writeUInt16LE(type, at + 2);
    return at + NLA_HDRLEN;
  }

  /** Appends `size` zeroed bytes and returns where they start. */
  private reserve(size: number): number {
    const at = this.length;
    if (at + size > this.buffer.length) {
      const grown = Buffer.alloc(Math.max(this.buffer.length * 2, at + size));
      this.buffer.copy(grown, 0, 0, at);
      this.buffer = grown;
    }
    this.buffer.fill(0, at, at + size);
    this.length = at + size;
    return at;
  }
}

/** One received message, read in place: valid only while the buffer it points into is not reused. */
export interface MessageView {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  /** nlmsg_pid: the port the message is from or, on a notification, the port whose request caused it. */
  readonly portId: number;
  readonly buffer: Buffer;
  /** Where the header starts. */
  readonly offset: number;
  /** Where the payload (after the 16-byte header) starts. */
  readonly payload: number;
  /** Where the message ends (offset + nlmsg_len). */
  readonly end: number;
}

export class NetlinkFormatError extends Error {
  override name = "NetlinkFormatError";
}

/** Calls `each` for every message in `buffer[0, length)`; throws NetlinkFormatError on a bad length. */
export function forEachMessage(buffer: Buffer, length: number, each: (message: MessageView) => void): void {
  let offset = 0;
  while (offset + NLMSG_HDRLEN <= length) {
    const messageLength = buffer.readUInt32LE(offset);
    if (messageLength < NLMSG_HDRLEN || offset + messageLength > length) {
      throw new NetlinkFormatError(
        `netlink message at byte ${offset} claims ${messageLength} bytes; ${length - offset} are left`,
      );
    }
    each({
      type: buffer.readUInt16LE(offset + 4),
      flags: buffer.readUInt16LE(offset + 6),
      seq: buffer.readUInt32LE(offset + 8),
      portId: buffer.readUInt32LE(offset + 12),
      buffer,
      offset,
      payload: offset + NLMSG_HDRLEN,
      end: offset + messageLength,
    });
    offset += align4(messageLength);
  }
}

/**
 * The attributes in `buffer[start, end)`, by type (the last one wins when a type repeats), read in
 * place. Accessors return undefined for an absent attribute or one too short for the value.
 */
export class Attributes {
  // [offset of value, length of value] per type; most families have fewer than 64 types.
  private readonly spans = new Map<number, number>();

  constructor(
    readonly buffer: Buffer,
    start: number,
    end: number,
  ) {
    let at = start;
    while (at + NLA_HDRLEN <= end) {
      const length = buffer.readUInt16LE(at);
      if (length < NLA_HDRLEN || at + length > end) {
        throw new NetlinkFormatError(
          `netlink attribute at byte ${at} claims ${length} bytes; ${end - at} are left`,
        );
      }
      const type = buffer.readUInt16LE(at + 2) & NLA_TYPE_MASK;
      // Offset and length packed in one number: offsets stay far below 2^32.
      this.spans.set(type, (at + NLA_HDRLEN) * 0x10000 + (length - NLA_HDRLEN));
      at += align4(length);
    }
  }

  has(type: number): boolean {
    return this.spans.has(type);
  }

  /** The value's bytes (a view, not a copy). */
  bytes(type: number): Buffer | undefined {
    const span = this.spans.get(type);
    if (span === undefined) return undefined;
    const offset = Math.floor(span / 0x10000);
    return this.buffer.subarray(offset, offset + (span % 0x10000));
  }

  u8(type: number): number | undefined {
    const at = this.at(type, 1);
    return at === undefined ? undefined : this.buffer.readUInt8(at);
  }

  u16(type: number): number | undefined {
    const at = this.at(type, 2);
    return at === undefined ? undefined : this.buffer.readUInt16LE(at);
  }

  u16be(type: number): number | undefined {
    const at = this.at(type, 2);
    return at === undefined ? undefined : this.buffer.readUInt16BE(at);
  }

  u32(type: number): number | undefined {
    const at = this.at(type, 4);
    return at === undefined ? undefined : this.buffer.readUInt32LE(at);
  }

  i32(type: number): number | undefined {
    const at = this.at(type, 4);
    return at === undefined ? undefined : this.buffer.readInt32LE(at);
  }

  /** A string attribute, up to its NUL. */
  string(type: number): string | undefined {
    const value = this.bytes(type);
    if (value === undefined) return undefined;
    const nul = value.indexOf(0);
    return value.toString("utf8", 0, nul < 0 ? value.length : nul);
  }

  nested(type: number): Attributes | undefined {
    const span = this.spans.get(type);
    if (span === undefined) return undefined;
    const offset = Math.floor(span / 0x10000);
    return new Attributes(this.buffer, offset, offset + (span % 0x10000));
  }

  private at(type: number, size: number): number | undefined {
    const span = this.spans.get(type);
    if (span === undefined || span % 0x10000 < size) return undefined;
    return Math.floor(span / 0x10000);
  }
}

/** What an NLMSG_ERROR (or a dump's NLMSG_DONE) says. */
export interface Acknowledgement {
  /** 0 for success, else a positive errno. */
  readonly errno: number;
  /** Sequence number of the request it answers. */
  readonly seq: number;
  /** The kernel's extended-ack text (NLMSGERR_ATTR_MSG), when it sent one. */
  readonly text: string | undefined;
  /** Offset in the request of the attribute it objects to (NLMSGERR_ATTR_OFFS), when it said. */
  readonly attributeOffset: number | undefined;
}

/** Parses an NLMSG_ERROR message: struct nlmsgerr, then (with NLM_F_ACK_TLVS) extended-ack TLVs. */
export function parseAcknowledgement(message: MessageView): Acknowledgement {
  const { buffer, payload, end } = message;
  if (end - payload < 4 + NLMSG_HDRLEN) {
    throw new NetlinkFormatError(`netlink error message of ${end - message.offset} bytes is too short`);
  }
  const error = buffer.readInt32LE(payload);
  const request = payload + 4;
  const seq = buffer.readUInt32LE(request + 8);
  // Without NLM_F_CAPPED the whole request is copied back before the TLVs.
  const requestLength = buffer.readUInt32LE(request);
  const tlvs =
    message.flags & NLM_F_CAPPED
      ? request + NLMSG_HDRLEN
      : request + align4(Math.max(requestLength, NLMSG_HDRLEN));
  return { errno: errnoOf(error), seq, ...extendedAck(message, tlvs) };
}

/** Parses a dump's NLMSG_DONE: an int (0, or a negative errno when the dump failed), then TLVs. */
export function parseDone(message: MessageView): Acknowledgement {
  const { buffer, payload, end } = message;
  const error = end - payload >= 4 ? buffer.readInt32LE(payload) : 0;
  return { errno: errnoOf(error), seq: message.seq, ...extendedAck(message, payload + 4) };
}

/** The kernel's negative error as a positive errno (and 0 as 0, not -0). */
function errnoOf(error: number): number {
  return error === 0 ? 0 : -error;
}

function extendedAck(
  message: MessageView,
  tlvs: number,
): { text: string | undefined; attributeOffset: number | undefined } {
  if (!(message.flags & NLM_F_ACK_TLVS) || tlvs >= message.end) {
    return { text: undefined, attributeOffset: undefined };
  }
  const attributes = new Attributes(message.buffer, tlvs, message.end);
  return { text: attributes.string(NLMSGERR_ATTR_MSG), attributeOffset: attributes.u32(NLMSGERR_ATTR_OFFS) };
}
