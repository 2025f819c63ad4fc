// Applies the masquerade / forward rule sets to the kernel: `iptables-save` per table, a pure plan, and — only
// when something is off — one `iptables-restore --noflush` that touches nothing but our chains and jumps.
// A resync where all is well costs one iptables-save per table and no write. Rules are never removed: an
// exiting agent leaves the data plane as it is (as flanneld does).
//
// IPv6 rule sets go through ip6tables of the same backend as the IPv4 ones (ip6tables-nft beside
// iptables-nft, ip6tables-legacy beside iptables-legacy, plain ip6tables beside plain iptables): detected
// only once an IPv6 rule set is asked for, so an IPv4-only node never runs ip6tables.
import type { Family } from "../ip/address.js";
import { CommandError, type CommandResult, type CommandRunner } from "../exec/command.js";
import {
  chooseIptablesBackend,
  ip6tablesCommand,
  type BackendEvidence,
  type IptablesMode,
} from "./backend-choice.js";
import {
  atLeast162,
  parseIptablesVersion,
  parseSave,
  planRestore,
  ruleSetFamily,
  type RuleSet,
  type Table,
} from "./rules.js";

/** The slice of a pino Logger this needs. */
export interface MasqLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface IptablesInfo {
  /**
   * The iptables (or ip6tables) command used, e.g. "iptables"; `-save` / `-restore` are appended for
   * the others.
   */
  readonly command: string;
  /** Why this command (see backend-choice.ts). */
  readonly reason: string;
  /** e.g. "1.8.9". */
  readonly version: string;
  readonly backend: "nf_tables" | "legacy" | "unknown";
  /** MASQUERADE --random-fully is available (iptables ≥ 1.6.2, the test flannel uses). */
  readonly randomFully: boolean;
  /** iptables-restore takes --wait (iptables ≥ 1.6.2). */
  readonly wait: boolean;
}

export interface EnsureResult {
  /** An iptables-restore ran. */
  readonly changed: boolean;
  /** What was wrong before this round (empty when nothing was). */
  readonly missing: string[];
}

export interface MasqManagerOptions {
  /**
   * How to pick the backend (--iptables-mode); default "system", the system's own `iptables`. It should be
   * the one kube-proxy uses, or the rules end up in a table nobody evaluates first.
   */
  readonly mode?: IptablesMode;
  /** A command to use as is, e.g. "iptables-legacy" (tests); overrides `mode`. */
  readonly command?: string;
  /**
   * The ip6tables command to use as is for IPv6 rule sets; default the IPv6 twin of the iptables command
   * in use (see ip6tablesCommand).
   */
  readonly command6?: string;
}

/** The ip6tables command cannot be run although IPv6 rules are wanted; the message says what to install. */
export class Ip6tablesUnavailableError extends CommandError {
  constructor(
    command: string,
    result: CommandResult,
    readonly ip6tables: string,
    iptables: string,
  ) {
    super(command, result);
    this.name = "Ip6tablesUnavailableError";
    this.message +=
      `. The IPv6 masquerade/forward rules need ${ip6tables} (the IPv6 counterpart of ${iptables}): ` +
      "install it (Debian and Ubuntu: the iptables package), or give the node no IPv6 network";
  }
}

/** iptables-restore failed; `line` is the payload line it named, when it named one. */
export class IptablesRestoreError extends CommandError {
  constructor(
    command: string,
    result: CommandResult,
    readonly payload: string,
    readonly line: string | undefined,
  ) {
    super(command, result);
    this.name = "IptablesRestoreError";
    if (line !== undefined) this.message += ` [payload line: ${line}]`;
  }
}

