// The /status document and `twill status`'s rendering of it, built from the agent's state.
import { describe, expect, it } from "vitest";
import { familyLease } from "../helpers/leases.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import { parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import type { Lease } from "../../src/lease/lease.js";
import {
  buildStatus,
  formatAge,
  normaliseAddress,
  renderStatus,
  type StatusJson,
} from "../../src/metrics/status.js";
import { initialState, type AgentState, type DataplaneState } from "../../src/state.js";

const NOW = Date.UTC(2026, 10, 22, 12, 0, 0);
const key = (n: number): string => `/coreos.com/network/subnets/10.244.${n}.0-24`;

function lease(n: number, backendType: string | undefined): Lease {
  return {
    subnet: parseCidr(`10.244.${n}.0/24`),
    attrs: {
      publicIP: parseIPv4(`198.18.0.${n}`),
      publicIPv6: null,
      backendType,
      backendData: undefined,
      backendV6Data: undefined,
    },
    key: key(n),
    etcdLeaseId: "7",
    createRevision: n,
    modRevision: n,
  };
}

const configText = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';

/** A ready agent with three peers through a round, one pending and two invalid entries. */
function readyAgent(): AgentState {
  const own = lease(1, "vxlan");
  // Inserted out of order: the document sorts peers by subnet.
  const peers = [lease(12, "vxlan"), lease(3, "vxlan"), lease(4, "host-gw"), lease(5, "vxlan")];
  const config = parseNetworkConfig(configText).config;
  return {
    ...initialState(),
    phase: undefined,
    config: { kind: "valid", config, text: configText },
    external: {
      name: "eth0",
      index: 2,
      mtu: 1500,
      ifaceIp: parseIPv4("198.18.0.1"),
      publicIp: parseIPv4("198.18.0.1"),
    },
    ownLease: {
      subnet: own.subnet,
      key: own.key,
      attrs: own.attrs,
      leaseId: "99",
      createRevision: 1,
      modRevision: 1,
      expiresAt: NOW + 23 * 3600_000 + 15 * 60_000,
    },
    backend: { type: config.backend.type, options: config.backend.options },
    subnetFileWritten: true,
    view: {
      peers: new Map(peers.map((l) => [l.key, l])),
      invalid: new Map([
        [
          "/coreos.com/network/subnets/10.244.9.0-24",
          {
            key: "/coreos.com/network/subnets/10.244.9.0-24",
            reason: 'bad value: PublicIP "x" is not an IPv4 address',
            modRevision: 40,
          },
        ],
        [
          "/coreos.com/network/subnets/junk",
          { key: "/coreos.com/network/subnets/junk", reason: "not a subnet key", modRevision: 41 },
        ],
      ]),
    },
    dataplane: {
      programmed: true,
      lastRound: {
        at: NOW - 3000,
        trigger: "peers",
        durationMs: 4.26,
        ops: 9,
        failed: 0,
        repairs: 0,
        result: "ok",
        error: undefined,
      },
      lastSuccessAt: NOW - 3000,
      peerStates: new Map([
        [key(3), { state: "programmed", reason: "vxlan via flannel.1 to 198.18.0.3" }],
        [key(4), { state: "backend-mismatch", reason: "peer 10.244.4.0/24 uses backend host-gw" }],
        [key(12), { state: "programmed", reason: "vxlan via flannel.1 to 198.18.0.12" }],
      ]),
      driftRepairs: { route: 2, neighbour: 0, fdb: 1, device: 1 },
      kernelObjects: { route: 2, neighbour: 2, fdb: 2 },
    },
    masq: {
      installed: true,
      iptables: {
        command: "iptables-nft",
        reason: "kubelet's KUBE-IPTABLES-HINT chain is in the nft tables",
      },
      watch: "nftables notifications",
      restored: 0,
      errors: 0,
    },
    configWatch: "watching",
    subnetWatch: { state: "watching", since: NOW - 3_720_000, reason: undefined, restarts: 2 },
    leaseLost: 0,
    nodeProblems: [],
  };
}

