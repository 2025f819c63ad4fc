// The self-contained artefact for hosts without a suitable Node.js (scripts/package.sh), built and run
// for real: its own node answers --version with no node on PATH, and the agent it starts leases a
// subnet inside a namespace, running on the shipped binary.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LAUNCHER_FLAGS, parseLogLines } from "../helpers/agent.js";
import type { EtcdServer } from "../helpers/etcd.js";
import { createUnderlay, type Cluster } from "../helpers/netns.js";
import { startProcess, waitFor, type Started } from "../helpers/processes.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
let dir: string;
let twill: string;
let cluster: Cluster | undefined;
let etcd: EtcdServer;
/** Stopped at teardown too: a timed-out test never reaches its own finally. */
let packagedAgent: Started | undefined;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "twill-package-"));
  // dist/ is built by test/global-setup.ts; packing it as it is leaves it alone for the other files.
  const artefact = execFileSync("bash", [join(ROOT, "scripts/package.sh"), dir], {
    encoding: "utf8",
    env: { ...process.env, PACKAGE_PREBUILT: "1" },
  }).trim();
  execFileSync("tar", ["-C", dir, "-xzf", artefact]);
  twill = join(dir, "twill", "bin", "twill");
}, 300_000);
afterAll(async () => {
  await packagedAgent?.stop();
  await cluster?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

describe("the self-contained package", () => {
  it("runs with no node on PATH, starting its own node with the launcher's flags", () => {
    const result = spawnSync(twill, ["--version"], { env: { PATH: "/nonexistent" }, encoding: "utf8" });
    expect(result.stderr).toBe("");
    const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
    expect(result.stdout.trim()).toBe(`twill ${version}`);
    const launcher = readFileSync(twill, "utf8");
    for (const flag of LAUNCHER_FLAGS) expect(launcher).toContain(flag);
  });

  it("its agent leases a subnet in a namespace, on the shipped node binary", async () => {
    cluster = await createUnderlay();
    etcd = await cluster.startEtcd();
    const host = await cluster.addHost(1);
    etcd.ctl(["put", "/coreos.com/network/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}']);
    const subnetFile = join(dir, "subnet.env");
    let agent: Started | undefined;
    try {
      agent = startProcess("ip", [
        "netns",
        "exec",
        host.ns,
        twill,
        "agent",
        `--etcd-endpoints=${etcd.endpoint}`,
        "--iface=eth0",
        `--subnet-file=${subnetFile}`,
        `--state-dir=${join(dir, "state")}`,
        `--cni-conf-file=${join(dir, "10-twill.conflist")}`,
      ]);
      const started = agent;
      packagedAgent = agent;
      await waitFor(
        "subnet.env from the packaged agent",
        () => {
          try {
            return readFileSync(subnetFile, "utf8").includes("FLANNEL_SUBNET=10.244.");
          } catch {
            return false;
          }
        },
        30_000,
      );
      // ip netns exec and the launcher exec in place: the PID is the shipped node's.
      expect(readlinkSync(`/proc/${started.pid}/exe`)).toBe(join(dir, "twill", "lib", "node"));
      expect(parseLogLines(started.stdout()).some((l) => l.msg === "subnet lease acquired")).toBe(true);
    } finally {
      await agent?.stop();
    }
  });
});
