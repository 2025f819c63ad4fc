// The node-files writer's loop: it ends when stopped, also when the stop lands while it is writing.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { parseCidr } from "../../src/ip/ipv4.js";
import { NodeFilesWriter } from "../../src/node/files.js";
import { FakeClock } from "../helpers/fake-clock.js";
import { captureLogs } from "../helpers/logs.js";

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function writerIn(dir: string, cniVersion?: string | (() => Promise<string>)): NodeFilesWriter {
  return new NodeFilesWriter(
    {
      subnetFile: join(dir, "subnet.env"),
      cniConfFile: join(dir, "10-twill.conflist"),
      bridge: "cni0",
      dockerOptsFile: "",
      dockerDaemonJson: "",
      ...(cniVersion === undefined ? {} : { cniVersion }),
    },
    captureLogs().log,
    { subnetFileWritten: () => undefined },
    new FakeClock(),
  );
}

const TARGET = {
  network: parseCidr("10.244.0.0/16"),
  subnet: parseCidr("10.244.5.0/24"),
  mtu: 1450,
  ipMasq: false,
};

/** Resolves "ended" when `run` ends, or says it did not within 2 s (a real timer: the loop's own are fake). */
function endsSoon(run: Promise<void>): Promise<string> {
  return Promise.race([
    run.then(() => "ended"),
    new Promise<string>((resolve) => setTimeout(() => resolve("still running after 2 s"), 2000).unref()),
  ]);
}

/** A writer in a fresh temp dir, running until `stop` aborts (the tests below each start one). */
function started(cniVersion?: string | (() => Promise<string>)): {
  dir: string;
  writer: NodeFilesWriter;
  stop: AbortController;
  run: Promise<void>;
} {
  const dir = mkdtempSync(join(tmpdir(), "twill-files-"));
  dirs.push(dir);
  const writer = writerIn(dir, cniVersion);
  const stop = new AbortController();
  return { dir, writer, stop, run: writer.run(stop.signal) };
}

describe("NodeFilesWriter", () => {
  it("ends when stopped while it waits for a change", async () => {
    const { stop: controller, run } = started();
    controller.abort();
    expect(await endsSoon(run)).toBe("ended");
  });

  it("ends when stopped while it writes, and the file is written whole", async () => {
    const { dir, writer, stop: controller, run } = started();
    writer.set(TARGET);
    // The write has started (the loop woke and called into the file system) but not finished.
    await new Promise((resolve) => setImmediate(resolve));
    controller.abort();
    expect(await endsSoon(run)).toBe("ended");
    expect(readFileSync(join(dir, "subnet.env"), "utf8")).toContain("FLANNEL_SUBNET=10.244.5.1/24");
  });

  it("asks the plugins once, at the first lease, and writes the conflist with their answer, not before", async () => {
    let answer: (version: string) => void = () => undefined;
    const answered = new Promise<string>((resolve) => (answer = resolve));
    let asked = 0;
    const {
      dir,
      writer,
      stop: controller,
      run,
    } = started(() => {
      asked++;
      return answered;
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(asked).toBe(0); // no lease yet: the start-up is not competed with
    writer.set(TARGET);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(existsSync(join(dir, "10-twill.conflist"))).toBe(false);
    answer("0.4.0");
    const conflist = await waitForFile(join(dir, "10-twill.conflist"));
    expect(JSON.parse(conflist)).toMatchObject({
      cniVersion: "0.4.0",
      plugins: [{ type: "bridge" }, { type: "portmap" }],
    });
    writer.set({ ...TARGET, mtu: 1400 });
    await waitFor(() => readFileSync(join(dir, "10-twill.conflist"), "utf8").includes('"mtu": 1400'));
    expect(asked).toBe(1);
    controller.abort();
    expect(await endsSoon(run)).toBe("ended");
  });

  it("ends when stopped while the plugins have not answered yet, having written nothing", async () => {
    const { dir, writer, stop: controller, run } = started(() => new Promise<string>(() => undefined));
    writer.set(TARGET);
    await new Promise((resolve) => setImmediate(resolve));
    controller.abort();
    expect(await endsSoon(run)).toBe("ended");
    expect(readdirSync(dir)).toEqual([]);
  });
});

/** The file's text once it exists (polled with real timers; at most 2 s). */
async function waitForFile(path: string): Promise<string> {
  const deadline = Date.now() + 2000;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${path} was not written within 2 s`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return readFileSync(path, "utf8");
}

/** Polls `check` with real timers until it holds (at most 2 s). */
async function waitFor(check: () => boolean): Promise<void> {
  const deadline = Date.now() + 2000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("not within 2 s");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
