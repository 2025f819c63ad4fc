// The conflist with IPv6: one host-local range set per family (as flannel's CNI plugin builds them from
// subnet.env), the routes of each family via its gateway; IPv6-only without any IPv4; IPv4-only unchanged.
import { describe, expect, it } from "vitest";
import { conflistFromSubnetEnv, formatConflist, twillConflist } from "../../src/cni/conflist.js";
import { parseCidr } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";
import { formatSubnetEnv } from "../../src/node/subnet-env.js";

const V4 = { network: parseCidr("10.244.0.0/16"), subnet: parseCidr("10.244.5.0/24") };
const V6 = { ipv6Network: parseCidr6("fd00:10:244::/56"), ipv6Subnet: parseCidr6("fd00:10:244:5::/64") };
const NO_V4 = { network: { ip: 0, prefixLen: 0 }, subnet: { ip: 0, prefixLen: 0 } };

const GOLDEN_DUAL_STACK = `{
  "cniVersion": "1.0.0",
  "name": "twill",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
      "mtu": 1450,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [
            {
              "subnet": "10.244.5.0/24",
              "gateway": "10.244.5.1"
            }
          ],
          [
            {
              "subnet": "fd00:10:244:5::/64",
              "gateway": "fd00:10:244:5::1"
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
          },
          {
            "dst": "fd00:10:244::/56",
            "gw": "fd00:10:244:5::1"
          },
          {
            "dst": "::/0",
            "gw": "fd00:10:244:5::1"
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

const GOLDEN_IPV6_ONLY = `{
  "cniVersion": "1.0.0",
  "name": "twill",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": true,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [
            {
              "subnet": "2001:db8:42:7::/64",
              "gateway": "2001:db8:42:7::1"
            }
          ]
        ],
        "routes": [
          {
            "dst": "2001:db8:42::/56",
            "gw": "2001:db8:42:7::1"
          },
          {
            "dst": "::/0",
            "gw": "2001:db8:42:7::1"
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

// The IPv4-only conflist as twill wrote it before IPv6 (cni-config.test.ts's golden): not a byte changes.
const GOLDEN_IPV4_ONLY = `{
  "cniVersion": "1.0.0",
  "name": "twill",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
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

const IPV6_ONLY = {
  ...NO_V4,
  ipv6Network: parseCidr6("2001:db8:42::/56"),
  ipv6Subnet: parseCidr6("2001:db8:42:7::/64"),
  mtu: 1500,
  ipMasq: false,
};

describe("twillConflist with IPv6", () => {
  it("golden, dual-stack: an IPv4 and an IPv6 range set, and both families' routes via their gateways", () => {
    const conf = twillConflist({ ...V4, ...V6, mtu: 1450, ipMasq: true, bridge: "cni0" });
    expect(formatConflist(conf)).toBe(GOLDEN_DUAL_STACK);
  });

  it("golden, IPv6-only (IPv4 subnet 0.0.0.0/0): the IPv6 range and routes only", () => {
    expect(formatConflist(twillConflist({ ...IPV6_ONLY, bridge: "cni0" }))).toBe(GOLDEN_IPV6_ONLY);
  });

  it("IPv4-only is byte-identical to the conflist twill wrote before IPv6", () => {
    const conf = twillConflist({ ...V4, mtu: 1450, ipMasq: true, bridge: "cni0" });
    expect(formatConflist(conf)).toBe(GOLDEN_IPV4_ONLY);
    // IPv6 fields given as undefined (SubnetEnv of an IPv4-only node) change nothing either.
    const undef = twillConflist({
      ...V4,
      ipv6Network: undefined,
      ipv6Subnet: undefined,
      mtu: 1450,
      ipMasq: true,
      bridge: "cni0",
    });
    expect(formatConflist(undef)).toBe(GOLDEN_IPV4_ONLY);
  });

  it("the IPv6 gateway is the subnet's first host, also for other prefix lengths", () => {
    const conf = twillConflist({
      ...V4,
      ipv6Network: parseCidr6("2001:db8::/48"),
      ipv6Subnet: parseCidr6("2001:db8:0:ab00::/56"),
      mtu: 1450,
      ipMasq: true,
      bridge: "cni0",
    });
    expect(JSON.stringify(conf)).toContain(
      '[{"subnet":"2001:db8:0:ab00::/56","gateway":"2001:db8:0:ab00::1"}]],"routes":',
    );
    expect(JSON.stringify(conf)).toContain(
      '{"dst":"2001:db8::/48","gw":"2001:db8:0:ab00::1"},{"dst":"::/0","gw":"2001:db8:0:ab00::1"}]',
    );
  });

  it("refuses half an IPv6 pair, and a lease with neither family", () => {
    const base = { ...V4, mtu: 1450, ipMasq: true, bridge: "cni0" };
    expect(() => twillConflist({ ...base, ipv6Network: V6.ipv6Network })).toThrow(
      "the CNI config needs both the IPv6 network and the node's IPv6 subnet (got only the network)",
    );
    expect(() => twillConflist({ ...base, ipv6Subnet: V6.ipv6Subnet })).toThrow(/got only the subnet/);
    expect(() => twillConflist({ ...base, ...NO_V4 })).toThrow(
      "the CNI config needs an IPv4 or an IPv6 subnet; the lease has neither",
    );
  });
});

describe("conflistFromSubnetEnv with IPv6", () => {
  it("reads a dual-stack subnet.env (flannel's bytes) into the dual-stack conflist", () => {
    const env =
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n" +
      "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n" +
      "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    expect(formatConflist(conflistFromSubnetEnv(env, { bridge: "cni0" }))).toBe(GOLDEN_DUAL_STACK);
  });

  it("reads an IPv6-only subnet.env: no FLANNEL_NETWORK or FLANNEL_SUBNET is needed", () => {
    const env = formatSubnetEnv(IPV6_ONLY);
    expect(env).not.toContain("FLANNEL_SUBNET=");
    expect(formatConflist(conflistFromSubnetEnv(env, { bridge: "cni0" }))).toBe(GOLDEN_IPV6_ONLY);
  });

  it("is the same as twillConflist for what formatSubnetEnv writes, in each family mix", () => {
    for (const lease of [
      { ...V4, ...V6, mtu: 1450, ipMasq: true },
      { ...V4, mtu: 1450, ipMasq: false },
      IPV6_ONLY,
    ]) {
      const options = { bridge: "cni0", ipamDataDir: "/tmp/x", name: "pods", cniVersion: "0.4.0" };
      expect(formatConflist(conflistFromSubnetEnv(formatSubnetEnv(lease), options))).toBe(
        formatConflist(twillConflist({ ...lease, ...options })),
      );
    }
  });

  it.each([
    [
      "an empty file",
      "",
      "FLANNEL_NETWORK and FLANNEL_SUBNET (or FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET), FLANNEL_MTU, FLANNEL_IPMASQ",
    ],
    [
      "neither family",
      "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
      "FLANNEL_NETWORK and FLANNEL_SUBNET (or FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET)",
    ],
    [
      "IPv4 without its subnet",
      "FLANNEL_NETWORK=10.244.0.0/16\n",
      "FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ",
    ],
    [
      "IPv6 without its network",
      "FLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
      "FLANNEL_IPV6_NETWORK",
    ],
    [
      "IPv6 without its subnet",
      "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_MTU=1450\n",
      "FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ",
    ],
    [
      "dual-stack, the IPv4 subnet unreadable",
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=bogus\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\n" +
        "FLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
      "FLANNEL_SUBNET",
    ],
    [
      "dual-stack, the IPv6 network unreadable",
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_IPV6_NETWORK=fd00::/56,fd01::/56\n" +
        "FLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
      "FLANNEL_IPV6_NETWORK",
    ],
  ])("names what is missing: %s", (_name, env, missing) => {
    expect(() => conflistFromSubnetEnv(env, { bridge: "cni0" })).toThrow(`subnet.env lacks ${missing}`);
    // The whole message: nothing else is named.
    let message = "";
    try {
      conflistFromSubnetEnv(env, { bridge: "cni0" });
    } catch (error) {
      message = error instanceof Error ? error.message : String(error);
    }
    expect(message).toBe(`subnet.env lacks ${missing}`);
  });
});
