// The agent's options: flanneld's flags (same names, defaults and meaning where they apply) plus
// twill's own. docs/configuration.md documents this table; keep them in step.
import { parseListenAddress, type ListenAddress } from "./listen-address.js";
import { errorMessage, LOG_FORMATS, type LogFormat } from "../util/log.js";
import { tryParseIPv4, unusableUnicastReason, type IPv4 } from "../ip/ipv4.js";
import { formatIPv6, tryParseIPv6, unusableUnicastReason6 } from "../ip/ipv6.js";
import { canonicalAddress } from "../ip/address.js";
import { etcdEndpointProblem } from "./etcd-endpoint.js";
import { flannelCompat } from "./flannel-compat.js";
import { IPTABLES_MODES, iptablesMode, type IptablesMode } from "./iptables-mode.js";
import {
  FlagError,
  flagLabel,
  flagLabels,
  parseFlags,
  type FlagSpec,
  type FlagValue,
  type ParsedFlags,
} from "./flags.js";

function wireguardImplementation(value: string): "auto" | "kernel" | "userspace" {
  if (value === "auto" || value === "kernel" || value === "userspace") return value;
  throw new Error(`--wireguard-implementation: "${value}" is not one of auto, kernel, userspace`);
}

/** The metric of the --ip-blackhole-route route: far behind the bridge's connected route (metric 0). */
export const BLACKHOLE_ROUTE_METRIC = 1_000_000;

/** The etcd settings the client's errors name. */
export const ETCD_NAMED_FLAGS = ["etcd-endpoints", "etcd-cafile", "etcd-certfile", "etcd-keyfile"];