function status(agent: AgentState = readyAgent(), unhealthy: string[] = []): StatusJson {
  return buildStatus({ version: "0.1.0", now: NOW, state: agent, unhealthy });
}

describe("buildStatus", () => {
  it("joins the agent's view with the data plane's peer states, sorted, invalid entries last", () => {
    const s = status();
    expect(s.ready).toBe(true);
    expect(s.notReady).toEqual([]);
    expect(s.generatedAt).toBe("2026-11-22T12:00:00.000Z");
    expect(s.lease).toEqual({
      subnet: "10.244.1.0/24",
      ipv6Subnet: null,
      key: key(1),
      publicIP: "198.18.0.1",
      publicIPv6: null,
      backend: "vxlan",
      reserved: false,
      expiresAt: "2026-11-23T11:15:00.000Z",
      lost: 0,
      conflict: null,
    });
    expect(s.config).toEqual({
      state: "valid",
      network: "10.244.0.0/16",
      ipv6Network: null,
      backend: "vxlan",
      backendOptions: { VNI: 1, Port: 8472, MTU: null, GBP: false, Learning: false, DirectRouting: false },
      message: null,
    });
    expect(s.peers.map((p) => [p.subnet, p.state])).toEqual([
      ["10.244.3.0/24", "programmed"],
      ["10.244.4.0/24", "backend-mismatch"],
      ["10.244.5.0/24", "pending"],
      ["10.244.12.0/24", "programmed"],
      ["10.244.9.0/24", "invalid"],
      [null, "invalid"],
    ]);
    expect(s.etcd).toEqual({
      watch: "watching",
      since: "2026-11-22T10:58:00.000Z",
      reason: null,
      restarts: 2,
      unreachable: null,
    });
    expect(s.lastRound?.durationMs).toBe(4.3);
    expect(s.masq).toEqual({
      restored: 0,
      errors: 0,
      iptables: {
        command: "iptables-nft",
        reason: "kubelet's KUBE-IPTABLES-HINT chain is in the nft tables",
      },
      ip6tables: null,
      watch: "nftables notifications",
    });
    // Plain JSON: survives a round trip unchanged.
    expect(JSON.parse(JSON.stringify(s))).toEqual(s);
  });

  it("names the ip6tables command of the IPv6 rules once chosen", () => {
    const agent = readyAgent();
    const s = status({
      ...agent,
      masq: { ...agent.masq, ip6tables: { command: "ip6tables-nft", reason: "the IPv4 rules' backend" } },
    });
    expect(s.masq.ip6tables).toEqual({ command: "ip6tables-nft", reason: "the IPv4 rules' backend" });
    expect(renderStatus(s)).toContain("ip6tables:      ip6tables-nft (the IPv4 rules' backend)\n");
  });

  it("shows a reservation without an expiry, and a missing config with its key", () => {
    const agent = readyAgent();
    const own = agent.ownLease;
    if (!own) throw new Error("fixture");
    const s = status({
      ...agent,
      ownLease: { ...own, leaseId: "0", expiresAt: Infinity },
      config: { kind: "missing", key: "/coreos.com/network/config" },
    });
    expect(s.lease?.reserved).toBe(true);
    expect(s.lease?.expiresAt).toBeNull();
    expect(s.config).toEqual({
      state: "missing",
      network: null,
      ipv6Network: null,
      backend: null,
      backendOptions: null,
      message: "no network config at /coreos.com/network/config",
    });
    expect(s.ready).toBe(false);
    expect(s.notReady).toEqual(["no network config at /coreos.com/network/config"]);
    expect(JSON.stringify(s)).not.toContain("Infinity");
  });

  it("derives readiness from the state, every reason in order, and health from the loops", () => {
    const s = status({ ...initialState(), masq: { ...initialState().masq, installed: false } }, [
      "dataplane loop stuck: last heartbeat 130s ago, expected within 120s",
    ]);
    expect(s.ready).toBe(false);
    expect(s.notReady).toEqual([
      "starting",
      "no subnet lease yet",
      "subnet file not written",
      "peer view not synced",
      "data plane not programmed yet",
      "masquerade/forward rules not installed yet",
    ]);
    expect(s.healthy).toBe(false);
    expect(s.unhealthy).toEqual(["dataplane loop stuck: last heartbeat 130s ago, expected within 120s"]);
    expect(s.config).toMatchObject({ state: "unknown", network: null, backendOptions: null });
    expect(s.lease).toBeNull();
    expect(s.peers).toEqual([]);
    expect(s.lastRound).toBeNull();
    expect(s.masq).toEqual({ restored: 0, errors: 0, iptables: null, ip6tables: null, watch: null });
  });
});

