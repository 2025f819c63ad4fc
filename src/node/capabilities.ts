// What the agent must be allowed to do, checked before it publishes or writes anything: a node that
// leases a subnet and then cannot create its device black-holes every peer's traffic to it.
import { readFile } from "node:fs/promises";

/** A capability the agent needs, and what it needs it for. */
export interface NeededCapability {
  readonly name: string;
  readonly bit: number;
  readonly why: string;
}

const NET_ADMIN: NeededCapability = {
  name: "CAP_NET_ADMIN",
  bit: 12,
  why: "create the tunnel device and bridge, and program routes, neighbours and FDB entries",
};
const NET_RAW: NeededCapability = {
  name: "CAP_NET_RAW",
  bit: 13,
  why: "run iptables for the masquerade and forward rules",
};

/** The capabilities the agent needs with these options. */
export function neededCapabilities(options: {
  readonly ipMasq: boolean;
  readonly iptablesForwardRules: boolean;
}): NeededCapability[] {
  return options.ipMasq || options.iptablesForwardRules ? [NET_ADMIN, NET_RAW] : [NET_ADMIN];
}

/** The effective capability set from a /proc/<pid>/status text; undefined when it has no CapEff line. */
export function parseEffectiveCapabilities(status: string): bigint | undefined {
  const match = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status);
  return match?.[1] === undefined ? undefined : BigInt(`0x${match[1]}`);
}

/** The needed capabilities missing from `effective`. */
export function missingCapabilities(
  effective: bigint,
  needed: readonly NeededCapability[],
): NeededCapability[] {
  return needed.filter((cap) => (effective & (1n << BigInt(cap.bit))) === 0n);
}

/** One line for the operator: what is missing, what for, and how to grant it. */
export function missingCapabilitiesMessage(missing: readonly NeededCapability[]): string {
  const names = missing.map((cap) => cap.name);
  const what = missing.map((cap) => `${cap.name} to ${cap.why}`).join("; ");
  const bare = names.map((name) => name.replace(/^CAP_/, "")).join(", ");
  return (
    `missing ${names.join(" and ")}: the agent needs ${what}. ` +
    `Nothing was published or written. Run it as root, or grant ${names.join(", ")} ` +
    `(Kubernetes: securityContext.capabilities.add: [${bare}]; systemd: AmbientCapabilities=${names.join(" ")})`
  );
}

/** The capabilities this process is missing (none when its status cannot be read: then the kernel says). */
export async function checkOwnCapabilities(
  needed: readonly NeededCapability[],
  statusPath = "/proc/self/status",
): Promise<NeededCapability[]> {
  let effective: bigint | undefined;
  try {
    effective = parseEffectiveCapabilities(await readFile(statusPath, "utf8"));
  } catch {
    return [];
  }
  return effective === undefined ? [] : missingCapabilities(effective, needed);
}
