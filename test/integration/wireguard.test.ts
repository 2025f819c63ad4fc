// The wireguard backend with real agents in network namespaces, on wireguard-go (these machines have
// no WireGuard kernel module): encrypted pod traffic (checked on the underlay), flannel's lease format,
// a node set up by hand as flanneld's WireGuard backend sets one up, restarts without loss, drift,
// key rotation, a pre-shared key and a bad key file; and with IPv6, dual-stack and IPv6-only clusters
// in Mode separate (flannel-wg-v6 over the IPv6 underlay).
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StatusJson, WireGuardJson } from "../../src/metrics/status.js";
import { TWILL_ROUTE_PROTOCOL } from "../../src/dataplane/objects.js";
import { readAddresses, readLink, readRoutes } from "../helpers/ip-read.js";
import { hostAddress6 } from "../helpers/netns.js";
import { recordedWireGuardGoPid } from "../../src/backends/wireguard/wireguard-go.js";
import { runTwill, startAgent } from "../helpers/agent.js";
import { captureUnderlay, ipv4Packets } from "../helpers/pcap.js";
import { waitFor } from "../helpers/processes.js";
import { startMountNamespace, WIREGUARD_DEVICE } from "../helpers/wireguard.js";
import {
  continuousPing,
  IPV6_POD_NETWORK,
  nodeOf as node,
  podOf as pod,
  startTwillCluster,
  subnet6OfNode,
  subnetOfNode as subnetOf,
  type TwillCluster,
} from "../helpers/twill-cluster.js";

const clusters: TwillCluster[] = [];

async function started(options: Parameters<typeof startTwillCluster>[0]): Promise<TwillCluster> {
  const cluster = await startTwillCluster(options);
  clusters.push(cluster);
  return cluster;
}

const tempDirs: string[] = [];
const cleanups: (() => Promise<void>)[] = [];

afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
  await Promise.allSettled(clusters.splice(0).map((c) => c.destroy()));
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "twill-wg-test-"));
  tempDirs.push(dir);
  return dir;
}

/** The device's peers as `wg show DEV dump` lists them: public key → [psk, endpoint, allowed IPs, …]. */
async function devicePeers(cluster: TwillCluster, i: number): Promise<Map<string, string[]>> {
  const lines = (await wg(cluster, i, ["show", WIREGUARD_DEVICE, "dump"])).trim().split("\n").slice(1);
  return new Map(
    lines.filter(Boolean).map((line) => {
      const [key = "", ...rest] = line.split("\t");
      return [key, rest];
    }),
  );
}

async function wireguardStatus(cluster: TwillCluster, i: number): Promise<WireGuardJson> {
  // A few tries: on a loaded machine the agent may answer late, and the command then prints nothing.
  let result = await runTwill(["status", "--json"], { netns: node(cluster, i).host.ns });
  for (let tries = 1; tries < 5 && (result.code !== 0 || result.stdout === ""); tries++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    result = await runTwill(["status", "--json"], { netns: node(cluster, i).host.ns });
  }
  if (result.code !== 0) throw new Error(`twill status --json on node ${i}: ${result.stderr}`);
  const status = JSON.parse(result.stdout) as StatusJson;
  if (status.userspace?.kind !== "wireguard") throw new Error(`no wireguard in status: ${result.stdout}`);
  return status.userspace;
}