/** The agent while it (re-)acquires a lease after a failed round, with a broken watch. */
function startingAgent(): AgentState {
  const ready = readyAgent();
  const dataplane: DataplaneState = {
    ...ready.dataplane,
    programmed: false,
    lastRound: {
      at: NOW - 65_000,
      trigger: "retry",
      durationMs: 120,
      ops: 3,
      failed: 1,
      repairs: 0,
      result: "error",
      error: "Network is unreachable (ENETUNREACH)",
    },
    lastSuccessAt: undefined,
    driftRepairs: { route: 0, neighbour: 0, fdb: 0, device: 0 },
    kernelObjects: { route: 1, neighbour: 0, fdb: 0 },
  };
  return {
    ...ready,
    phase: "acquiring a subnet lease",
    ownLease: undefined,
    external: undefined,
    view: undefined,
    subnetFileWritten: false,
    nodeProblems: ["net.bridge.bridge-nf-call-iptables is 0, not 1: …"],
    dataplane,
    subnetWatch: { state: "broken", since: NOW - 20_000, reason: "etcd unavailable", restarts: 1 },
    etcdProblem: {
      message:
        "14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 198.18.0.254:2379",
      since: NOW - 20_000,
      where: "http://198.18.0.254:2379",
    },
    masq: { ...ready.masq, watch: undefined, restored: 3, errors: 1 },
  };
}

