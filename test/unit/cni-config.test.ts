// The CNI side without a kernel: the conflist twill writes, conflist parsing, what each plugin gets on
// stdin and in its environment, results and errors, the chain (order, prevResult, rollback, CHECK),
// the result cache, node files, and `twill netns` end to end against fake plugins (shell scripts).
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { cachePath, findCache, readCache, writeCache, type CachedAttachment } from "../../src/cni/cache.js";
import {
  addNetworkList,
  checkNetworkList,
  CniAddError,
  CniDelError,
  delNetworkList,
  pluginEnv,
  pluginStdin,
  type RuntimeConf,
} from "../../src/cni/chain.js";
import {
  CniConfigError,
  compareVersions,
  conflistFromSubnetEnv,
  formatConflist,
  parseConflist,
  twillConflist,
} from "../../src/cni/conflist.js";
import {
  CniPluginError,
  CniPluginNotFoundError,
  pluginErrorFrom,
  type PluginExecutor,
  type PluginOutput,
  type PluginRun,
} from "../../src/cni/exec.js";
import type { JsonObject } from "../../src/cni/json.js";
import { updateFile, updateNodeFiles } from "../../src/node/files.js";
import { formatPortMapping, parsePortMapping, PortMappingError } from "../../src/cni/port-mappings.js";
import { formatCniResult, parseCniError, parseCniResult } from "../../src/cni/result.js";
import { netnsCommand, withIgnoreUnknown } from "../../src/cli/netns.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { formatSubnetEnv } from "../../src/node/subnet-env.js";

const lease = {
  network: parseCidr("10.244.0.0/16"),
  subnet: parseCidr("10.244.5.0/24"),
  mtu: 1450,
};

const GOLDEN_NO_MASQ = `{
  "cniVersion": "1.0.0",
  "name": "twill",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": true,
      "mtu": 1450,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [
            {
              "subnet": "10.244.5.0/24",
              "gateway": "10.244.5.1"
            }
          ]
        ],
        "routes": [
          {
            "dst": "10.244.0.0/16",
            "gw": "10.244.5.1"
          },
          {
            "dst": "0.0.0.0/0",
            "gw": "10.244.5.1"
          }
        ]
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
`;

describe("twillConflist", () => {
  it("golden: bridge + host-local + portmap; the bridge plugin masquerades when twill does not", () => {
    expect(formatConflist(twillConflist({ ...lease, bridge: "cni0", ipMasq: false }))).toBe(GOLDEN_NO_MASQ);
  });

  it("twill masquerades (--ip-masq): the bridge plugin must not (ipMasq false), like flannel's plugin", () => {
    const conf = twillConflist({ ...lease, bridge: "docker0", ipMasq: true, mtu: 1500 });
    expect(formatConflist(conf)).toBe(
      GOLDEN_NO_MASQ.replace('"ipMasq": true', '"ipMasq": false')
        .replace('"cni0"', '"docker0"')
        .replace('"mtu": 1450', '"mtu": 1500'),
    );
  });

  it("name and host-local's dataDir can be set (tests give each node its own store)", () => {
    const conf = twillConflist({
      ...lease,
      bridge: "cni0",
      ipMasq: false,
      name: "pods",
      ipamDataDir: "/tmp/x",
    });
    expect(conf.name).toBe("pods");
    expect(JSON.stringify(conf)).toContain('"ipam":{"type":"host-local","dataDir":"/tmp/x","ranges"');
  });

  it("is the same from the node's subnet.env (flannel's or twill's), as flannel's CNI plugin reads it", () => {
    const env = formatSubnetEnv({ ...lease, ipMasq: false });
    expect(formatConflist(conflistFromSubnetEnv(env, { bridge: "cni0" }))).toBe(GOLDEN_NO_MASQ);
    expect(() => conflistFromSubnetEnv("FLANNEL_NETWORK=10.244.0.0/16\n", { bridge: "cni0" })).toThrow(
      "subnet.env lacks FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ",
    );
  });

  it("declares the cniVersion it is given (the one the installed plugins speak), 1.0.0 by default", () => {
    const conf = twillConflist({ ...lease, bridge: "cni0", ipMasq: false, cniVersion: "0.4.0" });
    expect(formatConflist(conf)).toBe(
      GOLDEN_NO_MASQ.replace('"cniVersion": "1.0.0"', '"cniVersion": "0.4.0"'),
    );
    expect(() => twillConflist({ ...lease, bridge: "cni0", ipMasq: false, cniVersion: "1.0" })).toThrow(
      'invalid cniVersion "1.0"',
    );
  });

  it("refuses an MTU no link can have", () => {
    expect(() => twillConflist({ ...lease, mtu: 0, bridge: "cni0", ipMasq: false })).toThrow(RangeError);
    expect(() => twillConflist({ ...lease, mtu: 1450.5, bridge: "cni0", ipMasq: false })).toThrow(RangeError);
  });
});

