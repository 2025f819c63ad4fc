// Running a network config list like libcni (AddNetworkList / DelNetworkList / CheckNetworkList):
// ADD in order, each plugin getting the previous one's result; DEL in reverse with the cached result;
// CHECK in order with the cached result. Unlike libcni, a failed ADD is undone here (DEL of the
// plugins already run), so a failure leaves no veth and no allocated address behind.
import { compareVersions, type NetworkConfigList, type PluginConf } from "./conflist.js";
import {
  CniPluginError,
  CniPluginNotFoundError,
  pluginErrorFrom,
  processExecutor,
  type CniCommand,
  type PluginExecutor,
} from "./exec.js";
import { cloneJson, isJsonObject, type JsonObject } from "./json.js";
import { parseCniResult, type CniResult } from "./result.js";
import { errorMessage } from "../util/log.js";

export interface RuntimeConf {
  readonly containerId: string;
  /** The netns path; "" for a DEL whose namespace is already gone (allowed by the spec). */
  readonly netns: string;
  readonly ifName: string;
  /** CNI_ARGS, "K=V;K2=V2" ("" for none). */
  readonly args: string;
  /** Runtime values for plugin capabilities, e.g. { portMappings: [...] }. */
  readonly capabilityArgs: JsonObject;
}

export interface ChainOptions {
  /** CNI_PATH: where plugins are looked up, in order. */
  readonly binDirs: readonly string[];
  readonly executor?: PluginExecutor;
  /** Per plugin call; default 60 s. */
  readonly timeoutMs?: number;
}

/** ADD failed; the plugins already run were undone (or `cleanupErrors` says what could not be). */
export class CniAddError extends Error {
  override name = "CniAddError";
  constructor(
    readonly failure: Error,
    readonly cleanupErrors: readonly string[],
  ) {
    super(
      cleanupErrors.length === 0
        ? failure.message
        : `${failure.message}; undoing the plugins already run also failed: ${cleanupErrors.join("; ")}`,
    );
  }
}

/** DEL ran every plugin, but some failed. */
export class CniDelError extends Error {
  override name = "CniDelError";
  constructor(readonly failures: readonly Error[]) {
    super(failures.map((f) => f.message).join("; "));
  }
}

/**
 * The config one plugin gets on stdin (libcni's buildOneConfig): its own object plus the list's name
 * and cniVersion, prevResult when there is one, and runtimeConfig for the capabilities it declares.
 */
export function pluginStdin(
  list: NetworkConfigList,
  plugin: PluginConf,
  rt: RuntimeConf,
  prevResult: JsonObject | undefined,
): JsonObject {
  const conf = cloneJson(plugin.raw);
  conf.name = list.name;
  conf.cniVersion = list.cniVersion;
  if (prevResult !== undefined) conf.prevResult = cloneJson(prevResult);
  else delete conf.prevResult;
  const runtime: JsonObject = isJsonObject(conf.runtimeConfig) ? conf.runtimeConfig : {};
  let injected = false;
  for (const capability of plugin.capabilities) {
    const value = rt.capabilityArgs[capability];
    if (value !== undefined) {
      runtime[capability] = cloneJson(value);
      injected = true;
    }
  }
  if (injected) conf.runtimeConfig = runtime;
  return conf;
}

/** The CNI_* environment for one call. Every variable is set, so none leaks in from the caller. */
export function pluginEnv(
  command: CniCommand,
  rt: RuntimeConf,
  binDirs: readonly string[],
): Record<string, string> {
  return {
    CNI_COMMAND: command,
    CNI_CONTAINERID: rt.containerId,
    CNI_NETNS: rt.netns,
    CNI_IFNAME: rt.ifName,
    CNI_ARGS: rt.args,
    CNI_PATH: binDirs.join(":"),
  };
}

/** Finds every plugin's executable before anything runs, so a missing one changes nothing. */
export async function resolvePlugins(list: NetworkConfigList, options: ChainOptions): Promise<string[]> {
  const executor = options.executor ?? processExecutor;
  const binaries: string[] = [];
  for (const plugin of list.plugins) {
    const found = await executor.find(plugin.type, options.binDirs);
    if (found === undefined) throw new CniPluginNotFoundError(plugin.type, options.binDirs);
    binaries.push(found);
  }
  return binaries;
}

