// The cluster-wide network configuration stored at <prefix>/config, in flannel's JSON format.
// Parsing is pure: text in, a validated NetworkConfig (or a ConfigError naming the field) out.
import type { IPv4, Subnet } from "../ip/ipv4.js";

export type BackendType = "vxlan" | "host-gw";

export interface VxlanBackendConfig {
  readonly type: "vxlan";
  /** VXLAN network identifier, also the device suffix (flannel.<VNI>). Default 1. */
  readonly vni: number;
  /** UDP destination port. Default 8472 (flannel's 0 means the kernel default, 8472). */
  readonly port: number;
  /** Base MTU before the 50-byte VXLAN overhead; undefined = the external interface's MTU. */
  readonly mtu: number | undefined;
  readonly gbp: boolean;
  readonly learning: boolean;
  readonly directRouting: boolean;
}

export interface HostGwBackendConfig {
  readonly type: "host-gw";
}

export type BackendConfig = VxlanBackendConfig | HostGwBackendConfig;

export interface NetworkConfig {
  /** The cluster network (host bits dropped), e.g. 10.244.0.0/16. */
  readonly network: Subnet;
  /** Prefix length of each node's lease, e.g. 24. */
  readonly subnetLen: number;
  /** First and last subnet addresses a lease may take (inclusive, aligned to subnetLen). */
  readonly subnetMin: IPv4;
  readonly subnetMax: IPv4;
  readonly backend: BackendConfig;
}

/** A config problem; `field` is the JSON field at fault (e.g. "SubnetLen", "Backend.VNI"). */
export class ConfigError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = "ConfigError";
  }
}
