// The demo's own code path (scripts/demo-cluster.ts): it starts, every pod reaches every other, and
// teardown leaves no namespace or process behind; and the script itself, stopped every way an operator
// stops it, leaves no namespace, process or temp dir behind.
import { spawn, type ChildProcessByStdio } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { startDemo, type Demo } from "../../scripts/demo-cluster.js";
import { listNamespaces } from "../helpers/netns.js";
import { isAlive, waitFor } from "../helpers/processes.js";

describe("the demo cluster", () => {
  let demo: Demo | undefined;
  afterAll(async () => {
    await demo?.destroy();
  });

  it("starts 3 hosts x 2 pods with a green ping matrix and tears down completely", async () => {
    const lines: string[] = [];
    demo = await startDemo({ backend: "vxlan", print: (line) => lines.push(line) });
    expect(demo.matrix).toHaveLength(30);
    expect(demo.matrix.filter((m) => !m.ok)).toEqual([]);
    expect(lines.join("\n")).toMatch(/all 30 pod pairs reach each other/);
    expect(lines.join("\n")).toMatch(
      /route 10\.244\.\d+\.0\/24 via 10\.244\.\d+\.0 dev flannel\.1 onlink proto 151/,
    );
    const tag = demo.cluster.net.tag;
    const pids = demo.cluster.nodes.map((n) => n.agent.process.pid).concat(demo.cluster.etcd.process.pid);
    await demo.destroy();
    demo = undefined;
    expect((await listNamespaces()).filter((ns) => ns.includes(tag))).toEqual([]);
    for (const pid of pids) expect(isAlive(pid), `process ${pid} still running`).toBe(false);
  }, 180_000);
});

// `bash scripts/demo.sh` as an operator runs it: its own process group (a terminal's job), its output
// into a pipe, stopped by Ctrl-C (SIGINT to the whole group, pipe reader included), by the pipe's
// reader going away (`| head -1`, `| tee` killed), by a closed terminal (SIGHUP to the group) or by
// `kill <pid>` (SIGTERM to the demo alone). Each time, nothing it made may remain: its namespaces
// (tw-<tag>-*, the tag is in its first line), its processes (its process group; etcd and the agents run
// in it) and its temp dirs (TMPDIR is a fresh dir of this test's, so exactly the demo's: twill-etcd-*,
// twill-agent-*).
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

