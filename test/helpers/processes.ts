// Child processes started by tests: spawned directly, ended by the PID we started (never by name).
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";

export interface Started {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** What it wrote to stdout alone (stderr chunks can land inside a stdout line in output()). */
  stdout(): string;
  /** Resolves when the process has exited (immediately if it already has). */
  exited(): Promise<number | null>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
  kill(signal: NodeJS.Signals): void;
}

/** PIDs started here and still running: ended by PID if the test worker itself exits early. */
const running = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort only (a worker killed or crashing mid-test); tests still stop what they start.
  process.on("exit", () => {
    for (const pid of running) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });
}

export function startProcess(command: string, args: readonly string[], env?: NodeJS.ProcessEnv): Started {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: env ?? process.env });
  const { pid } = child;
  if (pid === undefined) throw new Error(`could not start ${command}`);
  installExitHook();
  running.add(pid);
  child.once("exit", () => running.delete(pid));
  let out = "";
  let stdout = "";
  child.stdout.on("data", (chunk: Buffer) => {
    out += chunk.toString();
    stdout += chunk.toString();
  });
  child.stderr.on("data", (chunk: Buffer) => (out += chunk.toString()));
  // Resolved once the output is complete too ('close'), so a test reading the logs after exited()
  // sees the last line; 'exit' plus a second covers a grandchild that still holds the pipes.
  const exit = new Promise<number | null>((resolve) => {
    child.once("close", (code) => resolve(code));
    child.once("exit", (code) => setTimeout(() => resolve(code), 1000).unref());
  });
  return {
    child,
    pid,
    output: () => out,
    stdout: () => stdout,
    exited: () => exit,
    kill: (signal) => {
      if (child.exitCode === null && child.signalCode === null) process.kill(pid, signal);
    },
    stop: async (graceMs = 5000) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      process.kill(pid, "SIGTERM");
      const timer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) process.kill(pid, "SIGKILL");
      }, graceMs);
      await exit;
      clearTimeout(timer);
    },
  };
}

/** A TCP port on loopback that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Polls `check` until it returns anything but undefined, null or false, or `timeoutMs` passes (then throws
 * with `what`). When `signal` aborts, throws its reason at once (the demo stops mid-start on Ctrl-C).
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  timeoutMs = 20_000,
  intervalMs = 50,
  signal?: AbortSignal,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    signal?.throwIfAborted();
    try {
      const value = await check();
      // null counts as "not yet" too (e.g. a RegExp exec that did not match).
      if (value !== undefined && value !== null && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const cause = lastError instanceof Error ? `: ${lastError.message}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Whether a process with this PID exists (signal 0 checks without sending anything). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
