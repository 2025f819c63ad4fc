// Two nodes, or a node and a bad lease, claiming one identity, with real agents in namespaces: cloned
// VTEP MACs, bad leases carrying a node's MAC, two agents with one public IP, an overwritten own key, a
// foreign lease with the node's IP at restart; and what an agent must not leave behind: a lease
// published without the privileges to serve it, a child process after a SIGKILL.
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TWILL_ROUTE_PROTOCOL } from "../../src/dataplane/objects.js";
import {
  LAUNCHER_FLAGS,
  cliPath,
  parseLogLines,
  runTwill,
  startAgent,
  type AgentProcess,
} from "../helpers/agent.js";
import { readRoutes } from "../helpers/ip-read.js";
import { isAlive, startProcess, waitFor, type Started } from "../helpers/processes.js";
import {
  startTwillCluster,
  subnetLine,
  type NodeUnderTest,
  type TwillCluster,
} from "../helpers/twill-cluster.js";

const clusters: TwillCluster[] = [];
const tempDirs: string[] = [];
/** Agents and processes started by a test itself: stopped at teardown too (a timed-out test never
 *  reaches its own finally). */
const ownAgents: AgentProcess[] = [];
const ownProcesses: Started[] = [];

function tracked(agent: AgentProcess): AgentProcess {
  ownAgents.push(agent);
  return agent;
}

async function started(options: Parameters<typeof startTwillCluster>[0]): Promise<TwillCluster> {
  const cluster = await startTwillCluster(options);
  clusters.push(cluster);
  return cluster;
}

afterAll(async () => {
  await Promise.allSettled(ownAgents.splice(0).map((a) => a.destroy()));
  await Promise.allSettled(ownProcesses.splice(0).map((p) => p.stop()));
  await Promise.allSettled(clusters.splice(0).map((c) => c.destroy()));
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `twill-${name}-`));
  tempDirs.push(dir);
  return dir;
}

function node(cluster: TwillCluster, i: number): NodeUnderTest {
  const n = cluster.nodes[i - 1];
  if (!n) throw new Error(`no node ${i}`);
  return n;
}

/** Node i's subnet in network form, 10.244.5.0/24, from its subnet file. */
function subnetOf(cluster: TwillCluster, i: number): string {
  const { network, prefixLen } = subnetLine(node(cluster, i).agent.subnetEnv());
  return `${network}/${prefixLen}`;
}

function keyOf(cluster: TwillCluster, subnet: string): string {
  return `${cluster.prefix}/subnets/${subnet.replace("/", "-")}`;
}

/** A key as etcd holds it: its value and create revision; undefined when absent. */
function etcdEntry(
  cluster: TwillCluster,
  key: string,
): { value: string; createRevision: number } | undefined {
  const out = JSON.parse(cluster.etcd.ctl(["get", key, "-w", "json"])) as {
    kvs?: { value: string; create_revision: number }[];
  };
  const kv = out.kvs?.[0];
  return (
    kv && { value: Buffer.from(kv.value, "base64").toString("utf8"), createRevision: kv.create_revision }
  );
}

/** The VTEP MAC node i publishes in etcd. */
function publishedMac(cluster: TwillCluster, i: number): string {
  const value = etcdEntry(cluster, keyOf(cluster, subnetOf(cluster, i)))?.value ?? "{}";
  const parsed = JSON.parse(value) as { BackendData?: { VtepMAC?: string } };
  return parsed.BackendData?.VtepMAC ?? "";
}

function vxlanLease(publicIP: string, mac: string): string {
  return JSON.stringify({
    PublicIP: publicIP,
    PublicIPv6: null,
    BackendType: "vxlan",
    BackendData: { VNI: 1, VtepMAC: mac },
  });
}

interface StatusJson {
  ready: boolean;
  notReady: string[];
  lease: { subnet: string; conflict: { kind: string; message: string } | null } | null;
}

async function statusOf(ns: string): Promise<StatusJson> {
  const result = await runTwill(["status", "--json"], { netns: ns });
  return JSON.parse(result.stdout) as StatusJson;
}

