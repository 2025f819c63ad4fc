// The command line itself: help, version, and flag rejections as an operator sees them (exit codes,
// one-line messages). Nothing here touches the kernel or etcd.
import { describe, expect, it } from "vitest";
import { agentFlags } from "../../src/config/agent-options.js";
import { runTwill } from "../helpers/agent.js";

describe("twill on the command line", () => {
  it("--version prints the package version", async () => {
    const result = await runTwill(["--version"]);
    expect(result.code).toBe(0);
    expect(result.stdout.trim()).toMatch(/^twill \d+\.\d+\.\d+$/);
  });

  it("agent --version prints the version, as flanneld's does", async () => {
    const result = await runTwill(["agent", "--version"]);
    expect(result.code).toBe(0);
    expect(result.stdout.trim()).toMatch(/^twill \d+\.\d+\.\d+$/);
  });

  it.each<[string[], Record<string, string>, RegExp]>([
    [
      ["agent", "--kube-subnet-mgr"],
      {},
      /^twill: --kube-subnet-mgr=true: twill has no Kubernetes subnet manager: it keeps the leases in etcd/,
    ],
    [
      ["agent"],
      { FLANNELD_KUBE_SUBNET_MGR: "true" },
      /^twill: FLANNELD_KUBE_SUBNET_MGR=true: twill has no Kubernetes/,
    ],
    [["agent", "-v=abc"], {}, /^twill: --v: "abc" is not an integer/],
  ])("refuses %j %j with exit 2 and says what to do instead", async (args, env, message) => {
    const result = await runTwill(args, { env });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
  });

  it("--help lists every command", async () => {
    const result = await runTwill(["--help"]);
    expect(result.code).toBe(0);
    for (const command of [
      "twill agent",
      "twill config get",
      "twill config set",
      "twill leases",
      "twill status",
      "twill netns",
    ]) {
      expect(result.stdout, command).toContain(command);
    }
  });

  it("agent --help lists every flag with its environment variables", async () => {
    const result = await runTwill(["agent", "--help"]);
    expect(result.code).toBe(0);
    for (const flag of agentFlags) {
      expect(result.stdout, flag.name).toContain(`--${flag.name}`);
      expect(result.stdout, flag.name).toContain(`TWILL_${flag.name.toUpperCase().replace(/-/g, "_")}`);
    }
  });

  it.each([
    [["agent", "--no-such-flag"], /^twill: unknown flag --no-such-flag; see --help for the list\n$/],
    [
      ["agent", "--subnet-lease-renew-margin=0"],
      /^twill: --subnet-lease-renew-margin: 0 is out of range \(allowed: 1 to 1439\)\n$/,
    ],
    [["agent", "--metrics-address=nonsense"], /^twill: --metrics-address: /],
    [["frobnicate"], /^twill: unknown command "frobnicate"; run twill --help\n$/],
  ])("rejects %j with exit 2 and one line naming the problem", async (args, message) => {
    const result = await runTwill(args);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stdout).toBe("");
  });
});