/** `wg` inside host i's own network and mount namespaces. */
async function wg(cluster: TwillCluster, i: number, args: readonly string[]): Promise<string> {
  const n = node(cluster, i);
  if (n.mountNs === undefined) throw new Error("not a wireguard cluster");
  const result = await n.mountNs.exec(n.host.ns, ["wg", ...args]);
  if (result.exitCode !== 0) throw new Error(`wg ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

describe("wireguard: 3 hosts x 2 pods", () => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend: "wireguard", hosts: 3, agentArgs: ["--ip-masq"] });
    for (let i = 1; i <= 3; i++) {
      await cluster.addPod(i, "a", 2);
      await cluster.addPod(i, "b", 3);
    }
    await cluster.waitForMesh();
  }, 120_000);

  it("every pod pings every other pod", async () => {
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("publishes flannel's wireguard lease bytes", async () => {
    for (let i = 1; i <= 3; i++) {
      const { network, prefixLen } = subnetOf(cluster, i);
      const value = cluster.etcd.ctl([
        "get",
        `${cluster.prefix}/subnets/${network}-${prefixLen}`,
        "--print-value-only",
      ]);
      const key = (await wg(cluster, i, ["show", "flannel-wg", "public-key"])).trim();
      expect(value.trim()).toBe(
        `{"PublicIP":"198.18.0.${i}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"${key}","Port":51820}}`,
      );
    }
  });

  it("makes flannel-wg as flannel does, with one peer per other node", async () => {
    const { host } = node(cluster, 1);
    const link = await readLink(host.runner, "flannel-wg");
    expect(link?.mtu).toBe(1420);
    const routes = await readRoutes(host.runner, { table: 254, family: 4, protocol: TWILL_ROUTE_PROTOCOL });
    expect(routes.map((r) => `${r.dst} ${r.dev ?? ""}`)).toEqual(["10.244.0.0/16 flannel-wg"]);
    const dump = (await wg(cluster, 1, ["show", "flannel-wg", "dump"])).trim().split("\n");
    expect(dump[0]?.split("\t")[2]).toBe("51820");
    const peers = dump.slice(1).map((line) => line.split("\t"));
    expect(peers.map((p) => `${p[2]} ${p[3]}`).sort()).toEqual(
      [2, 3].map((i) => `198.18.0.${i}:51820 ${subnetOf(cluster, i).network}/24`).sort(),
    );
    const s = await wireguardStatus(cluster, 1);
    expect(s).toMatchObject({ implementation: "userspace", running: true, peers: 2, listenPort: 51820 });
    const text = await runTwill(["status"], { netns: host.ns });
    expect(text.stdout).toMatch(
      /wireguard: +wireguard-go on flannel-wg, port 51820, public key \S+: running \(pid \d+\), 2 peers/,
    );
  });

  it("sends pod traffic across the underlay only as WireGuard: UDP to 51820, no plaintext pod packet", async () => {
    const file = join(tempDir(), "underlay.pcap");
    // etcd's TCP is left out of the capture.
    const capture = await captureUnderlay(cluster.net, file, "not tcp port 2379");
    const from = pod(cluster, 1, "a");
    const to = pod(cluster, 3, "b");
    const ping = await cluster.net.ping(from.ns, to.address, { count: 5 });
    expect(ping.received).toBe(5);
    await waitFor("tcpdump has written the WireGuard datagrams", () => {
      return ipv4Packets(readFileSync(file)).filter((p) => p.dstPort === 51820).length >= 10;
    });
    await capture.stop();
    const packets = ipv4Packets(readFileSync(file));
    const between = packets.filter((p) => p.src.startsWith("198.18.0.") && p.dst.startsWith("198.18.0."));
    expect(between.length).toBeGreaterThanOrEqual(10);
    // Between hosts: only WireGuard's datagrams.
    expect(between.filter((p) => p.protocol !== 17 || (p.dstPort !== 51820 && p.srcPort !== 51820))).toEqual(
      [],
    );
    // No pod address in any header on the wire: the ICMP travels inside the encryption.
    expect(packets.filter((p) => p.src.startsWith("10.244.") || p.dst.startsWith("10.244."))).toEqual([]);
    expect(
      packets.filter(
        (p) => p.protocol === 1 && p.src.startsWith("198.18.0.") && p.dst.startsWith("198.18.0."),
      ),
    ).toEqual([]);
  });

  it("restores a peer removed by hand and one changed by hand", async () => {
    const key2 = (await wireguardStatus(cluster, 2)).publicKey;
    const before = (await wireguardStatus(cluster, 1)).repairs;
    await wg(cluster, 1, ["set", WIREGUARD_DEVICE, "peer", key2, "remove"]);
    await waitFor("the removed peer back", async () => (await devicePeers(cluster, 1)).has(key2), 15_000, 20);
    await wg(cluster, 1, ["set", WIREGUARD_DEVICE, "peer", key2, "allowed-ips", "10.244.250.0/24"]);
    await waitFor(
      "the peer's allowed IPs restored",
      async () => {
        const peer = (await devicePeers(cluster, 1)).get(key2);
        return peer?.[2] === `${subnetOf(cluster, 2).network}/24`;
      },
      15_000,
      20,
    );
    expect((await wireguardStatus(cluster, 1)).repairs).toBeGreaterThanOrEqual(before + 2);
    expect(
      (await cluster.net.ping(pod(cluster, 1, "a").ns, pod(cluster, 2, "a").address, { count: 3 })).received,
    ).toBe(3);
  });

  it("adds peers for nodes that join (two behind one NAT: one public IP) and removes them when their leases go", async () => {
    const keys = [
      "lB1jZN1hJ1u7sHUdxVQGZq4bBH1l1Da7kIJvQU6n0nE=",
      "8Ec5vhn7v5Ez4q7mL1P6I0n0H0yH6v5GXhH0cQm7u2E=",
    ];
    const leases = [201, 202].map((third) => `${cluster.prefix}/subnets/10.244.${third}.0-24`);
    keys.forEach((key, i) =>
      cluster.etcd.ctl([
        "put",
        leases[i] ?? "",
        `{"PublicIP":"198.18.0.77","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"${key}","Port":${51998 + i}}}`,
      ]),
    );
    await waitFor("both new peers on every node", async () => {
      for (let i = 1; i <= 3; i++) {
        const peers = await devicePeers(cluster, i);
        for (const [j, key] of keys.entries()) {
          const peer = peers.get(key);
          if (peer?.[1] !== `198.18.0.77:${51998 + j}` || peer[2] !== `10.244.${201 + j}.0/24`) return false;
        }
      }
      return true;
    });
    const listed = await runTwill(["leases", `--etcd-endpoints=${cluster.etcd.endpoint}`], {
      netns: node(cluster, 1).host.ns,
    });
    expect(listed.stdout).toContain(`key ${keys[0] ?? ""}`);
    for (const lease of leases) cluster.etcd.ctl(["del", lease]);
    await waitFor("the peers gone from every node", async () => {
      for (let i = 1; i <= 3; i++) {
        const peers = await devicePeers(cluster, i);
        if (keys.some((key) => peers.has(key))) return false;
      }
      return true;
    });
  });

  it("keeps flannel-wg, wireguard-go and every peer through an agent restart: no ping lost", async () => {
    const { host, agent } = node(cluster, 2);
    const link = await readLink(host.runner, WIREGUARD_DEVICE);
    const pidBefore = (await wireguardStatus(cluster, 2)).pid;
    const from = pod(cluster, 1, "a");
    const to = pod(cluster, 2, "b");
    const ping = continuousPing(cluster, from.ns, to.address, 300, "0.01");
    await new Promise((resolve) => setTimeout(resolve, 300));
    await agent.restart();
    const result = await ping;
    expect(result).toEqual({ transmitted: 300, received: 300 });
    expect((await readLink(host.runner, WIREGUARD_DEVICE))?.index).toBe(link?.index);
    await waitFor(
      "the restarted agent running its data path",
      async () => (await wireguardStatus(cluster, 2)).running,
    );
    // The same wireguard-go, adopted from the state dir.
    expect((await wireguardStatus(cluster, 2)).pid).toBe(pidBefore);
    expect(agent.logs().some((l) => l.msg === "adopted the running wireguard-go")).toBe(true);
  });

  it("starts wireguard-go again when it dies, and traffic flows again", async () => {
    const before = await wireguardStatus(cluster, 3);
    if (before.pid === null) throw new Error("no wireguard-go pid in status");
    process.kill(before.pid, "SIGKILL");
    await waitFor(
      "a new wireguard-go with every peer",
      async () => {
        const s = await wireguardStatus(cluster, 3);
        return s.running && s.pid !== before.pid && s.peers === 2;
      },
      15_000,
    );
    expect((await wireguardStatus(cluster, 3)).restarts).toBe(before.restarts + 1);
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("makes a deleted flannel-wg anew, with its route and wireguard-go, and traffic flows again", async () => {
    const { host } = node(cluster, 3);
    const old = await readLink(host.runner, WIREGUARD_DEVICE);
    await cluster.net.run(host.ns, ["ip", "link", "del", WIREGUARD_DEVICE]);
    await waitFor(
      "a new flannel-wg with its route and both peers",
      async () => {
        const link = await readLink(host.runner, WIREGUARD_DEVICE).catch(() => undefined);
        const routes = await readRoutes(host.runner, {
          table: 254,
          family: 4,
          protocol: TWILL_ROUTE_PROTOCOL,
        });
        const s = await wireguardStatus(cluster, 3);
        return (
          link !== undefined &&
          link.index !== old?.index &&
          routes.some((r) => r.dst === "10.244.0.0/16" && r.dev === WIREGUARD_DEVICE) &&
          s.running &&
          s.peers === 2
        );
      },
      20_000,
    );
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });

  it("rotates a node's key: the lease and every peer follow, and pods reach each other again", async () => {
    const { host, agent } = node(cluster, 1);
    const old = (await wireguardStatus(cluster, 1)).publicKey;
    const from = pod(cluster, 2, "a");
    const to = pod(cluster, 1, "a");
    const ping = continuousPing(cluster, from.ns, to.address, 200, "0.01");
    await new Promise((resolve) => setTimeout(resolve, 300));
    const rotated = await runTwill(["wireguard", "rotate-key", `--state-dir=${agent.stateDir}`], {
      netns: host.ns,
    });
    expect(rotated.code, rotated.stderr).toBe(0);
    const result = await ping;
    const now = (await wireguardStatus(cluster, 1)).publicKey;
    expect(now).not.toBe(old);
    expect(rotated.stdout).toContain(`public key ${old} -> ${now}`);
    const { network, prefixLen } = subnetOf(cluster, 1);
    const value = cluster.etcd.ctl([
      "get",
      `${cluster.prefix}/subnets/${network}-${prefixLen}`,
      "--print-value-only",
    ]);
    expect(value).toContain(`"PublicKey":"${now}"`);
    for (const i of [2, 3]) {
      await waitFor(`node ${i} has the new key`, async () => {
        const peers = await devicePeers(cluster, i);
        return peers.has(now) && !peers.has(old);
      });
    }
    // The interruption is measured and reported with the issue; here, the path must come back.
    expect(result.received).toBeGreaterThan(0);
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    expect(readFileSync(join(agent.stateDir, "wireguard.key"), "utf8").trim()).toHaveLength(44);
  });
});

