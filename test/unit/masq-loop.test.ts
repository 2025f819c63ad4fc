// The masquerade loop at unit speed: the real MasqManager over a fake iptables (a runner that keeps one
// iptables-save text per table), a fake rule watch whose notices the test fires, and a fake clock. What
// counts is how many checks run and when: a notice makes one check after the debounce, a burst makes
// one, a steady stream cannot hold checks off, and without notices only the timers run.
import { afterEach, describe, expect, it } from "vitest";
import type { CommandResult, CommandRunner } from "../../src/exec/command.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { MasqManager, type IptablesInfo } from "../../src/masq/iptables.js";
import { MasqLoop, type RuleWatch, type RuleWatchFactory } from "../../src/masq/loop.js";
import { forwardRules, masqRules, restorePayload } from "../../src/masq/rules.js";
import { FakeClock, settle } from "../helpers/fake-clock.js";
import { captureLogs, type CapturedLogs } from "../helpers/logs.js";

const RESYNC_MS = 5_000;
const SAFETY_MS = 300_000;
const DEBOUNCE_MS = 50;
const TARGET = { network: parseCidr("10.244.0.0/16"), subnet: parseCidr("10.244.5.0/24") };

/** The complete rules per table, as iptables-save would print them once they are in. */
const GOLDEN = new Map<string, string>(
  restorePayload([
    masqRules(TARGET.network, TARGET.subnet, { randomFully: true }),
    forwardRules(TARGET.network),
  ])
    .split(/^(?=\*)/m)
    .map((section) => [section.slice(1, section.indexOf("\n")), section] as const),
);

/** iptables as far as MasqManager uses it: --version, -save per table, -restore (which puts all back). */
class FakeIptables implements CommandRunner {
  readonly where = "fake";
  readonly tables = new Map<string, string>();
  restores = 0;
  /** While set, every command waits for it: a slow iptables-save or restore. */
  gate: Promise<void> | undefined;

  async run(cmd: string, args: readonly string[]): Promise<CommandResult> {
    if (this.gate !== undefined) await this.gate;
    return this.answer(cmd, args);
  }

  private answer(cmd: string, args: readonly string[]): Promise<CommandResult> {
    const ok = (stdout: string): Promise<CommandResult> =>
      Promise.resolve({ stdout, stderr: "", exitCode: 0 });
    if (cmd === "iptables" && args[0] === "--version") return ok("iptables v1.8.9 (nf_tables)\n");
    if (cmd === "iptables-save") return ok(this.tables.get(args[1] ?? "") ?? "");
    if (cmd === "iptables-restore") {
      this.restores++;
      for (const [table, text] of GOLDEN) this.tables.set(table, text);
      return ok("");
    }
    return Promise.resolve({ stdout: "", stderr: `fake iptables: no ${cmd}`, exitCode: 127 });
  }

  /** Someone deletes our rules by hand. */
  flush(table: string): void {
    this.tables.delete(table);
  }
}

interface Harness {
  readonly iptables: FakeIptables;
  readonly clock: FakeClock;
  readonly logs: CapturedLogs;
  /** Checks so far (each `checked` event). */
  readonly checks: { missing: readonly string[]; first: boolean }[];
  /** Each heartbeat's promise: the next beat comes within this many ms. */
  readonly beats: number[];
  /** What `chosen` said: the notice source's kind, or undefined for the timer alone. */
  chosen: string | undefined | null;
  /** Fires the watch's onChange; throws when no watch was opened. */
  notice(): void;
  watchClosed(): boolean;
  stop(): Promise<void>;
  /** Aborts the loop without waiting for it; `done` is its run(). */
  abort(): void;
  readonly done: Promise<void>;
}

const running: Harness[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((h) => h.stop()));
});

type WatchMode = "watch" | "none" | "failing";

async function start(mode: WatchMode = "watch"): Promise<Harness> {
  const iptables = new FakeIptables();
  const clock = new FakeClock();
  const logs = captureLogs();
  let onChange: (() => void) | undefined;
  let closed = false;
  const factory: RuleWatchFactory = (_info: IptablesInfo, callback): RuleWatch | undefined => {
    if (mode === "failing") throw new Error("nfnetlink NFT_MSG_GETGEN: Operation not supported (EOPNOTSUPP)");
    if (mode === "none") return undefined;
    onChange = callback;
    return { kind: "fake notices", close: () => (closed = true) };
  };
  const harness: Harness = {
    iptables,
    clock,
    logs,
    checks: [],
    beats: [],
    chosen: null,
    notice: () => {
      if (onChange === undefined) throw new Error("no watch was opened");
      onChange();
    },
    watchClosed: () => closed,
    stop: async () => {
      controller.abort();
      await clock.advance(0);
      await done;
    },
    abort: () => controller.abort(),
    get done() {
      return done;
    },
  };
  const loop = new MasqLoop(
    new MasqManager(iptables),
    {
      ipMasq: true,
      fullyRandomDisable: false,
      forwardRules: true,
      resyncMs: RESYNC_MS,
      safetyResyncMs: SAFETY_MS,
    },
    logs.log,
    {
      chosen: (_info, watch) => (harness.chosen = watch),
      checked: ({ missing, first }) => harness.checks.push({ missing, first }),
      heartbeat: (withinMs) => harness.beats.push(withinMs),
    },
    factory,
    clock,
  );
  const controller = new AbortController();
  const done = loop.run(controller.signal);
  loop.set(TARGET);
  await settle();
  running.push(harness);
  return harness;
}

