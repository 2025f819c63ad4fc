// How the masquerade loop learns, without spawning anything, that our rules may have been removed:
//
// - nf_tables backend: a NETLINK_NETFILTER socket in NFNLGRP_NFTABLES. The kernel multicasts every
//   committed table, chain and rule change (netlink/nftables.ts lists what each iptables command emits);
//   only those touching the chains in WATCHED_CHAINS (ours, and POSTROUTING/FORWARD, which hold our
//   jumps) of tables nat/filter in family ip or ip6 call onChange. kube-proxy rewriting its KUBE-* chains,
//   or its own nftables table, costs a few µs of decoding per message and no check.
// - legacy backend: the legacy tables send nothing, but getsockopt(IPT_SO_GET_INFO) on a raw socket
//   returns a table's entry count and blob size in a few µs; they are read every 500 ms for nat and
//   filter, IPv4's (ip_tables) and IPv6's (ip6_tables, IP6T_SO_GET_INFO on a raw IPv6 socket), and any
//   change calls onChange. That cannot tell our chains from kube-proxy's, so each kube-proxy rewrite of
//   a legacy table costs one check. A rule replaced in place by one of exactly the same size goes
//   unnoticed until the safety check.
// - anything else: no watch; the loop checks every --iptables-resync seconds, as flannel does.
//
// A missed notice only delays a repair until the next safety check; a spurious one costs one check
// (iptables-save of two tables). So whatever cannot be read with certainty (an overflowed receive
// buffer, a malformed message, a failed read) counts as a change.
import { closeSync, openSync, readSync } from "node:fs";
import type { Family } from "../ip/address.js";
import { NLM_F_CREATE, NLM_F_EXCL, NetlinkFormatError, type MessageView } from "../netlink/codec.js";
import {
  AF_INET,
  IPPROTO_RAW,
  SOCK_CLOEXEC,
  SOCK_RAW,
  SOL_IP,
  close as closeDescriptor,
  getsockoptBytes,
  socket,
  SystemCallError,
} from "../netlink/libc.js";
import { insideNetns } from "../netlink/netns.js";
import {
  decodeNftablesNotice,
  encodeGetGeneration,
  nftablesHeader,
  nftablesObject,
  NFNLGRP_NFTABLES,
  NFPROTO_IPV4,
  NFPROTO_IPV6,
  NFT_MSG_NEWCHAIN,
  NFT_MSG_NEWGEN,
  type NftablesNotice,
} from "../netlink/nftables.js";
import { NETLINK_NETFILTER, NetlinkSocket, type SubscriptionListener } from "../netlink/socket.js";
import { systemClock, type Clock, type Timer } from "../util/clock.js";
import type { IptablesInfo } from "./iptables.js";
import { WATCHED_CHAINS, type RuleWatch, type RuleWatchFactory } from "./loop.js";

/** iptables-nft keeps IPv4 rules in family ip, ip6tables-nft in ip6 (ready for IPv6 masquerade). */
const WATCHED_FAMILIES: ReadonlySet<number> = new Set([NFPROTO_IPV4, NFPROTO_IPV6]);

/**
 * Whether a notification may mean our rules changed: a table of ours (nat, filter in ip/ip6) created,
 * deleted or updated; a chain of WATCHED_CHAINS created, deleted or renamed to; a rule added to or
 * removed from one. A chain update without NLM_F_CREATE/NLM_F_EXCL counts whatever its name: a rename
 * names only the new name, so it may be our chain renamed away (also a policy change; both are rare).
 */
export function concernsOurRules(
  notice: NftablesNotice,
  watched: ReadonlyMap<string, readonly string[]> = WATCHED_CHAINS,
): boolean {
  if (!WATCHED_FAMILIES.has(notice.family) || notice.table === undefined) return false;
  const chains = watched.get(notice.table);
  if (chains === undefined) return false;
  switch (notice.object) {
    case "table":
      return true;
    case "chain":
      if (notice.type === NFT_MSG_NEWCHAIN && (notice.flags & (NLM_F_CREATE | NLM_F_EXCL)) === 0) return true;
      return notice.chain !== undefined && chains.includes(notice.chain);
    case "rule":
      return notice.chain !== undefined && chains.includes(notice.chain);
    default:
      // Sets, objects, flowtables: iptables-nft's tables hold none of ours.
      return false;
  }
}

/**
 * The subscription's listener: decides per message, reports once per drain (a restore's hundreds of
 * messages arrive in one or a few drains). Counts what it saw, for benchmarks and tests.
 */
