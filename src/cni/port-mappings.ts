// Port mappings for the portMappings capability (what `docker run -p` and Kubernetes hostPort ask for):
// `[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]` on the command line, portmap's JSON on the wire.
import { isIP } from "node:net";
import type { JsonObject } from "./json.js";

export type PortProtocol = "tcp" | "udp" | "sctp";

export interface PortMapping {
  readonly hostPort: number;
  readonly containerPort: number;
  readonly protocol: PortProtocol;
  /** Only this host address; undefined = every local address. */
  readonly hostIP: string | undefined;
}

export class PortMappingError extends Error {
  override name = "PortMappingError";
}

function port(text: string, what: string, spec: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new PortMappingError(`--port ${spec}: ${what} "${text}" is not a port (1-65535)`);
  }
  return Number(text);
}

/** Parses `8080:80`, `8080:80/udp`, `198.18.0.1:8080:80/tcp`, `[fd00::1]:8080:80`. */
export function parsePortMapping(spec: string): PortMapping {
  const slash = spec.lastIndexOf("/");
  const body = slash < 0 ? spec : spec.slice(0, slash);
  const proto = slash < 0 ? "tcp" : spec.slice(slash + 1).toLowerCase();
  if (proto !== "tcp" && proto !== "udp" && proto !== "sctp") {
    throw new PortMappingError(`--port ${spec}: protocol "${proto}" is not tcp, udp or sctp`);
  }
  let hostIP: string | undefined;
  let rest = body;
  const bracket = /^\[([^\]]+)\]:(.*)$/.exec(body);
  if (bracket) {
    hostIP = bracket[1];
    rest = bracket[2] ?? "";
  } else {
    const parts = body.split(":");
    if (parts.length === 3) {
      hostIP = parts[0];
      rest = parts.slice(1).join(":");
    }
  }
  if (hostIP !== undefined && isIP(hostIP) === 0) {
    throw new PortMappingError(`--port ${spec}: host address "${hostIP}" is not an IP address`);
  }
  const ports = rest.split(":");
  if (ports.length !== 2) {
    throw new PortMappingError(`--port ${spec}: expected [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp|sctp]`);
  }
  return {
    hostPort: port(ports[0] ?? "", "host port", spec),
    containerPort: port(ports[1] ?? "", "container port", spec),
    protocol: proto,
    hostIP,
  };
}

/** portmap's runtimeConfig entry (libcni's PortMapping JSON). */
export function portMappingJson(mapping: PortMapping): JsonObject {
  return {
    hostPort: mapping.hostPort,
    containerPort: mapping.containerPort,
    protocol: mapping.protocol,
    ...(mapping.hostIP === undefined ? {} : { hostIP: mapping.hostIP }),
  };
}

export function formatPortMapping(mapping: PortMapping): string {
  const host =
    mapping.hostIP === undefined
      ? ""
      : mapping.hostIP.includes(":")
        ? `[${mapping.hostIP}]:`
        : `${mapping.hostIP}:`;
  return `${host}${mapping.hostPort} -> ${mapping.containerPort}/${mapping.protocol}`;
}
