// The lease room against a real etcd (Debian's etcd-server on loopback): acquisition, reuse, renewal,
// races, exhaustion and the live peer view through compaction and an etcd restart.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { pino } from "pino";
import { parseNetworkConfig, type NetworkConfig } from "../../src/config/network-config.js";
import { formatCidr, parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { encodeLeaseAttrs } from "../../src/lease/attrs.js";
import { LeaseKeeper, type OwnLease } from "../../src/lease/keeper.js";
import type { LeaseAttrs } from "../../src/lease/lease.js";
import type { InvalidEntry, PeerEvent, PeerView, RawEntry } from "../../src/lease/peer-view.js";
import { EtcdRegistry } from "../../src/lease/etcd-registry.js";
import { COMPACTED_WATCH_REASON, type LeaseRegistry, type WatchChange } from "../../src/lease/registry.js";
import { SubnetWatch } from "../../src/lease/subnet-watch.js";
import { systemClock } from "../../src/util/clock.js";
import { startEtcd, type EtcdServer } from "../helpers/etcd.js";
import { MemoryRegistry } from "../helpers/memory-registry.js";
import { waitFor } from "../helpers/processes.js";

const silent = pino({ level: "silent" });
let etcd: EtcdServer;
let prefixCounter = 0;
const registries: LeaseRegistry[] = [];
const controllers: AbortController[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd.destroy();
});
afterEach(() => {
  for (const controller of controllers.splice(0)) controller.abort();
  for (const registry of registries.splice(0)) registry.close();
});

/** A fresh key prefix per test, so tests share one etcd without seeing each other. */
function newPrefix(): string {
  prefixCounter += 1;
  return `/test-${process.pid}-${prefixCounter}/network`;
}

function registry(prefix: string): EtcdRegistry {
  const r = new EtcdRegistry({ endpoints: [etcd.endpoint] }, prefix);
  registries.push(r);
  return r;
}

function config(text = '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}'): NetworkConfig {
  return parseNetworkConfig(text).config;
}

function attrsFor(ip: string): LeaseAttrs {
  return {
    publicIP: parseIPv4(ip),
    publicIPv6: null,
    backendType: "host-gw",
    backendData: undefined,
    backendV6Data: undefined,
  };
}

function keeper(prefix: string, ip: string, ttlSeconds = 3600): LeaseKeeper {
  return new LeaseKeeper(
    registry(prefix),
    { publicIP: parseIPv4(ip), ttlSeconds, renewMarginSeconds: 60 },
    silent,
  );
}

function signal(): AbortSignal {
  const controller = new AbortController();
  controllers.push(controller);
  return controller.signal;
}

