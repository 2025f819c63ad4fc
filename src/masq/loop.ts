// The masquerade loop: installs flannel's masquerade (--ip-masq) and forward (--iptables-forward-rules)
// rules for the current lease and keeps them in. A removed rule is noticed without polling iptables:
// through nftables' change notifications where the rules live in nf_tables, through the legacy tables'
// entry counters otherwise (a cheap kernel read, no process), and each notice costs one check. A full
// check still runs on a timer as the safety net; without any notice source it is the only way, every
// --iptables-resync seconds as in flannel. Rules are never removed: an exiting agent leaves them.
//
// Dual-stack and IPv6-only leases get flannel's IPv6 rules too, in ip6tables of the same backend; the IPv6
// chains are watched and repaired exactly like the IPv4 ones (the notice sources cover both families).
import { formatCidr, type Subnet } from "../ip/ipv4.js";
import { formatCidr6, type Subnet6 } from "../ip/ipv6.js";
import { hasIPv4 } from "../lease/key.js";
import { systemClock, type Clock, type Timer } from "../util/clock.js";
import type { Logger } from "../util/log.js";
import type { IptablesInfo, MasqManager } from "./iptables.js";
import {
  FORWARD_CHAIN,
  forwardRules,
  forwardRules6,
  MASQ_CHAIN,
  masqRules,
  masqRules6,
  type RuleSet,
} from "./rules.js";

/**
 * The lease the rules are for. An IPv6-only lease has flannel's empty 0.0.0.0/0 for `network` and
 * `subnet` (no IPv4 rules then); a lease with `ipv6Subnet` gets the IPv6 rules for it and `ipv6Network`.
 */
export interface MasqTarget {
  readonly network: Subnet;
  readonly subnet: Subnet;
  readonly ipv6Network?: Subnet6 | undefined;
  readonly ipv6Subnet?: Subnet6 | undefined;
}

/** Which rules are wanted (the agent's --ip-masq, --iptables-forward-rules and --random-fully choice). */
export interface RuleChoice {
  readonly ipMasq: boolean;
  readonly forwardRules: boolean;
  readonly fullyRandomDisable: boolean;
}

/** Whether the target has IPv6 rules; throws when it has an IPv6 subnet but no IPv6 network. */
export function wantsIPv6(target: MasqTarget): boolean {
  if (target.ipv6Subnet === undefined) return false;
  if (target.ipv6Network === undefined) {
    throw new Error(`IPv6 subnet ${formatCidr6(target.ipv6Subnet)} without an IPv6 network: no IPv6 rules`);
  }
  return true;
}

/**
 * The rule sets for a target, IPv4 ones first (only when the lease has an IPv4 subnet), then IPv6 ones
 * (only when it has an IPv6 subnet), each in flannel's order: masquerade, then forward. `randomFully` is
 * per family: whether that family's iptables has MASQUERADE --random-fully.
 */
export function desiredRuleSets(
  target: MasqTarget,
  choice: RuleChoice,
  randomFully: { readonly ipv4: boolean; readonly ipv6: boolean },
): RuleSet[] {
  const sets: RuleSet[] = [];
  if (hasIPv4(target.subnet)) {
    if (choice.ipMasq) {
      sets.push(
        masqRules(target.network, target.subnet, {
          randomFully: randomFully.ipv4 && !choice.fullyRandomDisable,
        }),
      );
    }
    if (choice.forwardRules) sets.push(forwardRules(target.network));
  }
  if (wantsIPv6(target) && target.ipv6Network !== undefined && target.ipv6Subnet !== undefined) {
    if (choice.ipMasq) {
      sets.push(
        masqRules6(target.ipv6Network, target.ipv6Subnet, {
          randomFully: randomFully.ipv6 && !choice.fullyRandomDisable,
        }),
      );
    }
    if (choice.forwardRules) sets.push(forwardRules6(target.ipv6Network));
  }
  return sets;
}

