// The wireguard backend, as flannel's: device flannel-wg (address <subnet>/32, MTU = MTU − 80), the
// whole cluster network routed into it, and one WireGuard peer per node lease (its public key, its
// PublicIP and Port as endpoint, its subnet as allowed IPs). Leases carry flannel's BackendData,
// {"PublicKey":"<base64>","Port":<port>}, so flanneld and twill WireGuard nodes route to each other.
//
// Unlike flannel, the device and its peers are kept across restarts (flannel deletes and re-creates
// the device), peers are reconciled like every other kernel object, and where the kernel has no
// WireGuard, wireguard-go serves the device (flannel needs the kernel module).
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { release } from "node:os";
import type { KernelObject, Link } from "../../dataplane/objects.js";
import { localRunner } from "../../exec/command.js";
import { formatCidr, formatIPv4 } from "../../ip/ipv4.js";
import { LeaseDecodeError } from "../../lease/attrs.js";
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
import { parseWireGuardOptions, WIREGUARD_OVERHEAD, type WireGuardOptions } from "./config.js";
import { WgToolControl } from "./control.js";
import { WireGuardDataPath, type WireGuardSettings } from "./datapath.js";
import { currentKeyInFile, keyFilePath, loadOrCreateKey } from "./key-file.js";
import { decodeKey } from "./keys.js";
import { recordedWireGuardGoPid, WireGuardGo } from "./wireguard-go.js";
import { networkDeviceSpec, networkRoute } from "../network-device.js";

/** flannel's device name (its IPv4 and single-tunnel device). */
export const WIREGUARD_DEVICE = "flannel-wg";

/** A peer's BackendData, parsed once in the peer view. */
export class WireGuardPeerData {
  constructor(
    readonly publicKey: string,
    /** 0: not published (older flannel), meaning this node's own ListenPort. */
    readonly port: number,
  ) {}
}

/** The BackendData this node publishes: Go's encoding of flannel's struct, byte for byte. */
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
  if (text === undefined)
    throw new LeaseDecodeError("BackendData", "BackendData is missing (wireguard needs PublicKey)");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new LeaseDecodeError("BackendData", `BackendData is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new LeaseDecodeError("BackendData", "BackendData is not a JSON object");
  }
  const key = field(parsed as Record<string, unknown>, "PublicKey");
  if (typeof key !== "string") {
    throw new LeaseDecodeError(
      "BackendData.PublicKey",
      `BackendData.PublicKey is ${key === undefined ? "missing" : "not a string"}`,
    );
  }
  const decoded = decodeKey(key);
  if (typeof decoded === "string")
    throw new LeaseDecodeError(
      "BackendData.PublicKey",
      `BackendData.PublicKey ${JSON.stringify(key)}: ${decoded}`,
    );
  const port = field(parsed as Record<string, unknown>, "Port") ?? 0;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new LeaseDecodeError(
      "BackendData.Port",
      `BackendData.Port is ${JSON.stringify(port)}, not a port 0–65535`,
    );
  }
  return new WireGuardPeerData(decoded.toString("base64"), port);
}

const identityOfKey = (publicKey: string): string => `WireGuard public key ${publicKey}`;

/** One data path per device for the process's life: a new preparation (a rotated key) reconfigures it. */
const dataPaths = new Map<string, WireGuardDataPath>();

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
    return { implementation: "userspace", why: `${WIREGUARD_DEVICE} is wireguard-go's TUN device already` };
  if (existing?.kind === "wireguard")
    return { implementation: "kernel", why: `${WIREGUARD_DEVICE} is a kernel WireGuard device` };
  if (moduleLoaded) return { implementation: "kernel", why: "the kernel has the wireguard module" };
  return {
    implementation: "userspace",
    why: "the kernel has no wireguard module (neither /sys/module/wireguard nor one in /lib/modules)",
  };
}

class WireGuardNode implements NodeBackend {
  readonly leaseData: string;
  readonly identity: string;
  readonly ownedDevices: readonly string[] = [WIREGUARD_DEVICE];

  constructor(
    readonly config: WireGuardConfig,
    readonly settings: WireGuardSettings,
    readonly userspace: WireGuardDataPath,
    readonly identityOrigin: IdentityOrigin,
  ) {
    this.leaseData = wireGuardBackendData(settings.publicKey, settings.listenPort);
    this.identity = identityOfKey(settings.publicKey);
  }

  devices(node: NodeFacts): DeviceSpec[] {
    const mtu = this.config.mtu(node.external);
    const kernel = this.settings.implementation === "kernel";
    return [
      networkDeviceSpec(node, {
        name: WIREGUARD_DEVICE,
        kind: kernel ? "wireguard" : "tun",
        mtu,
        what: kernel ? "a kernel WireGuard device" : "a TUN device for wireguard-go",
      }),
    ];
  }

  /** The whole cluster network goes into flannel-wg; WireGuard picks the peer by allowed IPs. */
  nodeObjects(node: NodeFacts): KernelObject[] {
    return [networkRoute(node, WIREGUARD_DEVICE)];
  }

