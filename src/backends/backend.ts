// What a backend is. A backend is a folder under src/backends/ that provides a BackendPlugin and is
// listed in registry.ts; nothing else in twill branches on the backend type. Everything here is pure
// except `prepare`, which may read and write the backend's own state (e.g. the persisted VTEP MAC).
import type { LinkSpec } from "../dataplane/channel.js";
import type { KernelObject, Link } from "../dataplane/objects.js";
import type { Prefix } from "../ip/address.js";
import type { Subnet } from "../ip/ipv4.js";
import type { Subnet6 } from "../ip/ipv6.js";
import type { JsonObject } from "../config/json-fields.js";
import type { Lease } from "../lease/lease.js";
import type { ExternalInterface } from "../node/external-interface.js";
import type { CommandRunner } from "../exec/command.js";
import type { Logger } from "pino";

/** A plain option value, for status output and change detection. */
export type OptionValue = string | number | boolean | null;

export interface BackendPlugin {
  /** flannel's Backend.Type, lower case ("vxlan", "host-gw"). */
  readonly type: string;
  /** It programs IPv6 peers too (EnableIPv6): vxlan, host-gw, wireguard; flannel's udp is IPv4 only. */
  readonly supportsIPv6?: boolean;
  /** The BackendType its leases carry, when not `type`; null: none (flannel's udp leases). */
  readonly leaseType?: string | null;
  /**
   * The network config's Backend object → this backend's config. Keys are matched as Go does
   * (case-insensitive; unknown keys are warned about); a bad value throws JsonFieldError naming
   * "Backend.<Field>".
   */
  parseConfig(backend: JsonObject, warnings: string[]): BackendConfig;
  /**
   * A peer's BackendData and BackendV6Data (its lease has this BackendType; an IPv6-only lease has
   * only BackendV6Data) → an instance of this backend's own class,
   * parsed once in the peer view. Throws an Error naming the field when the data is unusable; the
   * entry is then set aside as invalid.
   */
  parsePeerData(backendData: string | undefined, backendV6Data?: string): object;
  /**
   * What `twill leases` shows of a peer's parsed BackendData (vxlan: its VTEP MAC); undefined, or no
   * such method, when there is nothing to show.
   */
  describePeerData?(data: object): string | undefined;
  /**
   * What a peer's parsed BackendData claims that no two nodes may share (vxlan: "VTEP MAC 0a:…"), in
   * the same terms as NodeBackend.identity; undefined, or no such method, when nothing is unique.
   */
  identityOf?(data: object): string | undefined;
  /**
   * At the agent's start, before etcd answers: takes up what the previous agent left running in its
   * own process (udp's proxy), from the state dir. Returns what it resumed, for the log; undefined
   * when there was nothing to resume. The backend's `prepare` adopts it when the config still asks
   * for the same thing.
   */
  resume?(context: { readonly stateDir: string }): Promise<string | undefined>;
  /** Once the node's backend is prepared: stops whatever `resume` started and `prepare` did not adopt. */
  releaseResumed?(): Promise<void>;
}

/** What preparing a backend may use. */
export interface PrepareContext {
  /** The address families the network config enables (EnableIPv4, EnableIPv6). */
  readonly families?: { readonly ipv4: boolean; readonly ipv6: boolean };
  /** --state-dir: state kept across restarts and reboots. */
  readonly stateDir: string;
  /** A device of that name as the kernel has it now, if any (e.g. a flanneld VXLAN device to adopt). */
  readonly existingLink: (name: string) => Promise<Link | undefined>;
  /** --vxlan-tx-checksum-offload: false keeps TX checksum offload off on the tunnel device. */
  readonly txChecksumOffload: boolean;
  /**
   * What makes this node unique (machine id, host name, public IP, hashed): persisted state made for
   * another binding came from a copied state dir (a cloned VM image) and is made anew.
   */
  readonly nodeBinding: string;
  /** Make a new identity even if one is persisted: another node holds this one (see identityOf). */
  readonly renewIdentity?: boolean;
  /** WireGuard: --wireguard-implementation, --wireguard-go, --wireguard-key-file ("" = default). */
  readonly wireguard?: {
    readonly implementation: "auto" | "kernel" | "userspace";
    readonly binary: string;
    readonly keyFile: string;
  };
  /** For what a backend wants to say as it prepares (which WireGuard implementation, and why). */
  readonly log?: Logger;
  /** Tells the agent this node's lease data changed on its own (a rotated key): prepare again, re-publish. */
  readonly identityChanged?: () => void;
}

export interface BackendConfig {
  readonly type: string;
  /** The parsed options as plain values (defaults filled in), for status and logs. */
  readonly options: Readonly<Record<string, OptionValue>>;
  /**
   * The MTU pods get, given the external interface: the interface's (or the configured) MTU less the
   * encapsulation; `ipv6`: IPv6 is on, so the larger IPv6 outer header counts too.
   */
  mtu(external: ExternalInterface, ipv6?: boolean): number;
  /**
   * Checks the options against the network's families (EnableIPv4, EnableIPv6) as the config is
   * parsed; throws a JsonFieldError naming the field (wireguard: Mode "ipv6" without EnableIPv6).
   */
  checkFamilies?(families: { readonly ipv4: boolean; readonly ipv6: boolean }): void;
  /** Loads or creates what this node publishes and programs with (e.g. the VTEP MAC). */
  prepare(context: PrepareContext): Promise<NodeBackend>;
}

