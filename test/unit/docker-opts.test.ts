// Docker options: flannel's mk-docker-opts.sh goldens (dist/mk_docker_opts_test.go, same input and
// expected files), the typed path the agent uses, and the daemon.json fragment and merge.
import { describe, expect, it } from "vitest";
import { parseCidr } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import {
  daemonJsonFragment,
  dockerOptsFromSubnetEnv,
  DockerOptsError,
  formatDaemonJson,
  formatDockerOpts,
  mergeDaemonJson,
} from "../../src/node/docker-opts.js";
import type { SubnetEnv } from "../../src/node/subnet-env.js";

// flannel's dist/sample_subnet.env
const SAMPLE =
  "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

describe("dockerOptsFromSubnetEnv: flannel's mk_docker_opts_test cases", () => {
  it.each([
    {
      name: "default (individual + combined)",
      options: {},
      want:
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=true"\n' +
        'DOCKER_OPT_MTU="--mtu=1472"\n' +
        'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n',
    },
    {
      name: "individual only (-i)",
      options: { output: "individual" as const },
      want:
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=true"\n' +
        'DOCKER_OPT_MTU="--mtu=1472"\n',
    },
    {
      name: "combined only (-c)",
      options: { output: "combined" as const },
      want: 'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n',
    },
    {
      name: "custom key (-k CUSTOM_KEY)",
      options: { combinedKey: "CUSTOM_KEY" },
      want:
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=true"\n' +
        'DOCKER_OPT_MTU="--mtu=1472"\n' +
        'CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n',
    },
    {
      name: "strip ip-masq (-m)",
      options: { omitIpMasq: true },
      want:
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n' +
        'DOCKER_OPT_MTU="--mtu=1472"\n' +
        'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n',
    },
  ])("$name", ({ options, want }) => {
    expect(dockerOptsFromSubnetEnv(SAMPLE, options)).toBe(want);
  });
});

describe("dockerOptsFromSubnetEnv: the script's other behaviour", () => {
  it("inverts FLANNEL_IPMASQ=true: the agent masquerades, so Docker must not", () => {
    const text = SAMPLE.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=true");
    expect(dockerOptsFromSubnetEnv(text)).toBe(
      'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=false"\n' +
        'DOCKER_OPT_MTU="--mtu=1472"\n' +
        'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472"\n',
    );
  });

  it("rejects a FLANNEL_IPMASQ that is neither true nor false, with the script's message", () => {
    const text = SAMPLE.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=yes");
    expect(() => dockerOptsFromSubnetEnv(text)).toThrow(DockerOptsError);
    expect(() => dockerOptsFromSubnetEnv(text)).toThrow("Invalid value of FLANNEL_IPMASQ: yes");
    // -m skips the check, as the script does.
    expect(dockerOptsFromSubnetEnv(text, { omitIpMasq: true })).toContain("--bip=10.1.74.1/24 --mtu=1472");
  });

  it("leaves out options whose variable is missing", () => {
    expect(dockerOptsFromSubnetEnv("FLANNEL_MTU=1450\n")).toBe(
      'DOCKER_OPT_MTU="--mtu=1450"\nDOCKER_OPTS=" --mtu=1450"\n',
    );
    expect(dockerOptsFromSubnetEnv("")).toBe('DOCKER_OPTS=""\n');
  });

  it("prepends a combined value already in the environment, with the script's spacing", () => {
    expect(dockerOptsFromSubnetEnv(SAMPLE, { output: "combined", existing: "--debug" })).toBe(
      'DOCKER_OPTS="--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n',
    );
  });

  it("reads quoted and exported values the way a shell sourcing the file would", () => {
    const text =
      "export FLANNEL_SUBNET=\"10.1.74.1/24\"\n# comment\nFLANNEL_MTU='1472'\nFLANNEL_IPMASQ=false\n";
    expect(dockerOptsFromSubnetEnv(text)).toBe(dockerOptsFromSubnetEnv(SAMPLE));
  });

  it("refuses a combined key that is not a shell variable name", () => {
    expect(() => dockerOptsFromSubnetEnv(SAMPLE, { combinedKey: "DOCKER OPTS" })).toThrow(DockerOptsError);
  });
});

const lease = (ipMasq: boolean, mtu = 1450): SubnetEnv => ({
  network: parseCidr("10.244.0.0/16"),
  subnet: parseCidr("10.244.5.0/24"),
  mtu,
  ipMasq,
});

describe("formatDockerOpts: the file the agent writes (--docker-opts-file)", () => {
  it("twill does not masquerade: Docker does (--ip-masq=true)", () => {
    expect(formatDockerOpts(lease(false))).toBe(
      'DOCKER_OPT_BIP="--bip=10.244.5.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=true"\n' +
        'DOCKER_OPT_MTU="--mtu=1450"\n' +
        'DOCKER_OPTS=" --bip=10.244.5.1/24 --ip-masq=true --mtu=1450"\n',
    );
  });

  it("twill masquerades (--ip-masq): Docker must not (--ip-masq=false)", () => {
    expect(formatDockerOpts(lease(true, 1500))).toBe(
      'DOCKER_OPT_BIP="--bip=10.244.5.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=false"\n' +
        'DOCKER_OPT_MTU="--mtu=1500"\n' +
        'DOCKER_OPTS=" --bip=10.244.5.1/24 --ip-masq=false --mtu=1500"\n',
    );
  });

  it("takes the script's options too", () => {
    expect(
      formatDockerOpts(lease(false), { output: "combined", combinedKey: "DOCKER_NETWORK_OPTIONS" }),
    ).toBe('DOCKER_NETWORK_OPTIONS=" --bip=10.244.5.1/24 --ip-masq=true --mtu=1450"\n');
  });
});

