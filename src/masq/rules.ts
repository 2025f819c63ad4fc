// flannel's masquerade (nat) and forward (filter) rules, and the plan that brings a node's iptables to them.
//
// Pure: the shell (iptables.ts) reads `iptables-save`, hands the text to planRestore and feeds the payload to
// `iptables-restore --noflush`. The rule text is flannel's byte for byte (reference §8.1, e2e/rules.go), so a
// node migrating from flanneld keeps its rules instead of getting a second copy.
//
// Ownership: the chains FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter) are ours as a whole; in the built-in
// chains (POSTROUTING, FORWARD) only our jump rule is. Nothing else in any table is ever mentioned in a
// payload. Declaring a chain (`:CHAIN - [0:0]`) in --noflush mode flushes it, so a chain whose content is off
// in any way — a rule missing, a stale rule from a previous pod subnet or cluster network, a foreign rule,
// the wrong order — is rewritten whole in one atomic commit. That also covers flannel's "recycling" (§8.1)
// without needing the previous subnet.env values.
//
// IPv6: the same chains, jumps and comments in ip6tables' nat and filter tables (flannel's masqIP6Rules and
// forwardRules with the IPv6 network), multicast being ff00::/8. A rule set says its family; one plan, and
// one iptables-save text, is for one family.
import type { Family } from "../ip/address.js";
import { formatCidr, type Subnet } from "../ip/ipv4.js";
import { formatIPv6, ipv6Bytes, type Subnet6 } from "../ip/ipv6.js";

export type Table = "nat" | "filter";

/** One rule: the chain it lives in and its arguments as iptables-save prints them (unquoted). */
export interface Rule {
  readonly chain: string;
  readonly spec: readonly string[];
}

/** Our own chain, its rules in order, and the jump into it from a built-in chain. */
export interface RuleSet {
  /** 4: iptables; 6: ip6tables. Absent means 4. */
  readonly family?: Family;
  readonly table: Table;
  readonly chain: string;
  readonly rules: readonly Rule[];
  /** Lives in a built-in chain that is not ours: added when missing, never flushed or moved. */
  readonly jump: Rule;
}

export const MASQ_CHAIN = "FLANNEL-POSTRTG";
export const FORWARD_CHAIN = "FLANNEL-FWD";
export const MASQ_COMMENT = "flanneld masq";
export const FORWARD_COMMENT = "flanneld forward";
/** kube-proxy's masquerade mark: such packets are kube-proxy's to NAT, not ours (avoids double NAT). */
export const KUBE_PROXY_MARK = "0x4000/0x4000";
const MULTICAST = "224.0.0.0/4";
const MULTICAST6 = "ff00::/8";

function cidrArg(subnet: Subnet, what: string): string {
  // iptables-save omits a /0 match entirely, so its rule would never read back equal to ours.
  if (subnet.prefixLen === 0) throw new RangeError(`${what} ${formatCidr(subnet)}: a /0 cannot be matched`);
  return formatCidr(subnet);
}

/**
 * An IPv6 address as ip6tables-save prints it: glibc's inet_ntop, which is RFC 5952 (what formatIPv6
 * writes) except that an IPv4-compatible address (::/96 with a non-zero high half of its last 32 bits)
 * keeps a dotted tail, `::10.0.0.0`. IPv4-mapped ones (`::ffff:10.0.0.0`) are dotted by both.
 */
export function ip6tablesAddress(ip: bigint): string {
  const bytes = ipv6Bytes(ip);
  const zeroHead = bytes.slice(0, 12).every((b) => b === 0);
  if (zeroHead && ((bytes[12] ?? 0) !== 0 || (bytes[13] ?? 0) !== 0)) {
    return `::${bytes[12] ?? 0}.${bytes[13] ?? 0}.${bytes[14] ?? 0}.${bytes[15] ?? 0}`;
  }
  return formatIPv6(ip);
}

function cidrArg6(subnet: Subnet6, what: string): string {
  const text = `${ip6tablesAddress(subnet.ip)}/${subnet.prefixLen}`;
  // ip6tables-save, too, omits a ::/0 match.
  if (subnet.prefixLen === 0) throw new RangeError(`${what} ${text}: a /0 cannot be matched`);
  return text;
}

