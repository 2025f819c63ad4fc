// WireGuard in tests. wireguard-go keeps its control socket in /var/run/wireguard/<device>.sock, one
// directory for every network namespace on the machine, so each test host gets a mount namespace of
// its own with a private tmpfs there: a holder process (`sleep`) keeps it open, and the host's agent,
// its wireguard-go and the test's `wg` run inside it (nsenter). Everything is ended by PID.
import { mkdirSync } from "node:fs";
import { execa } from "execa";
import { recordedWireGuardGoPid, processStartTicks } from "../../src/backends/wireguard/wireguard-go.js";
import { startProcess, waitFor, type Started } from "./processes.js";

export const WIREGUARD_DEVICE = "flannel-wg";
export const WIREGUARD_DEVICE_V6 = "flannel-wg-v6";

export interface MountNamespace {
  readonly pid: number;
  /** `nsenter` arguments that enter it (and `netns`, when given). */
  enter(netns?: string): string[];
  /** Runs a command inside it and the given network namespace. */
  exec(
    netns: string,
    command: readonly string[],
    input?: string,
  ): Promise<{ stdout: string; stderr: string; exitCode: number }>;
  stop(): Promise<void>;
}

/** A mount namespace with a private, empty /run/wireguard. */
export async function startMountNamespace(): Promise<MountNamespace> {
  // The directory the tmpfs is mounted on must exist; an empty directory, as wireguard-tools leaves.
  mkdirSync("/run/wireguard", { recursive: true });
  const holder: Started = startProcess("unshare", [
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "mount -t tmpfs -o mode=0755 twill-test-wg /run/wireguard && echo ready && exec sleep infinity",
  ]);
  await waitFor("the mount namespace holder", () => holder.output().includes("ready"), 10_000).catch(
    async (error: unknown) => {
      await holder.stop();
      throw new Error(`${String(error)}: ${holder.output()}`, { cause: error });
    },
  );
  const enter = (netns?: string): string[] => [
    `--mount=/proc/${holder.pid}/ns/mnt`,
    ...(netns === undefined ? [] : [`--net=/run/netns/${netns}`]),
  ];
  return {
    pid: holder.pid,
    enter,
    exec: async (netns, command, input) => {
      const [cmd = "true", ...args] = command;
      const result = await execa("nsenter", [...enter(netns), "--", cmd, ...args], {
        reject: false,
        ...(input === undefined ? { stdin: "ignore" as const } : { input }),
      });
      return { stdout: result.stdout, stderr: result.stderr, exitCode: result.exitCode ?? -1 };
    },
    stop: () => holder.stop(),
  };
}

/**
 * Ends the wireguard-go processes an agent's state dir names (they outlive their agent by design), by
 * their PIDs: flannel-wg's, and flannel-wg-v6's (Mode separate with IPv6).
 */
export async function stopRecordedWireGuardGo(stateDir: string): Promise<void> {
  for (const device of [WIREGUARD_DEVICE, WIREGUARD_DEVICE_V6]) {
    const pid = recordedWireGuardGoPid(stateDir, device);
    if (pid === undefined) continue;
    const ticks = processStartTicks(pid);
    process.kill(pid, "SIGTERM");
    await waitFor("wireguard-go to exit", () => processStartTicks(pid) !== ticks, 5_000).catch(() => {
      if (processStartTicks(pid) === ticks) process.kill(pid, "SIGKILL");
    });
  }
}
