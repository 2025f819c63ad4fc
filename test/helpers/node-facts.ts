// Node fixtures for backend unit tests: node 1 at 198.18.0.1 / 2001:db8:18::1 on eth0, with
// 10.244.1.0/24 in 10.244.0.0/16 and fd00:10:244:1::/64 in fd00:10:244::/56, as each family allows.
import type { NodeFacts } from "../../src/backends/backend.js";
import { parsePrefix } from "../../src/ip/address.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { parseCidr6 } from "../../src/ip/ipv6.js";

export const EXTERNAL_DUAL = {
  name: "eth0",
  index: 2,
  mtu: 1500,
  ifaceIp: parseIPv4("198.18.0.1"),
  publicIp: parseIPv4("198.18.0.1"),
  ifaceIpv6: "2001:db8:18::1",
  publicIpv6: "2001:db8:18::1",
};

export const DUAL_NODE: NodeFacts = {
  subnet: parseCidr("10.244.1.0/24"),
  network: parseCidr("10.244.0.0/16"),
  ipv6Subnet: parseCidr6("fd00:10:244:1::/64"),
  ipv6Network: parseCidr6("fd00:10:244::/56"),
  external: EXTERNAL_DUAL,
  connected: [parsePrefix("198.18.0.0/24"), parsePrefix("2001:db8:18::/64")],
};

export const V4_NODE: NodeFacts = {
  subnet: parseCidr("10.244.1.0/24"),
  network: parseCidr("10.244.0.0/16"),
  external: { ...EXTERNAL_DUAL, ifaceIpv6: undefined, publicIpv6: undefined },
  connected: [parsePrefix("198.18.0.0/24")],
};

/** IPv6-only: flannel's empty 0.0.0.0/0 for IPv4. */
export const V6_NODE: NodeFacts = {
  subnet: parseCidr("0.0.0.0/0"),
  network: parseCidr("0.0.0.0/0"),
  ipv6Subnet: parseCidr6("fd00:10:244:1::/64"),
  ipv6Network: parseCidr6("fd00:10:244::/56"),
  external: { ...EXTERNAL_DUAL, ifaceIp: 0, publicIp: 0 },
  connected: [parsePrefix("2001:db8:18::/64")],
};
