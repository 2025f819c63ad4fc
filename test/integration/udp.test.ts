// The udp backend with real agents in network namespaces: flannel's TUN + userspace UDP encapsulation.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTwillCluster, type TwillCluster } from "../helpers/twill-cluster.js";

const clusters: TwillCluster[] = [];

async function started(options: Parameters<typeof startTwillCluster>[0]): Promise<TwillCluster> {
  const cluster = await startTwillCluster(options);
  clusters.push(cluster);
  return cluster;
}

describe("udp: 3 hosts x 2 pods", () => {
  let cluster: TwillCluster;

  beforeAll(async () => {
    cluster = await started({ backend: "udp", hosts: 3 });
    for (let i = 1; i <= 3; i++) {
      await cluster.addPod(i, "a", 2);
      await cluster.addPod(i, "b", 3);
    }
  }, 120_000);
  afterAll(async () => {
    await Promise.allSettled(clusters.splice(0).map((c) => c.destroy()));
  });

  it("every pod pings every other pod", async () => {
    await cluster.waitForMesh();
    expect(await cluster.pingMatrixUntilGreen()).toEqual([]);
  });
});