  peer(_node: NodeFacts, lease: Lease): PeerProgram {
    const subnet = formatCidr(lease.subnet);
    if (lease.attrs.backendType !== "wireguard") {
      return {
        objects: [],
        status: {
          state: "backend-mismatch",
          reason: `peer ${subnet} uses backend "${lease.attrs.backendType ?? ""}", this node uses "wireguard"; not programmed`,
        },
      };
    }
    let data: WireGuardPeerData;
    try {
      data =
        lease.peerData instanceof WireGuardPeerData
          ? lease.peerData
          : parseWireGuardBackendData(lease.attrs.backendData);
    } catch (error) {
      return {
        objects: [],
        status: {
          state: "backend-mismatch",
          reason: `peer ${subnet} has bad wireguard BackendData: ${(error as Error).message}`,
        },
      };
    }
    // Port 0: a flannel release that did not publish it; flannel then uses its own port.
    const endpoint = {
      address: lease.attrs.publicIP,
      port: data.port === 0 ? this.settings.listenPort : data.port,
    };
    return {
      objects: [],
      status: {
        state: "programmed",
        reason: `wireguard via ${WIREGUARD_DEVICE} to ${formatIPv4(endpoint.address)}:${endpoint.port}`,
      },
      userspaceRoute: { subnet: lease.subnet, endpoint, publicKey: data.publicKey },
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

  mtu(external: { readonly mtu: number }): number {
    return (this.wireguard.mtu ?? external.mtu) - WIREGUARD_OVERHEAD;
  }

  async prepare(context: PrepareContext): Promise<NodeBackend> {
    const flags = context.wireguard ?? { implementation: "auto", binary: "wireguard-go", keyFile: "" };
    const keyFile = keyFilePath(flags.keyFile, context.stateDir);
    const key = await loadOrCreateKey(keyFile, { renew: context.renewIdentity ?? false });
    const existing = await context.existingLink(WIREGUARD_DEVICE);
    const { implementation, why } = chooseImplementation(flags.implementation, existing);
    const settings: WireGuardSettings = {
      device: WIREGUARD_DEVICE,
      implementation,
      listenPort: this.wireguard.listenPort,
      psk: this.wireguard.psk,
      keepalive: this.wireguard.persistentKeepalive,
      privateKey: key.privateKey,
      publicKey: key.publicKey,
      keyFile,
    };
    let dataPath = dataPaths.get(WIREGUARD_DEVICE);
    if (dataPath === undefined || dataPath.implementation !== implementation) {
      await dataPath?.retire();
      const log = context.log?.child({ backend: "wireguard" });
      if (implementation === "kernel") {
        dataPath = new WireGuardDataPath(settings, {
          control: new WgToolControl(WIREGUARD_DEVICE, localRunner, context.stateDir),
          readKeyFile: currentKeyInFile,
          onRetired: () => dataPaths.delete(WIREGUARD_DEVICE),
          ...(log === undefined ? {} : { log }),
        });
      } else {
        const process = new WireGuardGo(WIREGUARD_DEVICE, flags.binary, context.stateDir);
        dataPath = new WireGuardDataPath(settings, {
          control: process.control,
          process,
          readKeyFile: currentKeyInFile,
          onRetired: () => dataPaths.delete(WIREGUARD_DEVICE),
          ...(log === undefined ? {} : { log }),
        });
      }
      dataPaths.set(WIREGUARD_DEVICE, dataPath);
      context.log?.info(
        { backend: "wireguard", implementation, why },
        `WireGuard: ${implementation === "kernel" ? "the kernel's" : "wireguard-go (userspace)"}, because ${why}`,
      );
    }
    dataPath.configure(settings, () => context.identityChanged?.());
    return new WireGuardNode(this, settings, dataPath, key.origin);
  }
}

export const wireguardBackend: BackendPlugin = {
  type: "wireguard",
  parseConfig: (raw, warnings) => new WireGuardConfig(parseWireGuardOptions(raw, warnings)),
  parsePeerData: parseWireGuardBackendData,
  resume(context) {
    startedStateDir = context.stateDir;
    const pid = recordedWireGuardGoPid(context.stateDir, WIREGUARD_DEVICE);
    return Promise.resolve(
      pid === undefined ? undefined : `the running wireguard-go (pid ${pid}) on ${WIREGUARD_DEVICE}`,
    );
  },
  /** The node now uses another backend: a wireguard-go a previous run left has no one to serve. */
  async releaseResumed() {
    const stateDir = startedStateDir;
    startedStateDir = undefined;
    if (stateDir === undefined || dataPaths.size > 0) return;
    await new WireGuardGo(WIREGUARD_DEVICE, "wireguard-go", stateDir).terminate();
  },
  describePeerData: (data) => (data instanceof WireGuardPeerData ? `key ${data.publicKey}` : undefined),
  identityOf: (data) => (data instanceof WireGuardPeerData ? identityOfKey(data.publicKey) : undefined),
};

/** The state dir the agent started with, for stopping a previous run's wireguard-go nobody wants. */
let startedStateDir: string | undefined;