describe("acquiring a lease", () => {
  it("creates the key with flannel's exact value, bound to an etcd lease with the TTL", async () => {
    const prefix = newPrefix();
    const own = await keeper(prefix, "198.18.0.1", 600).acquire(
      config(),
      attrsFor("198.18.0.1"),
      undefined,
      signal(),
    );
    const key = `${prefix}/subnets/${formatCidr(own.subnet).replace("/", "-")}`;
    expect(own.key).toBe(key);
    expect(etcd.ctl(["get", key, "--print-value-only"]).trim()).toBe(
      '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"host-gw"}',
    );
    const ttl = await registry(prefix).timeToLive(own.leaseId);
    expect(ttl).toBeGreaterThan(500);
    expect(ttl).toBeLessThanOrEqual(600);
    // Default config skips the first subnet: the pool is 10.244.1.0 .. 10.244.255.0.
    expect(own.subnet.prefixLen).toBe(24);
    expect(own.subnet.ip).toBeGreaterThanOrEqual(parseIPv4("10.244.1.0"));
  });

  it("gets the same subnet back after a restart, by public IP", async () => {
    const prefix = newPrefix();
    const first = await keeper(prefix, "198.18.0.2").acquire(
      config(),
      attrsFor("198.18.0.2"),
      undefined,
      signal(),
    );
    const second = await keeper(prefix, "198.18.0.2").acquire(
      config(),
      attrsFor("198.18.0.2"),
      undefined,
      signal(),
    );
    expect(formatCidr(second.subnet)).toBe(formatCidr(first.subnet));
    expect(second.leaseId).not.toBe(first.leaseId);
    // The old etcd lease no longer holds the key: revoked, not left to run out its 24 h.
    expect(await registry(prefix).timeToLive(first.leaseId)).toBeUndefined();
    expect(await registry(prefix).timeToLive(second.leaseId)).toBeGreaterThan(0);
  });

  it("gets the subnet from its subnet file back when its key is gone and the subnet is free", async () => {
    const prefix = newPrefix();
    const previous = { subnet: parseCidr("10.244.77.0/24") };
    const own = await keeper(prefix, "198.18.0.3").acquire(
      config(),
      attrsFor("198.18.0.3"),
      previous,
      signal(),
    );
    expect(formatCidr(own.subnet)).toBe("10.244.77.0/24");
  });

  it("does not take a previous subnet that another node holds now", async () => {
    const prefix = newPrefix();
    const other = await keeper(prefix, "198.18.0.4").acquire(
      config(),
      attrsFor("198.18.0.4"),
      undefined,
      signal(),
    );
    const own = await keeper(prefix, "198.18.0.5").acquire(config(), attrsFor("198.18.0.5"), other, signal());
    expect(formatCidr(own.subnet)).not.toBe(formatCidr(other.subnet));
  });

  it("keeps a reservation (a key without an etcd lease) a reservation", async () => {
    const prefix = newPrefix();
    const key = `${prefix}/subnets/10.244.9.0-24`;
    etcd.ctl(["put", key, '{"PublicIP":"198.18.0.6","PublicIPv6":null,"BackendType":"host-gw"}']);
    const own = await keeper(prefix, "198.18.0.6").acquire(
      config(),
      attrsFor("198.18.0.6"),
      undefined,
      signal(),
    );
    expect(own.key).toBe(key);
    expect(own.leaseId).toBe("0");
    expect(own.expiresAt).toBe(Infinity);
    const raw = await registry(prefix).getKey(key);
    expect(raw?.etcdLeaseId).toBe("0");
  });

  it("deletes this node's lease that no longer fits the config and allocates inside it", async () => {
    const prefix = newPrefix();
    const old = await keeper(prefix, "198.18.0.7").acquire(
      config(),
      attrsFor("198.18.0.7"),
      undefined,
      signal(),
    );
    const narrower = config('{"Network":"10.244.0.0/16","SubnetLen":25,"Backend":{"Type":"host-gw"}}');
    const own = await keeper(prefix, "198.18.0.7").acquire(
      narrower,
      attrsFor("198.18.0.7"),
      undefined,
      signal(),
    );
    expect(own.subnet.prefixLen).toBe(25);
    expect(await registry(prefix).getKey(old.key)).toBeUndefined();
  });

  it("200 agents acquiring at once from one /16 get 200 distinct subnets inside the pool", async () => {
    const prefix = newPrefix();
    const cfg = config();
    const ips = Array.from({ length: 200 }, (_, i) => `198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`);
    const leases = await Promise.all(
      ips.map((ip) => keeper(prefix, ip).acquire(cfg, attrsFor(ip), undefined, signal())),
    );
    const subnets = new Set(leases.map((l) => formatCidr(l.subnet)));
    expect(subnets.size).toBe(200);
    for (const lease of leases) {
      expect(lease.subnet.ip).toBeGreaterThanOrEqual(cfg.subnetMin);
      expect(lease.subnet.ip).toBeLessThanOrEqual(cfg.subnetMax);
    }
    const { entries } = await registry(prefix).listSubnets();
    expect(entries).toHaveLength(200);
  });

  it("retries lost races with a fresh choice (a tiny pool, more agents than the first pick allows)", async () => {
    const prefix = newPrefix();
    // /28 network, /30 subnets: pool of 3 (the first subnet is skipped) — every agent races for the same few.
    const cfg = config('{"Network":"10.244.0.0/28","SubnetLen":30,"Backend":{"Type":"host-gw"}}');
    const leases = await Promise.all(
      ["198.18.1.1", "198.18.1.2", "198.18.1.3"].map((ip) =>
        keeper(prefix, ip).acquire(cfg, attrsFor(ip), undefined, signal()),
      ),
    );
    expect(new Set(leases.map((l) => formatCidr(l.subnet)))).toEqual(
      new Set(["10.244.0.4/30", "10.244.0.8/30", "10.244.0.12/30"]),
    );
  });

  it("reports an exhausted pool with the network, pool size and count in use, and keeps retrying", async () => {
    const prefix = newPrefix();
    const cfg = config('{"Network":"10.244.0.0/28","SubnetLen":30,"Backend":{"Type":"host-gw"}}');
    for (const ip of ["198.18.2.1", "198.18.2.2", "198.18.2.3"]) {
      await keeper(prefix, ip).acquire(cfg, attrsFor(ip), undefined, signal());
    }
    const messages: string[] = [];
    const r = registry(prefix);
    const fourth = new LeaseKeeper(
      r,
      { publicIP: parseIPv4("198.18.2.4"), ttlSeconds: 60, renewMarginSeconds: 10 },
      silent,
      {
        exhausted: (message) => messages.push(message),
      },
    );
    const controller = new AbortController();
    const attempt = fourth.acquire(cfg, attrsFor("198.18.2.4"), undefined, controller.signal);
    await waitFor("two exhaustion reports (it retried)", () => messages.length >= 2);
    controller.abort();
    await expect(attempt).rejects.toThrow(/stopped/);
    expect(messages[0]).toBe(
      "no free subnet in 10.244.0.0/28: all 3 subnets of the pool are in use (3 leased); widen Network or SubnetMin/SubnetMax, or delete stale leases",
    );
  });
});