describe("daemon.json", () => {
  it("fragment: bip, mtu and ip-masq inverted from twill's masquerade", () => {
    expect(formatDaemonJson(lease(false))).toBe(
      '{\n  "bip": "10.244.5.1/24",\n  "mtu": 1450,\n  "ip-masq": true\n}\n',
    );
    expect(formatDaemonJson(lease(true, 1500))).toBe(
      '{\n  "bip": "10.244.5.1/24",\n  "mtu": 1500,\n  "ip-masq": false\n}\n',
    );
    expect(daemonJsonFragment(lease(true), { omitIpMasq: true })).toEqual({
      bip: "10.244.5.1/24",
      mtu: 1450,
    });
  });

  it("a new file is the fragment", () => {
    expect(mergeDaemonJson(undefined, daemonJsonFragment(lease(false)))).toBe(formatDaemonJson(lease(false)));
    expect(mergeDaemonJson("  \n", daemonJsonFragment(lease(false)))).toBe(formatDaemonJson(lease(false)));
  });

  it("keeps the operator's other keys and their order, and updates twill's in place", () => {
    const existing = JSON.stringify({
      "log-driver": "journald",
      bip: "10.244.9.1/24",
      "storage-driver": "overlay2",
    });
    expect(mergeDaemonJson(existing, daemonJsonFragment(lease(false)))).toBe(
      '{\n  "log-driver": "journald",\n  "bip": "10.244.5.1/24",\n  "storage-driver": "overlay2",\n' +
        '  "mtu": 1450,\n  "ip-masq": true\n}\n',
    );
  });

  it("returns the text unchanged when it already says the same, whatever its formatting", () => {
    const existing = '{"ip-masq":true,"mtu":1450,"bip":"10.244.5.1/24","debug":true}';
    expect(mergeDaemonJson(existing, daemonJsonFragment(lease(false)))).toBe(existing);
  });

  it("refuses to touch a daemon.json that is not a JSON object", () => {
    expect(() => mergeDaemonJson("{not json", daemonJsonFragment(lease(false)))).toThrow(/not valid JSON/);
    expect(() => mergeDaemonJson("[1]", daemonJsonFragment(lease(false)))).toThrow(/not a JSON object/);
  });
});

// flannel's mk-docker-opts.sh has no IPv6 option and reads no FLANNEL_IPV6_* variable: twill does the same.
describe("Docker options with IPv6: IPv4 only, as mk-docker-opts.sh", () => {
  const dualStack = (ipMasq: boolean): SubnetEnv => ({
    ...lease(ipMasq),
    ipv6Network: parseCidr6("fd00:10:244::/56"),
    ipv6Subnet: parseCidr6("fd00:10:244:5::/64"),
  });
  const ipv6Only = (ipMasq: boolean): SubnetEnv => ({
    network: { ip: 0, prefixLen: 0 },
    subnet: { ip: 0, prefixLen: 0 },
    ipv6Network: parseCidr6("fd00:10:244::/56"),
    ipv6Subnet: parseCidr6("fd00:10:244:5::/64"),
    mtu: 1450,
    ipMasq,
  });

  it("a dual-stack subnet.env gives the IPv4 options, byte for byte as an IPv4-only one", () => {
    const text =
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n" +
      "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n" +
      "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    expect(dockerOptsFromSubnetEnv(text)).toBe(
      'DOCKER_OPT_BIP="--bip=10.244.5.1/24"\n' +
        'DOCKER_OPT_IPMASQ="--ip-masq=false"\n' +
        'DOCKER_OPT_MTU="--mtu=1450"\n' +
        'DOCKER_OPTS=" --bip=10.244.5.1/24 --ip-masq=false --mtu=1450"\n',
    );
    expect(formatDockerOpts(dualStack(true))).toBe(dockerOptsFromSubnetEnv(text));
    expect(formatDockerOpts(dualStack(false))).toBe(formatDockerOpts(lease(false)));
  });

  it("an IPv6-only subnet.env (no FLANNEL_SUBNET) gives no --bip: Docker keeps its own bridge address", () => {
    const text =
      "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n" +
      "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    const want =
      'DOCKER_OPT_IPMASQ="--ip-masq=true"\n' +
      'DOCKER_OPT_MTU="--mtu=1450"\n' +
      'DOCKER_OPTS=" --ip-masq=true --mtu=1450"\n';
    expect(dockerOptsFromSubnetEnv(text)).toBe(want);
    expect(formatDockerOpts(ipv6Only(false))).toBe(want);
  });

  it("daemon.json: bip from the IPv4 subnet on a dual-stack node; none on an IPv6-only node, whose file keeps its own", () => {
    expect(daemonJsonFragment(dualStack(false))).toEqual(daemonJsonFragment(lease(false)));
    expect(daemonJsonFragment(ipv6Only(true))).toEqual({ mtu: 1450, "ip-masq": false });
    expect(formatDaemonJson(ipv6Only(false))).toBe('{\n  "mtu": 1450,\n  "ip-masq": true\n}\n');
    const existing = '{\n  "bip": "172.17.0.1/16",\n  "ipv6": true\n}\n';
    expect(mergeDaemonJson(existing, daemonJsonFragment(ipv6Only(false)))).toBe(
      '{\n  "bip": "172.17.0.1/16",\n  "ipv6": true,\n  "mtu": 1450,\n  "ip-masq": true\n}\n',
    );
  });
});
