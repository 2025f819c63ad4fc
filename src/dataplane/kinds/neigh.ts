// Neighbour (ARP/NDP) entries. Key: device and address. Owned: PERMANENT entries on one of the
// backend's own devices; the kernel's own resolution entries (REACHABLE, STALE, …) are never ours.
import { NUD_PERMANENT, type Neighbour } from "../objects.js";
import type { Kind, PlannedOp } from "./kind.js";

const STATE_NAMES: readonly (readonly [number, string])[] = [
  [0x01, "INCOMPLETE"],
  [0x02, "REACHABLE"],
  [0x04, "STALE"],
  [0x08, "DELAY"],
  [0x10, "PROBE"],
  [0x20, "FAILED"],
  [0x40, "NOARP"],
  [0x80, "PERMANENT"],
];

/** NUD_* bits as iproute2 names them ("REACHABLE", "NOARP,PERMANENT"). */
export function nudText(state: number): string {
  const names = STATE_NAMES.filter(([bit]) => (state & bit) !== 0).map(([, name]) => name);
  return names.length === 0 ? "NONE" : names.join(",");
}

const isPermanent = (entry: Neighbour): boolean => (entry.state & NUD_PERMANENT) !== 0;

export const neighKind: Kind<Neighbour> = {
  name: "neigh",
  key: (entry) => `${entry.dev} ${entry.dst}`,
  cached: () => true,
  owned: (entry, scope) => scope.devices.has(entry.dev) && isPermanent(entry),

  plan(want, here, scope) {
    const ops: PlannedOp[] = [];
    if (want === undefined) {
      for (const entry of here) {
        if (scope.devices.has(entry.dev) && isPermanent(entry)) {
          ops.push({ action: "delete", object: entry, reason: "stale: no such peer" });
        }
      }
      return ops;
    }
    const entry = here[0];
    let reason: string | undefined;
    if (entry === undefined) reason = "missing";
    else if (!isPermanent(entry)) reason = `not permanent (${nudText(entry.state)})`;
    else if (entry.lladdr !== want.lladdr)
      reason = `differs: lladdr ${entry.lladdr ?? "none"} → ${want.lladdr ?? "none"}`;
    if (reason !== undefined) ops.push({ action: "replace", object: want, reason });
    return ops;
  },

  // One entry per device and address: a replace sets it, a delete removes it.
  afterWrite: (op) => (op.action === "replace" ? [op.object] : []),

  describe: (entry) =>
    `neigh ${entry.dst} dev ${entry.dev}${entry.lladdr === undefined ? "" : ` lladdr ${entry.lladdr}`}`,
};
