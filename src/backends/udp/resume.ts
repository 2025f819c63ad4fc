// What the udp proxy needs to run again right after a restart, kept in the state dir: the device, the
// port, the address the socket was bound to and the forwarding table. The next agent starts its proxy
// from it before etcd has answered (packets stop while no agent runs; this shortens the pause by the
// time etcd, the lease and the first round take), and the first data-plane round then replaces the
// table with the one etcd holds. The file is a hint: a missing or unreadable one means a normal start.
import { formatIPv4, parseIPv4, type IPv4 } from "../../ip/ipv4.js";
import type { UserspaceRoute } from "../backend.js";

export const RESUME_FILE = "udp-proxy.json";

export interface ResumeState {
  readonly device: string;
  readonly port: number;
  readonly bindAddress: IPv4;
  /** By peer lease key. */
  readonly routes: ReadonlyMap<string, UserspaceRoute>;
}

interface ResumeJson {
  readonly device: string;
  readonly port: number;
  readonly bindAddress: string;
  /** [lease key, subnet "a.b.c.d/len", endpoint "a.b.c.d", port] */
  readonly routes: readonly (readonly [string, string, string, number])[];
}

export function encodeResumeState(state: ResumeState): string {
  const json: ResumeJson = {
    device: state.device,
    port: state.port,
    bindAddress: formatIPv4(state.bindAddress),
    routes: [...state.routes].map(([key, route]) => [
      key,
      `${formatIPv4(route.subnet.ip)}/${route.subnet.prefixLen}`,
      formatIPv4(route.endpoint.address),
      route.endpoint.port,
    ]),
  };
  return `${JSON.stringify(json)}\n`;
}

const isPort = (value: unknown): value is number =>
  typeof value === "number" && Number.isInteger(value) && value >= 1 && value <= 65535;

/** The state in `text`, or a reason it cannot be used. */
export function parseResumeState(text: string): ResumeState | string {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return "not JSON";
  }
  if (typeof json !== "object" || json === null) return "not an object";
  const { device, port, bindAddress, routes } = json as Record<string, unknown>;
  if (typeof device !== "string" || !/^[^/\s]{1,15}$/.test(device)) return "bad device";
  if (!isPort(port)) return "bad port";
  if (typeof bindAddress !== "string") return "bad bindAddress";
  if (!Array.isArray(routes)) return "bad routes";
  try {
    const table = new Map<string, UserspaceRoute>();
    for (const row of routes as unknown[]) {
      if (!Array.isArray(row) || row.length !== 4) return "bad route row";
      const [key, subnet, address, endpointPort] = row as unknown[];
      if (typeof key !== "string" || typeof subnet !== "string" || typeof address !== "string")
        return "bad route row";
      if (!isPort(endpointPort)) return "bad route port";
      const [ip, length] = subnet.split("/");
      const prefixLen = Number(length);
      if (ip === undefined || !Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32)
        return "bad route subnet";
      table.set(key, {
        subnet: { ip: parseIPv4(ip), prefixLen },
        endpoint: { address: parseIPv4(address), port: endpointPort },
      });
    }
    return { device, port, bindAddress: parseIPv4(bindAddress), routes: table };
  } catch {
    return "bad address";
  }
}
