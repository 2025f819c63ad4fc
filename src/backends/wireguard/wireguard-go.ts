// wireguard-go, WireGuard in userspace, for hosts whose kernel has no WireGuard module. It is part of
// the data plane, like the kernel's devices: it runs in its own session and outlives the agent, so an
// agent restart loses no packet; the next agent adopts it from the pid file in the state dir (checked
// against the process's start time and command line, never found by name) instead of starting another.
// It attaches to the persistent TUN device twill made, so the device, its address and its routes stay
// even while wireguard-go is started again.
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, statSync, truncateSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../../node/subnet-env.js";
import { UapiControl } from "./control.js";

/** What `wireguard-go` was started as, kept in the state dir. */
interface PidFile {
  readonly pid: number;
  /** /proc/<pid>/stat's start time (clock ticks since boot): a reused PID has another. */
  readonly startTicks: number;
  readonly device: string;
}

const START_TIMEOUT_MS = 5_000;
const STOP_TIMEOUT_MS = 2_000;
/** The log is started afresh when it grew past this. */
const LOG_LIMIT_BYTES = 1 << 20;

/** The start time of process `pid`, or undefined when there is none (or it has exited). */
export function processStartTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name, in parentheses, may hold spaces: fields count from after its ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // A zombie (Z) or dying (X) process is gone, though its parent (init, after the agent that
    // started it exited) has not reaped it yet.
    if (fields[0] === "Z" || fields[0] === "X") return undefined;
    const ticks = Number(fields[19]);
    return Number.isFinite(ticks) ? ticks : undefined;
  } catch {
    return undefined;
  }
}

function commandLine(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
  } catch {
    return [];
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class WireGuardGo {
  private current: PidFile | undefined;
  readonly pidFile: string;
  readonly logFile: string;
  readonly control: UapiControl;

  constructor(
    readonly device: string,
    readonly binary: string,
    stateDir: string,
    socketDir?: string,
  ) {
    this.pidFile = join(stateDir, `wireguard-go-${device}.json`);
    this.logFile = join(stateDir, `wireguard-go-${device}.log`);
    this.control = new UapiControl(device, socketDir);
  }

  get pid(): number | undefined {
    return this.current?.pid;
  }

  /** True while the process twill started or adopted runs. */
  alive(): boolean {
    const current = this.current;
    return current !== undefined && processStartTicks(current.pid) === current.startTicks;
  }

  /**
   * Makes sure one wireguard-go serves the device: the one already known, the one the pid file names
   * (a previous agent's), or a new one. Returns how it came to be.
   */
  async ensure(): Promise<"running" | "adopted" | "started"> {
    if (this.alive()) return "running";
    if (await this.adopt()) return "adopted";
    await this.start();
    return "started";
  }

  /** Takes over the wireguard-go the pid file names, if it is still that process and answers. */
  async adopt(): Promise<boolean> {
    let recorded: PidFile;
    try {
      recorded = JSON.parse(await readFile(this.pidFile, "utf8")) as PidFile;
    } catch {
      return false;
    }
    if (
      typeof recorded.pid !== "number" ||
      recorded.device !== this.device ||
      processStartTicks(recorded.pid) !== recorded.startTicks ||
      !commandLine(recorded.pid).includes(this.device)
    )
      return false;
    this.current = recorded;
    if (await this.control.answers()) return true;
    // Ours, alive, but silent (hung, or its socket removed): it holds the TUN device; end it.
    await this.terminate();
    return false;
  }

  private async start(): Promise<void> {
    // A wireguard-go twill did not start (or whose pid file is gone) serves the device already: its
    // answers would be taken for the new one's, which then cannot attach and exits, again and again.
    if (await this.control.answers()) {
      throw new Error(
        `a wireguard-go that twill did not record already serves ${this.device} (${this.control.path}); ` +
          `stop it (its pid: fuser ${this.control.path}), and twill starts its own`,
      );
    }
    try {
      if (statSync(this.logFile).size > LOG_LIMIT_BYTES) truncateSync(this.logFile);
    } catch {
      // no log yet
    }
    const log = openSync(this.logFile, "a", 0o600);
    let exited: string | undefined;
    let child;
    try {
      // Its own session (detached): it is the data plane and outlives this agent, as the devices do.
      child = spawn(this.binary, ["-f", this.device], {
        detached: true,
        stdio: ["ignore", log, log],
        // Not the agent's environment: it may hold etcd's password, and this process outlives the agent.
        env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LOG_LEVEL: "error" },
      });
    } finally {
      closeSync(log);
    }
    child.on("error", (error) => (exited = error.message));
    child.on("exit", (code, signal) => (exited ??= signal === null ? `exit ${code}` : `killed by ${signal}`));
    child.unref();
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await this.control.answers())) {
      if (exited !== undefined || Date.now() > deadline) {
        if (exited === undefined && child.pid !== undefined) process.kill(child.pid, "SIGKILL");
        const tail = (await readFile(this.logFile, "utf8").catch(() => ""))
          .trim()
          .split("\n")
          .slice(-3)
          .join(" | ");
        throw new Error(
          `${this.binary} -f ${this.device} did not start (${exited ?? `no socket after ${START_TIMEOUT_MS} ms`})` +
            (tail === "" ? "" : `: ${tail}`) +
            `; is wireguard-go installed (Debian: wireguard-go), or --wireguard-go set to it?`,
        );
      }
      await sleep(20);
    }
    const pid = child.pid;
    const startTicks = pid === undefined ? undefined : processStartTicks(pid);
    if (pid === undefined || startTicks === undefined) throw new Error(`${this.binary} exited as it started`);
    this.current = { pid, startTicks, device: this.device };
    await writeFileAtomic(this.pidFile, `${JSON.stringify(this.current)}\n`, 0o600);
  }

  /** Ends it (the node leaves the wireguard backend); the device stays, as twill's devices do. */
  async terminate(): Promise<void> {
    if (!this.alive() && !(await this.adopt())) return;
    const current = this.current;
    this.current = undefined;
    if (current === undefined) return;
    process.kill(current.pid, "SIGTERM");
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (processStartTicks(current.pid) === current.startTicks) {
      if (Date.now() > deadline) {
        process.kill(current.pid, "SIGKILL");
        break;
      }
      await sleep(20);
    }
  }
}

/** The pid a state dir's pid file names for `device`, for tests and tools that must end it by PID. */
export function recordedWireGuardGoPid(stateDir: string, device: string): number | undefined {
  try {
    const recorded = JSON.parse(
      readFileSync(join(stateDir, `wireguard-go-${device}.json`), "utf8"),
    ) as PidFile;
    return processStartTicks(recorded.pid) === recorded.startTicks ? recorded.pid : undefined;
  } catch {
    return undefined;
  }
}
