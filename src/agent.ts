// The agent: the one place that knows every room. It wires etcd (config, own lease, peer view) to
// the node (subnet file, interface) and runs until SIGTERM/SIGINT. It never exits on bad input or an
// etcd outage: it reports, waits and retries.
import type { AgentOptions } from "./config/agent-options.js";
import type { NetworkConfig } from "./config/network-config.js";
import { formatCidr, formatIPv4, type Subnet } from "./ip/ipv4.js";
import { ConfigWatch, type ConfigState } from "./lease/config-watch.js";
import { decodeLeaseAttrs, vxlanBackendData } from "./lease/attrs.js";
import { isCompatible } from "./lease/allocate.js";
import { LeaseKeeper, type KeeperObserver, type OwnLease } from "./lease/keeper.js";
import type { LeaseAttrs } from "./lease/lease.js";
import type { InvalidEntry, PeerEvent, PeerView, RawEntry } from "./lease/peer-view.js";
import { EtcdRegistry } from "./lease/registry.js";
import { SubnetWatch } from "./lease/subnet-watch.js";
import { Dataplane, type DataplaneObserver } from "./dataplane/controller.js";
import { localRunner, type CommandRunner } from "./dataplane/kernel/runner.js";
import { readLink } from "./dataplane/kernel/read.js";
import { backendMtu, vxlanDeviceName } from "./dataplane/backends.js";
import { MasqManager } from "./masq/iptables.js";
import { checkBrNetfilter } from "./node/br-netfilter.js";
import { forwardRules, masqRules, type RuleSet } from "./masq/rules.js";
import { Heartbeats, dataplaneDeadlineMs } from "./metrics/server.js";
import { detectExternalInterface, type ExternalInterface } from "./node/external-interface.js";
import { loadOrCreateVtepMac } from "./node/state-store.js";
import { formatSubnetEnv, readPreviousSubnet, writeFileAtomic } from "./node/subnet-env.js";
import { updateNodeFiles } from "./cni/node-files.js";
import type { Logger } from "./util/log.js";
import { errorMessage } from "./util/log.js";
import { Backoff, Wakeup, sleep, stopped } from "./util/time.js";

/** What the agent knows right now; read by status, health and metrics. */
export interface AgentStatus {
  config: ConfigState;
  external: ExternalInterface | undefined;
  ownLease: OwnLease | undefined;
  subnetFileWritten: boolean;
  view: PeerView | undefined;
  /** The iptables command the rules go through and why, once chosen (see masq/backend-choice.ts). */
  iptables: { command: string; reason: string } | undefined;
  /** Problems with the node that twill cannot fix and does not stop for (e.g. br_netfilter missing). */
  nodeProblems: string[];
  /** Why the agent is not ready, empty when ready. */
  notReady: string[];
}

/** Hooks for the rooms that consume the lease room (data plane, metrics); all optional. */
export interface AgentHooks extends KeeperObserver, DataplaneObserver {
  /** A masquerade/forward rules check: what was missing and restored, or the error. */
  rulesChecked?(result: { missing: string[]; error: string | undefined }): void;
  peers?(events: PeerEvent[], view: PeerView): void;
  invalid?(entries: InvalidEntry[]): void;
  ownLeaseChanged?(own: OwnLease, config: NetworkConfig, external: ExternalInterface): void;
  watchState?(state: "watching" | "broken", reason?: string): void;
  /** The network config key's watch: established, or etcd could not be read. */
  configWatchState?(state: "watching" | "broken"): void;
  /** The own lease was lost (deleted, expired or overwritten in etcd) and is being re-acquired. */
  leaseLost?(reason: string): void;
}

/** Slack for the lease loop's heartbeat beyond its planned wake-up: one renewal call and its retry wait. */
const LEASE_LOOP_SLACK_MS = 120_000;

