// The subnet watch at unit speed, on the in-memory registry: one recovery path (re-list and diff)
// for a compaction, a broken watch and an outage, each delivering exactly the difference.
import { afterEach, describe, expect, it } from "vitest";
import { pino } from "pino";
import { backendForLease } from "../../src/backends/registry.js";
import { VxlanPeerData } from "../../src/backends/vxlan/backend-data.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import { formatCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { encodeLeaseAttrs } from "../../src/lease/attrs.js";
import type { LeaseAttrs } from "../../src/lease/lease.js";
import type { InvalidEntry, PeerEvent, PeerView, RawEntry, ViewContext } from "../../src/lease/peer-view.js";
import { COMPACTED_WATCH_REASON } from "../../src/lease/registry.js";
import { SubnetWatch } from "../../src/lease/subnet-watch.js";
import { FakeClock, settle } from "../helpers/fake-clock.js";
import { MemoryRegistry } from "../helpers/memory-registry.js";

const PREFIX = "/coreos.com/network";
const K = (tail: string): string => `${PREFIX}/subnets/${tail}`;
const CONFIG = parseNetworkConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}').config;
const silent = pino({ level: "silent" });

/** As the agent wires it, one function for the watch's whole life: each backend parses its own BackendData. */
const parsePeerData = (attrs: LeaseAttrs): object | undefined =>
  backendForLease(attrs.backendType)?.parsePeerData(attrs.backendData);

const value = (ip: string): string =>
  encodeLeaseAttrs({
    publicIP: parseIPv4(ip),
    publicIPv6: null,
    backendType: "host-gw",
    backendData: undefined,
    backendV6Data: undefined,
  });

interface Recorded {
  events: string[];
  invalid: InvalidEntry[];
  own: (RawEntry | undefined)[];
  views: PeerView[];
  states: string[];
}

const controllers: AbortController[] = [];
afterEach(() => {
  for (const controller of controllers.splice(0)) controller.abort();
});

function startWatch(
  registry: MemoryRegistry,
  clock: FakeClock,
  context: Partial<ViewContext> = {},
): { recorded: Recorded; watch: SubnetWatch } {
  const recorded: Recorded = { events: [], invalid: [], own: [], views: [], states: [] };
  const summary = (e: PeerEvent): string => `${e.type} ${formatCidr(e.lease.subnet)}`;
  const watch = new SubnetWatch(
    registry,
    { prefix: PREFIX, config: CONFIG, ownKey: undefined, ownSubnet: undefined, parsePeerData, ...context },
    {
      onPeers: (events, view) => {
        recorded.events.push(...events.map(summary));
        recorded.views.push(view);
      },
      onInvalid: (entries) => recorded.invalid.push(...entries),
      onOwnKey: (entry) => recorded.own.push(entry),
      onWatchState: (state, reason) =>
        recorded.states.push(reason === undefined ? state : `${state}: ${reason}`),
    },
    silent,
    clock,
  );
  const controller = new AbortController();
  controllers.push(controller);
  void watch.run(controller.signal);
  return { recorded, watch };
}

const peersOf = (recorded: Recorded): string[] =>
  [...(recorded.views.at(-1)?.peers.values() ?? [])].map((l) => formatCidr(l.subnet)).sort();