async function invoke(
  command: CniCommand,
  list: NetworkConfigList,
  index: number,
  binary: string,
  rt: RuntimeConf,
  prevResult: JsonObject | undefined,
  options: ChainOptions,
): Promise<CniResult | undefined> {
  const plugin = list.plugins[index];
  if (plugin === undefined) throw new Error(`internal: no plugin ${index}`);
  const executor = options.executor ?? processExecutor;
  const timeoutMs = options.timeoutMs ?? 60_000;
  const output = await executor.run({
    binary,
    env: pluginEnv(command, rt, options.binDirs),
    stdin: JSON.stringify(pluginStdin(list, plugin, rt, prevResult)),
    timeoutMs,
  });
  if (output.exitCode !== 0) throw pluginErrorFrom(plugin.type, command, output, timeoutMs);
  if (command !== "ADD") return undefined;
  let value: unknown;
  try {
    value = JSON.parse(output.stdout);
  } catch {
    throw new CniPluginError(
      plugin.type,
      command,
      undefined,
      "result is not JSON",
      undefined,
      `plugin ${plugin.type} succeeded but printed no JSON result: ${output.stdout.trim().slice(0, 200) || "(nothing)"}`,
    );
  }
  return parseCniResult(value, `plugin ${plugin.type} result`);
}

/**
 * ADD: runs the list in order; the last plugin's result is the attachment's result. On a failure the
 * plugins run so far, including the failing one (it may have half-configured), get DEL in reverse.
 */
export async function addNetworkList(
  list: NetworkConfigList,
  rt: RuntimeConf,
  options: ChainOptions,
): Promise<CniResult> {
  const binaries = await resolvePlugins(list, options);
  let result: CniResult | undefined;
  for (let i = 0; i < list.plugins.length; i++) {
    try {
      result = await invoke("ADD", list, i, binaries[i] ?? "", rt, result?.raw, options);
    } catch (error) {
      const failure = error instanceof Error ? error : new Error(String(error));
      const cleanupErrors: string[] = [];
      for (let j = i; j >= 0; j--) {
        try {
          await invoke("DEL", list, j, binaries[j] ?? "", rt, result?.raw, options);
        } catch (cleanup) {
          cleanupErrors.push(errorMessage(cleanup));
        }
      }
      throw new CniAddError(failure, cleanupErrors);
    }
  }
  if (result === undefined) throw new Error("internal: ADD produced no result");
  return result;
}

/**
 * DEL: every plugin in reverse order with the cached result. Unlike libcni it goes on after a failure,
 * so one broken plugin does not keep the others' resources; the errors are reported together.
 */
export async function delNetworkList(
  list: NetworkConfigList,
  rt: RuntimeConf,
  cachedResult: JsonObject | undefined,
  options: ChainOptions,
): Promise<void> {
  const binaries = await resolvePlugins(list, options);
  const failures: Error[] = [];
  for (let i = list.plugins.length - 1; i >= 0; i--) {
    try {
      await invoke("DEL", list, i, binaries[i] ?? "", rt, cachedResult, options);
    } catch (error) {
      failures.push(error instanceof Error ? error : new Error(String(error)));
    }
  }
  if (failures.length > 0) throw new CniDelError(failures);
}

/**
 * portmap before v1.2.0 (Debian's 1.1.1) fails CHECK on every IPv4-only attachment with published ports:
 * it looks for the container's chain in ip6tables too (containernetworking/plugins#819, fixed by #821).
 * It checks IPv4 first, so this error means the IPv4 rules passed. Returns the warning, or undefined
 * when the failure is something else.
 */
export function knownCheckBug(error: unknown, cachedResult: JsonObject): string | undefined {
  if (!(error instanceof CniPluginError) || error.plugin !== "portmap") return undefined;
  if (!/could not check ipv6 dnat: chain \S+ not found/.test(error.msg)) return undefined;
  let hasIpv6: boolean;
  try {
    hasIpv6 = parseCniResult(cachedResult).ips.some((ip) => ip.address.includes(":"));
  } catch {
    return undefined;
  }
  if (hasIpv6) return undefined;
  return (
    "portmap's IPv6 check failed for an IPv4-only attachment, a known bug of portmap < v1.2.0 " +
    "(containernetworking/plugins#819); its IPv4 rules passed"
  );
}

/**
 * CHECK: every plugin in order with the cached ADD result; the first failure is the answer, except a
 * known plugin bug (see knownCheckBug), which becomes a warning.
 */
export async function checkNetworkList(
  list: NetworkConfigList,
  rt: RuntimeConf,
  cachedResult: JsonObject,
  options: ChainOptions,
): Promise<{ warnings: string[] }> {
  if (compareVersions(list.cniVersion, "0.4.0") < 0) {
    throw new Error(`network "${list.name}" has cniVersion ${list.cniVersion}; CHECK needs 0.4.0 or later`);
  }
  const binaries = await resolvePlugins(list, options);
  const warnings: string[] = [];
  for (let i = 0; i < list.plugins.length; i++) {
    try {
      await invoke("CHECK", list, i, binaries[i] ?? "", rt, cachedResult, options);
    } catch (error) {
      const warning = knownCheckBug(error, cachedResult);
      if (warning === undefined) throw error;
      warnings.push(warning);
    }
  }
  return { warnings };
}
