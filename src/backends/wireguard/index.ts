// The wireguard backend, as flannel's: device flannel-wg (address <subnet>/32, MTU = MTU − 80), the
// whole cluster network routed into it, and one WireGuard peer per node lease (its public key, its
// PublicIP and Port as endpoint, its subnet as allowed IPs). Leases carry flannel's BackendData,
// {"PublicKey":"<base64>","Port":<port>}, so flanneld and twill WireGuard nodes route to each other.
// With IPv6 on, Mode (modes.ts) decides how the IPv6 subnets travel: in flannel-wg-v6 over the IPv6
// underlay (separate, the default; BackendV6Data gives its port), or in flannel-wg with the IPv4 ones.
//
// Unlike flannel, the devices and their peers are kept across restarts (flannel deletes and re-creates
// them), peers are reconciled like every other kernel object, and where the kernel has no WireGuard,
// wireguard-go serves the devices (flannel needs the kernel module).
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { release } from "node:os";
import { ownedRoute, type KernelObject, type Link } from "../../dataplane/objects.js";
import { localRunner } from "../../exec/command.js";
import { formatPrefix, type Family, type Prefix } from "../../ip/address.js";
import { formatCidr, formatIPv4 } from "../../ip/ipv4.js";
import { formatCidr6, formatIPv6 } from "../../ip/ipv6.js";
import { LeaseDecodeError } from "../../lease/attrs.js";
import { hasIPv4, leaseName } from "../../lease/key.js";
import type { Lease } from "../../lease/lease.js";
import type {
  BackendConfig,
  BackendPlugin,
  DeviceSpec,
  IdentityOrigin,
  NodeBackend,
  NodeFacts,
  PeerProgram,
  PrepareContext,
} from "../backend.js";
import { combineFamilies } from "../families.js";
import { parseWireGuardOptions, WIREGUARD_OVERHEAD, type WireGuardOptions } from "./config.js";
import { WgToolControl } from "./control.js";
import {
  WireGuardDataPath,
  type DevicePeerRow,
  type WireGuardRoute,
  type WireGuardSettings,
} from "./datapath.js";
import { currentKeyInFile, keyFilePath, loadOrCreateKey } from "./key-file.js";
import { decodeKey } from "./keys.js";
import {
  autoEndpointFamily,
  deviceFor,
  endpointText,
  tunnelDevices,
  WIREGUARD_DEVICE,
  WIREGUARD_DEVICE_V6,
  type Families,
  type TunnelDevice,
} from "./modes.js";
import { WireGuardTunnels } from "./tunnels.js";
import { recordedWireGuardGoPid, WireGuardGo } from "./wireguard-go.js";

export { WIREGUARD_DEVICE, WIREGUARD_DEVICE_V6 } from "./modes.js";

/** What a peer publishes for one family: BackendData (IPv4) or BackendV6Data (IPv6). */
export interface WireGuardFamilyData {
  readonly publicKey: string;
  /** 0: not published (older flannel), meaning this node's own port. */
  readonly port: number;
}

/**
 * A peer's BackendData and BackendV6Data, parsed once in the peer view. publicKey/port are its first
 * family's (IPv4, or IPv6 on an IPv6-only peer): what identifies it.
 */
export class WireGuardPeerData implements WireGuardFamilyData {
  constructor(
    readonly publicKey: string,
    /** 0: not published (older flannel), meaning this node's own ListenPort. */
    readonly port: number,
    /** BackendV6Data, when published. */
    readonly v6?: WireGuardFamilyData,
    /** Whether BackendData was published (not on an IPv6-only peer). */
    private readonly v4Published = true,
  ) {}

  /** BackendData, when published. */
  get v4(): WireGuardFamilyData | undefined {
    return this.v4Published ? { publicKey: this.publicKey, port: this.port } : undefined;
  }
}

