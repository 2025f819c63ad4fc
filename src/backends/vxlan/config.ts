// The vxlan backend's options in the network config, with flannel's names and defaults.
import {
  JsonFieldError,
  optionalBoolean,
  optionalInt,
  resolveFields,
  type JsonObject,
} from "../../config/json-fields.js";

export interface VxlanOptions {
  /** VXLAN network identifier, also the device suffix (flannel.<VNI>). Default 1. */
  readonly vni: number;
  /** UDP destination port. Default 8472 (flannel's 0 means the kernel default, 8472). */
  readonly port: number;
  /** Base MTU before the 50-byte VXLAN overhead; undefined = the external interface's MTU. */
  readonly mtu: number | undefined;
  readonly gbp: boolean;
  readonly learning: boolean;
  /** Peers on the same L2 segment get a plain route instead of the tunnel. */
  readonly directRouting: boolean;
}

/** Linux's legacy VXLAN port, which the kernel uses when flannel passes Port 0. */
export const VXLAN_DEFAULT_PORT = 8472;
export const VXLAN_DEFAULT_VNI = 1;
/** Largest VXLAN network identifier (24 bits). */
export const VXLAN_MAX_VNI = 0xffffff;
/** Bytes of VXLAN encapsulation (outer IPv4 + UDP + VXLAN + inner Ethernet); device MTU = MTU - 50. */
export const VXLAN_OVERHEAD = 50;
/** Over an IPv6 underlay: a 40-byte outer IPv6 header instead of 20. */
export const VXLAN_OVERHEAD_IPV6 = 70;
/**
 * Smallest accepted Backend.MTU: the VXLAN device gets MTU - 50, and the kernel refuses a device MTU
 * below 68 (the IPv4 minimum), so a smaller value could only fail later with an opaque netlink error.
 */
export const VXLAN_MIN_MTU = 68 + VXLAN_OVERHEAD;
export const VXLAN_MAX_MTU = 65535;

const FIELDS = ["Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting"] as const;

export const DEFAULT_VXLAN_OPTIONS: VxlanOptions = {
  vni: VXLAN_DEFAULT_VNI,
  port: VXLAN_DEFAULT_PORT,
  mtu: undefined,
  gbp: false,
  learning: false,
  directRouting: false,
};

/** flannel's vxlan Backend keys, validated; errors name the field ("Backend.VNI"). */
export function parseVxlanOptions(raw: JsonObject, warnings: string[]): VxlanOptions {
  const { values, warnings: fieldWarnings } = resolveFields(raw, FIELDS, "Backend.");
  warnings.push(...fieldWarnings);

  const vni = optionalInt(values.get("VNI"), "Backend.VNI") ?? VXLAN_DEFAULT_VNI;
  if (vni < 1 || vni > VXLAN_MAX_VNI) {
    throw new JsonFieldError("Backend.VNI", `Backend.VNI ${vni}: VNI must be from 1 to ${VXLAN_MAX_VNI}`);
  }
  if (vni > 0xffff) {
    // flannel decodes BackendData's VNI as a 16-bit number: its nodes could not read this lease.
    warnings.push(`Backend.VNI ${vni} is above 65535: flanneld nodes in the same cluster cannot read it`);
  }
  const port = optionalInt(values.get("Port"), "Backend.Port") ?? 0;
  if (port < 0 || port > 65535) {
    throw new JsonFieldError(
      "Backend.Port",
      `Backend.Port ${port}: Port must be from 0 to 65535 (0 means ${VXLAN_DEFAULT_PORT})`,
    );
  }
  const mtu = optionalInt(values.get("MTU"), "Backend.MTU") ?? 0;
  if (mtu !== 0 && (mtu < VXLAN_MIN_MTU || mtu > VXLAN_MAX_MTU)) {
    throw new JsonFieldError(
      "Backend.MTU",
      `Backend.MTU ${mtu}: MTU must be from ${VXLAN_MIN_MTU} to ${VXLAN_MAX_MTU}, or 0 for the interface's MTU ` +
        `(the VXLAN device gets MTU - ${VXLAN_OVERHEAD}, and the kernel needs at least 68)`,
    );
  }
  return {
    vni,
    port: port === 0 ? VXLAN_DEFAULT_PORT : port,
    mtu: mtu === 0 ? undefined : mtu,
    gbp: optionalBoolean(values.get("GBP"), "Backend.GBP") ?? false,
    learning: optionalBoolean(values.get("Learning"), "Backend.Learning") ?? false,
    directRouting: optionalBoolean(values.get("DirectRouting"), "Backend.DirectRouting") ?? false,
  };
}
