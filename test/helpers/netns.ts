// A test cluster made of network namespaces (see design.md, "Test topology"):
//
//   switch "tw-<tag>-sw": bridge br-ul 198.18.0.254/24 (etcd listens here), bridge br-rm (remote segment, no
//                         address: it only switches)
//   host i  "tw-<tag>-h<i>": eth0 198.18.0.i/24 (veth to br-ul), default via 198.18.0.254, ip_forward=1
//   router  "tw-<tag>-rt":   eth0 198.18.0.253/24 on br-ul, eth1 198.19.0.254/24 on br-rm, ip_forward=1
//   remote host i:           eth0 198.19.0.i/24 on br-rm, default via 198.19.0.254
//   pod     "tw-<tag>-h<i>-<name>": eth0 (veth), peer end attached to a bridge in its host namespace
//
// With createUnderlay({ ipv6: "dual-stack" }) the underlay is dual-stack, in the documentation prefix
// 2001:db8::/32 (RFC 3849): br-ul also has 2001:db8:18::fe/64, host i's eth0 also 2001:db8:18::i/64 with
// a second default route via 2001:db8:18::fe, the router 2001:db8:18::fd and 2001:db8:19::fe, remote
// host i 2001:db8:19::i/64 (i in hex, so host 10 is ::a). Every address is added `nodad`: usable at once,
// no duplicate address detection delay. etcd stays on 198.18.0.254.
// With { ipv6: "ipv6-only" } hosts get only the IPv6 address on eth0 (and only the IPv6 default route),
// and etcd listens on [2001:db8:18::fe]: a truly IPv6-only underlay, so an IPv6-only agent has to find
// its address and reach etcd over IPv6 alone. (The switch and the router keep their IPv4 addresses; no
// host can use them.) IPv6 forwarding is switched on here only in the router; on a host it is the
// agent's job (the tests check that it does it), while ip_forward=1 stays as for IPv4-only underlays.
// Both IPv6 modes turn off multicast snooping on the switch's bridges, so neighbour discovery's
// multicast is flooded like ARP's broadcast whatever MLD reports the bridge has seen.
//
// Nothing here touches the root namespace: every link is created with `ip -n <ns>`, every sysctl is written
// from inside a namespace. destroy() ends tracked processes by PID and deletes every namespace it made.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { execa } from "execa";
import { netnsRunner, type CommandRunner } from "../../src/exec/command.js";
import { startEtcd, type EtcdServer, type EtcdTls } from "./etcd.js";
import { startProcess, waitFor, type Started } from "./processes.js";

export const UNDERLAY_GATEWAY = "198.18.0.254";
export const ROUTER_LOCAL = "198.18.0.253";
export const REMOTE_GATEWAY = "198.19.0.254";
export const LOCAL_SEGMENT = "198.18.0.0/24";
export const REMOTE_SEGMENT = "198.19.0.0/24";
export const UNDERLAY_GATEWAY6 = "2001:db8:18::fe";
export const ROUTER_LOCAL6 = "2001:db8:18::fd";
export const REMOTE_GATEWAY6 = "2001:db8:19::fe";
export const LOCAL_SEGMENT6 = "2001:db8:18::/64";
export const REMOTE_SEGMENT6 = "2001:db8:19::/64";

/** The underlay's address families: IPv4 only (the default), dual-stack, or IPv6 only on the hosts. */
export type UnderlayFamilies = "ipv4" | "dual-stack" | "ipv6-only";

/** Host i's IPv6 underlay address on a segment: 2001:db8:18::<i in hex> (local) or 2001:db8:19::… */
export function hostAddress6(index: number, segment: "local" | "remote" = "local"): string {
  return `2001:db8:${segment === "remote" ? "19" : "18"}::${index.toString(16)}`;
}
// Fixed bridge MACs: a bridge without one takes its lowest port's MAC, so adding a host could change the
// MAC of 198.18.0.254 under the other hosts' still-REACHABLE ARP entries, cutting them off from etcd for
// up to a minute (frames to a port's MAC are not delivered to the bridge's own IP stack).
const UNDERLAY_BRIDGE_MAC = "02:74:77:00:00:fe";
const REMOTE_BRIDGE_MAC = "02:74:77:00:01:fe";

export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number;
}

export interface Host {
  /** Namespace name, e.g. "tw-1a2b3-h1". */
  readonly ns: string;
  readonly index: number;
  readonly segment: "local" | "remote";
  /**
   * Underlay address without prefix, e.g. "198.18.0.1": the IPv4 one, or on an IPv6-only underlay the
   * IPv6 one (then equal to address6).
   */
  readonly address: string;
  /** IPv6 underlay address without prefix (e.g. "2001:db8:18::1"), on a dual-stack or IPv6-only underlay. */
  readonly address6?: string;
  /** Underlay interface inside the namespace: always "eth0". */
  readonly dev: "eth0";
  /** Runs kernel commands inside this host (for src/dataplane/kernel). */
  readonly runner: CommandRunner;
}