describe("keeping a lease", () => {
  it("renews onto a fresh etcd lease and revokes the old one", async () => {
    const prefix = newPrefix();
    const k = keeper(prefix, "198.18.3.1", 30);
    const own = await k.acquire(config(), attrsFor("198.18.3.1"), undefined, signal());
    const renewed = await k.renew(own);
    if (renewed === "lost") throw new Error("renewal reported the lease lost");
    expect(renewed.leaseId).not.toBe(own.leaseId);
    expect(renewed.key).toBe(own.key);
    const r = registry(prefix);
    expect(await r.timeToLive(own.leaseId)).toBeUndefined();
    expect((await r.getKey(own.key))?.etcdLeaseId).toBe(renewed.leaseId);
  });

  it("reports the lease lost instead of resurrecting a key someone deleted", async () => {
    const prefix = newPrefix();
    const k = keeper(prefix, "198.18.3.2", 30);
    const own = await k.acquire(config(), attrsFor("198.18.3.2"), undefined, signal());
    etcd.ctl(["del", own.key]);
    expect(await k.renew(own)).toBe("lost");
    expect(await registry(prefix).getKey(own.key)).toBeUndefined();
  });

  it("lets the key expire with its short TTL when nobody renews it", async () => {
    const prefix = newPrefix();
    const own = await keeper(prefix, "198.18.3.3", 5).acquire(
      config(),
      attrsFor("198.18.3.3"),
      undefined,
      signal(),
    );
    const r = registry(prefix);
    await waitFor("the key to expire", async () => (await r.getKey(own.key)) === undefined, 20_000, 250);
  });
});