export class NftablesChangeListener implements SubscriptionListener {
  /** nf_tables messages received. */
  messages = 0;
  /** Transactions seen (NEWGEN ends each): all of a command's messages are in once its count is. */
  transactions = 0;
  /** Times onChange was called. */
  reported = 0;
  private changed = false;

  constructor(
    private readonly onChange: () => void,
    private readonly watched: ReadonlyMap<string, readonly string[]> = WATCHED_CHAINS,
  ) {}

  message(message: MessageView): void {
    this.messages++;
    const header = nftablesHeader(message);
    if (header?.type === NFT_MSG_NEWGEN) this.transactions++;
    if (this.changed) return; // already reporting this drain: skip the decoding
    // The cheap first look: most of kube-proxy's traffic is rules, so the family and kind filter little,
    // but generations (one per transaction) and other families need no attribute parsing at all.
    if (header === undefined || !WATCHED_FAMILIES.has(header.family)) return;
    const object = nftablesObject(header.type);
    if (object !== "table" && object !== "chain" && object !== "rule") return;
    try {
      const notice = decodeNftablesNotice(message);
      if (notice !== undefined && concernsOurRules(notice, this.watched)) this.changed = true;
    } catch (error) {
      // Unreadable: it may have been about our chains.
      if (!(error instanceof NetlinkFormatError)) throw error;
      this.changed = true;
    }
  }

  overflow(): void {
    // Notifications were lost (the receive buffer overflowed): ours may be among them.
    this.changed = true;
  }

  drained(): void {
    if (!this.changed) return;
    this.changed = false;
    this.reported++;
    this.onChange();
  }
}

/**
 * Room for one burst of notifications between two drains. A rule notification is a few hundred bytes but
 * costs its skb's truesize in the queue; kube-proxy restoring thousands of rules at once can still
 * overflow it, which only costs one check. Asked with SO_RCVBUFFORCE (granted doubled).
 */
const NFTABLES_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;

export interface WatchOptions {
  /** Open the sockets inside this named network namespace (/run/netns/NAME): tests and benchmarks. */
  readonly netns?: string;
}

export class NftablesRuleWatch implements RuleWatch {
  readonly kind = "nftables notifications";

  constructor(
    private readonly socket: NetlinkSocket,
    readonly listener: NftablesChangeListener,
  ) {}

  close(): void {
    this.socket.close();
  }
}

/**
 * Subscribes to nf_tables changes. Throws (naming the step) when nf_tables or the subscription is not
 * available, e.g. a kernel without the nf_tables module.
 */
export function openNftablesWatch(onChange: () => void, options: WatchOptions = {}): NftablesRuleWatch {
  const open = (): NetlinkSocket => {
    const opened = NetlinkSocket.open({
      protocol: NETLINK_NETFILTER,
      receiveBufferBytes: NFTABLES_RECEIVE_BUFFER_BYTES,
    });
    try {
      // Joining the group succeeds even without nf_tables; a generation request does not.
      const [outcome] = opened.request(encodeGetGeneration());
      if (outcome !== undefined && !outcome.ok) {
        throw new SystemCallError(
          "nfnetlink NFT_MSG_GETGEN (is nf_tables in the kernel?)",
          outcome.error.errno,
          outcome.error.message,
        );
      }
      // Joined after the request, so no notification is swallowed while its answer is collected.
      opened.joinGroup(NFNLGRP_NFTABLES);
      return opened;
    } catch (error) {
      opened.close();
      throw error;
    }
  };
  const subscription = options.netns === undefined ? open() : insideNetns(options.netns, open);
  const listener = new NftablesChangeListener(onChange);
  try {
    subscription.listen(listener);
  } catch (error) {
    subscription.close();
    throw error;
  }
  return new NftablesRuleWatch(subscription, listener);
}

// ---- legacy tables --------------------------------------------------------------------------------

/** IPT_SO_GET_INFO = IPT_BASE_CTL (64): struct ipt_getinfo for the table named in it. */
const IPT_SO_GET_INFO = 64;
/** IP6T_SO_GET_INFO = IP6T_BASE_CTL (64), at level SOL_IPV6: struct ip6t_getinfo, laid out as ipt_getinfo. */
const IP6T_SO_GET_INFO = 64;
const AF_INET6 = 10;
const SOL_IPV6 = 41;
/** struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size (u32s). */
const IPT_GETINFO_BYTES = 84;
const XT_TABLE_MAXNAMELEN = 32;
const NUM_ENTRIES_OFFSET = 76;
const SIZE_OFFSET = 80;

