// The conflist's cniVersion from the plugins' VERSION answers: the choice itself (a table), and the shell
// that asks the plugins, with a stand-in runner for plugins this host does not have (an old one that
// speaks 0.4.0 at most, a missing one, one that fails or never answers). The real plugins are asked in
// test/integration/cni.test.ts.
import { describe, expect, it } from "vitest";
import type { CommandResult, CommandRunner } from "../../src/exec/command.js";
import { cniVersionFromPlugins } from "../../src/cni/probe.js";
import { chooseCniVersion, parseVersionAnswer, type PluginVersionAnswer } from "../../src/cni/version.js";
import { captureLogs } from "../helpers/logs.js";

const V1_1 = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]; // containernetworking-plugins v1.x
const V0_9 = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0"]; // v0.8.x and v0.9.x
const V0_7 = ["0.1.0", "0.2.0", "0.3.0", "0.3.1"]; // v0.7.x
const V0_6 = ["0.1.0", "0.2.0"];

const answered = (plugin: string, supported: readonly string[]): PluginVersionAnswer => ({
  plugin,
  path: `/opt/cni/bin/${plugin}`,
  supported,
});
const three = (bridge: readonly string[], hostLocal = bridge, portmap = bridge): PluginVersionAnswer[] => [
  answered("bridge", bridge),
  answered("host-local", hostLocal),
  answered("portmap", portmap),
];

describe("chooseCniVersion", () => {
  it.each<[string, PluginVersionAnswer[], string, boolean]>([
    ["all speak 1.0.0", three(V1_1), "1.0.0", true],
    ["all at most 0.4.0", three(V0_9), "0.4.0", true],
    ["all at most 0.3.1", three(V0_7), "0.3.1", true],
    ["one plugin older than the others: the newest they all speak", three(V1_1, V1_1, V0_9), "0.4.0", true],
    ["the oldest of three", three(V1_1, V0_7, V0_9), "0.3.1", true],
    ["only exact versions count (0.4 is not 0.4.0)", three(V1_1, ["0.4", "0.3.1"], V1_1), "0.3.1", true],
    ["1.1.0 only: none of twill's choices, keep 1.0.0", three(["1.1.0"]), "1.0.0", false],
    ["too old for a conflist (0.2.0 at most)", three(V1_1, V1_1, V0_6), "1.0.0", false],
    ["no version in common (1.0.0 only vs 0.4.0 at most)", three(["1.0.0"], V0_9, V0_9), "1.0.0", false],
  ])("%s → %s", (_name, answers, version, chosen) => {
    const choice = chooseCniVersion(answers);
    expect({ version: choice.version, chosen: choice.chosen }).toEqual({ version, chosen });
    expect(choice.problems.length > 0).toBe(!chosen);
  });

  it("keeps 1.0.0 when a plugin is missing or silent, and names it, even if the others answered", () => {
    const choice = chooseCniVersion([
      answered("bridge", V0_9),
      { plugin: "host-local", path: undefined, problem: "not found in /opt/cni/bin, /usr/lib/cni" },
      { plugin: "portmap", path: "/opt/cni/bin/portmap", problem: "did not answer VERSION within 10 s" },
    ]);
    expect(choice).toEqual({
      version: "1.0.0",
      chosen: false,
      problems: [
        { plugin: "host-local", problem: "not found in /opt/cni/bin, /usr/lib/cni" },
        { plugin: "portmap", problem: "did not answer VERSION within 10 s" },
      ],
    });
  });

  it("says which plugin is too old when they share no version", () => {
    const { problems } = chooseCniVersion(three(V1_1, V1_1, V0_6));
    expect(problems.find((p) => p.plugin === "portmap")?.problem).toMatch(
      /no version among 1\.0\.0, 0\.4\.0, 0\.3\.1 that every plugin supports; it supports 0\.1\.0, 0\.2\.0$/,
    );
  });
});

describe("parseVersionAnswer", () => {
  it.each<[string, string, readonly string[] | RegExp]>([
    [
      "a v1.1.1 plugin",
      '{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]}\n',
      V1_1,
    ],
    [
      "a v0.8 plugin",
      '{"cniVersion":"0.4.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0"]}',
      V0_9,
    ],
    ["not JSON", "bridge version 0.4.0", /not valid JSON/],
    ["empty", "", /not valid JSON/],
    [
      "an error object",
      '{"cniVersion":"1.0.0","code":4,"msg":"unknown command"}',
      /no "supportedVersions" list/,
    ],
    ["an empty list", '{"cniVersion":"1.0.0","supportedVersions":[]}', /no "supportedVersions" list/],
    ["numbers", '{"cniVersion":"1.0.0","supportedVersions":[1]}', /other than version strings/],
  ])("%s", (_name, stdout, expected) => {
    const parsed = parseVersionAnswer(stdout);
    if (expected instanceof RegExp) expect(parsed).toMatch(expected);
    else expect(parsed).toEqual(expected);
  });
});

/** A runner that plays installed plugins: what each answers to VERSION, by path; records the calls. */
function pluginRunner(answers: Record<string, CommandResult | "never">) {
  const calls: { cmd: string; args: readonly string[]; input: string | undefined }[] = [];
  const runner: CommandRunner = {
    where: "test",
    run: (cmd, args, input) => {
      calls.push({ cmd, args, input });
      const answer = answers[args.at(-1) ?? ""];
      if (answer === "never") return new Promise(() => undefined);
      return Promise.resolve(answer ?? { stdout: "", stderr: "env: no such file", exitCode: 127 });
    },
  };
  return { runner, calls };
}