export const agentFlags: readonly FlagSpec[] = [
  // etcd
  {
    name: "etcd-endpoints",
    kind: "list",
    default: "http://127.0.0.1:4001,http://127.0.0.1:2379",
    help: "comma-separated etcd client URLs",
    flannel: true,
    metavar: "URLS",
  },
  {
    name: "etcd-prefix",
    kind: "string",
    default: "/coreos.com/network",
    help: "etcd key prefix",
    flannel: true,
    metavar: "PREFIX",
  },
  {
    name: "etcd-cafile",
    kind: "string",
    default: "",
    help: "CA certificate to verify etcd's server certificate",
    flannel: true,
    metavar: "FILE",
  },
  {
    name: "etcd-certfile",
    kind: "string",
    default: "",
    help: "client certificate for etcd (with --etcd-keyfile)",
    flannel: true,
    metavar: "FILE",
  },
  {
    name: "etcd-keyfile",
    kind: "string",
    default: "",
    help: "client key for etcd (with --etcd-certfile)",
    flannel: true,
    metavar: "FILE",
  },
  {
    name: "etcd-username",
    kind: "string",
    default: "",
    help: "etcd username (basic auth)",
    flannel: true,
    metavar: "NAME",
  },
  {
    name: "etcd-password",
    kind: "string",
    default: "",
    help: "etcd password (basic auth)",
    flannel: true,
    metavar: "PASSWORD",
  },
  // node identity
  {
    name: "iface",
    kind: "string",
    default: "",
    help: "external interface, by name or by IPv4 or IPv6 address; tried in order",
    flannel: true,
    repeatable: true,
    metavar: "NAME|IP",
  },
  {
    name: "iface-regex",
    kind: "string",
    default: "",
    help: "regex matched against interface addresses (IPv4 dotted, IPv6 in canonical form such as 2001:db8::5), then names; after --iface",
    flannel: true,
    repeatable: true,
    metavar: "REGEX",
  },
  {
    name: "iface-can-reach",
    kind: "string",
    default: "",
    help: "use the interface the kernel routes this IPv4 or IPv6 address through (as `ip route get`); after --iface and --iface-regex",
    flannel: true,
    metavar: "IP",
  },
  {
    name: "public-ip",
    kind: "string",
    default: "",
    help: "IPv4 address advertised to peers (default: the external interface's)",
    flannel: true,
    metavar: "IP",
  },
  {
    name: "public-ipv6",
    kind: "string",
    default: "",
    help: "IPv6 accessible by other nodes for inter-host communication: advertised to peers (PublicIPv6) when the network config has EnableIPv6 (default: the external interface's global IPv6 address)",
    flannel: true,
    metavar: "IPV6",
  },
  // lease
  {
    name: "subnet-file",
    kind: "string",
    default: "/run/flannel/subnet.env",
    help: "where to write the subnet env file",
    flannel: true,
    metavar: "PATH",
  },
  {
    name: "subnet-lease-renew-margin",
    kind: "int",
    default: "60",
    min: 1,
    max: 1439,
    help: "renew the lease this many minutes before it expires (at most half of --lease-ttl before)",
    flannel: true,
    metavar: "MINUTES",
  },
  {
    name: "lease-ttl",
    kind: "duration",
    default: "24h",
    min: 5,
    max: 30 * 24 * 3600,
    help: "lifetime of the subnet lease in etcd (flannel: fixed 24h)",
    metavar: "DURATION",
  },
  {
    name: "release-lease-on-exit",
    kind: "bool",
    default: "false",
    help: "delete the lease on SIGTERM/SIGINT (default: keep it, so a restart gets the same subnet)",
  },
  // data plane
  {
    name: "bridge",
    kind: "string",
    default: "cni0",
    help: "the pod bridge twill creates and addresses (docker0 on Docker hosts)",
    metavar: "NAME",
  },
  {
    name: "resync-interval",
    kind: "duration",
    default: "5m",
    min: 1,
    max: 3600,
    help: "read the kernel again and reconcile everything this often, a safety net: drift is repaired at once from the kernel's notifications",
    metavar: "DURATION",
  },
  {
    name: "kernel-watch",
    kind: "bool",
    default: "true",
    help: "follow the kernel's netlink notifications and repair drift at once; false = periodic resync only",
  },
  {
    name: "vxlan-tx-checksum-offload",
    kind: "bool",
    default: "true",
    help: "false: turn TX checksum offload off on the VXLAN device and keep it off, also after re-creation (the workaround for bad VXLAN checksums: Services and DNS timing out after 63 s, flannel#1279); needs ethtool",
  },
  {
    name: "wireguard-implementation",
    kind: "string",
    default: "auto",
    choices: ["auto", "kernel", "userspace"],
    help: "wireguard backend: the kernel's WireGuard (module wireguard), or wireguard-go in userspace; auto = the kernel's when it has the module, else wireguard-go",
    metavar: "WHICH",
  },
  {
    name: "wireguard-go",
    kind: "string",
    default: "wireguard-go",
    help: "wireguard backend: the wireguard-go binary (a path, or a name looked up in PATH; Debian package wireguard-go)",
    metavar: "PATH",
  },
  {
    name: "wireguard-key-file",
    kind: "string",
    default: "",
    help: "wireguard backend: this node's private key file (base64, mode 0400), made when absent; \"\" = $WIREGUARD_KEY_FILE (flanneld's variable) if set, else wireguard.key in --state-dir. A key flanneld left in /run/flannel/wgkey is taken over",
    metavar: "PATH",
  },
  {
    name: "ip-blackhole-route",
    kind: "bool",
    default: "false",
    help: `add a blackhole route for this node's subnet (metric ${BLACKHOLE_ROUTE_METRIC}, behind the bridge's own route), so traffic to it never leaves by another route while the bridge is down or unaddressed`,
    flannel: true,
  },
  // files for container runtimes, written when the lease is known or changes
  {
    name: "cni-conf-file",
    kind: "string",
    default: "/etc/cni/net.d/10-twill.conflist",
    help: 'CNI network config list (bridge, host-local, portmap) for this node\'s subnet; "" = none',
    metavar: "PATH",
  },
  {
    name: "cni-bin-dir",
    kind: "list",
    default: "/opt/cni/bin,/usr/lib/cni",
    help: "where the CNI plugins are (comma- or colon-separated, first match wins): the conflist declares the newest cniVersion (1.0.0, 0.4.0 or 0.3.1) that bridge, host-local and portmap there all speak",
    metavar: "DIRS",
  },
  {
    name: "docker-opts-file",
    kind: "string",
    default: "",
    help: 'Docker options env file like flannel\'s mk-docker-opts.sh, e.g. /run/flannel/docker; "" = off',
    metavar: "PATH",
  },
  {
    name: "docker-daemon-json",
    kind: "string",
    default: "",
    help: 'daemon.json to set bip, mtu and ip-masq in (other keys kept), e.g. /etc/docker/daemon.json; "" = off',
    metavar: "PATH",
  },
  // traffic
  {
    name: "ip-masq",
    kind: "bool",
    default: "false",
    help: "masquerade traffic leaving the cluster network",
    flannel: true,
  },
  {
    name: "ip-masq-fully-random-disable",
    kind: "bool",
    default: "false",
    help: "do not use --random-fully on the MASQUERADE rules",
    flannel: true,
  },
  {
    name: "iptables-resync",
    kind: "int",
    default: "5",
    min: 1,
    max: 3600,
    help: "restore missing masquerade/forward rules, checking this often when nothing reports removals; with nft notifications or legacy counters, every 5 min (or this often if longer)",
    flannel: true,
    metavar: "SECONDS",
  },
  {
    name: "iptables-forward-rules",
    kind: "bool",
    default: "true",
    help: "accept forwarded traffic to and from the cluster network (FLANNEL-FWD chain)",
    flannel: true,
  },
  {
    name: "iptables-mode",
    kind: "string",
    default: "auto",
    choices: IPTABLES_MODES,
    help: "iptables backend for the rules: auto (kubelet's hint chain, else the backend with more rules, else the system's), nft, legacy, or system (plain `iptables`)",
    metavar: "MODE",
  },
  // operations
  {
    name: "metrics-address",
    kind: "string",
    default: "0.0.0.0:9102",
    help: "serve /metrics, /healthz, /readyz and /status on IP:PORT ([IPv6]:PORT, :PORT = every address); empty disables",
    metavar: "ADDR",
  },
  {
    name: "status-from-anywhere",
    kind: "bool",
    default: "false",
    help: "serve /status (lease, peers, public IPs) to every client; by default only to loopback clients such as `twill status` on the node. /metrics and the probes are served to everyone",
  },
  {
    name: "healthz-ip",
    kind: "string",
    default: "0.0.0.0",
    help: "also serve the same endpoints on this IP when --healthz-port is set",
    flannel: true,
    metavar: "IP",
  },
  {
    name: "healthz-port",
    kind: "int",
    default: "0",
    min: 0,
    max: 65535,
    help: "port for --healthz-ip; 0 = off",
    flannel: true,
    metavar: "PORT",
  },
  {
    name: "startup-timeout",
    kind: "duration",
    default: "60s",
    min: 1,
    max: 86400,
    help: "how long the agent retries a start-up problem that waiting seldom fixes (an etcd TLS file missing or unreadable, TLS files with an http:// endpoint, no interface matching --iface/--iface-regex/--iface-can-reach, no default route) before it exits 1, so kubelet or systemd show a crash loop",
    metavar: "DURATION",
  },
  {
    name: "log-level",
    kind: "string",
    default: "info",
    choices: ["fatal", "error", "warn", "info", "debug", "trace", "silent"],
    help: "log level",
    metavar: "LEVEL",
  },
  {
    name: "log-format",
    kind: "string",
    default: "auto",
    choices: ["auto", ...LOG_FORMATS],
    help: 'json: one JSON record per line, with level names ("level":"info"); text: one readable line per record (time LEVEL message key=value …); auto: json, or colours on a terminal',
    metavar: "FORMAT",
  },
  {
    name: "v",
    kind: "int",
    default: "0",
    min: 0,
    max: 10,
    help: "flanneld's klog verbosity, mapped to a log level when --log-level is not given: 0–1 info, 2–4 debug, 5 and more trace",
    flannel: true,
    metavar: "N",
  },
  {
    name: "vmodule",
    kind: "string",
    default: "",
    help: "flanneld's per-file klog verbosity: accepted for existing unit files, ignored with a warning",
    flannel: true,
    metavar: "PATTERN=N,…",
  },
  {
    name: "log_backtrace_at",
    kind: "string",
    default: "",
    help: "flanneld's klog stack-trace location: accepted for existing unit files, ignored with a warning",
    flannel: true,
    metavar: "FILE:LINE",
  },
  {
    name: "state-dir",
    kind: "string",
    default: "/var/lib/twill",
    help: "directory for state kept across restarts and reboots: the VXLAN VTEP MAC, the udp proxy's table, the WireGuard key (wireguard.key), wireguard-go's pid file and log",
    metavar: "DIR",
  },
];