describe("wireguard: a pre-shared key", () => {
  it("puts the PSK on every peer, follows a PSK change, and pods reach each other", async () => {
    const psk = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";
    const cluster = await started({
      backend: "wireguard",
      hosts: 2,
      backendOptions: { PSK: psk, PersistentKeepaliveInterval: 25 },
    });
    await cluster.addPod(1, "a", 2);
    await cluster.addPod(2, "a", 2);
    await cluster.waitForMesh();
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    for (const i of [1, 2]) {
      const peers = [...(await devicePeers(cluster, i)).values()];
      expect(peers).toHaveLength(1);
      expect(peers[0]?.[0]).toBe(psk);
      expect(peers[0]?.[6]).toBe("25");
    }
    // Another PSK in the config: the running agents apply it (flanneld needs a restart).
    const next = "q0gVXg8fHn6JsmQ1ZpZxdOuQ3mUc9mJ3S7KQHkW0Xx0=";
    const set = await runTwill(["config", "set", "-", `--etcd-endpoints=${cluster.etcd.endpoint}`], {
      netns: node(cluster, 1).host.ns,
      input: JSON.stringify({ Network: "10.244.0.0/16", Backend: { Type: "wireguard", PSK: next } }),
    });
    expect(set.code, set.stderr).toBe(0);
    for (const i of [1, 2]) {
      await waitFor(`node ${i}: the new PSK, keepalive off`, async () => {
        const peer = [...(await devicePeers(cluster, i)).values()][0];
        return peer?.[0] === next && peer[6] === "off";
      });
    }
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  }, 120_000);
});

