// The agent: wiring, and nothing else. It opens the kernel channel and etcd, picks the external
// interface, and connects the loops through the state store:
//   config watch ─┐
//   lease lifecycle ── own lease ──► node files (subnet.env, CNI, Docker), masquerade, data plane
//   subnet watch ── peer changes ──► data plane
//   every loop ──► state store ──► /readyz, /status, metrics gauges
// It runs until its signal aborts. It never exits on bad input in etcd or an etcd outage: the loops
// report, wait and retry. A start-up problem that waiting seldom fixes (a TLS file, no matching
// interface) ends it after --startup-timeout, and so does an unexpected error: every loop stops and the
// error is thrown (the process exits non-zero for its supervisor); the data plane is left as it is.
import { IDENTITY_ORIGIN_TEXT, type NodeBackend } from "./backends/backend.js";
import {
  BACKENDS,
  backendForConfig,
  identityByBackend,
  leaseTypeOf,
  parsePeerDataByBackend,
} from "./backends/registry.js";
import { cniVersionFromPlugins } from "./cni/probe.js";
import { BLACKHOLE_ROUTE_METRIC, type AgentOptions } from "./config/agent-options.js";
import type { NetworkConfig } from "./config/network-config.js";
import type { KernelChannel } from "./dataplane/channel.js";
import { DataplaneLoop, type RoundReport } from "./dataplane/loop.js";
import { openNetlinkChannel } from "./dataplane/netlink-channel.js";
import { localRunner, type CommandRunner } from "./exec/command.js";
import { formatCidr, formatIPv4 } from "./ip/ipv4.js";
import { ConfigWatch } from "./lease/config-watch.js";
import { hasIPv4, leaseName } from "./lease/key.js";
import type { AcquireResult, OwnLease } from "./lease/keeper.js";
import type { LeaseAttrs } from "./lease/lease.js";
import { LeaseLifecycle } from "./lease/lifecycle.js";
import type { InvalidEntry, PeerEvent, PeerView, ViewContext } from "./lease/peer-view.js";
import { EtcdRegistry } from "./lease/etcd-registry.js";
import type { LeaseRegistry } from "./lease/registry.js";
import { SubnetWatch } from "./lease/subnet-watch.js";
import { MasqManager } from "./masq/iptables.js";
import { MasqLoop, type RuleWatchFactory } from "./masq/loop.js";
import { checkBrNetfilter } from "./node/br-netfilter.js";
import {
  detectExternalInterface,
  familyProblem,
  InterfaceSelectionError,
  type ExternalInterface,
} from "./node/external-interface.js";
import { NodeFilesWriter } from "./node/files.js";
import { readPreviousSubnet } from "./node/subnet-env.js";
import { thisNodeBinding } from "./node/binding.js";
import { afterRound, StateStore } from "./state.js";
import { Heartbeats, dataplaneDeadlineMs } from "./supervisor.js";
import { systemClock, type Clock } from "./util/clock.js";
import type { Logger } from "./util/log.js";
import { Backoff, stopped } from "./util/time.js";

/** What the agent counts; Metrics implements it (the agent does not import the metrics room). */
export interface AgentCounters {
  acquired?(how: AcquireResult): void;
  raceLost?(): void;
  exhausted?(): void;
  renewed?(): void;
  renewFailed?(): void;
  leaseLost?(): void;
  /** This node made a new identity (VTEP MAC): its state dir was copied, or an older lease holds it. */
  identityRenewed?(reason: "state-copied" | "conflict"): void;
  invalidSkipped?(count: number): void;
  subnetWatchBroken?(): void;
  round?(report: RoundReport): void;
  rulesChecked?(result: { readonly restored: number; readonly failed: boolean }): void;
}

/** The parts of the world the agent opens; replaceable in tests. */
export interface AgentDeps {
  readonly openChannel?: () => KernelChannel;
  readonly openRegistry?: (options: AgentOptions) => LeaseRegistry;
  readonly runner?: CommandRunner;
  readonly clock?: Clock;
  /** The state store to fill (the metrics read it); a new one by default. */
  readonly store?: StateStore;
  /** How the masquerade loop learns that rules changed (nftables notifications, legacy counters). */
  readonly ruleWatch?: RuleWatchFactory;
}