export interface AgentOptions {
  readonly etcd: {
    readonly endpoints: readonly string[];
    readonly prefix: string;
    readonly caFile: string | undefined;
    readonly certFile: string | undefined;
    readonly keyFile: string | undefined;
    readonly username: string | undefined;
    readonly password: string | undefined;
    /** How errors name each etcd setting: the env variable too when the value came from one. */
    readonly flagNames: Readonly<Record<string, string>>;
  };
  readonly iface: readonly string[];
  readonly ifaceRegex: readonly RegExp[];
  readonly publicIp: IPv4 | undefined;
  /** --public-ipv6, canonical text, checked to be a usable unicast IPv6 address. */
  readonly publicIpv6: string | undefined;
  /** --iface-can-reach, canonical IPv4 or IPv6 text: pick the interface the kernel routes it through. */
  readonly ifaceCanReach: string | undefined;
  readonly subnetFile: string;
  readonly renewMarginSeconds: number;
  readonly leaseTtlSeconds: number;
  readonly releaseLeaseOnExit: boolean;
  readonly bridge: string;
  readonly resyncIntervalSeconds: number;
  readonly kernelWatch: boolean;
  /** "" = off, for each of the three. */
  readonly cniConfFile: string;
  /** --cni-bin-dir: where the plugins the conflist names are asked for their versions. */
  readonly cniBinDirs: readonly string[];
  readonly dockerOptsFile: string;
  readonly dockerDaemonJson: string;
  readonly ipMasq: boolean;
  readonly ipMasqFullyRandomDisable: boolean;
  readonly iptablesResyncSeconds: number;
  readonly iptablesForwardRules: boolean;
  readonly iptablesMode: IptablesMode;
  readonly vxlanTxChecksumOffload: boolean;
  readonly wireguardImplementation: "auto" | "kernel" | "userspace";
  readonly wireguardGo: string;
  readonly wireguardKeyFile: string;
  readonly ipBlackholeRoute: boolean;
  /** --metrics-address; undefined when disabled. */
  readonly metricsAddress: ListenAddress | undefined;
  readonly statusFromAnywhere: boolean;
  /** --healthz-ip:--healthz-port; undefined when the port is 0. */
  readonly healthzAddress: ListenAddress | undefined;
  readonly logLevel: string;
  readonly startupTimeoutSeconds: number;
  /** --log-format; undefined = json, or pino-pretty on a terminal. */
  readonly logFormat: LogFormat | undefined;
  readonly stateDir: string;
  /** Where each option came from (for `twill status` and debugging precedence). */
  readonly sources: ReadonlyMap<string, string>;
  /** Things accepted but ignored (klog flags, flanneld variables of modes twill lacks): logged at start. */
  readonly warnings: readonly string[];
}