describe("wireguard: a twill node and a node set up by hand as flanneld's WireGuard backend does", () => {
  it("exchange pod traffic both ways", async () => {
    const cluster = await started({ backend: "wireguard", hosts: 1 });
    const twillPod = await cluster.addPod(1, "a", 2);
    await cluster.waitForMesh();
    const { net } = cluster;
    const manual = await net.addHost(2);
    const mountNs = await startMountNamespace();
    cleanups.push(() => mountNs.stop());
    const dir = tempDir();
    const inManual = async (argv: readonly string[], input?: string): Promise<string> => {
      const result = await mountNs.exec(manual.ns, argv, input);
      if (result.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${result.stderr}`);
      return result.stdout;
    };
    // flanneld's key: `wg genkey` in its key file; the device, its address, MTU, the network's route.
    const privateKey = (await inManual(["wg", "genkey"])).trim();
    writeFileSync(join(dir, "wgkey"), privateKey, { mode: 0o400 });
    const publicKey = (await inManual(["wg", "pubkey"], `${privateKey}\n`)).trim();
    // wireguard-go stands in for the kernel module flanneld would use; it daemonizes, so its PID
    // comes from the socket's owner… simpler: run it in the foreground under our own handle.
    const wgGo = net.spawn(manual.ns, "nsenter", [
      `--mount=/proc/${mountNs.pid}/ns/mnt`,
      "--",
      "wireguard-go",
      "-f",
      "flannel-wg",
    ]);
    cleanups.push(() => wgGo.stop());
    await waitFor(
      "the hand-made wireguard-go",
      async () => (await mountNs.exec(manual.ns, ["wg", "show", "flannel-wg"])).exitCode === 0,
    );
    for (const argv of [
      ["wg", "set", "flannel-wg", "private-key", join(dir, "wgkey"), "listen-port", "51820"],
      ["ip", "addr", "add", "10.244.200.0/32", "dev", "flannel-wg"],
      ["ip", "link", "set", "flannel-wg", "mtu", "1420", "up"],
      ["ip", "route", "replace", "10.244.0.0/16", "dev", "flannel-wg", "scope", "link"],
      ["ip", "link", "add", "cni0", "type", "bridge"],
      ["ip", "addr", "add", "10.244.200.1/24", "dev", "cni0"],
      ["ip", "link", "set", "cni0", "up"],
    ]) {
      await inManual(argv);
    }
    const manualPod = await net.addPod(manual, "m", {
      bridge: "cni0",
      address: "10.244.200.2/24",
      gateway: "10.244.200.1",
    });
    // Its lease, as flanneld writes it.
    cluster.etcd.ctl([
      "put",
      `${cluster.prefix}/subnets/10.244.200.0-24`,
      `{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"${publicKey}","Port":51820}}`,
    ]);
    // flanneld's peer for the twill node, from the twill node's lease.
    const { network, prefixLen } = subnetOf(cluster, 1);
    const twillLease = JSON.parse(
      cluster.etcd.ctl(["get", `${cluster.prefix}/subnets/${network}-${prefixLen}`, "--print-value-only"]),
    ) as { BackendData: { PublicKey: string; Port: number } };
    await inManual([
      "wg",
      "set",
      "flannel-wg",
      "peer",
      twillLease.BackendData.PublicKey,
      "endpoint",
      `198.18.0.1:${twillLease.BackendData.Port}`,
      "allowed-ips",
      `${network}/${prefixLen}`,
    ]);
    await waitFor("the hand-made node as a peer of the twill node", async () =>
      (await devicePeers(cluster, 1)).has(publicKey),
    );
    expect((await net.ping(twillPod.ns, manualPod.address, { count: 5 })).received).toBe(5);
    expect((await net.ping(manualPod.ns, twillPod.address, { count: 5 })).received).toBe(5);
  }, 120_000);
});

describe("wireguard: a bad key file", () => {
  it("stops the agent with an error naming the file and the fix", async () => {
    const cluster = await started({ backend: "wireguard", hosts: 1 });
    const host = await cluster.net.addHost(2);
    const mountNs = await startMountNamespace();
    cleanups.push(() => mountNs.stop());
    const keyFile = join(tempDir(), "bad.key");
    writeFileSync(keyFile, "not-a-key\n", { mode: 0o400 });
    const agent = startAgent({
      netns: host.ns,
      etcdEndpoint: cluster.etcd.endpoint,
      args: ["--iface=eth0", `--wireguard-key-file=${keyFile}`],
      mountNamespaceOf: mountNs.pid,
    });
    cleanups.push(() => agent.destroy());
    const code = await Promise.race([
      agent.process.exited(),
      new Promise<string>((resolve) => setTimeout(() => resolve("still running after 20 s"), 20_000)),
    ]);
    expect(code).toBe(1);
    const fatal = agent.logs().find((l) => l.level === "fatal");
    const message = (fatal?.err as { message?: string } | undefined)?.message ?? "";
    expect(message).toContain(
      `WireGuard private key file ${keyFile}: its 9 characters are not a WireGuard key`,
    );
    // The file's text is never echoed: it could be a private key only slightly off.
    expect(JSON.stringify(agent.logs())).not.toContain("not-a-key");
    expect(message).toContain(`wg genkey > ${keyFile}`);
    // Nothing was published for it.
    expect(
      cluster.etcd
        .ctl(["get", `${cluster.prefix}/subnets/`, "--prefix", "--keys-only"])
        .trim()
        .split("\n")
        .filter(Boolean),
    ).toHaveLength(1);
  }, 60_000);
});

describe("wireguard: a node that moves to another backend", () => {
  it("ends its wireguard-go and drops the network's route into flannel-wg; pods reach each other over vxlan", async () => {
    const cluster = await started({ backend: "wireguard", hosts: 2 });
    await cluster.addPod(1, "a", 2);
    await cluster.addPod(2, "a", 2);
    await cluster.waitForMesh();
    const pids = await Promise.all([1, 2].map(async (i) => (await wireguardStatus(cluster, i)).pid));
    const set = await runTwill(["config", "set", "-", `--etcd-endpoints=${cluster.etcd.endpoint}`], {
      netns: node(cluster, 1).host.ns,
      input: JSON.stringify({ Network: "10.244.0.0/16", Backend: { Type: "vxlan" } }),
    });
    expect(set.code, set.stderr).toBe(0);
    await waitFor("wireguard-go gone on both nodes", () =>
      pids.every((pid) => pid !== null && !existsSync(`/proc/${pid}`)),
    );
    for (let i = 1; i <= 2; i++) {
      await waitFor(`node ${i}: no route into flannel-wg`, async () => {
        const routes = await readRoutes(node(cluster, i).host.runner, {
          table: 254,
          family: 4,
          protocol: TWILL_ROUTE_PROTOCOL,
        });
        return !routes.some((r) => r.dev === WIREGUARD_DEVICE) && routes.some((r) => r.dev === "flannel.1");
      });
    }
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  }, 120_000);
});

// --- IPv6 ---

/** Why the IPv6 WireGuard tests cannot run here, or undefined: they need wireguard-go or the module, and wg. */
function wireGuardMissing(): string | undefined {
  const inPath = (name: string): boolean =>
    (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin")
      .split(":")
      .some((dir) => dir !== "" && existsSync(join(dir, name)));
  if (!inPath("wg")) return "no wg (wireguard-tools) in PATH";
  if (!inPath("wireguard-go") && !existsSync("/sys/module/wireguard"))
    return "neither wireguard-go in PATH nor the wireguard kernel module";
  return undefined;
}
const missing = wireGuardMissing();
const ifWireGuard = (name: string): string =>
  missing === undefined ? name : `${name} (skipped: ${missing})`;

/** A device's peers from `wg show DEV dump`: public key → { endpoint, allowed IPs }. */
async function peersOn(
  cluster: TwillCluster,
  i: number,
  device: string,
): Promise<Map<string, { endpoint: string; allowedIps: string }>> {
  const lines = (await wg(cluster, i, ["show", device, "dump"])).trim().split("\n").slice(1);
  return new Map(
    lines.filter(Boolean).map((line) => {
      const [key = "", , endpoint = "", allowedIps = ""] = line.split("\t");
      return [key, { endpoint, allowedIps }];
    }),
  );
}

/** Node i's lease value in etcd, found by its PublicIPv6. */
function leaseOf(cluster: TwillCluster, i: number): string {
  const lines = cluster.etcd
    .ctl(["get", `${cluster.prefix}/subnets/`, "--prefix"])
    .trim()
    .split("\n")
    .filter(Boolean);
  const values = lines.filter((_, at) => at % 2 === 1);
  const value = values.find((v) => v.includes(`"PublicIPv6":"${hostAddress6(i)}"`));
  if (value === undefined) throw new Error(`no lease of node ${i} among ${values.join(" | ")}`);
  return value;
}

/**
 * Every node has the IPv6 network's route into flannel-wg-v6 (and, dual-stack, the IPv4 one into
 * flannel-wg) and every other node as a peer on each of its devices.
 */
async function waitForWireGuardMesh(cluster: TwillCluster, devices: readonly string[]): Promise<void> {
  const n = cluster.nodes.length;
  await waitFor(
    "every node's WireGuard routes and peers",
    async () => {
      for (let i = 1; i <= n; i++) {
        const { host } = node(cluster, i);
        const routes = [
          ...(await readRoutes(host.runner, { table: 254, family: 4, protocol: TWILL_ROUTE_PROTOCOL })),
          ...(await readRoutes(host.runner, { table: 254, family: 6, protocol: TWILL_ROUTE_PROTOCOL })),
        ];
        for (const device of devices) {
          const network = device === "flannel-wg-v6" ? IPV6_POD_NETWORK : "10.244.0.0/16";
          if (!routes.some((r) => r.dst === network && r.dev === device)) return false;
          const peers = await peersOn(cluster, i, device).catch(() => new Map());
          if (peers.size !== n - 1) return false;
        }
      }
      return true;
    },
    60_000,
    200,
  );
}

interface Packet6 {
  readonly nextHeader: number;
  readonly src: string;
  readonly dst: string;
  readonly srcPort: number | undefined;
  readonly dstPort: number | undefined;
}

/** The IPv6 packets of a pcap file written by captureUnderlay (`-i any`: Linux cooked v2, or v1). */
function ipv6Packets(pcap: Buffer): Packet6[] {
  const linkType = pcap.readUInt32LE(20);
  const layout =
    linkType === 276 ? { at: 0, header: 20 } : linkType === 113 ? { at: 14, header: 16 } : undefined;
  if (layout === undefined) throw new Error(`pcap link type ${linkType} not handled`);
  const text = (frame: Buffer, from: number): string => {
    const groups: string[] = [];
    for (let g = 0; g < 8; g++) groups.push(frame.readUInt16BE(from + 2 * g).toString(16));
    return groups.join(":");
  };
  const packets: Packet6[] = [];
  let at = 24;
  while (at + 16 <= pcap.length) {
    const captured = pcap.readUInt32LE(at + 8);
    const frame = pcap.subarray(at + 16, at + 16 + captured);
    at += 16 + captured;
    if (frame.length < layout.header + 40 || frame.readUInt16BE(layout.at) !== 0x86dd) continue;
    const outer = layout.header;
    const nextHeader = frame[outer + 6] ?? 0;
    const udp = nextHeader === 17 && frame.length >= outer + 44;
    packets.push({
      nextHeader,
      src: text(frame, outer + 8),
      dst: text(frame, outer + 24),
      srcPort: udp ? frame.readUInt16BE(outer + 40) : undefined,
      dstPort: udp ? frame.readUInt16BE(outer + 42) : undefined,
    });
  }
  return packets;
}

describe.skipIf(missing !== undefined)(
  ifWireGuard("wireguard, dual-stack, Mode separate: 3 hosts x 2 pods"),
  () => {
    let cluster: TwillCluster;

    beforeAll(async () => {
      cluster = await started({ backend: "wireguard", hosts: 3, ipv6: "dual-stack" });
      for (let i = 1; i <= 3; i++) {
        await cluster.addPod(i, "a", 2);
        await cluster.addPod(i, "b", 3);
      }
      await waitForWireGuardMesh(cluster, [WIREGUARD_DEVICE, "flannel-wg-v6"]);
    }, 180_000);

    it("every pod pings every other pod over IPv4 and IPv6", async () => {
      const pods = cluster.nodes.flatMap((n) => n.pods);
      expect(pods.every((p) => p.address6 !== undefined)).toBe(true);
      expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    });

    it("publishes flannel's lease bytes: BackendData with ListenPort, BackendV6Data with ListenPortV6, one key", async () => {
      for (let i = 1; i <= 3; i++) {
        const key = (await wg(cluster, i, ["show", "flannel-wg", "public-key"])).trim();
        expect((await wg(cluster, i, ["show", "flannel-wg-v6", "public-key"])).trim()).toBe(key);
        expect(leaseOf(cluster, i)).toBe(
          `{"PublicIP":"198.18.0.${i}","PublicIPv6":"${hostAddress6(i)}","BackendType":"wireguard",` +
            `"BackendData":{"PublicKey":"${key}","Port":51820},"BackendV6Data":{"PublicKey":"${key}","Port":51821}}`,
        );
      }
    });

    it("makes flannel-wg-v6 as flannel does: <IPv6 subnet>/128, MTU 1420, the IPv6 network routed into it", async () => {
      const { host } = node(cluster, 1);
      const { network } = subnet6OfNode(cluster, 1);
      expect((await readLink(host.runner, "flannel-wg-v6"))?.mtu).toBe(1420);
      const global = async (device: string): Promise<string[]> =>
        (await readAddresses(host.runner, device, 6)).filter((a) => a.scope !== "link").map((a) => a.cidr);
      expect(await global("flannel-wg-v6")).toEqual([`${network}/128`]);
      expect(await global(WIREGUARD_DEVICE)).toEqual([]);
      const routes = await readRoutes(host.runner, { table: 254, family: 6, protocol: TWILL_ROUTE_PROTOCOL });
      expect(routes.map((r) => `${r.dst} ${r.dev ?? ""}`)).toEqual([`${IPV6_POD_NETWORK} flannel-wg-v6`]);
    });

    it("wg show flannel-wg-v6 lists every other node at its IPv6 endpoint, flannel-wg at its IPv4 one", async () => {
      for (let i = 1; i <= 3; i++) {
        const dump = (await wg(cluster, i, ["show", "flannel-wg-v6", "dump"])).trim().split("\n");
        expect(dump[0]?.split("\t")[2]).toBe("51821");
        const others = [1, 2, 3].filter((j) => j !== i);
        const v6 = [...(await peersOn(cluster, i, "flannel-wg-v6")).values()];
        expect(v6.map((p) => `${p.endpoint} ${p.allowedIps}`).sort()).toEqual(
          others.map((j) => `[${hostAddress6(j)}]:51821 ${subnet6OfNode(cluster, j).subnet}`).sort(),
        );
        const v4 = [...(await peersOn(cluster, i, WIREGUARD_DEVICE)).values()];
        expect(v4.map((p) => `${p.endpoint} ${p.allowedIps}`).sort()).toEqual(
          others.map((j) => `198.18.0.${j}:51820 ${subnetOf(cluster, j).network}/24`).sort(),
        );
      }
      const text = await runTwill(["status"], { netns: node(cluster, 1).host.ns });
      expect(text.stdout).toMatch(
        /wireguard-go on flannel-wg, port 51820.*wireguard-go on flannel-wg-v6, port 51821/,
      );
    });

    it("carries IPv6 pod traffic across the underlay only as WireGuard over IPv6 to 51821", async () => {
      const file = join(tempDir(), "underlay6.pcap");
      const capture = await captureUnderlay(cluster.net, file, "ip6 and not tcp port 2379");
      const from = pod(cluster, 1, "a");
      const to = pod(cluster, 3, "b");
      const ping = await cluster.net.ping(from.ns, to.address6 ?? "", { count: 5 });
      expect(ping.received).toBe(5);
      await waitFor("tcpdump has written the WireGuard datagrams", () => {
        return ipv6Packets(readFileSync(file)).filter((p) => p.dstPort === 51821).length >= 10;
      });
      await capture.stop();
      const packets = ipv6Packets(readFileSync(file));
      const between = packets.filter(
        (p) => p.src.startsWith("2001:db8:18:") && p.dst.startsWith("2001:db8:18:"),
      );
      // Between hosts: WireGuard's datagrams, and neighbour discovery (ICMPv6 135/136), nothing else.
      expect(
        between.filter((p) => p.nextHeader === 17 && p.dstPort !== 51821 && p.srcPort !== 51821),
      ).toEqual([]);
      expect(between.filter((p) => p.nextHeader !== 17 && p.nextHeader !== 58)).toEqual([]);
      // No pod address in any header on the wire: the ICMPv6 echo travels inside the encryption.
      expect(packets.filter((p) => p.src.startsWith("fd00:") || p.dst.startsWith("fd00:"))).toEqual([]);
    });

    it("restores a peer removed by hand from flannel-wg-v6", async () => {
      const key2 = (await wg(cluster, 2, ["show", "flannel-wg-v6", "public-key"])).trim();
      await wg(cluster, 1, ["set", "flannel-wg-v6", "peer", key2, "remove"]);
      await waitFor(
        "the removed IPv6 peer back",
        async () =>
          (await peersOn(cluster, 1, "flannel-wg-v6")).get(key2)?.endpoint === `[${hostAddress6(2)}]:51821`,
        15_000,
        20,
      );
      const from = pod(cluster, 1, "a");
      expect(
        (await cluster.net.ping(from.ns, pod(cluster, 2, "a").address6 ?? "", { count: 3 })).received,
      ).toBe(3);
    });

    it("keeps both devices and their wireguard-go through an agent restart: no IPv6 ping lost", async () => {
      const { host, agent } = node(cluster, 2);
      const links = await Promise.all(
        [WIREGUARD_DEVICE, "flannel-wg-v6"].map(async (d) => (await readLink(host.runner, d))?.index),
      );
      const pids = [WIREGUARD_DEVICE, "flannel-wg-v6"].map((d) => recordedWireGuardGoPid(agent.stateDir, d));
      expect(pids.every((p) => p !== undefined)).toBe(true);
      const from = pod(cluster, 1, "a");
      const to = pod(cluster, 2, "b");
      const ping = continuousPing(cluster, from.ns, to.address6 ?? "", 300, "0.01");
      await new Promise((resolve) => setTimeout(resolve, 300));
      await agent.restart();
      expect(await ping).toEqual({ transmitted: 300, received: 300 });
      await waitFor(
        "the restarted agent running its data path",
        async () => (await wireguardStatus(cluster, 2)).running,
      );
      expect(
        await Promise.all(
          [WIREGUARD_DEVICE, "flannel-wg-v6"].map(async (d) => (await readLink(host.runner, d))?.index),
        ),
      ).toEqual(links);
      expect(
        [WIREGUARD_DEVICE, "flannel-wg-v6"].map((d) => recordedWireGuardGoPid(agent.stateDir, d)),
      ).toEqual(pids);
    });

    it("starts flannel-wg-v6's wireguard-go again when it dies, and leaves flannel-wg's running", async () => {
      const { agent } = node(cluster, 3);
      const v4 = recordedWireGuardGoPid(agent.stateDir, WIREGUARD_DEVICE);
      const v6 = recordedWireGuardGoPid(agent.stateDir, "flannel-wg-v6");
      if (v6 === undefined || v4 === undefined) throw new Error("no wireguard-go pid files");
      process.kill(v6, "SIGKILL");
      await waitFor(
        "a new wireguard-go on flannel-wg-v6 with both peers",
        async () => {
          const now = recordedWireGuardGoPid(agent.stateDir, "flannel-wg-v6");
          return now !== undefined && now !== v6 && (await peersOn(cluster, 3, "flannel-wg-v6")).size === 2;
        },
        20_000,
      );
      expect(recordedWireGuardGoPid(agent.stateDir, WIREGUARD_DEVICE)).toBe(v4);
      expect((await wireguardStatus(cluster, 3)).restarts).toBeGreaterThanOrEqual(1);
      expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    });

    it("makes a deleted flannel-wg-v6 anew with its route and its own wireguard-go; flannel-wg's keeps running", async () => {
      const { host, agent } = node(cluster, 2);
      const old = await readLink(host.runner, "flannel-wg-v6");
      const v4 = recordedWireGuardGoPid(agent.stateDir, WIREGUARD_DEVICE);
      const v6 = recordedWireGuardGoPid(agent.stateDir, "flannel-wg-v6");
      await cluster.net.run(host.ns, ["ip", "link", "del", "flannel-wg-v6"]);
      await waitFor(
        "a new flannel-wg-v6 with its route and both peers",
        async () => {
          const link = await readLink(host.runner, "flannel-wg-v6").catch(() => undefined);
          const routes = await readRoutes(host.runner, {
            table: 254,
            family: 6,
            protocol: TWILL_ROUTE_PROTOCOL,
          });
          const now = recordedWireGuardGoPid(agent.stateDir, "flannel-wg-v6");
          return (
            link !== undefined &&
            link.index !== old?.index &&
            routes.some((r) => r.dst === IPV6_POD_NETWORK && r.dev === "flannel-wg-v6") &&
            now !== undefined &&
            now !== v6 &&
            (await peersOn(cluster, 2, "flannel-wg-v6").catch(() => new Map())).size === 2
          );
        },
        20_000,
      );
      expect(recordedWireGuardGoPid(agent.stateDir, WIREGUARD_DEVICE)).toBe(v4);
      expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    });

    it("rotates a node's key on both devices: the lease's BackendData and BackendV6Data and every peer follow", async () => {
      const { host, agent } = node(cluster, 1);
      const old = (await wg(cluster, 1, ["show", "flannel-wg-v6", "public-key"])).trim();
      const rotated = await runTwill(["wireguard", "rotate-key", `--state-dir=${agent.stateDir}`], {
        netns: host.ns,
      });
      expect(rotated.code, rotated.stderr).toBe(0);
      const now = (await wireguardStatus(cluster, 1)).publicKey;
      expect(now).not.toBe(old);
      for (const device of [WIREGUARD_DEVICE, "flannel-wg-v6"])
        expect((await wg(cluster, 1, ["show", device, "public-key"])).trim()).toBe(now);
      await waitFor("the lease with the new key in both data", () => {
        const value = leaseOf(cluster, 1);
        return value.split(`"PublicKey":"${now}"`).length === 3;
      });
      for (const i of [2, 3]) {
        for (const device of [WIREGUARD_DEVICE, "flannel-wg-v6"]) {
          await waitFor(`node ${i} has the new key on ${device}`, async () => {
            const peers = await peersOn(cluster, i, device);
            return peers.has(now) && !peers.has(old);
          });
        }
      }
      expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    });
  },
);

describe.skipIf(missing !== undefined)(
  ifWireGuard("wireguard, IPv6-only, Mode separate: 3 hosts x 2 pods"),
  () => {
    let cluster: TwillCluster;

    beforeAll(async () => {
      cluster = await started({ backend: "wireguard", hosts: 3, ipv6: "ipv6-only" });
      for (let i = 1; i <= 3; i++) {
        await cluster.addPod(i, "a", 2);
        await cluster.addPod(i, "b", 3);
      }
      await waitForWireGuardMesh(cluster, ["flannel-wg-v6"]);
    }, 180_000);

    it("every pod pings every other pod over IPv6", async () => {
      expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    });

    it("runs flannel-wg-v6 alone, its peers at their IPv6 endpoints, and publishes only BackendV6Data", async () => {
      for (let i = 1; i <= 3; i++) {
        const { host } = node(cluster, i);
        expect(await readLink(host.runner, WIREGUARD_DEVICE)).toBeUndefined();
        const others = [1, 2, 3].filter((j) => j !== i);
        const peers = [...(await peersOn(cluster, i, "flannel-wg-v6")).values()];
        expect(peers.map((p) => `${p.endpoint} ${p.allowedIps}`).sort()).toEqual(
          others.map((j) => `[${hostAddress6(j)}]:51821 ${subnet6OfNode(cluster, j).subnet}`).sort(),
        );
        const key = (await wg(cluster, i, ["show", "flannel-wg-v6", "public-key"])).trim();
        expect(leaseOf(cluster, i)).toBe(
          `{"PublicIP":"0.0.0.0","PublicIPv6":"${hostAddress6(i)}","BackendType":"wireguard",` +
            `"BackendV6Data":{"PublicKey":"${key}","Port":51821}}`,
        );
        const s = await wireguardStatus(cluster, i);
        expect(s).toMatchObject({ device: "flannel-wg-v6", listenPort: 51821, running: true, peers: 2 });
      }
    });
  },
);

describe.skipIf(missing !== undefined)(
  ifWireGuard("wireguard, dual-stack, Mode ipv6: one device for both families over the IPv6 underlay"),
  () => {
    it("carries both families in flannel-wg to the peers' IPv6 endpoints, and pods reach each other", async () => {
      const cluster = await started({
        backend: "wireguard",
        hosts: 2,
        ipv6: "dual-stack",
        backendOptions: { Mode: "ipv6" },
      });
      await cluster.addPod(1, "a", 2);
      await cluster.addPod(2, "a", 2);
      await waitForWireGuardMesh(cluster, [WIREGUARD_DEVICE]);
      for (const i of [1, 2]) {
        const { host } = node(cluster, i);
        expect(await readLink(host.runner, "flannel-wg-v6")).toBeUndefined();
        const routes = await readRoutes(host.runner, {
          table: 254,
          family: 6,
          protocol: TWILL_ROUTE_PROTOCOL,
        });
        expect(routes.map((r) => `${r.dst} ${r.dev ?? ""}`)).toEqual([`${IPV6_POD_NETWORK} flannel-wg`]);
        const j = 3 - i;
        const peers = [...(await peersOn(cluster, i, WIREGUARD_DEVICE)).values()];
        expect(peers.map((p) => `${p.endpoint} ${p.allowedIps}`)).toEqual([
          `[${hostAddress6(j)}]:51820 ${subnetOf(cluster, j).network}/24,${subnet6OfNode(cluster, j).subnet}`,
        ]);
        // One device, one port: both families' data name it.
        const key = (await wg(cluster, i, ["show", WIREGUARD_DEVICE, "public-key"])).trim();
        expect(leaseOf(cluster, i)).toContain(
          `"BackendData":{"PublicKey":"${key}","Port":51820},"BackendV6Data":{"PublicKey":"${key}","Port":51820}}`,
        );
      }
      expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
    }, 120_000);
  },
);