/** The BackendData (BackendV6Data) this node publishes: Go's encoding of flannel's struct, byte for byte. */
export function wireGuardBackendData(publicKey: string, port: number): string {
  return `{"PublicKey":${JSON.stringify(publicKey)},"Port":${port}}`;
}

function field(obj: Record<string, unknown>, name: string): unknown {
  let value: unknown;
  for (const [key, v] of Object.entries(obj)) if (key.toLowerCase() === name.toLowerCase()) value = v;
  return value;
}

/** Reads a peer's BackendData as flannel does (case-insensitive keys); errors name the field. */
export function parseWireGuardBackendData(text: string | undefined): WireGuardPeerData {
  const data = parseFamilyData(text, "BackendData");
  return new WireGuardPeerData(data.publicKey, data.port);
}

/**
 * A peer's BackendData and BackendV6Data (an IPv6-only peer publishes only the latter, a dual-stack
 * one both). Throws LeaseDecodeError naming the field.
 */
export function parseWireGuardPeerData(text: string | undefined, v6Text?: string): WireGuardPeerData {
  // Go leaves a nil RawMessage out (omitempty); JSON null reads as absent too.
  const v6 = v6Text === undefined || v6Text === "null" ? undefined : parseFamilyData(v6Text, "BackendV6Data");
  if ((text === undefined || text === "null") && v6 !== undefined)
    return new WireGuardPeerData(v6.publicKey, v6.port, v6, false);
  const v4 = parseFamilyData(text, "BackendData");
  return new WireGuardPeerData(v4.publicKey, v4.port, v6);
}