export interface Pod {
  readonly ns: string;
  readonly name: string;
  readonly host: Host;
  /** Address without prefix, e.g. "10.244.5.2". */
  readonly address: string;
  /** Address with prefix as given, e.g. "10.244.5.2/24". */
  readonly cidr: string;
  /**
   * The pod's IPv6 address without prefix (e.g. "fd00:10:244:5::2"), when it has one. On an IPv6-only
   * pod `address` and `cidr` hold the IPv6 address too.
   */
  readonly address6?: string;
  /** The IPv6 address with its prefix, e.g. "fd00:10:244:5::2/64". */
  readonly cidr6?: string;
  /** Host-side veth name (attached to the bridge). */
  readonly hostVeth: string;
}

export interface PodOptions {
  /** Bridge in the host namespace to attach to, e.g. "cni0". */
  readonly bridge: string;
  readonly address: string;
  readonly gateway: string;
  /** A second, IPv6 address with prefix (e.g. "fd00:10:244:5::2/64"), added `nodad`. */
  readonly address6?: string;
  /** The IPv6 default gateway; given with address6. */
  readonly gateway6?: string;
  readonly mtu?: number;
  /** How long to wait for the bridge to appear (it may be created by the agent); default 20 s. */
  readonly bridgeTimeoutMs?: number;
}

export interface PingOptions {
  readonly count?: number;
  /** ICMP payload size in bytes (ping -s). */
  readonly size?: number;
  /** Set DF and forbid local fragmentation (ping -M do). */
  readonly dontFragment?: boolean;
  /** Seconds to wait for each reply; default 1. */
  readonly waitSeconds?: number;
  /** ping -4 or -6; default: the family of the target address. */
  readonly family?: 4 | 6;
}

export interface PingResult {
  /** At least one reply came back. */
  readonly ok: boolean;
  readonly transmitted: number;
  readonly received: number;
  readonly output: string;
}

export interface Cluster {
  readonly tag: string;
  readonly switchNs: string;
  readonly hosts: ReadonlyMap<number, Host>;
  /** The underlay's families, as given to createUnderlay. */
  readonly families: UnderlayFamilies;
  addHost(index: number, options?: { segment?: "local" | "remote" }): Promise<Host>;
  /** Adds the router and the 198.19.0.0/24 segment (and 2001:db8:19::/64 with IPv6); idempotent. */
  addRemoteSegment(): Promise<{ ns: string }>;
  addPod(host: Host, name: string, options: PodOptions): Promise<Pod>;
  /** Runs `argv` inside `ns`; never throws on a non-zero exit. */
  exec(ns: string, argv: readonly string[], input?: string): Promise<ExecResult>;
  /** Like exec, but throws with the command's stderr when it fails. */
  run(ns: string, argv: readonly string[], input?: string): Promise<string>;
  ping(fromNs: string, toIp: string, options?: PingOptions): Promise<PingResult>;
  /** A long-running process inside `ns`, ended by its PID on destroy(). */
  spawn(ns: string, command: string, args: readonly string[], env?: NodeJS.ProcessEnv): Started;
  /**
   * etcd inside the switch namespace on 198.18.0.254 (on [2001:db8:18::fe] on an IPv6-only underlay),
   * destroyed with the cluster.
   */
  startEtcd(options?: { tls?: EtcdTls }): Promise<EtcdServer>;
  /** Ends tracked processes by PID and deletes every namespace made; idempotent, never throws. */
  /** Takes a namespace made elsewhere (e.g. a CNI pod's) into teardown, so it goes with the cluster. */
  trackNamespace(name: string): void;
  destroy(): Promise<void>;
}

/** Clusters not yet destroyed, for the last-resort exit hook below. */
const live = new Set<{ namespaces: string[]; pids: () => number[] }>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort only (a worker killed mid-test); every test must still destroy() in afterAll/afterEach.
  process.on("exit", () => {
    for (const cluster of live) {
      for (const pid of cluster.pids()) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      for (const ns of [...cluster.namespaces].reverse()) {
        try {
          execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
        } catch {
          // already gone
        }
      }
    }
  });
}

/** A fresh run tag (5 lowercase hex digits): names are `tw-<tag>-…`. */
export function randomTag(): string {
  return randomBytes(3).toString("hex").slice(0, 5);
}