describe("MasqLoop with a rule watch", () => {
  it("installs at once and then, with no notice, checks only on the safety timer", async () => {
    const h = await start();
    expect(h.chosen).toBe("fake notices");
    expect(h.checks).toEqual([
      { missing: expect.arrayContaining(["nat: chain FLANNEL-POSTRTG"]) as unknown, first: true },
    ]);
    expect(h.iptables.restores).toBe(1);
    expect(h.beats.at(-1)).toBeGreaterThan(SAFETY_MS);
    await h.clock.advance(SAFETY_MS - 1);
    expect(h.checks).toHaveLength(1);
    await h.clock.advance(1);
    expect(h.checks).toHaveLength(2);
    expect(h.logs.withMsg("iptables backend chosen")[0]).toMatchObject({ removalsNoticedBy: "fake notices" });
    // Liveness: the beat before each safety wait promises more than that wait.
    expect(h.beats.at(-1)).toBeGreaterThan(SAFETY_MS);
  });

  it("a notice leads to one check after the debounce, which restores what was removed", async () => {
    const h = await start();
    h.iptables.flush("nat");
    h.notice();
    await h.clock.advance(DEBOUNCE_MS - 1);
    expect(h.checks).toHaveLength(1);
    await h.clock.advance(1);
    expect(h.checks).toHaveLength(2);
    expect(h.checks[1]).toMatchObject({
      first: false,
      missing: expect.arrayContaining(["nat: chain FLANNEL-POSTRTG"]) as unknown,
    });
    expect(h.iptables.tables.get("nat")).toBe(GOLDEN.get("nat"));
    expect(h.logs.withMsg("masquerade/forward rules were missing; restored")).toHaveLength(1);
    await h.clock.advance(10_000);
    expect(h.checks).toHaveLength(2);
  });

  it("a burst of notices makes one check", async () => {
    const h = await start();
    for (let i = 0; i < 10; i++) {
      h.notice();
      await h.clock.advance(4);
    }
    await h.clock.advance(1_000);
    expect(h.checks).toHaveLength(2);
  });

  it("a steady stream of notices cannot put the check off: one per debounce at most", async () => {
    const h = await start();
    for (let i = 0; i < 50; i++) {
      h.notice();
      await h.clock.advance(20);
    }
    // 1 s of notices 20 ms apart: the debounce counts from the first notice of each round.
    expect(h.checks.length).toBeGreaterThanOrEqual(10);
    expect(h.checks.length).toBeLessThanOrEqual(1 + 1_000 / DEBOUNCE_MS);
  });

  it("a notice that arrives during a check makes one more check after it", async () => {
    const h = await start();
    h.notice();
    await h.clock.advance(DEBOUNCE_MS - 10);
    h.notice(); // still inside the debounce: the same check
    await h.clock.advance(10);
    expect(h.checks).toHaveLength(2);
    h.notice(); // after the wait ended (as the echo of a restore would)
    await h.clock.advance(DEBOUNCE_MS);
    expect(h.checks).toHaveLength(3);
    await h.clock.advance(10_000);
    expect(h.checks).toHaveLength(3);
  });

  it("ends when stopped in the middle of a check, without waiting for a timer", async () => {
    const h = await start();
    let release = (): void => undefined;
    h.iptables.gate = new Promise<void>((resolve) => (release = resolve));
    h.notice();
    await h.clock.advance(DEBOUNCE_MS); // the check starts and waits inside iptables-save
    h.abort();
    release();
    h.iptables.gate = undefined;
    let ended = false;
    void h.done.then(() => (ended = true));
    await settle();
    expect(ended).toBe(true);
  });

  it("closes the watch when it stops", async () => {
    const h = await start();
    expect(h.watchClosed()).toBe(false);
    await h.stop();
    expect(h.watchClosed()).toBe(true);
  });
});

describe("MasqLoop without a rule watch", () => {
  it("checks every --iptables-resync when the backend has no notice source", async () => {
    const h = await start("none");
    expect(h.chosen).toBeUndefined();
    expect(h.logs.withMsg("iptables backend chosen")[0]).toMatchObject({
      removalsNoticedBy: "a check every 5 s",
    });
    await h.clock.advance(RESYNC_MS - 1);
    expect(h.checks).toHaveLength(1);
    await h.clock.advance(1);
    expect(h.checks).toHaveLength(2);
    h.iptables.flush("filter");
    await h.clock.advance(RESYNC_MS);
    expect(h.checks).toHaveLength(3);
    expect(h.checks[2]?.missing).toEqual(expect.arrayContaining(["filter: chain FLANNEL-FWD"]));
  });

  it("falls back to the timer, and says why, when the watch cannot be opened", async () => {
    const h = await start("failing");
    expect(h.chosen).toBeUndefined();
    const [warning] = h.logs.withMsg("cannot follow iptables changes; checking the rules every 5 s instead");
    expect(warning).toMatchObject({ err: { message: expect.stringContaining("NFT_MSG_GETGEN") as unknown } });
    expect(h.checks).toHaveLength(1);
    await h.clock.advance(3 * RESYNC_MS);
    expect(h.checks).toHaveLength(4);
  });
});
