// The /status document and `twill status`: the agent's state store (AgentState: lease, config, last
// round, peer states, etcd watch, masquerade) rendered as plain JSON, and that JSON as text. The
// JSON is an interface between versions (an old CLI may read a new agent): add fields, never rename.
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { formatCidr, formatIPv4 } from "../ip/ipv4.js";
import { formatCidr6 } from "../ip/ipv6.js";
import { compareBySubnets, hasIPv4, leaseName, tryParseSubnetKey } from "../lease/key.js";
import { notReadyReasons, type AgentState, type DriftKind, type KernelKind } from "../state.js";
import { errorMessage } from "../util/log.js";
import type { EndpointSource } from "./server.js";

export const STATUS_SCHEMA = 1;

export type PeerStateJson = "programmed" | "unreachable" | "backend-mismatch" | "pending" | "invalid";

export interface PeerJson {
  readonly key: string;
  /** null for an invalid entry whose key is not a subnet; "fd00:…/64" alone for an IPv6-only lease. */
  readonly subnet: string | null;
  readonly publicIP: string | null;
  /** The lease's IPv6 subnet and PublicIPv6 (dual-stack, IPv6-only); null without. */
  readonly ipv6Subnet?: string | null;
  readonly publicIPv6?: string | null;
  readonly backend: string | null;
  /** pending = known from etcd, not yet through a reconcile round. */
  readonly state: PeerStateJson;
  readonly reason: string | null;
}

export interface StatusJson {
  readonly schema: typeof STATUS_SCHEMA;
  readonly version: string;
  /** When the agent built this document (ISO 8601); relative times are rendered against it. */
  readonly generatedAt: string;
  readonly ready: boolean;
  readonly notReady: readonly string[];
  readonly healthy: boolean;
  readonly unhealthy: readonly string[];
  readonly config: {
    readonly state: "unknown" | "missing" | "invalid" | "valid";
    readonly network: string | null;
    /** IPv6Network when IPv6 is on; null without. */
    readonly ipv6Network?: string | null;
    readonly backend: string | null;
    /** The backend's options as parsed, defaults filled in (e.g. {"VNI":1,"Port":8472,…}). */
    readonly backendOptions?: Readonly<Record<string, string | number | boolean | null>> | null;
    readonly message: string | null;
  };
  readonly node: {
    readonly interface: string | null;
    readonly publicIP: string | null;
    readonly publicIPv6?: string | null;
  };
  readonly lease: {
    readonly subnet: string;
    readonly ipv6Subnet?: string | null;
    readonly key: string;
    /** null on an IPv6-only node (its lease carries flannel's 0.0.0.0). */
    readonly publicIP: string | null;
    readonly publicIPv6?: string | null;
    readonly backend: string | null;
    readonly reserved: boolean;
    /** null for a reservation (never expires). */
    readonly expiresAt: string | null;
    readonly lost: number;
    /** Another writer holds the key (the node keeps its subnet meanwhile); null when not. */
    readonly conflict: { readonly kind: string; readonly message: string } | null;
  } | null;
  readonly subnetFileWritten: boolean;
  readonly peers: readonly PeerJson[];
  readonly lastRound: {
    readonly at: string;
    readonly trigger: string;
    readonly durationMs: number;
    readonly ops: number;
    readonly failed: number;
    readonly repairs: number;
    readonly result: "ok" | "error";
    readonly error: string | null;
  } | null;
  readonly lastSuccessAt: string | null;
  readonly kernelObjects: Readonly<Record<KernelKind, number>>;
  readonly driftRepairs: Readonly<Record<DriftKind, number>>;
  readonly etcd: {
    readonly watch: "not-started" | "watching" | "broken";
    readonly since: string | null;
    readonly reason: string | null;
    readonly restarts: number;
    /** etcd cannot be reached: the real cause, where, and since when; null while it answers. */
    readonly unreachable: {
      readonly error: string;
      readonly endpoints: string;
      readonly since: string;
    } | null;
  };
  /** Problems with the node that twill reports but cannot fix (e.g. br_netfilter missing). */
  readonly nodeProblems: readonly string[];
  readonly masq: {
    readonly restored: number;
    readonly errors: number;
    /** The iptables command the rules go through and why; null until chosen or without rules. */
    readonly iptables: { readonly command: string; readonly reason: string } | null;
    /** The same for the IPv6 rules; null without IPv6. */
    readonly ip6tables?: { readonly command: string; readonly reason: string } | null;
    /** How a removed rule is noticed ("nftables notifications", "legacy table counters", "timer"). */
    readonly watch?: string | null;
  };
  /**
   * The backend's data path outside rtnetlink (udp's proxy, WireGuard's device); absent for the
   * backends that have none. `kind` says which fields follow.
   */
  readonly userspace?: UdpProxyJson | WireGuardJson;
}

