// Dual-stack and IPv6-only pods through the standard CNI plugins (Debian's containernetworking-plugins in
// /usr/lib/cni): the conflist made from a flannel-format subnet.env with FLANNEL_IPV6_*, run by
// `twill netns attach` inside a host namespace that has its own cni0. The pod must get an address of
// each family, the routes of each family via the bridge's gateways, reach both gateways, pass CHECK,
// and give both addresses back on detach. Only namespaces made here are touched, never the root one.
import { execa } from "execa";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { conflistFromSubnetEnv, formatConflist } from "../../src/cni/conflist.js";
import { parseCniResult, type CniResult } from "../../src/cni/result.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import { formatSubnetEnv } from "../../src/node/subnet-env.js";
import { runTwill } from "../helpers/agent.js";
import { listNamespaces, randomTag } from "../helpers/netns.js";
import { waitFor } from "../helpers/processes.js";

const PLUGIN_DIR = "/usr/lib/cni";
const tag = randomTag();

// Everything made here, for teardown (on failure too) and the final leak check.
const namespaces: string[] = [];
const tempDirs: string[] = [];

/** Pods first (their veths go with them), then the hosts, then the files. */
async function teardown(): Promise<void> {
  for (const ns of namespaces.splice(0).reverse()) {
    await execa("ip", ["netns", "del", ns], { reject: false, stdin: "ignore" });
  }
  await Promise.allSettled(tempDirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
}

afterAll(teardown);

/** A namespace, tracked before it exists so a failure halfway still removes it. */
async function addNamespace(name: string): Promise<string> {
  namespaces.push(name);
  await execa("ip", ["netns", "add", name], { stdin: "ignore" });
  return name;
}

/** Runs argv inside ns; throws with its stderr when it fails. */
async function run(ns: string, argv: readonly string[]): Promise<string> {
  const result = await execa("ip", ["netns", "exec", ns, ...argv], { reject: false, stdin: "ignore" });
  if (result.exitCode !== 0) {
    throw new Error(`[${ns}] ${argv.join(" ")} failed (exit ${String(result.exitCode)}): ${result.stderr}`);
  }
  return result.stdout;
}

interface Node {
  readonly ns: string;
  readonly conf: string;
  readonly ipamDir: string;
  readonly cacheDir: string;
  readonly subnetEnv: string;
}

/**
 * A host namespace with cni0 (made as the agent makes it: a bridge, up, backend MTU; the bridge plugin
 * adds the gateways) and its own subnet.env, conflist, host-local store and result cache.
 */
async function node(name: string, env: Parameters<typeof formatSubnetEnv>[0]): Promise<Node> {
  const ns = await addNamespace(`tw-${tag}-${name}`);
  const dir = await mkdtemp(join(tmpdir(), "twill-cni6-"));
  tempDirs.push(dir);
  await run(ns, ["ip", "link", "set", "lo", "up"]);
  await run(ns, ["ip", "link", "add", "cni0", "mtu", String(env.mtu), "type", "bridge"]);
  await run(ns, ["ip", "link", "set", "cni0", "up"]);
  const subnetEnv = formatSubnetEnv(env);
  await writeFile(join(dir, "subnet.env"), subnetEnv);
  const ipamDir = join(dir, "ipam");
  const conf = join(dir, "10-twill.conflist");
  await writeFile(
    conf,
    formatConflist(conflistFromSubnetEnv(subnetEnv, { bridge: "cni0", ipamDataDir: ipamDir })),
  );
  return { ns, conf, ipamDir, cacheDir: join(dir, "cache"), subnetEnv };
}

/** `twill netns <verb> <pod> …` inside the host's namespace, with this host's files. */
function netns(n: Node, verb: string, pod: string, args: readonly string[] = []) {
  return runTwill(
    [
      "netns",
      verb,
      pod,
      `--conf=${n.conf}`,
      `--cni-bin-dir=${PLUGIN_DIR}`,
      `--cni-cache-dir=${n.cacheDir}`,
      ...args,
    ],
    { netns: n.ns },
  );
}

async function attach(
  n: Node,
  name: string,
  args: readonly string[] = [],
): Promise<{ ns: string; result: CniResult }> {
  const ns = await addNamespace(`${n.ns}-${name}`);
  const attached = await netns(n, "attach", ns, ["--json", ...args]);
  if (attached.code !== 0) throw new Error(`attach ${ns} failed: ${attached.stderr}`);
  return { ns, result: parseCniResult(JSON.parse(attached.stdout)) };
}

interface IpAddr {
  family: string;
  local: string;
  prefixlen: number;
  scope: string;
  tentative?: boolean;
  dadfailed?: boolean;
}

/** The global addresses on the pod's eth0, "inet" and "inet6", with their DAD state. */
async function podAddresses(ns: string): Promise<IpAddr[]> {
  const links = JSON.parse(await run(ns, ["ip", "-j", "address", "show", "dev", "eth0"])) as {
    addr_info: IpAddr[];
  }[];
  return (links[0]?.addr_info ?? []).filter((a) => a.scope === "global");
}

/** The pod's routes of one family as "dst via gw" lines (kernel-made prefix routes left out). */
async function podRoutes(ns: string, family: "-4" | "-6"): Promise<string[]> {
  const routes = JSON.parse(await run(ns, ["ip", "-j", family, "route", "show"])) as {
    dst: string;
    gateway?: string;
  }[];
  return routes
    .filter((r) => r.gateway !== undefined)
    .map((r) => `${r.dst} via ${r.gateway ?? ""}`)
    .sort();
}

/** host-local's reservations (one file per address) in this node's store. */
async function reservations(n: Node): Promise<string[]> {
  const files = await readdir(join(n.ipamDir, "twill")).catch(() => [] as string[]);
  return files.filter((f) => isIP(f) !== 0).sort();
}

/** The pod sources the bridge plugin masquerades (ipMasq), from iptables-save or ip6tables-save in the host. */
async function masqueraded(n: Node, save: "iptables-save" | "ip6tables-save"): Promise<string[]> {
  const rules = await run(n.ns, [save, "-t", "nat"]);
  return [...rules.matchAll(/^-A POSTROUTING -s (\S+) .*-j CNI-/gm)].map((m) => m[1] ?? "").sort();
}

/** Waits until ping (either family: the address says which) gets a reply; DAD may hold the gateway briefly. */
async function pings(ns: string, to: string): Promise<void> {
  await waitFor(
    `${ns} to reach ${to}`,
    async () =>
      (
        await execa("ip", ["netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", to], {
          reject: false,
          stdin: "ignore",
        })
      ).exitCode === 0,
    15_000,
    200,
  );
}

describe("dual-stack: a pod gets an IPv4 and an IPv6 address", () => {
  let n: Node;
  let pod1: { ns: string; result: CniResult };
  let pod2: { ns: string; result: CniResult };

  beforeAll(async () => {
    n = await node("h1", {
      network: parseCidr("10.244.0.0/16"),
      subnet: parseCidr("10.244.5.0/24"),
      ipv6Network: parseCidr6("fd00:10:244::/56"),
      ipv6Subnet: parseCidr6("fd00:10:244:5::/64"),
      mtu: 1450,
      // twill does not masquerade: the bridge plugin does, with iptables and ip6tables in the host.
      ipMasq: false,
    });
    pod1 = await attach(n, "p1");
    pod2 = await attach(n, "p2");
  }, 60_000);

  it("the subnet.env is flannel's dual-stack file", () => {
    expect(n.subnetEnv).toBe(
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n" +
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n" +
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    );
  });

  it("the plugins' result has both addresses, each with its family's gateway, and both families' routes", () => {
    expect(pod1.result.ips.map((ip) => [ip.address, ip.gateway])).toEqual([
      ["10.244.5.2/24", "10.244.5.1"],
      ["fd00:10:244:5::2/64", "fd00:10:244:5::1"],
    ]);
    expect(pod2.result.ips.map((ip) => ip.address)).toEqual(["10.244.5.3/24", "fd00:10:244:5::3/64"]);
    expect(pod1.result.routes).toEqual([
      { dst: "10.244.0.0/16", gw: "10.244.5.1" },
      { dst: "0.0.0.0/0", gw: "10.244.5.1" },
      { dst: "fd00:10:244::/56", gw: "fd00:10:244:5::1" },
      { dst: "::/0", gw: "fd00:10:244:5::1" },
    ]);
  });

  it("the pod's eth0 holds both addresses, the IPv6 one usable (DAD done), and routes of both families via the gateways", async () => {
    const addresses = await waitFor("the pod's addresses to leave DAD", async () => {
      const list = await podAddresses(pod1.ns);
      return list.some((a) => a.tentative === true) ? undefined : list;
    });
    expect(addresses.map((a) => [a.family, `${a.local}/${a.prefixlen}`, a.dadfailed ?? false])).toEqual([
      ["inet", "10.244.5.2/24", false],
      ["inet6", "fd00:10:244:5::2/64", false],
    ]);
    expect(await podRoutes(pod1.ns, "-4")).toEqual([
      "10.244.0.0/16 via 10.244.5.1",
      "default via 10.244.5.1",
    ]);
    expect(await podRoutes(pod1.ns, "-6")).toEqual([
      "default via fd00:10:244:5::1",
      "fd00:10:244::/56 via fd00:10:244:5::1",
    ]);
    const bridge = JSON.parse(await run(n.ns, ["ip", "-j", "address", "show", "dev", "cni0"])) as {
      addr_info: IpAddr[];
    }[];
    expect(
      (bridge[0]?.addr_info ?? [])
        .filter((a) => a.scope === "global")
        .map((a) => `${a.local}/${a.prefixlen}`),
    ).toEqual(["10.244.5.1/24", "fd00:10:244:5::1/64"]);
  });

  it("the pod reaches both gateways and the other pod over IPv4 and IPv6", async () => {
    await pings(pod1.ns, "fd00:10:244:5::1");
    await pings(pod1.ns, "10.244.5.1");
    await pings(pod1.ns, "fd00:10:244:5::3");
    await pings(pod2.ns, "10.244.5.2");
  });

  it("passes CHECK, and detach gives both addresses back", async () => {
    const check = await netns(n, "check", pod1.ns);
    expect(check.code, check.stderr).toBe(0);
    expect(check.stderr).toBe("");
    expect(await reservations(n)).toEqual([
      "10.244.5.2",
      "10.244.5.3",
      "fd00:10:244:5::2",
      "fd00:10:244:5::3",
    ]);
    // FLANNEL_IPMASQ=false: the bridge plugin masquerades each pod, in both families.
    expect(await masqueraded(n, "iptables-save")).toEqual(["10.244.5.2/32", "10.244.5.3/32"]);
    expect(await masqueraded(n, "ip6tables-save")).toEqual(["fd00:10:244:5::2/128", "fd00:10:244:5::3/128"]);
    const detached = await netns(n, "detach", pod1.ns);
    expect(detached.code, detached.stderr).toBe(0);
    expect(detached.stdout).toContain("released 10.244.5.2/24, fd00:10:244:5::2/64");
    expect(await reservations(n)).toEqual(["10.244.5.3", "fd00:10:244:5::3"]);
    expect(await masqueraded(n, "iptables-save")).toEqual(["10.244.5.3/32"]);
    expect(await masqueraded(n, "ip6tables-save")).toEqual(["fd00:10:244:5::3/128"]);
    const links = JSON.parse(await run(pod1.ns, ["ip", "-j", "link", "show"])) as { ifname: string }[];
    expect(links.map((l) => l.ifname)).toEqual(["lo"]);
  });
});

describe("dual-stack: a pod asks for an address", () => {
  // host-local takes one address in CNI_ARGS (IP=a,b is refused): the range set of its family gives
  // it, the other range set the next free address.
  it.each([
    ["IPv4", "10.244.6.9", ["10.244.6.9/24", "fd00:10:244:6::2/64"]],
    ["IPv6", "fd00:10:244:6::9", ["10.244.6.2/24", "fd00:10:244:6::9/64"]],
  ])(
    "--cni-args IP=<%s> gives it that one and the other family's next free address",
    async (family, ip, want) => {
      const n = await node(`h${family === "IPv4" ? 3 : 4}`, {
        network: parseCidr("10.244.0.0/16"),
        subnet: parseCidr("10.244.6.0/24"),
        ipv6Network: parseCidr6("fd00:10:244::/56"),
        ipv6Subnet: parseCidr6("fd00:10:244:6::/64"),
        mtu: 1450,
        ipMasq: true,
      });
      const ns = await addNamespace(`${n.ns}-p1`);
      const attached = await netns(n, "attach", ns, ["--cni-args", `IP=${ip}`]);
      expect(attached.code, attached.stderr).toBe(0);
      // The plain output lists both addresses, each with its gateway, and both default routes.
      const [v4 = "", v6 = ""] = want;
      expect(attached.stdout).toContain(`  ${v4}  gateway 10.244.6.1  on eth0\n`);
      expect(attached.stdout).toContain(`  ${v6}  gateway fd00:10:244:6::1  on eth0\n`);
      expect(attached.stdout).toContain("  0.0.0.0/0 via 10.244.6.1\n");
      expect(attached.stdout).toContain("  ::/0 via fd00:10:244:6::1\n");
      expect((await podAddresses(ns)).map((a) => `${a.local}/${a.prefixlen}`)).toEqual(want);
      await pings(ns, "fd00:10:244:6::1");
      const detached = await netns(n, "detach", ns);
      expect(detached.code, detached.stderr).toBe(0);
      expect(await reservations(n)).toEqual([]);
    },
  );
});

describe("IPv6-only: a pod gets only an IPv6 address", () => {
  let n: Node;
  let pod: { ns: string; result: CniResult };

  beforeAll(async () => {
    n = await node("h2", {
      network: { ip: 0, prefixLen: 0 },
      subnet: { ip: 0, prefixLen: 0 },
      ipv6Network: parseCidr6("2001:db8:244::/56"),
      ipv6Subnet: parseCidr6("2001:db8:244:7::/64"),
      mtu: 1500,
      ipMasq: true,
    });
    pod = await attach(n, "p1");
  }, 60_000);

  it("the subnet.env has no IPv4 lines, as flannel's with EnableIPv4 false", () => {
    expect(n.subnetEnv).toBe(
      "FLANNEL_IPV6_NETWORK=2001:db8:244::/56\nFLANNEL_IPV6_SUBNET=2001:db8:244:7::1/64\n" +
        "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n",
    );
  });

  it("the pod has one IPv6 address, IPv6 routes only, and reaches its gateway", async () => {
    expect(pod.result.ips.map((ip) => [ip.address, ip.gateway])).toEqual([
      ["2001:db8:244:7::2/64", "2001:db8:244:7::1"],
    ]);
    const addresses = await waitFor("the pod's address to leave DAD", async () => {
      const list = await podAddresses(pod.ns);
      return list.some((a) => a.tentative === true) ? undefined : list;
    });
    expect(addresses.map((a) => [a.family, `${a.local}/${a.prefixlen}`])).toEqual([
      ["inet6", "2001:db8:244:7::2/64"],
    ]);
    expect(await podRoutes(pod.ns, "-4")).toEqual([]);
    expect(await podRoutes(pod.ns, "-6")).toEqual([
      "2001:db8:244::/56 via 2001:db8:244:7::1",
      "default via 2001:db8:244:7::1",
    ]);
    await pings(pod.ns, "2001:db8:244:7::1");
    // FLANNEL_IPMASQ=true: twill masquerades, so the bridge plugin must not.
    expect(await masqueraded(n, "ip6tables-save")).toEqual([]);
    const detached = await netns(n, "detach", pod.ns);
    expect(detached.code, detached.stderr).toBe(0);
    expect(await reservations(n)).toEqual([]);
  });
});

describe("teardown", () => {
  it("leaves none of this file's namespaces behind", async () => {
    await teardown();
    const ours = (await listNamespaces()).filter((ns) => ns.startsWith(`tw-${tag}-`));
    expect(ours).toEqual([]);
  });
});
