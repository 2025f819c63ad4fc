// Lease benchmarks against a real etcd on loopback:
//  1. N = 50 and 200 agents acquiring at once from one /16 (each with its own etcd client), repeated;
//  2. peer event latency: time from a lease put to the peer-view callback, over 1,000 single events.
// Prints medians (the machine is shared and noisy) and writes bench/results/leases.json.
import { performance } from "node:perf_hooks";
import { pino } from "pino";
import { parseNetworkConfig } from "../src/config/network-config.js";
import { parseIPv4 } from "../src/ip/ipv4.js";
import { encodeLeaseAttrs } from "../src/lease/attrs.js";
import { LeaseKeeper } from "../src/lease/keeper.js";
import { EtcdRegistry } from "../src/lease/etcd-registry.js";
import { SubnetWatch } from "../src/lease/subnet-watch.js";
import { startEtcd } from "../test/helpers/etcd.js";
import { median, percentile, round, writeResult } from "./lib.js";

const silent = pino({ level: "silent" });
const config = parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}').config;
const runs = Number(process.env.BENCH_RUNS ?? 5);

const etcd = await startEtcd();
let prefixCounter = 0;
try {
  const acquisition: Record<string, { runsMs: number[]; medianMs: number; perAgentMedianMs: number }> = {};
  for (const n of [50, 200]) {
    const times: number[] = [];
    for (let run = 0; run < runs; run++) {
      prefixCounter += 1;
      const prefix = `/bench-${prefixCounter}/network`;
      const registries = Array.from(
        { length: n },
        () => new EtcdRegistry({ endpoints: [etcd.endpoint] }, prefix),
      );
      // Connect every client first, so the figure is acquisition, not gRPC channel set-up.
      await Promise.all(registries.map((r) => r.getConfig()));
      const controller = new AbortController();
      const start = performance.now();
      const leases = await Promise.all(
        registries.map((registry, i) => {
          const ip = parseIPv4(`198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`);
          const keeper = new LeaseKeeper(
            registry,
            { publicIP: ip, ttlSeconds: 3600, renewMarginSeconds: 60 },
            silent,
          );
          const attrs = {
            publicIP: ip,
            publicIPv6: null,
            backendType: "host-gw",
            backendData: undefined,
            backendV6Data: undefined,
          };
          return keeper.acquire(config, attrs, undefined, controller.signal);
        }),
      );
      times.push(performance.now() - start);
      if (new Set(leases.map((l) => l.key)).size !== n) throw new Error("duplicate subnets handed out");
      for (const r of registries) r.close();
    }
    acquisition[String(n)] = {
      runsMs: times.map((t) => round(t)),
      medianMs: round(median(times)),
      perAgentMedianMs: round(median(times) / n, 3),
    };
    console.log(
      `concurrent acquisition, ${n} agents: median ${round(median(times))} ms over ${runs} runs (${round(median(times) / n, 3)} ms per agent)`,
    );
  }

  // Peer event latency: one watcher, a writer putting leases one at a time.
  prefixCounter += 1;
  const prefix = `/bench-${prefixCounter}/network`;
  const writer = new EtcdRegistry({ endpoints: [etcd.endpoint] }, prefix);
  const reader = new EtcdRegistry({ endpoints: [etcd.endpoint] }, prefix);
  const controller = new AbortController();
  const arrivals = new Map<string, number>();
  let synced = false;
  const watch = new SubnetWatch(
    reader,
    { prefix, config, ownKey: undefined, ownSubnet: undefined },
    {
      onPeers: (events) => {
        synced = true;
        const now = performance.now();
        for (const event of events) arrivals.set(event.lease.key, now);
      },
      onInvalid: () => undefined,
      onOwnKey: () => undefined,
    },
    silent,
  );
  void watch.run(controller.signal);
  while (!synced) await new Promise((r) => setTimeout(r, 10));
  const latencies: number[] = [];
  const events = Number(process.env.BENCH_EVENTS ?? 1000);
  for (let i = 0; i < events; i++) {
    const key = `${prefix}/subnets/10.244.${Math.floor(i / 4) % 255}.${(i % 4) * 64}-26`;
    const value = encodeLeaseAttrs({
      publicIP: parseIPv4(`198.18.${Math.floor(i / 250) % 250}.${(i % 250) + 1}`),
      publicIPv6: null,
      backendType: "host-gw",
      backendData: undefined,
      backendV6Data: undefined,
    });
    arrivals.delete(key);
    const start = performance.now();
    await writer.client.put(key).value(value).exec();
    while (!arrivals.has(key)) await new Promise((r) => setImmediate(r));
    latencies.push((arrivals.get(key) ?? start) - start);
  }
  controller.abort();
  writer.close();
  reader.close();
  const peerEvent = {
    events,
    p50Ms: round(percentile(latencies, 50), 3),
    p99Ms: round(percentile(latencies, 99), 3),
    maxMs: round(Math.max(...latencies), 3),
  };
  console.log(
    `peer event put -> peer-view callback over ${events} events: p50 ${peerEvent.p50Ms} ms, p99 ${peerEvent.p99Ms} ms`,
  );
  const path = writeResult("leases", { runs, acquisition, peerEvent });
  console.log(`written ${path}`);
} finally {
  await etcd.destroy();
}
