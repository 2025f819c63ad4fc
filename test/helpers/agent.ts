// Runs the real agent (node dist/cli/main.js agent …) as a process, optionally inside a namespace,
// with its own subnet file and state dir in a temp dir that teardown removes.
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startProcess, waitFor, type Started } from "./processes.js";

export const cliPath = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));

/** Node flags in a `#!/usr/bin/env -S node …` first line; none for `#!/usr/bin/env node`. */
export function shebangNodeFlags(file: string): string[] {
  const first = readFileSync(file, "utf8").split("\n", 1)[0] ?? "";
  const match = /^#!\S*env(?: -S)? node((?: \S+)*)\s*$/.exec(first);
  return (match?.[1] ?? "").split(" ").filter((f) => f.startsWith("--"));
}

/**
 * The node flags twill's launchers start the agent with (src/cli/main.ts's first line; the Dockerfile
 * and the systemd notes repeat them). Tests and the demo start it the same way.
 */
export const LAUNCHER_FLAGS: readonly string[] = shebangNodeFlags(
  fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url)),
);

export interface AgentProcess {
  readonly dir: string;
  readonly subnetFile: string;
  readonly stateDir: string;
  /** The CNI conflist the agent writes (per agent, never /etc/cni/net.d). */
  readonly cniConfFile: string;
  process: Started;
  /** Parsed JSON log lines so far. */
  logs(): Record<string, unknown>[];
  /** The subnet file's text, or undefined while it does not exist. */
  subnetEnv(): string | undefined;
  /** Waits for the subnet file; on timeout the error carries the agent's recent output. */
  waitForSubnetEnv(timeoutMs?: number): Promise<string>;
  /** Stops (SIGTERM) and starts again with the same files and arguments. */
  restart(): Promise<void>;
  /** Ends the process and removes its temp dir. */
  destroy(): Promise<void>;
}

export interface AgentSpec {
  readonly netns?: string;
  readonly etcdEndpoint: string;
  readonly prefix?: string;
  readonly args?: readonly string[];
  readonly env?: Record<string, string>;
  /** Run inside the mount namespace of this process (a test host's own /run/wireguard). */
  readonly mountNamespaceOf?: number;
}

/** The agent's JSON log lines; an incomplete last line (still being written) is left for the next call. */
export function parseLogLines(stdout: string): Record<string, unknown>[] {
  const complete = stdout.slice(0, stdout.lastIndexOf("\n") + 1);
  const lines: Record<string, unknown>[] = [];
  for (const line of complete.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not a log record (e.g. a library printing to stdout); pino writes one JSON object per line
    }
  }
  return lines;
}

export function startAgent(spec: AgentSpec): AgentProcess {
  const dir = mkdtempSync(join(tmpdir(), "twill-agent-"));
  const subnetFile = join(dir, "subnet.env");
  const stateDir = join(dir, "state");
  const cniConfFile = join(dir, "10-twill.conflist");
  // Per-agent files by default; a test may point one elsewhere by passing the flag itself.
  const given = (flag: string): boolean => (spec.args ?? []).some((a) => a.startsWith(`--${flag}=`));
  const defaults = [
    ["subnet-file", subnetFile],
    ["state-dir", stateDir],
    ["cni-conf-file", cniConfFile],
  ]
    .filter(([flag]) => !given(flag ?? ""))
    .map(([flag, value]) => `--${flag ?? ""}=${value ?? ""}`);
  const args = [
    ...LAUNCHER_FLAGS,
    cliPath,
    "agent",
    `--etcd-endpoints=${spec.etcdEndpoint}`,
    ...defaults,
    ...(spec.prefix ? [`--etcd-prefix=${spec.prefix}`] : []),
    ...(spec.args ?? []),
  ];
  const env = { ...process.env, ...spec.env };
  // nsenter and ip netns exec both exec in place: the PID is the agent's.
  const mount =
    spec.mountNamespaceOf === undefined
      ? []
      : ["nsenter", `--mount=/proc/${spec.mountNamespaceOf}/ns/mnt`, "--"];
  const inNetns = spec.netns === undefined ? [] : ["ip", "netns", "exec", spec.netns];
  const launch = (): Started => {
    const argv = [...mount, ...inNetns, process.execPath];
    return startProcess(argv[0] ?? process.execPath, [...argv.slice(1), ...args], env);
  };
  const agent: AgentProcess = {
    dir,
    subnetFile,
    stateDir,
    cniConfFile,
    process: launch(),
    logs: () => parseLogLines(agent.process.stdout()),
    subnetEnv: () => {
      try {
        return readFileSync(subnetFile, "utf8");
      } catch {
        return undefined;
      }
    },
    waitForSubnetEnv: async (timeoutMs = 30_000) =>
      waitFor("subnet.env", () => agent.subnetEnv(), timeoutMs).catch((error: unknown) => {
        throw new Error(`${String(error)}\nagent output (tail):\n${agent.process.output().slice(-4000)}`, {
          cause: error,
        });
      }),
    restart: async () => {
      await agent.process.stop();
      agent.process = launch();
    },
    destroy: async () => {
      await agent.process.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return agent;
}

/** Runs a twill admin command (config get/set, leases) and returns its exit code and output. */
export function runTwill(
  args: readonly string[],
  options: { netns?: string; input?: string; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [command, argv] =
    options.netns === undefined
      ? [process.execPath, [cliPath, ...args]]
      : ["ip", ["netns", "exec", options.netns, process.execPath, cliPath, ...args]];
  return new Promise((resolve) => {
    const env = options.env === undefined ? process.env : { ...process.env, ...options.env };
    const child = execFile(command, argv, { encoding: "utf8", env }, (error, stdout, stderr) => {
      const code = error && typeof error.code === "number" ? error.code : error ? 1 : 0;
      resolve({ code, stdout, stderr });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
    else child.stdin?.end();
  });
}
