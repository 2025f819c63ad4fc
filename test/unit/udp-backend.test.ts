// The udp backend's pure core: flannel's packet rules (TTL and checksum, ICMP net-unreachable), the
// forwarding table, the proxy's table commands; and the forwarder's bookkeeping with a fake thread.
import { openSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { UdpForwarder, type ProxyThread } from "../../src/backends/udp/forwarder.js";
import {
  decrementTtl,
  destinationOf,
  ForwardingTable,
  internetChecksum,
  malformedReason,
  netUnreachable,
  sourceOf,
} from "../../src/backends/udp/packet.js";
import { encodeResumeState, parseResumeState } from "../../src/backends/udp/resume.js";
import { PROXY_COUNTERS, type ProxyCommand, type ProxySetup } from "../../src/backends/udp/proxy.js";
import type { NodeFacts } from "../../src/backends/backend.js";
import { parsePrefix } from "../../src/ip/address.js";
import { formatIPv4, parseCidr, parseIPv4 } from "../../src/ip/ipv4.js";
import { receiveMessageOnPort } from "node:worker_threads";

/** An IPv4 packet with a correct header checksum. */
function ipv4Packet(spec: {
  src: string;
  dst: string;
  ttl?: number;
  protocol?: number;
  fragmentOffset?: number;
  payload?: number[];
  id?: number;
}): Uint8Array {
  const payload = spec.payload ?? [8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xaa, 0xbb];
  const packet = new Uint8Array(20 + payload.length);
  const view = new DataView(packet.buffer);
  packet[0] = 0x45;
  view.setUint16(2, packet.length);
  view.setUint16(4, spec.id ?? 0x1c46);
  view.setUint16(6, spec.fragmentOffset ?? 0x4000);
  packet[8] = spec.ttl ?? 64;
  packet[9] = spec.protocol ?? 1;
  view.setUint32(12, parseIPv4(spec.src));
  view.setUint32(16, parseIPv4(spec.dst));
  view.setUint16(10, internetChecksum(packet, 0, 20));
  packet.set(payload, 20);
  return packet;
}

/** The header checksum computed from scratch, as the receiving kernel checks it. */
function fullChecksum(packet: Uint8Array): number {
  const header = packet.slice(0, 20);
  header[10] = 0;
  header[11] = 0;
  return internetChecksum(header, 0, 20);
}

describe("udp packet rules", () => {
  it("reads the addresses of an IPv4 header", () => {
    const packet = ipv4Packet({ src: "10.244.1.2", dst: "10.244.3.4" });
    expect(formatIPv4(sourceOf(packet))).toBe("10.244.1.2");
    expect(formatIPv4(destinationOf(packet))).toBe("10.244.3.4");
  });

  it.each([
    [64, 0x1c46],
    [2, 0],
    [255, 0xffff],
    [128, 0x7fff],
  ])(
    "decrements TTL %d and patches the checksum incrementally, equal to a full recompute (id %d)",
    (ttl, id) => {
      // Many addresses, so that checksums near 0x0000 and 0xffff (the carry) come up.
      for (let i = 0; i < 2000; i++) {
        const packet = ipv4Packet({
          src: `10.244.${i % 256}.${(i * 7) % 256}`,
          dst: `10.${i % 200}.3.4`,
          ttl,
          id: (id + i * 97) & 0xffff,
        });
        expect(decrementTtl(packet)).toBe(true);
        expect(packet[8]).toBe(ttl - 1);
        const checksum = ((packet[10] ?? 0) << 8) | (packet[11] ?? 0);
        // 0x0000 and 0xffff are the same number in one's complement; the kernel accepts either.
        expect(checksum === fullChecksum(packet) || checksum + fullChecksum(packet) === 0xffff).toBe(true);
        expect(internetChecksum(packet, 0, 20) === 0 || internetChecksum(packet, 0, 20) === 0xffff).toBe(
          true,
        );
      }
    },
  );

  it.each([1, 0])("drops a packet whose TTL %d runs out", (ttl) => {
    expect(decrementTtl(ipv4Packet({ src: "10.244.1.2", dst: "10.244.3.4", ttl }))).toBe(false);
  });

  it.each([
    [[0x45], 1, "shorter than an IPv4 header"],
    [[0x60, ...new Array<number>(39).fill(0)], 40, "IP version 6, not 4"],
    [[0x44, ...new Array<number>(19).fill(0)], 20, "bad header length"],
    [[0x4f, ...new Array<number>(19).fill(0)], 20, "bad header length"],
  ])("calls %j malformed: %s", (bytes, length, reason) => {
    expect(malformedReason(Uint8Array.from(bytes), length)).toBe(reason);
  });

  it("answers a packet for an unknown subnet with an ICMP net-unreachable from that destination", () => {
    const offender = ipv4Packet({
      src: "10.244.1.2",
      dst: "10.244.9.9",
      protocol: 17,
      payload: [0, 53, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4],
    });
    const reply = netUnreachable(offender, offender.length);
    expect(reply).toBeDefined();
    const r = reply ?? new Uint8Array();
    expect(r.length).toBe(20 + 8 + 20 + 8);
    expect(r[0]).toBe(0x45);
    expect(r[8]).toBe(8);
    expect(r[9]).toBe(1);
    expect(formatIPv4(sourceOf(r))).toBe("10.244.9.9");
    expect(formatIPv4(destinationOf(r))).toBe("10.244.1.2");
    expect(internetChecksum(r, 0, 20)).toBe(0);
    expect([r[20], r[21]]).toEqual([3, 0]);
    expect(internetChecksum(r, 20, r.length)).toBe(0);
    expect([...r.subarray(28)]).toEqual([...offender.subarray(0, 28)]);
  });

  it("answers a ping (an ICMP query, unlike an ICMP error) to an unknown subnet", () => {
    const echo = ipv4Packet({
      src: "10.244.1.2",
      dst: "10.244.9.9",
      protocol: 1,
      payload: [8, 0, 0, 0, 0, 1, 0, 1],
    });
    expect(netUnreachable(echo, echo.length)?.[20]).toBe(3);
  });

  it.each([
    [
      "an ICMP error (no ICMP error about an ICMP error)",
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", protocol: 1, payload: [3, 1, 0, 0, 0, 0, 0, 0] }),
    ],
    [
      "an ICMP packet with no ICMP header",
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", protocol: 1, payload: [] }),
    ],
    [
      "a multicast source",
      ipv4Packet({ src: "224.0.0.5", dst: "10.244.9.9", protocol: 17, payload: [0, 1, 0, 2, 0, 8, 0, 0] }),
    ],
    [
      "the zero source",
      ipv4Packet({ src: "0.0.0.0", dst: "10.244.9.9", protocol: 17, payload: [0, 1, 0, 2, 0, 8, 0, 0] }),
    ],
    [
      "a fragment other than the first",
      ipv4Packet({ src: "10.244.1.2", dst: "10.244.9.9", protocol: 17, fragmentOffset: 0x2003 }),
    ],
  ])("sends no ICMP error for %s", (_what, packet) => {
    expect(netUnreachable(packet, packet.length)).toBeUndefined();
  });
});

describe("udp forwarding table", () => {
  const endpoint = (ip: string, port = 8285) => ({ address: parseIPv4(ip), port });
  const entry = (cidr: string, ip: string) => {
    const subnet = parseCidr(cidr);
    return { network: subnet.ip, prefixLen: subnet.prefixLen, endpoint: endpoint(ip) };
  };
  const lookup = (table: ForwardingTable, ip: string) => {
    const found = table.lookup(parseIPv4(ip));
    return found === undefined ? undefined : formatIPv4(found.address);
  };

  it("finds the peer owning a destination, longest prefix first", () => {
    const table = new ForwardingTable();
    table.set("a", entry("10.244.2.0/24", "198.18.0.2"), endpoint("198.18.0.2"));
    table.set("b", entry("10.244.3.0/24", "198.18.0.3"), endpoint("198.18.0.3"));
    table.set("c", entry("10.244.3.128/25", "198.18.0.4"), endpoint("198.18.0.4"));
    expect(lookup(table, "10.244.2.77")).toBe("198.18.0.2");
    expect(lookup(table, "10.244.3.5")).toBe("198.18.0.3");
    expect(lookup(table, "10.244.3.200")).toBe("198.18.0.4");
    expect(lookup(table, "10.244.4.1")).toBeUndefined();
    table.delete("c");
    expect(lookup(table, "10.244.3.200")).toBe("198.18.0.3");
    expect(table.size).toBe(2);
  });

  it("moves a peer to a new endpoint, and knows which senders are peers", () => {
    const table = new ForwardingTable();
    table.set("a", entry("10.244.2.0/24", "198.18.0.2"), endpoint("198.18.0.2"));
    table.set("b", entry("10.244.3.0/24", "198.18.0.2"), endpoint("198.18.0.2"));
    table.set("a", entry("10.244.2.0/24", "198.18.0.9"), endpoint("198.18.0.9"));
    expect(lookup(table, "10.244.2.1")).toBe("198.18.0.9");
    expect(table.isPeer(parseIPv4("198.18.0.2"))).toBe(true);
    table.delete("b");
    expect(table.isPeer(parseIPv4("198.18.0.2"))).toBe(false);
    expect(table.isPeer(parseIPv4("198.18.0.9"))).toBe(true);
    table.clear();
    expect(lookup(table, "10.244.2.1")).toBeUndefined();
    expect(table.isPeer(parseIPv4("198.18.0.9"))).toBe(false);
  });
});

describe("udp forwarder (main thread side), with a fake proxy thread", () => {
  const NODE: NodeFacts = {
    subnet: parseCidr("10.244.1.0/24"),
    network: parseCidr("10.244.0.0/16"),
    external: {
      name: "eth0",
      index: 2,
      mtu: 1500,
      ifaceIp: parseIPv4("127.0.0.1"),
      publicIp: parseIPv4("127.0.0.1"),
    },
    connected: [parsePrefix("127.0.0.0/8")],
  };
  const route = (n: number, ip = `198.18.0.${n}`) => ({
    subnet: parseCidr(`10.244.${n}.0/24`),
    endpoint: { address: parseIPv4(ip), port: 8285 },
  });

  function harness() {
    const threads: { setup: ProxySetup; exit: (reason: string | undefined) => void; terminated: boolean }[] =
      [];
    const attached: string[] = [];
    const forwarder = new UdpForwarder({
      device: "flannel0",
      // Port 0 on loopback: the socket is real but touches nothing (the kernel picks a free port).
      port: 0,
      attach: (device) => {
        attached.push(device);
        return openSync("/dev/null", "r"); // a real descriptor to close; the fake thread never reads it
      },
      launcher: (setup) => {
        const thread = { setup, exit: (_reason: string | undefined) => {}, terminated: false };
        threads.push(thread);
        const handle: ProxyThread = {
          onExit: (listener) => (thread.exit = listener),
          terminate: () => {
            thread.terminated = true;
            return Promise.resolve();
          },
        };
        return handle;
      },
    });
    /** What the fake thread would have received so far. */
    const received = (i: number): ProxyCommand[] => {
      const commands: ProxyCommand[] = [];
      const port = threads[i]?.setup.port;
      if (port === undefined) return commands;
      for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port))
        commands.push(m.message as ProxyCommand);
      return commands;
    };
    return { forwarder, threads, attached, received };
  }

  it("starts the thread with the whole table queued, then sends each change alone", async () => {
    const { forwarder, threads, received } = harness();
    forwarder.update(new Map([["a", route(2)]]));
    await forwarder.ensureRunning(NODE, false);
    try {
      expect(threads).toHaveLength(1);
      expect(received(0).map((c) => c.type)).toEqual(["clear", "set"]);
      forwarder.update(new Map([["a", route(2)]])); // unchanged: nothing sent
      forwarder.update(
        new Map([
          ["b", route(3)],
          ["a", undefined],
        ]),
      );
      expect(received(0)).toEqual([
        {
          type: "set",
          key: "b",
          entry: {
            network: parseIPv4("10.244.3.0"),
            prefixLen: 24,
            endpoint: { address: parseIPv4("198.18.0.3"), port: 8285 },
          },
        },
        { type: "delete", key: "a" },
      ]);
      await forwarder.ensureRunning(NODE, false);
      expect(threads).toHaveLength(1);
    } finally {
      await forwarder.stop();
    }
    expect(threads[0]?.terminated).toBe(true);
  });

  it("starts a new thread on a new device, and reports a thread that stopped on its own", async () => {
    const { forwarder, threads, attached } = harness();
    const stops: string[] = [];
    forwarder.onStopped((reason) => stops.push(reason));
    forwarder.replaceAll(
      new Map([
        ["a", route(2)],
        ["b", route(3)],
      ]),
    );
    await forwarder.ensureRunning(NODE, false);
    try {
      await forwarder.ensureRunning(NODE, true);
      expect(threads.map((t) => t.terminated)).toEqual([true, false]);
      expect(attached).toEqual(["flannel0", "flannel0"]);
      threads[1]?.exit("the TUN device was deleted");
      expect(stops).toEqual(["the TUN device was deleted"]);
      expect(forwarder.status()).toMatchObject({ running: false, lastFailure: "the TUN device was deleted" });
      await forwarder.ensureRunning(NODE, false);
      expect(threads).toHaveLength(3);
      expect(forwarder.status().peers).toBe(2);
    } finally {
      await forwarder.stop();
    }
  });

  it("says why it could not start, for status and readiness, and starts once the cause is gone", async () => {
    let attempts = 0;
    const forwarder = new UdpForwarder({
      device: "flannel0",
      port: 0,
      attach: () => {
        attempts++;
        if (attempts === 1) throw new Error("flannel0 is held by another process");
        return openSync("/dev/null", "r");
      },
      launcher: () => ({ onExit: () => undefined, terminate: () => Promise.resolve() }),
    });
    await expect(forwarder.ensureRunning(NODE, false)).rejects.toThrow("held by another process");
    expect(forwarder.status()).toMatchObject({
      running: false,
      lastFailure: "flannel0 is held by another process",
    });
    try {
      expect(await forwarder.ensureRunning(NODE, false)).toBe(true);
      expect(forwarder.status()).toMatchObject({ running: true, lastFailure: undefined });
    } finally {
      await forwarder.stop();
    }
  });

  it("runs a start asked for during a stop only after the stop let go of everything", async () => {
    const order: string[] = [];
    let finishTerminate: () => void = () => undefined;
    const forwarder = new UdpForwarder({
      device: "flannel0",
      port: 0,
      attach: () => {
        order.push("attach");
        return openSync("/dev/null", "r");
      },
      launcher: () => ({
        onExit: () => undefined,
        terminate: () => {
          order.push("terminate");
          return new Promise<void>((resolve) => (finishTerminate = resolve));
        },
      }),
    });
    await forwarder.ensureRunning(NODE, false);
    const stopping = forwarder.stop().then(() => order.push("stopped"));
    const starting = forwarder.ensureRunning(NODE, false).then(() => order.push("started"));
    await new Promise((resolve) => setImmediate(resolve));
    finishTerminate();
    await stopping;
    finishTerminate();
    await starting;
    expect(order).toEqual(["attach", "terminate", "stopped", "attach", "started"]);
    const last = forwarder.stop();
    await new Promise((resolve) => setImmediate(resolve));
    finishTerminate();
    await last;
  });

  it("keeps its counters in memory the thread shares", () => {
    const { forwarder } = harness();
    expect(Object.keys(forwarder.counters())).toEqual([...PROXY_COUNTERS]);
    expect(Object.values(forwarder.counters()).every((v) => v === 0)).toBe(true);
  });
});