/** One string per target: equal strings, the same rules. */
function targetKey(target: MasqTarget): string {
  const v6 = [target.ipv6Network, target.ipv6Subnet].map((s) => (s === undefined ? "-" : formatCidr6(s)));
  return [formatCidr(target.network), formatCidr(target.subnet), ...v6].join(" ");
}

export interface MasqOptions {
  readonly ipMasq: boolean;
  readonly fullyRandomDisable: boolean;
  readonly forwardRules: boolean;
  /** --iptables-resync: the full check's interval when nothing reports removed rules. */
  readonly resyncMs: number;
  /** The full check's interval while a notice source works (a safety net only). */
  readonly safetyResyncMs: number;
}

/** The chains whose changes concern us: ours and the built-in ones holding our jumps. */
export const WATCHED_CHAINS: ReadonlyMap<string, readonly string[]> = new Map([
  ["nat", [MASQ_CHAIN, "POSTROUTING"]],
  ["filter", [FORWARD_CHAIN, "FORWARD"]],
]);

/** Something that tells when the rules may have changed. */
export interface RuleWatch {
  /** For status and logs: "nftables notifications", "legacy table counters". */
  readonly kind: string;
  close(): void;
}

/** Opens a notice source for the chosen iptables backend; undefined when none works (timer only). */
export type RuleWatchFactory = (info: IptablesInfo, onChange: () => void) => RuleWatch | undefined;

export interface MasqEvents {
  /** The iptables backend was chosen (once). */
  chosen?(info: IptablesInfo, watch: string | undefined): void;
  /** The ip6tables command for the IPv6 rules was chosen (once, when IPv6 rules are first wanted). */
  chosen6?(info: IptablesInfo): void;
  /** A check ran: rules it restored (after the first install), or the error. */
  checked?(result: {
    readonly missing: readonly string[];
    readonly error: Error | undefined;
    readonly first: boolean;
  }): void;
  /** The rules are in for the current lease (or none are wanted). */
  installed?(): void;
  /** Liveness: the loop beats and says by when it beats again. */
  heartbeat?(withinMs: number): void;
}

/** Notices arriving together (a restore touches many rules) make one check. */
const NOTICE_DEBOUNCE_MS = 50;

export class MasqLoop {
  private target: MasqTarget | undefined;
  private wake: (() => void) | undefined;
  private noticed = false;
  private installedFor: string | undefined;
  private loggedInfo6 = false;

  constructor(
    private readonly manager: MasqManager,
    private readonly options: MasqOptions,
    private readonly log: Logger,
    private readonly events: MasqEvents = {},
    private readonly watchFactory: RuleWatchFactory = () => undefined,
    private readonly clock: Clock = systemClock,
  ) {}

  get wanted(): boolean {
    return this.options.ipMasq || this.options.forwardRules;
  }

  set(target: MasqTarget): void {
    this.target = target;
    this.wake?.();
  }

  /** The rule sets for `target`; asks for ip6tables (detected once) only when IPv6 rules are wanted. */
  private async ruleSets(info: IptablesInfo, target: MasqTarget): Promise<RuleSet[]> {
    let info6: IptablesInfo | undefined;
    if (wantsIPv6(target)) {
      info6 = await this.manager.info6();
      if (!this.loggedInfo6) {
        this.loggedInfo6 = true;
        this.events.chosen6?.(info6);
        this.log.info(
          { command: info6.command, reason: info6.reason, version: info6.version, backend: info6.backend },
          "ip6tables chosen for the IPv6 rules",
        );
      }
    }
    return desiredRuleSets(target, this.options, {
      ipv4: info.randomFully,
      ipv6: info6?.randomFully ?? false,
    });
  }

