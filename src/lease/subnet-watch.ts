// The live peer view: list every subnet key, then watch from the next revision. The raw entries are
// the source of truth; the view is recomputed (pure, cached) after each batch and diffed, so a
// compaction, a broken watch or an etcd restart is handled by one path — re-list and diff — which
// delivers exactly the difference: no event lost, none duplicated.
import { systemClock, type Clock } from "../util/clock.js";
import type { Logger } from "../util/log.js";
import { errorMessage } from "../util/log.js";
import { Backoff, raceAbort, stopped } from "../util/time.js";
import {
  ParseCache,
  computeView,
  diffViews,
  type InvalidEntry,
  type PeerEvent,
  type PeerView,
  type RawEntry,
  type ViewContext,
} from "./peer-view.js";
import type { LeaseRegistry, WatchChange, WatchHandle } from "./registry.js";

export interface SubnetWatchListener {
  /** Peer changes after a batch (possibly empty when only invalid entries or the own key moved). */
  onPeers(events: PeerEvent[], view: PeerView): void;
  /** Entries that became invalid (or changed while invalid) in this batch, to warn about once. */
  onInvalid(entries: InvalidEntry[]): void;
  /** The node's own key as etcd now has it (undefined = deleted), whenever it changed. */
  onOwnKey(entry: RawEntry | undefined): void;
  /** Watch lifecycle, for metrics: "watching" after every (re)list, "broken" with the reason. */
  onWatchState?(state: "watching" | "broken", reason?: string): void;
}

const emptyView: PeerView = { peers: new Map(), invalid: new Map() };

export class SubnetWatch {
  private readonly entries = new Map<string, RawEntry>();
  private readonly cache = new ParseCache();
  private view: PeerView = emptyView;
  private watch: WatchHandle | undefined;
  private synced = false;

  constructor(
    private readonly registry: LeaseRegistry,
    private context: ViewContext,
    private readonly listener: SubnetWatchListener,
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
  ) {}

  /** New own subnet or config: recompute and deliver the difference at once. */
  setContext(context: ViewContext): void {
    this.context = context;
    if (this.synced) this.recompute();
  }

  /** Runs until `signal` aborts: list, watch, and on any break re-list with backoff. */
  async run(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff(100, 5000);
    while (!stopped(signal)) {
      let broken: ((reason: string) => void) | undefined;
      const brokenPromise = new Promise<string>((resolve) => (broken = resolve));
      try {
        const snapshot = await this.registry.listSubnets();
        this.replaceAll(snapshot.entries);
        this.watch = await this.registry.watchPrefix(this.registry.subnetsPrefix, snapshot.revision + 1, {
          onChanges: (changes) => this.apply(changes),
          onBroken: (reason) => broken?.(reason),
        });
        this.listener.onWatchState?.("watching");
        backoff.reset();
        const reason = await raceAbort(brokenPromise, signal, "stopped");
        await this.watch.cancel();
        this.watch = undefined;
        if (stopped(signal)) break;
        this.log.warn({ reason }, "subnet watch interrupted; re-listing");
        this.listener.onWatchState?.("broken", reason);
      } catch (error) {
        if (stopped(signal)) break;
        this.log.warn({ err: this.registry.explain(error) }, "cannot list subnets from etcd; retrying");
        this.listener.onWatchState?.("broken", errorMessage(error));
      }
      await this.clock.sleep(backoff.next(), signal);
    }
  }

  private replaceAll(entries: readonly RawEntry[]): void {
    const ownKey = this.context.ownKey;
    const ownBefore = ownKey === undefined ? undefined : this.entries.get(ownKey);
    // The first list always reports the own key: one deleted between acquisition and this list is
    // absent both before and after, and no watch event will ever carry its deletion.
    const firstList = !this.synced;
    this.entries.clear();
    for (const entry of entries) this.entries.set(entry.key, entry);
    this.synced = true;
    this.recompute();
    if (ownKey !== undefined) {
      const ownAfter = this.entries.get(ownKey);
      if (firstList || ownBefore?.modRevision !== ownAfter?.modRevision) this.listener.onOwnKey(ownAfter);
    }
  }

  private apply(changes: readonly WatchChange[]): void {
    let ownChanged = false;
    for (const change of changes) {
      const key = change.type === "put" ? change.entry.key : change.key;
      if (change.type === "put") this.entries.set(key, change.entry);
      else this.entries.delete(key);
      if (key === this.context.ownKey) ownChanged = true;
    }
    this.recompute();
    if (ownChanged && this.context.ownKey !== undefined) {
      this.listener.onOwnKey(this.entries.get(this.context.ownKey));
    }
  }

  private recompute(): void {
    const before = this.view;
    const after = computeView(this.entries.values(), this.context, this.cache);
    this.view = after;
    const newlyInvalid = [...after.invalid.values()].filter(
      (entry) => before.invalid.get(entry.key)?.modRevision !== entry.modRevision,
    );
    if (newlyInvalid.length > 0) this.listener.onInvalid(newlyInvalid);
    this.listener.onPeers(diffViews(before, after), after);
  }
}