function logFormatOf(text: string): LogFormat | undefined {
  return LOG_FORMATS.find((format) => format === text);
}

/** What --log-level becomes from flanneld's -v when --log-level itself is not given. */
export function logLevelFromVerbosity(v: number): string {
  if (v >= 5) return "trace";
  if (v >= 2) return "debug";
  return "info";
}

function getter(parsed: ParsedFlags) {
  const get = (name: string): FlagValue => {
    const value = parsed.values.get(name);
    if (value === undefined) throw new Error(`internal: flag ${name} missing from table`);
    return value;
  };
  return {
    str: (name: string) => String(get(name)),
    opt: (name: string) => {
      const value = String(get(name));
      return value === "" ? undefined : value;
    },
    num: (name: string) => Number(get(name)),
    bool: (name: string) => get(name) === true,
    list: (name: string) => {
      const value = get(name);
      return Array.isArray(value) ? value : [String(value)];
    },
  };
}

/** --etcd-prefix without trailing slashes; it must be absolute, as flannel's keys are. */
export function etcdPrefix(text: string, label = "--etcd-prefix"): string {
  const prefix = text.replace(/\/+$/, "");
  if (!prefix.startsWith("/")) throw new FlagError(`${label}: "${text}" must start with /`);
  return prefix;
}