/** flannel's masquerade rules for one family, from the CIDR texts, in flannel's order. */
function masqRuleSet(
  family: Family,
  c: string,
  p: string,
  multicast: string,
  opts: { randomFully: boolean },
): RuleSet {
  const comment = ["-m", "comment", "--comment", MASQ_COMMENT];
  const masquerade = opts.randomFully ? ["-j", "MASQUERADE", "--random-fully"] : ["-j", "MASQUERADE"];
  const rule = (...spec: string[]): Rule => ({ chain: MASQ_CHAIN, spec });
  return {
    ...(family === 6 ? { family } : {}),
    table: "nat",
    chain: MASQ_CHAIN,
    jump: { chain: "POSTROUTING", spec: [...comment, "-j", MASQ_CHAIN] },
    rules: [
      rule("-m", "mark", "--mark", KUBE_PROXY_MARK, ...comment, "-j", "RETURN"),
      // pod ↔ cluster keeps pod addresses
      rule("-s", p, "-d", c, ...comment, "-j", "RETURN"),
      rule("-s", c, "-d", p, ...comment, "-j", "RETURN"),
      // outside → a local pod (e.g. a NodePort) keeps the client's address
      rule("!", "-s", c, "-d", p, ...comment, "-j", "RETURN"),
      // cluster → outside, except multicast
      rule("-s", c, "!", "-d", multicast, ...comment, ...masquerade),
      // host (or anything outside) → a remote pod
      rule("!", "-s", c, "-d", c, ...comment, ...masquerade),
    ],
  };
}

/** flannel's forward rules for one family, from the cluster network's CIDR text. */
function forwardRuleSet(family: Family, c: string): RuleSet {
  const comment = ["-m", "comment", "--comment", FORWARD_COMMENT];
  return {
    ...(family === 6 ? { family } : {}),
    table: "filter",
    chain: FORWARD_CHAIN,
    jump: { chain: "FORWARD", spec: [...comment, "-j", FORWARD_CHAIN] },
    rules: [
      { chain: FORWARD_CHAIN, spec: ["-s", c, ...comment, "-j", "ACCEPT"] },
      { chain: FORWARD_CHAIN, spec: ["-d", c, ...comment, "-j", "ACCEPT"] },
    ],
  };
}

/** flannel's masquerade rules (nat, `--ip-masq`) in flannel's order. */
export function masqRules(cluster: Subnet, pod: Subnet, opts: { randomFully: boolean }): RuleSet {
  const c = cidrArg(cluster, "cluster network");
  const p = cidrArg(pod, "pod subnet");
  return masqRuleSet(4, c, p, MULTICAST, opts);
}

/** flannel's forward rules (filter, `--iptables-forward-rules`). */
export function forwardRules(cluster: Subnet): RuleSet {
  return forwardRuleSet(4, cidrArg(cluster, "cluster network"));
}

/** flannel's IPv6 masquerade rules (ip6tables nat; flannel's masqIP6Rules): multicast is ff00::/8. */
export function masqRules6(cluster: Subnet6, pod: Subnet6, opts: { randomFully: boolean }): RuleSet {
  const c = cidrArg6(cluster, "IPv6 cluster network");
  const p = cidrArg6(pod, "IPv6 pod subnet");
  return masqRuleSet(6, c, p, MULTICAST6, opts);
}

/** flannel's IPv6 forward rules (ip6tables filter): its forwardRules with the IPv6 network. */
export function forwardRules6(cluster: Subnet6): RuleSet {
  return forwardRuleSet(6, cidrArg6(cluster, "IPv6 cluster network"));
}

/** The family of a rule set (absent means IPv4). */
export function ruleSetFamily(set: RuleSet): Family {
  return set.family ?? 4;
}

/** How plans name a table in `missing`: `nat`, `filter` for IPv4; `ip6 nat`, `ip6 filter` for IPv6. */
export function tableLabel(family: Family, table: Table): string {
  return family === 6 ? `ip6 ${table}` : table;
}

