// The own lease's lifecycle at unit speed: an in-memory registry with etcd's semantics, a fake clock,
// and the subnet watch wired to the lifecycle as the agent wires it. Each case checks what etcd holds
// and what the observer saw.
import { afterEach, describe, expect, it } from "vitest";
import { pino } from "pino";
import { parseNetworkConfig, type NetworkConfig } from "../../src/config/network-config.js";
import { formatCidr, parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { encodeLeaseAttrs } from "../../src/lease/attrs.js";
import { evaluateConfig, type ConfigState } from "../../src/lease/config-watch.js";
import type { AcquireResult, OwnLease } from "../../src/lease/keeper.js";
import type { LeaseAttrs } from "../../src/lease/lease.js";
import {
  LEASE_LOOP_SLACK_MS,
  LeaseLifecycle,
  type ConfigSource,
  type LifecycleObserver,
  type OwnKeyConflict,
} from "../../src/lease/lifecycle.js";
import { SubnetWatch } from "../../src/lease/subnet-watch.js";
import { FakeClock, settle } from "../helpers/fake-clock.js";
import { MemoryRegistry } from "../helpers/memory-registry.js";

const PREFIX = "/coreos.com/network";
const K = (tail: string): string => `${PREFIX}/subnets/${tail}`;
const OUR_IP = "198.18.0.1";
const OTHER_IP = "198.18.0.2";
const HOST_GW = '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}';
const VXLAN = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
const VTEP_MAC = "02:00:00:00:00:01";
/** The VTEP MAC attrsFor publishes now: a test may give the node a new one (refreshAttributes). */
let currentMac = VTEP_MAC;
// TTL 60 s, margin 10 s: renewal at 50 s, retries every 6 s (a tenth of the TTL).
const TTL_SECONDS = 60;

/** What this node publishes under a config, as the wiring's attrsFor would (the backend decides BackendData). */
function attrsFor(config: NetworkConfig, ip = OUR_IP): LeaseAttrs {
  const vxlan = config.backend.type === "vxlan";
  return {
    publicIP: parseIPv4(ip),
    publicIPv6: null,
    backendType: config.backend.type,
    backendData: vxlan ? `{"VNI":1,"VtepMAC":"${currentMac}"}` : undefined,
    backendV6Data: undefined,
  };
}

const valueFor = (text: string, ip = OUR_IP): string =>
  encodeLeaseAttrs(attrsFor(parseNetworkConfig(text).config, ip));

/** The config watch's seam: the test writes a new config text, listeners hear it at once. */
class TestConfig implements ConfigSource {
  current: ConfigState;
  private readonly listeners = new Set<(state: ConfigState) => void>();

  constructor(text: string | undefined) {
    this.current = evaluateConfig(`${PREFIX}/config`, text).state;
  }

  set(text: string): void {
    this.current = evaluateConfig(`${PREFIX}/config`, text).state;
    for (const listener of this.listeners) listener(this.current);
  }

  onChange(listener: (state: ConfigState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

interface Seen {
  /** Every own lease reported, with the backend type of the config it was reported under. */
  owns: { own: OwnLease; backend: string; subnetLen: number }[];
  acquired: { subnet: string; how: AcquireResult }[];
  lost: string[];
  phases: (string | undefined)[];
  heartbeats: number[];
  raceLost: string[];
  exhausted: string[];
  renewed: string[];
  renewFailed: string[];
  /** Every conflict report: the kind, or undefined when one ended. */
  conflicts: (OwnKeyConflict | undefined)[];
  logs: { msg: string; level: number; err?: { type?: string; message?: string; stack?: string } }[];
}

interface Running {
  clock: FakeClock;
  registry: MemoryRegistry;
  config: TestConfig;
  seen: Seen;
  lifecycle: LeaseLifecycle;
  /** The lifecycle's run(), settled when it ends. */
  done: Promise<void>;
  stop(): Promise<void>;
  /** The last own lease reported. */
  own(): OwnLease;
}

const running: Running[] = [];
afterEach(async () => {
  for (const r of running.splice(0)) await r.stop();
  currentMac = VTEP_MAC;
});

/**
 * Starts a lifecycle the way the agent wires it: the subnet watch starts once there is a lease, gets
 * the own key from every lease reported, and reports the own key back.
 */
async function start(
  options: {
    config?: string | undefined;
    previous?: string;
    /** Writes made before the agent starts (as other nodes or an operator). */
    seed?: (registry: MemoryRegistry) => void;
    /** Keep etcd unreachable from the start. */
    outage?: boolean;
  } = {},
): Promise<Running> {
  const clock = new FakeClock();
  const registry = new MemoryRegistry(clock, PREFIX);
  options.seed?.(registry);
  if (options.outage === true) registry.setOutage(new Error("14 UNAVAILABLE: No connection established"));
  const config = new TestConfig("config" in options ? options.config : HOST_GW);
  const seen: Seen = {
    owns: [],
    acquired: [],
    lost: [],
    phases: [],
    heartbeats: [],
    raceLost: [],
    exhausted: [],
    renewed: [],
    renewFailed: [],
    conflicts: [],
    logs: [],
  };
  const log = pino(
    { level: "debug" },
    { write: (line: string) => seen.logs.push(JSON.parse(line) as Seen["logs"][number]) },
  );
  const controller = new AbortController();
  let watch: SubnetWatch | undefined;
  const observer: LifecycleObserver = {
    ownLease: (own, cfg) => {
      seen.owns.push({ own, backend: cfg.backend.type, subnetLen: cfg.subnetLen });
      const context = { prefix: PREFIX, config: cfg, ownKey: own.key, ownSubnet: own.subnet };
      if (watch === undefined) {
        watch = new SubnetWatch(
          registry,
          context,
          {
            onPeers: () => undefined,
            onInvalid: () => undefined,
            onOwnKey: (entry) => lifecycle.ownKeyChanged(entry),
          },
          log,
          clock,
        );
        void watch.run(controller.signal);
      } else watch.setContext(context);
    },
    acquired: (own, how) => seen.acquired.push({ subnet: formatCidr(own.subnet), how }),
    leaseLost: (reason) => seen.lost.push(reason),
    phase: (reason) => seen.phases.push(reason),
    heartbeat: (withinMs) => seen.heartbeats.push(withinMs),
    raceLost: (subnet) => seen.raceLost.push(formatCidr(subnet.subnet)),
    exhausted: (message) => seen.exhausted.push(message),
    renewed: (own) => seen.renewed.push(own.leaseId),
    renewFailed: (error) => seen.renewFailed.push(error),
    conflict: (conflict) => seen.conflicts.push(conflict),
  };
  const lifecycle = new LeaseLifecycle({
    registry,
    keeper: { publicIP: parseIPv4(OUR_IP), ttlSeconds: TTL_SECONDS, renewMarginSeconds: 10 },
    config,
    attrsFor: (cfg) => Promise.resolve(attrsFor(cfg)),
    previousSubnet: options.previous === undefined ? undefined : { subnet: parseCidr(options.previous) },
    observer,
    log,
    clock,
    random: () => 0, // the first free subnet; no jitter
  });
  const done = lifecycle.run(controller.signal);
  const r: Running = {
    clock,
    registry,
    config,
    seen,
    lifecycle,
    done,
    stop: async () => {
      controller.abort();
      await done;
    },
    own: () => {
      const last = seen.owns.at(-1)?.own;
      if (last === undefined) throw new Error("no own lease reported yet");
      return last;
    },
  };
  running.push(r);
  await settle();
  return r;
}

/** The key as etcd holds it: its value, and whether it is a reservation or its lease is alive. */
function held(registry: MemoryRegistry, key: string): { value: string; lease: string } | undefined {
  const entry = registry.entry(key);
  if (entry === undefined) return undefined;
  const lease = entry.etcdLeaseId === "0" ? "none" : registry.hasLease(entry.etcdLeaseId) ? "alive" : "gone";
  return { value: entry.value, lease };
}

const messages = (seen: Seen): string[] => seen.logs.map((l) => l.msg);

/** "…/subnets/10.244.9.0-24" → "10.244.9.0/24". */
const subnetOf = (key: string): string => (key.split("/").at(-1) ?? "").replace("-", "/");

describe("first acquisition", () => {
  it.each<{
    name: string;
    previous?: string;
    seed?: (registry: MemoryRegistry) => void;
    key: string;
    how: AcquireResult;
    lease: "alive" | "none";
  }>([
    { name: "a free subnet", key: K("10.244.1.0-24"), how: "created-free", lease: "alive" },
    {
      name: "the subnet file's subnet, when free",
      previous: "10.244.77.0/24",
      key: K("10.244.77.0-24"),
      how: "created-previous",
      lease: "alive",
    },
    {
      name: "not the subnet file's subnet when another node holds it",
      previous: "10.244.77.0/24",
      seed: (r) => r.put(K("10.244.77.0-24"), valueFor(HOST_GW, OTHER_IP), r.grantLease(600)),
      key: K("10.244.1.0-24"),
      how: "created-free",
      lease: "alive",
    },
    {
      name: "the lease already held for this node's address",
      seed: (r) => r.put(K("10.244.9.0-24"), valueFor(HOST_GW), r.grantLease(600)),
      key: K("10.244.9.0-24"),
      how: "reused",
      lease: "alive",
    },
    {
      name: "a reservation for this node's address, kept a reservation",
      seed: (r) => r.put(K("10.244.9.0-24"), valueFor(HOST_GW)),
      key: K("10.244.9.0-24"),
      how: "reserved",
      lease: "none",
    },
  ])("takes $name", async ({ previous, seed, key, how, lease }) => {
    const r = await start({ ...(previous === undefined ? {} : { previous }), ...(seed ? { seed } : {}) });
    expect(held(r.registry, key)).toEqual({ value: valueFor(HOST_GW), lease });
    expect(r.seen.acquired).toEqual([{ subnet: subnetOf(key), how }]);
    expect(r.seen.owns.map((o) => o.own.key)).toEqual([key]);
    expect(r.own().leaseId).toBe(r.registry.entry(key)?.etcdLeaseId);
    expect(r.seen.phases).toEqual(["acquiring a subnet lease", undefined]);
    expect(r.seen.lost).toEqual([]);
    expect(messages(r.seen)).toContain("subnet lease acquired");
  });

  it("revokes the old etcd lease of a reused key", async () => {
    let old = "";
    const r = await start({
      seed: (registry) => {
        old = registry.grantLease(600);
        registry.put(K("10.244.9.0-24"), valueFor(HOST_GW), old);
      },
    });
    expect(r.registry.hasLease(old)).toBe(false);
    expect(r.own().leaseId).not.toBe(old);
  });

  it("waits for a valid network config, then acquires under it", async () => {
    const r = await start({ config: undefined });
    expect(r.seen.phases).toEqual(["waiting for a valid network config"]);
    expect(r.seen.heartbeats).toEqual([Infinity]);
    r.config.set('{"Network":"10.244.0.0/16","SubnetLen":31}'); // invalid: still waiting
    await settle();
    expect(r.registry.subnetEntries()).toEqual([]);
    r.config.set(VXLAN);
    await settle();
    expect(held(r.registry, K("10.244.1.0-24"))).toEqual({ value: valueFor(VXLAN), lease: "alive" });
    expect(r.seen.owns.map((o) => o.backend)).toEqual(["vxlan"]);
  });

  it("retries with a fresh choice after losing a race, and wins", async () => {
    const r = await start({
      seed: (registry) =>
        // Another node creates the chosen key between our list and our create.
        registry.before("createIfAbsent", () =>
          registry.put(K("10.244.1.0-24"), valueFor(HOST_GW, OTHER_IP), registry.grantLease(600)),
        ),
    });
    expect(r.seen.raceLost).toEqual(["10.244.1.0/24"]);
    expect(r.seen.acquired).toEqual([{ subnet: "10.244.2.0/24", how: "created-free" }]);
    expect(held(r.registry, K("10.244.1.0-24"))?.value).toBe(valueFor(HOST_GW, OTHER_IP));
    expect(held(r.registry, K("10.244.2.0-24"))).toEqual({ value: valueFor(HOST_GW), lease: "alive" });
  });

  it("reports an exhausted pool and keeps trying until a subnet is freed", async () => {
    const tiny = '{"Network":"10.244.0.0/28","SubnetLen":30,"Backend":{"Type":"host-gw"}}';
    const others = [K("10.244.0.4-30"), K("10.244.0.8-30"), K("10.244.0.12-30")];
    const r = await start({
      config: tiny,
      seed: (registry) => {
        others.forEach((key, i) =>
          registry.put(key, valueFor(tiny, `198.18.0.${10 + i}`), registry.grantLease(600)),
        );
      },
    });
    expect(r.seen.exhausted).toEqual([
      "no free subnet in 10.244.0.0/28: all 3 subnets of the pool are in use (3 leased); widen Network or SubnetMin/SubnetMax, or delete stale leases",
    ]);
    await r.clock.advance(5_000);
    expect(r.seen.exhausted.length).toBeGreaterThan(1);
    expect(r.seen.owns).toEqual([]);
    r.registry.delete(K("10.244.0.8-30"));
    await r.clock.advance(30_000);
    expect(r.seen.acquired).toEqual([{ subnet: "10.244.0.8/30", how: "created-free" }]);
    expect(held(r.registry, K("10.244.0.8-30"))).toEqual({ value: valueFor(tiny), lease: "alive" });
  });

  it("stops in the middle of an acquisition that cannot reach etcd, without a lease", async () => {
    const r = await start({ outage: true });
    await r.clock.advance(10_000);
    expect(messages(r.seen)).toContain("cannot acquire a subnet lease from etcd; retrying");
    await r.stop();
    await expect(r.done).resolves.toBeUndefined();
    expect(r.seen.owns).toEqual([]);
    expect(r.seen.phases).toEqual(["acquiring a subnet lease"]);
    expect(r.lifecycle.current).toBeUndefined();
  });
});

describe("keeping the lease", () => {
  it("renews before expiry onto a fresh etcd lease and revokes the old one", async () => {
    const r = await start();
    const first = r.own();
    // Renewal is due 10 s before the 60 s expiry; the loop promises to be back by then plus slack.
    expect(r.seen.heartbeats.at(-1)).toBe(50_000 + 6_000 + LEASE_LOOP_SLACK_MS);
    await r.clock.advance(49_000);
    expect(r.seen.renewed).toEqual([]);
    await r.clock.advance(1_000);
    const renewed = r.own();
    expect(r.seen.renewed).toEqual([renewed.leaseId]);
    expect(renewed.leaseId).not.toBe(first.leaseId);
    expect(renewed.key).toBe(first.key);
    expect(r.registry.hasLease(first.leaseId)).toBe(false);
    expect(r.registry.entry(first.key)?.etcdLeaseId).toBe(renewed.leaseId);
    expect(held(r.registry, first.key)).toEqual({ value: valueFor(HOST_GW), lease: "alive" });
    expect(messages(r.seen)).toContain("lease renewed");
    // A renewal of our own is not a change of the own key to react to.
    await r.clock.advance(1_000);
    expect(r.seen.lost).toEqual([]);
    expect(r.seen.acquired).toHaveLength(1);
  });

  it("keeps a key for longer than its TTL by renewing it", async () => {
    const r = await start();
    const key = r.own().key;
    for (let i = 0; i < 5; i++) await r.clock.advance(30_000);
    expect(r.seen.renewed.length).toBeGreaterThanOrEqual(3);
    expect(held(r.registry, key)).toEqual({ value: valueFor(HOST_GW), lease: "alive" });
    expect(r.seen.lost).toEqual([]);
  });

  it("retries failed renewals until expiry, then reports the lease lost and acquires it again", async () => {
    const r = await start();
    const first = r.own();
    r.registry.setOutage(new Error("14 UNAVAILABLE: No connection established"));
    await r.clock.advance(60_000); // renewal due at 50 s, retried at 56 s and at the 60 s expiry
    expect(r.seen.renewFailed).toEqual(Array(3).fill("14 UNAVAILABLE: No connection established"));
    expect(r.seen.lost).toEqual(["expired while renewals failed"]);
    expect(r.registry.entry(first.key)).toBeUndefined(); // etcd let it expire meanwhile
    expect(r.seen.phases.at(-1)).toBe("re-acquiring the subnet lease");
    expect(r.seen.heartbeats.at(-1)).toBe(Infinity);
    // The failure is logged as an error object: type, message and stack, with the original as cause.
    const failure = r.seen.logs.find((l) => l.msg === "lease renewal failed; retrying");
    expect(failure?.err?.type).toBe("LeaseStoreError");
    expect(failure?.err?.message).toBe(
      "etcd call failed (memory registry): 14 UNAVAILABLE: No connection established",
    );
    expect(failure?.err?.stack).toContain("caused by: Error: 14 UNAVAILABLE");

    r.registry.setOutage(undefined);
    await r.clock.advance(30_000);
    expect(r.seen.acquired.at(-1)).toEqual({ subnet: "10.244.1.0/24", how: "created-previous" });
    expect(held(r.registry, first.key)).toEqual({ value: valueFor(HOST_GW), lease: "alive" });
    expect(r.seen.phases.at(-1)).toBeUndefined();
  });

  it("re-acquires the same subnet when the key expires on its TTL (renewals failing, etcd up)", async () => {
    const r = await start();
    const first = r.own();
    r.registry.failNext(100, { only: "replaceIfUnchanged" });
    await r.clock.advance(60_000);
    expect(r.seen.renewFailed).toHaveLength(2); // at 50 s and 56 s; the expiry came first at 60 s
    expect(r.seen.lost).toEqual(["deleted or expired in etcd"]);
    expect(r.seen.acquired.at(-1)).toEqual({ subnet: "10.244.1.0/24", how: "created-previous" });
    expect(held(r.registry, first.key)).toEqual({ value: valueFor(HOST_GW), lease: "alive" });
    expect(messages(r.seen)).toContain("own lease disappeared from etcd (deleted or expired); re-acquiring");
  });

  it("ignores a deletion report that is older than its lease (etcd still has the key)", async () => {
    const r = await start();
    const before = r.registry.revision;
    r.lifecycle.ownKeyChanged(undefined);
    await settle();
    expect(r.seen.lost).toEqual([]);
    expect(r.seen.acquired).toHaveLength(1);
    expect(r.registry.revision).toBe(before);
  });

  it("releases the key on request, after stopping", async () => {
    const r = await start();
    const own = r.own();
    await r.stop();
    await r.lifecycle.release();
    expect(r.registry.entry(own.key)).toBeUndefined();
    expect(r.registry.hasLease(own.leaseId)).toBe(false);
  });
});

describe("the own key changing in etcd", () => {
  it.each<{
    name: string;
    change: (registry: MemoryRegistry, key: string) => void;
    lost: string[];
    /** Where this node's lease is afterwards. */
    ours: string;
    /** What the old key holds afterwards (undefined: gone). */
    oldKeyValue: (key: string) => string | undefined;
  }>([
    {
      name: "deleted: the same subnet is acquired again",
      change: (registry, key) => registry.delete(key),
      lost: ["deleted or expired in etcd"],
      ours: K("10.244.1.0-24"),
      oldKeyValue: () => valueFor(HOST_GW),
    },
    {
      name: "its etcd lease revoked: the same subnet is acquired again",
      change: (registry, key) => registry.revokeLease(registry.entry(key)?.etcdLeaseId ?? ""),
      lost: ["deleted or expired in etcd"],
      ours: K("10.244.1.0-24"),
      oldKeyValue: () => valueFor(HOST_GW),
    },
  ])("$name", async ({ change, lost, ours, oldKeyValue }) => {
    const r = await start();
    const key = r.own().key;
    change(r.registry, key);
    await settle();
    expect(r.seen.lost).toEqual(lost);
    expect(r.own().key).toBe(ours);
    expect(held(r.registry, ours)).toEqual({ value: valueFor(HOST_GW), lease: "alive" });
    expect(r.registry.entry(key)?.value).toBe(oldKeyValue(key));
    expect(r.seen.phases).toEqual([
      "acquiring a subnet lease",
      undefined,
      "re-acquiring the subnet lease",
      undefined,
    ]);
  });

  it.each<{
    name: string;
    change: (registry: MemoryRegistry, key: string) => void;
    kind: OwnKeyConflict["kind"];
    otherPublicIP: string | undefined;
    message: RegExp;
  }>([
    {
      name: "overwritten with another node's address",
      change: (registry, key) => registry.put(key, valueFor(HOST_GW, OTHER_IP), registry.grantLease(600)),
      kind: "own-key-overwritten",
      otherPublicIP: OTHER_IP,
      message:
        /overwritten by another writer with PublicIP 198\.18\.0\.2; this node keeps serving its pods on 10\.244\.1\.0\/24.*etcdctl del/,
    },
    {
      name: "overwritten with garbage",
      change: (registry, key) => registry.put(key, "{not json"),
      kind: "own-key-overwritten",
      otherPublicIP: undefined,
      message: /with a value that cannot be read/,
    },
    {
      name: "rewritten with this node's address by another agent (its own etcd lease)",
      change: (registry, key) => registry.put(key, valueFor(HOST_GW), registry.grantLease(600)),
      kind: "duplicate-public-ip",
      otherPublicIP: OUR_IP,
      message: /another agent writes this node's public IP 198\.18\.0\.1 .* --public-ip or --iface/,
    },
    {
      name: "rewritten with this node's address and another identity, on this node's etcd lease",
      change: (registry, key) =>
        registry.put(
          key,
          encodeLeaseAttrs({ ...attrsFor(parseNetworkConfig(HOST_GW).config), backendData: '{"X":1}' }),
          registry.entry(key)?.etcdLeaseId,
        ),
      kind: "duplicate-public-ip",
      otherPublicIP: OUR_IP,
      message: /BackendData \{"X":1\}/,
    },
  ])(
    "$name: keeps its subnet, does not fight, reports the conflict until the key is gone",
    async ({ change, kind, otherPublicIP, message }) => {
      const r = await start();
      const first = r.own();
      change(r.registry, first.key);
      const theirs = r.registry.entry(first.key)?.value;
      await settle();
      expect(r.seen.lost).toEqual([]);
      expect(r.seen.owns).toHaveLength(1); // the same subnet, never moved
      expect(r.seen.conflicts).toHaveLength(1);
      expect(r.seen.conflicts[0]).toMatchObject({ kind, key: first.key, otherPublicIP });
      expect(r.seen.conflicts[0]?.message).toMatch(message);
      expect(r.seen.logs.filter((l) => l.level === 50).map((l) => l.msg)).toEqual([
        r.seen.conflicts[0]?.message,
      ]);
      // Past the renewal time (50 s): no write to the key, no move, no second report.
      const writes = r.registry.revision;
      await r.clock.advance(55_000);
      expect(r.registry.entry(first.key)?.value).toBe(theirs);
      expect(r.registry.calls.filter((c) => c === "createIfAbsent")).toHaveLength(1);
      expect(r.seen.conflicts).toHaveLength(1);
      // The operator deletes the key: the same subnet is acquired again and the conflict is over.
      const before = r.registry.revision;
      expect(before).toBeGreaterThanOrEqual(writes);
      r.registry.delete(first.key);
      await settle();
      expect(r.own().key).toBe(first.key);
      expect(held(r.registry, first.key)).toEqual({ value: valueFor(HOST_GW), lease: "alive" });
      expect(r.seen.conflicts.at(-1)).toBeUndefined();
    },
  );

  it("re-publishes new attributes on request (a new VTEP MAC), same key and subnet", async () => {
    const r = await start({ config: VXLAN });
    const first = r.own();
    currentMac = "02:00:00:00:00:99";
    r.lifecycle.refreshAttributes();
    await settle();
    expect(held(r.registry, first.key)).toEqual({ value: valueFor(VXLAN), lease: "alive" });
    expect(r.registry.entry(first.key)?.value).toContain("02:00:00:00:00:99");
    expect(r.own()).toMatchObject({ key: first.key, createRevision: first.createRevision });
    expect(r.seen.lost).toEqual([]);
    // Nothing new: no write.
    const revision = r.registry.revision;
    r.lifecycle.refreshAttributes();
    await settle();
    expect(r.registry.revision).toBe(revision);
  });

  it("rewritten in place on its own etcd lease with its own identity (an operator's edit): adopted", async () => {
    const r = await start();
    const first = r.own();
    const revision = r.registry.put(first.key, valueFor(HOST_GW), first.leaseId);
    await settle();
    expect(r.seen.conflicts).toEqual([]);
    expect(r.own()).toMatchObject({ key: first.key, leaseId: first.leaseId, modRevision: revision });
    expect(messages(r.seen)).toContain("own lease rewritten in etcd with this node's address; adopting it");
  });

  it("rewritten as a reservation with this node's address: adopted as one, never renewed", async () => {
    const r = await start();
    const first = r.own();
    const revision = r.registry.put(first.key, valueFor(HOST_GW));
    await settle();
    expect(r.own()).toMatchObject({
      key: first.key,
      leaseId: "0",
      modRevision: revision,
      expiresAt: Infinity,
    });
    expect(r.seen.heartbeats.at(-1)).toBe(Infinity);
    await r.clock.advance(10 * 60_000);
    expect(r.seen.renewed).toEqual([]);
    expect(r.registry.calls).not.toContain("replaceIfUnchanged");
    expect(held(r.registry, first.key)).toEqual({ value: valueFor(HOST_GW), lease: "none" });
    expect(r.seen.lost).toEqual([]);
  });
});

describe("network config changes", () => {
  it("re-publishes the lease with the new attributes when it still fits, same subnet", async () => {
    const r = await start();
    const first = r.own();
    r.config.set(VXLAN);
    await settle();
    expect(held(r.registry, first.key)).toEqual({ value: valueFor(VXLAN), lease: "alive" });
    expect(r.own().key).toBe(first.key);
    expect(r.registry.hasLease(first.leaseId)).toBe(false);
    expect(r.seen.owns.map((o) => o.backend)).toEqual(["host-gw", "vxlan"]);
    expect(r.seen.lost).toEqual([]);
    expect(r.seen.acquired).toHaveLength(1);
    expect(messages(r.seen)).toContain("network config changed; applying it");
  });

  it("reports a change that leaves the attributes alone without writing to etcd", async () => {
    const r = await start();
    const before = r.registry.revision;
    r.config.set('{"Network":"10.244.0.0/15","Backend":{"Type":"host-gw"}}');
    await settle();
    expect(r.registry.revision).toBe(before);
    expect(r.seen.owns).toHaveLength(2);
    expect(r.seen.owns[1]?.own).toEqual(r.seen.owns[0]?.own);
  });

  it("a config whose only change is formatting is no change", async () => {
    const r = await start();
    r.config.set(HOST_GW.replace(",", ", "));
    await settle();
    // The text differs, so it is looked at; nothing else differs, so nothing is written.
    expect(r.seen.owns).toHaveLength(2);
    r.config.set(HOST_GW.replace(",", ", "));
    await settle();
    expect(r.seen.owns).toHaveLength(2);
  });

  it("moves to a subnet that fits when the lease no longer does, deleting the old key", async () => {
    const r = await start();
    const first = r.own();
    const narrower = '{"Network":"10.244.0.0/16","SubnetLen":25,"Backend":{"Type":"host-gw"}}';
    r.config.set(narrower);
    await settle();
    const moved = r.own();
    expect(moved.subnet.prefixLen).toBe(25);
    expect(r.registry.entry(first.key)).toBeUndefined();
    expect(held(r.registry, moved.key)).toEqual({ value: valueFor(narrower), lease: "alive" });
    expect(r.seen.owns.map((o) => o.subnetLen)).toEqual([24, 25]);
    expect(r.seen.lost).toEqual([]);
    expect(r.seen.phases.slice(2)).toEqual(["re-acquiring the subnet lease", undefined]);
    expect(messages(r.seen)).toContain("the own lease no longer fits the network config; re-acquiring");
  });

  it("retries a re-publish that etcd refused, and applies the config once it can", async () => {
    const r = await start();
    r.registry.failNext(1, { only: "replaceIfUnchanged" });
    r.config.set(VXLAN);
    await settle();
    expect(held(r.registry, r.own().key)?.value).toBe(valueFor(HOST_GW));
    expect(messages(r.seen)).toContain("cannot publish the lease for the new network config; retrying");
    await r.clock.advance(2_000);
    expect(held(r.registry, r.own().key)).toEqual({ value: valueFor(VXLAN), lease: "alive" });
    expect(r.seen.owns.map((o) => o.backend)).toEqual(["host-gw", "vxlan"]);
  });
});