/** The status of an agent that has only just started. */
export function initialAgentStatus(): AgentStatus {
  return {
    config: { kind: "unknown" },
    external: undefined,
    ownLease: undefined,
    subnetFileWritten: false,
    view: undefined,
    iptables: undefined,
    nodeProblems: [],
    notReady: ["starting"],
  };
}

export class Agent {
  readonly status: AgentStatus = initialAgentStatus();
  private registry: EtcdRegistry | undefined;
  private keeper: LeaseKeeper | undefined;
  private readonly ownKeyChanged = new Wakeup();
  private lastOwnKeyEntry: RawEntry | undefined | null = null;
  private vtepMac: string | undefined;
  private phase: string | undefined = "starting";
  private subnetFileContent: string | undefined;
  readonly dataplane: Dataplane;
  /** Liveness: the loops beat here, /healthz reads it. */
  readonly heartbeats = new Heartbeats();
  private readonly masq: MasqManager;
  private rulesFor: { network: Subnet; subnet: Subnet } | undefined;
  private rulesInstalled = false;

  constructor(
    private readonly options: AgentOptions,
    private readonly log: Logger,
    private readonly hooks: AgentHooks = {},
    private readonly runner: CommandRunner = localRunner,
  ) {
    this.masq = new MasqManager(runner, log, { mode: options.iptablesMode });
    this.dataplane = new Dataplane(
      runner,
      {
        bridge: options.bridge,
        resyncIntervalMs: options.resyncIntervalSeconds * 1000,
        watchKernel: options.kernelWatch,
        vxlanTxChecksumOffload: options.vxlanTxChecksumOffload,
      },
      log,
      {
        round: (report) => {
          this.heartbeats.beat("dataplane", dataplaneDeadlineMs(options.resyncIntervalSeconds * 1000));
          hooks.round?.(report);
          this.refreshReadiness();
        },
        peerStates: (states) => hooks.peerStates?.(states),
      },
    );
  }

