// The wireguard backend's Mode, as flannel has it (pure): which WireGuard devices a node runs for the
// address families its network has, what each carries, and over which underlay family each peer is
// reached.
//
// - "separate" (the default): flannel-wg (ListenPort) carries the IPv4 subnets to the peers' PublicIP,
//   flannel-wg-v6 (ListenPortV6) the IPv6 subnets to their PublicIPv6; both with the node's one key.
// - "auto", "ipv4", "ipv6": flannel-wg alone carries both families (a peer's allowed IPs are both its
//   subnets), to the peer's PublicIP ("ipv4"), its PublicIPv6 ("ipv6"), or, in "auto", the one
//   flannel's selectMode picks.
import { JsonFieldError } from "../../config/json-fields.js";
import type { Family } from "../../ip/address.js";
import { parseIPv6 } from "../../ip/ipv6.js";
import type { WireGuardMode, WireGuardOptions } from "./config.js";

/** flannel's device names: the IPv4 (and single-tunnel) device, and Mode separate's IPv6 device. */
export const WIREGUARD_DEVICE = "flannel-wg";
export const WIREGUARD_DEVICE_V6 = "flannel-wg-v6";

/** One WireGuard device of this node. */
export interface TunnelDevice {
  readonly name: string;
  readonly listenPort: number;
  /** The families whose subnets it carries: its own addresses, the networks' routes, peers' allowed IPs. */
  readonly carries: readonly Family[];
  /** The underlay family its peers' endpoints are of; "auto": chosen per peer (Mode auto). */
  readonly endpoints: Family | "auto";
}

export interface Families {
  readonly ipv4: boolean;
  readonly ipv6: boolean;
}

/**
 * The devices a node runs for `mode` with the network's families (EnableIPv4, EnableIPv6). Throws a
 * JsonFieldError naming Backend.Mode when the mode needs a family the network does not have.
 */
export function tunnelDevices(
  options: Pick<WireGuardOptions, "mode" | "listenPort" | "listenPortV6">,
  families: Families,
): TunnelDevice[] {
  const { mode, listenPort, listenPortV6 } = options;
  const carries: Family[] = [...(families.ipv4 ? [4 as const] : []), ...(families.ipv6 ? [6 as const] : [])];
  if (mode === "separate") {
    return [
      ...(families.ipv4
        ? [{ name: WIREGUARD_DEVICE, listenPort, carries: [4 as const], endpoints: 4 as const }]
        : []),
      ...(families.ipv6
        ? [
            {
              name: WIREGUARD_DEVICE_V6,
              listenPort: listenPortV6,
              carries: [6 as const],
              endpoints: 6 as const,
            },
          ]
        : []),
    ];
  }
  if (mode === "ipv4" && !families.ipv4) {
    throw new JsonFieldError(
      "Backend.Mode",
      'Backend.Mode "ipv4": peers are reached at their IPv4 PublicIP, but the network has no IPv4 ' +
        '(EnableIPv4 is false); use "separate", "auto" or "ipv6"',
    );
  }
  if (mode === "ipv6" && !families.ipv6) {
    throw new JsonFieldError(
      "Backend.Mode",
      'Backend.Mode "ipv6": peers are reached at their PublicIPv6, which nodes publish only with ' +
        'EnableIPv6; set EnableIPv6 (and IPv6Network), or use "separate", "auto" or "ipv4"',
    );
  }
  return [{ name: WIREGUARD_DEVICE, listenPort, carries, endpoints: modeEndpoints(mode) }];
}

function modeEndpoints(mode: Exclude<WireGuardMode, "separate">): Family | "auto" {
  if (mode === "ipv4") return 4;
  if (mode === "ipv6") return 6;
  return "auto";
}

/** The device that carries `family`'s subnets, if any. */
export function deviceFor(devices: readonly TunnelDevice[], family: Family): TunnelDevice | undefined {
  return devices.find((device) => device.carries.includes(family));
}

/** flannel's IP4.IsPrivate: 10/8, 172.16/12, 192.168/16. */
export function isPrivateIPv4(ip: number): boolean {
  const a = ip >>> 24;
  const b = (ip >>> 16) & 0xff;
  return a === 10 || (a === 172 && (b & 0xf0) === 16) || (a === 192 && b === 168);
}

/** flannel's IP6.IsPrivate: a unique local address, fc00::/7. */
export function isPrivateIPv6(text: string): boolean {
  return parseIPv6(text) >> 121n === 0x7en;
}

/** What Mode auto weighs for one peer: the public addresses of both ends (0 / undefined: none). */
export interface EndpointChoice {
  readonly peerIPv4: number;
  readonly peerIPv6: string | undefined;
  readonly localIPv4: number;
  readonly localIPv6: string | undefined;
}

/**
 * Mode auto's underlay family for a peer, as flannel's selectMode chooses it: IPv4 when the peer has no
 * IPv6; IPv4 when the peer's IPv4 is public and this node has IPv4; IPv6 when both ends' IPv6 are
 * public (not fc00::/7); else IPv4. Unlike flannel, a side without an address of a family is never
 * sent to over that family (flannel would aim an IPv6-only peer at 0.0.0.0): undefined when the two
 * have no family in common.
 */
export function autoEndpointFamily(choice: EndpointChoice): Family | undefined {
  const v4 = choice.peerIPv4 !== 0 && choice.localIPv4 !== 0;
  const v6 = choice.peerIPv6 !== undefined && choice.localIPv6 !== undefined;
  if (!v6) return v4 ? 4 : undefined;
  if (!v4) return 6;
  if (!isPrivateIPv4(choice.peerIPv4)) return 4;
  if (!isPrivateIPv6(choice.peerIPv6) && !isPrivateIPv6(choice.localIPv6)) return 6;
  return 4;
}

/** A WireGuard endpoint: "198.18.0.2:51820", "[2001:db8::2]:51821". */
export function endpointText(family: Family, address: string, port: number): string {
  return family === 4 ? `${address}:${port}` : `[${address}]:${port}`;
}
