// `twill netns attach|detach|check <netns>`: runs the node's CNI plugin chain against a network namespace,
// the way cnitool and container runtimes do (libcni semantics, result cache, port mappings). It makes
// pods for the demo and the tests, and lets an operator see exactly what the plugins say.
import { readFile, statfs } from "node:fs/promises";
import { basename } from "node:path";
import { FlagError, formatFlagHelp, parseFlags, type FlagSpec } from "../config/flags.js";
import {
  cachePath,
  DEFAULT_CNI_CACHE_DIR,
  findCache,
  readCache,
  removeCache,
  writeCache,
} from "../cni/cache.js";
import {
  addNetworkList,
  checkNetworkList,
  delNetworkList,
  type ChainOptions,
  type RuntimeConf,
} from "../cni/chain.js";
import {
  CniConfigError,
  conflistFromObject,
  DEFAULT_CNI_CONF_FILE,
  isValidNetworkName,
  parseConflist,
  type NetworkConfigList,
} from "../cni/conflist.js";
import type { JsonObject } from "../cni/json.js";
import {
  formatPortMapping,
  parsePortMapping,
  portMappingJson,
  PortMappingError,
  type PortMapping,
} from "../cni/port-mappings.js";
import { formatCniResult, parseCniResult, type CniResult } from "../cni/result.js";
import { errorMessage } from "../util/log.js";

type Env = Readonly<Record<string, string | undefined>>;

export const DEFAULT_CNI_BIN_DIR = "/opt/cni/bin:/usr/lib/cni";
export const NETNS_DIR = "/var/run/netns";

export const netnsFlags: readonly FlagSpec[] = [
  {
    name: "port",
    kind: "string",
    default: "",
    repeatable: true,
    help: "publish a container port on the host (portmap plugin); attach only, detach replays the cached ones",
    metavar: "[HOSTIP:]HOST:CONTAINER[/tcp|udp|sctp]",
  },
  {
    name: "ifname",
    kind: "string",
    default: "eth0",
    help: "interface name inside the namespace (CNI_IFNAME)",
    metavar: "NAME",
  },
  {
    name: "container-id",
    kind: "string",
    default: "",
    help: "CNI_CONTAINERID (default: the namespace name)",
    metavar: "ID",
  },
  {
    name: "conf",
    kind: "string",
    default: "",
    help: "network config list to run (default: --cni-conf-file)",
    metavar: "FILE",
  },
  {
    name: "cni-conf-file",
    kind: "string",
    default: DEFAULT_CNI_CONF_FILE,
    help: "the conflist the agent writes",
    metavar: "FILE",
  },
  {
    name: "cni-bin-dir",
    kind: "string",
    default: DEFAULT_CNI_BIN_DIR,
    help: "plugin directories (CNI_PATH), colon- or comma-separated like the agent's --cni-bin-dir",
    metavar: "DIRS",
  },
  {
    name: "cni-cache-dir",
    kind: "string",
    default: DEFAULT_CNI_CACHE_DIR,
    help: "where ADD results are kept for CHECK and DEL",
    metavar: "DIR",
  },
  {
    name: "cni-args",
    kind: "string",
    default: "",
    help:
      'CNI_ARGS, e.g. "IP=10.244.5.7" (host-local: ask for that address; one address only, so on a ' +
      "dual-stack network the other family's comes from the pool); IgnoreUnknown=1 is added",
    metavar: "K=V;K=V",
  },
  { name: "json", kind: "bool", default: "false", help: "print the CNI result as JSON (attach, check)" },
  {
    name: "timeout",
    kind: "duration",
    default: "60s",
    min: 1,
    max: 3600,
    help: "per plugin call",
    metavar: "DURATION",
  },
];

export const netnsUsage = `Usage:
  twill netns attach <netns> [--port [HOSTIP:]HOST:CONTAINER[/PROTO] …] [flags]
  twill netns detach <netns> [flags]
  twill netns check  <netns> [flags]

Runs the CNI plugin chain of the node's network config list against a network namespace: ADD in order
(each plugin gets the previous result), DEL in reverse, CHECK with the cached ADD result, as libcni
and cnitool do. <netns> is a name under ${NETNS_DIR} (ip netns add NAME) or a path. A failed attach
undoes the plugins already run. With a dual-stack conflist (the agent writes one when IPv6 is on) the
pod gets an address of each family; detach gives both back.

Flags (each also settable from the environment as TWILL_<FLAG>):
${formatFlagHelp(netnsFlags)}
`;

