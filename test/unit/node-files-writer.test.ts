// The node-files writer's loop: it ends when stopped, also when the stop lands while it is writing.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { formatConflist, twillConflist } from "../../src/cni/conflist.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import { NodeFilesWriter, type NodeFilesTarget } from "../../src/node/files.js";
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

describe("NodeFilesWriter with IPv6", () => {
  const DUAL_STACK: NodeFilesTarget = {
    network: parseCidr("10.244.0.0/16"),
    subnet: parseCidr("10.244.5.0/24"),
    ipv6Network: parseCidr6("fd00:10:244::/56"),
    ipv6Subnet: parseCidr6("fd00:10:244:5::/64"),
    mtu: 1450,
    ipMasq: true,
  };
  const IPV6_ONLY: NodeFilesTarget = {
    network: { ip: 0, prefixLen: 0 },
    subnet: { ip: 0, prefixLen: 0 },
    ipv6Network: parseCidr6("2001:db8:42::/56"),
    ipv6Subnet: parseCidr6("2001:db8:42:7::/64"),
    mtu: 1500,
    ipMasq: false,
  };

  /** A writer of all four files in a fresh temp dir, running until `stop` aborts. */
  function allFiles() {
    const dir = mkdtempSync(join(tmpdir(), "twill-files6-"));
    dirs.push(dir);
    const logs = captureLogs();
    const writer = new NodeFilesWriter(
      {
        subnetFile: join(dir, "subnet.env"),
        cniConfFile: join(dir, "10-twill.conflist"),
        bridge: "cni0",
        dockerOptsFile: join(dir, "docker_opts.env"),
        dockerDaemonJson: join(dir, "daemon.json"),
        cniVersion: "1.0.0",
      },
      logs.log,
      { subnetFileWritten: () => undefined },
      new FakeClock(),
    );
    const stop = new AbortController();
    return { dir, writer, stop, run: writer.run(stop.signal), logs };
  }
  const read = (dir: string, name: string) => readFileSync(join(dir, name), "utf8");

  it("dual-stack: subnet.env and the conflist carry both families, the Docker files IPv4", async () => {
    const { dir, writer, stop, run, logs } = allFiles();
    writer.set(DUAL_STACK);
    // The writer logs once every file is written.
    await waitFor(() => logs.withMsg("subnet file written").length > 0);
    expect(read(dir, "subnet.env")).toBe(
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n" +
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n" +
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
    expect(read(dir, "10-twill.conflist")).toBe(
      formatConflist(twillConflist({ ...DUAL_STACK, bridge: "cni0" })),
    );
    expect(read(dir, "10-twill.conflist")).toContain(
      '"subnet": "fd00:10:244:5::/64",\n              "gateway": "fd00:10:244:5::1"',
    );
    expect(read(dir, "docker_opts.env")).toBe(
      'DOCKER_OPT_BIP="--bip=10.244.5.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=false"\n' +
        'DOCKER_OPT_MTU="--mtu=1450"\n' +
        'DOCKER_OPTS=" --bip=10.244.5.1/24 --ip-masq=false --mtu=1450"\n',
    );
    expect(JSON.parse(read(dir, "daemon.json"))).toEqual({
      bip: "10.244.5.1/24",
      mtu: 1450,
      "ip-masq": false,
    });
    // The log names both subnets.
    expect(logs.withMsg("subnet file written")[0]).toMatchObject({
      subnet: "10.244.5.0/24",
      ipv6Subnet: "fd00:10:244:5::/64",
    });

    // A change of the IPv6 subnet alone is a change: both files that carry it are rewritten.
    writer.set({ ...DUAL_STACK, ipv6Subnet: parseCidr6("fd00:10:244:9::/64") });
    await waitFor(() => read(dir, "subnet.env").includes("FLANNEL_IPV6_SUBNET=fd00:10:244:9::1/64"));
    await waitFor(() => read(dir, "10-twill.conflist").includes('"gateway": "fd00:10:244:9::1"'));
    stop.abort();
    expect(await endsSoon(run)).toBe("ended");
  });

  it("IPv6-only: no IPv4 anywhere, no --bip, and a daemon.json bip of the operator's left alone", async () => {
    const { dir, writer, stop, run, logs } = allFiles();
    writeFileSync(join(dir, "daemon.json"), '{\n  "bip": "172.17.0.1/16"\n}\n');
    writer.set(IPV6_ONLY);
    await waitFor(() => logs.withMsg("subnet file written").length > 0);
    expect(read(dir, "subnet.env")).toBe(
      "FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:7::1/64\n" +
        "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n",
    );
    const conflist = read(dir, "10-twill.conflist");
    expect(conflist).toBe(formatConflist(twillConflist({ ...IPV6_ONLY, bridge: "cni0" })));
    expect(conflist).not.toMatch(/\d+\.\d+\.\d+\.\d+/);
    expect(read(dir, "docker_opts.env")).toBe(
      'DOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1500"\nDOCKER_OPTS=" --ip-masq=true --mtu=1500"\n',
    );
    expect(JSON.parse(read(dir, "daemon.json"))).toEqual({
      bip: "172.17.0.1/16",
      mtu: 1500,
      "ip-masq": true,
    });
    const written = logs.withMsg("subnet file written")[0];
    expect(written).toMatchObject({ ipv6Subnet: "2001:db8:42:7::/64" });
    expect(written).not.toHaveProperty("subnet");
    stop.abort();
    expect(await endsSoon(run)).toBe("ended");
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