/** This node as the backends see it. */
export interface NodeFacts {
  /** This node's own lease (IPv4); 0.0.0.0/0 when IPv4 is off (see hasIPv4). */
  readonly subnet: Subnet;
  /** The cluster network (IPv4); 0.0.0.0/0 when IPv4 is off. */
  readonly network: Subnet;
  /** This node's IPv6 subnet and the IPv6Network, when IPv6 is on. */
  readonly ipv6Subnet?: Subnet6 | undefined;
  readonly ipv6Network?: Subnet6 | undefined;
  readonly external: ExternalInterface;
  /**
   * The external interface's on-link networks (both families): a peer whose PublicIP (PublicIPv6) is
   * in one is reachable at L2.
   */
  readonly connected: readonly Prefix[];
}

/**
 * Per-peer outcome, for logs, metrics and status:
 * - programmed: the peer's objects are in the desired state;
 * - unreachable: this backend cannot reach the peer (e.g. host-gw peer not on-link), nothing programmed;
 * - backend-mismatch: the peer runs another backend, VNI, or published unusable BackendData.
 */
export type PeerState = "programmed" | "unreachable" | "backend-mismatch";

export interface PeerStatus {
  readonly state: PeerState;
  /** Why (for programmed peers: how, e.g. "vxlan via flannel.1 to 198.18.0.2"). */
  readonly reason?: string;
}

export interface PeerProgram {
  readonly objects: readonly KernelObject[];
  readonly status: PeerStatus;
  /** For a backend with a userspace data path (udp): where the peer's subnet goes. */
  readonly userspaceRoute?: UserspaceRoute;
}

/** A row of a userspace data path's forwarding table: the peer's subnet goes to address:port. */
export interface UserspaceRoute {
  readonly subnet: Subnet;
  readonly endpoint: { readonly address: number; readonly port: number };
  /** wireguard: the peer's public key (WireGuard's base64 text form). */
  readonly publicKey?: string;
}

/**
 * A data path programmed outside rtnetlink, beside the kernel objects: udp's TUN ↔ UDP proxy in the
 * agent's own process, WireGuard's peers (wireguard-go's or the kernel's). The data-plane loop starts
 * it once the devices exist and feeds it every peer change.
 */
export interface UserspaceDataPath {
  /**
   * Starts it when it is not running, or again when `deviceRemade` (its device was made anew); true
   * when it started now. Throws an Error saying why it cannot run (the port is taken, no TUN).
   */
  ensureRunning(node: NodeFacts, deviceRemade: boolean): Promise<boolean>;
  /** Peer changes by lease key (undefined: the peer is gone); unchanged rows cost nothing. */
  update(changes: ReadonlyMap<string, UserspaceRoute | undefined>): void;
  /** The whole table: rows not in `routes` are removed. */
  replaceAll(routes: ReadonlyMap<string, UserspaceRoute>): void;
  /** Called when it stops on its own (its device was deleted, its thread died), with the reason. */
  onStopped(listener: (reason: string) => void): void;
  /** Ends it as the agent exits; the kernel's devices (and wireguard-go) stay as they are. */
  stop(): Promise<void>;
  /**
   * Ends it for good: the node now uses another backend. Without this method, `stop` is called. For
   * WireGuard, wireguard-go then exits too.
   */
  retire?(): Promise<void>;
  /** How it is doing, read at scrape and for status. */
  status(): UserspaceStatus;
}

export type UserspaceStatus = UdpProxyStatus | WireGuardStatus;

interface DataPathStatus {
  /** What it is, for status and logs ("udp proxy on flannel0, port 8285"). */
  readonly what: string;
  /** The device it serves (metrics label). */
  readonly device: string;
  readonly running: boolean;
  /** Why it last stopped on its own, until it runs again. */
  readonly lastFailure: string | undefined;
  /** Rows in its forwarding table. */
  readonly peers: number;
  /** Times it stopped on its own and was started again. */
  readonly restarts: number;
}

/** WireGuard's device as last read (at most a poll interval old). */
export interface WireGuardStatus extends DataPathStatus {
  readonly kind: "wireguard";
  /** "kernel" or "userspace" (wireguard-go). */
  readonly implementation: "kernel" | "userspace";
  readonly publicKey: string;
  readonly listenPort: number;
  /** wireguard-go's process id (userspace only). */
  readonly pid: number | undefined;
  readonly peerDetails: readonly WireGuardPeerStatus[];
  /** Peers restored or corrected after someone changed them by hand. */
  readonly repairs: number;
  /**
   * Each device's own status, when the backend runs two (Mode separate with both families:
   * flannel-wg and flannel-wg-v6); the fields above then sum (peers, restarts, repairs) or join (what)
   * theirs and name the first device. Absent with one device.
   */
  readonly devices?: readonly WireGuardStatus[];
}