  /**
   * Runs until `outer` aborts; resolves after a clean stop. An unexpected error stops every loop
   * (so nothing hangs half-alive) and is thrown: the process exits non-zero for its supervisor, and the
   * data plane stays as it is.
   */
  async run(outer: AbortSignal): Promise<void> {
    const inner = new AbortController();
    const forward = (): void => inner.abort();
    outer.addEventListener("abort", forward, { once: true });
    const signal = inner.signal;
    const background: Promise<void>[] = [];
    try {
      background.push(this.watchNode(signal));
      const registry = await this.openRegistry(signal);
      this.registry = registry;
      const configWatch = new ConfigWatch(registry, this.log, (state) =>
        this.hooks.configWatchState?.(state),
      );
      configWatch.onChange((state) => {
        this.status.config = state;
        this.refreshReadiness();
      });
      background.push(configWatch.run(signal));

      const external = await this.detectInterface(signal);
      this.status.external = external;
      this.setNotReady("waiting for a valid network config");
      let config = await configWatch.waitForValid(signal);
      const keeper = new LeaseKeeper(
        registry,
        {
          publicIP: external.publicIp,
          ttlSeconds: this.options.leaseTtlSeconds,
          renewMarginSeconds: this.options.renewMarginSeconds,
        },
        this.log,
        this.hooks,
      );
      this.keeper = keeper;
      let attrs = await this.leaseAttrs(config, external);
      const previous = await readPreviousSubnet(this.options.subnetFile);
      if (previous)
        this.log.info({ subnet: formatCidr(previous) }, "previous subnet found in the subnet file");
      this.setNotReady("acquiring a subnet lease");
      let own = await keeper.acquire(config, attrs, previous, signal);
      await this.adopt(own, config, external);
      background.push(this.dataplane.run(signal));
      background.push(this.keepRules(signal));

      const watch = new SubnetWatch(
        registry,
        { prefix: registry.prefix, config, ownKey: own.key, ownSubnet: own.subnet },
        {
          onPeers: (events, view) => this.onPeers(events, view),
          onInvalid: (entries) => this.onInvalid(entries),
          onOwnKey: (entry) => {
            this.lastOwnKeyEntry = entry;
            this.ownKeyChanged.wake();
          },
          onWatchState: (state, reason) => this.hooks.watchState?.(state, reason),
        },
        this.log,
      );
      background.push(watch.run(signal));

      // A later valid config is applied in full below: lease attributes, subnet file, data plane,
      // rules; one the own lease no longer fits makes the agent move to another subnet.
      const pending = { configChanged: false };
      configWatch.onChange((state) => {
        if (state.kind === "valid" && JSON.stringify(state.config) !== JSON.stringify(config)) {
          config = state.config;
          pending.configChanged = true;
          this.ownKeyChanged.wake();
        }
      });

      // The keeping loop: renew before expiry, re-acquire when the own key is lost.
      while (!stopped(signal)) {
        const renewAt = keeper.renewAt(own);
        // A reservation is never renewed: nothing to be late for.
        this.heartbeats.beat(
          "lease",
          renewAt === Infinity
            ? Infinity
            : Math.max(0, renewAt - Date.now()) + keeper.renewRetryMs() + LEASE_LOOP_SLACK_MS,
        );
        // A subnet file that could not be written is retried every few seconds.
        const untilRenew = Math.max(0, Math.min(renewAt - Date.now(), 2 ** 31 - 1));
        await this.ownKeyChanged.wait(
          this.status.subnetFileWritten ? untilRenew : Math.min(untilRenew, 5000),
          signal,
        );
        if (stopped(signal)) break;
        if (!this.status.subnetFileWritten) await this.writeSubnetFile(own.subnet, config, external);
        let lost = false;
        let reapply = false;
        if (pending.configChanged) {
          pending.configChanged = false;
          if (isCompatible(own.subnet, config)) {
            this.log.info({ subnet: formatCidr(own.subnet) }, "network config changed; applying it");
            reapply = true;
          } else {
            this.log.warn(
              { subnet: formatCidr(own.subnet) },
              "the own lease no longer fits the network config; re-acquiring",
            );
            lost = true;
          }
        }
        const entry = this.lastOwnKeyEntry;
        this.lastOwnKeyEntry = null;
        if (!lost && entry !== null) lost = this.ownKeyLost(own, entry, (updated) => (own = updated));
        if (!lost && Date.now() >= keeper.renewAt(own)) {
          try {
            const renewed = await keeper.renew(own);
            if (renewed === "lost") {
              this.hooks.leaseLost?.("changed in etcd before renewal");
              lost = true;
            } else {
              own = renewed;
              this.status.ownLease = own;
              this.log.info(
                { subnet: formatCidr(own.subnet), expiresAt: new Date(own.expiresAt).toISOString() },
                "lease renewed",
              );
            }
          } catch (error) {
            this.hooks.renewFailed?.(errorMessage(error));
            this.log.warn(
              { err: errorMessage(error), subnet: formatCidr(own.subnet) },
              "lease renewal failed; retrying",
            );
            if (Date.now() >= own.expiresAt) {
              this.hooks.leaseLost?.("expired while renewals failed");
              lost = true;
            } else await sleep(keeper.renewRetryMs(), signal);
          }
        }
        if ((lost || reapply) && !stopped(signal)) {
          if (lost) this.setNotReady("re-acquiring the subnet lease");
          // Acquiring waits out etcd outages by design; liveness must not restart it for that.
          this.heartbeats.beat("lease", Infinity);
          attrs = await this.leaseAttrs(config, external);
          // A compatible lease for our address is reused: same subnet, new attributes (e.g. a VNI).
          own = await keeper.acquire(config, attrs, own.subnet, signal);
          await this.adopt(own, config, external);
          watch.setContext({ prefix: registry.prefix, config, ownKey: own.key, ownSubnet: own.subnet });
        }
      }
    } catch (error) {
      if (!stopped(outer)) {
        this.log.fatal(
          { err: errorMessage(error) },
          "agent failed; stopping (the data plane is left as it is)",
        );
        throw error;
      }
    } finally {
      // On an error, end the background loops too; on a normal stop they are ending already.
      inner.abort();
      outer.removeEventListener("abort", forward);
      await Promise.allSettled(background);
      await this.shutdown();
    }
  }

