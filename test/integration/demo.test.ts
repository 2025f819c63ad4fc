// The demo's own code path (scripts/demo-cluster.ts): it starts, every pod reaches every other, and
// teardown leaves no namespace or process behind.
import { afterAll, describe, expect, it } from "vitest";
import { startDemo, type Demo } from "../../scripts/demo-cluster.js";
import { listNamespaces } from "../helpers/netns.js";
import { isAlive } from "../helpers/processes.js";

describe("the demo cluster", () => {
  let demo: Demo | undefined;
  afterAll(async () => {
    await demo?.destroy();
  });

  it("starts 3 hosts x 2 pods with a green ping matrix and tears down completely", async () => {
    const lines: string[] = [];
    demo = await startDemo({ backend: "vxlan", print: (line) => lines.push(line) });
    expect(demo.matrix).toHaveLength(30);
    expect(demo.matrix.filter((m) => !m.ok)).toEqual([]);
    expect(lines.join("\n")).toMatch(/all 30 pod pairs reach each other/);
    expect(lines.join("\n")).toMatch(
      /route 10\.244\.\d+\.0\/24 via 10\.244\.\d+\.0 dev flannel\.1 onlink proto 151/,
    );
    const tag = demo.cluster.net.tag;
    const pids = demo.cluster.nodes.map((n) => n.agent.process.pid).concat(demo.cluster.etcd.process.pid);
    await demo.destroy();
    demo = undefined;
    expect((await listNamespaces()).filter((ns) => ns.includes(tag))).toEqual([]);
    for (const pid of pids) expect(isAlive(pid), `process ${pid} still running`).toBe(false);
  }, 180_000);
});