/** A start-up problem given up on after --startup-timeout: the process exits 1 with its message. */
export class StartupError extends Error {
  override name = "StartupError";
}

/** The one line an agent that stops on an error leaves: a start-up problem says itself. */
function fatalMessage(error: Error): string {
  return error instanceof StartupError
    ? error.message
    : "agent failed; stopping (the data plane is left as it is)";
}

/** Peer lists up to this size are logged peer by peer at start; larger ones as one line. */
const PEERS_LOGGED_AT_START = 100;
/** How often, at most, the node's br_netfilter setting is read again (a /proc read). */
const NODE_CHECK_MS = 30_000;
/** The masquerade full check's interval while notifications report removed rules. */
const MASQ_SAFETY_RESYNC_MS = 300_000;

/** The BackendType this node's lease carries for its config (none for udp, as flanneld's). */
function leaseBackendType(config: NetworkConfig): string | undefined {
  const plugin = backendForConfig(config.backend.type);
  return plugin === undefined ? config.backend.type : leaseTypeOf(plugin);
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/** After this long stopping, the loops not yet ended are logged. */
const STOP_WARN_MS = 5000;

export class Agent {
  readonly store: StateStore;
  readonly heartbeats: Heartbeats;
  private lifecycle: LeaseLifecycle | undefined;
  /** The data-plane loop, once wired: its userspace data path is stopped last on the way out. */
  private dataplane: DataplaneLoop | undefined;
  private readonly clock: Clock;
  private readonly runner: CommandRunner;

  constructor(
    private readonly options: AgentOptions,
    private readonly log: Logger,
    private readonly counters: AgentCounters = {},
    private readonly deps: AgentDeps = {},
  ) {
    this.store = deps.store ?? new StateStore();
    this.clock = deps.clock ?? systemClock;
    this.runner = deps.runner ?? localRunner;
    this.heartbeats = new Heartbeats(() => this.clock.now());
  }

  /**
   * Runs until `outer` aborts; resolves after a clean stop. An unexpected error in any loop stops every
   * loop (so nothing hangs half-alive) and is thrown.
   */
  async run(outer: AbortSignal): Promise<void> {
    const inner = new AbortController();
    const forward = (): void => inner.abort();
    outer.addEventListener("abort", forward, { once: true });
    const signal = inner.signal;
    const loops: Promise<void>[] = [];
    const running = new Set<string>();
    let failure: Error | undefined;
    const supervise = (name: string, loop: Promise<void>): void => {
      running.add(name);
      loops.push(
        loop
          .finally(() => running.delete(name))
          .catch((error: unknown) => {
            if (stopped(signal)) return;
            failure ??= asError(error);
            this.log.fatal({ err: failure, loop: name }, fatalMessage(failure));
            inner.abort();
          }),
      );
    };
    let channel: KernelChannel | undefined;
    let registry: LeaseRegistry | undefined;
    try {
      channel = (this.deps.openChannel ?? openNetlinkChannel)();
      supervise("node checks", this.checkNode(signal));
      await this.resumeDataPaths();
      registry = await this.openRegistry(signal);
      if (registry === undefined) return;
      registry.onProblem?.((problem) => {
        const before = this.store.current.etcdProblem;
        if (problem !== undefined && before === undefined) {
          this.log.error(
            { endpoints: problem.where, err: problem.message },
            `etcd unreachable: ${problem.message}; retrying`,
          );
        } else if (problem === undefined && before !== undefined) {
          this.log.info(
            { endpoints: before.where, since: new Date(before.since).toISOString() },
            "etcd reachable again",
          );
        }
        this.store.update({ etcdProblem: problem });
      });
      this.wire(channel, registry, signal, supervise);
      await Promise.all(loops);
    } catch (error) {
      failure ??= asError(error);
      if (!stopped(outer)) {
        this.log.fatal({ err: failure }, fatalMessage(failure));
      }
    } finally {
      inner.abort();
      outer.removeEventListener("abort", forward);
      // A loop that does not end on abort would hold the exit forever; name it.
      const slow = this.clock.setTimer(STOP_WARN_MS, () =>
        this.log.warn({ waitingFor: [...running] }, "still stopping: waiting for these loops to end"),
      );
      await Promise.all(loops);
      slow.cancel();
      await this.shutdown(registry, channel);
      // Last: udp's proxy keeps moving packets until the agent is about to exit.
      await this.dataplane?.stopUserspace();
    }
    if (failure !== undefined && !stopped(outer)) throw failure;
  }

  /**
   * Takes up, before etcd answers, what the previous agent left running in its own process (udp's
   * proxy): its packets stop while no agent runs, and this start has etcd, the lease and the first
   * round still to go. A state that cannot be used means a normal start.
   */
  private async resumeDataPaths(): Promise<void> {
    for (const plugin of BACKENDS) {
      try {
        const what = await plugin.resume?.({ stateDir: this.options.stateDir });
        if (what !== undefined)
          this.log.info({ backend: plugin.type }, `resumed ${what}, while etcd is asked`);
      } catch (error) {
        this.log.warn(
          { backend: plugin.type, err: asError(error) },
          "could not resume the previous data path",
        );
      }
    }
  }

  /** Connects the loops and starts them under `supervise`. */
  private wire(
    channel: KernelChannel,
    registry: LeaseRegistry,
    signal: AbortSignal,
    supervise: (name: string, loop: Promise<void>) => void,
  ): void {
    const { options, store, log } = this;
    const configWatch = new ConfigWatch(registry, log, (state) => store.update({ configWatch: state }));
    configWatch.onChange((state) => store.update({ config: state }));
    supervise("config watch", configWatch.run(signal));

    const dataplane = (this.dataplane = new DataplaneLoop(
      channel,
      {
        bridge: options.bridge,
        resyncIntervalMs: options.resyncIntervalSeconds * 1000,
        watchKernel: options.kernelWatch,
        blackholeMetric: options.ipBlackholeRoute ? BLACKHOLE_ROUTE_METRIC : undefined,
      },
      log,
      {
        round: (report) => {
          this.heartbeats.beat("dataplane", dataplaneDeadlineMs(options.resyncIntervalSeconds * 1000));
          store.updateDataplane((dp) => ({
            ...afterRound(dp, report, this.clock.now()),
            programmed: dataplane.programmed,
          }));
          this.counters.round?.(report);
        },
        // The loop's live map, read-only: copying 5,000 entries per peer event would cost more than the event.
        peerStates: (states) => store.updateDataplane(() => ({ peerStates: states })),
      },
      { clock: this.clock },
    ));
    const files = new NodeFilesWriter(
      {
        subnetFile: options.subnetFile,
        cniConfFile: options.cniConfFile,
        bridge: options.bridge,
        dockerOptsFile: options.dockerOptsFile,
        dockerDaemonJson: options.dockerDaemonJson,
        // Asked once, at the first lease: the first conflist waits for the answer.
        ...(options.cniConfFile === ""
          ? {}
          : { cniVersion: () => cniVersionFromPlugins(options.cniBinDirs, log, { runner: this.runner }) }),
      },
      log,
      { subnetFileWritten: (written) => store.update({ subnetFileWritten: written }) },
      this.clock,
    );
    const masq = new MasqLoop(
      new MasqManager(this.runner, log, { mode: options.iptablesMode }),
      {
        ipMasq: options.ipMasq,
        fullyRandomDisable: options.ipMasqFullyRandomDisable,
        forwardRules: options.iptablesForwardRules,
        resyncMs: options.iptablesResyncSeconds * 1000,
        safetyResyncMs: Math.max(options.iptablesResyncSeconds * 1000, MASQ_SAFETY_RESYNC_MS),
      },
      log,
      {
        chosen: (info, watch) =>
          store.updateMasq(() => ({ iptables: { command: info.command, reason: info.reason }, watch })),
        chosen6: (info) =>
          store.updateMasq(() => ({ ip6tables: { command: info.command, reason: info.reason } })),
        checked: ({ missing, error, first }) => {
          const restored = error === undefined && !first ? missing.length : 0;
          store.updateMasq((m) => ({
            restored: m.restored + restored,
            errors: m.errors + (error === undefined ? 0 : 1),
          }));
          this.counters.rulesChecked?.({ restored, failed: error !== undefined });
        },
        installed: () => store.updateMasq(() => ({ installed: true })),
        heartbeat: (withinMs) => this.heartbeats.beat("rules", withinMs),
      },
      this.deps.ruleWatch,
      this.clock,
    );

    /** Backends prepared per config (a VNI change prepares anew), ready by the time the lease is. */
    const prepared = new Map<string, NodeBackend>();
    const backendKey = (config: NetworkConfig): string =>
      JSON.stringify([
        config.backend.type,
        config.backend.options,
        config.enableIPv4,
        config.ipv6 !== undefined,
      ]);
    let external: ExternalInterface | undefined;
    let binding: string | undefined;
    /** The identity an older lease was found holding: the next preparation makes a new one. */
    let renewFrom: string | undefined;
    const attrsFor = async (config: NetworkConfig): Promise<LeaseAttrs> => {
      if (external === undefined) throw new Error("internal: lease attributes before the interface is known");
      const key = backendKey(config);
      let backend = prepared.get(key);
      const renew = renewFrom !== undefined && backend?.identity === renewFrom;
      if (backend === undefined || renew) {
        // An IPv6-only node (no IPv4 address) is bound by its IPv6 address.
        binding ??= await thisNodeBinding(
          external.publicIp === 0 && external.publicIpv6 !== undefined
            ? external.publicIpv6
            : formatIPv4(external.publicIp),
        );
        backend = await config.backend.prepare({
          families: { ipv4: config.enableIPv4, ipv6: config.ipv6 !== undefined },
          stateDir: options.stateDir,
          existingLink: async (name) => (await channel.dumpLinks()).find((link) => link.name === name),
          txChecksumOffload: options.vxlanTxChecksumOffload,
          nodeBinding: binding,
          renewIdentity: renew,
          wireguard: {
            implementation: options.wireguardImplementation,
            binary: options.wireguardGo,
            keyFile: options.wireguardKeyFile,
          },
          log,
          // The backend's identity changed on its own (a rotated WireGuard key): prepare again, re-publish.
          identityChanged: () => {
            prepared.delete(key);
            this.lifecycle?.refreshAttributes();
          },
        });
        // Only the config in use stays prepared: a config that comes back is prepared again, so a
        // backend whose state lives on (WireGuard's device: key, PSK, port) is told it again.
        prepared.clear();
        prepared.set(key, backend);
        this.reportIdentity(backend);
      }
      // As flanneld writes them: PublicIPv6 and BackendV6Data only with IPv6 on; PublicIP 0.0.0.0 and
      // no BackendData on an IPv6-only node.
      const ipv6 = config.ipv6 !== undefined;
      // A config that turned on a family this node has no address of: the agent ends with the message,
      // and its next start waits for the address (--startup-timeout) before it gives up.
      const problem = familyProblem(external, { ipv4: config.enableIPv4, ipv6 });
      if (problem !== undefined) throw new StartupError(problem);
      return {
        publicIP: config.enableIPv4 ? external.publicIp : 0,
        publicIPv6: ipv6 ? (external.publicIpv6 ?? null) : null,
        backendType: leaseBackendType(config),
        backendData: config.enableIPv4 ? backend.leaseData : undefined,
        backendV6Data: ipv6 ? backend.leaseV6Data : undefined,
      };
    };

    let subnetWatch: SubnetWatch | undefined;
    const viewContext = (own: OwnLease, config: NetworkConfig): ViewContext => ({
      prefix: registry.prefix,
      config,
      ownKey: own.key,
      ownSubnet: own.subnet,
      ownIpv6Subnet: own.ipv6Subnet,
      // One function each for the view's whole life: a new one would make the view re-parse every entry.
      parsePeerData: parsePeerDataByBackend,
      identityOf: identityByBackend,
      ownIdentity: prepared.get(backendKey(config))?.identity,
      ownCreateRevision: own.createRevision,
    });
    /**
     * A lease older than this node's claims this node's identity (a clone started later than the
     * original, or the original restarted with state copied back): by the rule both sides apply, this
     * node takes a new identity and re-publishes. The newer side of such a pair is never a peer.
     */
    const yieldIdentity = (view: PeerView): void => {
      const current = this.lifecycle?.current;
      if (current === undefined) return;
      const identity = prepared.get(backendKey(current.config))?.identity;
      if (identity === undefined || renewFrom === identity) return;
      for (const entry of view.invalid.values()) {
        if (entry.claimsOwnIdentity?.olderThanOwn !== true) continue;
        log.warn(
          { key: entry.key, identity, ownKey: current.own.key },
          `an older lease holds this node's ${identity}: making a new one and re-publishing`,
        );
        renewFrom = identity;
        this.lifecycle?.refreshAttributes();
        return;
      }
    };
    const onOwnLease = (own: OwnLease, config: NetworkConfig): void => {
      const backend = prepared.get(backendKey(config));
      if (external === undefined || backend === undefined)
        throw new Error("internal: a lease without its backend");
      store.update({
        ownLease: own,
        phase: undefined,
        backend: { type: config.backend.type, options: config.backend.options },
        userspace: backend.userspace?.status.bind(backend.userspace),
      });
      const target = {
        network: config.network,
        subnet: own.subnet,
        ipv6Network: config.ipv6?.network,
        ipv6Subnet: own.ipv6Subnet,
      };
      // The node's backend is prepared by now: a resumed data path it did not adopt is not wanted.
      for (const plugin of BACKENDS) {
        plugin
          .releaseResumed?.()
          .catch((error: unknown) =>
            log.warn({ backend: plugin.type, err: asError(error) }, "stopping a resumed data path failed"),
          );
      }
      // The data plane first: its round then starts before the rules' and files' first commands,
      // which matters for udp, whose packets wait for this round after a restart.
      dataplane.setSelf({ config, subnet: own.subnet, ipv6Subnet: own.ipv6Subnet, external, backend });
      files.set({
        ...target,
        mtu: config.backend.mtu(external, config.ipv6 !== undefined),
        ipMasq: options.ipMasq,
      });
      masq.set(target);
      if (subnetWatch === undefined) {
        subnetWatch = new SubnetWatch(
          registry,
          viewContext(own, config),
          {
            onPeers: (events, view) => {
              this.onPeers(events, view, dataplane);
              yieldIdentity(view);
            },
            onInvalid: (entries) => this.onInvalid(entries),
            onOwnKey: (entry) => this.lifecycle?.ownKeyChanged(entry),
            onWatchState: (state, reason) => this.onWatchState(state, reason),
          },
          log,
          this.clock,
        );
        supervise("subnet watch", subnetWatch.run(signal));
        supervise("data plane", dataplane.run(signal));
        supervise("node files", files.run(signal));
        supervise("masquerade", masq.run(signal));
      } else {
        subnetWatch.setContext(viewContext(own, config));
      }
    };

    supervise(
      "lease",
      (async () => {
        // The config first: it says which address families the interface must have.
        const families = await this.familiesOfFirstConfig(configWatch, signal);
        if (families === undefined) return;
        external = await this.detectInterface(signal, families);
        if (external === undefined) return;
        store.update({ external, phase: "waiting for a valid network config" });
        const previous = await readPreviousSubnet(options.subnetFile);
        if (previous) log.info({ subnet: leaseName(previous) }, "previous subnet found in the subnet file");
        const lifecycle = new LeaseLifecycle({
          registry,
          keeper: {
            publicIP: external.publicIp,
            publicIPv6: external.publicIpv6 ?? null,
            ttlSeconds: options.leaseTtlSeconds,
            renewMarginSeconds: options.renewMarginSeconds,
          },
          config: configWatch,
          attrsFor,
          previousSubnet: previous,
          log,
          clock: this.clock,
          observer: {
            acquired: (_own, how) => this.counters.acquired?.(how),
            raceLost: () => this.counters.raceLost?.(),
            exhausted: () => this.counters.exhausted?.(),
            renewed: () => this.counters.renewed?.(),
            renewFailed: () => this.counters.renewFailed?.(),
            ownLease: onOwnLease,
            leaseLost: () => {
              store.update((s) => ({ leaseLost: s.leaseLost + 1 }));
              this.counters.leaseLost?.();
            },
            phase: (reason) => store.update({ phase: reason }),
            conflict: (conflict) => store.update({ leaseConflict: conflict }),
            heartbeat: (withinMs) => this.heartbeats.beat("lease", withinMs),
          },
        });
        this.lifecycle = lifecycle;
        await lifecycle.run(signal);
      })(),
    );
  }

  /**
   * Opens the etcd client. Bad settings (an unreadable TLS file, http:// with TLS files) are logged
   * naming the flag and file or endpoint, and retried for --startup-timeout (a Secret may be mounted
   * late), then given up on. Undefined when stopped first.
   */
  private async openRegistry(signal: AbortSignal): Promise<LeaseRegistry | undefined> {
    const backoff = new Backoff(1000, 30_000);
    const giveUpAt = this.clock.now() + this.options.startupTimeoutSeconds * 1000;
    while (!stopped(signal)) {
      try {
        return (
          this.deps.openRegistry?.(this.options) ??
          new EtcdRegistry(this.options.etcd, this.options.etcd.prefix)
        );
      } catch (error) {
        this.giveUpAfterStartupTimeout(error, giveUpAt);
        this.store.update({ phase: `etcd settings: ${asError(error).message}` });
        this.log.error({ err: asError(error) }, "cannot set up the etcd client; retrying");
      }
      await this.clock.sleep(backoff.next(), signal);
    }
    return undefined;
  }

  /**
   * A start-up problem that waiting seldom fixes is retried for --startup-timeout (a Secret mounted
   * late, an interface still coming up), then ends the agent with one line: a crash loop is what
   * kubelet and systemd show, where a silently NotReady agent shows nothing.
   */
  private giveUpAfterStartupTimeout(error: unknown, giveUpAt: number): void {
    if (this.clock.now() < giveUpAt) return;
    throw new StartupError(
      `${asError(error).message}; still failing after --startup-timeout=${this.options.startupTimeoutSeconds}s, giving up: fix it and start the agent again`,
    );
  }

  /** Logs how the backend's identity came about when that is news (made anew, adopted). */
  private reportIdentity(backend: NodeBackend): void {
    const origin = backend.identityOrigin;
    if (backend.identity === undefined || origin === undefined || origin === "persisted") return;
    const fields = { identity: backend.identity, origin };
    const message = `this node's ${backend.identity}: ${IDENTITY_ORIGIN_TEXT[origin]}`;
    if (origin === "renewed" || origin === "state-copied") {
      this.log.warn(fields, message);
      this.counters.identityRenewed?.(origin === "renewed" ? "conflict" : "state-copied");
    } else this.log.info(fields, message);
  }

  /** The address families of the first valid network config; undefined when stopped first. */
  private async familiesOfFirstConfig(
    config: ConfigWatch,
    signal: AbortSignal,
  ): Promise<{ ipv4: boolean; ipv6: boolean } | undefined> {
    while (!stopped(signal)) {
      const state = config.current;
      if (state.kind === "valid")
        return { ipv4: state.config.enableIPv4, ipv6: state.config.ipv6 !== undefined };
      this.store.update({ phase: "waiting for a valid network config" });
      await new Promise<void>((resolve) => {
        const done = (): void => {
          unsubscribe();
          signal.removeEventListener("abort", done);
          resolve();
        };
        const unsubscribe = config.onChange(done);
        signal.addEventListener("abort", done, { once: true });
      });
    }
    return undefined;
  }

  /** The external interface, with an address of each family the config enables (retried until it has). */
  private async detectInterface(
    signal: AbortSignal,
    families: { readonly ipv4: boolean; readonly ipv6: boolean },
  ): Promise<ExternalInterface | undefined> {
    const backoff = new Backoff(1000, 10_000);
    const giveUpAt = this.clock.now() + this.options.startupTimeoutSeconds * 1000;
    while (!stopped(signal)) {
      try {
        const external = await detectExternalInterface(
          {
            iface: this.options.iface,
            ifaceRegex: this.options.ifaceRegex,
            publicIp: this.options.publicIp,
            publicIpv6: this.options.publicIpv6,
            ifaceCanReach: this.options.ifaceCanReach,
          },
          this.runner,
        );
        // A new IPv6 address is tentative for a moment at boot: retried like a missing interface.
        const problem = familyProblem(external, families);
        if (problem !== undefined) throw new InterfaceSelectionError(problem);
        this.log.info(
          {
            iface: external.name,
            ifaceIp: external.ifaceIp === 0 ? undefined : formatIPv4(external.ifaceIp),
            publicIP: external.publicIp === 0 ? undefined : formatIPv4(external.publicIp),
            ifaceIpv6: external.ifaceIpv6,
            publicIPv6: external.publicIpv6,
            mtu: external.mtu,
          },
          "external interface selected",
        );
        return external;
      } catch (error) {
        if (error instanceof InterfaceSelectionError) this.giveUpAfterStartupTimeout(error, giveUpAt);
        this.store.update({ phase: `no external interface: ${asError(error).message}` });
        this.log.error({ err: asError(error) }, "cannot select the external interface; retrying");
      }
      await this.clock.sleep(backoff.next(), signal);
    }
    return undefined;
  }

  /** br_netfilter at start and every resync interval (at most 30 s apart); each change is logged once. */
  private async checkNode(signal: AbortSignal): Promise<void> {
    while (!stopped(signal)) {
      const problem = await checkBrNetfilter();
      const before = this.store.current.nodeProblems[0];
      if (problem !== before) {
        if (problem !== undefined) this.log.warn({ problem }, "node problem: Services may not work");
        else this.log.info({ resolved: before }, "node problem resolved");
        this.store.update({ nodeProblems: problem === undefined ? [] : [problem] });
      }
      await this.clock.sleep(Math.min(NODE_CHECK_MS, this.options.resyncIntervalSeconds * 1000), signal);
    }
  }

  private onPeers(events: readonly PeerEvent[], view: PeerView, dataplane: DataplaneLoop): void {
    const first = this.store.current.view === undefined;
    if (first) {
      // From the first peer list on, the data plane can (and must) complete a round every resync interval.
      this.heartbeats.beat("dataplane", dataplaneDeadlineMs(this.options.resyncIntervalSeconds * 1000));
    }
    this.store.update({ view });
    if (first && events.length > PEERS_LOGGED_AT_START) {
      this.log.info({ peers: view.peers.size, invalid: view.invalid.size }, "peers listed");
    } else {
      for (const event of events) {
        this.log.info(
          {
            peer: leaseName(event.lease),
            ...(hasIPv4(event.lease.subnet) ? { publicIP: formatIPv4(event.lease.attrs.publicIP) } : {}),
            ...(event.lease.attrs.publicIPv6 === null ? {} : { publicIPv6: event.lease.attrs.publicIPv6 }),
            backend: event.lease.attrs.backendType,
          },
          `peer ${event.type}`,
        );
      }
    }
    if (first) dataplane.setPeers(view.peers);
    else {
      dataplane.setPeers(
        view.peers,
        events.map((event) => ({
          key: event.lease.key,
          lease: event.type === "removed" ? undefined : event.lease,
        })),
      );
    }
  }

  private onInvalid(entries: readonly InvalidEntry[]): void {
    for (const entry of entries) {
      this.log.warn({ key: entry.key, reason: entry.reason }, "skipping invalid subnet entry in etcd");
    }
    this.counters.invalidSkipped?.(entries.length);
  }

  private onWatchState(state: "watching" | "broken", reason: string | undefined): void {
    const before = this.store.current.subnetWatch;
    // A restart is a watch that broke, not each failed attempt to list again while etcd is away; the
    // metric and the status count the same thing, and "since" is when the state began.
    const broke = state === "broken" && before.state === "watching";
    if (broke) this.counters.subnetWatchBroken?.();
    this.store.update({
      subnetWatch: {
        state,
        since: state === before.state ? before.since : this.clock.now(),
        reason,
        restarts: before.restarts + (broke ? 1 : 0),
      },
    });
  }

  private async shutdown(
    registry: LeaseRegistry | undefined,
    channel: KernelChannel | undefined,
  ): Promise<void> {
    const own = this.store.current.ownLease;
    const lifecycle = this.lifecycle;
    if (own && this.options.releaseLeaseOnExit && lifecycle) {
      try {
        await lifecycle.release();
        this.log.info({ subnet: formatCidr(own.subnet) }, "lease released (--release-lease-on-exit)");
      } catch (error) {
        this.log.warn({ err: asError(error) }, "could not release the lease; it will expire by itself");
      }
    }
    registry?.close();
    channel?.close();
  }
}
