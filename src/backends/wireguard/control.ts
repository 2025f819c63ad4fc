// Talking to a WireGuard device: wireguard-go through its configuration socket (UAPI, a line protocol
// on /var/run/wireguard/<device>.sock), the kernel's device through `wg` (which speaks generic
// netlink to the kernel, and UAPI to wireguard-go, so it is tested here against wireguard-go).
import { createConnection } from "node:net";
import { randomBytes } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CommandError, type CommandRunner } from "../../exec/command.js";
import {
  encodeUapiSet,
  parseUapiGet,
  parseWgDump,
  uapiErrno,
  wgSetArgs,
  type DeviceChange,
  type DeviceState,
} from "./device-state.js";

export interface WireGuardControl {
  /** What it talks to, for errors ("wireguard-go's socket /var/run/wireguard/flannel-wg.sock"). */
  readonly where: string;
  get(): Promise<DeviceState>;
  set(change: DeviceChange): Promise<void>;
  /**
   * The device as text, cheap to compare, parsed only when asked: the poll compares the fingerprint
   * with the last one that matched what twill wants and parses nothing while they are equal. Without
   * this method, `get` serves.
   */
  read?(): Promise<DeviceReading>;
}

export interface DeviceReading {
  /**
   * The configuration in the reading, without what moves by itself (handshakes, counters, endpoints);
   * undefined: none to compare.
   */
  readonly fingerprint: string | undefined;
  /** Parsed on the first call. */
  state(): DeviceState;
}

function reading(fingerprint: string, parse: () => DeviceState): DeviceReading {
  let parsed: DeviceState | undefined;
  return { fingerprint, state: () => (parsed ??= parse()) };
}

/** UAPI lines that change without anyone configuring anything (roaming moves the endpoint). */
const VOLATILE_UAPI_LINES =
  /^(?:last_handshake_time_sec|last_handshake_time_nsec|tx_bytes|rx_bytes|endpoint)=.*\n/gm;

/** wireguard-go's socket directory: fixed in wireguard-go, and where `wg` looks. */
export const UAPI_SOCKET_DIR = "/var/run/wireguard";
const UAPI_TIMEOUT_MS = 5_000;

/** The end of a reply kept for spotting its errno line: "errno=-2147483648\n\n" fits. */
const TAIL_BYTES = 24;

/**
 * One request and its reply on a fresh connection (wireguard-go serves each connection in turn). Only
 * the tail of what arrived is searched for the errno line that ends a reply: a thousand peers' reply
 * is a third of a megabyte, arriving in many chunks.
 */
function uapiExchange(path: string, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    const chunks: string[] = [];
    let tail = "";
    let done = false;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${path}: no answer in ${UAPI_TIMEOUT_MS} ms`));
    }, UAPI_TIMEOUT_MS);
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(request));
    socket.on("data", (chunk: string) => {
      chunks.push(chunk);
      tail = (tail + chunk.slice(-TAIL_BYTES)).slice(-TAIL_BYTES);
      if (uapiErrno(tail) !== undefined) {
        done = true;
        clearTimeout(timer);
        socket.end();
        resolve(chunks.join(""));
      }
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(`${path}: ${error.code ?? error.message}`, { cause: error }));
    });
    socket.on("close", () => {
      clearTimeout(timer);
      if (!done) reject(new Error(`${path}: closed before a complete answer`));
    });
  });
}

export class UapiControl implements WireGuardControl {
  readonly where: string;
  readonly path: string;

  constructor(device: string, socketDir = UAPI_SOCKET_DIR) {
    this.path = join(socketDir, `${device}.sock`);
    this.where = `wireguard-go's socket ${this.path}`;
  }

  async get(): Promise<DeviceState> {
    return (await this.read()).state();
  }

  async read(): Promise<DeviceReading> {
    const text = await uapiExchange(this.path, "get=1\n\n");
    // wireguard-go lists its peers in Go's map order, another at every read: sorted, they compare.
    const body = text.replace(VOLATILE_UAPI_LINES, "").replace(/\n?errno=-?\d+\n\n$/, "");
    const [device = "", ...peers] = body.split("\npublic_key=");
    return reading([device, ...peers.sort()].join("\npublic_key="), () => parseUapiGet(text));
  }

  async set(change: DeviceChange): Promise<void> {
    const reply = await uapiExchange(this.path, encodeUapiSet(change));
    const errno = uapiErrno(reply);
    if (errno !== 0) throw new Error(`${this.where} refused the change (errno ${errno})`);
  }

  /** True when something answers on the socket (its answer is not parsed: a large device's is long). */
  async answers(): Promise<boolean> {
    return uapiExchange(this.path, "get=1\n\n").then(
      () => true,
      () => false,
    );
  }
}

/** A `wg` that could not run at all: say which package brings it. */
function withHint(error: CommandError): Error {
  return error.result.exitCode === -1 && /ENOENT/.test(error.message)
    ? new Error(`${error.message}; the kernel's WireGuard is configured with wg: install wireguard-tools`, {
        cause: error,
      })
    : error;
}

/** The kernel's device, through `wg`; keys pass through 0600 files in `keyDir`, removed at once. */
export class WgToolControl implements WireGuardControl {
  readonly where: string;

  constructor(
    private readonly device: string,
    private readonly runner: CommandRunner,
    private readonly keyDir: string,
  ) {
    this.where = `wg on ${device}`;
  }

  async get(): Promise<DeviceState> {
    return (await this.read()).state();
  }

  async read(): Promise<DeviceReading> {
    const result = await this.runner.run("wg", ["show", this.device, "dump"]);
    // Its stderr only: what a failed dump printed on stdout may hold the private key.
    if (result.exitCode !== 0)
      throw withHint(new CommandError(`wg show ${this.device} dump`, { ...result, stdout: "" }));
    const text = result.stdout;
    // Per peer line: key, psk, endpoint, allowed IPs, handshake, rx, tx, keepalive; the device line first.
    const fingerprint = text
      .split("\n")
      .map((line, i) => {
        if (i === 0) return line;
        const f = line.split("\t");
        return [f[0], f[1], f[3], f[7]].join("\t");
      })
      .join("\n");
    return reading(fingerprint, () => parseWgDump(text));
  }

  async set(change: DeviceChange): Promise<void> {
    const files = new Map<string, string>();
    const keyFile = (key: string): string => {
      let path = files.get(key);
      if (path === undefined) {
        path = join(this.keyDir, `.wg-key-${randomBytes(6).toString("hex")}`);
        files.set(key, path);
      }
      return path;
    };
    const args = wgSetArgs(this.device, change, keyFile);
    try {
      for (const [key, path] of files) await writeFile(path, `${key}\n`, { mode: 0o600, flag: "wx" });
      const result = await this.runner.run("wg", args);
      if (result.exitCode !== 0) throw withHint(new CommandError(`wg set ${this.device}`, result));
    } finally {
      await Promise.all([...files.values()].map((path) => rm(path, { force: true })));
    }
  }
}
