// Sub-commands. Each returns an exit code; errors are printed as one line naming what is wrong.
import {
  checkOwnCapabilities,
  missingCapabilitiesMessage,
  neededCapabilities,
} from "../node/capabilities.js";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { Agent } from "../agent.js";
import { StateStore } from "../state.js";
import { backendForLease, identityByBackend, parsePeerDataByBackend } from "../backends/registry.js";
import { agentFlags, ETCD_NAMED_FLAGS, etcdPrefix, parseAgentOptions } from "../config/agent-options.js";
import {
  FlagError,
  flagLabel,
  flagLabels,
  formatFlagHelp,
  parseFlags,
  type FlagSpec,
  type ParsedFlags,
} from "../config/flags.js";
import { ConfigError, parseNetworkConfig, type NetworkConfig } from "../config/network-config.js";
import { leasesForAllocation } from "../lease/keeper.js";
import { compareBySubnets, hasIPv4 } from "../lease/key.js";
import { formatCidr6 } from "../ip/ipv6.js";
import type { Lease } from "../lease/lease.js";
import { formatCidr, formatIPv4 } from "../ip/ipv4.js";
import { EtcdRegistry, EtcdSettingsError } from "../lease/etcd-registry.js";
import type { LeaseRegistry } from "../lease/registry.js";
import { computeView, type InvalidEntry } from "../lease/peer-view.js";
import { missingConfigMessage } from "../lease/config-watch.js";
import { agentRuleWatch } from "../masq/watch.js";
import { Metrics } from "../metrics/metrics.js";
import { createHandler, formatListenAddress, serve, type ListenAddress } from "../metrics/server.js";
import { StatusFetchError, agentEndpoints, fetchStatus, renderStatus } from "../metrics/status.js";
import { netnsCommand } from "./netns.js";
import { wireguardCommand } from "./wireguard.js";
import { createLogger, errorMessage } from "../util/log.js";
import { routeWarnings } from "../util/warnings.js";
import { sdNotify } from "../node/systemd.js";
import type { LevelWithSilent } from "pino";

type Env = Readonly<Record<string, string | undefined>>;

function readVersion(): string {
  const pkg: unknown = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
  return typeof pkg === "object" && pkg !== null && "version" in pkg ? String(pkg.version) : "unknown";
}

const VERSION = readVersion();

const etcdFlagNames = new Set([
  "etcd-endpoints",
  "etcd-prefix",
  "etcd-cafile",
  "etcd-certfile",
  "etcd-keyfile",
  "etcd-username",
  "etcd-password",
]);
const adminFlags: readonly FlagSpec[] = agentFlags.filter((flag) => etcdFlagNames.has(flag.name));

const usage = `twill ${VERSION} — a flannel-compatible overlay network agent

Usage:
  twill agent [flags]              run the node agent (see twill agent --help)
  twill config get [etcd flags]    print the network config stored in etcd
  twill config set FILE|- [etcd flags]
                                   validate a network config and store it in etcd
  twill leases [--json] [etcd flags]
                                   list every subnet lease with its public IP, backend and time left
  twill status [--address URL] [--json]
                                   ask a running agent for its lease, peers, last reconcile and health;
                                   exit 0 ready, 3 not ready, 1 no answer
                                   (default http://127.0.0.1:9102, env TWILL_ADDRESS)
  twill netns attach|detach|check NETNS [--port HOST:CONTAINER/PROTO …]
                                   run the node's CNI plugins against a network namespace
                                   (see twill netns --help)
  twill wireguard rotate-key [--state-dir DIR] [--wireguard-key-file PATH]
                                   give this node a new WireGuard key; the running agent
                                   publishes it (see twill wireguard --help)
  twill --version                  print the version
  twill --help                     this text

etcd flags (all commands):
${formatFlagHelp(adminFlags)}
`;