/** One sample of a metric the agent in `ns` exports, by its labels as written ({kind="x"}); NaN if absent. */
async function metric(cluster: TwillCluster, ns: string, series: string): Promise<number> {
  const script =
    "fetch('http://127.0.0.1:9102/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))";
  const text = await cluster.net.run(ns, [process.execPath, "-e", script]);
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? Number.NaN : Number(line.split(" ")[1]);
}

/** A continuous ping from `fromNs`; resolves to what was sent and received. */
async function pingRun(
  cluster: TwillCluster,
  fromNs: string,
  to: string,
  count: number,
): Promise<{ sent: number; received: number }> {
  const result = await cluster.net.exec(fromNs, [
    "ping",
    "-q",
    "-c",
    String(count),
    "-i",
    "0.05",
    "-W",
    "5",
    to,
  ]);
  const summary = /(\d+) packets transmitted, (\d+) received/.exec(result.stdout);
  return { sent: Number(summary?.[1] ?? 0), received: Number(summary?.[2] ?? 0) };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The third octet of 10.244.N.0/24. */
const third = (subnet: string): number => Number(subnet.split(".")[2]);

/** The lowest /24 of 10.244.0.0/16 that none of `taken` is. */
function freeSubnet(taken: readonly string[]): string {
  for (let n = 1; n <= 255; n++) {
    const subnet = `10.244.${n}.0/24`;
    if (!taken.includes(subnet)) return subnet;
  }
  throw new Error(`no free subnet besides ${taken.join(", ")}`);
}

describe("vxlan: one VTEP MAC on two nodes", () => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend: "vxlan", hosts: 3 });
    for (let i = 1; i <= 3; i++) await cluster.addPod(i, "a", 2);
    await cluster.waitForMesh();
  }, 120_000);

  it("a state dir copied from another node (a cloned image) is detected at start: a new MAC, every pod pings", async () => {
    const original = publishedMac(cluster, 1);
    const clone = node(cluster, 3).agent;
    await clone.process.stop();
    copyFileSync(
      join(node(cluster, 1).agent.stateDir, "vtep-mac.flannel.1"),
      join(clone.stateDir, "vtep-mac.flannel.1"),
    );
    await clone.restart();
    await waitFor("the clone's new MAC in etcd", () => {
      const mac = publishedMac(cluster, 3);
      return mac !== "" && mac !== original && clone.logs().some((l) => l.origin === "state-copied");
    });
    expect(publishedMac(cluster, 1)).toBe(original);
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("one MAC persisted on two nodes without a binding (an older twill): the newer lease takes a new MAC", async () => {
    const original = publishedMac(cluster, 1);
    const clone = node(cluster, 3).agent;
    await clone.process.stop();
    // As an older twill wrote it: the MAC alone, so nothing at start tells the clone apart.
    writeFileSync(join(clone.stateDir, "vtep-mac.flannel.1"), `${original}\n`);
    await clone.restart();
    const first = etcdEntry(cluster, keyOf(cluster, subnetOf(cluster, 1)))?.createRevision ?? 0;
    const third = etcdEntry(cluster, keyOf(cluster, subnetOf(cluster, 3)))?.createRevision ?? 0;
    const [older, newer] = first < third ? [1, 3] : [3, 1];
    await waitFor(
      "two distinct MACs, the newer lease's made anew",
      () =>
        publishedMac(cluster, 1) !== publishedMac(cluster, 3) &&
        node(cluster, newer)
          .agent.logs()
          .some((l) => l.origin === "renewed"),
      30_000,
    );
    expect(publishedMac(cluster, older)).toBe(original);
    expect(
      node(cluster, older)
        .agent.logs()
        .some((l) => l.origin === "renewed"),
    ).toBe(false);
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    expect(
      await metric(cluster, node(cluster, newer).host.ns, 'twill_identity_renewals_total{reason="conflict"}'),
    ).toBe(1);
  });

  it("bad leases with this node's MAC and with a peer's MAC: real peers keep pinging with 0 loss, warned and counted", async () => {
    const subnets = [1, 2, 3].map((i) => subnetOf(cluster, i));
    // The peer with the higher subnet: a bad lease with a lower subnet would win the planner's old rule.
    // (The nodes picked at random among the first 100 free subnets; the lowest free one is below.)
    const target = third(subnetOf(cluster, 2)) > third(subnetOf(cluster, 3)) ? 2 : 3;
    const badPeer = freeSubnet(subnets);
    const badOwn = freeSubnet([...subnets, badPeer]);
    const from = node(cluster, 1).pods[0];
    const to = node(cluster, target).pods[0];
    if (!from || !to) throw new Error("no pods");
    // Node 1's lease is older than the bad one claiming its MAC: it keeps the MAC.
    const ownMac = publishedMac(cluster, 1);
    const renewals = () =>
      node(cluster, 1)
        .agent.logs()
        .filter((l) => l.origin === "renewed").length;
    const renewalsBefore = renewals();
    const pinging = pingRun(cluster, from.ns, to.address, 200);
    await sleep(1000);
    cluster.etcd.ctl([
      "put",
      keyOf(cluster, badPeer),
      vxlanLease("198.18.0.99", publishedMac(cluster, target)),
    ]);
    cluster.etcd.ctl(["put", keyOf(cluster, badOwn), vxlanLease("198.18.0.98", publishedMac(cluster, 1))]);
    expect(await pinging).toEqual({ sent: 200, received: 200 });

    const agent = node(cluster, 1).agent;
    const skipped = (key: string) =>
      agent.logs().find((l) => l.msg === "skipping invalid subnet entry in etcd" && l.key === key);
    await waitFor(
      "both bad leases warned about",
      () => skipped(keyOf(cluster, badOwn)) && skipped(keyOf(cluster, badPeer)),
    );
    expect(String(skipped(keyOf(cluster, badPeer))?.reason)).toContain(
      `which older key ${keyOf(cluster, subnetOf(cluster, target))} holds`,
    );
    expect(String(skipped(keyOf(cluster, badOwn))?.reason)).toMatch(
      /claims this node's own VTEP MAC .* its writer must take a new one/,
    );
    const ns = node(cluster, 1).host.ns;
    expect(await metric(cluster, ns, 'twill_identity_conflicts{kind="duplicate_identity"}')).toBe(2);
    // The older side keeps its MAC; no route to either bad subnet.
    const routes = await readRoutes(node(cluster, 1).host.runner, {
      table: 254,
      family: 4,
      protocol: TWILL_ROUTE_PROTOCOL,
    });
    expect(routes.map((r) => r.dst)).not.toContain(badPeer);
    expect(routes.map((r) => r.dst)).not.toContain(badOwn);
    expect(publishedMac(cluster, 1)).toBe(ownMac);
    expect(renewals()).toBe(renewalsBefore);

    cluster.etcd.ctl(["del", keyOf(cluster, badPeer)]);
    cluster.etcd.ctl(["del", keyOf(cluster, badOwn)]);
    await waitFor(
      "the conflict gauge back to 0",
      async () => (await metric(cluster, ns, 'twill_identity_conflicts{kind="duplicate_identity"}')) === 0,
    );
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });
});