describe("renderStatus", () => {
  it("renders a healthy agent (golden)", () => {
    expect(renderStatus(status())).toBe(
      [
        "twill 0.1.0 — ready",
        "",
        "config:         network 10.244.0.0/16, backend vxlan",
        "lease:          10.244.1.0/24 public IP 198.18.0.1, expires 2026-11-23T11:15:00.000Z (in 23h15m)",
        "interface:      eth0 (public IP 198.18.0.1)",
        "subnet file:    written",
        "etcd:           watching subnets (since 1h02m ago), 2 watch restarts",
        "last reconcile: 3s ago, trigger peers, 9 ops, 4.3 ms, ok",
        "kernel:         2 routes, 2 neighbours, 2 FDB entries",
        "drift repaired: 4 (route 2, neighbour 0, fdb 1, device 1)",
        "iptables:       iptables-nft (kubelet's KUBE-IPTABLES-HINT chain is in the nft tables); removals noticed by nftables notifications",
        "",
        "peers: 6 (2 programmed, 1 pending, 1 backend-mismatch, 2 invalid)",
        "  SUBNET                            PUBLIC IP    BACKEND  STATE             DETAIL",
        "  10.244.3.0/24                     198.18.0.3   vxlan    programmed        vxlan via flannel.1 to 198.18.0.3",
        "  10.244.4.0/24                     198.18.0.4   host-gw  backend-mismatch  peer 10.244.4.0/24 uses backend host-gw",
        "  10.244.5.0/24                     198.18.0.5   vxlan    pending",
        "  10.244.12.0/24                    198.18.0.12  vxlan    programmed        vxlan via flannel.1 to 198.18.0.12",
        '  10.244.9.0/24                     -            -        invalid           bad value: PublicIP "x" is not an IPv4 address',
        "  /coreos.com/network/subnets/junk  -            -        invalid           not a subnet key",
        "",
      ].join("\n"),
    );
  });

  it("renders a starting, unhealthy agent with a broken watch and a failed round (golden)", () => {
    const text = renderStatus(
      status(startingAgent(), ["dataplane loop stuck: last heartbeat 130s ago, expected within 120s"]),
    );
    expect(text).toBe(
      [
        "twill 0.1.0 — NOT READY",
        "  not ready: acquiring a subnet lease",
        `  not ready: etcd unreachable since ${new Date(NOW - 20_000).toISOString()} at http://198.18.0.254:2379: 14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 198.18.0.254:2379`,
        "  not ready: no subnet lease yet",
        "  not ready: subnet file not written",
        "  not ready: peer view not synced",
        "  not ready: data plane not programmed yet",
        "  UNHEALTHY: dataplane loop stuck: last heartbeat 130s ago, expected within 120s",
        "  node problem: net.bridge.bridge-nf-call-iptables is 0, not 1: …",
        "",
        "config:         network 10.244.0.0/16, backend vxlan",
        "lease:          none yet",
        "interface:      not selected yet",
        "subnet file:    not written",
        "etcd:           watch broken 20s ago: etcd unavailable; 1 watch restart",
        `etcd:           UNREACHABLE since ${new Date(NOW - 20_000).toISOString()} (20s ago) at http://198.18.0.254:2379: 14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 198.18.0.254:2379`,
        "last reconcile: 1m05s ago, trigger retry, 3 ops (1 failed), 120 ms, ERROR: Network is unreachable (ENETUNREACH)",
        "last success:   never",
        "kernel:         1 route, 0 neighbours, 0 FDB entries",
        "drift repaired: none",
        "iptables:       iptables-nft (kubelet's KUBE-IPTABLES-HINT chain is in the nft tables)",
        "masquerade:     3 rules restored, 1 error",
        "",
        "peers: 0",
        "",
      ].join("\n"),
    );
  });

  it("renders a reservation and a lost lease", () => {
    const agent = readyAgent();
    const own = agent.ownLease;
    if (!own) throw new Error("fixture");
    const text = renderStatus(
      status({ ...agent, ownLease: { ...own, leaseId: "0", expiresAt: Infinity }, leaseLost: 2 }),
    );
    expect(text).toContain(
      "lease:          10.244.1.0/24 public IP 198.18.0.1, reservation, never expires, lost and re-acquired 2 times\n",
    );
  });
});

describe("helpers", () => {
  it.each([
    [0, "0s"],
    [59_400, "59s"],
    [61_000, "1m01s"],
    [3_600_000, "1h00m"],
    [26 * 3600_000, "1d02h"],
    [-5000, "0s"],
  ])("formatAge(%d) = %s", (ms, text) => {
    expect(formatAge(ms)).toBe(text);
  });

  it.each([
    ["127.0.0.1:9102", "http://127.0.0.1:9102"],
    ["http://10.0.0.1:9102/", "http://10.0.0.1:9102"],
    ["https://node:9102", "https://node:9102"],
  ])("normaliseAddress(%s) = %s", (input, output) => {
    expect(normaliseAddress(input)).toBe(output);
  });
});

