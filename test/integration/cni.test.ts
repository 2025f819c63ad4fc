// Pods through the standard CNI plugins (Debian's containernetworking-plugins in /usr/lib/cni), added
// with `twill netns attach` run inside each host namespace of a real twill cluster: addresses, routes,
// MTU and pod-to-pod pings for VXLAN and host-gw; CHECK, DEL and address reuse; a published port
// reached from another host; bad input that must leave nothing behind; and the conflist and Docker
// files the agent itself writes, across a restart and a forced lease change.
import { execa } from "execa";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { conflistFromSubnetEnv, formatConflist } from "../../src/cni/conflist.js";
import type { JsonObject } from "../../src/cni/json.js";
import { parseCniResult, type CniResult } from "../../src/cni/result.js";
import { daemonJsonFragment, formatDockerOpts } from "../../src/node/docker-opts.js";
import { parseSubnetEnv, type SubnetEnv } from "../../src/node/subnet-env.js";
import { runTwill, startAgent } from "../helpers/agent.js";
import { listNamespaces, type Host } from "../helpers/netns.js";
import { waitFor } from "../helpers/processes.js";
import {
  startTwillCluster,
  subnetLine,
  untilNoFailures,
  type TwillCluster,
} from "../helpers/twill-cluster.js";

const PLUGIN_DIR = "/usr/lib/cni";

// Everything made here, for teardown (on failure too) and the final leak check.
const clusters: TwillCluster[] = [];
const tags: string[] = [];
const podNamespaces: string[] = [];
const tempDirs: string[] = [];

async function started(options: Parameters<typeof startTwillCluster>[0]): Promise<TwillCluster> {
  const cluster = await startTwillCluster(options);
  clusters.push(cluster);
  tags.push(cluster.net.tag);
  return cluster;
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "twill-cni-"));
  tempDirs.push(dir);
  return dir;
}