interface DataPathJson {
  readonly what: string;
  readonly running: boolean;
  readonly lastFailure: string | null;
  readonly peers: number;
  readonly restarts: number;
}

export interface UdpProxyJson extends DataPathJson {
  readonly kind: "udp";
  readonly packets: { readonly tx: number; readonly rx: number };
  readonly bytes: { readonly tx: number; readonly rx: number };
  readonly drops: Readonly<Record<string, number>>;
  /** ICMP net-unreachables sent back for destinations no peer owns (part of the no_route drops). */
  readonly icmpUnreachableSent: number;
}

export interface WireGuardJson extends DataPathJson {
  readonly kind: "wireguard";
  readonly implementation: "kernel" | "userspace";
  readonly device: string;
  readonly publicKey: string;
  readonly listenPort: number;
  /** wireguard-go's process id; null for the kernel's device. */
  readonly pid: number | null;
  /** Peers restored after someone changed the device. */
  readonly repairs: number;
  /** Each device's own figures, when the node has two (Mode separate with IPv6: flannel-wg-v6 too). */
  readonly devices?: readonly {
    readonly device: string;
    readonly implementation: "kernel" | "userspace";
    readonly listenPort: number;
    readonly running: boolean;
    readonly lastFailure: string | null;
    readonly pid: number | null;
    readonly peers: number;
    readonly restarts: number;
    readonly repairs: number;
  }[];
  readonly peerDetails: readonly {
    /** The device it is a peer on. */
    readonly device: string;
    readonly subnet: string;
    readonly publicKey: string;
    readonly endpoint: string | null;
    /** ISO time of the latest handshake; null: none yet. */
    readonly latestHandshake: string | null;
    readonly rxBytes: number;
    readonly txBytes: number;
  }[];
}

export interface StatusInput {
  readonly version: string;
  readonly now: number;
  readonly state: AgentState;
  readonly unhealthy: readonly string[];
}

const iso = (ms: number | undefined): string | null => (ms === undefined ? null : new Date(ms).toISOString());