/**
 * Per family: the raw socket, the getsockopt, and the namespace's table list (see netns.ts: /proc/net
 * follows the calling thread's namespace).
 */
const LEGACY_FAMILIES = {
  4: {
    domain: AF_INET,
    level: SOL_IP,
    option: IPT_SO_GET_INFO,
    optionName: "IPT_SO_GET_INFO",
    names: "/proc/thread-self/net/ip_tables_names",
  },
  6: {
    domain: AF_INET6,
    level: SOL_IPV6,
    option: IP6T_SO_GET_INFO,
    optionName: "IP6T_SO_GET_INFO",
    names: "/proc/thread-self/net/ip6_tables_names",
  },
} as const;

export interface LegacyTableInfo {
  /** Rules, counting each chain's policy/return entry and each user chain's head. */
  readonly entries: number;
  /** Bytes of the table's rule blob. */
  readonly size: number;
}

export interface LegacyReaderOptions extends WatchOptions {
  /** 4 (default): iptables-legacy's tables; 6: ip6tables-legacy's. */
  readonly family?: Family;
}

/**
 * Reads legacy iptables (or ip6tables) tables' entry counts through a raw IPv4 (IPv6) socket
 * (CAP_NET_RAW and CAP_NET_ADMIN), in the namespace it was opened in. A table that does not exist is
 * reported absent, never created: asking the kernel for a missing legacy table instantiates it (verified
 * on kernel 6.18: a fresh namespace lists `filter` in /proc/net/ip_tables_names after one
 * IPT_SO_GET_INFO for it), so the namespace's table list (ip_tables_names, ip6_tables_names) is read
 * first, from a descriptor opened in that namespace.
 */
export class LegacyTableReader {
  private readonly request = Buffer.alloc(IPT_GETINFO_BYTES);
  private readonly names = Buffer.alloc(1024);

  private constructor(
    private socketFd: number,
    private namesFd: number,
    readonly family: Family,
  ) {}

  static open(options: LegacyReaderOptions = {}): LegacyTableReader {
    const family = options.family ?? 4;
    const open = (): LegacyTableReader => {
      const fd = socket(LEGACY_FAMILIES[family].domain, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
      try {
        return new LegacyTableReader(fd, openSync(LEGACY_FAMILIES[family].names, "r"), family);
      } catch (error) {
        closeDescriptor(fd);
        throw error;
      }
    };
    return options.netns === undefined ? open() : insideNetns(options.netns, open);
  }

  /** The legacy tables that exist in this namespace. */
  tables(): string[] {
    if (this.namesFd < 0) throw new Error("legacy table reader is closed");
    // pread from 0: a /proc seq file renders afresh on every read from its start.
    const length = readSync(this.namesFd, this.names, 0, this.names.length, 0);
    return this.names
      .toString("latin1", 0, length)
      .split("\n")
      .filter((name) => name !== "");
  }

  /** The table's counters; undefined when it does not exist (see the class comment). */
  info(table: string, existing: readonly string[] = this.tables()): LegacyTableInfo | undefined {
    if (!existing.includes(table)) return undefined;
    if (Buffer.byteLength(table) >= XT_TABLE_MAXNAMELEN)
      throw new RangeError(`table name ${table} is too long`);
    if (this.socketFd < 0) throw new Error("legacy table reader is closed");
    this.request.fill(0);
    this.request.write(table, 0, "latin1");
    const { level, option, optionName } = LEGACY_FAMILIES[this.family];
    getsockoptBytes(this.socketFd, level, option, this.request, `getsockopt(${optionName}, ${table})`);
    return {
      entries: this.request.readUInt32LE(NUM_ENTRIES_OFFSET),
      size: this.request.readUInt32LE(SIZE_OFFSET),
    };
  }

  /** One string for the tables' state: equal strings, nothing changed that the counters can show. */
  fingerprint(tables: readonly string[]): string {
    const existing = this.tables();
    return tables
      .map((table) => {
        const info = this.info(table, existing);
        return info === undefined ? `${table}:absent` : `${table}:${info.entries}/${info.size}`;
      })
      .join(" ");
  }

  close(): void {
    if (this.socketFd >= 0) closeDescriptor(this.socketFd);
    if (this.namesFd >= 0) closeSync(this.namesFd);
    this.socketFd = -1;
    this.namesFd = -1;
  }
}

/** How often the legacy counters are read: a repair within about a second, a few µs each time. */
export const LEGACY_POLL_MS = 500;
export const LEGACY_TABLES: readonly string[] = ["nat", "filter"];

/**
 * Calls onChange when `read` returns something other than last time, every `intervalMs`. A failed read
 * counts as a state of its own ("error: …"), so a lasting failure reports once, not every poll.
 */
export class PollingRuleWatch implements RuleWatch {
  /** Reads done. */
  polls = 0;
  /** Times onChange was called. */
  reported = 0;
  private last: string;
  private timer: Timer | undefined;
  private closed = false;