const ok = (supported: readonly string[]): CommandResult => ({
  stdout: JSON.stringify({ cniVersion: supported.at(-1), supportedVersions: supported }),
  stderr: "",
  exitCode: 0,
});

/** A plugin dir holding these plugins (by name); the finder looks only there. */
const dirWith =
  (dir: string, plugins: readonly string[]) =>
  (type: string, dirs: readonly string[]): Promise<string | undefined> =>
    Promise.resolve(dirs.includes(dir) && plugins.includes(type) ? `${dir}/${type}` : undefined);

const DIRS = ["/opt/cni/bin", "/usr/lib/cni"];

describe("cniVersionFromPlugins (the shell, with stand-in plugins)", () => {
  it("asks each plugin with CNI_COMMAND=VERSION and empty stdin, and declares 0.4.0 when one speaks at most 0.4.0", async () => {
    const { runner, calls } = pluginRunner({
      "/usr/lib/cni/bridge": ok(V1_1),
      "/usr/lib/cni/host-local": ok(V1_1),
      "/usr/lib/cni/portmap": ok(V0_9),
    });
    const logs = captureLogs();
    const find = dirWith("/usr/lib/cni", ["bridge", "host-local", "portmap"]);
    expect(await cniVersionFromPlugins(DIRS, logs.log, { runner, find })).toBe("0.4.0");
    expect(calls).toEqual(
      ["bridge", "host-local", "portmap"].map((p) => ({
        cmd: "env",
        args: ["CNI_COMMAND=VERSION", `/usr/lib/cni/${p}`],
        input: "",
      })),
    );
    const [chosen] = logs.withMsg("CNI version chosen from the plugins");
    expect(chosen).toMatchObject({
      level: 30,
      cniVersion: "0.4.0",
      plugins: {
        bridge: "/usr/lib/cni/bridge",
        "host-local": "/usr/lib/cni/host-local",
        portmap: "/usr/lib/cni/portmap",
      },
      supported: { portmap: V0_9 },
    });
    expect(logs.records().filter((r) => r.level === 40)).toEqual([]);
  });

  it("keeps 1.0.0 and warns naming the plugin and the dirs searched when a plugin is missing", async () => {
    const { runner, calls } = pluginRunner({
      "/opt/cni/bin/bridge": ok(V0_9),
      "/opt/cni/bin/host-local": ok(V0_9),
    });
    const logs = captureLogs();
    const find = dirWith("/opt/cni/bin", ["bridge", "host-local"]);
    expect(await cniVersionFromPlugins(DIRS, logs.log, { runner, find })).toBe("1.0.0");
    expect(calls.map((c) => c.args.at(-1))).toEqual(["/opt/cni/bin/bridge", "/opt/cni/bin/host-local"]);
    const warnings = logs.records().filter((r) => r.level === 40);
    expect(warnings).toEqual([
      expect.objectContaining({
        plugin: "portmap",
        path: null,
        dirs: DIRS,
        cniVersion: "1.0.0",
        msg: "CNI plugin portmap: not found in /opt/cni/bin, /usr/lib/cni; the conflist declares cniVersion 1.0.0",
      }),
    ]);
    expect(logs.withMsg("CNI version chosen from the plugins")).toEqual([]);
  });

  it("keeps 1.0.0 and warns when a plugin fails, answers nonsense or does not answer in time", async () => {
    const { runner } = pluginRunner({
      "/opt/cni/bin/bridge": { stdout: "", stderr: "bridge: exec format error", exitCode: -1 },
      "/opt/cni/bin/host-local": { stdout: "CNI host-local plugin v0.7.1", stderr: "", exitCode: 0 },
      "/opt/cni/bin/portmap": "never",
    });
    const logs = captureLogs();
    const find = dirWith("/opt/cni/bin", ["bridge", "host-local", "portmap"]);
    const started = Date.now();
    expect(await cniVersionFromPlugins(DIRS, logs.log, { runner, find, timeoutMs: 100 })).toBe("1.0.0");
    expect(Date.now() - started).toBeLessThan(5000);
    const warnings = logs.records().filter((r) => r.level === 40);
    expect(warnings.map((w) => [w.plugin, w.path])).toEqual([
      ["bridge", "/opt/cni/bin/bridge"],
      ["host-local", "/opt/cni/bin/host-local"],
      ["portmap", "/opt/cni/bin/portmap"],
    ]);
    expect(warnings.map((w) => w.problem)).toEqual([
      expect.stringMatching(/VERSION failed \(exit -1\): bridge: exec format error$/),
      expect.stringMatching(/not valid JSON/),
      "/opt/cni/bin/portmap did not answer VERSION within 0.1 s",
    ]);
  });

  it("with no plugin dirs at all: 1.0.0, and the warning says there were none", async () => {
    const { runner, calls } = pluginRunner({});
    const logs = captureLogs();
    expect(await cniVersionFromPlugins([], logs.log, { runner, find: dirWith("/x", []) })).toBe("1.0.0");
    expect(calls).toEqual([]);
    expect(logs.records().map((r) => r.problem)).toEqual([
      "not found in (no plugin dirs)",
      "not found in (no plugin dirs)",
      "not found in (no plugin dirs)",
    ]);
  });
});
