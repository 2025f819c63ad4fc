// The rule watch's pure parts: the nf_tables decoder and the "does this concern our rules" filter on
// hand-built nfnetlink messages (shaped like the ones kernel 6.18 sends, see src/netlink/nftables.ts),
// the subscription listener that turns a drain into at most one notice, and the legacy poller on a fake
// clock.
import { describe, expect, it } from "vitest";
import {
  forEachMessage,
  MessageWriter,
  NetlinkFormatError,
  NLM_F_CREATE,
  NLM_F_EXCL,
  type MessageView,
} from "../../src/netlink/codec.js";
import {
  beginNftablesMessage,
  decodeNftablesNotice,
  encodeGetGeneration,
  NFPROTO_INET,
  NFPROTO_IPV4,
  NFPROTO_IPV6,
  NFPROTO_UNSPEC,
  NFT_MSG_DELCHAIN,
  NFT_MSG_DELRULE,
  NFT_MSG_DELTABLE,
  NFT_MSG_GETGEN,
  NFT_MSG_NEWCHAIN,
  NFT_MSG_NEWGEN,
  NFT_MSG_NEWRULE,
  NFT_MSG_NEWSET,
  NFT_MSG_NEWTABLE,
  type NftablesNotice,
} from "../../src/netlink/nftables.js";
import { concernsOurRules, NftablesChangeListener, PollingRuleWatch } from "../../src/masq/watch.js";
import { FakeClock } from "../helpers/fake-clock.js";

// Attribute numbers as the kernel uses them (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE/NAME, NFTA_RULE_TABLE/CHAIN).
const TABLE_NAME = 1;
const CHAIN_TABLE = 1;
const CHAIN_NAME = 3;
const RULE_TABLE = 1;
const RULE_CHAIN = 2;
const GEN_ID = 1;
const GEN_PROC_PID = 2;
const GEN_PROC_NAME = 3;

interface Spec {
  readonly type: number;
  readonly family: number;
  readonly flags?: number;
  readonly table?: string;
  readonly chain?: string;
}

/** Writes one nf_tables notification the way the kernel lays it out. */
function writeNotification(writer: MessageWriter, spec: Spec): void {
  beginNftablesMessage(writer, spec.type, spec.family, spec.flags ?? 0);
  const isRule = spec.type === NFT_MSG_NEWRULE || spec.type === NFT_MSG_DELRULE;
  const isChain = spec.type === NFT_MSG_NEWCHAIN || spec.type === NFT_MSG_DELCHAIN;
  if (spec.table !== undefined)
    writer.string(isRule ? RULE_TABLE : isChain ? CHAIN_TABLE : TABLE_NAME, spec.table);
  if (spec.chain !== undefined) {
    writer.string(isRule ? RULE_CHAIN : CHAIN_NAME, spec.chain);
    // A handle (be64) and, for rules, an expression list: things the decoder must step over.
    writer.attr(isRule ? 3 : 2, Buffer.from([0, 0, 0, 0, 0, 0, 0, 7]));
  }
  if (isRule) writer.beginNested(4).string(1, "payload").endNested();
  writer.end();
}

function beBytes(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value, 0);
  return bytes;
}

function writeGeneration(writer: MessageWriter, id: number, pid: number, process: string): void {
  beginNftablesMessage(writer, NFT_MSG_NEWGEN, NFPROTO_UNSPEC, 0)
    .attr(GEN_ID, beBytes(id))
    .attr(GEN_PROC_PID, beBytes(pid))
    .string(GEN_PROC_NAME, process)
    .end();
}

/** The messages in `writer`, as the socket hands them to a listener. */
function views(writer: MessageWriter): MessageView[] {
  const { bytes } = writer.finish();
  const out: MessageView[] = [];
  forEachMessage(bytes, bytes.length, (message) => out.push(message));
  return out;
}

function one(spec: Spec): MessageView {
  const writer = new MessageWriter();
  writeNotification(writer, spec);
  const [message] = views(writer);
  if (message === undefined) throw new Error("no message written");
  return message;
}

function decoded(spec: Spec): NftablesNotice {
  const notice = decodeNftablesNotice(one(spec));
  if (notice === undefined) throw new Error("not decoded as nf_tables");
  return notice;
}