function parseFamilyData(
  text: string | undefined,
  name: "BackendData" | "BackendV6Data",
): WireGuardFamilyData {
  if (text === undefined) throw new LeaseDecodeError(name, `${name} is missing (wireguard needs PublicKey)`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new LeaseDecodeError(name, `${name} is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new LeaseDecodeError(name, `${name} is not a JSON object`);
  }
  const key = field(parsed as Record<string, unknown>, "PublicKey");
  if (typeof key !== "string") {
    throw new LeaseDecodeError(
      `${name}.PublicKey`,
      `${name}.PublicKey is ${key === undefined ? "missing" : "not a string"}`,
    );
  }
  const decoded = decodeKey(key);
  if (typeof decoded === "string")
    throw new LeaseDecodeError(`${name}.PublicKey`, `${name}.PublicKey ${JSON.stringify(key)}: ${decoded}`);
  const port = field(parsed as Record<string, unknown>, "Port") ?? 0;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new LeaseDecodeError(`${name}.Port`, `${name}.Port is ${JSON.stringify(port)}, not a port 0–65535`);
  }
  return { publicKey: decoded.toString("base64"), port };
}

const identityOfKey = (publicKey: string): string => `WireGuard public key ${publicKey}`;

/** One data path per device for the process's life: a new preparation (a rotated key) reconfigures it. */
const dataPaths = new Map<string, WireGuardDataPath>();
/** The node's devices as one data path, for the process's life (the loop keeps the one it started). */
let tunnels: WireGuardTunnels | undefined;

/** The module is loaded or built in, or installed (creating the device loads it). */
function kernelHasWireGuard(): boolean {
  return (
    existsSync("/sys/module/wireguard") ||
    existsSync(`/lib/modules/${release()}/kernel/drivers/net/wireguard`)
  );
}

/** kernel when the module is there (or the device already is a kernel one), else wireguard-go. */
export function chooseImplementation(
  wanted: "auto" | "kernel" | "userspace",
  existing: Link | undefined,
  moduleLoaded: boolean = kernelHasWireGuard(),
): { readonly implementation: "kernel" | "userspace"; readonly why: string } {
  if (wanted === "kernel") return { implementation: "kernel", why: "--wireguard-implementation=kernel" };
  if (wanted === "userspace")
    return { implementation: "userspace", why: "--wireguard-implementation=userspace" };
  // A device wireguard-go serves now stays wireguard-go's: switching would re-create it (traffic lost).
  if (existing?.kind === "tun")
    return { implementation: "userspace", why: `${existing.name} is wireguard-go's TUN device already` };
  if (existing?.kind === "wireguard")
    return { implementation: "kernel", why: `${existing.name} is a kernel WireGuard device` };
  if (moduleLoaded) return { implementation: "kernel", why: "the kernel has the wireguard module" };
  return {
    implementation: "userspace",
    why: "the kernel has no wireguard module (neither /sys/module/wireguard nor one in /lib/modules)",
  };
}

/** One device of this node, as prepared. */
interface NodeTunnel {
  readonly device: TunnelDevice;
  readonly settings: WireGuardSettings;
}

function mismatch(name: string, reason: string): PeerProgram {
  return { objects: [], status: { state: "backend-mismatch", reason: `peer ${name} ${reason}` } };
}

function unreachable(name: string, reason: string): PeerProgram {
  return { objects: [], status: { state: "unreachable", reason: `peer ${name} ${reason}; not programmed` } };
}

const FIELD: Readonly<Record<Family, string>> = { 4: "BackendData", 6: "BackendV6Data" };
const PUBLIC: Readonly<Record<Family, string>> = { 4: "PublicIP", 6: "PublicIPv6" };

class WireGuardNode implements NodeBackend {
  readonly leaseData: string | undefined;
  readonly leaseV6Data: string | undefined;
  readonly identity: string;
  readonly ownedDevices: readonly string[];

  constructor(
    readonly config: WireGuardConfig,
    private readonly tunnels: readonly NodeTunnel[],
    publicKey: string,
    readonly userspace: WireGuardTunnels,
    readonly identityOrigin: IdentityOrigin,
  ) {
    const devices = tunnels.map((t) => t.device);
    // The port each family's peers reach this node at: its device's (in Mode separate, flannel-wg-v6's
    // ListenPortV6 for IPv6; else flannel-wg's ListenPort for both).
    const v4 = deviceFor(devices, 4);
    const v6 = deviceFor(devices, 6);
    this.leaseData = v4 === undefined ? undefined : wireGuardBackendData(publicKey, v4.listenPort);
    this.leaseV6Data = v6 === undefined ? undefined : wireGuardBackendData(publicKey, v6.listenPort);
    this.identity = identityOfKey(publicKey);
    this.ownedDevices = devices.map((device) => device.name);
  }

  /** The families a device carries that this node has, with its own address and the network of each. */
  private ownFamilies(node: NodeFacts, device: TunnelDevice) {
    const own: { family: Family; address: string; prefixLength: number; network: Prefix }[] = [];
    if (device.carries.includes(4) && hasIPv4(node.subnet)) {
      own.push({
        family: 4,
        address: formatIPv4(node.subnet.ip),
        prefixLength: 32,
        network: { family: 4, address: formatIPv4(node.network.ip), length: node.network.prefixLen },
      });
    }
    const { ipv6Subnet, ipv6Network } = node;
    if (device.carries.includes(6) && ipv6Subnet !== undefined && ipv6Network !== undefined) {
      own.push({
        family: 6,
        address: formatIPv6(ipv6Subnet.ip),
        prefixLength: 128,
        network: { family: 6, address: formatIPv6(ipv6Network.ip), length: ipv6Network.prefixLen },
      });
    }
    return own;
  }

  /** Each device with its subnet's network address as a host address (flannel's /32, /128). */
  devices(node: NodeFacts): DeviceSpec[] {
    const mtu = this.config.mtu(node.external);
    return this.tunnels.map(({ device, settings }) => {
      const kind = settings.implementation === "kernel" ? "wireguard" : "tun";
      const what = kind === "wireguard" ? "a kernel WireGuard device" : "a TUN device for wireguard-go";
      const own = this.ownFamilies(node, device);
      return {
        link: { name: device.name, kind, mtu },
        mtu,
        mac: undefined,
        addresses: own.map(({ address, prefixLength }) => ({ address, prefixLength })),
        addressScope: own.map(({ network }) => network),
        incompatibility: (link: Link) =>
          link.kind === kind ? undefined : `${device.name} is a ${link.kind ?? "plain"} device, not ${what}`,
      };
    });
  }

  /** The whole cluster network of each family goes into its device; WireGuard picks the peer by allowed IPs. */
  nodeObjects(node: NodeFacts): KernelObject[] {
    return this.tunnels.flatMap(({ device }) =>
      this.ownFamilies(node, device).map(({ family, network }) =>
        ownedRoute({
          family,
          dst: formatPrefix(network),
          gateway: undefined,
          dev: device.name,
          onlink: false,
        }),
      ),
    );
  }

  peer(node: NodeFacts, lease: Lease): PeerProgram {
    const name = leaseName(lease);
    if (lease.attrs.backendType !== "wireguard") {
      return mismatch(
        name,
        `uses backend "${lease.attrs.backendType ?? ""}", this node uses "wireguard"; not programmed`,
      );
    }
    let data: WireGuardPeerData;
    try {
      data =
        lease.peerData instanceof WireGuardPeerData
          ? lease.peerData
          : parseWireGuardPeerData(lease.attrs.backendData, lease.attrs.backendV6Data);
    } catch (error) {
      return mismatch(name, `has bad wireguard BackendData: ${(error as Error).message}`);
    }
    const rows: DevicePeerRow[] = [];
    const parts: { family: Family; program: PeerProgram }[] = [];
    for (const { device } of this.tunnels) {
      const subnets: { family: Family; subnet: string }[] = [];
      if (device.carries.includes(4) && hasIPv4(node.subnet) && hasIPv4(lease.subnet))
        subnets.push({ family: 4, subnet: formatCidr(lease.subnet) });
      if (device.carries.includes(6) && node.ipv6Subnet !== undefined && lease.ipv6Subnet !== undefined)
        subnets.push({ family: 6, subnet: formatCidr6(lease.ipv6Subnet) });
      const [first] = subnets;
      // Nothing of this peer travels through this device (it lacks the device's family).
      if (first === undefined) continue;
      const { program, row } = this.peerOnDevice(node, lease, data, name, device, subnets);
      parts.push({ family: first.family, program });
      if (row !== undefined) rows.push(row);
    }
    const combined = combineFamilies(parts, name);
    if (rows.length === 0) return combined;
    const route: WireGuardRoute = {
      subnet: lease.subnet,
      endpoint: { address: lease.attrs.publicIP, port: data.v4?.port ?? 0 },
      publicKey: data.publicKey,
      devices: rows,
    };
    return { ...combined, userspaceRoute: route };
  }

  /** The peer on one device: its key, the endpoint of the device's (or Mode auto's) family, its subnets. */
  private peerOnDevice(
    node: NodeFacts,
    lease: Lease,
    data: WireGuardPeerData,
    name: string,
    device: TunnelDevice,
    subnets: readonly { family: Family; subnet: string }[],
  ): { program: PeerProgram; row?: DevicePeerRow } {
    const peerIPv6 = lease.attrs.publicIPv6 ?? undefined;
    const family =
      device.endpoints === "auto"
        ? autoEndpointFamily({
            peerIPv4: lease.attrs.publicIP,
            peerIPv6,
            localIPv4: node.external.publicIp,
            localIPv6: node.external.publicIpv6,
          })
        : device.endpoints;
    const mode = this.config.wireguard.mode;
    if (family === undefined) {
      return {
        program: unreachable(
          name,
          `has no public address of a family this node has (Mode auto: PublicIP and PublicIPv6 of both ends)`,
        ),
      };
    }
    const address =
      family === 4 ? (lease.attrs.publicIP === 0 ? undefined : formatIPv4(lease.attrs.publicIP)) : peerIPv6;
    if (address === undefined) {
      return {
        program: unreachable(
          name,
          `publishes no ${PUBLIC[family]} to reach it at over ${device.name} (Mode ${mode})`,
        ),
      };
    }
    const own = family === 4 ? data.v4 : data.v6;
    const other = family === 4 ? data.v6 : data.v4;
    if (own === undefined && (mode === "separate" || other === undefined)) {
      return { program: mismatch(name, `publishes no wireguard ${FIELD[family]}; not programmed`) };
    }
    if (
      mode !== "separate" &&
      own !== undefined &&
      other !== undefined &&
      own.publicKey !== other.publicKey
    ) {
      return {
        program: mismatch(
          name,
          `publishes two public keys (BackendData ${data.v4?.publicKey ?? ""}, BackendV6Data ` +
            `${data.v6?.publicKey ?? ""}), and ${device.name} carries both families to one peer; not programmed`,
        ),
      };
    }
    const publicKey = (own ?? other)?.publicKey ?? data.publicKey;
    // Port 0 or none: a flannel release that did not publish it; flannel then uses its own port.
    const port = own === undefined || own.port === 0 ? device.listenPort : own.port;
    const endpoint = endpointText(family, address, port);
    return {
      program: {
        objects: [],
        status: { state: "programmed", reason: `wireguard via ${device.name} to ${endpoint}` },
      },
      row: { device: device.name, publicKey, endpoint, allowedIps: subnets.map((s) => s.subnet) },
    };
  }
}

class WireGuardConfig implements BackendConfig {
  readonly type = "wireguard";
  readonly options: Readonly<Record<string, string | number | null>>;

  constructor(readonly wireguard: WireGuardOptions) {
    this.options = {
      ListenPort: wireguard.listenPort,
      ListenPortV6: wireguard.listenPortV6,
      MTU: wireguard.mtu ?? null,
      // Never the key itself: options show in status and logs.
      // A digest, never the key: a changed PSK is then a changed config, applied at once.
      PSK:
        wireguard.psk === undefined
          ? null
          : `set (sha256 ${createHash("sha256").update(wireguard.psk).digest("hex").slice(0, 8)})`,
      PersistentKeepaliveInterval: wireguard.persistentKeepalive,
      Mode: wireguard.mode,
    };
  }

  /**
   * Throws a JsonFieldError naming Backend.Mode when the Mode needs a family the network lacks ("ipv6"
   * without EnableIPv6, "ipv4" without EnableIPv4); prepare checks the same.
   */
  checkFamilies(families: Families): void {
    tunnelDevices(this.wireguard, families);
  }

  /** flannel's MTU − 80 already leaves room for an IPv6 outer header: the same with IPv6 on. */
  mtu(external: { readonly mtu: number }): number {
    return (this.wireguard.mtu ?? external.mtu) - WIREGUARD_OVERHEAD;
  }

  async prepare(context: PrepareContext): Promise<NodeBackend> {
    const families = context.families ?? { ipv4: true, ipv6: false };
    const devices = tunnelDevices(this.wireguard, families);
    const flags = context.wireguard ?? { implementation: "auto", binary: "wireguard-go", keyFile: "" };
    const keyFile = keyFilePath(flags.keyFile, context.stateDir);
    const key = await loadOrCreateKey(keyFile, { renew: context.renewIdentity ?? false });
    const log = context.log?.child({ backend: "wireguard" });
    const prepared: NodeTunnel[] = [];
    for (const device of devices) {
      const existing = await context.existingLink(device.name);
      const { implementation, why } = chooseImplementation(flags.implementation, existing);
      const settings: WireGuardSettings = {
        device: device.name,
        implementation,
        listenPort: device.listenPort,
        psk: this.wireguard.psk,
        keepalive: this.wireguard.persistentKeepalive,
        privateKey: key.privateKey,
        publicKey: key.publicKey,
      };
      let dataPath = dataPaths.get(device.name);
      if (dataPath === undefined || dataPath.implementation !== implementation) {
        await dataPath?.retire();
        dataPath = newDataPath(settings, flags.binary, context.stateDir, log);
        dataPaths.set(device.name, dataPath);
        context.log?.info(
          { backend: "wireguard", device: device.name, implementation, why },
          `WireGuard on ${device.name}: ${implementation === "kernel" ? "the kernel's" : "wireguard-go (userspace)"}, because ${why}`,
        );
      }
      dataPath.configure(settings);
      prepared.push({ device, settings });
    }
    const paths = prepared.map(({ device }) => dataPaths.get(device.name)).filter((p) => p !== undefined);
    tunnels ??= new WireGuardTunnels({
      readKeyFile: currentKeyInFile,
      onRetired: () => (tunnels = undefined),
      ...(log === undefined ? {} : { log }),
    });
    // A device no longer wanted (IPv6 turned off, another Mode): its data path ends, wireguard-go too.
    const gone = tunnels.setDevices(paths);
    for (const [name, path] of dataPaths)
      if (!paths.includes(path) && !gone.includes(path)) {
        gone.push(path);
        dataPaths.delete(name);
      }
    for (const path of gone) await path.retire();
    tunnels.configure(keyFile, () => context.identityChanged?.());
    return new WireGuardNode(this, prepared, key.publicKey, tunnels, key.origin);
  }
}

/** A device's data path: the kernel's through `wg`, or wireguard-go's through its socket. */
function newDataPath(
  settings: WireGuardSettings,
  binary: string,
  stateDir: string,
  log: PrepareContext["log"],
): WireGuardDataPath {
  const device = settings.device;
  const common = {
    onRetired: () => dataPaths.delete(device),
    ...(log === undefined ? {} : { log }),
  };
  if (settings.implementation === "kernel") {
    return new WireGuardDataPath(settings, {
      control: new WgToolControl(device, localRunner, stateDir),
      ...common,
    });
  }
  const process = new WireGuardGo(device, binary, stateDir);
  return new WireGuardDataPath(settings, { control: process.control, process, ...common });
}

const ALL_DEVICES = [WIREGUARD_DEVICE, WIREGUARD_DEVICE_V6] as const;

export const wireguardBackend: BackendPlugin = {
  type: "wireguard",
  supportsIPv6: true,
  parseConfig: (raw, warnings) => new WireGuardConfig(parseWireGuardOptions(raw, warnings)),
  parsePeerData: (data, v6Data) => parseWireGuardPeerData(data, v6Data),
  resume(context) {
    startedStateDir = context.stateDir;
    const running = ALL_DEVICES.flatMap((device) => {
      const pid = recordedWireGuardGoPid(context.stateDir, device);
      return pid === undefined ? [] : [`the running wireguard-go (pid ${pid}) on ${device}`];
    });
    return Promise.resolve(running.length === 0 ? undefined : running.join(", "));
  },
  /** The node now uses another backend, or fewer devices: a wireguard-go a previous run left has no one to serve. */
  async releaseResumed() {
    const stateDir = startedStateDir;
    startedStateDir = undefined;
    if (stateDir === undefined) return;
    for (const device of ALL_DEVICES) {
      if (!dataPaths.has(device)) await new WireGuardGo(device, "wireguard-go", stateDir).terminate();
    }
  },
  describePeerData: (data) => (data instanceof WireGuardPeerData ? `key ${data.publicKey}` : undefined),
  identityOf: (data) => (data instanceof WireGuardPeerData ? identityOfKey(data.publicKey) : undefined),
};

/** The state dir the agent started with, for stopping a previous run's wireguard-go nobody wants. */
let startedStateDir: string | undefined;
