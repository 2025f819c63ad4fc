// The live peer view: list every subnet key, then watch from the next revision. The raw entries are
// the source of truth. A watch batch updates the view looking at the changed entries only (see
// LivePeerView); a compaction, a broken watch or an etcd restart is handled by one path — re-list and
// diff — which delivers exactly the difference: no event lost, none duplicated.
import type { Clock } from "../util/clock.js";
import { systemClock } from "../util/clock.js";
import type { Logger } from "../util/log.js";
import { Backoff, raceAbort, stopped } from "../util/time.js";
import {
  LivePeerView,
  type InvalidEntry,
  type PeerEvent,
  type PeerView,
  type RawEntry,
  type ViewContext,
  type ViewUpdate,
} from "./peer-view.js";
import { storeErrorMessage, type LeaseRegistry, type WatchChange, type WatchHandle } from "./registry.js";

export interface SubnetWatchListener {
  /**
   * Peer changes after a batch (possibly empty when only invalid entries or the own key moved).
   * `view` is the live view: the same object every time, updated in place.
   */
  onPeers(events: PeerEvent[], view: PeerView): void;
  /** Entries that became invalid (or changed while invalid) in this batch, to warn about once. */
  onInvalid(entries: InvalidEntry[]): void;
  /** The node's own key as etcd now has it (undefined = deleted), whenever it changed. */
  onOwnKey(entry: RawEntry | undefined): void;
  /** Watch lifecycle, for metrics: "watching" after every (re)list, "broken" with the reason. */
  onWatchState?(state: "watching" | "broken", reason?: string): void;
}

export class SubnetWatch {
  private readonly live: LivePeerView;
  private watch: WatchHandle | undefined;
  private synced = false;

  constructor(
    private readonly registry: LeaseRegistry,
    context: ViewContext,
    private readonly listener: SubnetWatchListener,
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
  ) {
    this.live = new LivePeerView(context);
  }

  /** New own subnet or config: recompute and deliver the difference at once (nothing if it is equal). */
  setContext(context: ViewContext): void {
    if (sameContext(this.live.context, context)) return;
    const update = this.live.setContext(context);
    if (this.synced) this.deliver(update);
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
        this.listener.onWatchState?.("broken", storeErrorMessage(error));
      }
      await this.clock.sleep(backoff.next(), signal);
    }
  }

  private replaceAll(entries: readonly RawEntry[]): void {
    const ownKey = this.live.context.ownKey;
    const ownBefore = ownKey === undefined ? undefined : this.live.entry(ownKey);
    // The first list always reports the own key: one deleted between acquisition and this list is
    // absent both before and after, and no watch event will ever carry its deletion.
    const firstList = !this.synced;
    const update = this.live.replaceAll(entries);
    this.synced = true;
    this.deliver(update);
    if (ownKey !== undefined) {
      const ownAfter = this.live.entry(ownKey);
      if (firstList || ownBefore?.modRevision !== ownAfter?.modRevision) this.listener.onOwnKey(ownAfter);
    }
  }

  private apply(changes: readonly WatchChange[]): void {
    const ownKey = this.live.context.ownKey;
    const ownChanged = changes.some((c) => (c.type === "put" ? c.entry.key : c.key) === ownKey);
    this.deliver(this.live.apply(changes));
    if (ownChanged && ownKey !== undefined) this.listener.onOwnKey(this.live.entry(ownKey));
  }

  private deliver(update: ViewUpdate): void {
    if (update.newlyInvalid.length > 0) this.listener.onInvalid(update.newlyInvalid);
    this.listener.onPeers(update.events, this.live.view);
  }
}

function sameContext(a: ViewContext, b: ViewContext): boolean {
  return (
    a.prefix === b.prefix &&
    a.config === b.config &&
    a.ownKey === b.ownKey &&
    a.ownSubnet?.ip === b.ownSubnet?.ip &&
    a.ownSubnet?.prefixLen === b.ownSubnet?.prefixLen &&
    a.ownIpv6Subnet?.ip === b.ownIpv6Subnet?.ip &&
    a.ownIpv6Subnet?.prefixLen === b.ownIpv6Subnet?.prefixLen &&
    a.parsePeerData === b.parsePeerData &&
    a.identityOf === b.identityOf &&
    a.ownIdentity === b.ownIdentity &&
    a.ownCreateRevision === b.ownCreateRevision
  );
}
