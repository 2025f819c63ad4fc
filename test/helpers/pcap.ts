// tcpdump's pcap files, read back: the IPv4 packets in them, with addresses, ports and payload.
// Link types: Ethernet (1), Linux cooked (113) and cooked v2 (276, what `-i any` writes).
import type { Cluster } from "./netns.js";
import { waitFor, type Started } from "./processes.js";

export interface CapturedPacket {
  /** IP protocol number (1 ICMP, 6 TCP, 17 UDP). */
  readonly protocol: number;
  readonly src: string;
  readonly dst: string;
  /** UDP only. */
  readonly srcPort: number | undefined;
  readonly dstPort: number | undefined;
  /** What follows the UDP header (UDP only; empty otherwise). */
  readonly payload: Buffer;
}

const LAYOUTS: Readonly<Record<number, { protocolAt: number; headerBytes: number }>> = {
  1: { protocolAt: 12, headerBytes: 14 },
  113: { protocolAt: 14, headerBytes: 16 },
  276: { protocolAt: 0, headerBytes: 20 },
};

export function ipv4Packets(pcap: Buffer): CapturedPacket[] {
  const ip = (b: Buffer, at: number): string => [0, 1, 2, 3].map((i) => b[at + i] ?? 0).join(".");
  const linkType = pcap.readUInt32LE(20);
  const link = LAYOUTS[linkType];
  if (link === undefined) throw new Error(`pcap link type ${linkType} not handled`);
  const packets: CapturedPacket[] = [];
  let at = 24;
  while (at + 16 <= pcap.length) {
    const captured = pcap.readUInt32LE(at + 8);
    const frame = pcap.subarray(at + 16, at + 16 + captured);
    at += 16 + captured;
    if (frame.readUInt16BE(link.protocolAt) !== 0x0800) continue;
    const outer = link.headerBytes;
    const protocol = frame[outer + 9] ?? 0;
    const l4 = outer + ((frame[outer] ?? 0) & 0x0f) * 4;
    const udp = protocol === 17;
    packets.push({
      protocol,
      src: ip(frame, outer + 12),
      dst: ip(frame, outer + 16),
      srcPort: udp ? frame.readUInt16BE(l4) : undefined,
      dstPort: udp ? frame.readUInt16BE(l4 + 2) : undefined,
      payload: udp ? frame.subarray(l4 + 8) : Buffer.alloc(0),
    });
  }
  return packets;
}

/**
 * Starts tcpdump on every port of the underlay switch (frames forwarded between hosts never reach
 * the bridge device itself), writing `file`, and waits until it listens. Immediate mode, or packets
 * wait in the capture ring; -Z root, or tcpdump cannot write in the test's dir. Stop it with stop().
 */
export async function captureUnderlay(net: Cluster, file: string, filter: string): Promise<Started> {
  const capture = net.spawn(net.switchNs, "tcpdump", [
    ...["-i", "any", "--immediate-mode", "-U", "-n", "-Z", "root", "-w", file, filter],
  ]);
  await waitFor("tcpdump listening", () => capture.output().includes("listening on"));
  return capture;
}
