// The wireguard backend's options in the network config, with flannel's names, defaults and meaning.
import {
  JsonFieldError,
  optionalInt,
  optionalString,
  resolveFields,
  type JsonObject,
} from "../../config/json-fields.js";
import { decodeKey } from "./keys.js";

export type WireGuardMode = "separate" | "auto" | "ipv4" | "ipv6";
const MODES: readonly WireGuardMode[] = ["separate", "auto", "ipv4", "ipv6"];

export interface WireGuardOptions {
  readonly listenPort: number;
  /** The port of flannel-wg-v6, the IPv6 device of Mode separate. */
  readonly listenPortV6: number;
  /** Base MTU before the 80-byte WireGuard overhead; undefined = the external interface's MTU. */
  readonly mtu: number | undefined;
  /** Pre-shared key (base64), on every peer; undefined = none. */
  readonly psk: string | undefined;
  /** Seconds; 0 = off. */
  readonly persistentKeepalive: number;
  /**
   * How the families are carried: "separate", a device per family (flannel-wg over the IPv4
   * underlay, flannel-wg-v6 over the IPv6 one); "auto", "ipv4", "ipv6": one device, flannel-wg, for
   * both, its peers reached over the IPv4 or IPv6 underlay (auto: chosen per peer).
   */
  readonly mode: WireGuardMode;
}

export const WIREGUARD_DEFAULT_PORT = 51820;
export const WIREGUARD_DEFAULT_PORT_V6 = 51821;
/** Outer IPv6 header (40, the larger of the two) + UDP 8 + WireGuard's 32 (type, index, nonce, tag): device MTU = MTU − 80. */
export const WIREGUARD_OVERHEAD = 80;
/** The kernel refuses a device MTU below 68. */
export const WIREGUARD_MIN_MTU = 68 + WIREGUARD_OVERHEAD;
/** WireGuard's persistent keepalive is a 16-bit number of seconds. */
const MAX_KEEPALIVE = 65535;

const FIELDS = [
  "Type",
  "ListenPort",
  "ListenPortV6",
  "MTU",
  "PSK",
  "PersistentKeepaliveInterval",
  "Mode",
] as const;

function port(value: unknown, field: string, fallback: number): number {
  const given = optionalInt(value, field) ?? fallback;
  if (given < 1 || given > 65535) {
    throw new JsonFieldError(field, `${field} ${given}: must be from 1 to 65535 (default ${fallback})`);
  }
  return given;
}

/** flannel's wireguard Backend keys, validated; errors name the field ("Backend.PSK"). */
export function parseWireGuardOptions(raw: JsonObject, warnings: string[]): WireGuardOptions {
  const { values, warnings: fieldWarnings } = resolveFields(raw, FIELDS, "Backend.");
  warnings.push(...fieldWarnings);
  const listenPort = port(values.get("ListenPort"), "Backend.ListenPort", WIREGUARD_DEFAULT_PORT);
  const listenPortV6 = port(values.get("ListenPortV6"), "Backend.ListenPortV6", WIREGUARD_DEFAULT_PORT_V6);
  const mtu = optionalInt(values.get("MTU"), "Backend.MTU") ?? 0;
  if (mtu !== 0 && (mtu < WIREGUARD_MIN_MTU || mtu > 65535)) {
    throw new JsonFieldError(
      "Backend.MTU",
      `Backend.MTU ${mtu}: MTU must be from ${WIREGUARD_MIN_MTU} to 65535, or 0 for the interface's MTU ` +
        `(flannel-wg gets MTU - ${WIREGUARD_OVERHEAD}, and the kernel needs at least 68)`,
    );
  }
  const pskText = optionalString(values.get("PSK"), "Backend.PSK", "a base64 key (wg genpsk)");
  let psk: string | undefined;
  if (pskText !== undefined && pskText !== "") {
    const decoded = decodeKey(pskText);
    if (typeof decoded === "string") {
      // Not `decoded`: it quotes the text, and a nearly right PSK is a secret (this goes to status and logs).
      throw new JsonFieldError(
        "Backend.PSK",
        "Backend.PSK: not a pre-shared key (44 characters of base64; the value is not shown); make one with wg genpsk",
      );
    }
    psk = decoded.toString("base64");
  }
  const keepalive =
    optionalInt(values.get("PersistentKeepaliveInterval"), "Backend.PersistentKeepaliveInterval") ?? 0;
  if (keepalive < 0 || keepalive > MAX_KEEPALIVE) {
    throw new JsonFieldError(
      "Backend.PersistentKeepaliveInterval",
      `Backend.PersistentKeepaliveInterval ${keepalive}: seconds from 0 (off) to ${MAX_KEEPALIVE}`,
    );
  }
  const modeText = optionalString(values.get("Mode"), "Backend.Mode") ?? "separate";
  const mode = MODES.find((m) => m === modeText);
  if (mode === undefined) {
    throw new JsonFieldError(
      "Backend.Mode",
      `Backend.Mode "${modeText}": no valid Mode; one of ${MODES.map((m) => `"${m}"`).join(", ")} (default "separate")`,
    );
  }
  return {
    listenPort,
    listenPortV6,
    mtu: mtu === 0 ? undefined : mtu,
    psk,
    persistentKeepalive: keepalive,
    mode,
  };
}