async function exec(ns: string, argv: readonly string[], input?: string): Promise<ExecResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error("exec: empty command");
  const result = await execa("ip", ["netns", "exec", ns, cmd, ...args], {
    reject: false,
    ...(input === undefined ? { stdin: "ignore" as const } : { input }),
  });
  const exitCode = result.exitCode ?? -1;
  const stderr =
    result.exitCode === undefined ? `${result.stderr}\n${result.shortMessage ?? ""}` : result.stderr;
  return { stdout: result.stdout, stderr, exitCode };
}

/** `ip <args>` in the root mount/net context; only ever used with `-n <ns>` or `netns add/del`. */
async function ip(args: readonly string[]): Promise<void> {
  const result = await execa("ip", args, { reject: false, stdin: "ignore" });
  if (result.exitCode !== 0)
    throw new Error(`ip ${args.join(" ")} failed: ${result.stderr || result.shortMessage}`);
}

/** An address's family (with or without a prefix): 6 for anything with a colon. */
export function familyOf(address: string): 4 | 6 {
  return address.includes(":") ? 6 : 4;
}

export interface UnderlayOptions {
  readonly tag?: string;
  /** Without it: the IPv4-only underlay, as it always was. See the header for the IPv6 layouts. */
  readonly ipv6?: "dual-stack" | "ipv6-only";
}