  async run(signal: AbortSignal): Promise<void> {
    if (!this.wanted) {
      this.events.installed?.();
      return;
    }
    let watch: RuleWatch | undefined;
    let info: IptablesInfo | undefined;
    // Each beat covers the wait that follows it and the check after that. Generous: iptables-save and
    // the xtables lock can be slow on a node full of kube-proxy rules.
    const beat = (interval: number): void => this.events.heartbeat?.(3 * interval + 120_000);
    beat(this.options.resyncMs);
    try {
      while (!signal.aborted) {
        const target = this.target;
        let failed = false;
        if (target !== undefined) {
          try {
            if (info === undefined) {
              info = await this.manager.info();
              watch = this.openWatch(info);
              this.events.chosen?.(info, watch?.kind);
              this.log.info(
                {
                  command: info.command,
                  reason: info.reason,
                  version: info.version,
                  backend: info.backend,
                  removalsNoticedBy:
                    watch?.kind ?? `a check every ${Math.round(this.options.resyncMs / 1000)} s`,
                },
                "iptables backend chosen",
              );
            }
            await this.check(info, target);
          } catch (caught) {
            failed = true;
            const error = caught instanceof Error ? caught : new Error(String(caught));
            this.log.error({ err: error }, "cannot install masquerade/forward rules; retrying");
            this.events.checked?.({ missing: [], error, first: this.installedFor === undefined });
          }
        }
        // Decided after the check: the first check is also where the watch opens.
        const interval = watch === undefined ? this.options.resyncMs : this.options.safetyResyncMs;
        beat(interval);
        await this.sleep(failed ? Math.min(interval, this.options.resyncMs) : interval, signal);
      }
    } finally {
      watch?.close();
    }
  }

  private openWatch(info: IptablesInfo): RuleWatch | undefined {
    try {
      return this.watchFactory(info, () => {
        this.noticed = true;
        this.wake?.();
      });
    } catch (caught) {
      const error = caught instanceof Error ? caught : new Error(String(caught));
      this.log.warn(
        { err: error },
        `cannot follow iptables changes; checking the rules every ${Math.round(this.options.resyncMs / 1000)} s instead`,
      );
      return undefined;
    }
  }

  private async check(info: IptablesInfo, target: MasqTarget): Promise<void> {
    const key = targetKey(target);
    const first = this.installedFor !== key;
    const result = await this.manager.ensure(await this.ruleSets(info, target));
    // A check that finds all in place leaves no other trace: debug shows how often notices cost one.
    this.log.debug({ restored: result.changed }, "masquerade/forward rules checked");
    if (result.changed && !first) {
      this.log.warn({ missing: result.missing }, "masquerade/forward rules were missing; restored");
    }
    this.installedFor = key;
    this.events.checked?.({ missing: result.missing, error: undefined, first });
    this.events.installed?.();
  }

  /** Waits for the interval, a new target, or a notice (debounced); a notice before the wait counts. */
  private async sleep(ms: number, signal: AbortSignal): Promise<void> {
    // Aborted during the check: an abort listener added now would never fire.
    if (signal.aborted) return;
    if (this.noticed) {
      this.noticed = false;
      await this.clock.sleep(NOTICE_DEBOUNCE_MS, signal);
      return;
    }
    await new Promise<void>((resolve) => {
      let timer: Timer | undefined;
      const done = (): void => {
        timer?.cancel();
        this.wake = undefined;
        signal.removeEventListener("abort", done);
        resolve();
      };
      timer = this.clock.setTimer(ms, done);
      let debouncing = false;
      this.wake = () => {
        if (!this.noticed) {
          done();
          return;
        }
        // Let the rest of a burst of notices land first, but counted from the first notice: a steady
        // stream of notices must not postpone the check for ever.
        this.noticed = false;
        if (debouncing) return;
        debouncing = true;
        timer?.cancel();
        timer = this.clock.setTimer(NOTICE_DEBOUNCE_MS, done);
      };
      signal.addEventListener("abort", done, { once: true });
    });
  }
}