describe("a udp node's proxy in status and readiness", () => {
  const proxy = (running: boolean, lastFailure?: string) => () => ({
    kind: "udp" as const,
    what: "udp proxy on flannel0, port 8285",
    device: "flannel0",
    running,
    lastFailure,
    peers: 2,
    txPackets: 120,
    txBytes: 1000,
    rxPackets: 110,
    rxBytes: 900,
    drops: {
      no_route: 0,
      ttl_expired: 0,
      unknown_sender: 4,
      malformed: 0,
      not_ipv4: 0,
      send_error: 0,
      tun_write_error: 0,
    },
    icmpUnreachableSent: 0,
    restarts: 1,
  });

  it("shows it running in the document and the text, and the agent stays ready", () => {
    const s = status({ ...readyAgent(), userspace: proxy(true) });
    expect(s.ready).toBe(true);
    expect(s.userspace).toMatchObject({
      running: true,
      peers: 2,
      packets: { tx: 120, rx: 110 },
      restarts: 1,
    });
    expect(renderStatus(s)).toContain(
      "userspace:      udp proxy on flannel0, port 8285: running, 2 peers, 120 packets out, 110 in, dropped 4 unknown_sender, restarted 1 time",
    );
  });

  it("makes the agent not ready, naming why, while it cannot run", () => {
    const s = status({
      ...readyAgent(),
      userspace: proxy(false, "cannot bind the udp backend's socket to 198.18.0.1:8285: the port is in use"),
    });
    expect(s.ready).toBe(false);
    expect(s.notReady).toEqual([
      "udp proxy on flannel0, port 8285 not running: cannot bind the udp backend's socket to 198.18.0.1:8285: the port is in use",
    ]);
    expect(renderStatus(s)).toContain("NOT RUNNING (cannot bind");
  });

  it("has no userspace entry on a vxlan node", () => {
    expect(status(readyAgent()).userspace).toBeUndefined();
  });
});