describe("the peer view", () => {
  interface Recorded {
    events: PeerEvent[];
    invalid: InvalidEntry[];
    own: (RawEntry | undefined)[];
    view: PeerView | undefined;
  }

  function startWatch(
    prefix: string,
    own?: OwnLease,
    r: EtcdRegistry = registry(prefix),
  ): { recorded: Recorded; watch: SubnetWatch; broken: string[] } {
    const recorded: Recorded = { events: [], invalid: [], own: [], view: undefined };
    const broken: string[] = [];
    const watch = new SubnetWatch(
      r,
      { prefix, config: config(), ownKey: own?.key, ownSubnet: own?.subnet },
      {
        onPeers: (events, view) => {
          recorded.events.push(...events);
          recorded.view = view;
        },
        onInvalid: (entries) => recorded.invalid.push(...entries),
        onOwnKey: (entry) => recorded.own.push(entry),
        onWatchState: (state, reason) => {
          if (state === "broken") broken.push(reason ?? "");
        },
      },
      silent,
    );
    void watch.run(signal());
    return { recorded, watch, broken };
  }

  const value = (ip: string, mac?: string): string =>
    encodeLeaseAttrs({
      publicIP: parseIPv4(ip),
      publicIPv6: null,
      backendType: mac ? "vxlan" : "host-gw",
      backendData: mac ? `{"VNI":1,"VtepMAC":"${mac}"}` : undefined,
      backendV6Data: undefined,
    });

  const peersOf = (recorded: Recorded): string[] =>
    [...(recorded.view?.peers.values() ?? [])]
      .map((l) => `${formatCidr(l.subnet)}@${l.attrs.publicIP}`)
      .sort();

  it("delivers added, changed and removed peers, and never the node's own lease", async () => {
    const prefix = newPrefix();
    const own = await keeper(prefix, "198.18.4.1").acquire(
      config(),
      attrsFor("198.18.4.1"),
      undefined,
      signal(),
    );
    const { recorded } = startWatch(prefix, own);
    await waitFor("initial sync", () => recorded.view !== undefined);
    etcd.ctl(["put", `${prefix}/subnets/10.244.200.0-24`, value("198.18.4.2", "0a:00:00:00:00:01")]);
    await waitFor("added", () => recorded.events.some((e) => e.type === "added"));
    etcd.ctl(["put", `${prefix}/subnets/10.244.200.0-24`, value("198.18.4.2", "0a:00:00:00:00:02")]);
    await waitFor("changed (new VTEP MAC)", () => recorded.events.some((e) => e.type === "changed"));
    etcd.ctl(["put", `${prefix}/subnets/10.244.200.0-24`, value("198.18.4.9", "0a:00:00:00:00:02")]);
    await waitFor(
      "changed (new PublicIP)",
      () => recorded.events.filter((e) => e.type === "changed").length === 2,
    );
    etcd.ctl(["del", `${prefix}/subnets/10.244.200.0-24`]);
    await waitFor("removed", () => recorded.events.some((e) => e.type === "removed"));
    expect(recorded.events.map((e) => e.type)).toEqual(["added", "changed", "changed", "removed"]);
    const removed = recorded.events[3];
    // A removal carries the lease as it was, so a backend knows what to tear down.
    expect(removed?.lease.attrs.publicIP).toBe(parseIPv4("198.18.4.9"));
    expect(recorded.events.every((e) => e.lease.key !== own.key)).toBe(true);
  });

  it("skips malformed entries with a reason and keeps every valid peer", async () => {
    const prefix = newPrefix();
    etcd.ctl(["put", `${prefix}/subnets/10.244.10.0-24`, value("198.18.5.10")]);
    etcd.ctl(["put", `${prefix}/subnets/10.244.11.0-24`, value("198.18.5.11")]);
    const { recorded } = startWatch(prefix);
    await waitFor("two peers", () => recorded.view?.peers.size === 2);
    const bad: [string, string, RegExp][] = [
      [`${prefix}/subnets/10.244.12.0-24`, "{not json", /not valid JSON/],
      [`${prefix}/subnets/garbage`, value("198.18.5.13"), /garbage/],
      [`${prefix}/subnets/10.99.0.0-24`, value("198.18.5.14"), /10\.99\.0\.0/],
      [`${prefix}/subnets/10.244.15.0-24`, value("127.0.0.1"), /127\.0\.0\.1/],
      [`${prefix}/subnets/10.244.10.0-25`, value("198.18.5.16"), /overlap/i],
    ];
    for (const [key, v] of bad) etcd.ctl(["put", key, v]);
    await waitFor("every malformed entry reported", () => recorded.invalid.length >= bad.length);
    for (const [key, , reason] of bad) {
      const report = recorded.invalid.find((entry) => entry.key === key);
      expect(report?.reason, key).toMatch(reason);
    }
    expect(peersOf(recorded)).toEqual([
      `10.244.10.0/24@${parseIPv4("198.18.5.10")}`,
      `10.244.11.0/24@${parseIPv4("198.18.5.11")}`,
    ]);
    expect(recorded.events.filter((e) => e.type === "removed")).toEqual([]);
  });

  it("recovers from a compaction between list and watch: re-lists and delivers exactly the difference", async () => {
    const prefix = newPrefix();
    etcd.ctl(["put", `${prefix}/subnets/10.244.20.0-24`, value("198.18.6.20")]);
    // A registry whose first list is followed, before the watch starts, by changes and a compaction
    // past them: the watch from list-revision + 1 is refused by etcd as compacted.
    class CompactingRegistry extends EtcdRegistry {
      private first = true;
      override async listSubnets() {
        const snapshot = await super.listSubnets();
        if (this.first) {
          this.first = false;
          etcd.ctl(["put", `${prefix}/subnets/10.244.21.0-24`, value("198.18.6.21")]);
          etcd.ctl(["del", `${prefix}/subnets/10.244.20.0-24`]);
          etcd.ctl(["put", `${prefix}/subnets/10.244.22.0-24`, value("198.18.6.22")]);
          const header = JSON.parse(etcd.ctl(["get", "x", "-w", "json"])) as { header: { revision: number } };
          etcd.ctl(["compact", String(header.header.revision)]);
        }
        return snapshot;
      }
    }
    const r = new CompactingRegistry({ endpoints: [etcd.endpoint] }, prefix);
    registries.push(r);
    const { recorded, broken } = startWatch(prefix, undefined, r);
    await waitFor("view after compaction", () => recorded.view?.peers.size === 2).catch((e: unknown) => {
      throw new Error(
        `${String(e)} broken=${JSON.stringify(broken)} events=${JSON.stringify(recorded.events.map((x) => x.type))}`,
      );
    });
    expect(broken.join(" ")).toMatch(/compact/i);
    expect(peersOf(recorded)).toEqual([
      `10.244.21.0/24@${parseIPv4("198.18.6.21")}`,
      `10.244.22.0/24@${parseIPv4("198.18.6.22")}`,
    ]);
    expect(recorded.events.map((e) => `${e.type} ${formatCidr(e.lease.subnet)}`).sort()).toEqual([
      "added 10.244.20.0/24",
      "added 10.244.21.0/24",
      "added 10.244.22.0/24",
      "removed 10.244.20.0/24",
    ]);
  });

  it("survives etcd stopping and restarting mid-watch: changes made meanwhile arrive exactly once", async () => {
    const prefix = newPrefix();
    etcd.ctl(["put", `${prefix}/subnets/10.244.30.0-24`, value("198.18.7.30")]);
    etcd.ctl(["put", `${prefix}/subnets/10.244.31.0-24`, value("198.18.7.31")]);
    const { recorded } = startWatch(prefix);
    await waitFor("two peers", () => recorded.view?.peers.size === 2);
    await etcd.stopServer();
    await new Promise((r) => setTimeout(r, 1000));
    await etcd.restartServer();
    etcd.ctl(["del", `${prefix}/subnets/10.244.30.0-24`]);
    etcd.ctl(["put", `${prefix}/subnets/10.244.32.0-24`, value("198.18.7.32")]);
    await waitFor(
      "view after the restart",
      () => recorded.view?.peers.size === 2 && recorded.events.some((e) => e.type === "removed"),
      30_000,
    );
    expect(peersOf(recorded)).toEqual([
      `10.244.31.0/24@${parseIPv4("198.18.7.31")}`,
      `10.244.32.0/24@${parseIPv4("198.18.7.32")}`,
    ]);
    const summary = recorded.events.map((e) => `${e.type} ${formatCidr(e.lease.subnet)}`).sort();
    expect(summary).toEqual([
      "added 10.244.30.0/24",
      "added 10.244.31.0/24",
      "added 10.244.32.0/24",
      "removed 10.244.30.0/24",
    ]);
  });

  it("tells the keeper when the own key is deleted", async () => {
    const prefix = newPrefix();
    const own = await keeper(prefix, "198.18.8.1").acquire(
      config(),
      attrsFor("198.18.8.1"),
      undefined,
      signal(),
    );
    const { recorded } = startWatch(prefix, own);
    await waitFor("initial sync", () => recorded.view !== undefined);
    etcd.ctl(["del", own.key]);
    await waitFor("own key reported gone", () => recorded.own.includes(undefined));
  });

  it("tells the keeper when the own key was deleted after acquisition but before the watch began", async () => {
    const prefix = newPrefix();
    const own = await keeper(prefix, "198.18.8.2").acquire(
      config(),
      attrsFor("198.18.8.2"),
      undefined,
      signal(),
    );
    // The agent writes subnet.env between acquiring and starting its watch: a delete in that window
    // is before the first list, so no watch event will ever carry it.
    etcd.ctl(["del", own.key]);
    const { recorded } = startWatch(prefix, own);
    await waitFor("initial sync", () => recorded.view !== undefined);
    expect(recorded.own).toEqual([undefined]);
  });

  it("reports the own key present on the first list, so the keeper can compare revisions", async () => {
    const prefix = newPrefix();
    const own = await keeper(prefix, "198.18.8.3").acquire(
      config(),
      attrsFor("198.18.8.3"),
      undefined,
      signal(),
    );
    const { recorded } = startWatch(prefix, own);
    await waitFor("initial sync", () => recorded.view !== undefined);
    expect(recorded.own.map((e) => e?.modRevision)).toEqual([own.modRevision]);
  });
});

