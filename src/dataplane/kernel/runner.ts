// How kernel tools are run: locally (inside the agent) or inside a named network namespace (tests, demo).
// Everything in src/dataplane/kernel/ goes through a CommandRunner, so the same code drives both.
import { createInterface } from "node:readline";
import { execa } from "execa";

export interface CommandResult {
  readonly stdout: string;
  readonly stderr: string;
  /** The process's exit code; -1 when it could not be started or died from a signal. */
  readonly exitCode: number;
}

/** A long-running child (e.g. `ip monitor`), ended by the PID that was started. */
export interface RunningCommand {
  readonly pid: number;
  /** Resolves with the exit code (null when ended by a signal) once the child is gone. */
  readonly exited: Promise<number | null>;
  /** The last few KB the child wrote to stderr (for error messages). */
  stderr(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the child is gone. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

export interface CommandRunner {
  /** Short description for error messages, e.g. "local" or "netns tw-1a2b-h1". */
  readonly where: string;
  run(cmd: string, args: readonly string[], input?: string): Promise<CommandResult>;
  /** Starts a long-running command; `onLine` gets each stdout line as it arrives. */
  start(cmd: string, args: readonly string[], onLine: (line: string) => void): RunningCommand;
}

/** Thrown by callers that need a command to succeed. */
export class KernelCommandError extends Error {
  constructor(
    readonly command: string,
    readonly result: CommandResult,
  ) {
    super(`${command} failed (exit ${result.exitCode}): ${result.stderr.trim() || result.stdout.trim()}`);
    this.name = "KernelCommandError";
  }
}

async function runDirect(cmd: string, args: readonly string[], input?: string): Promise<CommandResult> {
  const result = await execa(cmd, args, {
    reject: false,
    ...(input === undefined ? { stdin: "ignore" as const } : { input }),
  });
  // exitCode is undefined when the binary is missing or the child was killed; keep the reason visible.
  if (result.exitCode === undefined) {
    const why = result.shortMessage ?? result.signal ?? "unknown failure";
    return { stdout: result.stdout, stderr: [result.stderr, why].filter(Boolean).join("\n"), exitCode: -1 };
  }
  return { stdout: result.stdout, stderr: result.stderr, exitCode: result.exitCode };
}

function startDirect(cmd: string, args: readonly string[], onLine: (line: string) => void): RunningCommand {
  const child = execa(cmd, args, { reject: false, buffer: false, stdin: "ignore" });
  const { pid } = child;
  if (pid === undefined) throw new Error(`could not start ${cmd}`);
  createInterface({ input: child.stdout }).on("line", onLine);
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4096);
  });
  const exited = child.then((result) => result.exitCode ?? null);
  const gone = (): boolean => child.exitCode !== null || child.signalCode !== null;
  return {
    pid,
    exited,
    stderr: () => stderr,
    stop: async (graceMs = 2000) => {
      if (!gone()) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => {
          if (!gone()) child.kill("SIGKILL");
        }, graceMs);
        await exited;
        clearTimeout(timer);
      }
      await exited;
    },
  };
}

/** Runs commands in the agent's own network namespace. */
export const localRunner: CommandRunner = {
  where: "local",
  run: runDirect,
  start: startDirect,
};

/** Runs commands inside the named network namespace via `ip netns exec` (which execs, so PIDs stay true). */
export function netnsRunner(ns: string): CommandRunner {
  const wrap = (cmd: string, args: readonly string[]): string[] => ["netns", "exec", ns, cmd, ...args];
  return {
    where: `netns ${ns}`,
    run: (cmd, args, input) => runDirect("ip", wrap(cmd, args), input),
    start: (cmd, args, onLine) => startDirect("ip", wrap(cmd, args), onLine),
  };
}