describe("a wireguard node's device in status and readiness", () => {
  const OWN = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
  const KEY_A = "mNb7OIIXTdgW4khM7OFlzJ+UPs7lmcWHV7xjPgakMkQ=";
  const KEY_B = "GHc0lmKsi1pVlPy0RRBWhWEUpeSDfIE8uivN/XO7L1A=";
  const device =
    (
      running: boolean,
      over: {
        lastFailure?: string;
        implementation?: "kernel" | "userspace";
        repairs?: number;
        restarts?: number;
        handshakes?: boolean;
      } = {},
    ) =>
    () => {
      const implementation = over.implementation ?? "userspace";
      const how = implementation === "kernel" ? "kernel WireGuard" : "wireguard-go";
      return {
        kind: "wireguard" as const,
        what: `${how} on flannel-wg, port 51820, public key ${OWN}`,
        device: "flannel-wg",
        running,
        lastFailure: over.lastFailure,
        peers: 2,
        restarts: over.restarts ?? 0,
        implementation,
        publicKey: OWN,
        listenPort: 51820,
        pid: implementation === "userspace" ? 4242 : undefined,
        repairs: over.repairs ?? 0,
        peerDetails: [
          {
            subnet: "10.244.3.0/24",
            publicKey: KEY_A,
            endpoint: "198.18.0.3:51820",
            lastHandshakeMs: over.handshakes === false ? 0 : NOW - 42_000,
            rxBytes: 148,
            txBytes: 92,
          },
          {
            subnet: "10.244.12.0/24",
            publicKey: KEY_B,
            endpoint: undefined,
            lastHandshakeMs: 0,
            rxBytes: 0,
            txBytes: 0,
          },
        ],
      };
    };

  it("puts the device in the document as kind wireguard, and the agent stays ready", () => {
    const s = status({ ...readyAgent(), userspace: device(true, { repairs: 1 }) });
    expect(s.ready).toBe(true);
    expect(s.userspace).toEqual({
      kind: "wireguard",
      what: `wireguard-go on flannel-wg, port 51820, public key ${OWN}`,
      running: true,
      lastFailure: null,
      peers: 2,
      restarts: 0,
      implementation: "userspace",
      device: "flannel-wg",
      publicKey: OWN,
      listenPort: 51820,
      pid: 4242,
      repairs: 1,
      peerDetails: [
        {
          device: "flannel-wg",
          subnet: "10.244.3.0/24",
          publicKey: KEY_A,
          endpoint: "198.18.0.3:51820",
          latestHandshake: new Date(NOW - 42_000).toISOString(),
          rxBytes: 148,
          txBytes: 92,
        },
        {
          device: "flannel-wg",
          subnet: "10.244.12.0/24",
          publicKey: KEY_B,
          endpoint: null,
          latestHandshake: null,
          rxBytes: 0,
          txBytes: 0,
        },
      ],
    });
    // It survives JSON (the CLI reads it over HTTP).
    expect(JSON.parse(JSON.stringify(s))).toEqual(s);
  });

  it.each([
    [
      "running, with a handshake, restored once",
      device(true, { repairs: 1 }),
      `wireguard:      wireguard-go on flannel-wg, port 51820, public key ${OWN}: running (pid 4242), 2 peers, ` +
        "1 with a handshake (oldest 42 s ago), restored 1 time\n",
    ],
    [
      "the kernel's device: no pid; restarted twice, no handshake yet",
      device(true, { implementation: "kernel", restarts: 2, handshakes: false }),
      `wireguard:      kernel WireGuard on flannel-wg, port 51820, public key ${OWN}: running, 2 peers, ` +
        "0 with a handshake, restarted 2 times\n",
    ],
    [
      "not running",
      device(false, { lastFailure: "wireguard-go (pid 4242) exited", restarts: 1 }),
      `wireguard:      wireguard-go on flannel-wg, port 51820, public key ${OWN}: ` +
        "NOT RUNNING (wireguard-go (pid 4242) exited) (pid 4242), 2 peers, 1 with a handshake (oldest 42 s ago), " +
        "restarted 1 time\n",
    ],
  ])("renders a wireguard: line (%s)", (_name, userspace, line) => {
    const text = renderStatus(status({ ...readyAgent(), userspace }));
    expect(text).toContain(`\n${line}`);
    expect(text).not.toContain("userspace:");
  });

  it("makes the agent not ready, naming why, while it is not running", () => {
    const s = status({
      ...readyAgent(),
      userspace: device(false, { lastFailure: "wireguard-go (pid 4242) exited" }),
    });
    expect(s.ready).toBe(false);
    expect(s.notReady).toEqual([
      `wireguard-go on flannel-wg, port 51820, public key ${OWN} not running: wireguard-go (pid 4242) exited`,
    ]);
    expect(renderStatus(s)).toContain("NOT RUNNING");
  });

  it("says starting when it has not run yet and nothing failed", () => {
    const s = status({ ...readyAgent(), userspace: device(false) });
    expect(s.notReady).toEqual([
      `wireguard-go on flannel-wg, port 51820, public key ${OWN} not running: starting`,
    ]);
    expect(renderStatus(s)).toContain(": NOT RUNNING (starting)");
  });

  it("is not held against readiness before the data plane is programmed (that reason says it already)", () => {
    const agent = readyAgent();
    const s = status({
      ...agent,
      dataplane: { ...agent.dataplane, programmed: false },
      userspace: device(false),
    });
    expect(s.notReady).toEqual(["data plane not programmed yet"]);
  });
});

// ---- IPv6: dual-stack and IPv6-only nodes -----------------------------------------------------------

const dualConfigText =
  '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}';
const v6ConfigText =
  '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}';

/** Peer n of any family mix: `v4`/`v6` false to leave one out. */
const lease46 = (n: number, families: { v4?: boolean; v6?: boolean } = {}): Lease =>
  familyLease(n, { ...families, data: undefined, v6Data: undefined });