describe("vxlan: the own key written by someone else", () => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend: "vxlan", hosts: 2 });
    await cluster.addPod(1, "a", 2);
    await cluster.addPod(1, "b", 3);
    await cluster.waitForMesh();
  }, 120_000);

  it("overwritten with another PublicIP: the node keeps its subnet, its pods lose nothing, the conflict is reported", async () => {
    const own = subnetOf(cluster, 1);
    const key = keyOf(cluster, own);
    const host = node(cluster, 1).host;
    const [a, b] = node(cluster, 1).pods;
    if (!a || !b) throw new Error("no pods");
    const gateway = subnetLine(node(cluster, 1).agent.subnetEnv()).gateway;
    const podToPod = pingRun(cluster, a.ns, b.address, 100);
    const podToGateway = pingRun(cluster, a.ns, gateway, 100);
    await sleep(1000);
    cluster.etcd.ctl(["put", key, vxlanLease("198.18.0.99", "0a:00:00:00:00:99")]);
    expect(await podToPod).toEqual({ sent: 100, received: 100 });
    expect(await podToGateway).toEqual({ sent: 100, received: 100 });

    const status = await statusOf(host.ns);
    expect(status.ready).toBe(false);
    expect(status.lease?.subnet).toBe(own);
    expect(status.lease?.conflict?.kind).toBe("own-key-overwritten");
    expect(status.notReady.join("\n")).toMatch(
      new RegExp(`${key} was overwritten by another writer with PublicIP 198\\.18\\.0\\.99`),
    );
    expect(subnetOf(cluster, 1)).toBe(own);
    expect(await cluster.net.run(host.ns, ["ip", "-4", "-o", "addr", "show", "dev", "cni0"])).toContain(
      `${gateway}/24`,
    );
    const routes = await readRoutes(host.runner, { table: 254, family: 4, protocol: TWILL_ROUTE_PROTOCOL });
    expect(routes.map((r) => r.dst)).not.toContain(own);
    expect(await metric(cluster, host.ns, 'twill_identity_conflicts{kind="own_key_overwritten"}')).toBe(1);
    expect(
      node(cluster, 1)
        .agent.logs()
        .filter((l) => l.kind === "own-key-overwritten" && l.level === "error"),
    ).toHaveLength(1);

    // The operator removes the bad write: the node takes its subnet back and is ready again.
    cluster.etcd.ctl(["del", key]);
    await waitFor("ready again on the same subnet", async () => {
      const now = await statusOf(host.ns);
      return now.ready && now.lease?.subnet === own && now.lease.conflict === null;
    });
    expect(JSON.parse(etcdEntry(cluster, key)?.value ?? "{}")).toMatchObject({ PublicIP: "198.18.0.1" });
  });

  it("two agents with one public IP: the first reports the second writer and is not ready; never both ready on one subnet", async () => {
    const first = node(cluster, 1);
    const own = subnetOf(cluster, 1);
    const host3 = await cluster.net.addHost(3);
    const second = tracked(
      startAgent({
        netns: host3.ns,
        etcdEndpoint: cluster.etcd.endpoint,
        args: ["--iface=eth0", "--public-ip=198.18.0.1", "--resync-interval=5s"],
      }),
    );
    try {
      await second.waitForSubnetEnv();
      await waitFor("the first agent reports the duplicate public IP", async () => {
        const status = await statusOf(first.host.ns);
        return status.lease?.conflict?.kind === "duplicate-public-ip";
      });
      const status = await statusOf(first.host.ns);
      expect(status.ready).toBe(false);
      expect(status.lease?.subnet).toBe(own);
      expect(status.lease?.conflict?.message).toMatch(/public IP 198\.18\.0\.1 .*--public-ip or --iface/);
      expect(
        second
          .logs()
          .some((l) => /taking over a live lease that carries this node's public IP/.test(String(l.msg))),
      ).toBe(true);
      const other = await statusOf(host3.ns);
      expect(status.ready && other.ready && status.lease?.subnet === other.lease?.subnet).toBe(false);
      expect(
        await metric(cluster, first.host.ns, 'twill_identity_conflicts{kind="duplicate_public_ip"}'),
      ).toBe(1);
      // No fight: the first agent never wrote the key back.
      await sleep(2000);
      expect(etcdEntry(cluster, keyOf(cluster, own))?.value).toContain(publishedMacOf(second.stateDir));
    } finally {
      await second.destroy();
    }
  });
});