/** Builds the /status document (pure). */
export function buildStatus(input: StatusInput): StatusJson {
  const agent = input.state;
  const dataplane = agent.dataplane;
  const config = agent.config;
  const own = agent.ownLease;
  const notReady = notReadyReasons(agent);
  const peers: PeerJson[] = [];
  if (agent.view) {
    const leases = [...agent.view.peers.values()].sort(compareBySubnets);
    for (const lease of leases) {
      const status = dataplane.peerStates.get(lease.key);
      const v4 = hasIPv4(lease.subnet);
      peers.push({
        key: lease.key,
        subnet: leaseName(lease),
        publicIP: v4 ? formatIPv4(lease.attrs.publicIP) : null,
        ipv6Subnet: lease.ipv6Subnet === undefined ? null : formatCidr6(lease.ipv6Subnet),
        publicIPv6: lease.attrs.publicIPv6,
        backend: lease.attrs.backendType ?? null,
        state: status?.state ?? "pending",
        reason: status?.reason ?? null,
      });
    }
    const invalid = [...agent.view.invalid.values()].sort((a, b) => (a.key < b.key ? -1 : 1));
    for (const entry of invalid) {
      const subnet = tryParseSubnetKey(entry.key);
      peers.push({
        key: entry.key,
        subnet: subnet ? leaseName(subnet) : null,
        publicIP: null,
        backend: null,
        state: "invalid",
        reason: entry.reason,
      });
    }
  }
  const round = dataplane.lastRound;
  return {
    schema: STATUS_SCHEMA,
    version: input.version,
    generatedAt: new Date(input.now).toISOString(),
    ready: notReady.length === 0,
    notReady,
    healthy: input.unhealthy.length === 0,
    unhealthy: [...input.unhealthy],
    config: {
      state: config.kind,
      network: config.kind === "valid" && config.config.enableIPv4 ? formatCidr(config.config.network) : null,
      ipv6Network:
        config.kind === "valid" && config.config.ipv6 !== undefined
          ? formatCidr6(config.config.ipv6.network)
          : null,
      backend: config.kind === "valid" ? config.config.backend.type : null,
      backendOptions: config.kind === "valid" ? { ...config.config.backend.options } : null,
      message:
        config.kind === "invalid"
          ? config.message
          : config.kind === "missing"
            ? `no network config at ${config.key}`
            : null,
    },
    node: {
      interface: agent.external?.name ?? null,
      publicIP: agent.external && agent.external.publicIp !== 0 ? formatIPv4(agent.external.publicIp) : null,
      publicIPv6: agent.external?.publicIpv6 ?? null,
    },
    lease: own
      ? {
          subnet: leaseName(own),
          ipv6Subnet: own.ipv6Subnet === undefined ? null : formatCidr6(own.ipv6Subnet),
          key: own.key,
          publicIP: hasIPv4(own.subnet) ? formatIPv4(own.attrs.publicIP) : null,
          publicIPv6: own.attrs.publicIPv6,
          backend: own.attrs.backendType ?? null,
          reserved: own.expiresAt === Infinity,
          expiresAt: own.expiresAt === Infinity ? null : iso(own.expiresAt),
          lost: agent.leaseLost,
          conflict:
            agent.leaseConflict === undefined
              ? null
              : { kind: agent.leaseConflict.kind, message: agent.leaseConflict.message },
        }
      : null,
    subnetFileWritten: agent.subnetFileWritten,
    peers,
    lastRound: round
      ? {
          at: new Date(round.at).toISOString(),
          trigger: round.trigger,
          durationMs: Math.round(round.durationMs * 10) / 10,
          ops: round.ops,
          failed: round.failed,
          repairs: round.repairs,
          result: round.result,
          error: round.error ?? null,
        }
      : null,
    lastSuccessAt: iso(dataplane.lastSuccessAt),
    kernelObjects: { ...dataplane.kernelObjects },
    driftRepairs: { ...dataplane.driftRepairs },
    etcd: {
      watch: agent.subnetWatch.state,
      since: iso(agent.subnetWatch.since),
      reason: agent.subnetWatch.reason ?? null,
      restarts: agent.subnetWatch.restarts,
      unreachable:
        agent.etcdProblem === undefined
          ? null
          : {
              error: agent.etcdProblem.message,
              endpoints: agent.etcdProblem.where,
              since: new Date(agent.etcdProblem.since).toISOString(),
            },
    },
    nodeProblems: [...agent.nodeProblems],
    masq: {
      restored: agent.masq.restored,
      errors: agent.masq.errors,
      iptables: agent.masq.iptables ? { ...agent.masq.iptables } : null,
      ip6tables: agent.masq.ip6tables ? { ...agent.masq.ip6tables } : null,
      watch: agent.masq.watch ?? null,
    },
    ...userspaceJson(agent),
  };
}

