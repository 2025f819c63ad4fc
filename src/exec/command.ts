// Running the few commands twill still needs (iptables-save/-restore, ethtool): locally, or inside a
// named network namespace for tests and tools. The kernel's routes, neighbours, FDB entries, links and
// addresses never go through here: they use the long-lived netlink channel. node:child_process, not a
// wrapper library: these calls are rare and the agent stays small.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";

export interface CommandResult {
  readonly stdout: string;
  readonly stderr: string;
  /** The process's exit code; -1 when it could not be started, timed out or died from a signal. */
  readonly exitCode: number;
}

export interface CommandRunner {
  /** Short description for error messages, e.g. "local" or "netns tw-1a2b-h1". */
  readonly where: string;
  run(cmd: string, args: readonly string[], input?: string): Promise<CommandResult>;
}

/** Thrown by callers that need a command to succeed. */
export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly result: CommandResult,
  ) {
    super(`${command} failed (exit ${result.exitCode}): ${result.stderr.trim() || result.stdout.trim()}`);
    this.name = "CommandError";
  }
}

/** A command that has not finished in this time is killed: a stuck xtables lock must not stall a loop. */
const DEFAULT_TIMEOUT_MS = 120_000;

/** util-linux's setpriv, Essential in Debian (and in the image): it can give a child a parent-death signal. */
const SETPRIV = "/usr/bin/setpriv";
const canBindToParent = existsSync(SETPRIV);

/**
 * The command line that runs `cmd` so that it dies with the agent, on SIGKILL too: setpriv sets the
 * parent-death signal (PR_SET_PDEATHSIG, kept across its exec) and execs the command in place, so the
 * PID stays the command's. Node cannot set it itself. Without setpriv the command runs as it is.
 */
export function boundToParent(cmd: string, args: readonly string[]): [string, string[]] {
  return canBindToParent ? [SETPRIV, ["--pdeathsig", "KILL", "--", cmd, ...args]] : [cmd, [...args]];
}

function runCommand(
  cmd: string,
  args: readonly string[],
  input: string | undefined,
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const [file, argv] = boundToParent(cmd, args);
    const child = spawn(file, argv, { stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let failure: string | undefined;
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    // e.g. ENOENT when the command is not installed: reported as exit -1 with the reason.
    child.on("error", (error) => (failure = `${cmd}: ${error.message}`));
    const timer = setTimeout(() => {
      failure = `${cmd}: no answer after ${timeoutMs} ms; killed`;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      // setpriv reports a command it could not start as exit 127 and a line of its own.
      const notStarted = code === 127 ? /^setpriv: failed to execute (.*)$/m.exec(stderr) : null;
      if (notStarted !== null) stderr = "";
      const why =
        failure ??
        (notStarted === null ? undefined : notStarted[1]) ??
        (signal === null ? undefined : `${cmd}: killed by ${signal}`);
      resolve({
        stdout,
        stderr: why === undefined ? stderr : [stderr, why].filter(Boolean).join("\n"),
        exitCode: why === undefined && code !== null ? code : -1,
      });
    });
    if (input !== undefined) {
      child.stdin?.on("error", () => undefined); // the command may exit before reading it all
      child.stdin?.end(input);
    }
  });
}

/** Runs commands in the agent's own network namespace. */
export const localRunner: CommandRunner = {
  where: "local",
  run: (cmd, args, input) => runCommand(cmd, args, input),
};

/** Runs commands inside the named network namespace via `ip netns exec` (which execs, so PIDs stay true). */
export function netnsRunner(ns: string): CommandRunner {
  return {
    where: `netns ${ns}`,
    run: (cmd, args, input) => runCommand("ip", ["netns", "exec", ns, cmd, ...args], input),
  };
}
