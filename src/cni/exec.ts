// Running one CNI plugin binary per the spec: found by type in CNI_PATH, CNI_* environment, config on
// stdin, result or error object on stdout. The executor is an interface so the chain logic is
// unit-tested without processes.
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { CNI_ERROR_CODES, parseCniError } from "./result.js";

export type CniCommand = "ADD" | "DEL" | "CHECK";

export interface PluginRun {
  readonly binary: string;
  /** The CNI_* variables; added to the caller's environment, as libcni does. */
  readonly env: Readonly<Record<string, string>>;
  readonly stdin: string;
  readonly timeoutMs: number;
}

export interface PluginOutput {
  /** undefined when the process could not start, timed out or died from a signal. */
  readonly exitCode: number | undefined;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
  /** Why the process could not be started (ENOENT, EACCES …). */
  readonly spawnError: string | undefined;
}

export interface PluginExecutor {
  /** The plugin's executable in the first dir that has it, or undefined. */
  find(type: string, dirs: readonly string[]): Promise<string | undefined>;
  run(run: PluginRun): Promise<PluginOutput>;
}

/** A plugin ran and failed: carries the plugin's own code and message. */
export class CniPluginError extends Error {
  override name = "CniPluginError";
  constructor(
    readonly plugin: string,
    readonly command: CniCommand,
    readonly code: number | undefined,
    readonly msg: string,
    readonly details: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

/** No executable for a plugin type in any CNI_PATH dir. */
export class CniPluginNotFoundError extends Error {
  override name = "CniPluginNotFoundError";
  constructor(
    readonly plugin: string,
    readonly dirs: readonly string[],
  ) {
    super(
      `plugin "${plugin}" not found in ${dirs.length === 0 ? "(no plugin dirs)" : dirs.join(":")}` +
        ` (is it installed? Debian: containernetworking-plugins; or set --cni-bin-dir)`,
    );
  }
}

async function isExecutableFile(path: string): Promise<boolean> {
  try {
    const info = await stat(path);
    if (!info.isFile()) return false;
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export const processExecutor: PluginExecutor = {
  async find(type, dirs) {
    for (const dir of dirs) {
      const candidate = join(dir, type);
      if (await isExecutableFile(candidate)) return candidate;
    }
    return undefined;
  },
  run({ binary, env, stdin, timeoutMs }) {
    return new Promise((resolve) => {
      let stdout = "";
      let stderr = "";
      let spawnError: string | undefined;
      let timedOut = false;
      const child = spawn(binary, [], { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
      child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
      child.on("error", (error) => (spawnError = error.message));
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill("SIGKILL");
      }, timeoutMs);
      child.on("close", (code) => {
        clearTimeout(timer);
        resolve({ exitCode: code ?? undefined, stdout, stderr, timedOut, spawnError });
      });
      // A plugin may exit without reading its config (e.g. a bad binary): that is its answer, not ours.
      child.stdin.on("error", () => undefined);
      child.stdin.end(stdin);
    });
  },
};

/** The plugin's error in one line: `plugin bridge failed (code 11): try again later (details)`. */
export function pluginErrorFrom(
  plugin: string,
  command: CniCommand,
  output: PluginOutput,
  timeoutMs: number,
): CniPluginError {
  if (output.spawnError !== undefined) {
    return new CniPluginError(
      plugin,
      command,
      undefined,
      output.spawnError,
      undefined,
      `plugin ${plugin} could not be run: ${output.spawnError}`,
    );
  }
  if (output.timedOut) {
    const msg = `timed out after ${Math.round(timeoutMs / 1000)} s`;
    return new CniPluginError(
      plugin,
      command,
      undefined,
      msg,
      undefined,
      `plugin ${plugin} ${msg} (${command})`,
    );
  }
  const body = parseCniError(output.stdout);
  if (body !== undefined) {
    const msg = body.msg !== "" ? body.msg : (CNI_ERROR_CODES.get(body.code) ?? "no message");
    const details = body.details === undefined ? "" : ` (${body.details})`;
    return new CniPluginError(
      plugin,
      command,
      body.code,
      body.msg,
      body.details,
      `plugin ${plugin} failed (code ${body.code}): ${msg}${details}`,
    );
  }
  // Not the spec's error object: show what the plugin said, like libcni's "netplugin failed".
  const text = (output.stderr.trim() || output.stdout.trim() || "no output")
    .split("\n")
    .slice(-5)
    .join(" | ");
  const how = output.exitCode === undefined ? "was killed" : `exited ${output.exitCode}`;
  return new CniPluginError(
    plugin,
    command,
    undefined,
    text,
    undefined,
    `plugin ${plugin} failed (${how}): ${text}`,
  );
}