/** Quotes a value the way iptables-save does (xtables_save_string), which iptables-restore reads back. */
function saveQuote(value: string): string {
  if (/^[A-Za-z0-9_-]+$/.test(value)) return value;
  return `"${value.replace(/["\\']/g, (ch) => `\\${ch}`)}"`;
}

function specText(spec: readonly string[]): string {
  // Only comment values can hold spaces; every other argument is printed as is.
  return spec.map((arg, i) => (i > 0 && spec[i - 1] === "--comment" ? saveQuote(arg) : arg)).join(" ");
}

/** A rule exactly as `iptables-save` and `iptables -S` print it: `-A CHAIN …`. */
export function ruleLine(rule: Rule): string {
  return `-A ${rule.chain} ${specText(rule.spec)}`;
}

/** One table of `iptables-save` output: chains (name → policy, "-" for user chains) and rule lines. */
export interface SavedTable {
  readonly chains: ReadonlyMap<string, string>;
  /** Rule lines per chain, in order, as printed (`-A CHAIN …`). */
  readonly rules: ReadonlyMap<string, readonly string[]>;
}

export interface SavedRules {
  readonly tables: ReadonlyMap<string, SavedTable>;
  /** `# Warning: …` lines, e.g. iptables-nft noticing iptables-legacy tables beside its own. */
  readonly warnings: readonly string[];
}

/** Parses `iptables-save` output (one or more tables; with or without `-c` counters). */
export function parseSave(text: string): SavedRules {
  const tables = new Map<string, { chains: Map<string, string>; rules: Map<string, string[]> }>();
  const warnings: string[] = [];
  let current: { chains: Map<string, string>; rules: Map<string, string[]> } | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim().replace(/^\[\d+:\d+\]\s+/, "");
    if (line === "") continue;
    if (line.startsWith("#")) {
      if (/^#\s*Warning/i.test(line)) warnings.push(line.replace(/^#\s*/, ""));
      continue;
    }
    if (line.startsWith("*")) {
      const name = line.slice(1);
      current = tables.get(name) ?? { chains: new Map(), rules: new Map() };
      tables.set(name, current);
      continue;
    }
    if (line === "COMMIT" || current === undefined) continue;
    if (line.startsWith(":")) {
      const [name = "", policy = "-"] = line.slice(1).split(/\s+/);
      current.chains.set(name, policy);
      continue;
    }
    if (line.startsWith("-A ")) {
      const chain = line.split(/\s+/)[1] ?? "";
      const list = current.rules.get(chain) ?? [];
      list.push(line.replace(/\s+/g, " "));
      current.rules.set(chain, list);
    }
  }
  return { tables, warnings };
}

export interface RestorePlan {
  /** An `iptables-restore --noflush` payload; undefined when the rules are already exactly right. */
  readonly payload: string | undefined;
  /** What was wrong, one human-readable line each (for logs and metrics). */
  readonly missing: string[];
}

function checkSet(set: RuleSet): void {
  const bad = set.rules.find((r) => r.chain !== set.chain);
  if (bad !== undefined) throw new Error(`rule set ${set.chain}: rule belongs to chain ${bad.chain}`);
  if (set.jump.chain === set.chain)
    throw new Error(`rule set ${set.chain}: the jump must come from another chain`);
  if (set.jump.spec.at(-1) !== set.chain)
    throw new Error(`rule set ${set.chain}: the jump must end in -j ${set.chain}`);
}

/**
 * Compares `current` (`iptables-save` output for at least the tables in `desired`) with the desired rule
 * sets and builds the smallest safe `iptables-restore --noflush` payload: a chain that differs in any way is
 * declared (flushed) and refilled; a missing jump is appended; extra copies of our jump are deleted. `-D` is
 * only ever emitted for a rule seen in `current`, because a `-D` that matches nothing fails the whole restore.
 * All sets are of one family (`current` is that family's save: iptables-save or ip6tables-save); IPv6
 * tables are named `ip6 nat`, `ip6 filter` in `missing`.
 */