function userspaceJson(agent: AgentState): Pick<StatusJson, "userspace"> {
  const status = agent.userspace?.();
  if (status === undefined) return {};
  if (status.kind === "wireguard") {
    return {
      userspace: {
        kind: "wireguard",
        what: status.what,
        running: status.running,
        lastFailure: status.lastFailure ?? null,
        peers: status.peers,
        restarts: status.restarts,
        implementation: status.implementation,
        device: status.device,
        publicKey: status.publicKey,
        listenPort: status.listenPort,
        pid: status.pid ?? null,
        repairs: status.repairs,
        ...(status.devices === undefined
          ? {}
          : {
              devices: status.devices.map((d) => ({
                device: d.device,
                implementation: d.implementation,
                listenPort: d.listenPort,
                running: d.running,
                lastFailure: d.lastFailure ?? null,
                pid: d.pid ?? null,
                peers: d.peers,
                restarts: d.restarts,
                repairs: d.repairs,
              })),
            }),
        peerDetails: status.peerDetails.map((p) => ({
          device: p.device ?? status.device,
          subnet: p.subnet,
          publicKey: p.publicKey,
          endpoint: p.endpoint ?? null,
          latestHandshake: p.lastHandshakeMs === 0 ? null : new Date(p.lastHandshakeMs).toISOString(),
          rxBytes: p.rxBytes,
          txBytes: p.txBytes,
        })),
      },
    };
  }
  return {
    userspace: {
      kind: "udp",
      what: status.what,
      running: status.running,
      lastFailure: status.lastFailure ?? null,
      peers: status.peers,
      packets: { tx: status.txPackets, rx: status.rxPackets },
      bytes: { tx: status.txBytes, rx: status.rxBytes },
      drops: { ...status.drops },
      icmpUnreachableSent: status.icmpUnreachableSent,
      restarts: status.restarts,
    },
  };
}

/** The HTTP endpoints' view of a running agent: readiness, liveness and the /status document. */
export function agentEndpoints(
  agent: { readonly state: () => AgentState; readonly heartbeats: { problems(): string[] } },
  version: string,
  now: () => number = Date.now,
): EndpointSource {
  return {
    notReady: () => notReadyReasons(agent.state()),
    unhealthy: () => agent.heartbeats.problems(),
    status: () =>
      buildStatus({ version, now: now(), state: agent.state(), unhealthy: agent.heartbeats.problems() }),
  };
}

// --- rendering ---

/** "3s", "4m05s", "2h03m", "3d04h". */
export function formatAge(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  const two = (n: number): string => String(n).padStart(2, "0");
  if (d > 0) return `${d}d${two(h)}h`;
  if (h > 0) return `${h}h${two(m)}m`;
  if (m > 0) return `${m}m${two(s)}s`;
  return `${s}s`;
}

function table(rows: readonly (readonly string[])[]): string[] {
  const widths = rows[0]?.map((_, col) => Math.max(...rows.map((row) => (row[col] ?? "").length))) ?? [];
  return rows.map((row) =>
    row
      .map((cell, col) => cell.padEnd(widths[col] ?? 0))
      .join("  ")
      .trimEnd(),
  );
}

function plural(count: number, one: string, many = `${one}s`): string {
  return `${count} ${count === 1 ? one : many}`;
}