// The unit tests of the lease room run on test/helpers/memory-registry.ts: these are the etcd
// semantics it claims, checked against etcd itself and against it with the same assertions.
describe.each<{ name: string; open: () => { registry: LeaseRegistry; compact: (revision: number) => void } }>(
  [
    {
      name: "etcd",
      open: () => ({
        registry: registry(newPrefix()),
        compact: (revision) => etcd.ctl(["compact", String(revision)]),
      }),
    },
    {
      name: "the memory registry",
      open: () => {
        const memory = new MemoryRegistry(systemClock, newPrefix());
        registries.push(memory);
        return { registry: memory, compact: (revision) => memory.compact(revision) };
      },
    },
  ],
)("the registry contract: $name", ({ open }) => {
  const v = (ip: string): string => encodeLeaseAttrs(attrsFor(ip));

  it("creates a key only if it is absent, on a fresh lease with the TTL", async () => {
    const { registry: r } = open();
    const key = `${r.subnetsPrefix}10.244.1.0-24`;
    const written = await r.createIfAbsent(key, v("198.18.9.1"), 600);
    expect(written).toBeDefined();
    const entry = await r.getKey(key);
    expect(entry).toMatchObject({ value: v("198.18.9.1"), etcdLeaseId: written?.leaseId });
    expect(entry?.createRevision).toBe(written?.modRevision);
    expect(entry?.modRevision).toBe(written?.modRevision);
    const ttl = await r.timeToLive(written?.leaseId ?? "");
    expect(ttl).toBeGreaterThan(590);
    expect(ttl).toBeLessThanOrEqual(600);
    expect(await r.createIfAbsent(key, v("198.18.9.2"), 600)).toBeUndefined();
    expect((await r.getKey(key))?.value).toBe(v("198.18.9.1"));
  });

  it("replaces a key only at the expected revision, keeping its createRevision", async () => {
    const { registry: r } = open();
    const key = `${r.subnetsPrefix}10.244.2.0-24`;
    const first = await r.createIfAbsent(key, v("198.18.9.1"), 600);
    expect(
      await r.replaceIfUnchanged(key, v("198.18.9.9"), 600, (first?.modRevision ?? 0) - 1),
    ).toBeUndefined();
    const second = await r.replaceIfUnchanged(key, v("198.18.9.1"), 600, first?.modRevision ?? 0);
    expect(second?.modRevision).toBeGreaterThan(first?.modRevision ?? 0);
    expect(await r.getKey(key)).toMatchObject({
      etcdLeaseId: second?.leaseId,
      createRevision: first?.modRevision,
      modRevision: second?.modRevision,
    });
    // The key is off the old lease: revoking that one leaves the key alone.
    await r.revoke(first?.leaseId ?? "");
    expect(await r.timeToLive(first?.leaseId ?? "")).toBeUndefined();
    expect((await r.getKey(key))?.etcdLeaseId).toBe(second?.leaseId);
  });

  it("compares an absent key's mod revision as 0, as an etcd transaction does", async () => {
    const { registry: r } = open();
    const key = `${r.subnetsPrefix}10.244.3.0-24`;
    expect(await r.replaceIfUnchanged(key, v("198.18.9.1"), 600, 1)).toBeUndefined();
    expect(await r.getKey(key)).toBeUndefined();
    expect(await r.replaceIfUnchanged(key, v("198.18.9.1"), 600, 0)).toBeDefined();
  });

  it("keeps a reservation lease-less, deletes only at the expected revision, and revoking a lease deletes its key", async () => {
    const { registry: r } = open();
    const key = `${r.subnetsPrefix}10.244.4.0-24`;
    const created = await r.createIfAbsent(key, v("198.18.9.1"), 600);
    const reserved = await r.putReservationIfUnchanged(key, v("198.18.9.1"), created?.modRevision ?? 0);
    expect(await r.getKey(key)).toMatchObject({ etcdLeaseId: "0", modRevision: reserved });
    expect(await r.timeToLive("0")).toBeUndefined();
    expect(await r.deleteIfUnchanged(key, created?.modRevision ?? 0)).toBe(false);
    expect(await r.deleteIfUnchanged(key, reserved ?? 0)).toBe(true);
    expect(await r.getKey(key)).toBeUndefined();

    const other = `${r.subnetsPrefix}10.244.5.0-24`;
    const leased = await r.createIfAbsent(other, v("198.18.9.2"), 600);
    await r.revoke(leased?.leaseId ?? "");
    expect(await r.getKey(other)).toBeUndefined();
  });

  it("lists the subnets by key at a revision, beside the config", async () => {
    const { registry: r } = open();
    await r.putConfig('{"Network":"10.244.0.0/16"}');
    for (const tail of ["10.244.9.0-24", "10.244.10.0-24"]) {
      await r.createIfAbsent(`${r.subnetsPrefix}${tail}`, v("198.18.9.1"), 600);
    }
    const snapshot = await r.listSubnets();
    expect(snapshot.entries.map((e) => e.key)).toEqual([
      `${r.subnetsPrefix}10.244.10.0-24`,
      `${r.subnetsPrefix}10.244.9.0-24`,
    ]);
    expect(snapshot.revision).toBeGreaterThanOrEqual(Math.max(...snapshot.entries.map((e) => e.modRevision)));
    expect((await r.getConfig()).text).toBe('{"Network":"10.244.0.0/16"}');
  });

  it("watches from a revision, and breaks a watch from before a compaction with the same reason", async () => {
    const { registry: r, compact } = open();
    const a = `${r.subnetsPrefix}10.244.11.0-24`;
    const b = `${r.subnetsPrefix}10.244.12.0-24`;
    const start = (await r.listSubnets()).revision;
    const created = await r.createIfAbsent(a, v("198.18.9.1"), 600);
    await r.createIfAbsent(b, v("198.18.9.2"), 600);
    await r.deleteIfUnchanged(a, created?.modRevision ?? 0);
    const seen: string[] = [];
    const summary = (c: WatchChange): string => (c.type === "put" ? `put ${c.entry.key}` : `delete ${c.key}`);
    const watch = await r.watchPrefix(r.subnetsPrefix, start + 1, {
      onChanges: (changes) => seen.push(...changes.map(summary)),
      onBroken: (reason) => seen.push(`broken: ${reason}`),
    });
    await waitFor("three changes", () => seen.length >= 3);
    await watch.cancel();
    expect(seen).toEqual([`put ${a}`, `put ${b}`, `delete ${a}`]);

    compact((await r.listSubnets()).revision);
    const reasons: string[] = [];
    const late = await r.watchPrefix(r.subnetsPrefix, start + 1, {
      onChanges: () => reasons.push("changes"),
      onBroken: (reason) => reasons.push(reason),
    });
    await waitFor("the watch broken", () => reasons.length > 0);
    await late.cancel();
    expect(reasons).toEqual([COMPACTED_WATCH_REASON]);
  });
});