export interface WireGuardPeerStatus {
  /** The device it is a peer on, when the status covers two devices (see WireGuardStatus.devices). */
  readonly device?: string;
  /** The peer's subnet (CIDR), or "" for a device peer twill does not know (about to be removed). */
  readonly subnet: string;
  readonly publicKey: string;
  readonly endpoint: string | undefined;
  /** Unix ms of the latest handshake; 0 = none yet. */
  readonly lastHandshakeMs: number;
  readonly rxBytes: number;
  readonly txBytes: number;
}

export interface UdpProxyStatus extends DataPathStatus {
  readonly kind: "udp";
  /** Counters since the agent started: packets and bytes each way, drops by reason, restarts. */
  readonly txPackets: number;
  readonly txBytes: number;
  readonly rxPackets: number;
  readonly rxBytes: number;
  readonly drops: Readonly<Record<UserspaceDrop, number>>;
  readonly icmpUnreachableSent: number;
}

/** Why a userspace data path dropped a packet: twill_udp_dropped_packets_total{reason}. */
export const USERSPACE_DROPS = [
  "no_route",
  "ttl_expired",
  "unknown_sender",
  "malformed",
  "not_ipv4",
  "send_error",
  "tun_write_error",
] as const;
export type UserspaceDrop = (typeof USERSPACE_DROPS)[number];

/** A device a backend (or the node) needs, and what must hold for it. */
export interface DeviceSpec {
  /** How to create it; its name is the device's name. */
  readonly link: LinkSpec;
  readonly mtu: number;
  /** The MAC it must have; undefined = whatever it has. */
  readonly mac: string | undefined;
  /** Addresses it must carry ("10.244.5.0" / 32). */
  readonly addresses: readonly { readonly address: string; readonly prefixLength: number }[];
  /** Its addresses inside these networks that are not wanted are stale (an earlier lease) and removed. */
  readonly addressScope: readonly Prefix[];
  /** Why an existing device of that name cannot serve (it is then deleted and re-created), or undefined. */
  incompatibility(link: Link): string | undefined;
  /**
   * For a bridge made by someone else: pin the MAC it has now, so it stops following its lowest port
   * and pods keep a valid ARP entry for their gateway.
   */
  readonly pinMac?: boolean;
  /** Checks no kernel channel call covers (e.g. ethtool offloads); returns what it changed. */
  readonly extraChecks?: (runner: CommandRunner) => Promise<DeviceRepair[]>;
}

/** One change made to a device, for logs and drift metrics. */
export interface DeviceRepair {
  readonly device: string;
  /** "created", "recreated", "address", "mtu", "up", "mac", "forwarding", "offload" */
  readonly what: string;
  readonly detail: string;
}

/**
 * How a node's identity came about: read from the state dir; adopted from a device already there (a
 * flanneld migration); made on a first start; made anew because the state dir was made on another node
 * (copied with a VM image); made anew because an older lease holds it.
 */
export type IdentityOrigin = "persisted" | "adopted" | "first-start" | "state-copied" | "renewed";

export const IDENTITY_ORIGIN_TEXT: Readonly<Record<IdentityOrigin, string>> = {
  persisted: "read from the state dir",
  adopted: "adopted from the device already on the node",
  "first-start": "made on the first start on this node",
  "state-copied":
    "made anew: the state dir was made on another node (copied with it, e.g. in a cloned VM image)",
  renewed: "made anew: an older lease of another node holds the previous one",
};

/** A backend prepared for this node. */
export interface NodeBackend {
  readonly config: BackendConfig;
  /** The BackendData JSON this node publishes in its lease; undefined = none. */
  readonly leaseData: string | undefined;
  /** The BackendV6Data JSON it publishes when IPv6 is on (vxlan: the IPv6 VTEP); undefined = none. */
  readonly leaseV6Data?: string | undefined;
  /** What identifies this node in its BackendData (see BackendPlugin.identityOf); undefined = nothing. */
  readonly identity: string | undefined;
  /** How the identity was obtained this time (see IdentityOrigin). */
  readonly identityOrigin?: IdentityOrigin;
  /** Devices whose permanent neighbour and FDB entries are twill's (the backend's own devices). */
  readonly ownedDevices: readonly string[];
  /** The devices this backend needs. */
  devices(node: NodeFacts): DeviceSpec[];
  /** Kernel objects the node needs besides its peers' (udp: the cluster network's route into flannel0). */
  nodeObjects?(node: NodeFacts): KernelObject[];
  /** A data path in the agent's process, if the backend has one (udp). */
  readonly userspace?: UserspaceDataPath;
  /** What one peer needs in the kernel, and the verdict. */
  peer(node: NodeFacts, lease: Lease): PeerProgram;
}
