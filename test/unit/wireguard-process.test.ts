// How twill tells whether the wireguard-go it recorded still runs: by PID and start time, and a
// zombie (exited, not yet reaped by init after its agent exited) counts as gone.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { processStartTicks } from "../../src/backends/wireguard/wireguard-go.js";

describe("processStartTicks", () => {
  it("gives a running process's start time, the same at every read", () => {
    const ticks = processStartTicks(process.pid);
    expect(ticks).toBeGreaterThan(0);
    expect(processStartTicks(process.pid)).toBe(ticks);
  });

  it("gives none for a PID that does not exist", () => {
    expect(processStartTicks(2 ** 22 + 17)).toBeUndefined();
  });

  it("gives none for a zombie", async () => {
    // `sleep 0` exits at once; its parent then execs a sleep that never reaps it: a zombie.
    const parent = spawn("sh", ["-c", "sleep 0 & echo $!; exec sleep 5"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    try {
      const pid = Number(
        await new Promise<string>((resolve) =>
          parent.stdout.once("data", (chunk: Buffer) => resolve(chunk.toString())),
        ),
      );
      await expect
        .poll(
          () => {
            try {
              return /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
            } catch {
              return false;
            }
          },
          { timeout: 8_000 },
        )
        .toBe(true);
      expect(processStartTicks(pid)).toBeUndefined();
    } finally {
      parent.kill("SIGKILL");
    }
  }, 15_000);
});