  /**
   * Opens the etcd client. Bad settings (an unreadable TLS file, http:// with TLS files) are logged
   * naming the flag and file or endpoint, and retried: a Secret or file may appear later, and a
   * crash loop would tell the operator less.
   */
  private async openRegistry(signal: AbortSignal): Promise<EtcdRegistry> {
    const backoff = new Backoff(1000, 30_000);
    for (;;) {
      try {
        return new EtcdRegistry(this.options.etcd, this.options.etcd.prefix);
      } catch (error) {
        this.setNotReady(`etcd settings: ${errorMessage(error)}`);
        this.log.error({ err: errorMessage(error) }, "cannot set up the etcd client; retrying");
      }
      await sleep(backoff.next(), signal);
      if (stopped(signal)) throw new Error("stopped before etcd was reachable");
    }
  }

  /** Decides whether a change of the own key means the lease is lost; adopts harmless rewrites. */
  private ownKeyLost(own: OwnLease, entry: RawEntry | undefined, update: (own: OwnLease) => void): boolean {
    if (entry === undefined) {
      this.log.warn({ key: own.key }, "own lease disappeared from etcd (deleted or expired); re-acquiring");
      this.hooks.leaseLost?.("deleted or expired in etcd");
      return true;
    }
    if (entry.modRevision === own.modRevision) return false;
    let publicIP: number | undefined;
    try {
      publicIP = decodeLeaseAttrs(entry.value).publicIP;
    } catch {
      publicIP = undefined;
    }
    if (publicIP !== this.status.external?.publicIp) {
      this.log.warn({ key: own.key }, "own lease was overwritten by another node; acquiring another subnet");
      this.hooks.leaseLost?.("overwritten by another node");
      return true;
    }
    // Rewritten with our own address (an operator re-put it, or made it a reservation): adopt it.
    const adopted: OwnLease = {
      ...own,
      leaseId: entry.etcdLeaseId,
      modRevision: entry.modRevision,
      expiresAt: entry.etcdLeaseId === "0" ? Infinity : own.expiresAt,
    };
    update(adopted);
    this.status.ownLease = adopted;
    return false;
  }

  /** Checks the node's br_netfilter setting at start and every resync interval; logs each change. */
  private async watchNode(signal: AbortSignal): Promise<void> {
    while (!stopped(signal)) {
      const problem = await checkBrNetfilter(this.runner);
      const before = this.status.nodeProblems[0];
      if (problem !== before) {
        if (problem !== undefined) this.log.warn({ problem }, "node problem: Services may not work");
        else this.log.info({ resolved: before }, "node problem resolved");
        this.status.nodeProblems = problem === undefined ? [] : [problem];
      }
      await sleep(this.options.resyncIntervalSeconds * 1000, signal);
    }
  }

  private async detectInterface(signal: AbortSignal): Promise<ExternalInterface> {
    const backoff = new Backoff(1000, 10_000);
    while (!stopped(signal)) {
      try {
        const external = await detectExternalInterface({
          iface: this.options.iface,
          ifaceRegex: this.options.ifaceRegex,
          publicIp: this.options.publicIp,
        });
        this.log.info(
          {
            iface: external.name,
            ifaceIp: formatIPv4(external.ifaceIp),
            publicIP: formatIPv4(external.publicIp),
            mtu: external.mtu,
          },
          "external interface selected",
        );
        return external;
      } catch (error) {
        this.setNotReady(`no external interface: ${errorMessage(error)}`);
        this.log.error({ err: errorMessage(error) }, "cannot select the external interface; retrying");
      }
      await sleep(backoff.next(), signal);
    }
    throw new Error("stopped");
  }

