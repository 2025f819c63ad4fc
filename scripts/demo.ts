// The local demo (README's first command): a real etcd and three hosts in network namespaces, each
// running the real agent, two pods per host. Prints what it built and a ping matrix, then runs until
// Ctrl-C and tears everything down (also on failure).
import { startDemo, type Demo } from "./demo-cluster.js";

const backend = process.argv.includes("--host-gw") ? "host-gw" : "vxlan";
let demo: Demo | undefined;

try {
  demo = await startDemo({ backend, print: (line) => console.log(line) });
  const first = demo.cluster.nodes[0];
  console.log(`\nThe agents keep running. Look around in another terminal, e.g.:`);
  if (first) {
    console.log(`  ip netns exec ${first.host.ns} ip route`);
    console.log(
      `  ip netns exec ${first.host.ns} node dist/cli/main.js leases --etcd-endpoints=${demo.cluster.etcd.endpoint}`,
    );
    console.log(`  ip netns exec ${first.host.ns} curl -s http://127.0.0.1:9102/metrics | grep ^twill_`);
    console.log(`  ip netns exec ${first.host.ns} node dist/cli/main.js status`);
  }
  console.log("Press Ctrl-C to stop and remove everything.");
  await new Promise<void>((resolve) => {
    // `on`, not `once`: a second Ctrl-C must not kill the demo mid-teardown (execa's signal-exit
    // re-raises a signal nobody else listens to).
    process.on("SIGINT", () => resolve());
    process.on("SIGTERM", () => resolve());
  });
} catch (error) {
  console.error(`demo failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
} finally {
  console.log("\ntearing down: agents, pods, etcd, namespaces …");
  await demo?.destroy();
  console.log("done; nothing left behind.");
}
