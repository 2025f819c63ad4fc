// Every backend twill has. Adding one is a folder under src/backends/ and a line here.
import type { BackendPlugin } from "./backend.js";
import { hostGwBackend } from "./host-gw/index.js";
import { udpBackend } from "./udp/index.js";
import { vxlanBackend } from "./vxlan/index.js";
import { wireguardBackend } from "./wireguard/index.js";

export const BACKENDS: readonly BackendPlugin[] = [vxlanBackend, hostGwBackend, udpBackend, wireguardBackend];

/** The backend a network config's Backend.Type names (case-insensitive, as flannel reads it). */
export function backendForConfig(type: string): BackendPlugin | undefined {
  const wanted = type.toLowerCase();
  return BACKENDS.find((backend) => backend.type === wanted);
}

/** The BackendType a backend's leases carry: its type, or none for udp (flannel's udp leases have none). */
export function leaseTypeOf(backend: BackendPlugin): string | undefined {
  return backend.leaseType === undefined ? backend.type : (backend.leaseType ?? undefined);
}

/**
 * The backend of a peer's lease: its BackendType exactly, as flannel's backends compare it. A lease
 * without one is udp's (flannel's udp backend publishes none).
 */
export function backendForLease(type: string | undefined): BackendPlugin | undefined {
  return BACKENDS.find((backend) => leaseTypeOf(backend) === type);
}

/** The backend used when the network config has no Backend at all: udp, as flanneld decides. */
export const DEFAULT_BACKEND = udpBackend;

/**
 * The peer view's parsePeerData hook: the backend of the lease's type parses its BackendData (undefined
 * when twill has no such backend). One function for the process's life, so the view's cache holds.
 */
export function parsePeerDataByBackend(attrs: {
  readonly backendType: string | undefined;
  readonly backendData: string | undefined;
  readonly backendV6Data?: string | undefined;
}): object | undefined {
  return backendForLease(attrs.backendType)?.parsePeerData(attrs.backendData, attrs.backendV6Data);
}

/** The peer view's identityOf hook: what a lease's parsed data claims that no two nodes may share. */
export function identityByBackend(lease: {
  readonly attrs: { readonly backendType: string | undefined };
  readonly peerData?: object | undefined;
}): string | undefined {
  return lease.peerData === undefined
    ? undefined
    : backendForLease(lease.attrs.backendType)?.identityOf?.(lease.peerData);
}