describe("parseConflist", () => {
  it("reads twill's own conflist", () => {
    const list = parseConflist(GOLDEN_NO_MASQ, "10-twill.conflist");
    expect(list.name).toBe("twill");
    expect(list.cniVersion).toBe("1.0.0");
    expect(list.disableCheck).toBe(false);
    expect(list.plugins.map((p) => p.type)).toEqual(["bridge", "portmap"]);
    expect([...(list.plugins[1]?.capabilities ?? [])]).toEqual(["portMappings"]);
    expect(list.plugins[0]?.capabilities.size).toBe(0);
  });

  it("turns a single-plugin .conf into a list, as libcni does", () => {
    const list = parseConflist('{"cniVersion":"0.4.0","name":"n","type":"bridge","bridge":"br0"}', "x.conf");
    expect(list.plugins.map((p) => p.type)).toEqual(["bridge"]);
    expect(list.plugins[0]?.raw.bridge).toBe("br0");
  });

  it("accepts disableCheck as a boolean or text", () => {
    const base = { cniVersion: "1.0.0", name: "n", plugins: [{ type: "bridge" }] };
    expect(parseConflist(JSON.stringify({ ...base, disableCheck: true }), "f").disableCheck).toBe(true);
    expect(parseConflist(JSON.stringify({ ...base, disableCheck: "true" }), "f").disableCheck).toBe(true);
  });

  it.each([
    ["{", /^f is not valid JSON/],
    ["[]", /is not a JSON object/],
    ['{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}', /"name" is missing/],
    ['{"cniVersion":"1.0.0","name":"-x","plugins":[{"type":"bridge"}]}', /network name "-x" is invalid/],
    ['{"name":"n","plugins":[{"type":"bridge"}]}', /"cniVersion" is missing/],
    ['{"cniVersion":"1.0.0","name":"n"}', /"plugins" is missing/],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[]}', /"plugins" is empty/],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[3]}', /plugins\[0\] is not an object/],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}', /plugins\[0\]: "type" is missing/],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}', /not a plain file name/],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"p","capabilities":[]}]}', /"capabilities" is not/],
  ])("rejects %s", (text, message) => {
    expect(() => parseConflist(text, "f")).toThrow(CniConfigError);
    expect(() => parseConflist(text, "f")).toThrow(message);
  });

  it("compares versions numerically", () => {
    expect(compareVersions("0.4.0", "1.0.0")).toBe(-1);
    expect(compareVersions("0.10.0", "0.4.0")).toBe(1);
    expect(compareVersions("1.0.0", "1.0.0")).toBe(0);
  });
});

const rt: RuntimeConf = {
  containerId: "pod1",
  netns: "/var/run/netns/pod1",
  ifName: "eth0",
  args: "IP=10.244.5.7",
  capabilityArgs: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }] },
};

describe("what a plugin gets", () => {
  const list = parseConflist(GOLDEN_NO_MASQ, "f");
  const [bridge, portmap] = list.plugins;
  if (!bridge || !portmap) throw new Error("plugins missing");

  it("stdin: the plugin's config with the list's name and cniVersion, and prevResult when there is one", () => {
    const first = pluginStdin(list, bridge, rt, undefined);
    expect(first.name).toBe("twill");
    expect(first.cniVersion).toBe("1.0.0");
    expect(first.type).toBe("bridge");
    expect("prevResult" in first).toBe(false);
    expect("runtimeConfig" in first).toBe(false); // bridge declares no capability
    const prev = { cniVersion: "1.0.0", ips: [{ address: "10.244.5.2/24" }] };
    expect(pluginStdin(list, portmap, rt, prev).prevResult).toEqual(prev);
  });

  it("runtimeConfig only for the capabilities a plugin declares, merged with its own", () => {
    expect(pluginStdin(list, portmap, rt, undefined).runtimeConfig).toEqual({
      portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }],
    });
    expect("runtimeConfig" in pluginStdin(list, portmap, { ...rt, capabilityArgs: {} }, undefined)).toBe(
      false,
    );
    const own = parseConflist(
      JSON.stringify({
        cniVersion: "1.0.0",
        name: "n",
        plugins: [{ type: "p", capabilities: { portMappings: true }, runtimeConfig: { other: 1 } }],
      }),
      "f",
    );
    const plugin = own.plugins[0];
    if (!plugin) throw new Error("no plugin");
    expect(pluginStdin(own, plugin, rt, undefined).runtimeConfig).toEqual({
      other: 1,
      portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }],
    });
    expect(plugin.raw.runtimeConfig).toEqual({ other: 1 }); // the list itself is not changed
  });

  it("environment: every CNI_* variable, so none leaks in from the caller", () => {
    expect(pluginEnv("ADD", rt, ["/opt/cni/bin", "/usr/lib/cni"])).toEqual({
      CNI_COMMAND: "ADD",
      CNI_CONTAINERID: "pod1",
      CNI_NETNS: "/var/run/netns/pod1",
      CNI_IFNAME: "eth0",
      CNI_ARGS: "IP=10.244.5.7",
      CNI_PATH: "/opt/cni/bin:/usr/lib/cni",
    });
  });
});

