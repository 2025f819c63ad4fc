// The udp backend, as flannel's: a TUN device flannel0 (address <subnet>/32, MTU = underlay − 28) that
// the whole cluster network is routed into, and a proxy that sends each packet read from it, unchanged,
// as one UDP datagram to the PublicIP:Port of the peer owning its destination subnet, and writes each
// datagram that arrives into the TUN. The lease carries no BackendType and no BackendData, exactly as
// flanneld's udp leases, so twill and flanneld udp nodes route to each other.
//
// Unlike flannel, the TUN device is persistent and kept across restarts (with its address and route),
// and only datagrams from peers' public IPs are written into it.
import { JsonFieldError, optionalInt, resolveFields, type JsonObject } from "../../config/json-fields.js";
import type { KernelObject } from "../../dataplane/objects.js";
import { formatCidr, formatIPv4 } from "../../ip/ipv4.js";
import type { Lease } from "../../lease/lease.js";
import type {
  BackendConfig,
  BackendPlugin,
  DeviceSpec,
  NodeBackend,
  NodeFacts,
  PeerProgram,
  PrepareContext,
} from "../backend.js";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../../node/subnet-env.js";
import { networkDeviceSpec, networkRoute } from "../network-device.js";
import { UdpForwarder } from "./forwarder.js";
import { encodeResumeState, parseResumeState, RESUME_FILE, type ResumeState } from "./resume.js";

/** flannel's udp device name (flannel opens "flannel%d", which is flannel0 on a node with one). */
export const UDP_DEVICE = "flannel0";
export const UDP_DEFAULT_PORT = 8285;
/** Outer IPv4 header + UDP header. */
export const UDP_OVERHEAD = 28;

const FIELDS = ["Type", "Port"] as const;
const NO_PEER_DATA: object = Object.freeze({});

function typeText(type: string | undefined): string {
  return `"${type ?? ""}"`;
}

/**
 * Writes the proxy's resume state (resume.ts) at most every PERSIST_DELAY_MS. The state's table is the
 * forwarder's live map, encoded when the timer fires: a peer event never copies the whole table.
 */
function resumeStateWriter(stateDir: string): (state: ResumeState) => void {
  let pending: ResumeState | undefined;
  let timer: NodeJS.Timeout | undefined;
  return (state) => {
    pending = state;
    timer ??= setTimeout(() => {
      timer = undefined;
      const write = pending;
      pending = undefined;
      if (write === undefined) return;
      // A hint for the next start only: a failed write costs that start its head start, nothing else.
      writeFileAtomic(join(stateDir, RESUME_FILE), encodeResumeState(write), 0o600).catch(() => undefined);
    }, PERSIST_DELAY_MS).unref();
  };
}
const PERSIST_DELAY_MS = 200;

/** The proxy a restarted agent started from the state dir, until `prepare` adopts it. */
let resumed: UdpForwarder | undefined;

class UdpNode implements NodeBackend {
  readonly leaseData = undefined;
  readonly identity = undefined;
  readonly ownedDevices: readonly string[] = [UDP_DEVICE];

  constructor(
    readonly config: UdpConfig,
    readonly userspace: UdpForwarder,
  ) {}

  devices(node: NodeFacts): DeviceSpec[] {
    const mtu = this.config.mtu(node.external);
    return [networkDeviceSpec(node, { name: UDP_DEVICE, kind: "tun", mtu, what: "a TUN device" })];
  }

  /** The whole cluster network goes into the TUN: the proxy decides per packet which peer gets it. */
  nodeObjects(node: NodeFacts): KernelObject[] {
    return [networkRoute(node, UDP_DEVICE)];
  }

  peer(_node: NodeFacts, lease: Lease): PeerProgram {
    const subnet = formatCidr(lease.subnet);
    // flanneld's udp leases carry no BackendType; twill's udp leases neither.
    if (lease.attrs.backendType !== undefined) {
      return {
        objects: [],
        status: {
          state: "backend-mismatch",
          reason: `peer ${subnet} uses backend ${typeText(lease.attrs.backendType)}, this node uses "udp"; not programmed`,
        },
      };
    }
    const endpoint = { address: lease.attrs.publicIP, port: this.config.port };
    return {
      objects: [],
      status: {
        state: "programmed",
        reason: `udp via ${UDP_DEVICE} to ${formatIPv4(endpoint.address)}:${endpoint.port}`,
      },
      userspaceRoute: { subnet: lease.subnet, endpoint },
    };
  }
}

class UdpConfig implements BackendConfig {
  readonly type = "udp";
  readonly options: Readonly<Record<string, number>>;

  constructor(readonly port: number) {
    this.options = { Port: port };
  }

  mtu(external: { readonly mtu: number }): number {
    return external.mtu - UDP_OVERHEAD;
  }

  async prepare(context: PrepareContext): Promise<NodeBackend> {
    const previous = resumed;
    resumed = undefined;
    if (previous !== undefined && previous.port === this.port && previous.device === UDP_DEVICE) {
      return new UdpNode(this, previous);
    }
    // Another Port now: the resumed proxy lets go of flannel0 before the new one attaches to it.
    await previous?.stop();
    const persist = resumeStateWriter(context.stateDir);
    return new UdpNode(this, new UdpForwarder({ device: UDP_DEVICE, port: this.port, persist }));
  }
}

/** flannel's udp Backend keys; errors name the field. */
export function parseUdpConfig(raw: JsonObject, warnings: string[]): UdpConfig {
  const { values, warnings: fieldWarnings } = resolveFields(raw, FIELDS, "Backend.");
  warnings.push(...fieldWarnings);
  const port = optionalInt(values.get("Port"), "Backend.Port") ?? UDP_DEFAULT_PORT;
  if (port < 1 || port > 65535) {
    throw new JsonFieldError(
      "Backend.Port",
      `Backend.Port ${port}: Port must be from 1 to 65535 (default ${UDP_DEFAULT_PORT}); every node sends to ` +
        `its peers on this one port`,
    );
  }
  return new UdpConfig(port);
}

/** Starts the proxy as the previous agent left it, if its state and its device are there. */
async function resumeProxy(context: { readonly stateDir: string }): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(join(context.stateDir, RESUME_FILE), "utf8");
  } catch {
    return undefined;
  }
  const state = parseResumeState(text);
  if (typeof state === "string") throw new Error(`${RESUME_FILE} in ${context.stateDir}: ${state}; ignored`);
  // Only a TUN device the previous agent left (after a reboot there is none: a normal start makes it).
  if (!existsSync(`/sys/class/net/${state.device}/tun_flags`)) return undefined;
  const forwarder = new UdpForwarder({
    device: state.device,
    port: state.port,
    persist: resumeStateWriter(context.stateDir),
  });
  forwarder.replaceAll(state.routes);
  await forwarder.resume(state.bindAddress);
  resumed = forwarder;
  return `${forwarder.status().what}, ${state.routes.size} peers from the previous run`;
}

export const udpBackend: BackendPlugin = {
  type: "udp",
  leaseType: null,
  resume: resumeProxy,
  async releaseResumed() {
    const unused = resumed;
    resumed = undefined;
    await unused?.stop();
  },
  parseConfig: parseUdpConfig,
  // flannel's udp nodes publish no BackendData; whatever a lease carries is ignored, as flannel does.
  parsePeerData: () => NO_PEER_DATA,
};