describe("decodeNftablesNotice", () => {
  it("reads a rule's family, table and chain", () => {
    const notice = decoded({
      type: NFT_MSG_DELRULE,
      family: NFPROTO_IPV4,
      table: "nat",
      chain: "FLANNEL-POSTRTG",
    });
    expect(notice).toMatchObject({
      type: NFT_MSG_DELRULE,
      object: "rule",
      family: NFPROTO_IPV4,
      table: "nat",
      chain: "FLANNEL-POSTRTG",
    });
  });

  it("reads a chain's own name and the flags the kernel echoes", () => {
    const notice = decoded({
      type: NFT_MSG_NEWCHAIN,
      family: NFPROTO_IPV6,
      flags: NLM_F_CREATE,
      table: "filter",
      chain: "FORWARD",
    });
    expect(notice).toMatchObject({
      object: "chain",
      family: NFPROTO_IPV6,
      table: "filter",
      chain: "FORWARD",
    });
    expect(notice.flags & NLM_F_CREATE).toBe(NLM_F_CREATE);
  });

  it("reads a table", () => {
    expect(decoded({ type: NFT_MSG_DELTABLE, family: NFPROTO_IPV4, table: "nat" })).toMatchObject({
      object: "table",
      table: "nat",
      chain: undefined,
    });
  });

  it("reads the generation and who committed it", () => {
    const writer = new MessageWriter();
    writeGeneration(writer, 70_000, 4242, "iptables-restor");
    const [message] = views(writer);
    if (message === undefined) throw new Error("no message");
    expect(decodeNftablesNotice(message)).toMatchObject({
      object: "generation",
      generation: { id: 70_000, pid: 4242, process: "iptables-restor" },
    });
  });

  it("names the table of other objects, without a chain", () => {
    expect(decoded({ type: NFT_MSG_NEWSET, family: NFPROTO_IPV4, table: "nat" })).toMatchObject({
      object: "set",
      table: "nat",
      chain: undefined,
    });
  });

  it("is undefined for another nfnetlink subsystem and for a message too short for nfgenmsg", () => {
    const writer = new MessageWriter();
    writer.begin((1 << 8) | 0, 0); // ctnetlink IPCTNL_MSG_CT_NEW
    writer.fixed(4);
    writer.end();
    writer.begin((10 << 8) | NFT_MSG_NEWRULE, 0).end(); // no nfgenmsg
    const [conntrack, short] = views(writer);
    if (conntrack === undefined || short === undefined) throw new Error("messages missing");
    expect(decodeNftablesNotice(conntrack)).toBeUndefined();
    expect(decodeNftablesNotice(short)).toBeUndefined();
  });

  it("throws NetlinkFormatError on an attribute that overruns its message", () => {
    const message = one({
      type: NFT_MSG_DELRULE,
      family: NFPROTO_IPV4,
      table: "nat",
      chain: "FLANNEL-POSTRTG",
    });
    message.buffer.writeUInt16LE(400, message.payload + 4); // the first attribute's length
    expect(() => decodeNftablesNotice(message)).toThrow(NetlinkFormatError);
  });

  it("encodes the generation request: subsystem 10, NFT_MSG_GETGEN, an empty nfgenmsg", () => {
    const { bytes, starts } = encodeGetGeneration();
    expect(starts).toEqual([0]);
    expect(bytes.readUInt32LE(0)).toBe(20);
    expect(bytes.readUInt16LE(4)).toBe((10 << 8) | NFT_MSG_GETGEN);
    expect([...bytes.subarray(16, 20)]).toEqual([0, 0, 0, 0]);
  });
});

