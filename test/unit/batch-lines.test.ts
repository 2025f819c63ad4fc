import { describe, it, expect } from "vitest";
import { opLine, opTool, toBatches } from "../../src/dataplane/batch-lines.js";
import type { Op } from "../../src/dataplane/planner.js";

const P = 151;
const R = "test";

const vxlanRoute: Op = {
  kind: "route",
  action: "replace",
  route: { dst: "10.244.5.0/24", gateway: "10.244.5.0", dev: "flannel.1", onlink: true },
  reason: R,
};
const hostRoute: Op = {
  kind: "route",
  action: "replace",
  route: { dst: "10.244.5.0/24", gateway: "198.18.0.5", dev: "eth0", onlink: false },
  reason: R,
};
const routeDel: Op = {
  kind: "route",
  action: "delete",
  route: { dst: "10.244.5.0/24", gateway: "10.244.5.0", dev: "flannel.1", type: "unicast" },
  reason: R,
};
const routeDelMetric: Op = {
  kind: "route",
  action: "delete",
  route: { dst: "10.244.8.0/24", gateway: "198.18.0.8", dev: "eth0", metric: 50, type: "unicast" },
  reason: R,
};
const routeDelBlackhole: Op = {
  kind: "route",
  action: "delete",
  route: { dst: "10.244.20.0/24", type: "blackhole" },
  reason: R,
};
const neighReplace: Op = {
  kind: "neigh",
  action: "replace",
  neigh: { dev: "flannel.1", dst: "10.244.5.0", lladdr: "0a:00:00:00:00:05" },
  reason: R,
};
const neighDel: Op = {
  kind: "neigh",
  action: "delete",
  neigh: { dev: "flannel.1", dst: "10.244.5.0", lladdr: "0a:00:00:00:00:05" },
  reason: R,
};
const fdbReplace: Op = {
  kind: "fdb",
  action: "replace",
  fdb: { dev: "flannel.1", mac: "0a:00:00:00:00:05", dst: "198.18.0.5" },
  reason: R,
};
const fdbDel: Op = {
  kind: "fdb",
  action: "delete",
  fdb: { dev: "flannel.1", mac: "0a:00:00:00:00:05", dst: "198.18.0.5" },
  reason: R,
};

describe("opLine", () => {
  it.each<[string, Op, "ip" | "bridge", string]>([
    [
      "vxlan route",
      vxlanRoute,
      "ip",
      "route replace 10.244.5.0/24 via 10.244.5.0 dev flannel.1 onlink proto 151",
    ],
    ["host-gw route", hostRoute, "ip", "route replace 10.244.5.0/24 via 198.18.0.5 dev eth0 proto 151"],
    ["route delete", routeDel, "ip", "route del 10.244.5.0/24 via 10.244.5.0 dev flannel.1 proto 151"],
    [
      "route delete with metric",
      routeDelMetric,
      "ip",
      "route del 10.244.8.0/24 via 198.18.0.8 dev eth0 proto 151 metric 50",
    ],
    ["blackhole delete", routeDelBlackhole, "ip", "route del blackhole 10.244.20.0/24 proto 151"],
    [
      "neigh replace",
      neighReplace,
      "ip",
      "neigh replace 10.244.5.0 lladdr 0a:00:00:00:00:05 dev flannel.1 nud permanent",
    ],
    ["neigh delete", neighDel, "ip", "neigh del 10.244.5.0 dev flannel.1"],
    [
      "fdb replace",
      fdbReplace,
      "bridge",
      "fdb replace 0a:00:00:00:00:05 dev flannel.1 self dst 198.18.0.5 permanent",
    ],
    ["fdb delete", fdbDel, "bridge", "fdb del 0a:00:00:00:00:05 dev flannel.1 self dst 198.18.0.5"],
  ])("%s", (_name, op, tool, line) => {
    expect(opTool(op)).toBe(tool);
    expect(opLine(op, P)).toBe(line);
  });

  it("uses the protocol it is given", () => {
    expect(opLine(hostRoute, 200)).toBe("route replace 10.244.5.0/24 via 198.18.0.5 dev eth0 proto 200");
  });
});

describe("toBatches", () => {
  it("groups consecutive ops of one tool, keeping order", () => {
    const ops = [routeDel, fdbDel, fdbReplace, neighReplace, vxlanRoute];
    const batches = toBatches(ops, P);
    expect(batches.map((b) => [b.tool, b.ops.length])).toEqual([
      ["ip", 1],
      ["bridge", 2],
      ["ip", 2],
    ]);
    expect(batches.flatMap((b) => b.ops)).toEqual(ops);
  });

  it("aligns every line with its op by index", () => {
    const ops = [routeDel, routeDelMetric, fdbDel, fdbReplace, neighDel, neighReplace, hostRoute, fdbReplace];
    for (const batch of toBatches(ops, P)) {
      expect(batch.lines).toHaveLength(batch.ops.length);
      batch.ops.forEach((op, i) => {
        expect(opTool(op)).toBe(batch.tool);
        expect(batch.lines[i]).toBe(opLine(op, P));
      });
    }
    expect(toBatches(ops, P).map((b) => b.tool)).toEqual(["ip", "bridge", "ip", "bridge"]);
  });

  it("gives no batches for no ops", () => {
    expect(toBatches([], P)).toEqual([]);
  });
});