/** Creates the switch namespace and its underlay bridge. Call destroy() in teardown, on failure too. */
export async function createUnderlay(options: UnderlayOptions = {}): Promise<Cluster> {
  const tag = options.tag ?? randomTag();
  const families: UnderlayFamilies = options.ipv6 ?? "ipv4";
  const v4 = families !== "ipv6-only";
  const v6 = families !== "ipv4";
  if (!/^[0-9a-z]{1,5}$/.test(tag)) throw new Error(`tag must be 1-5 lowercase alphanumerics: ${tag}`);
  const prefix = `tw-${tag}`;
  const switchNs = `${prefix}-sw`;
  // Creation order; deleted in reverse (pods before hosts before router before switch).
  const namespaces: string[] = [];
  const processes: Started[] = [];
  const etcds: EtcdServer[] = [];
  const hosts = new Map<number, Host>();
  let routerNs: string | undefined;
  let destroyed = false;
  const tracked = { namespaces, pids: () => processes.map((p) => p.pid) };
  // With IPv6, no multicast snooping: neighbour solicitations are flooded as ARP requests are.
  const bridgeType = v6 ? ["type", "bridge", "mcast_snooping", "0"] : ["type", "bridge"];
  live.add(tracked);
  installExitHook();

  const run = async (ns: string, argv: readonly string[], input?: string): Promise<string> => {
    const result = await exec(ns, argv, input);
    if (result.exitCode !== 0) {
      throw new Error(`[${ns}] ${argv.join(" ")} failed (exit ${result.exitCode}): ${result.stderr.trim()}`);
    }
    return result.stdout;
  };

  const addNamespace = async (ns: string): Promise<void> => {
    if (namespaces.includes(ns)) throw new Error(`namespace ${ns} already exists in this cluster`);
    await ip(["netns", "add", ns]);
    namespaces.push(ns); // tracked as soon as it exists, so a failure below still cleans it up
    await ip(["-n", ns, "link", "set", "lo", "up"]);
  };

  /** A veth from `ns` ("eth0" inside) to `bridge` in the switch namespace, switch end named `switchEnd`. */
  const plugIntoSwitch = async (
    ns: string,
    inside: string,
    switchEnd: string,
    bridge: string,
  ): Promise<void> => {
    await ip(["-n", switchNs, "link", "add", switchEnd, "type", "veth", "peer", "name", inside, "netns", ns]);
    await ip(["-n", switchNs, "link", "set", switchEnd, "master", bridge, "up"]);
  };

  const destroy = async (): Promise<void> => {
    if (destroyed) return;
    destroyed = true;
    await Promise.allSettled(processes.map((p) => p.stop(3000)));
    await Promise.allSettled(etcds.map((e) => e.destroy()));
    for (const ns of [...namespaces].reverse()) {
      const result = await execa("ip", ["netns", "del", ns], { reject: false, stdin: "ignore" });
      if (result.exitCode !== 0 && !/No such file/.test(result.stderr)) {
        // Never throw from teardown; say why something may be left behind.
        console.warn(`twill test cleanup: ip netns del ${ns}: ${result.stderr.trim()}`);
      }
    }
    live.delete(tracked);
  };

  const cluster: Cluster = {
    tag,
    switchNs,
    hosts,
    families,
    exec,
    run,

    async addRemoteSegment() {
      if (routerNs !== undefined) return { ns: routerNs };
      const ns = `${prefix}-rt`;
      await addNamespace(ns);
      routerNs = ns;
      await ip(["-n", switchNs, "link", "add", "br-rm", "address", REMOTE_BRIDGE_MAC, ...bridgeType]);
      await ip(["-n", switchNs, "link", "set", "br-rm", "up"]);
      await plugIntoSwitch(ns, "eth0", `v${tag}r0`, "br-ul");
      await plugIntoSwitch(ns, "eth1", `v${tag}r1`, "br-rm");
      await ip(["-n", ns, "address", "add", `${ROUTER_LOCAL}/24`, "dev", "eth0"]);
      await ip(["-n", ns, "address", "add", `${REMOTE_GATEWAY}/24`, "dev", "eth1"]);
      await ip(["-n", ns, "link", "set", "eth0", "up"]);
      await ip(["-n", ns, "link", "set", "eth1", "up"]);
      await run(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
      // Everything on the local segment (the switch itself, for etcd, and every host) routes via the router.
      await ip(["-n", switchNs, "route", "add", REMOTE_SEGMENT, "via", ROUTER_LOCAL]);
      if (v6) {
        await ip(["-n", ns, "address", "add", `${ROUTER_LOCAL6}/64`, "dev", "eth0", "nodad"]);
        await ip(["-n", ns, "address", "add", `${REMOTE_GATEWAY6}/64`, "dev", "eth1", "nodad"]);
        await run(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
        await ip(["-n", switchNs, "-6", "route", "add", REMOTE_SEGMENT6, "via", ROUTER_LOCAL6]);
      }
      for (const host of hosts.values()) {
        if (host.segment !== "local") continue;
        if (v4) await ip(["-n", host.ns, "route", "add", REMOTE_SEGMENT, "via", ROUTER_LOCAL]);
        if (v6) await ip(["-n", host.ns, "-6", "route", "add", REMOTE_SEGMENT6, "via", ROUTER_LOCAL6]);
      }
      return { ns };
    },

    async addHost(index, options = {}) {
      const segment = options.segment ?? "local";
      if (!Number.isInteger(index) || index < 1 || index > 252)
        throw new Error(`host index out of 1..252: ${index}`);
      if (hosts.has(index)) throw new Error(`host ${index} already exists`);
      if (segment === "remote" && routerNs === undefined) throw new Error("addRemoteSegment() first");
      const ns = `${prefix}-h${index}`;
      await addNamespace(ns);
      const remote = segment === "remote";
      const address4 = `${remote ? "198.19.0" : "198.18.0"}.${index}`;
      const address6 = v6 ? hostAddress6(index, segment) : undefined;
      await plugIntoSwitch(ns, "eth0", `v${tag}h${index}`, remote ? "br-rm" : "br-ul");
      if (v4) await ip(["-n", ns, "address", "add", `${address4}/24`, "dev", "eth0"]);
      if (address6 !== undefined)
        await ip(["-n", ns, "address", "add", `${address6}/64`, "dev", "eth0", "nodad"]);
      await ip(["-n", ns, "link", "set", "eth0", "up"]);
      if (v4) {
        await ip(["-n", ns, "route", "add", "default", "via", remote ? REMOTE_GATEWAY : UNDERLAY_GATEWAY]);
        if (!remote && routerNs !== undefined) {
          await ip(["-n", ns, "route", "add", REMOTE_SEGMENT, "via", ROUTER_LOCAL]);
        }
      }
      if (v6) {
        const gateway6 = remote ? REMOTE_GATEWAY6 : UNDERLAY_GATEWAY6;
        await ip(["-n", ns, "-6", "route", "add", "default", "via", gateway6, "dev", "eth0"]);
        if (!remote && routerNs !== undefined) {
          await ip(["-n", ns, "-6", "route", "add", REMOTE_SEGMENT6, "via", ROUTER_LOCAL6]);
        }
      }
      await run(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
      const host: Host = {
        ns,
        index,
        segment,
        address: v4 ? address4 : (address6 ?? address4),
        ...(address6 === undefined ? {} : { address6 }),
        dev: "eth0",
        runner: netnsRunner(ns),
      };
      hosts.set(index, host);
      return host;
    },

    async addPod(host, name, options) {
      if (!/^[a-z0-9]{1,8}$/.test(name))
        throw new Error(`pod name must be 1-8 lowercase alphanumerics: ${name}`);
      const ns = `${host.ns}-${name}`;
      const hostVeth = `vp${tag}${name}`.slice(0, 15);
      const timeout = options.bridgeTimeoutMs ?? 20_000;
      await waitFor(
        `bridge ${options.bridge} in ${host.ns} (is the agent running and has it set up the bridge?)`,
        async () => (await exec(host.ns, ["ip", "link", "show", "dev", options.bridge])).exitCode === 0,
        timeout,
        100,
      );
      await addNamespace(ns);
      await ip(["-n", host.ns, "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
      if (options.mtu !== undefined) {
        await ip(["-n", host.ns, "link", "set", hostVeth, "mtu", String(options.mtu)]);
        await ip(["-n", ns, "link", "set", "eth0", "mtu", String(options.mtu)]);
      }
      await ip(["-n", host.ns, "link", "set", hostVeth, "master", options.bridge, "up"]);
      const nodad = (cidr: string): string[] => (familyOf(cidr) === 6 ? ["nodad"] : []);
      await ip(["-n", ns, "address", "add", options.address, "dev", "eth0", ...nodad(options.address)]);
      if (options.address6 !== undefined)
        await ip(["-n", ns, "address", "add", options.address6, "dev", "eth0", "nodad"]);
      await ip(["-n", ns, "link", "set", "eth0", "up"]);
      await ip(["-n", ns, "route", "add", "default", "via", options.gateway]);
      if (options.gateway6 !== undefined)
        await ip(["-n", ns, "-6", "route", "add", "default", "via", options.gateway6, "dev", "eth0"]);
      const address = options.address.split("/")[0] ?? options.address;
      const address6 =
        options.address6 !== undefined
          ? (options.address6.split("/")[0] ?? options.address6)
          : familyOf(address) === 6
            ? address
            : undefined;
      const cidr6 = options.address6 ?? (familyOf(address) === 6 ? options.address : undefined);
      return {
        ns,
        name,
        host,
        address,
        cidr: options.address,
        ...(address6 === undefined ? {} : { address6 }),
        ...(cidr6 === undefined ? {} : { cidr6 }),
        hostVeth,
      };
    },

    async ping(fromNs, toIp, options = {}) {
      const count = options.count ?? 1;
      const family = options.family ?? familyOf(toIp);
      const args = ["ping", `-${family}`, "-n", "-c", String(count), "-i", "0.2"];
      args.push("-W", String(options.waitSeconds ?? 1));
      if (options.size !== undefined) args.push("-s", String(options.size));
      if (options.dontFragment === true) args.push("-M", "do");
      const result = await exec(fromNs, [...args, toIp]);
      const output = `${result.stdout}\n${result.stderr}`;
      const stats = /(\d+) packets transmitted, (\d+) received/.exec(output);
      const transmitted = Number(stats?.[1] ?? 0);
      const received = Number(stats?.[2] ?? 0);
      return { ok: received > 0, transmitted, received, output };
    },

    spawn(ns, command, args, env) {
      const started = startProcess("ip", ["netns", "exec", ns, command, ...args], env);
      processes.push(started);
      return started;
    },

    async startEtcd(options = {}) {
      // The switch namespace is this cluster's own: fixed ports, 2379/2380 for the first etcd.
      const ports = { client: 2379 + 10 * etcds.length, peer: 2380 + 10 * etcds.length };
      // etcd writes the host into its URLs as given: an IPv6 address goes in brackets.
      const host = v4 ? UNDERLAY_GATEWAY : `[${UNDERLAY_GATEWAY6}]`;
      const server = await startEtcd({ netns: switchNs, host, ports, ...options });
      etcds.push(server);
      tracked.pids = () => [...processes.map((p) => p.pid), ...etcds.map((e) => e.process.pid)];
      return server;
    },

    trackNamespace(name) {
      namespaces.push(name);
    },

    destroy,
  };

  try {
    await addNamespace(switchNs);
    await ip(["-n", switchNs, "link", "add", "br-ul", "address", UNDERLAY_BRIDGE_MAC, ...bridgeType]);
    await ip(["-n", switchNs, "address", "add", `${UNDERLAY_GATEWAY}/24`, "dev", "br-ul"]);
    if (v6) await ip(["-n", switchNs, "address", "add", `${UNDERLAY_GATEWAY6}/64`, "dev", "br-ul", "nodad"]);
    await ip(["-n", switchNs, "link", "set", "br-ul", "up"]);
  } catch (error) {
    await destroy();
    throw error;
  }
  return cluster;
}

/** Names of the network namespaces that currently exist (`ip netns list`). */
export async function listNamespaces(): Promise<string[]> {
  const { stdout } = await execa("ip", ["netns", "list"], { stdin: "ignore" });
  return stdout
    .split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name !== "");
}