/** Pod namespaces first (their veths go with them), then the clusters, then the files. */
async function teardown(): Promise<void> {
  for (const ns of podNamespaces.splice(0)) {
    await execa("ip", ["netns", "del", ns], { reject: false, stdin: "ignore" });
  }
  await Promise.allSettled(clusters.splice(0).map((c) => c.destroy()));
  await Promise.allSettled(tempDirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
}

afterAll(teardown);

/** A pod namespace as a runtime makes it: empty, no interfaces but lo. Tracked before it exists. */
async function addPodNamespace(name: string): Promise<string> {
  podNamespaces.push(name);
  const result = await execa("ip", ["netns", "add", name], { reject: false, stdin: "ignore" });
  if (result.exitCode !== 0) throw new Error(`ip netns add ${name}: ${result.stderr}`);
  return name;
}

/** One host with its own conflist (made from its subnet.env), host-local store and result cache. */
interface CniNode {
  readonly cluster: TwillCluster;
  readonly host: Host;
  readonly dir: string;
  readonly conf: string;
  readonly ipamDir: string;
  readonly cacheDir: string;
  readonly prefix: string; // "10.244.5."
  readonly subnet: string; // "10.244.5.0/24"
  readonly gateway: string;
  readonly mtu: number;
}

async function cniNode(cluster: TwillCluster, i: number): Promise<CniNode> {
  const node = cluster.nodes[i - 1];
  if (!node) throw new Error(`no node ${i}`);
  const env = node.agent.subnetEnv() ?? "";
  const dir = await tempDir();
  const ipamDir = join(dir, "ipam");
  const conf = join(dir, "10-twill.conflist");
  // The shared filesystem would give every host one host-local store: each gets its own.
  await writeFile(conf, formatConflist(conflistFromSubnetEnv(env, { bridge: "cni0", ipamDataDir: ipamDir })));
  const { network, gateway, prefixLen, mtu } = subnetLine(env);
  await waitFor(
    `cni0 in ${node.host.ns}`,
    async () => (await cluster.net.exec(node.host.ns, ["ip", "link", "show", "cni0"])).exitCode === 0,
  );
  return {
    cluster,
    host: node.host,
    dir,
    conf,
    ipamDir,
    cacheDir: join(dir, "cache"),
    prefix: network.replace(/0$/, ""),
    subnet: `${network}/${prefixLen}`,
    gateway,
    mtu,
  };
}

/** `twill netns <verb> <podNs> …` inside the host's namespace, with this host's files. */
function netns(node: CniNode, verb: string, podNs: string, args: readonly string[] = []) {
  return runTwill(
    [
      "netns",
      verb,
      podNs,
      `--conf=${node.conf}`,
      `--cni-bin-dir=${PLUGIN_DIR}`,
      `--cni-cache-dir=${node.cacheDir}`,
      ...args,
    ],
    { netns: node.host.ns },
  );
}

interface CniPod {
  readonly ns: string;
  readonly node: CniNode;
  readonly result: CniResult;
  /** Without prefix, e.g. "10.244.5.2". */
  readonly address: string;
}

async function attach(node: CniNode, name: string, args: readonly string[] = []): Promise<CniPod> {
  const ns = await addPodNamespace(`${node.host.ns}-${name}`);
  const run = await netns(node, "attach", ns, ["--json", ...args]);
  if (run.code !== 0) throw new Error(`attach ${ns} failed: ${run.stderr}`);
  const result = parseCniResult(JSON.parse(run.stdout));
  const address = result.ips[0]?.address.split("/")[0];
  if (address === undefined) throw new Error(`attach ${ns}: no address in ${run.stdout}`);
  return { ns, node, result, address };
}

/** What a failed attach must not leave on the host: veths on cni0, reservations, cache entries, nat chains. */
async function hostState(node: CniNode) {
  const net = node.cluster.net;
  const veths = (
    JSON.parse(await net.run(node.host.ns, ["ip", "-j", "link", "show", "master", "cni0"])) as {
      ifname: string;
    }[]
  )
    .map((l) => l.ifname)
    .sort();
  const reservations = (await readdir(join(node.ipamDir, "twill")).catch(() => [] as string[]))
    .filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
    .sort();
  const cache = (await readdir(node.cacheDir).catch(() => [] as string[])).sort();
  const natChains = (await net.run(node.host.ns, ["iptables-save", "-t", "nat"]))
    .split("\n")
    .filter((l) => l.startsWith(":CNI-"))
    .map((l) => l.split(" ")[0] ?? "")
    .sort();
  return { veths, reservations, cache, natChains };
}

async function podLinks(node: CniNode, ns: string): Promise<string[]> {
  const links = JSON.parse(await node.cluster.net.run(ns, ["ip", "-j", "link", "show"])) as {
    ifname: string;
  }[];
  return links.map((l) => l.ifname);
}

/** Every pod pings every other; returns the failures. */
async function pingAll(cluster: TwillCluster, pods: readonly CniPod[]): Promise<string[]> {
  const results = await Promise.all(
    pods.flatMap((from) =>
      pods
        .filter((to) => to !== from)
        .map(async (to) => {
          const ping = await cluster.net.ping(from.ns, to.address, { count: 3, waitSeconds: 1 });
          return ping.received > 0 ? undefined : `${from.ns} -> ${to.address}`;
        }),
    ),
  );
  return results.filter((r): r is string => r !== undefined);
}

describe.each([
  // No --ip-masq: the bridge plugin masquerades (ipMasq = !FLANNEL_IPMASQ, as flannel's CNI plugin).
  { backend: "vxlan" as const, agentArgs: [] as string[], mtu: 1450 },
  // --ip-masq: twill masquerades, the bridge plugin must not.
  { backend: "host-gw" as const, agentArgs: ["--ip-masq"], mtu: 1500 },
])("$backend: pods on 3 hosts through the standard CNI plugins", ({ backend, agentArgs, mtu }) => {
  let cluster: TwillCluster;
  let nodes: CniNode[];
  const pods: CniPod[] = [];
  const node = (i: number): CniNode => {
    const n = nodes[i - 1];
    if (!n) throw new Error(`no node ${i}`);
    return n;
  };

  beforeAll(async () => {
    cluster = await started({ backend, hosts: 3, agentArgs });
    nodes = [await cniNode(cluster, 1), await cniNode(cluster, 2), await cniNode(cluster, 3)];
    for (const n of nodes) {
      pods.push(await attach(n, "a"));
      pods.push(await attach(n, "b"));
    }
  }, 120_000);
  afterAll(teardown);

  it("each pod gets an address from its node's subnet, the gateway and routes as configured, MTU = backend MTU", async () => {
    for (const pod of pods) {
      const { node: n, result } = pod;
      expect(n.mtu).toBe(mtu);
      expect(result.ips).toHaveLength(1);
      expect(result.ips[0]?.address).toMatch(new RegExp(`^${n.prefix.replace(/\./g, "\\.")}\\d+/24$`));
      expect(result.ips[0]?.gateway).toBe(n.gateway);
      expect(result.routes).toEqual([
        { dst: "10.244.0.0/16", gw: n.gateway },
        { dst: "0.0.0.0/0", gw: n.gateway },
      ]);
      const inPod = result.interfaces.find((i) => i.sandbox !== undefined);
      expect(inPod?.name).toBe("eth0");
      expect(inPod?.sandbox).toBe(`/var/run/netns/${pod.ns}`);

      const net = cluster.net;
      const [link] = JSON.parse(await net.run(pod.ns, ["ip", "-j", "addr", "show", "eth0"])) as {
        mtu: number;
        addr_info: { family: string; local: string; prefixlen: number }[];
      }[];
      expect(link?.mtu).toBe(mtu);
      expect(
        link?.addr_info.filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`),
      ).toEqual([result.ips[0]?.address]);
      const routes = JSON.parse(await net.run(pod.ns, ["ip", "-j", "route", "show"])) as {
        dst: string;
        gateway?: string;
      }[];
      expect(routes.filter((r) => r.gateway !== undefined).map((r) => [r.dst, r.gateway])).toEqual([
        ["default", n.gateway],
        ["10.244.0.0/16", n.gateway],
      ]);
      const hostVeth = result.interfaces.find((i) => i.sandbox === undefined && i.name !== "cni0");
      const [peer] = JSON.parse(
        await net.run(n.host.ns, ["ip", "-j", "link", "show", hostVeth?.name ?? "?"]),
      ) as {
        mtu: number;
        master: string;
      }[];
      expect(peer).toMatchObject({ mtu, master: "cni0" });
    }
  });

  it("the bridge plugin masquerades exactly when twill does not", async () => {
    const chains = (await hostState(node(1))).natChains;
    // The bridge plugin's per-pod chain (CNI-<hash>) exists only with ipMasq: true.
    const perPod = chains.filter((c) => /^:CNI-[0-9a-f]{24}$/.test(c));
    expect(perPod).toHaveLength(agentArgs.includes("--ip-masq") ? 0 : 2);
  });

  it("every pod pings every other pod", async () => {
    // Every node must have its routes to all peers first, not only the one that answered soonest.
    await cluster.waitForMesh();
    expect(await untilNoFailures(() => pingAll(cluster, pods))).toEqual([]);
  });

  it("the bridge keeps one MAC while pods come and go, so every pod's ARP entry for its gateway stays right", async () => {
    for (const n of nodes) {
      const [bridge] = JSON.parse(await cluster.net.run(n.host.ns, ["ip", "-j", "link", "show", "cni0"])) as {
        address: string;
      }[];
      for (const pod of pods.filter((p) => p.node === n)) {
        // What ADD reported (CHECK compares it) is still the bridge's MAC, after every later pod.
        expect(pod.result.interfaces.find((i) => i.name === "cni0")?.mac).toBe(bridge?.address);
        const neighbours = JSON.parse(
          await cluster.net.run(pod.ns, ["ip", "-j", "neigh", "show", n.gateway, "dev", "eth0"]),
        ) as { lladdr?: string }[];
        expect(neighbours[0]?.lladdr).toBe(bridge?.address);
      }
    }
  });

  it("CHECK passes on a healthy pod and fails with the plugin's own error on a broken one", async () => {
    const healthy = pods[0];
    if (!healthy) throw new Error("no pod");
    const ok = await netns(healthy.node, "check", healthy.ns);
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);
    expect(ok.stdout.split("\n")[0]).toBe(
      `ok: ${healthy.ns} passes CHECK on network "twill" (container ${healthy.ns}, interface eth0)`,
    );
    expect(ok.stdout).toContain(
      `addresses:\n  ${healthy.address}/24  gateway ${healthy.node.gateway}  on eth0`,
    );

    const n2 = node(2);
    const broken = await attach(n2, "x");
    expect((await netns(n2, "check", broken.ns)).code).toBe(0);

    await cluster.net.run(broken.ns, ["ip", "route", "del", "default"]);
    const noRoute = await netns(n2, "check", broken.ns);
    expect(noRoute.code).toBe(1);
    expect(noRoute.stderr).toMatch(
      /^twill: netns check: plugin bridge failed \(code \d+\): Expected Route .* not found/,
    );

    // Repaired by hand: CHECK says so.
    await cluster.net.run(broken.ns, ["ip", "route", "add", "default", "via", n2.gateway]);
    expect((await netns(n2, "check", broken.ns)).code).toBe(0);

    await cluster.net.run(broken.ns, ["ip", "addr", "del", `${broken.address}/24`, "dev", "eth0"]);
    const noAddress = await netns(n2, "check", broken.ns);
    expect(noAddress.code).toBe(1);
    expect(noAddress.stderr).toMatch(
      new RegExp(
        `^twill: netns check: plugin bridge failed \\(code \\d+\\): Failed to match addr ${broken.address}/24`,
      ),
    );

    // A broken pod still detaches cleanly.
    const before = await hostState(n2);
    const detached = await netns(n2, "detach", broken.ns);
    expect(detached.code).toBe(0);
    const after = await hostState(n2);
    expect(after.veths).toHaveLength(before.veths.length - 1);
    expect(after.reservations).not.toContain(broken.address);
  });

  it("DEL releases the address: a new pod can have it at once", async () => {
    const n3 = node(3);
    const y = await attach(n3, "y");
    const taken = await hostState(n3);
    expect(taken.reservations).toContain(y.address);

    // While y holds it, asking for the same address fails in host-local and leaves nothing behind.
    const z = await addPodNamespace(`${n3.host.ns}-z`);
    const refused = await netns(n3, "attach", z, [`--cni-args=IP=${y.address}`]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      new RegExp(
        `^twill: netns attach: plugin bridge failed \\(code \\d+\\): .*requested IP address ${y.address.replace(/\./g, "\\.")} is not available`,
      ),
    );
    expect(refused.stderr).not.toMatch(/undoing/); // the rollback itself succeeded
    expect(await hostState(n3)).toEqual(taken);
    expect(await podLinks(n3, z)).toEqual(["lo"]);

    const detached = await netns(n3, "detach", y.ns);
    expect(detached.code).toBe(0);
    expect(detached.stdout).toBe(
      `detached ${y.ns} from network "twill" (container ${y.ns}, interface eth0)\nreleased ${y.address}/24\n`,
    );
    const released = await hostState(n3);
    expect(released.reservations).not.toContain(y.address);
    expect(released.veths).toHaveLength(taken.veths.length - 1);
    expect(released.cache).not.toContain(`twill-${y.ns}-eth0.json`);
    expect(await podLinks(n3, y.ns)).toEqual(["lo"]);

    const reused = await netns(n3, "attach", z, ["--json", `--cni-args=IP=${y.address}`]);
    expect(reused.stderr).toBe("");
    expect(parseCniResult(JSON.parse(reused.stdout)).ips[0]?.address).toBe(`${y.address}/24`);
    const from = pods[0];
    if (!from) throw new Error("no pod");
    expect((await cluster.net.ping(from.ns, y.address, { count: 3 })).received).toBeGreaterThan(0);
    expect((await netns(n3, "detach", z)).code).toBe(0);
  });

  it("publishes a pod's port on its host: a client on another host reaches it through the host address", async () => {
    const n1 = node(1);
    const web = await attach(n1, "web", ["--port=8080:80/tcp"]);
    const server = cluster.net.spawn(web.ns, process.execPath, [
      "-e",
      `require("node:net").createServer((s) => { console.log("connection from " + s.remoteAddress); s.end("hello from the pod\\n"); })
        .listen(80, "0.0.0.0", () => console.log("listening"));`,
    ]);
    try {
      await waitFor("the pod's server", () => server.output().includes("listening"));
      expect((await hostState(n1)).natChains.some((c) => c.startsWith(":CNI-DN-"))).toBe(true);
      const client = `const s = require("node:net").connect(8080, "${n1.host.address}");
        let data = ""; s.on("data", (c) => (data += c)); s.on("end", () => process.stdout.write(data));
        s.on("error", (e) => { console.error(e.code); process.exit(1); });
        s.setTimeout(5000, () => { console.error("timeout"); process.exit(1); });`;
      const reply = await cluster.net.exec(node(2).host.ns, [process.execPath, "-e", client]);
      expect(reply.stderr).toBe("");
      expect(reply.stdout).toBe("hello from the pod");
      // DNAT only: the pod sees the client's own address.
      await waitFor("the connection logged", () =>
        server.output().includes(`connection from ${node(2).host.address}`),
      );

      // CHECK covers the port mapping too (portmap < 1.2.0 warns about its IPv6 bug, plugins#819).
      const check = await netns(n1, "check", web.ns);
      expect(check.code).toBe(0);
      expect(check.stdout).toContain("ports:\n  8080 -> 80/tcp");
      expect(check.stderr).toMatch(/^(|twill: warning: portmap's IPv6 check failed .*\n)$/);

      expect((await netns(n1, "detach", web.ns)).code).toBe(0);
      expect((await hostState(n1)).natChains.some((c) => c.startsWith(":CNI-DN-"))).toBe(false);
      const refused = await cluster.net.exec(node(2).host.ns, [process.execPath, "-e", client]);
      expect(refused.exitCode).toBe(1);
      expect(refused.stderr.trim()).toBe("ECONNREFUSED");
    } finally {
      await server.stop();
    }
  });

  it("bad input: a clear error and nothing left behind (no veth, no address, no cache entry, no rules)", async () => {
    const n = node(1);
    const before = await hostState(n);
    const pod = await addPodNamespace(`${n.host.ns}-bad`);
    const base = JSON.parse(await readFile(n.conf, "utf8")) as { plugins: JsonObject[] };
    const withPlugin = async (name: string, plugin: JsonObject): Promise<string> => {
      const path = join(n.dir, name);
      await writeFile(path, JSON.stringify({ ...base, plugins: [...base.plugins, plugin] }));
      return path;
    };
    const emptyBin = join(n.dir, "empty-bin");
    await mkdir(emptyBin, { recursive: true });
    await writeFile(join(n.dir, "not-a-netns"), "");

    const cases: { target: string; conf?: string; binDir?: string; error: RegExp }[] = [
      {
        target: pod,
        conf: await withPlugin("unknown.conflist", { type: "nosuchplugin" }),
        error: /^twill: netns attach: plugin "nosuchplugin" not found in \/usr\/lib\/cni /,
      },
      {
        target: pod,
        binDir: emptyBin,
        error: new RegExp(`^twill: netns attach: plugin "bridge" not found in ${emptyBin} `),
      },
      {
        target: `${n.host.ns}-nope`,
        error:
          /^twill: netns attach: network namespace "tw-\w+-h1-nope" does not exist \(no \/var\/run\/netns\//,
      },
      {
        target: join(n.dir, "not-a-netns"),
        error: /^twill: netns attach: \S+\/not-a-netns is not a network namespace/,
      },
      {
        // Fails after bridge and portmap have run: they are undone.
        target: pod,
        conf: await withPlugin("tuning.conflist", {
          type: "tuning",
          sysctl: { "net.ipv4.conf.eth0.no_such_knob": "1" },
        }),
        error: /^twill: netns attach: plugin tuning failed \(code \d+\): .*no_such_knob/,
      },
    ];
    for (const { target, conf, binDir, error } of cases) {
      const run = await runTwill(
        [
          "netns",
          "attach",
          target,
          `--conf=${conf ?? n.conf}`,
          `--cni-bin-dir=${binDir ?? PLUGIN_DIR}`,
          `--cni-cache-dir=${n.cacheDir}`,
        ],
        { netns: n.host.ns },
      );
      expect(run.code, run.stderr).toBe(1);
      expect(run.stderr).toMatch(error);
      expect(run.stderr.trim().split("\n")).toHaveLength(1);
      expect(await hostState(n)).toEqual(before);
      expect(await podLinks(n, pod)).toEqual(["lo"]);
    }
  });
});

/** The subnet.env as a typed value (the agent writes all four variables). */
function envOf(text: string | undefined): SubnetEnv {
  const env = parseSubnetEnv(text ?? "");
  if (!env.network || !env.subnet || env.mtu === undefined || env.ipMasq === undefined) {
    throw new Error(`incomplete subnet.env: ${text ?? "(missing)"}`);
  }
  return { network: env.network, subnet: env.subnet, mtu: env.mtu, ipMasq: env.ipMasq };
}

describe("the agent's own CNI config and Docker files", () => {
  let cluster: TwillCluster;
  let dir: string;
  const dockerOpts = () => join(dir, "docker_opts.env");
  const daemonJson = () => join(dir, "daemon.json");

  beforeAll(async () => {
    dir = await tempDir();
    await writeFile(daemonJson(), '{\n  "log-driver": "journald"\n}\n');
    cluster = await started({
      backend: "vxlan",
      hosts: 1,
      agentArgs: [
        `--docker-opts-file=${dockerOpts()}`,
        `--docker-daemon-json=${daemonJson()}`,
        `--cni-bin-dir=${PLUGIN_DIR}`,
      ],
    });
  }, 120_000);
  afterAll(teardown);

  const agent = () => {
    const node = cluster.nodes[0];
    if (!node) throw new Error("no node");
    return node.agent;
  };
  // Where the patched test helper (test/helpers/agent.ts) points --cni-conf-file.
  const conflist = () => join(agent().dir, "10-twill.conflist");
  const files = () => [conflist(), dockerOpts(), daemonJson()];
  const expectFilesFor = async (subnetEnv: string | undefined) => {
    const env = envOf(subnetEnv);
    expect(await readFile(conflist(), "utf8")).toBe(
      formatConflist(conflistFromSubnetEnv(subnetEnv ?? "", { bridge: "cni0" })),
    );
    expect(await readFile(dockerOpts(), "utf8")).toBe(formatDockerOpts(env));
    expect(JSON.parse(await readFile(daemonJson(), "utf8"))).toEqual({
      "log-driver": "journald",
      ...daemonJsonFragment(env),
    });
  };

  it("writes the conflist for its lease (as flannel's CNI plugin would build it from subnet.env), the docker options and daemon.json", async () => {
    const env = await waitFor("subnet.env", () => agent().subnetEnv());
    // The agent writes the three files one after another: wait for all of them, not just the first.
    await waitFor("the conflist, docker options and daemon.json for the lease", async () => {
      await expectFilesFor(env);
      return true;
    });
    expect(await readFile(dockerOpts(), "utf8")).toContain(
      `DOCKER_OPT_BIP="--bip=${/FLANNEL_SUBNET=(.*)/.exec(env)?.[1] ?? "?"}"`,
    );
    expect(await readFile(dockerOpts(), "utf8")).toContain('DOCKER_OPT_IPMASQ="--ip-masq=true"');
  });

  it("declares the cniVersion that the installed plugins all speak, as they answer VERSION themselves", async () => {
    // What an operator would check: ask each plugin, then read the conflist.
    const plugins = ["bridge", "host-local", "portmap"];
    const supported = await Promise.all(
      plugins.map(async (plugin) => {
        const answer = await execa(join(PLUGIN_DIR, plugin), [], {
          env: { CNI_COMMAND: "VERSION" },
          input: "",
        });
        return (JSON.parse(answer.stdout) as { supportedVersions: string[] }).supportedVersions;
      }),
    );
    const newest = ["1.0.0", "0.4.0", "0.3.1"].find((v) => supported.every((list) => list.includes(v)));
    expect(newest, `the plugins in ${PLUGIN_DIR} share a version twill can declare`).toBeDefined();
    const conf = await waitFor("the conflist", async () => readFile(conflist(), "utf8"));
    expect((JSON.parse(conf) as { cniVersion: string }).cniVersion).toBe(newest);
    // Chosen from their answers, not the default kept for want of one.
    const chosen = agent()
      .logs()
      .filter((l) => l.msg === "CNI version chosen from the plugins");
    expect(chosen).toEqual([
      expect.objectContaining({
        cniVersion: newest,
        plugins: Object.fromEntries(plugins.map((p) => [p, join(PLUGIN_DIR, p)])),
        supported: Object.fromEntries(plugins.map((p, i) => [p, supported[i]])),
      }),
    ]);
    expect(
      agent()
        .logs()
        .filter((l) => String(l.msg).startsWith("CNI plugin ")),
    ).toEqual([]);
  });

  it("without the plugins in --cni-bin-dir: cniVersion 1.0.0, and a warning per plugin naming the dir searched", async () => {
    const empty = await tempDir();
    const host = await cluster.net.addHost(2);
    const other = startAgent({
      netns: host.ns,
      etcdEndpoint: cluster.etcd.endpoint,
      args: ["--iface=eth0", `--cni-bin-dir=${empty}`],
    });
    try {
      const conf = await waitFor("the second node's conflist", async () =>
        readFile(other.cniConfFile, "utf8"),
      );
      expect((JSON.parse(conf) as { cniVersion: string }).cniVersion).toBe("1.0.0");
      const warnings = other.logs().filter((l) => String(l.msg).startsWith("CNI plugin "));
      // A warning: pino's number (40) or its name, whichever the log format writes.
      expect(warnings.map((w) => [w.level === 40 || w.level === "warn", w.msg, w.dirs])).toEqual(
        ["bridge", "host-local", "portmap"].map((plugin) => [
          true,
          `CNI plugin ${plugin}: not found in ${empty}; the conflist declares cniVersion 1.0.0`,
          [empty],
        ]),
      );
    } finally {
      await other.destroy();
    }
  });

  it("a restart with the same lease touches none of them", async () => {
    const before = await Promise.all(files().map((f) => stat(f)));
    await agent().restart();
    await waitFor(
      "the agent to compare its node files",
      () =>
        agent()
          .logs()
          .filter((l) => l.msg === "node file unchanged")
          .map((l) => l.file)
          .sort()
          .join() === "cni-conflist,docker-daemon-json,docker-opts",
    );
    const after = await Promise.all(files().map((f) => stat(f)));
    expect(after.map((s) => [s.ino, s.mtimeMs])).toEqual(before.map((s) => [s.ino, s.mtimeMs]));
  });

  it("a lease change rewrites them atomically: readers never see a partial file", async () => {
    const oldEnv = agent().subnetEnv();
    const { network, prefixLen } = subnetLine(oldEnv);
    const before = await stat(conflist());

    // A reader polling the conflist during the change: every read must be one whole JSON document.
    let reads = 0;
    const torn: string[] = [];
    let polling = true;
    const reader = (async () => {
      while (polling) {
        try {
          JSON.parse(await readFile(conflist(), "utf8"));
        } catch (error) {
          torn.push(String(error));
        }
        reads++;
        // A short pause per read: frequent enough to catch a torn file, without spinning a core.
        await new Promise((r) => setTimeout(r, 5));
      }
    })();

    // The pool moves past this node's subnet: the agent must move to a new one. (A key overwritten by
    // another writer no longer moves a node: that would strand its pods.)
    expect(prefixLen).toBe(24);
    cluster.etcd.ctl([
      "put",
      `${cluster.prefix}/config`,
      '{"Network":"10.244.0.0/16","SubnetMin":"10.244.200.0","Backend":{"Type":"vxlan"}}',
    ]);
    try {
      await waitFor("a new lease", () => subnetLine(agent().subnetEnv()).network !== network, 30_000);
      const newEnv = agent().subnetEnv();
      await waitFor("the conflist for the new lease", async () =>
        (await readFile(conflist(), "utf8")).includes(`"subnet": "${subnetLine(newEnv).network}/`),
      );
      await waitFor("all three files rewritten", () =>
        ["cni-conflist", "docker-opts", "docker-daemon-json"].every((kind) =>
          agent()
            .logs()
            .some((l) => l.msg === "node file updated" && l.file === kind),
        ),
      );
      await expectFilesFor(newEnv);
    } finally {
      polling = false;
      await reader;
    }
    expect(torn).toEqual([]);
    expect(reads).toBeGreaterThan(0);
    expect((await stat(conflist())).ino).not.toBe(before.ino); // replaced by rename, not rewritten in place
    expect((await readdir(agent().dir)).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    expect((await readdir(dir)).sort()).toEqual(["daemon.json", "docker_opts.env"]);
  });
});

describe("teardown", () => {
  it("leaves none of this file's namespaces behind", async () => {
    await teardown();
    expect(tags.length).toBeGreaterThan(0);
    const ours = (await listNamespaces()).filter((ns) => tags.some((tag) => ns.startsWith(`tw-${tag}-`)));
    expect(ours).toEqual([]);
  });
});