describe("udp resume state (what a restarted agent starts its proxy from)", () => {
  const route = (n: number) => ({
    subnet: parseCidr(`10.244.${n}.0/24`),
    endpoint: { address: parseIPv4(`198.18.0.${n}`), port: 8285 },
  });

  it("reads back what it wrote", () => {
    const state = {
      device: "flannel0",
      port: 8285,
      bindAddress: parseIPv4("198.18.0.1"),
      routes: new Map([
        ["/coreos.com/network/subnets/10.244.2.0-24", route(2)],
        ["/coreos.com/network/subnets/10.244.3.0-24", route(3)],
      ]),
    };
    expect(parseResumeState(encodeResumeState(state))).toEqual(state);
  });

  it.each([
    ["", "not JSON"],
    ["[]", "bad device"],
    ['{"device":"flannel0","port":0,"bindAddress":"198.18.0.1","routes":[]}', "bad port"],
    ['{"device":"a/b","port":8285,"bindAddress":"198.18.0.1","routes":[]}', "bad device"],
    ['{"device":"flannel0","port":8285,"bindAddress":"x","routes":[]}', "bad address"],
    [
      '{"device":"flannel0","port":8285,"bindAddress":"198.18.0.1","routes":[["k","10.244.2.0/33","198.18.0.2",8285]]}',
      "bad route subnet",
    ],
    [
      '{"device":"flannel0","port":8285,"bindAddress":"198.18.0.1","routes":[["k","10.244.2.0/24","198.18.0.2",0]]}',
      "bad route port",
    ],
  ])("refuses %j: %s", (text, reason) => {
    expect(parseResumeState(text)).toBe(reason);
  });
});