interface DemoRun {
  readonly child: ChildProcessByStdio<null, Readable, Readable>;
  /** The process group: the demo's PID (it is the group's leader). */
  readonly pgid: number;
  readonly tmp: string;
  stdout: string;
  stderr: string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const runs: DemoRun[] = [];

/** The namespace tag from the demo's first line, "… network namespaces tw-<tag>-* …". */
const tagOf = (run: DemoRun): string | undefined => /namespaces tw-([0-9a-z]+)-\*/.exec(run.stdout)?.[1];

/**
 * The processes of a process group that still run, as "pid name" (from /proc). Zombies are not counted:
 * one that has exited waits there until init reaps it (tsx's esbuild service, which ends when the demo
 * does, is reparented to PID 1 as a zombie for a moment).
 */
function liveProcessesIn(pgid: number): string[] {
  const live: string[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses: split after the last ")".
    const close = stat.lastIndexOf(")");
    const [state, , pgrp] = stat.slice(close + 2).split(" ");
    if (Number(pgrp) === pgid && state !== "Z")
      live.push(`${entry} ${stat.slice(stat.indexOf("(") + 1, close)}`);
  }
  return live;
}

function startDemoScript(): DemoRun {
  const tmp = mkdtempSync(join(tmpdir(), "twill-demo-test-"));
  // detached: a new session and process group, as a shell gives a job; signals go to -pgid.
  const child = spawn("bash", ["scripts/demo.sh"], {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    // The suite has built dist/ already (test/global-setup.ts): no setup step rebuilding it under the
    // other test files' feet.
    env: { ...process.env, TMPDIR: tmp, DEMO_SKIP_SETUP: "1" },
  });
  if (child.pid === undefined) throw new Error("could not start scripts/demo.sh");
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const run: DemoRun = { child, pgid: child.pid, tmp, stdout: "", stderr: "", exited };
  runs.push(run);
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (run.stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (run.stderr += chunk));
  // A closed reader's end must not fail this process either.
  child.stdout.on("error", () => undefined);
  return run;
}

/** The pipe's reader goes away (tee killed, head done): the demo's next write fails with EPIPE. */
function closeReader(run: DemoRun): void {
  run.child.stdout.destroy();
}

/** The demo's temp dirs so far (tsx's own compile cache, tsx-<uid>, is tsx's and not the demo's). */
const tempDirsOf = (run: DemoRun): string[] =>
  readdirSync(run.tmp).filter((name) => !name.startsWith("tsx-"));

async function namespacesOf(tag: string): Promise<string[]> {
  return (await listNamespaces()).filter((ns) => ns.startsWith(`tw-${tag}-`));
}

/** Waits for the demo to exit by itself; then what it left: temp dirs, namespaces, live processes. */
async function endOf(run: DemoRun, tag: string) {
  const timeout = new Promise<"still running">((resolve) =>
    setTimeout(() => resolve("still running"), 60_000).unref(),
  );
  const exit = await Promise.race([run.exited, timeout]);
  return {
    exit,
    tempDirs: tempDirsOf(run),
    namespaces: await namespacesOf(tag),
    processesLeft: liveProcessesIn(run.pgid),
  };
}

/**
 * Teardown, on failure too: a demo still running is asked to stop (SIGTERM to its PID: it removes what
 * it made), then its group is killed by its ID (the demo's PID); then its namespaces by its tag, TMPDIR.
 */
async function cleanUp(): Promise<void> {
  for (const run of runs.splice(0)) {
    if (run.child.exitCode === null && run.child.signalCode === null) {
      process.kill(run.pgid, "SIGTERM");
      await Promise.race([run.exited, new Promise((resolve) => setTimeout(resolve, 30_000).unref())]);
    }
    if (liveProcessesIn(run.pgid).length > 0) process.kill(-run.pgid, "SIGKILL");
    const tag = tagOf(run);
    if (tag !== undefined) {
      for (const ns of (await namespacesOf(tag)).reverse()) {
        await execa("ip", ["netns", "del", ns], { reject: false, stdin: "ignore" });
      }
    }
    rmSync(run.tmp, { recursive: true, force: true });
  }
}

describe("scripts/demo.sh, stopped the ways an operator stops it", () => {
  afterEach(cleanUp);

  it("Ctrl-C on `demo.sh | tee log` (SIGINT to the whole job, tee dies with it): removes everything, exits 0", async () => {
    const run = startDemoScript();
    await waitFor("the demo to start", () => run.stdout.includes("Press Ctrl-C"), 150_000, 200);
    const tag = tagOf(run) ?? "";
    expect(tag).not.toBe("");
    // What it made, present now: 3 hosts + switch + 6 pods, etcd's and each agent's temp dir.
    expect((await namespacesOf(tag)).length).toBe(10);
    expect(
      tempDirsOf(run)
        .map((name) => name.replace(/-[^-]+$/, "-*"))
        .sort(),
    ).toEqual(["twill-agent-*", "twill-agent-*", "twill-agent-*", "twill-etcd-*"]);
    closeReader(run);
    process.kill(-run.pgid, "SIGINT");
    const end = await endOf(run, tag);
    expect(end, run.stderr).toEqual({
      exit: { code: 0, signal: null },
      tempDirs: [],
      namespaces: [],
      processesLeft: [],
    });
    expect(run.stderr).not.toMatch(/EPIPE|Error/);
  }, 240_000);

  it("`demo.sh | head -1`: the reader is gone after one line; at its next line the demo stops and removes everything", async () => {
    const run = startDemoScript();
    await waitFor("the first line", () => tagOf(run), 60_000, 50);
    const tag = tagOf(run) ?? "";
    closeReader(run);
    // No signal: it learns that nobody reads when its next line (once the agents are up) fails with
    // EPIPE. Meanwhile it made its temp dirs: watched until it ends.
    let most = 0;
    const watch = setInterval(() => (most = Math.max(most, tempDirsOf(run).length)), 50);
    const end = await endOf(run, tag).finally(() => clearInterval(watch));
    expect(most, "etcd's and the 3 agents' temp dirs existed").toBe(4);
    // Ended by itself, with the status of a process ended by SIGPIPE (141), as `set -o pipefail` reports.
    expect(end, run.stderr).toEqual({
      exit: { code: 141, signal: null },
      tempDirs: [],
      namespaces: [],
      processesLeft: [],
    });
    expect(run.stderr).toBe("");
  }, 240_000);

  it.each([
    ["SIGHUP to the whole job (the terminal closed)", "SIGHUP", "group", 129],
    ["SIGTERM to the demo alone (kill <pid>): it stops its own processes", "SIGTERM", "pid", 143],
  ] as const)(
    "%s while it starts: the start ends and what was made is removed",
    async (_name, signal, to, code) => {
      const run = startDemoScript();
      await waitFor("the first line", () => tagOf(run), 60_000, 50);
      const tag = tagOf(run) ?? "";
      // Mid-start: etcd runs and at least one agent has its dir (and its host its namespace).
      await waitFor(
        "etcd's and an agent's temp dir",
        () => tempDirsOf(run).some((d) => d.startsWith("twill-agent-")),
        150_000,
        50,
      );
      expect((await namespacesOf(tag)).length).toBeGreaterThan(1);
      process.kill(to === "group" ? -run.pgid : run.pgid, signal);
      const end = await endOf(run, tag);
      expect(end, run.stderr).toEqual({
        exit: { code, signal: null },
        tempDirs: [],
        namespaces: [],
        processesLeft: [],
      });
      expect(run.stdout).toContain(`${signal} while starting: removing what was made so far`);
      expect(run.stdout).toMatch(/done; nothing left behind\.\n$/);
      expect(run.stderr).toBe("");
    },
    240_000,
  );
});
