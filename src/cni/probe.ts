// Asks the installed CNI plugins which spec versions they speak (CNI_COMMAND=VERSION, empty stdin), once
// at the agent's start, and picks the conflist's cniVersion from their answers (src/cni/version.ts).
// The plugins run through the agent's command runner (bound to the agent: they die with it).
import { localRunner, type CommandRunner } from "../exec/command.js";
import { errorMessage, type Logger } from "../util/log.js";
import { processExecutor } from "./exec.js";
import {
  chooseCniVersion,
  DEFAULT_CNI_VERSION,
  parseVersionAnswer,
  TWILL_CONFLIST_PLUGINS,
  type PluginVersionAnswer,
} from "./version.js";

/** A plugin that has not answered VERSION by then does not hold the conflist back any longer. */
export const VERSION_PROBE_TIMEOUT_MS = 10_000;

export interface VersionProbeDeps {
  readonly runner?: CommandRunner;
  /** The plugin's executable in the first dir that has it (default: processExecutor.find). */
  readonly find?: (type: string, dirs: readonly string[]) => Promise<string | undefined>;
  readonly timeoutMs?: number;
}

/** Runs `<path>` with CNI_COMMAND=VERSION and empty stdin; its supported versions, or the problem. */
async function askPlugin(
  plugin: string,
  dirs: readonly string[],
  runner: CommandRunner,
  find: NonNullable<VersionProbeDeps["find"]>,
  timeoutMs: number,
): Promise<PluginVersionAnswer> {
  const path = await find(plugin, dirs);
  if (path === undefined) {
    return {
      plugin,
      path,
      problem: `not found in ${dirs.length === 0 ? "(no plugin dirs)" : dirs.join(", ")}`,
    };
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeoutMs);
    timer.unref();
  });
  try {
    // `env` sets the one variable for the plugin alone; the plugin inherits the rest, as under libcni.
    const result = await Promise.race([runner.run("env", ["CNI_COMMAND=VERSION", path], ""), late]);
    if (result === undefined) {
      return { plugin, path, problem: `${path} did not answer VERSION within ${timeoutMs / 1000} s` };
    }
    if (result.exitCode !== 0) {
      const said = (result.stderr.trim() || result.stdout.trim() || "no output").slice(0, 300);
      return { plugin, path, problem: `${path} VERSION failed (exit ${result.exitCode}): ${said}` };
    }
    const supported = parseVersionAnswer(result.stdout);
    return typeof supported === "string"
      ? { plugin, path, problem: `${path}: ${supported}` }
      : { plugin, path, supported };
  } catch (error) {
    return { plugin, path, problem: `${path} could not be run: ${errorMessage(error)}` };
  } finally {
    clearTimeout(timer);
  }
}

/** Every plugin's answer, asked at the same time. */
export function askPluginVersions(
  plugins: readonly string[],
  dirs: readonly string[],
  deps: VersionProbeDeps = {},
): Promise<PluginVersionAnswer[]> {
  const runner = deps.runner ?? localRunner;
  const find = deps.find ?? ((type: string, where: readonly string[]) => processExecutor.find(type, where));
  const timeoutMs = deps.timeoutMs ?? VERSION_PROBE_TIMEOUT_MS;
  return Promise.all(plugins.map((plugin) => askPlugin(plugin, dirs, runner, find, timeoutMs)));
}

/**
 * The cniVersion for the agent's conflist: the newest that bridge, host-local and portmap in `dirs` all
 * speak. When one is missing or does not answer, DEFAULT_CNI_VERSION, with a warning naming the plugin
 * and the dirs searched. Never throws.
 */
export async function cniVersionFromPlugins(
  dirs: readonly string[],
  log: Logger,
  deps: VersionProbeDeps = {},
): Promise<string> {
  let answers: PluginVersionAnswer[];
  try {
    answers = await askPluginVersions(TWILL_CONFLIST_PLUGINS, dirs, deps);
  } catch (error) {
    log.warn(
      { err: error, dirs, cniVersion: DEFAULT_CNI_VERSION },
      `cannot ask the CNI plugins for their versions; the conflist declares cniVersion ${DEFAULT_CNI_VERSION}`,
    );
    return DEFAULT_CNI_VERSION;
  }
  const choice = chooseCniVersion(answers);
  const paths = Object.fromEntries(answers.map((a) => [a.plugin, a.path ?? null]));
  if (choice.chosen) {
    log.info(
      {
        cniVersion: choice.version,
        plugins: paths,
        supported: Object.fromEntries(answers.map((a) => [a.plugin, "supported" in a ? a.supported : null])),
      },
      "CNI version chosen from the plugins",
    );
  } else {
    for (const { plugin, problem } of choice.problems) {
      log.warn(
        { plugin, path: paths[plugin] ?? null, dirs, problem, cniVersion: choice.version },
        `CNI plugin ${plugin}: ${problem}; the conflist declares cniVersion ${choice.version}`,
      );
    }
  }
  return choice.version;
}