export class MasqManager {
  private readonly mode: IptablesMode;
  private readonly fixedCommand: string | undefined;
  private readonly fixedCommand6: string | undefined;
  private detected: Promise<IptablesInfo> | undefined;
  private detected6: Promise<IptablesInfo> | undefined;
  /** ensure() rounds run one at a time, so two rounds never race on the same chains. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly warnedOnce = new Set<string>();

  constructor(
    private readonly runner: CommandRunner,
    private readonly log?: MasqLogger,
    options: MasqManagerOptions = {},
  ) {
    this.mode = options.mode ?? "system";
    this.fixedCommand = options.command;
    this.fixedCommand6 = options.command6;
  }

  /** Version, backend and features of the iptables in use; detected once. */
  info(): Promise<IptablesInfo> {
    if (this.detected === undefined) {
      const detecting = this.detect();
      this.detected = detecting;
      // A failed detection (iptables missing) is retried next time instead of being cached.
      detecting.catch(() => {
        if (this.detected === detecting) this.detected = undefined;
      });
    }
    return this.detected;
  }

  /**
   * Version, backend and features of the ip6tables for IPv6 rule sets: the IPv6 twin of info()'s command;
   * detected once, when first asked. Rejects with Ip6tablesUnavailableError when it cannot be run.
   */
  info6(): Promise<IptablesInfo> {
    if (this.detected6 === undefined) {
      const detecting = this.detect6();
      this.detected6 = detecting;
      detecting.catch(() => {
        if (this.detected6 === detecting) this.detected6 = undefined;
      });
    }
    return this.detected6;
  }

  /** The detected info for a family's rule sets. */
  infoFor(family: Family): Promise<IptablesInfo> {
    return family === 6 ? this.info6() : this.info();
  }

  /**
   * Brings our chains and jumps to `desired`; see planRestore for what is touched. IPv4 and IPv6 sets are
   * planned and restored apart, IPv4 first, each with its own command.
   */
  ensure(desired: readonly RuleSet[]): Promise<EnsureResult> {
    const round = this.queue.then(() => this.ensureNow(desired));
    this.queue = round.catch(() => undefined);
    return round;
  }

  /** What each backend holds; a backend that cannot be read counts as absent. */
  private async evidence(): Promise<BackendEvidence> {
    const read = async (command: string): Promise<string | undefined> => {
      const result = await this.runner.run(command, []);
      return result.exitCode === 0 ? result.stdout : undefined;
    };
    // No legacy table in this namespace means no legacy rules; reading them anyway would load the legacy
    // kernel modules on a host that never used them.
    const tables = await this.runner.run("cat", ["/proc/net/ip_tables_names"]);
    const legacyInUse = tables.exitCode === 0 && tables.stdout.trim() !== "";
    const [nft, legacy] = await Promise.all([
      read("iptables-nft-save"),
      legacyInUse ? read("iptables-legacy-save") : Promise.resolve(""),
    ]);
    return { nft, legacy };
  }

  private async detect(): Promise<IptablesInfo> {
    const choice =
      this.fixedCommand !== undefined
        ? { command: this.fixedCommand, reason: "given" }
        : chooseIptablesBackend(
            this.mode,
            this.mode === "auto" ? await this.evidence() : { nft: undefined, legacy: undefined },
          );
    const result = await this.runner.run(choice.command, ["--version"]);
    const command = `${choice.command} --version`;
    if (result.exitCode !== 0) throw new CommandError(`${command} (${this.runner.where})`, result);
    return versionInfo(choice.command, choice.reason, command, result.stdout);
  }

  private async detect6(): Promise<IptablesInfo> {
    const ipv4 = await this.info();
    const derived = ip6tablesCommand(ipv4.command);
    const command6 = this.fixedCommand6 ?? derived;
    if (command6 === undefined) {
      throw new Error(
        `no ip6tables command for ${ipv4.command}: its name does not start with "iptables", so the ` +
          "IPv6 counterpart cannot be derived; give it (MasqManager option command6)",
      );
    }
    const reason =
      this.fixedCommand6 !== undefined ? "given" : `the IPv6 counterpart of ${ipv4.command} (${ipv4.reason})`;
    const result = await this.runner.run(command6, ["--version"]);
    const command = `${command6} --version`;
    if (result.exitCode !== 0) {
      throw new Ip6tablesUnavailableError(
        `${command} (${this.runner.where})`,
        result,
        command6,
        ipv4.command,
      );
    }
    const info = versionInfo(command6, reason, command, result.stdout);
    if (info.backend !== ipv4.backend) {
      // e.g. Debian's separate alternatives for iptables and ip6tables pointing at different backends.
      this.warnOnce(
        `backend6 ${info.backend}`,
        { iptables: ipv4.command, backend: ipv4.backend, ip6tables: command6, backend6: info.backend },
        "ip6tables uses another backend than iptables",
      );
    }
    return info;
  }

