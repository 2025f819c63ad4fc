// Planner ops → `ip -batch` / `bridge -batch` lines, one line per op, so a failure the executor reports
// at line i of a batch maps back to batch.ops[i]. Syntax verified against iproute2 6.1 on a vxlan device.
import type { BatchTool } from "./kernel/batch.js";
import type { Op } from "./planner.js";

export interface OpBatch {
  readonly tool: BatchTool;
  /** Batch lines without the leading tool name; lines[i] is ops[i]. */
  readonly lines: string[];
  readonly ops: Op[];
}

/** Route types iproute2 accepts as a keyword before the prefix (`route del blackhole 10.0.0.0/24`). */
const ROUTE_TYPE_KEYWORDS = new Set(["blackhole", "unreachable", "prohibit", "throw", "local", "broadcast"]);

export function opTool(op: Op): BatchTool {
  return op.kind === "fdb" ? "bridge" : "ip";
}

/** The batch line for one op (without "ip"/"bridge"). */
export function opLine(op: Op, routeProtocol: number): string {
  switch (op.kind) {
    case "route": {
      if (op.action === "replace") {
        const r = op.route;
        return `route replace ${r.dst} via ${r.gateway} dev ${r.dev}${r.onlink ? " onlink" : ""} proto ${routeProtocol}`;
      }
      // The protocol makes the kernel refuse to delete anything but ours; via/dev/metric pick the exact one.
      const ref = op.route;
      const parts = ["route del"];
      if (ROUTE_TYPE_KEYWORDS.has(ref.type)) parts.push(ref.type);
      parts.push(ref.dst);
      if (ref.gateway !== undefined) parts.push(`via ${ref.gateway}`);
      if (ref.dev !== undefined) parts.push(`dev ${ref.dev}`);
      parts.push(`proto ${routeProtocol}`);
      if (ref.metric !== undefined) parts.push(`metric ${ref.metric}`);
      return parts.join(" ");
    }
    case "neigh":
      return op.action === "replace"
        ? `neigh replace ${op.neigh.dst} lladdr ${op.neigh.lladdr} dev ${op.neigh.dev} nud permanent`
        : `neigh del ${op.neigh.dst} dev ${op.neigh.dev}`;
    case "fdb":
      // With dst, a delete never removes the entry once its dst was rewritten (the kernel answers 0).
      return op.action === "replace"
        ? `fdb replace ${op.fdb.mac} dev ${op.fdb.dev} self dst ${op.fdb.dst} permanent`
        : `fdb del ${op.fdb.mac} dev ${op.fdb.dev} self dst ${op.fdb.dst}`;
  }
}

/** Consecutive ops for the same tool form one batch (one process); order is preserved. */
export function toBatches(ops: readonly Op[], routeProtocol: number): OpBatch[] {
  const batches: OpBatch[] = [];
  let current: OpBatch | undefined;
  for (const op of ops) {
    const tool = opTool(op);
    if (current?.tool !== tool) {
      current = { tool, lines: [], ops: [] };
      batches.push(current);
    }
    current.lines.push(opLine(op, routeProtocol));
    current.ops.push(op);
  }
  return batches;
}
