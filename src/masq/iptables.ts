// Applies the masquerade / forward rule sets to the kernel: `iptables-save` per table, a pure plan, and — only
// when something is off — one `iptables-restore --noflush` that touches nothing but our chains and jumps.
// A resync where all is well costs one iptables-save per table and no write. Rules are never removed: an
// exiting agent leaves the data plane as it is (as flanneld does).
import { CommandError, type CommandResult, type CommandRunner } from "../exec/command.js";
import { chooseIptablesBackend, type BackendEvidence, type IptablesMode } from "./backend-choice.js";
import {
  atLeast162,
  parseIptablesVersion,
  parseSave,
  planRestore,
  type RuleSet,
  type Table,
} from "./rules.js";

/** The slice of a pino Logger this needs. */
export interface MasqLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface IptablesInfo {
  /** The iptables command used, e.g. "iptables"; `-save` / `-restore` are appended for the others. */
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
  private detected: Promise<IptablesInfo> | undefined;
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

  /** Brings our chains and jumps to `desired`; see planRestore for what is touched. */
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
    const version = parseIptablesVersion(result.stdout);
    if (version === undefined) throw new Error(`${command}: no version in ${JSON.stringify(result.stdout)}`);
    const recent = atLeast162(version);
    return {
      command: choice.command,
      reason: choice.reason,
      version: `${version.major}.${version.minor}.${version.patch}`,
      backend: version.backend ?? "unknown",
      randomFully: recent,
      wait: recent,
    };
  }

  private async save(tables: readonly Table[]): Promise<string> {
    const { command } = await this.info();
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
    if (desired.length === 0) return { changed: false, missing: [] };
    const tables = [...new Set(desired.map((set) => set.table))];
    const plan = planRestore(await this.save(tables), desired);
    if (plan.payload === undefined) return { changed: false, missing: plan.missing };

    await this.restore(plan.payload);
    this.log?.info({ missing: plan.missing, where: this.runner.where }, "iptables rules restored");

    // Read back once: if iptables prints a rule differently from how we render it, every resync would
    // rewrite the chain; say so instead of doing that silently.
    const after = planRestore(await this.save(tables), desired);
    if (after.payload !== undefined) {
      this.warnOnce(
        after.missing.join("\n"),
        { missing: after.missing, where: this.runner.where },
        "iptables rules read back differently from what was written",
      );
    }
    return { changed: true, missing: plan.missing };
  }

  private async restore(payload: string): Promise<void> {
    const { wait, command } = await this.info();
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
