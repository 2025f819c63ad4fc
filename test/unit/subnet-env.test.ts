import { describe, it, expect, afterEach, beforeEach } from "vitest";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  formatSubnetEnv,
  parseSubnetEnv,
  readPreviousSubnet,
  writeFileAtomic,
} from "../../src/node/subnet-env.js";
import { formatCidr, parseCidr } from "../../src/ip/ipv4.js";
import { formatCidr6, parseCidr6 } from "../../src/ip/ipv6.js";

const GOLDEN =
  "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

/** parseSubnetEnv's result with subnets as CIDR text, for readable expectations. */
function parsed(text: string): Record<string, unknown> {
  const env = parseSubnetEnv(text);
  return {
    network: env.network && formatCidr(env.network),
    subnet: env.subnet && formatCidr(env.subnet),
    ipv6Network: env.ipv6Network && formatCidr6(env.ipv6Network),
    ipv6Subnet: env.ipv6Subnet && formatCidr6(env.ipv6Subnet),
    mtu: env.mtu,
    ipMasq: env.ipMasq,
  };
}

describe("formatSubnetEnv", () => {
  it("writes flannel's exact layout", () => {
    const text = formatSubnetEnv({
      network: parseCidr("10.244.0.0/16"),
      subnet: parseCidr("10.244.5.0/24"),
      mtu: 1450,
      ipMasq: false,
    });
    expect(text).toBe(GOLDEN);
  });

  it.each([
    ["10.5.0.0/16", "10.5.72.0/24", 1500, true, "10.5.72.1/24", "true"],
    ["10.0.0.0/8", "10.255.255.0/24", 8950, false, "10.255.255.1/24", "false"],
    ["192.168.0.0/24", "192.168.0.64/26", 1450, true, "192.168.0.65/26", "true"],
  ])("network %s lease %s → FLANNEL_SUBNET=%s", (network, subnet, mtu, ipMasq, first, masq) => {
    const text = formatSubnetEnv({ network: parseCidr(network), subnet: parseCidr(subnet), mtu, ipMasq });
    expect(text).toBe(
      `FLANNEL_NETWORK=${network}\nFLANNEL_SUBNET=${first}\nFLANNEL_MTU=${mtu}\nFLANNEL_IPMASQ=${masq}\n`,
    );
  });

  it.each([[0], [-1], [1450.5], [Number.NaN]])("refuses MTU %s", (mtu) => {
    expect(() =>
      formatSubnetEnv({
        network: parseCidr("10.0.0.0/16"),
        subnet: parseCidr("10.0.1.0/24"),
        mtu,
        ipMasq: false,
      }),
    ).toThrow(RangeError);
  });
});

// flannel's WriteSubnetFile with EnableIPv6: the IPv6 pair after the IPv4 one, each subnet as its first host.
const DUAL_STACK_GOLDEN =
  "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n" +
  "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n" +
  "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const DUAL_STACK = {
  network: parseCidr("10.244.0.0/16"),
  subnet: parseCidr("10.244.5.0/24"),
  ipv6Network: parseCidr6("fd00:10:244::/56"),
  ipv6Subnet: parseCidr6("fd00:10:244:5::/64"),
  mtu: 1450,
  ipMasq: true,
};
// EnableIPv4 false: no IPv4 lines at all; the node's IPv4 subnet is the empty 0.0.0.0/0.
const IPV6_ONLY_GOLDEN =
  "FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:7::1/64\n" +
  "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n";
const IPV6_ONLY = {
  network: { ip: 0, prefixLen: 0 },
  subnet: { ip: 0, prefixLen: 0 },
  ipv6Network: parseCidr6("2001:db8:42::/56"),
  ipv6Subnet: parseCidr6("2001:db8:42:7::/64"),
  mtu: 1500,
  ipMasq: false,
};