  constructor(
    readonly kind: string,
    private readonly read: () => string,
    private readonly onChange: () => void,
    private readonly intervalMs: number,
    private readonly clock: Clock = systemClock,
    private readonly release: () => void = () => undefined,
  ) {
    this.last = this.readOrError();
    this.schedule();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    this.release();
  }

  private schedule(): void {
    if (this.closed) return; // onChange may have closed it
    this.timer = this.clock.setTimer(this.intervalMs, () => this.poll());
  }

  private poll(): void {
    if (this.closed) return;
    const now = this.readOrError();
    if (now !== this.last) {
      this.last = now;
      this.reported++;
      this.onChange();
    }
    this.schedule();
  }

  private readOrError(): string {
    this.polls++;
    try {
      return this.read();
    } catch (error) {
      return `error: ${error instanceof Error ? error.message : String(error)}`;
    }
  }
}

export interface LegacyWatchOptions extends WatchOptions {
  readonly intervalMs?: number;
  readonly clock?: Clock;
}

/**
 * Polls the legacy nat and filter tables' counters, IPv4's and IPv6's; throws when the IPv4 ones cannot be
 * read at all. The IPv6 ones are left out only where they cannot be read because the kernel has no IPv6
 * (no raw IPv6 socket, no ip6_tables_names), which leaves no ip6tables rules to watch either.
 */
export function openLegacyCounterWatch(
  onChange: () => void,
  options: LegacyWatchOptions = {},
): PollingRuleWatch {
  const readers: LegacyTableReader[] = [];
  const closeAll = (): void => {
    for (const reader of readers) reader.close();
  };
  try {
    readers.push(LegacyTableReader.open({ ...options, family: 4 }));
    const ipv6 = openIPv6Reader(options);
    if (ipv6 !== undefined) readers.push(ipv6);
    const read = (): string =>
      readers
        .map((reader) => {
          const text = reader.fingerprint(LEGACY_TABLES);
          return reader.family === 6 ? `ip6 ${text}` : text;
        })
        .join(" | ");
    read(); // fails now (e.g. EPERM) rather than on every poll
    return new PollingRuleWatch(
      "legacy table counters",
      read,
      onChange,
      options.intervalMs ?? LEGACY_POLL_MS,
      options.clock,
      closeAll,
    );
  } catch (error) {
    closeAll();
    throw error;
  }
}

/** The IPv6 reader; undefined only when the kernel has no IPv6 (EAFNOSUPPORT, no ip6_tables_names). */
function openIPv6Reader(options: WatchOptions): LegacyTableReader | undefined {
  try {
    return LegacyTableReader.open({ ...options, family: 6 });
  } catch (error) {
    // SystemCallError (socket) and Node's fs errors (the table list) both carry the errno's name.
    const code = error instanceof Error && "code" in error ? error.code : undefined;
    if (code === "EAFNOSUPPORT" || code === "ENOENT") return undefined;
    throw error;
  }
}

// ---- the factory ----------------------------------------------------------------------------------

/**
 * The notice source for the backend in use: nftables notifications, legacy counters, or none (undefined:
 * the loop falls back to its timer). Legacy tables are read only for the legacy backend: reading one
 * loads its kernel module, which an nft-only host must not get.
 */
export function openRuleWatch(
  info: IptablesInfo,
  onChange: () => void,
  options: LegacyWatchOptions = {},
): RuleWatch | undefined {
  switch (info.backend) {
    case "nf_tables":
      return openNftablesWatch(onChange, options);
    case "legacy":
      return openLegacyCounterWatch(onChange, options);
    default:
      return undefined;
  }
}

/**
 * The agent's factory. TWILL_TEST_RULE_WATCH=off turns notices off (the timer alone, every
 * --iptables-resync seconds): the benchmark's "before" figure, not a setting for nodes.
 */
export function agentRuleWatch(env: Readonly<Record<string, string | undefined>>): RuleWatchFactory {
  if (env.TWILL_TEST_RULE_WATCH === "off") return () => undefined;
  return (info, onChange) => openRuleWatch(info, onChange);
}