/** Parses `twill agent` arguments and environment into AgentOptions; throws FlagError naming the flag. */
export function parseAgentOptions(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): AgentOptions {
  const compat = flannelCompat(
    argv,
    env,
    agentFlags.filter((spec) => spec.flannel === true).map((spec) => spec.name),
  );
  const parsed = parseFlags(agentFlags, compat.argv, env);
  if (parsed.positionals.length > 0) {
    throw new FlagError(`unexpected argument "${parsed.positionals[0] ?? ""}"; twill agent takes only flags`);
  }
  const g = getter(parsed);
  const where = (flag: string): string => flagLabel(parsed, flag);
  const prefix = etcdPrefix(g.str("etcd-prefix"), where("etcd-prefix"));
  const bridge = g.str("bridge");
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(bridge)) {
    throw new FlagError(
      `${where("bridge")}: "${bridge}" is not a valid interface name (1–15 of A-Z a-z 0-9 _ . -)`,
    );
  }
  const metricsText = g.str("metrics-address");
  let metricsAddress: ListenAddress | undefined;
  try {
    metricsAddress = metricsText === "" ? undefined : parseListenAddress(metricsText);
  } catch (error) {
    throw new FlagError(`${where("metrics-address")}: ${errorMessage(error)}`);
  }
  const healthzIp = g.str("healthz-ip");
  const healthzPort = g.num("healthz-port");
  let healthzAddress: ListenAddress | undefined;
  try {
    const host = healthzIp.includes(":") ? `[${healthzIp}]` : healthzIp;
    healthzAddress = healthzPort === 0 ? undefined : parseListenAddress(`${host}:${healthzPort}`);
  } catch {
    throw new FlagError(`${where("healthz-ip")}: "${healthzIp}" is not an IP address`);
  }
  // Parsed here, once, so a typo exits 2 naming the flag instead of failing every interface selection.
  const publicIpText = g.opt("public-ip");
  let publicIp: IPv4 | undefined;
  if (publicIpText !== undefined) {
    publicIp = tryParseIPv4(publicIpText);
    const problem = publicIp === undefined ? "is not an IPv4 address" : unusableUnicastReason(publicIp);
    if (problem !== undefined) {
      throw new FlagError(
        `${where("public-ip")}: "${publicIpText}" ${publicIp === undefined ? problem : `is ${problem}`}`,
      );
    }
  }
  const publicIpv6Text = g.opt("public-ipv6");
  let publicIpv6: string | undefined;
  if (publicIpv6Text !== undefined) {
    const ip = tryParseIPv6(publicIpv6Text);
    if (ip === undefined) {
      throw new FlagError(`${where("public-ipv6")}: "${publicIpv6Text}" is not an IPv6 address`);
    }
    const problem = unusableUnicastReason6(ip);
    if (problem !== undefined) {
      throw new FlagError(`${where("public-ipv6")}: "${publicIpv6Text}" is ${problem}`);
    }
    publicIpv6 = formatIPv6(ip);
  }
  const ifaceRegex = g.list("iface-regex").map((pattern) => {
    try {
      return new RegExp(pattern);
    } catch (error) {
      throw new FlagError(
        `${where("iface-regex")}: "${pattern}" is not a valid regular expression (${errorMessage(error)})`,
      );
    }
  });
  for (const endpoint of g.list("etcd-endpoints")) {
    const problem = etcdEndpointProblem(endpoint);
    if (problem !== undefined) throw new FlagError(`${where("etcd-endpoints")}: ${problem}`);
  }
  const canReachText = g.opt("iface-can-reach");
  let ifaceCanReach: string | undefined;
  if (canReachText !== undefined) {
    try {
      ifaceCanReach = canonicalAddress(canReachText);
    } catch {
      throw new FlagError(
        `${where("iface-can-reach")}: "${canReachText}" is not an IP address (IPv4 or IPv6)`,
      );
    }
  }
  const warnings = [...compat.warnings];
  for (const ignored of ["vmodule", "log_backtrace_at"]) {
    if (g.opt(ignored) !== undefined) {
      warnings.push(
        `${where(ignored)} is a klog setting of flanneld; twill logs through pino and ignores it`,
      );
    }
  }
  const logLevel =
    parsed.sources.get("log-level") === "default" && parsed.sources.get("v") !== "default"
      ? logLevelFromVerbosity(g.num("v"))
      : g.str("log-level");
  const renewMarginSeconds = g.num("subnet-lease-renew-margin") * 60;
  const leaseTtlSeconds = g.num("lease-ttl");
  return {
    etcd: {
      endpoints: g.list("etcd-endpoints"),
      prefix,
      caFile: g.opt("etcd-cafile"),
      certFile: g.opt("etcd-certfile"),
      keyFile: g.opt("etcd-keyfile"),
      username: g.opt("etcd-username"),
      password: g.opt("etcd-password"),
      flagNames: flagLabels(parsed, ETCD_NAMED_FLAGS),
    },
    iface: g.list("iface"),
    ifaceRegex,
    publicIp,
    publicIpv6,
    ifaceCanReach,
    subnetFile: g.str("subnet-file"),
    renewMarginSeconds,
    leaseTtlSeconds,
    releaseLeaseOnExit: g.bool("release-lease-on-exit"),
    bridge,
    resyncIntervalSeconds: g.num("resync-interval"),
    kernelWatch: g.bool("kernel-watch"),
    cniConfFile: g.str("cni-conf-file"),
    // Commas like every list flag, or colons like CNI_PATH and `twill netns --cni-bin-dir`.
    cniBinDirs: g.list("cni-bin-dir").flatMap((dirs) => dirs.split(":").filter((dir) => dir !== "")),
    dockerOptsFile: g.str("docker-opts-file"),
    dockerDaemonJson: g.str("docker-daemon-json"),
    ipMasq: g.bool("ip-masq"),
    ipMasqFullyRandomDisable: g.bool("ip-masq-fully-random-disable"),
    iptablesResyncSeconds: g.num("iptables-resync"),
    iptablesForwardRules: g.bool("iptables-forward-rules"),
    iptablesMode: iptablesMode(g.str("iptables-mode")),
    vxlanTxChecksumOffload: g.bool("vxlan-tx-checksum-offload"),
    wireguardImplementation: wireguardImplementation(g.str("wireguard-implementation")),
    wireguardGo: g.str("wireguard-go"),
    wireguardKeyFile: g.str("wireguard-key-file"),
    ipBlackholeRoute: g.bool("ip-blackhole-route"),
    metricsAddress,
    statusFromAnywhere: g.bool("status-from-anywhere"),
    healthzAddress,
    logLevel,
    logFormat: logFormatOf(g.str("log-format")),
    startupTimeoutSeconds: g.num("startup-timeout"),
    stateDir: g.str("state-dir"),
    sources: parsed.sources,
    warnings,
  };
}