describe("subnet.env with IPv6", () => {
  it("dual-stack: flannel's bytes", () => {
    expect(formatSubnetEnv(DUAL_STACK)).toBe(DUAL_STACK_GOLDEN);
  });

  it("IPv6-only: flannel's bytes, without FLANNEL_NETWORK and FLANNEL_SUBNET", () => {
    expect(formatSubnetEnv(IPV6_ONLY)).toBe(IPV6_ONLY_GOLDEN);
  });

  it("flannel's documented example, byte for byte", () => {
    const text = formatSubnetEnv({
      network: parseCidr("10.42.0.0/16"),
      subnet: parseCidr("10.42.0.0/24"),
      ipv6Network: parseCidr6("2001:cafe:42::/56"),
      ipv6Subnet: parseCidr6("2001:cafe:42::/64"),
      mtu: 1450,
      ipMasq: true,
    });
    expect(text).toBe(
      "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n" +
        "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
  });

  it("round trips: dual-stack gives both families back, IPv6-only no IPv4 at all", () => {
    expect(parseSubnetEnv(DUAL_STACK_GOLDEN)).toEqual(DUAL_STACK);
    expect(formatSubnetEnv({ ...DUAL_STACK, ...parseSubnetEnv(DUAL_STACK_GOLDEN) })).toBe(DUAL_STACK_GOLDEN);
    const { network: _network, subnet: _subnet, ...v6 } = IPV6_ONLY;
    expect(parseSubnetEnv(IPV6_ONLY_GOLDEN)).toEqual(v6);
    expect(formatSubnetEnv({ ...IPV6_ONLY, ...parseSubnetEnv(IPV6_ONLY_GOLDEN) })).toBe(IPV6_ONLY_GOLDEN);
  });

  it("an IPv6 pair with only one half is left out, as a file flannel would never write", () => {
    expect(formatSubnetEnv({ ...DUAL_STACK, ipv6Network: undefined })).toBe(
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
  });
});

describe("parseSubnetEnv", () => {
  it("round-trips formatSubnetEnv, giving FLANNEL_SUBNET back as the lease network", () => {
    const v = {
      network: parseCidr("10.244.0.0/16"),
      subnet: parseCidr("10.244.5.0/24"),
      mtu: 1450,
      ipMasq: true,
    };
    expect(parseSubnetEnv(formatSubnetEnv(v))).toEqual(v);
  });

  it.each([
    ["golden file", GOLDEN, { network: "10.244.0.0/16", subnet: "10.244.5.0/24", mtu: 1450, ipMasq: false }],
    ["empty file", "", {}],
    ["only comments and blanks", "# written by flanneld\n\n   \n#FLANNEL_SUBNET=10.1.1.1/24\n", {}],
    [
      "CRLF line ends",
      "FLANNEL_SUBNET=10.1.2.1/24\r\nFLANNEL_MTU=1400\r\n",
      { subnet: "10.1.2.0/24", mtu: 1400 },
    ],
    [
      "double quotes",
      'FLANNEL_SUBNET="10.1.2.1/24"\nFLANNEL_IPMASQ="true"',
      { subnet: "10.1.2.0/24", ipMasq: true },
    ],
    [
      "single quotes",
      "FLANNEL_SUBNET='10.1.2.1/24'\nFLANNEL_MTU='1450'",
      { subnet: "10.1.2.0/24", mtu: 1450 },
    ],
    ["export prefix", "export FLANNEL_SUBNET=10.1.2.1/24", { subnet: "10.1.2.0/24" }],
    ["spaces around =", "FLANNEL_SUBNET = 10.1.2.1/24 ", { subnet: "10.1.2.0/24" }],
    [
      "inline comment",
      "FLANNEL_SUBNET=10.1.2.1/24 # ours\nFLANNEL_MTU=1450\t# base",
      { subnet: "10.1.2.0/24", mtu: 1450 },
    ],
    [
      "last duplicate wins",
      "FLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_SUBNET=10.1.3.1/24",
      { subnet: "10.1.3.0/24" },
    ],
    [
      "host bits dropped",
      "FLANNEL_SUBNET=10.1.2.77/24\nFLANNEL_NETWORK=10.1.9.9/16",
      { network: "10.1.0.0/16", subnet: "10.1.2.0/24" },
    ],
    [
      "unknown keys and malformed lines ignored",
      "FOO=bar\ngarbage line\n=x\nFLANNEL_MTU=9000",
      { mtu: 9000 },
    ],
    // flannel: a comma list must hold exactly one valid CIDR; invalid entries are skipped
    ["comma list of two", "FLANNEL_SUBNET=10.1.2.1/24,10.1.3.1/24", {}],
    ["comma list of two networks", "FLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16", {}],
    ["comma list, one valid", "FLANNEL_SUBNET=bogus,10.1.2.1/24", { subnet: "10.1.2.0/24" }],
    ["trailing comma", "FLANNEL_SUBNET=10.1.2.1/24,", { subnet: "10.1.2.0/24" }],
    ["bad CIDR", "FLANNEL_SUBNET=10.1.2.1", {}],
    ["bad prefix", "FLANNEL_SUBNET=10.1.2.1/33", {}],
    ["IPv6 in the v4 key", "FLANNEL_SUBNET=fd00::1/64", {}],
    ["empty value", "FLANNEL_SUBNET=\nFLANNEL_MTU=", {}],
    ["bad MTU", "FLANNEL_MTU=abc", {}],
    ["zero MTU", "FLANNEL_MTU=0", {}],
    ["negative MTU", "FLANNEL_MTU=-1", {}],
    ["fractional MTU", "FLANNEL_MTU=1450.5", {}],
    ["IPMASQ not a bool", "FLANNEL_IPMASQ=yes", {}],
    ["IPMASQ false", "FLANNEL_IPMASQ=false", { ipMasq: false }],
    [
      "IPv6 keys, host bits dropped",
      "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64",
      { ipv6Network: "fd00::/48", ipv6Subnet: "fd00:0:0:1::/64" },
    ],
    [
      "flannel's documented dual-stack file",
      "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n" +
        "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
      {
        network: "10.42.0.0/16",
        subnet: "10.42.0.0/24",
        ipv6Network: "2001:cafe:42::/56",
        ipv6Subnet: "2001:cafe:42::/64",
        mtu: 1450,
        ipMasq: true,
      },
    ],
    [
      "IPv6 spelled long: read as the same subnet",
      "FLANNEL_IPV6_SUBNET=FD00:0010:0244:0005:0000:0000:0000:0001/64",
      { ipv6Subnet: "fd00:10:244:5::/64" },
    ],
    // flannel's main_test.go: invalid entries skipped; two valid ones are no single subnet
    ["IPv6 comma list of two", "FLANNEL_IPV6_SUBNET=fd00::/64,not-a-cidr,fd01::/64", {}],
    [
      "IPv6 comma list, one valid",
      "FLANNEL_IPV6_SUBNET=not-a-cidr,fd00:5::1/64",
      { ipv6Subnet: "fd00:5::/64" },
    ],
    ["IPv6 not a CIDR", "FLANNEL_IPV6_SUBNET=not-a-cidr", {}],
    ["IPv6 bad prefix", "FLANNEL_IPV6_SUBNET=fd00::1/129", {}],
    ["IPv4 in the v6 key", "FLANNEL_IPV6_SUBNET=10.1.2.1/24\nFLANNEL_IPV6_NETWORK=10.1.0.0/16", {}],
  ])("%s", (_name, text, expected) => {
    expect(parsed(text)).toEqual({
      network: undefined,
      subnet: undefined,
      ipv6Network: undefined,
      ipv6Subnet: undefined,
      mtu: undefined,
      ipMasq: undefined,
      ...expected,
    });
  });
});

describe("writeFileAtomic and readPreviousSubnet", () => {
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "twill-subnet-env-"));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("creates missing parent directories and writes the content", async () => {
    const path = join(dir, "run", "flannel", "subnet.env");
    await writeFileAtomic(path, GOLDEN);
    expect(await readFile(path, "utf8")).toBe(GOLDEN);
    expect((await stat(join(dir, "run", "flannel"))).isDirectory()).toBe(true);
    expect(await readdir(join(dir, "run", "flannel"))).toEqual(["subnet.env"]);
  });

  it("sets mode 0644 even under a restrictive umask", async () => {
    const path = join(dir, "subnet.env");
    const old = process.umask(0o077);
    try {
      await writeFileAtomic(path, GOLDEN);
    } finally {
      process.umask(old);
    }
    expect((await stat(path)).mode & 0o777).toBe(0o644);
  });

  it("honours an explicit mode", async () => {
    const path = join(dir, "secret");
    await writeFileAtomic(path, "x", 0o600);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
  });

  it("replaces an existing file and resets its mode, leaving no temp files", async () => {
    const path = join(dir, "subnet.env");
    await writeFile(path, "old content that is longer than the new one\n".repeat(10));
    await chmod(path, 0o600);
    await writeFileAtomic(path, GOLDEN);
    expect(await readFile(path, "utf8")).toBe(GOLDEN);
    expect((await stat(path)).mode & 0o777).toBe(0o644);
    expect(await readdir(dir)).toEqual(["subnet.env"]);
  });

  it("concurrent writers each leave a whole file", async () => {
    const path = join(dir, "subnet.env");
    const contents = Array.from({ length: 20 }, (_, i) => `FLANNEL_MTU=${1400 + i}\n`.repeat(100));
    await Promise.all(contents.map((c) => writeFileAtomic(path, c)));
    expect(contents).toContain(await readFile(path, "utf8"));
    expect(await readdir(dir)).toEqual(["subnet.env"]);
  });

  it("on failure, throws, keeps the target intact and removes its temp file", async () => {
    // A directory at the target path makes the final rename fail after the temp file was written.
    const path = join(dir, "subnet.env");
    await mkdir(path);
    await writeFile(join(path, "inside"), "keep");
    await expect(writeFileAtomic(path, GOLDEN)).rejects.toThrow();
    expect((await readdir(dir)).sort()).toEqual(["subnet.env"]);
    expect(await readFile(join(path, "inside"), "utf8")).toBe("keep");
  });

  it("readPreviousSubnet gives the lease network back", async () => {
    const path = join(dir, "subnet.env");
    await writeFileAtomic(path, GOLDEN);
    const previous = await readPreviousSubnet(path);
    expect(previous && formatCidr(previous.subnet)).toBe("10.244.5.0/24");
  });

  it.each([
    ["a missing file", "missing.env"],
    ["a directory", "."],
  ])("readPreviousSubnet on %s → undefined", async (_name, name) => {
    expect(await readPreviousSubnet(join(dir, name))).toBeUndefined();
  });

  it("readPreviousSubnet gives both leases back from a dual-stack file, and the IPv6 one alone from an IPv6-only file", async () => {
    const path = join(dir, "subnet.env");
    await writeFileAtomic(path, DUAL_STACK_GOLDEN);
    const dual = await readPreviousSubnet(path);
    expect(dual && [formatCidr(dual.subnet), dual.ipv6Subnet && formatCidr6(dual.ipv6Subnet)]).toEqual([
      "10.244.5.0/24",
      "fd00:10:244:5::/64",
    ]);
    await writeFileAtomic(path, IPV6_ONLY_GOLDEN);
    const v6 = await readPreviousSubnet(path);
    expect(v6 && [v6.subnet.prefixLen, v6.ipv6Subnet && formatCidr6(v6.ipv6Subnet)]).toEqual([
      0,
      "2001:db8:42:7::/64",
    ]);
  });

  it("readPreviousSubnet without FLANNEL_SUBNET → undefined", async () => {
    const path = join(dir, "subnet.env");
    await writeFile(path, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.1.0.1/24,10.2.0.1/24\n");
    expect(await readPreviousSubnet(path)).toBeUndefined();
  });
});