function out(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

function fail(message: string, code = 1): number {
  process.stderr.write(`twill: ${message}\n`);
  return code;
}

const JSON_FLAG: FlagSpec = { name: "json", kind: "bool", default: "false", help: "print JSON" };

function openRegistry(
  argv: readonly string[],
  env: Env,
  extra: readonly FlagSpec[] = [],
): { registry: LeaseRegistry; positionals: readonly string[]; parsed: ParsedFlags } {
  const parsed = parseFlags([...adminFlags, ...extra], argv, env);
  const list = parsed.values.get("etcd-endpoints");
  const str = (name: string): string | undefined => {
    const value = parsed.values.get(name);
    return typeof value === "string" && value !== "" ? value : undefined;
  };
  const registry = new EtcdRegistry(
    {
      endpoints: Array.isArray(list) ? list : [],
      caFile: str("etcd-cafile"),
      certFile: str("etcd-certfile"),
      keyFile: str("etcd-keyfile"),
      username: str("etcd-username"),
      password: str("etcd-password"),
      flagNames: flagLabels(parsed, ETCD_NAMED_FLAGS),
    },
    etcdPrefix(str("etcd-prefix") ?? "/coreos.com/network", flagLabel(parsed, "etcd-prefix")),
  );
  return { registry, positionals: parsed.positionals, parsed };
}

async function configCommand(argv: readonly string[], env: Env): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb !== "get" && verb !== "set")
    return fail(`config: expected "get" or "set", got "${verb ?? ""}"`, 2);
  const { registry, positionals } = openRegistry(rest, env);
  try {
    if (verb === "get") {
      const { text } = await registry.getConfig();
      if (text === undefined) return fail(missingConfigMessage(registry.configKey));
      out(text);
      return 0;
    }
    const source = positionals[0];
    if (source === undefined) return fail("config set: give a file, or - for standard input", 2);
    const text = source === "-" ? await readStdin() : await readFile(source, "utf8");
    try {
      const { warnings } = parseNetworkConfig(text);
      for (const warning of warnings) process.stderr.write(`twill: warning: ${warning}\n`);
    } catch (error) {
      if (error instanceof ConfigError) return fail(`invalid network config: ${error.message}`);
      throw error;
    }
    await registry.putConfig(text.trim());
    out(`network config written to ${registry.configKey}`);
    return 0;
  } finally {
    registry.close();
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined) return "never (reservation)";
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h > 0
    ? `${h}h${String(m).padStart(2, "0")}m`
    : m > 0
      ? `${m}m${String(s).padStart(2, "0")}s`
      : `${s}s`;
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]?.map((_, col) => Math.max(...rows.map((row) => (row[col] ?? "").length))) ?? [];
  return rows
    .map((row) =>
      row
        .map((cell, col) => cell.padEnd(widths[col] ?? 0))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** `ttl` calls for many leases, a few at a time (one round trip each). */
async function timesToLive(
  registry: LeaseRegistry,
  leases: readonly Lease[],
): Promise<(number | undefined)[]> {
  const results: (number | undefined)[] = [];
  for (let i = 0; i < leases.length; i += 32) {
    const chunk = leases.slice(i, i + 32);
    results.push(
      ...(await Promise.all(chunk.map((l) => registry.timeToLive(l.etcdLeaseId).catch(() => undefined)))),
    );
  }
  return results;
}

/** The networks of a config, for one line: "10.244.0.0/16", "10.244.0.0/16 and fd00::/56", "fd00::/56". */
function networksText(config: NetworkConfig): string {
  const networks: string[] = [];
  if (config.enableIPv4) networks.push(formatCidr(config.network));
  if (config.ipv6 !== undefined) networks.push(formatCidr6(config.ipv6.network));
  return networks.join(" and ");
}

/** `twill leases --json`: one object, stable field names, for scripts. */
function leasesJson(
  config: NetworkConfig | undefined,
  leases: readonly Lease[],
  ttls: readonly (number | undefined)[],
  invalid: ReadonlyMap<string, InvalidEntry> | undefined,
): object {
  const rawJson = (text: string | undefined): unknown => {
    try {
      return text === undefined ? null : JSON.parse(text);
    } catch {
      return text;
    }
  };
  return {
    network: config === undefined || !config.enableIPv4 ? null : formatCidr(config.network),
    ipv6Network: config?.ipv6 === undefined ? null : formatCidr6(config.ipv6.network),
    leases: leases.map((lease, i) => {
      const ttl = ttls[i];
      const v4 = hasIPv4(lease.subnet);
      return {
        key: lease.key,
        subnet: v4 ? formatCidr(lease.subnet) : null,
        publicIP: v4 ? formatIPv4(lease.attrs.publicIP) : null,
        ipv6Subnet: lease.ipv6Subnet === undefined ? null : formatCidr6(lease.ipv6Subnet),
        publicIPv6: lease.attrs.publicIPv6,
        backend: lease.attrs.backendType ?? null,
        backendData: rawJson(lease.attrs.backendData),
        backendV6Data: rawJson(lease.attrs.backendV6Data),
        reservation: lease.etcdLeaseId === "0",
        expiresInSeconds: lease.etcdLeaseId === "0" ? null : (ttl ?? null),
      };
    }),
    invalid: [...(invalid?.values() ?? [])].map((entry) => ({ key: entry.key, reason: entry.reason })),
  };
}

/**
 * The BACKEND DATA column (vxlan: the VTEP MAC; wireguard: the public key): what the lease's backend shows of its BackendData; "?" when that data is
 * unusable (only leases listed without a network config get here unparsed), "-" when there is none.
 */
function peerDataColumn(lease: Lease): string {
  const backend = backendForLease(lease.attrs.backendType);
  if (backend?.describePeerData === undefined) return "-";
  let data = lease.peerData;
  if (data === undefined) {
    try {
      data = backend.parsePeerData(lease.attrs.backendData, lease.attrs.backendV6Data);
    } catch {
      return "?";
    }
  }
  return backend.describePeerData(data) ?? "-";
}

async function leasesCommand(argv: readonly string[], env: Env): Promise<number> {
  const { registry, parsed } = openRegistry(argv, env, [JSON_FLAG]);
  const json = parsed.values.get("json") === true;
  try {
    const { text } = await registry.getConfig();
    // Without a valid config the leases are listed all the same (that is when an operator needs
    // them most), just without the checks that need the network.
    let config: NetworkConfig | undefined;
    if (text === undefined)
      process.stderr.write(`twill: warning: ${missingConfigMessage(registry.configKey)}\n`);
    else {
      try {
        config = parseNetworkConfig(text).config;
      } catch (error) {
        process.stderr.write(`twill: warning: invalid network config: ${errorMessage(error)}\n`);
      }
    }
    const snapshot = await registry.listSubnets();
    const view =
      config === undefined
        ? undefined
        : computeView(snapshot.entries, {
            prefix: registry.prefix,
            config,
            ownKey: undefined,
            ownSubnet: undefined,
            // What an agent sets aside, this lists as invalid: e.g. vxlan leases need usable BackendData,
            // and of two leases with one VTEP MAC the newer.
            parsePeerData: parsePeerDataByBackend,
            identityOf: identityByBackend,
          });
    const leases = (view ? [...view.peers.values()] : leasesForAllocation(snapshot.entries)).sort(
      compareBySubnets,
    );
    const ttls = await timesToLive(registry, leases);
    if (json) {
      out(JSON.stringify(leasesJson(config, leases, ttls, view?.invalid), null, 2));
      return 0;
    }
    // IPv6 columns only where there is IPv6: an IPv4-only cluster's listing stays as it was.
    const ipv6 = config?.ipv6 !== undefined || leases.some((lease) => lease.ipv6Subnet !== undefined);
    const header = ipv6
      ? ["SUBNET", "PUBLIC IP", "IPV6 SUBNET", "PUBLIC IPV6", "BACKEND", "BACKEND DATA", "EXPIRES IN"]
      : ["SUBNET", "PUBLIC IP", "BACKEND", "BACKEND DATA", "EXPIRES IN"];
    const rows: string[][] = [header];
    for (const [i, lease] of leases.entries()) {
      const v4 = hasIPv4(lease.subnet);
      rows.push([
        v4 ? formatCidr(lease.subnet) : "-",
        v4 ? formatIPv4(lease.attrs.publicIP) : "-",
        ...(ipv6
          ? [
              lease.ipv6Subnet === undefined ? "-" : formatCidr6(lease.ipv6Subnet),
              lease.attrs.publicIPv6 ?? "-",
            ]
          : []),
        // flannel's udp (and alloc) leases carry no BackendType.
        lease.attrs.backendType ?? "(none: udp)",
        peerDataColumn(lease),
        formatDuration(ttls[i]),
      ]);
    }
    out(table(rows));
    out(
      `${leases.length} lease(s)${config ? ` in ${networksText(config)}` : " (not checked against a network config)"}`,
    );
    if (view && view.invalid.size > 0) {
      out(`\n${view.invalid.size} invalid entr${view.invalid.size === 1 ? "y" : "ies"} (skipped by agents):`);
      for (const entry of view.invalid.values()) out(`  ${entry.key}: ${entry.reason}`);
    }
    return 0;
  } finally {
    registry.close();
  }
}

async function agentCommand(argv: readonly string[], env: Env): Promise<number> {
  if (argv.includes("--help") || argv.includes("-help") || argv.includes("-h")) {
    out(
      `Usage: twill agent [flags]\n\nFlags (each also settable from the environment):\n${formatFlagHelp(agentFlags)}`,
    );
    return 0;
  }
  if (argv.includes("--version") || argv.includes("-version")) {
    out(`twill ${VERSION}`);
    return 0;
  }
  const options = parseAgentOptions(argv, env);
  const log = createLogger(options.logLevel as LevelWithSilent, options.logFormat);
  log.info(
    { version: VERSION, etcd: options.etcd.endpoints, prefix: options.etcd.prefix },
    "twill agent starting",
  );
  for (const warning of options.warnings) log.warn(warning);
  routeWarnings((warning) => log.warn({ warning: warning.name, code: warning.code }, warning.message));
  const missing = await checkOwnCapabilities(neededCapabilities(options));
  if (missing.length > 0) {
    log.fatal({ missing: missing.map((cap) => cap.name) }, missingCapabilitiesMessage(missing));
    return 1;
  }
  const controller = new AbortController();
  const notify = (state: string): void => {
    try {
      if (sdNotify(state, env)) log.info({ state: state.split("\n")[0] }, "told systemd");
    } catch (error) {
      log.warn({ err: error }, "cannot notify systemd (NOTIFY_SOCKET)");
    }
  };
  const stop = (signal: string): void => {
    if (controller.signal.aborted) return;
    log.info({ signal }, "stopping; the data plane is left as it is");
    notify("STOPPING=1");
    controller.abort();
  };
  // `on`, not `once`: a second signal during shutdown must not fall back to the default action and
  // kill the agent halfway through. stop() is idempotent.
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  const store = new StateStore();
  const metrics = new Metrics({ version: VERSION, state: () => store.current });
  const agent = new Agent(options, log, metrics, { store, ruleWatch: agentRuleWatch(env) });
  // Type=notify: ready once, when the agent first is (subnet.env written, data plane programmed).
  const stopWatchingReadiness = store.onChange(() => {
    if (store.notReady().length > 0) return;
    stopWatchingReadiness();
    const subnet = store.current.ownLease === undefined ? "?" : formatCidr(store.current.ownLease.subnet);
    notify(`READY=1\nSTATUS=ready: subnet ${subnet}`);
  });
  const addresses = [options.metricsAddress, options.healthzAddress].filter(
    (address): address is ListenAddress => address !== undefined,
  );
  const handler = createHandler({
    registry: metrics.registry,
    source: agentEndpoints({ state: () => agent.store.current, heartbeats: agent.heartbeats }, VERSION),
    onError: (path, error) => log.error({ path, err: error }, "HTTP endpoint failed"),
    statusFromAnywhere: options.statusFromAnywhere,
  });
  const endpoints = serve(addresses, handler, {
    listening: (server) =>
      log.info(
        { address: formatListenAddress(server.address) },
        "serving /metrics, /healthz, /readyz and /status",
      ),
    failed: (address, error) =>
      log.error(
        { address: formatListenAddress(address), err: error },
        "cannot serve the metrics and health endpoints; retrying",
      ),
  });
  try {
    await agent.run(controller.signal);
  } catch {
    // The agent has logged the failure itself; the exit code tells the supervisor.
    return 1;
  } finally {
    await endpoints.close();
  }
  log.info("stopped cleanly");
  return 0;
}

const statusFlags: readonly FlagSpec[] = [
  {
    name: "address",
    kind: "string",
    default: "http://127.0.0.1:9102",
    help: "the agent's metrics address",
    metavar: "URL",
  },
  { name: "json", kind: "bool", default: "false", help: "print the agent's /status JSON as it is" },
];

/** `twill status`'s exit code when the agent answers but is not ready (1: it did not answer). */
const STATUS_NOT_READY = 3;

async function statusCommand(argv: readonly string[], env: Env): Promise<number> {
  if (argv.includes("--help") || argv.includes("-help") || argv.includes("-h")) {
    out(`Usage: twill status [flags]\n\nFlags:\n${formatFlagHelp(statusFlags)}`);
    return 0;
  }
  const parsed = parseFlags(statusFlags, argv, env);
  if (parsed.positionals.length > 0)
    return fail(`status: unexpected argument "${parsed.positionals[0] ?? ""}"`, 2);
  try {
    const status = await fetchStatus(String(parsed.values.get("address")));
    out(parsed.values.get("json") === true ? JSON.stringify(status, null, 2) : renderStatus(status));
    // As `systemctl is-active`: 3 for "answered, but not ready", so scripts and probes can tell.
    return status.ready ? 0 : STATUS_NOT_READY;
  } catch (error) {
    if (error instanceof StatusFetchError) return fail(error.message);
    throw error;
  }
}

export async function runCli(argv: readonly string[], env: Env): Promise<number> {
  const [command, ...rest] = argv;
  routeWarnings((warning) => process.stderr.write(`twill: warning: ${warning.message}\n`));
  try {
    switch (command) {
      case undefined:
      case "help":
      case "--help":
      case "-help":
      case "-h":
        out(usage);
        return command === undefined ? 2 : 0;
      case "--version":
      case "-version":
      case "version":
        out(`twill ${VERSION}`);
        return 0;
      case "agent":
        return await agentCommand(rest, env);
      case "config":
        return await configCommand(rest, env);
      case "leases":
        return await leasesCommand(rest, env);
      case "status":
        return await statusCommand(rest, env);
      case "netns":
        return await netnsCommand(rest, env);
      case "wireguard":
        return await wireguardCommand(rest, env);
      default:
        return fail(`unknown command "${command}"; run twill --help`, 2);
    }
  } catch (error) {
    if (error instanceof FlagError || error instanceof EtcdSettingsError) return fail(error.message, 2);
    return fail(errorMessage(error));
  }
}