describe("concernsOurRules", () => {
  const concerns = (spec: Spec): boolean => concernsOurRules(decoded(spec));
  const ip = NFPROTO_IPV4;

  it.each([
    [
      "a rule of FLANNEL-POSTRTG deleted",
      { type: NFT_MSG_DELRULE, family: ip, table: "nat", chain: "FLANNEL-POSTRTG" },
    ],
    [
      "a rule added to FLANNEL-POSTRTG",
      { type: NFT_MSG_NEWRULE, family: ip, table: "nat", chain: "FLANNEL-POSTRTG" },
    ],
    [
      "our jump in POSTROUTING deleted",
      { type: NFT_MSG_DELRULE, family: ip, table: "nat", chain: "POSTROUTING" },
    ],
    [
      "a rule of FLANNEL-FWD deleted",
      { type: NFT_MSG_DELRULE, family: ip, table: "filter", chain: "FLANNEL-FWD" },
    ],
    ["a rule of FORWARD deleted", { type: NFT_MSG_DELRULE, family: ip, table: "filter", chain: "FORWARD" }],
    [
      "FLANNEL-POSTRTG deleted (-X)",
      { type: NFT_MSG_DELCHAIN, family: ip, table: "nat", chain: "FLANNEL-POSTRTG" },
    ],
    ["the nat table deleted (nft flush ruleset)", { type: NFT_MSG_DELTABLE, family: ip, table: "nat" }],
    ["the filter table created", { type: NFT_MSG_NEWTABLE, family: ip, table: "filter" }],
    [
      "a chain renamed (flags 0 names only the new name)",
      { type: NFT_MSG_NEWCHAIN, family: ip, table: "nat", chain: "SOMETHING-ELSE" },
    ],
    [
      "the same in ip6 (ip6tables-nft)",
      { type: NFT_MSG_DELRULE, family: NFPROTO_IPV6, table: "nat", chain: "FLANNEL-POSTRTG" },
    ],
  ] as const)("%s: concerns us", (_name, spec) => {
    expect(concerns(spec)).toBe(true);
  });

  it.each([
    [
      "kube-proxy rewriting KUBE-SERVICES",
      { type: NFT_MSG_DELRULE, family: ip, table: "nat", chain: "KUBE-SERVICES" },
    ],
    [
      "kube-proxy adding a rule",
      { type: NFT_MSG_NEWRULE, family: ip, table: "nat", chain: "KUBE-SVC-ABCDEF" },
    ],
    [
      "kube-proxy creating a chain (NLM_F_EXCL)",
      { type: NFT_MSG_NEWCHAIN, family: ip, flags: NLM_F_EXCL, table: "nat", chain: "KUBE-SEP-XYZ" },
    ],
    [
      "a built-in chain that holds nothing of ours created (NLM_F_CREATE)",
      { type: NFT_MSG_NEWCHAIN, family: ip, flags: NLM_F_CREATE, table: "nat", chain: "PREROUTING" },
    ],
    ["a KUBE chain deleted", { type: NFT_MSG_DELCHAIN, family: ip, table: "filter", chain: "KUBE-FORWARD" }],
    [
      "our chain's name in another table",
      { type: NFT_MSG_DELRULE, family: ip, table: "mangle", chain: "FLANNEL-POSTRTG" },
    ],
    [
      "FLANNEL-FWD in nat (flannel's clean-up slip)",
      { type: NFT_MSG_DELRULE, family: ip, table: "nat", chain: "FLANNEL-FWD" },
    ],
    ["the mangle table deleted", { type: NFT_MSG_DELTABLE, family: ip, table: "mangle" }],
    [
      "kube-proxy's nftables table (family inet)",
      { type: NFT_MSG_DELTABLE, family: NFPROTO_INET, table: "kube-proxy" },
    ],
    [
      "an inet table named nat",
      { type: NFT_MSG_DELRULE, family: NFPROTO_INET, table: "nat", chain: "POSTROUTING" },
    ],
    ["a set in nat", { type: NFT_MSG_NEWSET, family: ip, table: "nat" }],
  ] as const)("%s: does not concern us", (_name, spec) => {
    expect(concerns(spec)).toBe(false);
  });
});