/** The text `twill status` prints: a summary, then one row per peer. */
export function renderStatus(status: StatusJson): string {
  const now = Date.parse(status.generatedAt);
  const ago = (at: string | null): string => (at === null ? "?" : `${formatAge(now - Date.parse(at))} ago`);
  const lines: string[] = [];
  const field = (name: string, value: string): void => {
    lines.push(`${`${name}:`.padEnd(16)}${value}`);
  };

  lines.push(`twill ${status.version} — ${status.ready ? "ready" : "NOT READY"}`);
  for (const reason of status.notReady) lines.push(`  not ready: ${reason}`);
  for (const problem of status.unhealthy) lines.push(`  UNHEALTHY: ${problem}`);
  for (const problem of status.nodeProblems) lines.push(`  node problem: ${problem}`);
  lines.push("");

  const config = status.config;
  field(
    "config",
    config.state === "valid"
      ? `network ${[config.network, config.ipv6Network].filter((n) => n != null).join(" and ") || "?"}, backend ${config.backend ?? "?"}`
      : `${config.state}${config.message === null ? "" : `: ${config.message}`}`,
  );
  const lease = status.lease;
  if (lease) {
    const expiry =
      lease.expiresAt === null
        ? "reservation, never expires"
        : `expires ${lease.expiresAt} (in ${formatAge(Date.parse(lease.expiresAt) - now)})`;
    const lost = lease.lost > 0 ? `, lost and re-acquired ${plural(lease.lost, "time")}` : "";
    const publicIPs = [lease.publicIP, lease.publicIPv6].filter((ip) => ip != null).join(" and ");
    field("lease", `${lease.subnet} public IP ${publicIPs}, ${expiry}${lost}`);
    if (lease.conflict !== null) field("lease conflict", `${lease.conflict.kind}: ${lease.conflict.message}`);
  } else field("lease", "none yet");
  const iface = status.node.interface;
  field(
    "interface",
    iface === null
      ? "not selected yet"
      : `${iface} (public IP ${[status.node.publicIP, status.node.publicIPv6].filter((ip) => ip != null).join(" and ") || "?"})`,
  );
  field("subnet file", status.subnetFileWritten ? "written" : "not written");

  const etcd = status.etcd;
  const restarts = plural(etcd.restarts, "watch restart");
  field(
    "etcd",
    etcd.watch === "watching"
      ? `watching subnets (since ${ago(etcd.since)}), ${restarts}`
      : etcd.watch === "broken"
        ? `watch broken ${ago(etcd.since)}: ${etcd.reason ?? "?"}; ${restarts}`
        : "not watching yet",
  );
  if (etcd.unreachable !== null) {
    field(
      "etcd",
      `UNREACHABLE since ${etcd.unreachable.since} (${ago(etcd.unreachable.since)}) at ${etcd.unreachable.endpoints}: ${etcd.unreachable.error}`,
    );
  }

  const round = status.lastRound;
  if (round) {
    const outcome = round.result === "ok" ? "ok" : `ERROR: ${round.error ?? "?"}`;
    field(
      "last reconcile",
      `${ago(round.at)}, trigger ${round.trigger}, ${plural(round.ops, "op")}` +
        `${round.failed > 0 ? ` (${round.failed} failed)` : ""}, ${round.durationMs} ms, ${outcome}`,
    );
    if (round.result === "error")
      field("last success", status.lastSuccessAt === null ? "never" : ago(status.lastSuccessAt));
  } else field("last reconcile", "none yet");
  const k = status.kernelObjects;
  field(
    "kernel",
    `${plural(k.route, "route")}, ${plural(k.neighbour, "neighbour")}, ${plural(k.fdb, "FDB entry", "FDB entries")}`,
  );
  const d = status.driftRepairs;
  const driftTotal = d.route + d.neighbour + d.fdb + d.device;
  field(
    "drift repaired",
    driftTotal === 0
      ? "none"
      : `${driftTotal} (route ${d.route}, neighbour ${d.neighbour}, fdb ${d.fdb}, device ${d.device})`,
  );
  const userspace = status.userspace;
  if (userspace?.kind === "wireguard") {
    const now = Date.parse(status.generatedAt);
    const shaken = userspace.peerDetails.filter((p) => p.latestHandshake !== null);
    const oldest = Math.max(0, ...shaken.map((p) => (now - Date.parse(p.latestHandshake ?? "")) / 1000));
    field(
      "wireguard",
      `${userspace.what}: ${userspace.running ? "running" : `NOT RUNNING (${userspace.lastFailure ?? "starting"})`}` +
        `${userspace.pid === null ? "" : ` (pid ${userspace.pid})`}, ${plural(userspace.peers, "peer")}, ` +
        `${shaken.length} with a handshake` +
        (shaken.length > 0 ? ` (oldest ${Math.round(oldest)} s ago)` : "") +
        (userspace.repairs > 0 ? `, restored ${plural(userspace.repairs, "time")}` : "") +
        (userspace.restarts > 0 ? `, restarted ${plural(userspace.restarts, "time")}` : ""),
    );
  } else if (userspace !== undefined) {
    const dropped = Object.entries(userspace.drops).filter(([, n]) => n > 0);
    field(
      "userspace",
      `${userspace.what}: ${userspace.running ? "running" : `NOT RUNNING (${userspace.lastFailure ?? "starting"})`}, ` +
        `${plural(userspace.peers, "peer")}, ${userspace.packets.tx} packets out, ${userspace.packets.rx} in` +
        (dropped.length === 0 ? "" : `, dropped ${dropped.map(([why, n]) => `${n} ${why}`).join(", ")}`) +
        (userspace.restarts > 0 ? `, restarted ${plural(userspace.restarts, "time")}` : ""),
    );
  }
  if (status.masq.iptables) {
    const watch = status.masq.watch ? `; removals noticed by ${status.masq.watch}` : "";
    field("iptables", `${status.masq.iptables.command} (${status.masq.iptables.reason})${watch}`);
  }
  if (status.masq.ip6tables) {
    field("ip6tables", `${status.masq.ip6tables.command} (${status.masq.ip6tables.reason})`);
  }
  if (status.masq.restored > 0 || status.masq.errors > 0) {
    field("masquerade", `${status.masq.restored} rules restored, ${plural(status.masq.errors, "error")}`);
  }

  const counts = new Map<PeerStateJson, number>();
  for (const peer of status.peers) counts.set(peer.state, (counts.get(peer.state) ?? 0) + 1);
  const order: PeerStateJson[] = ["programmed", "pending", "unreachable", "backend-mismatch", "invalid"];
  const summary = order
    .filter((state) => (counts.get(state) ?? 0) > 0)
    .map((state) => `${counts.get(state) ?? 0} ${state}`)
    .join(", ");
  lines.push("");
  lines.push(`peers: ${status.peers.length}${summary === "" ? "" : ` (${summary})`}`);
  if (status.peers.length > 0) {
    const rows = [["SUBNET", "PUBLIC IP", "BACKEND", "STATE", "DETAIL"]];
    for (const peer of status.peers) {
      rows.push([
        peer.subnet ?? peer.key,
        [peer.publicIP, peer.publicIPv6].filter((ip) => ip != null).join(",") || "-",
        peer.backend ?? "-",
        peer.state,
        peer.reason ?? "",
      ]);
    }
    lines.push(...table(rows).map((row) => `  ${row}`));
  }
  return `${lines.join("\n")}\n`;
}