/** The MAC an agent persisted in its state dir. */
function publishedMacOf(stateDir: string): string {
  return readFileSync(join(stateDir, "vtep-mac.flannel.1"), "utf8").split("\n")[0] ?? "";
}

describe("an agent on its own", () => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend: "vxlan", hosts: 1 });
  }, 120_000);

  it("restarted with a hand-written lease carrying its public IP on another subnet: keeps its subnet", async () => {
    const dir = tempDir("restart");
    const subnetFile = join(dir, "subnet.env");
    writeFileSync(
      subnetFile,
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.177.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    );
    const host = await cluster.net.addHost(2);
    const agent = tracked(
      startAgent({
        netns: host.ns,
        etcdEndpoint: cluster.etcd.endpoint,
        args: ["--iface=eth0", `--subnet-file=${subnetFile}`],
      }),
    );
    try {
      await waitFor("the subnet file's subnet", () =>
        agent.logs().some((l) => l.msg === "subnet lease acquired" && l.subnet === "10.244.177.0/24"),
      );
      await agent.process.stop();
      // Sorts before 10.244.177.0-24 in key order: flannel (and twill before) took this one.
      const lease = /lease (\w+) granted/.exec(cluster.etcd.ctl(["lease", "grant", "600"]))?.[1] ?? "";
      cluster.etcd.ctl([
        "put",
        `--lease=${lease}`,
        `${cluster.prefix}/subnets/${subnetOf(cluster, 1) === "10.244.1.0/24" ? "10.244.10.0-24" : "10.244.1.0-24"}`,
        vxlanLease("198.18.0.2", "0a:00:00:00:00:42"),
      ]);
      await agent.restart();
      await waitFor("the lease acquired after the restart", () =>
        agent.logs().some((l) => l.msg === "subnet lease acquired"),
      );
      const acquired = agent.logs().find((l) => l.msg === "subnet lease acquired");
      expect(acquired).toMatchObject({ subnet: "10.244.177.0/24", how: "reused" });
      expect(readFileSync(subnetFile, "utf8")).toContain("FLANNEL_SUBNET=10.244.177.1/24");
    } finally {
      await agent.destroy();
    }
  });

  it("without CAP_NET_ADMIN: exits 1 naming what is missing, with nothing in etcd or on disk", async () => {
    const dir = tempDir("unprivileged");
    const prefix = `/unprivileged-${process.pid}/network`;
    cluster.etcd.ctl(["put", `${prefix}/config`, '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}']);
    const host = node(cluster, 1).host;
    const files = {
      subnet: join(dir, "subnet.env"),
      state: join(dir, "state"),
      cni: join(dir, "10-twill.conflist"),
    };
    const agent = startProcess("ip", [
      "netns",
      "exec",
      host.ns,
      "setpriv",
      "--bounding-set=-net_admin,-net_raw",
      "--",
      process.execPath,
      ...LAUNCHER_FLAGS,
      cliPath,
      "agent",
      `--etcd-endpoints=${cluster.etcd.endpoint}`,
      `--etcd-prefix=${prefix}`,
      "--iface=eth0",
      `--subnet-file=${files.subnet}`,
      `--state-dir=${files.state}`,
      `--cni-conf-file=${files.cni}`,
    ]);
    ownProcesses.push(agent);
    try {
      expect(await agent.exited()).toBe(1);
      const fatal = parseLogLines(agent.stdout()).filter((l) => l.level === "fatal");
      expect(fatal).toHaveLength(1);
      expect(String(fatal[0]?.msg)).toMatch(
        /^missing CAP_NET_ADMIN and CAP_NET_RAW: .*Nothing was published or written/,
      );
      expect(cluster.etcd.ctl(["get", `${prefix}/subnets/`, "--prefix", "--keys-only"]).trim()).toBe("");
      expect([files.subnet, files.state, files.cni].filter((f) => existsSync(f))).toEqual([]);
    } finally {
      await agent.stop();
    }
  });

  it("leaves no child process behind when SIGKILLed, even one still running", async () => {
    const dir = tempDir("orphans");
    const pidFile = join(dir, "child.pid");
    // An ethtool that records its PID and hangs: a child running at the moment of the kill.
    const shim = join(dir, "ethtool");
    writeFileSync(shim, `#!/bin/sh\necho $$ > "${pidFile}"\nexec sleep 300\n`);
    chmodSync(shim, 0o755);
    const host = await cluster.net.addHost(4);
    const agent = tracked(
      startAgent({
        netns: host.ns,
        etcdEndpoint: cluster.etcd.endpoint,
        args: ["--iface=eth0", "--vxlan-tx-checksum-offload=false"],
        env: { PATH: `${dir}:${process.env.PATH ?? ""}` },
      }),
    );
    let child = 0;
    try {
      await waitFor(
        "the hanging child",
        () => existsSync(pidFile) && readFileSync(pidFile, "utf8").trim() !== "",
      );
      child = Number(readFileSync(pidFile, "utf8").trim());
      expect(isAlive(child)).toBe(true);
      agent.process.kill("SIGKILL");
      await agent.process.exited();
      await waitFor("the child gone with the agent", () => !isAlive(child), 3000).catch(() => undefined);
      expect(isAlive(child)).toBe(false);
    } finally {
      if (child > 0 && isAlive(child)) process.kill(child, "SIGKILL");
      await agent.destroy();
    }
  });
});
