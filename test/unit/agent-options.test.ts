import { describe, expect, it } from "vitest";
import { parseAgentOptions } from "../../src/config/agent-options.js";
import { FlagError, parseDurationSeconds } from "../../src/config/flags.js";

const noEnv = {};

describe("agent options", () => {
  it("has flanneld's defaults", () => {
    const o = parseAgentOptions([], noEnv);
    expect(o.etcd.endpoints).toEqual(["http://127.0.0.1:4001", "http://127.0.0.1:2379"]);
    expect(o.etcd.prefix).toBe("/coreos.com/network");
    expect(o.subnetFile).toBe("/run/flannel/subnet.env");
    expect(o.renewMarginSeconds).toBe(3600);
    expect(o.leaseTtlSeconds).toBe(86400);
    expect(o.ipMasq).toBe(false);
    expect(o.releaseLeaseOnExit).toBe(false);
    expect(o.iface).toEqual([]);
  });

  it.each([
    [["--etcd-prefix", "/x/net"], "/x/net"],
    [["--etcd-prefix=/x/net"], "/x/net"],
    [["-etcd-prefix", "/x/net"], "/x/net"],
    [["-etcd-prefix=/x/net/"], "/x/net"],
  ])("accepts Go flag syntax %j", (argv, prefix) => {
    expect(parseAgentOptions(argv, noEnv).etcd.prefix).toBe(prefix);
  });

  it("takes booleans as bare flags or =true/=false", () => {
    expect(parseAgentOptions(["--ip-masq"], noEnv).ipMasq).toBe(true);
    expect(parseAgentOptions(["--ip-masq=false"], noEnv).ipMasq).toBe(false);
    expect(parseAgentOptions(["-ip-masq=true"], noEnv).ipMasq).toBe(true);
  });

  it("accumulates repeatable flags in order", () => {
    expect(parseAgentOptions(["--iface", "eth1", "--iface=10.0.0.5"], noEnv).iface).toEqual([
      "eth1",
      "10.0.0.5",
    ]);
  });

  it("splits comma lists", () => {
    expect(
      parseAgentOptions(["--etcd-endpoints", "http://a:2379, http://b:2379"], noEnv).etcd.endpoints,
    ).toEqual(["http://a:2379", "http://b:2379"]);
  });

  it("looks for the CNI plugins in /opt/cni/bin, then /usr/lib/cni; takes commas or CNI_PATH's colons", () => {
    expect(parseAgentOptions([], noEnv).cniBinDirs).toEqual(["/opt/cni/bin", "/usr/lib/cni"]);
    expect(parseAgentOptions(["--cni-bin-dir=/a,/b"], noEnv).cniBinDirs).toEqual(["/a", "/b"]);
    expect(parseAgentOptions([], { TWILL_CNI_BIN_DIR: "/a:/b:" }).cniBinDirs).toEqual(["/a", "/b"]);
    expect(parseAgentOptions(["--cni-bin-dir="], noEnv).cniBinDirs).toEqual([]);
  });

  it("serves the endpoints on 0.0.0.0:9102 and flannel's health port only when asked", () => {
    const o = parseAgentOptions([], noEnv);
    expect(o.metricsAddress).toEqual({ host: "0.0.0.0", port: 9102 });
    expect(o.healthzAddress).toBeUndefined();
    expect(parseAgentOptions(["--metrics-address="], noEnv).metricsAddress).toBeUndefined();
    expect(parseAgentOptions(["--metrics-address=[::1]:9200"], noEnv).metricsAddress).toEqual({
      host: "::1",
      port: 9200,
    });
    expect(parseAgentOptions([], { FLANNELD_HEALTHZ_PORT: "8081" }).healthzAddress).toEqual({
      host: "0.0.0.0",
      port: 8081,
    });
    expect(
      parseAgentOptions(["--healthz-ip=127.0.0.1", "--healthz-port=8081"], noEnv).healthzAddress,
    ).toEqual({
      host: "127.0.0.1",
      port: 8081,
    });
  });

  it("applies precedence: flag > TWILL_ > FLANNELD_ > default", () => {
    const env = { TWILL_ETCD_PREFIX: "/from/twill", FLANNELD_ETCD_PREFIX: "/from/flanneld" };
    expect(parseAgentOptions(["--etcd-prefix", "/from/flag"], env).etcd.prefix).toBe("/from/flag");
    expect(parseAgentOptions([], env).etcd.prefix).toBe("/from/twill");
    expect(parseAgentOptions([], { FLANNELD_ETCD_PREFIX: "/from/flanneld" }).etcd.prefix).toBe(
      "/from/flanneld",
    );
    const o = parseAgentOptions([], env);
    expect(o.sources.get("etcd-prefix")).toBe("TWILL_ETCD_PREFIX");
    expect(o.sources.get("subnet-file")).toBe("default");
  });

  it("reads FLANNELD_ only for flanneld's own flags", () => {
    expect(parseAgentOptions([], { FLANNELD_LEASE_TTL: "30s" }).leaseTtlSeconds).toBe(86400);
    expect(parseAgentOptions([], { TWILL_LEASE_TTL: "30s" }).leaseTtlSeconds).toBe(30);
    expect(parseAgentOptions([], { FLANNELD_IP_MASQ: "true" }).ipMasq).toBe(true);
  });

  it.each<[string[], Record<string, string>, RegExp]>([
    [["--no-such-flag"], {}, /unknown flag --no-such-flag/],
    [["--etcd"], {}, /unknown flag --etcd .*did you mean --etcd-endpoints/],
    [
      ["--subnet-lease-renew-margin", "0"],
      {},
      /--subnet-lease-renew-margin: 0 is out of range \(allowed: 1 to 1439\)/,
    ],
    [["--subnet-lease-renew-margin", "1440"], {}, /--subnet-lease-renew-margin: 1440 is out of range/],
    [["--subnet-lease-renew-margin", "ten"], {}, /--subnet-lease-renew-margin: "ten" is not an integer/],
    [["--ip-masq=maybe"], {}, /--ip-masq: "maybe" is not a boolean/],
    [["--metrics-address", "9102"], {}, /--metrics-address: "9102" is not an address \(use IP:PORT/],
    [
      [],
      { TWILL_METRICS_ADDRESS: "1.2.3.4:99999" },
      /TWILL_METRICS_ADDRESS \(--metrics-address\): .*out of range/,
    ],
    [["--healthz-port", "8081", "--healthz-ip", "eth0"], {}, /--healthz-ip: "eth0" is not an IP address/],
    [["--healthz-port", "70000"], {}, /--healthz-port: 70000 is out of range \(allowed: 0 to 65535\)/],
    [["--lease-ttl", "soon"], {}, /--lease-ttl: "soon" is not a duration/],
    [["--lease-ttl", "1s"], {}, /--lease-ttl: 1s is out of range/],
    [
      ["--log-level", "loud"],
      {},
      /--log-level: "loud" is not allowed \(allowed: fatal, error, warn, info, debug, trace, silent\)/,
    ],
    [["--etcd-prefix"], {}, /--etcd-prefix: needs a value/],
    [["--etcd-prefix", "relative"], {}, /--etcd-prefix: "relative" must start with \//],
    [["--public-ip", "1.2.3.4", "--public-ip", "5.6.7.8"], {}, /--public-ip: given more than once/],
    [["stray"], {}, /unexpected argument "stray"/],
    [["--public-ip", "10.0.0.300"], {}, /--public-ip: "10.0.0.300" is not an IPv4 address/],
    [[], { TWILL_BRIDGE: "bad!" }, /TWILL_BRIDGE \(--bridge\): "bad!" is not a valid interface name/],
    [
      [],
      { FLANNELD_ETCD_PREFIX: "relative" },
      /FLANNELD_ETCD_PREFIX \(--etcd-prefix\): "relative" must start with \//,
    ],
    [["--public-ip", "224.0.0.5"], {}, /--public-ip: "224.0.0.5" is (a )?multicast/],
    [["--iface-regex", "eth[0-"], {}, /--iface-regex: "eth\[0-" is not a valid regular expression/],
    [
      [],
      { TWILL_ETCD_ENDPOINTS: "http://10.0.0.1:2379,10.0.0.2:2379" },
      /TWILL_ETCD_ENDPOINTS \(--etcd-endpoints\): "10.0.0.2:2379" is not a URL of the form http\(s\):\/\/host:port/,
    ],
    [
      [],
      { TWILL_SUBNET_LEASE_RENEW_MARGIN: "0" },
      /TWILL_SUBNET_LEASE_RENEW_MARGIN \(--subnet-lease-renew-margin\): 0 is out of range/,
    ],
    [[], { FLANNELD_IP_MASQ: "yesplease" }, /FLANNELD_IP_MASQ \(--ip-masq\): "yesplease" is not a boolean/],
  ])("rejects %j %j naming the flag", (argv, env, message) => {
    expect(() => parseAgentOptions(argv, env)).toThrow(FlagError);
    expect(() => parseAgentOptions(argv, env)).toThrow(message);
  });
});

describe("durations", () => {
  it.each<[string, number | undefined]>([
    ["24h", 86400],
    ["90s", 90],
    ["1m30s", 90],
    ["1h0m5s", 3605],
    ["500ms", 0.5],
    ["86400", 86400],
    ["", undefined],
    ["5 minutes", undefined],
    ["h", undefined],
  ])("%j is %s seconds", (text, seconds) => {
    expect(parseDurationSeconds(text)).toBe(seconds);
  });
});

describe("flanneld's command lines and environments", () => {
  it.each([
    [["-v=3"], {}, "debug"],
    [["--v", "6"], {}, "trace"],
    [["-v=1"], {}, "info"],
    [["-v=6", "--log-level=warn"], {}, "warn"],
    [[], { FLANNELD_V: "2" }, "debug"],
  ])("maps klog's -v to a log level: %j %j", (argv, env, level) => {
    expect(parseAgentOptions(argv, env).logLevel).toBe(level);
  });

  it("accepts -vmodule and -log_backtrace_at and warns that they are ignored", () => {
    const o = parseAgentOptions(["-vmodule=main=2", "-log_backtrace_at=main.go:12"], noEnv);
    expect(o.warnings).toEqual([
      expect.stringMatching(/^--vmodule is a klog setting of flanneld; .*ignores it$/),
      expect.stringMatching(/^--log_backtrace_at is a klog setting/),
    ]);
  });

  it.each([
    [
      ["--kube-subnet-mgr"],
      {},
      /^--kube-subnet-mgr=true: twill has no Kubernetes subnet manager.*--etcd-endpoints/,
    ],
    [
      ["--kube-api-url", "https://10.0.0.1"],
      {},
      /^--kube-api-url=https:\/\/10\.0\.0\.1: twill has no Kubernetes/,
    ],
    [[], { FLANNELD_KUBE_SUBNET_MGR: "true" }, /^FLANNELD_KUBE_SUBNET_MGR=true: twill has no Kubernetes/],
    [
      [],
      { FLANNELD_NET_CONFIG_PATH: "/etc/x.json" },
      /^FLANNELD_NET_CONFIG_PATH=\/etc\/x\.json: .*twill config set/,
    ],
  ])("refuses a flanneld mode twill lacks, flag or variable alike: %j %j", (argv, env, message) => {
    expect(() => parseAgentOptions(argv, env)).toThrow(FlagError);
    expect(() => parseAgentOptions(argv, env)).toThrow(message);
  });

  it("ignores such a setting at flanneld's default, and unknown FLANNELD_ variables, with a warning naming each", () => {
    const o = parseAgentOptions(["--kube-subnet-mgr=false"], {
      FLANNELD_SET_NODE_NETWORK_UNAVAILABLE: "true",
      FLANNELD_IFACE_REGEXX: "eth.*",
      FLANNELD_IFACE: "eth0",
    });
    expect(o.iface).toEqual(["eth0"]);
    expect(o.warnings).toEqual([
      "--kube-subnet-mgr=false is flanneld's default for a mode twill does not have; ignored",
      "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE=true is flanneld's default for a mode twill does not have; ignored",
      "FLANNELD_IFACE_REGEXX is not a flanneld setting twill knows (a typo?); ignored",
    ]);
  });

  it("takes --iface-can-reach and --ip-blackhole-route, also from FLANNELD_ variables", () => {
    const o = parseAgentOptions([], {
      FLANNELD_IFACE_CAN_REACH: "198.18.0.9",
      FLANNELD_IP_BLACKHOLE_ROUTE: "true",
    });
    expect(o.ifaceCanReach).toBe("198.18.0.9");
    expect(o.ipBlackholeRoute).toBe(true);
    expect(() => parseAgentOptions(["--iface-can-reach=eth0"], noEnv)).toThrow(
      '--iface-can-reach: "eth0" is not an IP address (IPv4 or IPv6)',
    );
  });

  it("takes an IPv6 --iface-can-reach, in canonical form", () => {
    expect(parseAgentOptions(["--iface-can-reach=2001:DB8:0::9"], noEnv).ifaceCanReach).toBe("2001:db8::9");
    expect(parseAgentOptions([], { FLANNELD_IFACE_CAN_REACH: "fd00::1" }).ifaceCanReach).toBe("fd00::1");
  });

  it("takes IPv6 addresses for --iface as they are (selection compares them canonically)", () => {
    expect(parseAgentOptions(["--iface=2001:db8::5", "--iface=eth0"], noEnv).iface).toEqual([
      "2001:db8::5",
      "eth0",
    ]);
  });
});

describe("--public-ipv6", () => {
  it.each<[string[], Record<string, string>, string | undefined, string]>([
    [[], {}, undefined, "default"],
    [["--public-ipv6", "2001:db8::5"], {}, "2001:db8::5", "flag"],
    [["-public-ipv6=2001:DB8:0:0::5"], {}, "2001:db8::5", "flag"],
    [["--public-ipv6=fd00:1::9"], {}, "fd00:1::9", "flag"],
    [[], { FLANNELD_PUBLIC_IPV6: "2001:db8::7" }, "2001:db8::7", "FLANNELD_PUBLIC_IPV6"],
    [
      [],
      { TWILL_PUBLIC_IPV6: "2001:db8::8", FLANNELD_PUBLIC_IPV6: "2001:db8::7" },
      "2001:db8::8",
      "TWILL_PUBLIC_IPV6",
    ],
    [[], { FLANNELD_PUBLIC_IPV6: "" }, undefined, "FLANNELD_PUBLIC_IPV6"],
  ])("accepts %j %j as %s", (argv, env, expected, source) => {
    const o = parseAgentOptions(argv, env);
    expect(o.publicIpv6).toBe(expected);
    expect(o.sources.get("public-ipv6")).toBe(source);
    expect(o.warnings).toEqual([]);
  });

  it.each<[string[], Record<string, string>, string]>([
    [["--public-ipv6", "198.18.0.5"], {}, '--public-ipv6: "198.18.0.5" is not an IPv6 address'],
    [["--public-ipv6", "2001:db8::g"], {}, '--public-ipv6: "2001:db8::g" is not an IPv6 address'],
    [["--public-ipv6", "fe80::1%eth0"], {}, '--public-ipv6: "fe80::1%eth0" is not an IPv6 address'],
    [["--public-ipv6", "2001:db8::/64"], {}, '--public-ipv6: "2001:db8::/64" is not an IPv6 address'],
    [["--public-ipv6", "fe80::1"], {}, '--public-ipv6: "fe80::1" is a link-local address (fe80::/10)'],
    [["--public-ipv6", "::1"], {}, '--public-ipv6: "::1" is the loopback address'],
    [["--public-ipv6", "::"], {}, '--public-ipv6: "::" is the unspecified address'],
    [["--public-ipv6", "ff02::1"], {}, '--public-ipv6: "ff02::1" is a multicast address'],
    [
      ["--public-ipv6", "::ffff:198.18.0.5"],
      {},
      '--public-ipv6: "::ffff:198.18.0.5" is an IPv4-mapped address',
    ],
    [["--public-ipv6=2001:db8::1", "--public-ipv6=2001:db8::2"], {}, "--public-ipv6: given more than once"],
    [
      [],
      { FLANNELD_PUBLIC_IPV6: "fe80::1" },
      'FLANNELD_PUBLIC_IPV6 (--public-ipv6): "fe80::1" is a link-local',
    ],
    [[], { TWILL_PUBLIC_IPV6: "nope" }, 'TWILL_PUBLIC_IPV6 (--public-ipv6): "nope" is not an IPv6 address'],
  ])("rejects %j %j naming the flag and the value", (argv, env, message) => {
    expect(() => parseAgentOptions(argv, env)).toThrow(FlagError);
    expect(() => parseAgentOptions(argv, env)).toThrow(message);
  });
});