// The bridge plugin's real ADD output (v1.1.1, cniVersion 1.0.0), as the integration test sees it.
const BRIDGE_RESULT: JsonObject = {
  cniVersion: "1.0.0",
  interfaces: [
    { name: "cni0", mac: "1a:6c:0c:ef:f5:b0" },
    { name: "veth4fae1246", mac: "2e:95:ff:bc:ff:17" },
    { name: "eth0", mac: "26:a3:67:28:2c:44", sandbox: "/var/run/netns/pod1" },
  ],
  ips: [{ interface: 2, address: "10.244.5.2/24", gateway: "10.244.5.1" }],
  routes: [
    { dst: "10.244.0.0/16", gw: "10.244.5.1" },
    { dst: "0.0.0.0/0", gw: "10.244.5.1" },
  ],
  dns: {},
};

describe("results", () => {
  it("parses a 1.0.0 result into a typed view and keeps the raw object", () => {
    const result = parseCniResult(BRIDGE_RESULT);
    expect(result.ips).toEqual([{ address: "10.244.5.2/24", gateway: "10.244.5.1", interface: 2 }]);
    expect(result.interfaces[2]).toEqual({
      name: "eth0",
      mac: "26:a3:67:28:2c:44",
      mtu: undefined,
      sandbox: "/var/run/netns/pod1",
    });
    expect(result.routes.map((r) => r.dst)).toEqual(["10.244.0.0/16", "0.0.0.0/0"]);
    expect(result.raw).toBe(BRIDGE_RESULT);
  });

  it("prints interfaces, addresses and routes", () => {
    expect(formatCniResult(parseCniResult(BRIDGE_RESULT))).toEqual([
      "interfaces:",
      "  cni0  mac 1a:6c:0c:ef:f5:b0  (host)",
      "  veth4fae1246  mac 2e:95:ff:bc:ff:17  (host)",
      "  eth0  mac 26:a3:67:28:2c:44  (in /var/run/netns/pod1)",
      "addresses:",
      "  10.244.5.2/24  gateway 10.244.5.1  on eth0",
      "routes:",
      "  10.244.0.0/16 via 10.244.5.1",
      "  0.0.0.0/0 via 10.244.5.1",
    ]);
  });

  it("accepts 0.4.0 (ips with version) and views 0.2.0 (ip4) in the modern shape", () => {
    const v04 = {
      cniVersion: "0.4.0",
      ips: [{ version: "4", address: "10.1.0.2/24", interface: 0 }],
      interfaces: [{ name: "eth0" }],
    };
    expect(parseCniResult(v04).ips[0]?.address).toBe("10.1.0.2/24");
    const v02 = {
      cniVersion: "0.2.0",
      ip4: { ip: "10.1.0.2/24", gateway: "10.1.0.1", routes: [{ dst: "0.0.0.0/0" }] },
      dns: { nameservers: ["10.1.0.10"] },
    };
    const legacy = parseCniResult(v02);
    expect(legacy.ips).toEqual([{ address: "10.1.0.2/24", gateway: "10.1.0.1", interface: undefined }]);
    expect(legacy.routes).toEqual([{ dst: "0.0.0.0/0", gw: undefined }]);
    expect(formatCniResult(legacy)).toContain("dns:  nameservers 10.1.0.10");
  });

  it.each([
    [[], /not a JSON object/],
    [{ ips: [] }, /"cniVersion" is missing/],
    [{ cniVersion: "1.0.0", ips: [{ address: "10.1.0.2" }] }, /ips\[0\]: "address" is missing or not a CIDR/],
    [{ cniVersion: "1.0.0", ips: [{ address: "10.1.0.2/33" }] }, /not a CIDR/],
    [
      { cniVersion: "1.0.0", ips: [{ address: "10.1.0.2/24", interface: 1 }] },
      /not an index into interfaces/,
    ],
    [{ cniVersion: "1.0.0", ips: [{ address: "10.1.0.2/24", gateway: "x" }] }, /"gateway" "x" is not an IP/],
    [{ cniVersion: "1.0.0", interfaces: [{ mac: "x" }] }, /interfaces\[0\]: "name" is missing/],
    [{ cniVersion: "1.0.0", routes: [{ gw: "10.0.0.1" }] }, /routes\[0\]: "dst" is missing/],
    [{ cniVersion: "1.0.0", routes: {} }, /"routes" is not a list/],
  ])("rejects %j", (value, message) => {
    expect(() => parseCniResult(value)).toThrow(message);
  });
});

const output = (o: Partial<PluginOutput>): PluginOutput => ({
  exitCode: 1,
  stdout: "",
  stderr: "",
  timedOut: false,
  spawnError: undefined,
  ...o,
});