// --- fetching ---

export class StatusFetchError extends Error {
  override name = "StatusFetchError";
}

/** "127.0.0.1:9102" or "http://host:9102/" → "http://host:9102". */
export function normaliseAddress(address: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(address) ? address : `http://${address}`;
  return withScheme.replace(/\/+$/, "");
}

function reasonOf(error: unknown): string {
  if (error instanceof Error && error.name === "TimeoutError") return "no answer in time";
  return errorMessage(error);
}

interface Answer {
  readonly status: number;
  readonly statusText: string;
  readonly body: string;
}

/**
 * One GET with node:http(s) rather than fetch: fetch refuses "bad ports" (e.g. 6000), and an agent's
 * address is the operator's choice.
 */
function get(url: URL, timeoutMs: number): Promise<Answer> {
  return new Promise((resolve, reject) => {
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      reject(new Error(`unsupported scheme ${url.protocol} (use http:// or https://)`));
      return;
    }
    const send = url.protocol === "https:" ? httpsRequest : httpRequest;
    const req = send(url, { method: "GET", timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? "",
          body: Buffer.concat(chunks).toString("utf8"),
        }),
      );
    });
    req.on("timeout", () => {
      const error = new Error("timeout");
      error.name = "TimeoutError";
      req.destroy(error);
    });
    req.on("error", reject);
    req.end();
  });
}

function isStatusJson(value: unknown): value is StatusJson {
  if (typeof value !== "object" || value === null) return false;
  const record = value as Record<string, unknown>;
  return (
    record.schema === STATUS_SCHEMA && typeof record.generatedAt === "string" && Array.isArray(record.peers)
  );
}

/** GETs /status from a running agent; throws StatusFetchError with a message naming the address. */
export async function fetchStatus(address: string, timeoutMs = 5000): Promise<StatusJson> {
  const base = normaliseAddress(address);
  let answer: Answer;
  try {
    answer = await get(new URL(`${base}/status`), timeoutMs);
  } catch (error) {
    throw new StatusFetchError(`cannot reach the agent at ${base}: ${reasonOf(error)}`);
  }
  if (answer.status !== 200) {
    throw new StatusFetchError(
      `the agent at ${base} answered ${answer.status} ${answer.statusText} for /status (is this a twill agent?)`,
    );
  }
  let body: unknown;
  try {
    body = JSON.parse(answer.body);
  } catch (error) {
    throw new StatusFetchError(`the agent at ${base} sent a /status that is not JSON: ${reasonOf(error)}`);
  }
  if (!isStatusJson(body)) {
    throw new StatusFetchError(
      `the agent at ${base} sent a /status this twill does not understand (schema ${STATUS_SCHEMA} expected)`,
    );
  }
  return body;
}