  private async leaseAttrs(config: NetworkConfig, external: ExternalInterface): Promise<LeaseAttrs> {
    const base = { publicIP: external.publicIp, publicIPv6: null, backendV6Data: undefined };
    if (config.backend.type === "host-gw") return { ...base, backendType: "host-gw", backendData: undefined };
    const existing = await readLink(this.runner, vxlanDeviceName(config.backend.vni)).catch(() => undefined);
    const mac = await loadOrCreateVtepMac(this.options.stateDir, config.backend.vni, existing?.mac);
    this.vtepMac = mac;
    return { ...base, backendType: "vxlan", backendData: vxlanBackendData(config.backend.vni, mac) };
  }

  private async adopt(own: OwnLease, config: NetworkConfig, external: ExternalInterface): Promise<void> {
    this.phase = undefined;
    this.status.ownLease = own;
    this.hooks.ownLeaseChanged?.(own, config, external);
    this.dataplane.setSelf({ config, subnet: own.subnet, external, vtepMac: this.vtepMac });
    this.rulesFor = { network: config.network, subnet: own.subnet };
    await this.writeSubnetFile(own.subnet, config, external);
    await this.writeNodeFiles(own.subnet, config, external);
    this.refreshReadiness();
  }

  /** Writes subnet.env when its content changed (or the last write failed); never throws. */
  private async writeSubnetFile(
    subnet: Subnet,
    config: NetworkConfig,
    external: ExternalInterface,
  ): Promise<void> {
    try {
      const content = formatSubnetEnv({
        network: config.network,
        subnet,
        mtu: backendMtu(config, external),
        ipMasq: this.options.ipMasq,
      });
      if (this.status.subnetFileWritten && content === this.subnetFileContent) return;
      await writeFileAtomic(this.options.subnetFile, content);
      this.subnetFileContent = content;
      this.status.subnetFileWritten = true;
      this.log.info({ path: this.options.subnetFile, subnet: formatCidr(subnet) }, "subnet file written");
    } catch (error) {
      this.status.subnetFileWritten = false;
      this.log.error(
        { err: errorMessage(error), path: this.options.subnetFile },
        "cannot write the subnet file; retrying",
      );
    }
    this.refreshReadiness();
  }

  /**
   * The CNI conflist and the Docker files: compared with what is on disk and replaced atomically only
   * when different, so a restart with the same lease touches nothing and runtimes watching the files
   * see a change only for a real one. A failure is logged; the other files are still written.
   */
  private async writeNodeFiles(
    subnet: Subnet,
    config: NetworkConfig,
    external: ExternalInterface,
  ): Promise<void> {
    const reports = await updateNodeFiles(
      { network: config.network, subnet, mtu: backendMtu(config, external), ipMasq: this.options.ipMasq },
      {
        cniConfFile: this.options.cniConfFile,
        bridge: this.options.bridge,
        dockerOptsFile: this.options.dockerOptsFile,
        dockerDaemonJson: this.options.dockerDaemonJson,
      },
    );
    for (const report of reports) {
      if (report.error !== undefined) {
        this.log.error(
          { err: report.error, path: report.path, file: report.kind },
          "cannot write a node file",
        );
      } else {
        this.log.info(
          { path: report.path, file: report.kind, subnet: formatCidr(subnet) },
          `node file ${report.outcome ?? ""}`,
        );
      }
    }
  }

