// Follows <prefix>/config. No config, or an invalid one, is a state to report and wait out — the
// agent stays not-ready and proceeds as soon as a valid config is written, instead of crash-looping.
import { ConfigError, type NetworkConfig } from "../config/network-config.js";
import { parseNetworkConfig } from "../config/network-config.js";
import { systemClock, type Clock } from "../util/clock.js";
import type { Logger } from "../util/log.js";
import { errorMessage } from "../util/log.js";
import { Backoff, raceAbort, stopped } from "../util/time.js";
import type { LeaseRegistry } from "./registry.js";

export type ConfigState =
  | { kind: "unknown" }
  | { kind: "missing"; key: string }
  | { kind: "invalid"; key: string; field: string; message: string }
  | { kind: "valid"; config: NetworkConfig; text: string };

/** The message for a missing config key; mentions the etcd v3 API as flannel does (a common slip). */
export function missingConfigMessage(key: string): string {
  return `no network config at ${key} in etcd (write one with "twill config set FILE"; with etcdctl use ETCDCTL_API=3)`;
}

export function evaluateConfig(
  key: string,
  text: string | undefined,
): { state: ConfigState; warnings: string[] } {
  if (text === undefined) return { state: { kind: "missing", key }, warnings: [] };
  try {
    const { config, warnings } = parseNetworkConfig(text);
    return { state: { kind: "valid", config, text }, warnings };
  } catch (error) {
    const field = error instanceof ConfigError ? error.field : "(unknown)";
    return { state: { kind: "invalid", key, field, message: errorMessage(error) }, warnings: [] };
  }
}

export class ConfigWatch {
  private state: ConfigState = { kind: "unknown" };
  private lastText: string | undefined | null = null;
  private readonly listeners = new Set<(state: ConfigState) => void>();

  constructor(
    private readonly registry: LeaseRegistry,
    private readonly log: Logger,
    /** Whether the config key is being watched: the first sign of etcd being reachable or not. */
    private readonly onWatchState?: (state: "watching" | "broken") => void,
    private readonly clock: Clock = systemClock,
  ) {}

  get current(): ConfigState {
    return this.state;
  }

  onChange(listener: (state: ConfigState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves with the first valid config (immediately if there is one); rejects if `signal` aborts. */
  waitForValid(signal: AbortSignal): Promise<NetworkConfig> {
    return new Promise((resolve, reject) => {
      const check = (state: ConfigState): boolean => {
        if (state.kind !== "valid") return false;
        unsubscribe();
        signal.removeEventListener("abort", onAbort);
        resolve(state.config);
        return true;
      };
      const onAbort = (): void => {
        unsubscribe();
        reject(new Error("stopped while waiting for a network config"));
      };
      const unsubscribe = this.onChange(check);
      if (check(this.state)) return;
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Runs until `signal` aborts: read, then watch; any break re-reads with backoff. */
  async run(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff(500, 10_000);
    const key = this.registry.configKey;
    while (!stopped(signal)) {
      try {
        const { text, revision } = await this.registry.getConfig();
        this.update(text);
        let broken: (reason: string) => void = () => undefined;
        const brokenPromise = new Promise<string>((resolve) => (broken = resolve));
        const watch = await this.registry.watchPrefix(key, revision + 1, {
          onChanges: (changes) => {
            for (const change of changes) {
              if (change.type === "put" && change.entry.key === key) this.update(change.entry.value);
              if (change.type === "delete" && change.key === key) this.update(undefined);
            }
          },
          onBroken: (reason) => broken(reason),
        });
        backoff.reset();
        this.onWatchState?.("watching");
        const reason = await raceAbort(brokenPromise, signal, "stopped");
        await watch.cancel();
        if (stopped(signal)) break;
        this.log.debug({ reason }, "config watch interrupted; re-reading");
      } catch (error) {
        if (stopped(signal)) break;
        this.onWatchState?.("broken");
        this.log.warn(
          { err: this.registry.explain(error), key },
          "cannot read the network config from etcd; retrying",
        );
      }
      await this.clock.sleep(backoff.next(), signal);
    }
  }

  private update(text: string | undefined): void {
    if (text === this.lastText) return;
    this.lastText = text;
    const { state, warnings } = evaluateConfig(this.registry.configKey, text);
    this.state = state;
    for (const warning of warnings)
      this.log.warn({ key: this.registry.configKey }, `network config: ${warning}`);
    if (state.kind === "missing") this.log.warn({ key: state.key }, missingConfigMessage(state.key));
    if (state.kind === "invalid") {
      this.log.error({ key: state.key, field: state.field }, `invalid network config: ${state.message}`);
    }
    if (state.kind === "valid") this.log.info({ key: this.registry.configKey }, "network config loaded");
    for (const listener of [...this.listeners]) listener(state);
  }
}
