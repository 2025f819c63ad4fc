// Kernel change notifications, used to trigger a reconcile when someone changes routes, neighbours or FDB
// entries by hand. Two long-running children: `ip monitor label link address route neigh` and
// `bridge monitor fdb`. Lines are classified just enough to name the kind of object that changed.
//
// Observed on iproute2 6.1: with `label`, each event starts with "[LINK]", "[ADDR]", "[ROUTE]" or "[NEIGH]"
// and continuation lines are indented. `ip monitor neigh` also reports bridge FDB entries of vxlan devices
// (as "<dst ip> dev flannel.1 lladdr … NOARP PERMANENT"), so an FDB change usually arrives as both "neigh"
// and "fdb". Our own writes are reported too: consumers should debounce and diff, not react blindly.
import { readFile, readdir, readlink } from "node:fs/promises";
import type { CommandRunner, RunningCommand } from "./runner.js";

export type KernelChange = "link" | "address" | "route" | "neigh" | "fdb";

export interface KernelWatch {
  /** Resolves once both children have joined their netlink groups, so no later change is missed. */
  readonly ready: Promise<void>;
  /** PIDs of the monitor children (for diagnostics and tests). */
  readonly pids: readonly number[];
  /** Ends both children by PID; resolves once they are gone. Idempotent. */
  stop(): Promise<void>;
}

export interface WatchOptions {
  /** Called when a monitor child exits although stop() was not called (e.g. its namespace vanished). */
  readonly onExit?: (command: string, code: number | null) => void;
  /** How long `ready` waits for the subscriptions; default 10 s. */
  readonly readyTimeoutMs?: number;
}

const LABELS: Record<string, KernelChange> = {
  "[LINK]": "link",
  "[ADDR]": "address",
  "[ROUTE]": "route",
  "[NEIGH]": "neigh",
};

/** Kind of change an `ip monitor label …` line reports, or undefined for continuation lines. */
export function classifyIpMonitorLine(line: string): KernelChange | undefined {
  const label = /^\[([A-Z]+)\]/.exec(line);
  return label === null ? undefined : LABELS[label[0]];
}

/** Whether a `bridge monitor fdb` line starts a new event (continuation lines are indented). */
export function isBridgeMonitorEvent(line: string): boolean {
  return line.trim() !== "" && !/^\s/.test(line);
}

/**
 * True once `pid` holds a NETLINK_ROUTE socket subscribed to at least one multicast group. There is no
 * "ready" output from `ip monitor`, so we look at /proc: the socket inodes among its fds, and their Groups
 * column in /proc/<pid>/net/netlink (which shows the sockets of the process's own namespace).
 */
async function subscribed(pid: number): Promise<boolean> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const socket = /^socket:\[(\d+)\]$/.exec(target);
    if (socket?.[1] !== undefined) inodes.add(socket[1]);
  }
  const table = await readFile(`/proc/${pid}/net/netlink`, "utf8");
  return table
    .split("\n")
    .slice(1)
    .some((row) => {
      // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
      const cols = row.trim().split(/\s+/);
      return cols[1] === "0" && cols[3] !== undefined && !/^0+$/.test(cols[3]) && inodes.has(cols[9] ?? "");
    });
}

async function waitSubscribed(child: RunningCommand, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const state = { exited: false };
  void child.exited.then(() => (state.exited = true));
  for (;;) {
    if (state.exited) throw new Error(`${what} exited before subscribing: ${child.stderr().trim()}`);
    if (await subscribed(child.pid).catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what} did not subscribe within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export function watchKernel(
  runner: CommandRunner,
  onChange: (kind: KernelChange, line: string) => void,
  options: WatchOptions = {},
): KernelWatch {
  let stopping = false;
  const ipArgs = ["monitor", "label", "link", "address", "route", "neigh"];
  const ip = runner.start("ip", ipArgs, (line) => {
    const kind = classifyIpMonitorLine(line);
    if (kind !== undefined && !stopping) onChange(kind, line);
  });
  let bridge: RunningCommand;
  try {
    bridge = runner.start("bridge", ["monitor", "fdb"], (line) => {
      if (isBridgeMonitorEvent(line) && !stopping) onChange("fdb", line);
    });
  } catch (error) {
    void ip.stop();
    throw error;
  }

  for (const [child, command] of [
    [ip, "ip monitor"],
    [bridge, "bridge monitor fdb"],
  ] as const) {
    void child.exited.then((code) => {
      if (!stopping) options.onExit?.(command, code);
    });
  }

  const timeout = options.readyTimeoutMs ?? 10_000;
  const ready = Promise.all([
    waitSubscribed(ip, `ip monitor (${runner.where})`, timeout),
    waitSubscribed(bridge, `bridge monitor fdb (${runner.where})`, timeout),
  ]).then(() => undefined);
  // Callers that never await ready must not get an unhandled rejection.
  ready.catch(() => undefined);

  return {
    ready,
    pids: [ip.pid, bridge.pid],
    stop: async () => {
      stopping = true;
      await Promise.all([ip.stop(), bridge.stop()]);
    },
  };
}