export function planRestore(current: string, desired: readonly RuleSet[]): RestorePlan {
  const saved = parseSave(current);
  const missing: string[] = [];
  const byTable = new Map<Table, RuleSet[]>();
  const family = desired[0] === undefined ? 4 : ruleSetFamily(desired[0]);
  for (const set of desired) {
    checkSet(set);
    if (ruleSetFamily(set) !== family)
      throw new Error(
        `rule sets of IPv${family} and IPv${ruleSetFamily(set)} in one plan: plan each family apart`,
      );
    const sets = byTable.get(set.table) ?? [];
    if (sets.some((s) => s.chain === set.chain))
      throw new Error(`chain ${set.table}/${set.chain} given twice`);
    sets.push(set);
    byTable.set(set.table, sets);
  }

  let payload = "";
  for (const [table, sets] of byTable) {
    const have = saved.tables.get(table);
    const label = tableLabel(family, table);
    const declare: string[] = [];
    const fill: string[] = [];
    const jumps: string[] = [];
    for (const set of sets) {
      const want = set.rules.map(ruleLine);
      const got = have?.rules.get(set.chain) ?? [];
      const exists = have?.chains.has(set.chain) === true;
      const same = exists && got.length === want.length && got.every((line, i) => line === want[i]);
      if (!exists) {
        missing.push(`${label}: chain ${set.chain}`);
      } else if (!same) {
        const before = missing.length;
        for (const line of want) if (!got.includes(line)) missing.push(`${label}: rule ${line}`);
        for (const line of got) if (!want.includes(line)) missing.push(`${label}: unexpected rule ${line}`);
        // Same rules, but repeated or reordered.
        if (missing.length === before)
          missing.push(`${label}: rules of ${set.chain} out of order or repeated`);
      }
      if (!same) {
        declare.push(`:${set.chain} - [0:0]`);
        fill.push(...want);
      }

      const jump = ruleLine(set.jump);
      const copies = (have?.rules.get(set.jump.chain) ?? []).filter((line) => line === jump).length;
      if (copies === 0) {
        missing.push(`${label}: rule ${jump}`);
        jumps.push(jump);
      } else if (copies > 1) {
        // Ours by its comment and target; keep the last copy so the jump stays where it was last appended.
        missing.push(`${label}: ${copies} copies of ${jump}`);
        for (let i = 1; i < copies; i++) jumps.push(`-D ${jump.slice(3)}`);
      }
    }
    if (declare.length + fill.length + jumps.length === 0) continue;
    // Jumps last: the chain they target is declared and filled earlier in the same commit.
    payload += [`*${table}`, ...declare, ...fill, ...jumps, "COMMIT", ""].join("\n");
  }
  return { payload: payload === "" ? undefined : payload, missing };
}

/** The payload for a node that has none of our rules yet (what planRestore gives for empty tables). */
export function restorePayload(sets: readonly RuleSet[]): string {
  return planRestore("", sets).payload ?? "";
}

export interface IptablesVersion {
  readonly major: number;
  readonly minor: number;
  readonly patch: number;
  /** From `iptables --version`: "nf_tables", "legacy", or undefined for old builds that do not say. */
  readonly backend: "nf_tables" | "legacy" | undefined;
}

/** Parses `iptables v1.8.9 (nf_tables)`; undefined when there is no version in the text. */
export function parseIptablesVersion(text: string): IptablesVersion | undefined {
  const match = /v(\d+)\.(\d+)\.(\d+)(?:\s*\(([^)]*)\))?/.exec(text);
  if (match === null) return undefined;
  const mode = match[4]?.trim();
  return {
    major: Number(match[1]),
    minor: Number(match[2]),
    patch: Number(match[3]),
    backend: mode === "nf_tables" ? "nf_tables" : mode === "legacy" ? "legacy" : undefined,
  };
}

/**
 * iptables ≥ 1.6.2 has MASQUERADE --random-fully and iptables-restore --wait; the same version test as
 * go-iptables' HasRandomFully and flannel's restore wrapper, so twill picks the same rule text as flannel.
 */
export function atLeast162(v: IptablesVersion): boolean {
  if (v.major !== 1) return v.major > 1;
  if (v.minor !== 6) return v.minor > 6;
  return v.patch >= 2;
}