interface Io {
  out(text: string): void;
  err(text: string): void;
}

const processIo: Io = {
  out: (text) => process.stdout.write(text.endsWith("\n") ? text : `${text}\n`),
  err: (text) => process.stderr.write(text.endsWith("\n") ? text : `${text}\n`),
};

/** A problem with the request itself (exit 2) rather than with running it (exit 1). */
class UsageError extends Error {}

/** The netns path and the container ID derived from its name. */
export function resolveNetns(arg: string): { path: string; name: string } {
  if (arg === "") throw new UsageError("the namespace name is empty");
  if (arg.includes("/")) return { path: arg, name: basename(arg) };
  if (arg === "." || arg === "..") throw new UsageError(`"${arg}" is not a namespace name`);
  return { path: `${NETNS_DIR}/${arg}`, name: arg };
}

/** CNI_IFNAME rules from the spec: 1–15 bytes, not . or .., no / : or whitespace. */
export function validateIfName(name: string): void {
  if (name === "" || Buffer.byteLength(name) > 15 || name === "." || name === ".." || /[/:\s]/.test(name)) {
    throw new UsageError(
      `--ifname "${name}" is not a valid interface name (1-15 characters, no / : or spaces)`,
    );
  }
}

/**
 * Every plugin in the chain parses CNI_ARGS and rejects keys it does not know (the bridge plugin fails
 * on host-local's IP=…) unless IgnoreUnknown=1 is among them, so it is added as kubelet and containerd do.
 */
export function withIgnoreUnknown(args: string): string {
  if (args === "" || /(^|;)IgnoreUnknown=/i.test(args)) return args;
  return `IgnoreUnknown=1;${args}`;
}

function validateCniArgs(args: string): void {
  if (args === "") return;
  for (const pair of args.split(";")) {
    if (!/^[^=;\s]+=[^;]*$/.test(pair)) throw new UsageError(`--cni-args: "${pair}" is not KEY=VALUE`);
  }
}

async function loadConflist(path: string): Promise<NetworkConfigList> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    const reason =
      error instanceof Error && "code" in error && error.code === "ENOENT" ? "no such file" : String(error);
    throw new CniConfigError(
      `cannot read the CNI config ${path}: ${reason} (the agent writes it once it holds a lease; or give --conf)`,
    );
  }
  return parseConflist(text, path);
}

// statfs(2) f_type of nsfs: what /var/run/netns/<name> (a bind mount) and /proc/<pid>/ns/net are on.
const NSFS_MAGIC = 0x6e736673;

/** false when the path does not exist; throws when it exists but is not a network namespace. */
async function netnsExists(path: string): Promise<boolean> {
  let type: number;
  try {
    type = (await statfs(path)).type;
  } catch (error) {
    if (error instanceof Error && "code" in error && error.code === "ENOENT") return false;
    throw error;
  }
  // Checked here so a plugin never starts on it (and nothing needs undoing).
  if (type !== NSFS_MAGIC) throw new Error(`${path} is not a network namespace (not an nsfs mount)`);
  return true;
}

function missingNetns(arg: string, path: string): Error {
  return new Error(
    arg.includes("/")
      ? `network namespace ${path} does not exist`
      : `network namespace "${arg}" does not exist (no ${path}; create it with: ip netns add ${arg})`,
  );
}

function attachmentLine(verb: string, netns: string, list: NetworkConfigList, rt: RuntimeConf): string {
  return `${verb} ${netns} ${verb === "detached" ? "from" : "to"} network "${list.name}" (container ${rt.containerId}, interface ${rt.ifName})`;
}

function printResult(io: Io, result: CniResult, ports: readonly PortMapping[]): void {
  for (const line of formatCniResult(result)) io.out(line);
  if (ports.length > 0) {
    io.out("ports:");
    for (const mapping of ports) io.out(`  ${formatPortMapping(mapping)}`);
  }
}