describe("SubnetWatch", () => {
  it("lists, then delivers each batch as events on one live view", async () => {
    const clock = new FakeClock();
    const registry = new MemoryRegistry(clock, PREFIX);
    registry.put(K("10.244.2.0-24"), value("198.18.0.2"));
    const { recorded } = startWatch(registry, clock);
    await settle();
    expect(recorded.events).toEqual(["added 10.244.2.0/24"]);
    registry.put(K("10.244.3.0-24"), value("198.18.0.3"));
    registry.put(K("10.244.2.0-24"), value("198.18.0.22"));
    registry.put(K("10.244.4.0-24"), "{broken");
    await settle();
    expect(recorded.events).toEqual(["added 10.244.2.0/24", "changed 10.244.2.0/24", "added 10.244.3.0/24"]);
    expect(recorded.invalid.map((e) => e.key)).toEqual([K("10.244.4.0-24")]);
    registry.delete(K("10.244.2.0-24"));
    await settle();
    expect(recorded.events.at(-1)).toBe("removed 10.244.2.0/24");
    expect(new Set(recorded.views).size).toBe(1);
    expect(peersOf(recorded)).toEqual(["10.244.3.0/24"]);
  });

  it("recovers from a compaction between list and watch: re-lists and delivers exactly the difference", async () => {
    const clock = new FakeClock();
    const registry = new MemoryRegistry(clock, PREFIX);
    registry.put(K("10.244.20.0-24"), value("198.18.6.20"));
    registry.before("watchPrefix", () => {
      registry.put(K("10.244.21.0-24"), value("198.18.6.21"));
      registry.delete(K("10.244.20.0-24"));
      registry.put(K("10.244.22.0-24"), value("198.18.6.22"));
      registry.compact();
    });
    const { recorded } = startWatch(registry, clock);
    await settle();
    await clock.advance(1_000);
    expect(recorded.states).toEqual(["watching", `broken: ${COMPACTED_WATCH_REASON}`, "watching"]);
    expect(peersOf(recorded)).toEqual(["10.244.21.0/24", "10.244.22.0/24"]);
    expect([...recorded.events].sort()).toEqual([
      "added 10.244.20.0/24",
      "added 10.244.21.0/24",
      "added 10.244.22.0/24",
      "removed 10.244.20.0/24",
    ]);
  });

  it("re-lists after a broken watch, delivering what changed meanwhile once", async () => {
    const clock = new FakeClock();
    const registry = new MemoryRegistry(clock, PREFIX);
    registry.put(K("10.244.30.0-24"), value("198.18.7.30"));
    const { recorded } = startWatch(registry, clock);
    await settle();
    registry.breakWatches("disconnected: socket closed");
    registry.delete(K("10.244.30.0-24")); // lands after the break: only the re-list can see it
    await settle();
    registry.put(K("10.244.31.0-24"), value("198.18.7.31"));
    await clock.advance(1_000);
    expect(recorded.states).toEqual(["watching", "broken: disconnected: socket closed", "watching"]);
    expect(recorded.events).toEqual([
      "added 10.244.30.0/24",
      "removed 10.244.30.0/24",
      "added 10.244.31.0/24",
    ]);
  });

  it("rides out an outage: reports the watch broken, retries the list, and catches up", async () => {
    const clock = new FakeClock();
    const registry = new MemoryRegistry(clock, PREFIX);
    registry.put(K("10.244.40.0-24"), value("198.18.8.40"));
    const { recorded } = startWatch(registry, clock);
    await settle();
    registry.setOutage(new Error("14 UNAVAILABLE: No connection established"));
    await clock.advance(10_000);
    expect(recorded.states.slice(0, 2)).toEqual([
      "watching",
      "broken: disconnected: 14 UNAVAILABLE: No connection established",
    ]);
    expect(recorded.states.at(-1)).toBe("broken: 14 UNAVAILABLE: No connection established");
    registry.put(K("10.244.41.0-24"), value("198.18.8.41")); // another client, still connected
    registry.setOutage(undefined);
    await clock.advance(10_000);
    expect(recorded.states.at(-1)).toBe("watching");
    expect(recorded.events).toEqual(["added 10.244.40.0/24", "added 10.244.41.0/24"]);
  });

  it("sets aside a lease whose BackendData its backend cannot read, and passes the parsed data of the others on", async () => {
    const clock = new FakeClock();
    const registry = new MemoryRegistry(clock, PREFIX);
    const vxlan = (ip: string, backendData: string | undefined): string =>
      encodeLeaseAttrs({
        publicIP: parseIPv4(ip),
        publicIPv6: null,
        backendType: "vxlan",
        backendData,
        backendV6Data: undefined,
      });
    registry.put(K("10.244.2.0-24"), vxlan("198.18.0.2", '{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}'));
    registry.put(K("10.244.3.0-24"), value("198.18.0.3"));
    const { recorded } = startWatch(registry, clock);
    await settle();
    registry.put(K("10.244.4.0-24"), vxlan("198.18.0.4", '{"VNI":1}'));
    await settle();
    expect(peersOf(recorded)).toEqual(["10.244.2.0/24", "10.244.3.0/24"]);
    expect(recorded.views.at(-1)?.peers.get(K("10.244.2.0-24"))?.peerData).toEqual(
      new VxlanPeerData(1, "0a:00:00:00:00:02"),
    );
    expect(recorded.invalid).toEqual([
      {
        key: K("10.244.4.0-24"),
        reason: "bad vxlan BackendData: BackendData.VtepMAC is missing",
        modRevision: expect.any(Number) as number,
      },
    ]);
  });

  it("reports the own key on the first list and whenever it changes, never as a peer", async () => {
    const clock = new FakeClock();
    const registry = new MemoryRegistry(clock, PREFIX);
    const ownKey = K("10.244.1.0-24");
    const revision = registry.put(ownKey, value("198.18.0.1"));
    const { recorded, watch } = startWatch(registry, clock, {
      ownKey,
      ownSubnet: { ip: parseIPv4("10.244.1.0"), prefixLen: 24 },
    });
    await settle();
    expect(recorded.own.map((e) => e?.modRevision)).toEqual([revision]);
    registry.delete(ownKey);
    await settle();
    expect(recorded.own.at(-1)).toBeUndefined();
    expect(recorded.events).toEqual([]);
    // The same context again (as the lifecycle reports every renewal): nothing to recompute or deliver.
    const deliveries = recorded.views.length;
    watch.setContext({
      prefix: PREFIX,
      config: CONFIG,
      ownKey,
      ownSubnet: { ip: parseIPv4("10.244.1.0"), prefixLen: 24 },
      parsePeerData,
    });
    expect(recorded.views).toHaveLength(deliveries);
  });
});