  /**
   * Masquerade (--ip-masq) and forward (--iptables-forward-rules) rules: installed at once and checked
   * every --iptables-resync seconds; anything missing is restored, nothing else is touched.
   */
  private async keepRules(signal: AbortSignal): Promise<void> {
    if (!this.options.ipMasq && !this.options.iptablesForwardRules) {
      this.rulesInstalled = true;
      return;
    }
    while (!stopped(signal)) {
      // Generous: iptables-save and the xtables lock can be slow on a node full of kube-proxy rules.
      this.heartbeats.beat("rules", 3 * this.options.iptablesResyncSeconds * 1000 + 120_000);
      const target = this.rulesFor;
      if (target) {
        try {
          const { randomFully, command, reason, version, backend } = await this.masq.info();
          if (this.status.iptables === undefined) {
            this.status.iptables = { command, reason };
            this.log.info({ command, reason, version, backend }, "iptables backend chosen");
          }
          const sets: RuleSet[] = [];
          if (this.options.ipMasq) {
            sets.push(
              masqRules(target.network, target.subnet, {
                randomFully: randomFully && !this.options.ipMasqFullyRandomDisable,
              }),
            );
          }
          if (this.options.iptablesForwardRules) sets.push(forwardRules(target.network));
          const result = await this.masq.ensure(sets);
          if (result.changed && this.rulesInstalled) {
            this.log.warn({ missing: result.missing }, "masquerade/forward rules were missing; restored");
          }
          this.rulesInstalled = true;
          this.hooks.rulesChecked?.({ missing: result.missing, error: undefined });
          this.refreshReadiness();
        } catch (error) {
          this.log.error({ err: errorMessage(error) }, "cannot install masquerade/forward rules; retrying");
          this.hooks.rulesChecked?.({ missing: [], error: errorMessage(error) });
        }
      }
      await sleep(this.options.iptablesResyncSeconds * 1000, signal);
    }
  }

  private onPeers(events: PeerEvent[], view: PeerView): void {
    // From the first peer list on, the data plane can (and must) complete a round every resync
    // interval; before it, rounds have nothing to work on and do not report.
    if (this.status.view === undefined) {
      this.heartbeats.beat("dataplane", dataplaneDeadlineMs(this.options.resyncIntervalSeconds * 1000));
    }
    this.status.view = view;
    for (const event of events) {
      this.log.info(
        {
          peer: formatCidr(event.lease.subnet),
          publicIP: formatIPv4(event.lease.attrs.publicIP),
          backend: event.lease.attrs.backendType,
        },
        `peer ${event.type}`,
      );
    }
    this.hooks.peers?.(events, view);
    this.dataplane.setPeers(view.peers.values());
    this.refreshReadiness();
  }

  private onInvalid(entries: InvalidEntry[]): void {
    for (const entry of entries) {
      this.log.warn({ key: entry.key, reason: entry.reason }, "skipping invalid subnet entry in etcd");
    }
    this.hooks.invalid?.(entries);
  }

  /** What the agent is doing while not yet (or no longer) ready; shown first among the reasons. */
  private setNotReady(phase: string | undefined): void {
    this.phase = phase;
    this.refreshReadiness();
  }

  /** Readiness is always recomputed from the state, so no step can hide another's reason. */
  private refreshReadiness(): void {
    const reasons: string[] = this.phase === undefined ? [] : [this.phase];
    const config = this.status.config;
    if (config.kind === "missing") reasons.push(`no network config at ${config.key}`);
    if (config.kind === "invalid") reasons.push(`invalid network config: ${config.message}`);
    if (!this.status.ownLease) reasons.push("no subnet lease yet");
    if (!this.status.subnetFileWritten) reasons.push("subnet file not written");
    if (this.status.view === undefined) reasons.push("peer view not synced");
    if (!this.dataplane.programmed) reasons.push("data plane not programmed yet");
    if (!this.rulesInstalled) reasons.push("masquerade/forward rules not installed yet");
    this.status.notReady = reasons;
  }

  private async shutdown(): Promise<void> {
    const own = this.status.ownLease;
    if (own && this.options.releaseLeaseOnExit && this.keeper) {
      try {
        await this.keeper.release(own);
        this.log.info({ subnet: formatCidr(own.subnet) }, "lease released (--release-lease-on-exit)");
      } catch (error) {
        this.log.warn({ err: errorMessage(error) }, "could not release the lease; it will expire by itself");
      }
    }
    this.registry?.close();
  }
}