function portsFromCapabilityArgs(args: JsonObject): PortMapping[] {
  const list = args.portMappings;
  if (!Array.isArray(list)) return [];
  const ports: PortMapping[] = [];
  for (const entry of list) {
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) continue;
    const { hostPort, containerPort, protocol, hostIP } = entry;
    if (typeof hostPort !== "number" || typeof containerPort !== "number") continue;
    const proto = protocol === "udp" || protocol === "sctp" ? protocol : "tcp";
    ports.push({
      hostPort,
      containerPort,
      protocol: proto,
      hostIP: typeof hostIP === "string" ? hostIP : undefined,
    });
  }
  return ports;
}

export async function netnsCommand(argv: readonly string[], env: Env, io: Io = processIo): Promise<number> {
  if (argv.length === 0 || argv.some((a) => a === "--help" || a === "-help" || a === "-h" || a === "help")) {
    io.out(netnsUsage);
    return argv.length === 0 ? 2 : 0;
  }
  const verb = argv[0];
  const prefix = `netns ${verb ?? ""}`;
  try {
    if (verb !== "attach" && verb !== "detach" && verb !== "check") {
      throw new UsageError(`expected attach, detach or check, got "${verb ?? ""}"`);
    }
    const parsed = parseFlags(netnsFlags, argv.slice(1), env);
    const [netnsArg, ...extra] = parsed.positionals;
    if (netnsArg === undefined) throw new UsageError("give the network namespace (a name or a path)");
    if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0] ?? ""}"`);
    const value = (name: string): string => {
      const v = parsed.values.get(name);
      return typeof v === "string" ? v : "";
    };
    const portSpecs = parsed.values.get("port");
    const ports = (Array.isArray(portSpecs) ? portSpecs : []).filter((p) => p !== "").map(parsePortMapping);
    if (ports.length > 0 && verb !== "attach")
      throw new UsageError("--port is for attach (detach replays the cached mappings)");
    const netns = resolveNetns(netnsArg);
    const ifName = value("ifname");
    validateIfName(ifName);
    const containerId = value("container-id") || netns.name;
    if (!isValidNetworkName(containerId)) {
      throw new UsageError(
        `container ID "${containerId}" is invalid (letters, digits, _ . -); give --container-id`,
      );
    }
    const cniArgs = withIgnoreUnknown(value("cni-args"));
    validateCniArgs(cniArgs);
    const confPath = value("conf") || value("cni-conf-file");
    // Colons as in CNI_PATH, or commas as the agent's --cni-bin-dir: TWILL_CNI_BIN_DIR serves both.
    const binDirs = value("cni-bin-dir")
      .split(/[:,]/)
      .filter((d) => d !== "");
    const timeout = parsed.values.get("timeout");
    const chain: ChainOptions = { binDirs, timeoutMs: (typeof timeout === "number" ? timeout : 60) * 1000 };
    const cacheDir = value("cni-cache-dir");
    const json = parsed.values.get("json") === true;

    if (verb === "attach") {
      const list = await loadConflist(confPath);
      if (ports.length > 0 && !list.plugins.some((p) => p.capabilities.has("portMappings"))) {
        throw new CniConfigError(
          `--port: no plugin in network "${list.name}" (${confPath}) handles port mappings`,
        );
      }
      const cacheFile = cachePath(cacheDir, list.name, containerId, ifName);
      if ((await readCache(cacheFile)) !== undefined) {
        throw new Error(
          `${netnsArg} is already attached to network "${list.name}" as ${containerId}/${ifName} (${cacheFile}); detach it first`,
        );
      }
      if (!(await netnsExists(netns.path))) throw missingNetns(netnsArg, netns.path);
      const capabilityArgs: JsonObject = ports.length > 0 ? { portMappings: ports.map(portMappingJson) } : {};
      const rt: RuntimeConf = { containerId, netns: netns.path, ifName, args: cniArgs, capabilityArgs };
      const result = await addNetworkList(list, rt, chain);
      try {
        await writeCache(cacheFile, {
          containerId,
          ifName,
          networkName: list.name,
          netns: netns.path,
          cniArgs,
          capabilityArgs,
          config: list.raw,
          result: result.raw,
        });
      } catch (error) {
        // An attachment nobody can CHECK or cleanly DEL is worse than none: undo it.
        await delNetworkList(list, rt, result.raw, chain).catch(() => undefined);
        throw new Error(`cannot write the result cache ${cacheFile}: ${errorMessage(error)}; attach undone`, {
          cause: error,
        });
      }
      if (json) io.out(JSON.stringify(result.raw, null, 2));
      else {
        io.out(attachmentLine("attached", netnsArg, list, rt));
        printResult(io, result, ports);
      }
      return 0;
    }

    if (verb === "detach") {
      // Prefer what ADD ran (the conflist may have changed since, e.g. after a lease change, or be gone).
      let list: NetworkConfigList | undefined;
      let confError: unknown;
      try {
        list = await loadConflist(confPath);
      } catch (error) {
        confError = error;
      }
      const cached =
        list === undefined
          ? await findCache(cacheDir, containerId, ifName)
          : await readCache(cachePath(cacheDir, list.name, containerId, ifName));
      if (cached !== undefined)
        list = conflistFromObject(cached.config, `cached config for ${containerId}/${ifName}`);
      if (list === undefined) throw confError instanceof Error ? confError : new Error(String(confError));
      const exists = await netnsExists(netns.path);
      const rt: RuntimeConf = {
        containerId,
        // The spec lets DEL run without a namespace, so a pod whose namespace is gone still gets its address back.
        netns: exists ? netns.path : "",
        ifName,
        args: cniArgs || (cached?.cniArgs ?? ""),
        capabilityArgs: cached?.capabilityArgs ?? {},
      };
      await delNetworkList(list, rt, cached?.result, chain);
      const cacheFile = cachePath(cacheDir, list.name, containerId, ifName);
      await removeCache(cacheFile);
      io.out(attachmentLine("detached", netnsArg, list, rt));
      if (cached === undefined)
        io.out(`note: no cached result in ${cacheFile}; DEL ran with the current config`);
      else {
        const released = parseCniResult(cached.result, "cached result").ips.map((ip) => ip.address);
        if (released.length > 0) io.out(`released ${released.join(", ")}`);
      }
      if (!exists)
        io.out(`note: ${netns.path} does not exist; DEL ran without a namespace (addresses released)`);
      return 0;
    }

    // check
    const list = await loadConflist(confPath);
    if (list.disableCheck) {
      io.out(`CHECK is disabled for network "${list.name}" (disableCheck in ${confPath})`);
      return 0;
    }
    const cacheFile = cachePath(cacheDir, list.name, containerId, ifName);
    const cached = await readCache(cacheFile);
    if (cached === undefined) {
      throw new Error(
        `${netnsArg} is not attached to network "${list.name}" as ${containerId}/${ifName} (no ${cacheFile})`,
      );
    }
    if (!(await netnsExists(netns.path))) throw missingNetns(netnsArg, netns.path);
    if (JSON.stringify(cached.config) !== JSON.stringify(list.raw)) {
      io.err(
        `twill: warning: ${confPath} changed since ${netnsArg} was attached; checking against the current config`,
      );
    }
    const rt: RuntimeConf = {
      containerId,
      netns: netns.path,
      ifName,
      args: cniArgs || cached.cniArgs,
      capabilityArgs: cached.capabilityArgs,
    };
    const { warnings } = await checkNetworkList(list, rt, cached.result, chain);
    for (const warning of warnings) io.err(`twill: warning: ${warning}`);
    const result = parseCniResult(cached.result, "cached result");
    if (json) io.out(JSON.stringify(result.raw, null, 2));
    else {
      io.out(
        `ok: ${netnsArg} passes CHECK on network "${list.name}" (container ${containerId}, interface ${ifName})`,
      );
      printResult(io, result, portsFromCapabilityArgs(cached.capabilityArgs));
    }
    return 0;
  } catch (error) {
    const message = errorMessage(error);
    io.err(`twill: ${prefix}: ${message}`);
    return error instanceof UsageError || error instanceof FlagError || error instanceof PortMappingError
      ? 2
      : 1;
  }
}