describe("plugin errors", () => {
  it("shows the plugin's own code, message and details", () => {
    const stdout = JSON.stringify({
      cniVersion: "1.0.0",
      code: 11,
      msg: "try again later",
      details: "lock busy",
    });
    expect(parseCniError(stdout)).toEqual({ code: 11, msg: "try again later", details: "lock busy" });
    const error = pluginErrorFrom("bridge", "ADD", output({ stdout }), 60_000);
    expect(error).toBeInstanceOf(CniPluginError);
    expect(error.message).toBe("plugin bridge failed (code 11): try again later (lock busy)");
    expect(error.code).toBe(11);
  });

  it("names a well-known code when the plugin gave no message", () => {
    const error = pluginErrorFrom("x", "ADD", output({ stdout: '{"code":7}' }), 60_000);
    expect(error.message).toBe("plugin x failed (code 7): invalid network config");
  });

  it("falls back to what the plugin wrote, a timeout or a start failure", () => {
    expect(pluginErrorFrom("x", "DEL", output({ exitCode: 2, stderr: "panic: boom\n" }), 1000).message).toBe(
      "plugin x failed (exited 2): panic: boom",
    );
    expect(pluginErrorFrom("x", "DEL", output({ exitCode: undefined }), 1000).message).toBe(
      "plugin x failed (was killed): no output",
    );
    expect(pluginErrorFrom("x", "ADD", output({ exitCode: undefined, timedOut: true }), 5000).message).toBe(
      "plugin x timed out after 5 s (ADD)",
    );
    expect(
      pluginErrorFrom("x", "ADD", output({ exitCode: undefined, spawnError: "EACCES" }), 5000).message,
    ).toBe("plugin x could not be run: EACCES");
    expect(parseCniError("not json")).toBeUndefined();
    expect(parseCniError('{"msg":"no code"}')).toBeUndefined();
  });
});

describe("port mappings", () => {
  it.each([
    ["8080:80", { hostPort: 8080, containerPort: 80, protocol: "tcp", hostIP: undefined }],
    ["53:5353/udp", { hostPort: 53, containerPort: 5353, protocol: "udp", hostIP: undefined }],
    ["198.18.0.1:8080:80/TCP", { hostPort: 8080, containerPort: 80, protocol: "tcp", hostIP: "198.18.0.1" }],
    ["[fd00::1]:8080:80/sctp", { hostPort: 8080, containerPort: 80, protocol: "sctp", hostIP: "fd00::1" }],
  ])("%s", (spec, want) => {
    expect(parsePortMapping(spec)).toEqual(want);
  });

  it.each(["80", "0:80", "8080:65536", "8080:80/icmp", "x:8080:80", "a:b", "1:2:3:4"])(
    "rejects %s",
    (spec) => {
      expect(() => parsePortMapping(spec)).toThrow(PortMappingError);
    },
  );

  it("prints host -> container", () => {
    expect(formatPortMapping(parsePortMapping("198.18.0.1:8080:80"))).toBe("198.18.0.1:8080 -> 80/tcp");
  });
});

/** A scripted executor: records every call; `behave` decides each plugin's answer. */
function fakeExecutor(
  behave: (type: string, command: string, stdin: JsonObject) => PluginOutput,
  installed = ["bridge", "portmap", "tuning"],
) {
  const calls: { type: string; command: string; stdin: JsonObject; env: Readonly<Record<string, string>> }[] =
    [];
  const executor: PluginExecutor = {
    find: (type, dirs) => Promise.resolve(installed.includes(type) ? `${dirs[0] ?? ""}/${type}` : undefined),
    run: (run: PluginRun) => {
      const type = run.binary.split("/").pop() ?? "";
      const stdin = JSON.parse(run.stdin) as JsonObject;
      const command = run.env.CNI_COMMAND ?? "";
      calls.push({ type, command, stdin, env: run.env });
      return Promise.resolve(behave(type, command, stdin));
    },
  };
  return { executor, calls };
}

const ok = (stdout = ""): PluginOutput => output({ exitCode: 0, stdout });

/** bridge answers with BRIDGE_RESULT; portmap (and others) pass prevResult on, like the real ones. */
function standard(type: string, command: string, stdin: JsonObject): PluginOutput {
  if (command !== "ADD") return ok();
  if (type === "bridge") return ok(JSON.stringify(BRIDGE_RESULT));
  return ok(JSON.stringify(stdin.prevResult));
}

