// The local demo cluster: a real etcd and three hosts in network namespaces, each running the real
// agent. Prints the leases and what each agent sees, then runs until Ctrl-C and tears everything
// down (also on failure). Reuses the test harness, so what the demo shows is what the tests check.
import { startAgent, runTwill, type AgentProcess } from "../test/helpers/agent.js";
import { createUnderlay, type Cluster } from "../test/helpers/netns.js";
import { waitFor } from "../test/helpers/processes.js";

const backend = process.argv.includes("--host-gw") ? "host-gw" : "vxlan";
const hostCount = 3;

let cluster: Cluster | undefined;
const agents: AgentProcess[] = [];
let tearingDown = false;

async function teardown(): Promise<void> {
  if (tearingDown) return;
  tearingDown = true;
  console.log("\ntearing down: agents, etcd, namespaces …");
  await Promise.allSettled(agents.map((agent) => agent.destroy()));
  await cluster?.destroy();
  console.log("done; nothing left behind.");
}

async function main(): Promise<void> {
  cluster = await createUnderlay();
  console.log(`demo cluster ${cluster.tag}: switch namespace ${cluster.switchNs} (underlay 198.18.0.0/24)`);
  const etcd = await cluster.startEtcd();
  console.log(`etcd listening on ${etcd.endpoint} inside ${cluster.switchNs}`);
  const hosts = [];
  for (let i = 1; i <= hostCount; i++) hosts.push(await cluster.addHost(i));
  const firstHost = hosts[0];
  if (!firstHost) throw new Error("no hosts");

  const flags = [`--etcd-endpoints=${etcd.endpoint}`];
  const config = JSON.stringify({ Network: "10.244.0.0/16", Backend: { Type: backend } });
  const set = await runTwill(["config", "set", "-", ...flags], { netns: firstHost.ns, input: config });
  process.stdout.write(set.stdout);
  if (set.code !== 0) throw new Error(`config set failed: ${set.stderr}`);

  for (const host of hosts) {
    agents.push(startAgent({ netns: host.ns, etcdEndpoint: etcd.endpoint, args: ["--iface=eth0"] }));
  }
  for (const [i, agent] of agents.entries()) {
    await waitFor(`agent ${i + 1}'s subnet file`, () => agent.subnetEnv(), 30_000);
  }
  await waitFor("every agent to see every peer", () =>
    agents.every((agent) => agent.logs().filter((line) => line.msg === "peer added").length >= hostCount - 1),
  );

  console.log(`\n== leases (twill leases, backend ${backend})`);
  process.stdout.write((await runTwill(["leases", ...flags], { netns: firstHost.ns })).stdout);
  for (const [i, agent] of agents.entries()) {
    const host = hosts[i];
    console.log(`\n== host ${i + 1} (${host?.ns ?? "?"}, 198.18.0.${i + 1}) subnet.env`);
    process.stdout.write(agent.subnetEnv() ?? "(none)\n");
  }
  console.log(`\nThe agents keep running. Try, in another terminal:`);
  console.log(`  ip netns exec ${firstHost.ns} node dist/cli/main.js leases ${flags.join(" ")}`);
  console.log("Press Ctrl-C to stop and remove everything.");
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
}

try {
  await main();
} catch (error) {
  console.error(`demo failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
} finally {
  await teardown();
}