  private async save(tables: readonly Table[], family: Family): Promise<string> {
    const { command } = await this.infoFor(family);
    const texts = await Promise.all(
      tables.map(async (table) => {
        const result = await this.runner.run(`${command}-save`, ["-t", table]);
        if (result.exitCode !== 0) {
          throw new CommandError(`${command}-save -t ${table} (${this.runner.where})`, result);
        }
        return result.stdout;
      }),
    );
    const text = texts.join("\n");
    for (const warning of parseSave(text).warnings) {
      // e.g. iptables-nft seeing iptables-legacy tables: kube-proxy and twill may be on different backends.
      this.warnOnce(warning, { warning, command }, "iptables reports rules of another backend");
    }
    return text;
  }

  private async ensureNow(desired: readonly RuleSet[]): Promise<EnsureResult> {
    let changed = false;
    const missing: string[] = [];
    for (const family of [4, 6] as const) {
      const sets = desired.filter((set) => ruleSetFamily(set) === family);
      if (sets.length === 0) continue;
      const result = await this.ensureFamily(sets, family);
      changed ||= result.changed;
      missing.push(...result.missing);
    }
    return { changed, missing };
  }

  private async ensureFamily(desired: readonly RuleSet[], family: Family): Promise<EnsureResult> {
    const tables = [...new Set(desired.map((set) => set.table))];
    const plan = planRestore(await this.save(tables, family), desired);
    if (plan.payload === undefined) return { changed: false, missing: plan.missing };

    await this.restore(plan.payload, family);
    const what = family === 6 ? "ip6tables" : "iptables";
    this.log?.info({ missing: plan.missing, where: this.runner.where }, `${what} rules restored`);

    // Read back once: if iptables prints a rule differently from how we render it, every resync would
    // rewrite the chain; say so instead of doing that silently.
    const after = planRestore(await this.save(tables, family), desired);
    if (after.payload !== undefined) {
      this.warnOnce(
        after.missing.join("\n"),
        { missing: after.missing, where: this.runner.where },
        `${what} rules read back differently from what was written`,
      );
    }
    return { changed: true, missing: plan.missing };
  }

  private async restore(payload: string, family: Family): Promise<void> {
    const { wait, command } = await this.infoFor(family);
    const args = ["--noflush", ...(wait ? ["--wait"] : [])];
    const result = await this.runner.run(`${command}-restore`, args, payload);
    if (result.exitCode === 0) return;
    // "iptables-restore: line 3 failed: …" — name the line we sent.
    const lineNo = /line (\d+) failed/.exec(result.stderr)?.[1];
    const line = lineNo === undefined ? undefined : payload.split("\n")[Number(lineNo) - 1];
    throw new IptablesRestoreError(
      `${command}-restore ${args.join(" ")} (${this.runner.where})`,
      result,
      payload,
      line,
    );
  }

  private warnOnce(key: string, obj: object, msg: string): void {
    if (this.warnedOnce.has(key)) return;
    this.warnedOnce.add(key);
    this.log?.warn(obj, msg);
  }
}

/** IptablesInfo from `<command> --version` output. */
function versionInfo(command: string, reason: string, ran: string, stdout: string): IptablesInfo {
  const version = parseIptablesVersion(stdout);
  if (version === undefined) throw new Error(`${ran}: no version in ${JSON.stringify(stdout)}`);
  const recent = atLeast162(version);
  return {
    command,
    reason,
    version: `${version.major}.${version.minor}.${version.patch}`,
    backend: version.backend ?? "unknown",
    randomFully: recent,
    wait: recent,
  };
}