describe("the chain (libcni semantics)", () => {
  const list = parseConflist(GOLDEN_NO_MASQ, "f");

  it("ADD runs in order, each plugin getting the previous result; the last result is the answer", async () => {
    const { executor, calls } = fakeExecutor(standard);
    const result = await addNetworkList(list, rt, { binDirs: ["/cni"], executor });
    expect(calls.map((c) => `${c.command} ${c.type}`)).toEqual(["ADD bridge", "ADD portmap"]);
    expect(calls[0]?.stdin.prevResult).toBeUndefined();
    expect(calls[1]?.stdin.prevResult).toEqual(BRIDGE_RESULT);
    expect(calls[1]?.stdin.runtimeConfig).toEqual({ portMappings: rt.capabilityArgs.portMappings });
    expect(result.ips[0]?.address).toBe("10.244.5.2/24");
  });

  it("DEL runs in reverse with the cached result, and goes on past a failing plugin", async () => {
    const { executor, calls } = fakeExecutor((type) =>
      type === "portmap" ? output({ stdout: '{"code":5,"msg":"iptables busy"}' }) : ok(),
    );
    const error = await delNetworkList(list, rt, BRIDGE_RESULT, { binDirs: ["/cni"], executor }).catch(
      (e: unknown) => e,
    );
    expect(calls.map((c) => `${c.command} ${c.type}`)).toEqual(["DEL portmap", "DEL bridge"]);
    expect(calls.every((c) => JSON.stringify(c.stdin.prevResult) === JSON.stringify(BRIDGE_RESULT))).toBe(
      true,
    );
    expect(error).toBeInstanceOf(CniDelError);
    expect((error as Error).message).toBe("plugin portmap failed (code 5): iptables busy");
  });

  it("a failed ADD is undone: DEL for the failing plugin and every one before it, in reverse", async () => {
    const { executor, calls } = fakeExecutor((type, command, stdin) =>
      type === "portmap" && command === "ADD"
        ? output({ stdout: '{"code":999,"msg":"cannot set up DNAT"}' })
        : standard(type, command, stdin),
    );
    const error = await addNetworkList(list, rt, { binDirs: ["/cni"], executor }).catch((e: unknown) => e);
    expect(calls.map((c) => `${c.command} ${c.type}`)).toEqual([
      "ADD bridge",
      "ADD portmap",
      "DEL portmap",
      "DEL bridge",
    ]);
    expect(calls[3]?.stdin.prevResult).toEqual(BRIDGE_RESULT);
    expect(error).toBeInstanceOf(CniAddError);
    expect((error as CniAddError).failure).toBeInstanceOf(CniPluginError);
    expect((error as Error).message).toBe("plugin portmap failed (code 999): cannot set up DNAT");
  });

  it("says so when undoing a failed ADD fails too", async () => {
    const { executor } = fakeExecutor((type, command) =>
      command === "ADD"
        ? output({ stdout: '{"code":7,"msg":"bad"}' })
        : output({ stdout: '{"code":5,"msg":"stuck"}' }),
    );
    const error = await addNetworkList(list, rt, { binDirs: ["/cni"], executor }).catch((e: unknown) => e);
    expect((error as Error).message).toBe(
      "plugin bridge failed (code 7): bad; undoing the plugins already run also failed: plugin bridge failed (code 5): stuck",
    );
  });

  it("a plugin that succeeds without a valid result is a failure (and is undone)", async () => {
    const { executor, calls } = fakeExecutor((type, command) =>
      command === "ADD" && type === "bridge" ? ok("garbage") : ok(),
    );
    await expect(addNetworkList(list, rt, { binDirs: ["/cni"], executor })).rejects.toThrow(
      "plugin bridge succeeded but printed no JSON result: garbage",
    );
    expect(calls.map((c) => `${c.command} ${c.type}`)).toEqual(["ADD bridge", "DEL bridge"]);
  });

  it("a missing plugin is found out before anything runs", async () => {
    const { executor, calls } = fakeExecutor(standard, ["bridge"]);
    const error = await addNetworkList(list, rt, { binDirs: ["/a", "/b"], executor }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(CniPluginNotFoundError);
    expect((error as Error).message).toMatch(/^plugin "portmap" not found in \/a:\/b /);
    expect(calls).toEqual([]);
  });

  it("CHECK runs in order, every plugin getting the cached result", async () => {
    const { executor, calls } = fakeExecutor(() => ok());
    expect(await checkNetworkList(list, rt, BRIDGE_RESULT, { binDirs: ["/cni"], executor })).toEqual({
      warnings: [],
    });
    expect(calls.map((c) => `${c.command} ${c.type}`)).toEqual(["CHECK bridge", "CHECK portmap"]);
    expect(calls.every((c) => JSON.stringify(c.stdin.prevResult) === JSON.stringify(BRIDGE_RESULT))).toBe(
      true,
    );
  });

  it("CHECK fails with the first plugin's error", async () => {
    const { executor, calls } = fakeExecutor((type) =>
      type === "bridge"
        ? output({ stdout: '{"code":999,"msg":"Failed to match addr 10.244.5.2/24 on interface eth0"}' })
        : ok(),
    );
    await expect(checkNetworkList(list, rt, BRIDGE_RESULT, { binDirs: ["/cni"], executor })).rejects.toThrow(
      "plugin bridge failed (code 999): Failed to match addr 10.244.5.2/24 on interface eth0",
    );
    expect(calls).toHaveLength(1);
  });

  it("CHECK tolerates portmap < 1.2.0's IPv6 check of an IPv4-only pod (plugins#819), and only that", async () => {
    const bug =
      '{"code":999,"msg":"could not check ipv6 dnat: chain CNI-DN-4a506e75dde3f16d249a6 not found in iptables table nat"}';
    const { executor } = fakeExecutor((type) => (type === "portmap" ? output({ stdout: bug }) : ok()));
    const { warnings } = await checkNetworkList(list, rt, BRIDGE_RESULT, { binDirs: ["/cni"], executor });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/plugins#819/);
    const dualStack: JsonObject = {
      ...BRIDGE_RESULT,
      ips: [
        { interface: 2, address: "10.244.5.2/24", gateway: "10.244.5.1" },
        { interface: 2, address: "fd00::2/64" },
      ],
    };
    await expect(checkNetworkList(list, rt, dualStack, { binDirs: ["/cni"], executor })).rejects.toThrow(
      /ipv6 dnat/,
    );
  });

  it("CHECK needs cniVersion 0.4.0 or later", async () => {
    const old = parseConflist('{"cniVersion":"0.3.1","name":"n","plugins":[{"type":"bridge"}]}', "f");
    const { executor } = fakeExecutor(() => ok());
    await expect(checkNetworkList(old, rt, BRIDGE_RESULT, { binDirs: ["/cni"], executor })).rejects.toThrow(
      /CHECK needs 0.4.0/,
    );
  });
});

describe("files", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "twill-cni-unit-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const entry: CachedAttachment = {
    containerId: "pod1",
    ifName: "eth0",
    networkName: "twill",
    netns: "/var/run/netns/pod1",
    cniArgs: "",
    capabilityArgs: {},
    config: { cniVersion: "1.0.0", name: "twill", plugins: [{ type: "bridge" }] },
    result: BRIDGE_RESULT,
  };

  it("result cache: <net>-<container>-<ifname>.json, mode 0600, read back; found by container when the conflist is gone", async () => {
    const path = cachePath(dir, "twill", "pod1", "eth0");
    expect(path).toBe(join(dir, "twill-pod1-eth0.json"));
    expect(await readCache(path)).toBeUndefined();
    await writeCache(path, entry);
    expect(await readCache(path)).toEqual(entry);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await findCache(dir, "pod1", "eth0")).toEqual(entry);
    expect(await findCache(dir, "pod2", "eth0")).toBeUndefined();
    expect(await findCache(join(dir, "nowhere"), "pod1", "eth0")).toBeUndefined();
    await writeCache(cachePath(dir, "other", "pod1", "eth0"), { ...entry, networkName: "other" });
    await expect(findCache(dir, "pod1", "eth0")).rejects.toThrow(/several networks \(other, twill\)/);
    await writeFile(path, "{}");
    await expect(readCache(path)).rejects.toThrow(/not a twill cache entry/);
  });

  it("updateFile: created, unchanged (same inode, same mtime), updated (atomically: a new inode)", async () => {
    const path = join(dir, "sub", "10-twill.conflist");
    expect(await updateFile(path, () => "a\n")).toBe("created");
    const first = await stat(path);
    expect(await updateFile(path, () => "a\n")).toBe("unchanged");
    const same = await stat(path);
    expect([same.ino, same.mtimeMs]).toEqual([first.ino, first.mtimeMs]);
    expect(await updateFile(path, (current) => `${current ?? ""}b\n`)).toBe("updated");
    expect(await readFile(path, "utf8")).toBe("a\nb\n");
    expect((await stat(path)).ino).not.toBe(first.ino);
    expect(await readdir(join(dir, "sub"))).toEqual(["10-twill.conflist"]); // no temp files left
  });

  it("updateNodeFiles: conflist, docker options and daemon.json; off when the path is empty; errors per file", async () => {
    await writeFile(join(dir, "daemon.json"), '{"debug": true}\n');
    const env = { ...lease, ipMasq: true };
    const options = {
      cniConfFile: join(dir, "net.d", "10-twill.conflist"),
      bridge: "cni0",
      dockerOptsFile: join(dir, "docker_opts.env"),
      dockerDaemonJson: join(dir, "daemon.json"),
    };
    const reports = await updateNodeFiles(env, options);
    expect(reports.map((r) => [r.kind, r.outcome, r.error])).toEqual([
      ["cni-conflist", "created", undefined],
      ["docker-opts", "created", undefined],
      ["docker-daemon-json", "updated", undefined],
    ]);
    expect(await readFile(options.cniConfFile, "utf8")).toBe(
      formatConflist(twillConflist({ ...env, bridge: "cni0" })),
    );
    expect(await readFile(options.dockerOptsFile, "utf8")).toContain('DOCKER_OPT_IPMASQ="--ip-masq=false"');
    expect(JSON.parse(await readFile(options.dockerDaemonJson, "utf8"))).toEqual({
      debug: true,
      bip: "10.244.5.1/24",
      mtu: 1450,
      "ip-masq": false,
    });
    expect((await updateNodeFiles(env, options)).map((r) => r.outcome)).toEqual([
      "unchanged",
      "unchanged",
      "unchanged",
    ]);
    expect(
      await updateNodeFiles(env, { ...options, cniConfFile: "", dockerOptsFile: "", dockerDaemonJson: "" }),
    ).toEqual([]);

    await writeFile(join(dir, "afile"), "");
    const broken = await updateNodeFiles(env, { ...options, cniConfFile: join(dir, "afile", "x.conflist") });
    expect(broken[0]?.error).toMatch(/ENOTDIR|EEXIST/);
    expect(broken.slice(1).map((r) => r.outcome)).toEqual(["unchanged", "unchanged"]);
  });
});

