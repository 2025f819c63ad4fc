// Every backend twill has. Adding one is a folder under src/backends/ and a line here.
import type { BackendPlugin } from "./backend.js";
import { hostGwBackend } from "./host-gw/index.js";
import { vxlanBackend } from "./vxlan/index.js";

export const BACKENDS: readonly BackendPlugin[] = [vxlanBackend, hostGwBackend];

/** The backend a network config's Backend.Type names (case-insensitive, as flannel reads it). */
export function backendForConfig(type: string): BackendPlugin | undefined {
  const wanted = type.toLowerCase();
  return BACKENDS.find((backend) => backend.type === wanted);
}

/** The backend of a peer's lease: its BackendType exactly, as flannel's backends compare it. */
export function backendForLease(type: string | undefined): BackendPlugin | undefined {
  return BACKENDS.find((backend) => backend.type === type);
}

/** The backend used when the network config has no Backend at all. */
export const DEFAULT_BACKEND = vxlanBackend;