/** readyAgent as a dual-stack (or IPv6-only) node with peers of every family mix. */
function agent46(ipv4 = true): AgentState {
  const ready = readyAgent();
  const text = ipv4 ? dualConfigText : v6ConfigText;
  const config = parseNetworkConfig(text).config;
  const own = lease46(1, { v4: ipv4 });
  const peers = ipv4
    ? [lease46(0x20, { v4: false }), lease46(3), lease46(4, { v6: false }), lease46(0x10, { v4: false })]
    : [lease46(0x20, { v4: false }), lease46(3), lease46(0x10, { v4: false })];
  const external = ready.external;
  if (external === undefined || ready.ownLease === undefined) throw new Error("fixture");
  return {
    ...ready,
    config: { kind: "valid", config, text },
    external: {
      ...external,
      ...(ipv4 ? {} : { ifaceIp: 0, publicIp: 0 }),
      ifaceIpv6: "2001:db8:18::1",
      publicIpv6: "2001:db8:18::1",
    },
    ownLease: {
      ...ready.ownLease,
      subnet: own.subnet,
      ipv6Subnet: own.ipv6Subnet,
      key: own.key,
      attrs: own.attrs,
    },
    view: { peers: new Map(peers.map((l) => [l.key, l])), invalid: new Map() },
    dataplane: {
      ...ready.dataplane,
      peerStates: new Map([
        [
          lease46(3).key,
          {
            state: "programmed",
            reason: "IPv4: vxlan via flannel.1 to 198.18.0.3; IPv6: vxlan via flannel-v6.1 to 2001:db8:18::3",
          },
        ],
        [
          lease46(0x10, { v4: false }).key,
          { state: "programmed", reason: "vxlan via flannel-v6.1 to 2001:db8:18::10" },
        ],
      ]),
    },
  };
}