describe("NftablesChangeListener", () => {
  function drain(listener: NftablesChangeListener, writer: MessageWriter): void {
    for (const message of views(writer)) listener.message(message);
    listener.drained();
  }

  function kubeProxyRestore(writer: MessageWriter, rules: number): void {
    for (let i = 0; i < rules; i++) {
      const chain = `KUBE-SVC-${i % 7}`;
      writeNotification(writer, { type: NFT_MSG_DELRULE, family: NFPROTO_IPV4, table: "nat", chain });
      writeNotification(writer, { type: NFT_MSG_NEWRULE, family: NFPROTO_IPV4, table: "nat", chain });
    }
    writeGeneration(writer, 9, 100, "iptables-restor");
  }

  it("a drain of kube-proxy's rewrites reports nothing", () => {
    let notices = 0;
    const listener = new NftablesChangeListener(() => notices++);
    const writer = new MessageWriter();
    kubeProxyRestore(writer, 200);
    drain(listener, writer);
    expect(notices).toBe(0);
    expect(listener.messages).toBe(401);
    expect(listener.transactions).toBe(1);
  });

  it("one change of ours among many messages reports once per drain", () => {
    let notices = 0;
    const listener = new NftablesChangeListener(() => notices++);
    const writer = new MessageWriter();
    kubeProxyRestore(writer, 50);
    // iptables -t nat -F FLANNEL-POSTRTG: one DELRULE per rule.
    for (let i = 0; i < 6; i++) {
      writeNotification(writer, {
        type: NFT_MSG_DELRULE,
        family: NFPROTO_IPV4,
        table: "nat",
        chain: "FLANNEL-POSTRTG",
      });
    }
    writeGeneration(writer, 10, 101, "iptables");
    drain(listener, writer);
    expect(notices).toBe(1);

    const next = new MessageWriter();
    writeNotification(next, { type: NFT_MSG_DELTABLE, family: NFPROTO_IPV4, table: "filter" });
    drain(listener, next);
    expect(notices).toBe(2);
    expect(listener.reported).toBe(2);
  });

  it("a drain that overflowed reports, since ours may be among the lost", () => {
    let notices = 0;
    const listener = new NftablesChangeListener(() => notices++);
    listener.overflow();
    listener.drained();
    expect(notices).toBe(1);
    listener.drained(); // nothing new
    expect(notices).toBe(1);
  });

  it("an unreadable message of a watched family reports", () => {
    let notices = 0;
    const listener = new NftablesChangeListener(() => notices++);
    const message = one({ type: NFT_MSG_DELRULE, family: NFPROTO_IPV4, table: "nat", chain: "KUBE-X" });
    message.buffer.writeUInt16LE(400, message.payload + 4);
    listener.message(message);
    listener.drained();
    expect(notices).toBe(1);
  });
});

describe("PollingRuleWatch", () => {
  it("reports each change of the read state once, at the next poll", async () => {
    const clock = new FakeClock();
    let state = "nat:12/2000 filter:8/1400";
    let notices = 0;
    const watch = new PollingRuleWatch(
      "test counters",
      () => state,
      () => notices++,
      500,
      clock,
    );
    await clock.advance(5_000);
    expect(notices).toBe(0);
    state = "nat:11/1800 filter:8/1400";
    await clock.advance(499);
    expect(notices).toBe(0);
    await clock.advance(1);
    expect(notices).toBe(1);
    await clock.advance(5_000);
    expect(notices).toBe(1);
    expect(watch.polls).toBe(22); // the first read at open, then one per 500 ms
    watch.close();
  });

  it("a lasting read failure reports once, and recovery once more", async () => {
    const clock = new FakeClock();
    let failing = false;
    let notices = 0;
    const watch = new PollingRuleWatch(
      "test counters",
      () => {
        if (failing) throw new Error("getsockopt(IPT_SO_GET_INFO, nat): Operation not permitted (EPERM)");
        return "nat:12/2000";
      },
      () => notices++,
      500,
      clock,
    );
    failing = true;
    await clock.advance(3_000);
    expect(notices).toBe(1);
    failing = false;
    await clock.advance(500);
    expect(notices).toBe(2);
    watch.close();
  });

  it("close() stops polling and releases the reader, also from inside onChange", async () => {
    const clock = new FakeClock();
    let released = 0;
    let state = 0;
    const watch: PollingRuleWatch = new PollingRuleWatch(
      "test counters",
      () => String(state),
      () => watch.close(),
      500,
      clock,
      () => released++,
    );
    state = 1;
    await clock.advance(500);
    expect(released).toBe(1);
    expect(clock.waiting).toBe(0);
    watch.close();
    expect(released).toBe(1);
  });
});
