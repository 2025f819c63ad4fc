// FDB entries of VXLAN devices ("frames for this MAC go to that VTEP"). Key: device and MAC. The view
// keeps remote entries only: entries without a destination are the device's own, and NTF_MASTER
// entries belong to a bridge. Owned: PERMANENT remote entries on one of the backend's devices.
import { NTF_MASTER, NUD_PERMANENT, type FdbEntry } from "../objects.js";
import type { Kind, PlannedOp } from "./kind.js";
import { nudText } from "./neigh.js";

const isPermanent = (entry: FdbEntry): boolean => (entry.state & NUD_PERMANENT) !== 0;

export const fdbKind: Kind<FdbEntry> = {
  name: "fdb",
  key: (entry) => `${entry.dev} ${entry.mac}`,
  cached: (entry) => entry.dst !== undefined && (entry.flags & NTF_MASTER) === 0,
  owned: (entry, scope) => scope.devices.has(entry.dev) && isPermanent(entry) && entry.dst !== undefined,

  plan(want, here, scope) {
    const ops: PlannedOp[] = [];
    if (want === undefined) {
      for (const entry of here) {
        if (scope.devices.has(entry.dev) && isPermanent(entry) && entry.dst !== undefined) {
          ops.push({ action: "delete", object: entry, reason: "stale: no peer has this VTEP MAC" });
        }
      }
      return ops;
    }
    const same = here.find((entry) => entry.dst === want.dst);
    if (same !== undefined && isPermanent(same)) return ops;
    let reason: string;
    if (same !== undefined) reason = `not permanent (${nudText(same.state)})`;
    else if (here.length === 0) reason = "missing";
    // A unicast MAC has exactly one remote on a VXLAN device; a replace rewrites its destination.
    else
      reason = `differs: dst ${here.map((entry) => entry.dst ?? "none").join(",")} → ${want.dst ?? "none"}`;
    ops.push({ action: "replace", object: want, reason });
    return ops;
  },

  afterWrite(op, before) {
    if (op.action === "replace") return [op.object];
    // A delete names the destination; the kernel keeps an entry whose destination differs.
    return before.filter((entry) => entry.dst !== op.object.dst);
  },

  describe: (entry) => `fdb ${entry.mac} dst ${entry.dst ?? "none"} dev ${entry.dev}`,
};