describe("status with IPv6", () => {
  it("a dual-stack node: both networks, both subnets of its lease, PublicIPv6 of the node and every peer", () => {
    const s = status(agent46());
    expect(s.config).toMatchObject({
      state: "valid",
      network: "10.244.0.0/16",
      ipv6Network: "fd00:10:244::/56",
    });
    expect(s.node).toEqual({ interface: "eth0", publicIP: "198.18.0.1", publicIPv6: "2001:db8:18::1" });
    expect(s.lease).toMatchObject({
      subnet: "10.244.1.0/24+fd00:10:244:1::/64",
      ipv6Subnet: "fd00:10:244:1::/64",
      key: "/coreos.com/network/subnets/10.244.1.0-24&fd00:10:244:1::-64",
      publicIP: "198.18.0.1",
      publicIPv6: "2001:db8:18::1",
    });
    const peer = s.peers.find((p) => p.key === lease46(3).key);
    expect(peer).toEqual({
      key: "/coreos.com/network/subnets/10.244.3.0-24&fd00:10:244:3::-64",
      subnet: "10.244.3.0/24+fd00:10:244:3::/64",
      publicIP: "198.18.0.3",
      ipv6Subnet: "fd00:10:244:3::/64",
      publicIPv6: "2001:db8:18::3",
      backend: "vxlan",
      state: "programmed",
      reason: "IPv4: vxlan via flannel.1 to 198.18.0.3; IPv6: vxlan via flannel-v6.1 to 2001:db8:18::3",
    });
    // An IPv6-only peer has no PublicIP to show (its lease carries 0.0.0.0); an IPv4-only one no IPv6.
    expect(s.peers.find((p) => p.key === lease46(0x10, { v4: false }).key)).toMatchObject({
      subnet: "fd00:10:244:10::/64",
      publicIP: null,
      ipv6Subnet: "fd00:10:244:10::/64",
      publicIPv6: "2001:db8:18::10",
    });
    expect(s.peers.find((p) => p.key === lease46(4, { v6: false }).key)).toMatchObject({
      subnet: "10.244.4.0/24",
      publicIP: "198.18.0.4",
      ipv6Subnet: null,
      publicIPv6: null,
    });
    expect(JSON.parse(JSON.stringify(s))).toEqual(s);
  });

  it("BUG: sorts IPv6-only peers by their IPv6 subnet, as it sorts IPv4 ones (and `twill leases` does)", () => {
    const s = status(agent46());
    expect(s.peers.map((p) => p.subnet)).toEqual([
      "fd00:10:244:10::/64",
      "fd00:10:244:20::/64",
      "10.244.3.0/24+fd00:10:244:3::/64",
      "10.244.4.0/24",
    ]);
  });

  it("an IPv6-only node: no IPv4 network, no node PublicIP; its lease named by its IPv6 subnet", () => {
    const s = status(agent46(false));
    expect(s.config).toMatchObject({ network: null, ipv6Network: "fd00:10:244::/56" });
    expect(s.node).toEqual({ interface: "eth0", publicIP: null, publicIPv6: "2001:db8:18::1" });
    expect(s.lease).toMatchObject({
      subnet: "fd00:10:244:1::/64",
      ipv6Subnet: "fd00:10:244:1::/64",
      key: "/coreos.com/network/subnets/0.0.0.0-0&fd00:10:244:1::-64",
      publicIPv6: "2001:db8:18::1",
    });
  });

  it("BUG: an IPv6-only node's lease shows no PublicIP 0.0.0.0, as its peers and its node line do not", () => {
    const s = status(agent46(false));
    expect(s.lease?.publicIP ?? null).toBeNull();
    const text = renderStatus(s);
    expect(text).toContain("lease:          fd00:10:244:1::/64 public IP 2001:db8:18::1, expires");
  });

  it("renders both families: networks, lease, interface and each peer's public addresses", () => {
    const text = renderStatus(status(agent46()));
    expect(text).toContain("config:         network 10.244.0.0/16 and fd00:10:244::/56, backend vxlan\n");
    expect(text).toContain(
      "lease:          10.244.1.0/24+fd00:10:244:1::/64 public IP 198.18.0.1 and 2001:db8:18::1, expires",
    );
    expect(text).toContain("interface:      eth0 (public IP 198.18.0.1 and 2001:db8:18::1)\n");
    const rows = text.split("\n").filter((line) => line.startsWith("  ") && !line.startsWith("  SUBNET"));
    const row = (subnet: string): string[] =>
      (rows.find((line) => line.trim().startsWith(subnet)) ?? "").trim().split(/\s{2,}/);
    expect(row("10.244.3.0/24+fd00:10:244:3::/64").slice(0, 4)).toEqual([
      "10.244.3.0/24+fd00:10:244:3::/64",
      "198.18.0.3,2001:db8:18::3",
      "vxlan",
      "programmed",
    ]);
    expect(row("fd00:10:244:10::/64").slice(0, 4)).toEqual([
      "fd00:10:244:10::/64",
      "2001:db8:18::10",
      "vxlan",
      "programmed",
    ]);
    expect(row("10.244.4.0/24").slice(0, 4)).toEqual(["10.244.4.0/24", "198.18.0.4", "vxlan", "pending"]);
  });

  it("renders an IPv6-only node's network and interface without IPv4", () => {
    const text = renderStatus(status(agent46(false)));
    expect(text).toContain("config:         network fd00:10:244::/56, backend vxlan\n");
    expect(text).toContain("interface:      eth0 (public IP 2001:db8:18::1)\n");
  });

  it("an invalid dual-stack or IPv6-only entry is named by its key's subnets", () => {
    const agent = agent46();
    const bad = "/coreos.com/network/subnets/0.0.0.0-0&fd00:10:244:9::-64";
    const s = status({
      ...agent,
      view: {
        peers: agent.view?.peers ?? new Map(),
        invalid: new Map([
          [
            bad,
            { key: bad, reason: "PublicIPv6 is missing, but the lease has an IPv6 subnet", modRevision: 3 },
          ],
        ]),
      },
    });
    expect(s.peers.at(-1)).toMatchObject({
      key: bad,
      subnet: "fd00:10:244:9::/64",
      state: "invalid",
      reason: "PublicIPv6 is missing, but the lease has an IPv6 subnet",
    });
  });
});