describe("twill netns against fake plugins (real processes, no kernel)", () => {
  let dir: string;
  let bin: string;
  let log: string;
  let netns: string;
  let out: string[];
  let err: string[];
  const io = { out: (t: string) => void out.push(t), err: (t: string) => void err.push(t) };

  // A plugin that records its environment and stdin, then answers like a real one would.
  const plugin = (body: string) => `#!/bin/sh
stdin=$(cat)
printf '%s %s %s %s %s %s\\n' "$CNI_COMMAND" "$(basename "$0")" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" >> "$FAKE_LOG"
printf '%s\\n' "$stdin" >> "$FAKE_LOG.stdin"
${body}
`;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "twill-netns-unit-"));
    bin = join(dir, "bin");
    log = join(dir, "calls.log");
    // A symlink to this process's own namespace: a real nsfs path that the test can make disappear.
    netns = join(dir, "pod-ns");
    await mkdir(bin);
    await symlink("/proc/self/ns/net", netns);
    const result = JSON.stringify(BRIDGE_RESULT);
    await writeFile(join(bin, "bridge"), plugin(`[ "$CNI_COMMAND" = ADD ] && echo '${result}'\nexit 0`));
    // portmap passes prevResult on: the fake prints the bridge result again.
    await writeFile(join(bin, "portmap"), plugin(`[ "$CNI_COMMAND" = ADD ] && echo '${result}'\nexit 0`));
    await writeFile(
      join(bin, "failing"),
      plugin(
        `[ "$CNI_COMMAND" = ADD ] || exit 0\necho '{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"lock busy"}'\nexit 1`,
      ),
    );
    for (const name of ["bridge", "portmap", "failing"]) await chmod(join(bin, name), 0o755);
    await writeFile(join(dir, "twill.conflist"), GOLDEN_NO_MASQ);
    out = [];
    err = [];
    process.env.FAKE_LOG = log;
  });
  afterEach(async () => {
    delete process.env.FAKE_LOG;
    await rm(dir, { recursive: true, force: true });
  });

  const run = (...args: string[]) =>
    netnsCommand(
      [
        ...args,
        `--conf=${join(dir, "twill.conflist")}`,
        `--cni-bin-dir=/nonexistent:${bin}`,
        `--cni-cache-dir=${join(dir, "cache")}`,
      ],
      {},
      io,
    );
  const calls = async () =>
    (await readFile(log, "utf8").catch(() => "")).split("\n").filter((line) => line !== "");

  it("attach, check, detach: order, CNI_* variables, stdin, cache, output", async () => {
    expect(await run("attach", netns, "--port", "8080:80/tcp", "--cni-args", "IP=10.244.5.2")).toBe(0);
    expect(err).toEqual([]);
    expect(out).toEqual([
      `attached ${netns} to network "twill" (container pod-ns, interface eth0)`,
      ...formatCniResult(parseCniResult(BRIDGE_RESULT)),
      "ports:",
      "  8080 -> 80/tcp",
    ]);
    const stdins = (await readFile(`${log}.stdin`, "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as JsonObject);
    expect(stdins[1]?.runtimeConfig).toEqual({
      portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }],
    });
    expect(stdins[1]?.prevResult).toEqual(BRIDGE_RESULT);

    out = [];
    expect(await run("check", netns)).toBe(0);
    expect(out[0]).toBe(`ok: ${netns} passes CHECK on network "twill" (container pod-ns, interface eth0)`);
    expect(out.at(-1)).toBe("  8080 -> 80/tcp");

    out = [];
    expect(await run("detach", netns)).toBe(0);
    expect(out).toEqual([
      `detached ${netns} from network "twill" (container pod-ns, interface eth0)`,
      "released 10.244.5.2/24",
    ]);
    expect(await calls()).toEqual([
      `ADD bridge pod-ns ${netns} eth0 IgnoreUnknown=1;IP=10.244.5.2`,
      `ADD portmap pod-ns ${netns} eth0 IgnoreUnknown=1;IP=10.244.5.2`,
      `CHECK bridge pod-ns ${netns} eth0 IgnoreUnknown=1;IP=10.244.5.2`,
      `CHECK portmap pod-ns ${netns} eth0 IgnoreUnknown=1;IP=10.244.5.2`,
      `DEL portmap pod-ns ${netns} eth0 IgnoreUnknown=1;IP=10.244.5.2`,
      `DEL bridge pod-ns ${netns} eth0 IgnoreUnknown=1;IP=10.244.5.2`,
    ]);
    const stdinLines = (await readFile(`${log}.stdin`, "utf8")).trim().split("\n");
    expect(JSON.parse(stdinLines.at(-2) ?? "{}")).toMatchObject({
      runtimeConfig: { portMappings: [{ hostPort: 8080 }] },
    });
    expect(await readdir(join(dir, "cache"))).toEqual([]);
  });

  it("--json prints the result as JSON; a second attach is refused", async () => {
    expect(await run("attach", netns, "--json", "--container-id", "c1", "--ifname", "net1")).toBe(0);
    expect(JSON.parse(out.join("\n"))).toEqual(BRIDGE_RESULT);
    expect(await run("attach", netns, "--container-id", "c1", "--ifname", "net1")).toBe(1);
    expect(err[0]).toMatch(/is already attached to network "twill" as c1\/net1 .*; detach it first$/);
  });

  it("detach without a namespace (already deleted) still runs DEL, with an empty CNI_NETNS", async () => {
    expect(await run("attach", netns)).toBe(0);
    await rm(netns);
    out = [];
    expect(await run("detach", netns)).toBe(0);
    expect((await calls()).slice(-2)).toEqual(["DEL portmap pod-ns  eth0 ", "DEL bridge pod-ns  eth0 "]);
    expect(out.at(-1)).toMatch(/does not exist; DEL ran without a namespace/);
  });

  it("detach with no cached result runs DEL with the current config and says so", async () => {
    expect(await run("detach", netns)).toBe(0);
    expect(out.some((l) => l.startsWith("note: no cached result"))).toBe(true);
    expect(await calls()).toHaveLength(2);
  });

  it("a failing plugin: its code and message, the plugins before it undone, nothing cached", async () => {
    const conf = JSON.parse(GOLDEN_NO_MASQ) as { plugins: JsonObject[] };
    conf.plugins.push({ type: "failing" });
    await writeFile(join(dir, "twill.conflist"), JSON.stringify(conf));
    expect(await run("attach", netns)).toBe(1);
    expect(err).toEqual([
      `twill: netns attach: plugin failing failed (code 11): try again later (lock busy)`,
    ]);
    expect((await calls()).map((l) => l.split(" ").slice(0, 2).join(" "))).toEqual([
      "ADD bridge",
      "ADD portmap",
      "ADD failing",
      "DEL failing",
      "DEL portmap",
      "DEL bridge",
    ]);
    expect(await readdir(join(dir, "cache")).catch(() => [])).toEqual([]);
  });

  it.each([
    [["attach"], 2, /give the network namespace/],
    [["frob", "x"], 2, /expected attach, detach or check, got "frob"/],
    [["attach", "x", "y"], 2, /unexpected argument "y"/],
    [["attach", "x", "--port", "80"], 2, /--port 80: expected/],
    [["detach", "x", "--port", "8080:80"], 2, /--port is for attach/],
    [["attach", "x", "--ifname", "a/b"], 2, /--ifname "a\/b" is not a valid interface name/],
    [["attach", "x", "--ifname", "sixteen-chars-xx"], 2, /is not a valid interface name/],
    [["attach", "x", "--container-id", "-bad"], 2, /container ID "-bad" is invalid/],
    [["attach", "x", "--cni-args", "novalue"], 2, /"novalue" is not KEY=VALUE/],
    [["attach", "x", "--bogus"], 2, /unknown flag --bogus/],
  ])("usage error %j → exit %i", async (args, code, message) => {
    expect(await run(...args)).toBe(code);
    expect(err.join("\n")).toMatch(message);
    expect(await calls()).toEqual([]);
  });

  it("clear errors for a missing namespace, a missing plugin, a missing config, an unattached check", async () => {
    expect(await run("attach", "tw-no-such-ns-here")).toBe(1);
    expect(err.pop()).toBe(
      'twill: netns attach: network namespace "tw-no-such-ns-here" does not exist (no /var/run/netns/tw-no-such-ns-here; create it with: ip netns add tw-no-such-ns-here)',
    );
    await writeFile(join(dir, "plain-file"), "");
    expect(await run("attach", join(dir, "plain-file"))).toBe(1);
    expect(err.pop()).toBe(
      `twill: netns attach: ${join(dir, "plain-file")} is not a network namespace (not an nsfs mount)`,
    );
    expect(
      await netnsCommand(
        ["attach", netns, `--conf=${join(dir, "twill.conflist")}`, `--cni-bin-dir=${dir}/empty`],
        {},
        io,
      ),
    ).toBe(1);
    expect(err.pop()).toMatch(new RegExp(`^twill: netns attach: plugin "bridge" not found in ${dir}/empty `));
    expect(await netnsCommand(["attach", netns, `--cni-conf-file=${dir}/none.conflist`], {}, io)).toBe(1);
    expect(err.pop()).toMatch(
      /cannot read the CNI config .*none.conflist: no such file \(the agent writes it/,
    );
    expect(await run("check", netns)).toBe(1);
    expect(err.pop()).toMatch(/is not attached to network "twill" as pod-ns\/eth0/);
    expect(await run("attach", netns, "--port", "8080:80")).toBe(0);
    await writeFile(
      join(dir, "twill.conflist"),
      JSON.stringify({ ...JSON.parse(GOLDEN_NO_MASQ), plugins: [{ type: "bridge" }] }),
    );
    expect(await run("attach", `${netns}2`, "--port", "8080:80")).toBe(1);
    expect(err.pop()).toMatch(/--port: no plugin in network "twill" .* handles port mappings/);
    expect(await calls()).toHaveLength(2);
  });

  it("reads flags from TWILL_ variables (the agent's TWILL_CNI_CONF_FILE works here too)", async () => {
    const env = {
      TWILL_CNI_CONF_FILE: join(dir, "twill.conflist"),
      TWILL_CNI_BIN_DIR: bin,
      TWILL_CNI_CACHE_DIR: join(dir, "c"),
    };
    expect(await netnsCommand(["attach", netns], env, io)).toBe(0);
    expect(await readdir(join(dir, "c"))).toEqual(["twill-pod-ns-eth0.json"]);
  });

  it("CNI_ARGS get IgnoreUnknown=1, as kubelet and containerd send them (plugins reject unknown keys otherwise)", () => {
    expect(withIgnoreUnknown("IP=10.244.5.2")).toBe("IgnoreUnknown=1;IP=10.244.5.2");
    expect(withIgnoreUnknown("IgnoreUnknown=0;IP=10.244.5.2")).toBe("IgnoreUnknown=0;IP=10.244.5.2");
    expect(withIgnoreUnknown("")).toBe("");
  });

  it("--help prints the usage", async () => {
    expect(await netnsCommand(["--help"], {}, io)).toBe(0);
    expect(out.join("\n")).toMatch(/twill netns attach <netns>/);
    expect(await netnsCommand([], {}, io)).toBe(2);
  });
});
