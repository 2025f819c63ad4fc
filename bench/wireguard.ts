// WireGuard from outside the agent, for the benchmarks: wireguard-go started by hand in a host's own
// mount namespace (test/helpers/wireguard.ts startMountNamespace: a private /run/wireguard, since
// wireguard-go's control socket path is the same in every network namespace), keys from `wg genkey`,
// `wg` run inside the host's mount and network namespaces, and the device's peers read straight from
// wireguard-go's configuration socket (UAPI) — not through twill's own code, so what twill did is
// checked by something else.
import { readFileSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { execa } from "execa";
import { startProcess, waitFor, type Started } from "../test/helpers/processes.js";
import type { MountNamespace } from "../test/helpers/wireguard.js";

/**
 * wireguard-go's socket for `device` inside a mount namespace, reached from the root one through the
 * holder's /proc/<pid>/root (the path walk crosses into its mounts, so no nsenter per read).
 */
export function uapiSocket(mountNs: MountNamespace, device: string): string {
  return `/proc/${mountNs.pid}/root/run/wireguard/${device}.sock`;
}

export interface UapiPeer {
  readonly endpoint: string | undefined;
  readonly allowedIps: readonly string[];
}

/**
 * One `get=1` on the socket: the device's peers by public key (hex, as UAPI carries it), or undefined
 * when nothing answers (no socket yet, wireguard-go starting).
 */
export function uapiPeers(path: string, timeoutMs = 5_000): Promise<Map<string, UapiPeer> | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    let reply = "";
    let done = false;
    const finish = (value: Map<string, UapiPeer> | undefined): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(value);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write("get=1\n\n"));
    socket.on("data", (chunk: string) => {
      reply += chunk;
      if (!reply.endsWith("\n\n")) return;
      const errno = /(?:^|\n)errno=(-?\d+)\n\n$/.exec(reply);
      if (errno === null) return;
      if (errno[1] !== "0") {
        finish(undefined);
        return;
      }
      const peers = new Map<string, { endpoint: string | undefined; allowedIps: string[] }>();
      let current: { endpoint: string | undefined; allowedIps: string[] } | undefined;
      for (const line of reply.split("\n")) {
        const eq = line.indexOf("=");
        if (eq < 0) continue;
        const key = line.slice(0, eq);
        const value = line.slice(eq + 1);
        if (key === "public_key") {
          current = { endpoint: undefined, allowedIps: [] };
          peers.set(value, current);
        } else if (current !== undefined && key === "endpoint") current.endpoint = value;
        else if (current !== undefined && key === "allowed_ip") current.allowedIps.push(value);
      }
      finish(peers);
    });
    socket.on("error", () => finish(undefined));
    socket.on("close", () => finish(undefined));
  });
}

/** A key in WireGuard's base64 text form as UAPI's hex. */
export const hexKey = (base64: string): string => Buffer.from(base64, "base64").toString("hex");

/** How many of `wanted` (hex key → endpoint and allowed IP) the device has exactly so. */
export function peersMatching(
  have: ReadonlyMap<string, UapiPeer>,
  wanted: ReadonlyMap<string, { endpoint: string; allowedIp: string }>,
): number {
  let n = 0;
  for (const [key, want] of wanted) {
    const peer = have.get(key);
    if (
      peer !== undefined &&
      peer.endpoint === want.endpoint &&
      peer.allowedIps.length === 1 &&
      peer.allowedIps[0] === want.allowedIp
    )
      n++;
  }
  return n;
}

/** `wg <args>` inside the host's mount and network namespaces; throws with wg's stderr on failure. */
export async function wgIn(
  mountNs: MountNamespace,
  netns: string,
  args: readonly string[],
  input?: string,
): Promise<string> {
  const result = await mountNs.exec(netns, ["wg", ...args], input);
  if (result.exitCode !== 0) throw new Error(`[${netns}] wg ${args.join(" ")}: ${result.stderr.trim()}`);
  return result.stdout;
}

/**
 * Writes a file (a private key, a `wg setconf` file) into the mount namespace's private tmpfs on
 * /run/wireguard and returns its path as seen inside; it goes with the namespace. (`wg` cannot read
 * /dev/stdin here: node gives a child a socket, not a pipe, and a socket cannot be opened by path.)
 */
export function privateFile(mountNs: MountNamespace, name: string, content: string): string {
  writeFileSync(`/proc/${mountNs.pid}/root/run/wireguard/${name}`, content, { mode: 0o600 });
  return `/run/wireguard/${name}`;
}

/** A key pair from `wg genkey` | `wg pubkey` (pure computation: no namespace involved). */
export async function wgKeyPair(): Promise<{ privateKey: string; publicKey: string }> {
  const privateKey = (await execa("wg", ["genkey"])).stdout.trim();
  const publicKey = (await execa("wg", ["pubkey"], { input: privateKey })).stdout.trim();
  return { privateKey, publicKey };
}

/**
 * wireguard-go in the foreground on `device`, started by hand inside the host's mount and network
 * namespaces (nsenter, and setsid, exec in place: the PID is wireguard-go's, and stop() ends it by that
 * PID). LOG_LEVEL=error, as twill starts it.
 *
 * `ownSession` (setsid): in a session of its own, as twill starts it (detached, so it outlives the
 * agent). That matters for the figures where the kernel groups each session for CPU time (autogroup,
 * /proc/sys/kernel/sched_autogroup_enabled, for processes in the root CPU cgroup): otherwise it shares
 * the benchmark's session — and its group — with iperf3.
 */
export function startWireGuardGo(
  mountNs: MountNamespace,
  netns: string,
  device: string,
  options: { ownSession?: boolean } = {},
): Started {
  const command = [...(options.ownSession === true ? ["setsid"] : []), "wireguard-go", "-f", device];
  return startProcess("nsenter", [...mountNs.enter(netns), "--", ...command], {
    ...process.env,
    LOG_LEVEL: "error",
  });
}

/** Throws unless `started` is wireguard-go itself (setsid did not fork, so the PID is the one to end). */
export function assertIsWireGuardGo(started: Started): void {
  const comm = readFileSync(`/proc/${started.pid}/comm`, "utf8").trim();
  if (comm !== "wireguard-go") throw new Error(`PID ${started.pid} is ${comm}, not wireguard-go`);
}

/** Waits until wireguard-go answers on its socket. */
export async function waitForUapi(path: string, what: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(what, async () => (await uapiPeers(path, 1_000)) !== undefined, timeoutMs, 5);
}

/** `[Interface]` and one `[Peer]` per entry, for `wg setconf DEV <file>`. */
export function wgConfig(
  privateKey: string,
  listenPort: number,
  peers: readonly { publicKey: string; endpoint: string; allowedIps: string }[],
): string {
  const lines = ["[Interface]", `PrivateKey = ${privateKey}`, `ListenPort = ${listenPort}`];
  for (const p of peers) {
    lines.push("", "[Peer]", `PublicKey = ${p.publicKey}`, `Endpoint = ${p.endpoint}`);
    lines.push(`AllowedIPs = ${p.allowedIps}`);
  }
  return `${lines.join("\n")}\n`;
}
