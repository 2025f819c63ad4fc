// The udp backend's shell on the main thread: it owns the descriptors (the TUN device, the UDP socket
// bound to the external interface's address and the Port, a wake-up eventfd), runs the packet proxy on
// a worker thread (proxy.ts), keeps the forwarding table the proxy routes by, and restarts the proxy
// when it stops (the TUN device was deleted and made again, the worker died). Table changes are
// deltas: a peer that comes or goes never disturbs traffic to the others.
import { closeSync } from "node:fs";
import { MessageChannel, Worker, type MessagePort } from "node:worker_threads";
import type { UdpProxyStatus, UserspaceDataPath, UserspaceRoute } from "../backend.js";
import type { NodeFacts } from "../backend.js";
import { formatIPv4, type IPv4 } from "../../ip/ipv4.js";
import {
  AF_INET,
  bind,
  close,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  eventfd,
  setsockoptInt,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  socket,
  SOL_SOCKET,
  SystemCallError,
  write,
} from "../../netlink/libc.js";
import { attachTun } from "../../netlink/tun.js";
import { sockaddrOf } from "./packet.js";
import type { ResumeState } from "./resume.js";
import {
  PROXY_COUNTERS,
  type ProxyCommand,
  type ProxyCounter,
  type ProxyFailure,
  type ProxySetup,
} from "./proxy.js";

const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
/** Socket buffers that absorb a burst of full-size packets while the proxy is busy (flannel keeps the default). */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
const WAKE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

type ProxyCounters = Readonly<Record<ProxyCounter, number>>;

function udpSocket(address: IPv4, port: number): number {
  const fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  try {
    try {
      bind(fd, sockaddrOf({ address, port }));
    } catch (error) {
      const inUse = error instanceof SystemCallError && error.code === "EADDRINUSE";
      throw new Error(
        `cannot bind the udp backend's socket to ${formatIPv4(address)}:${port}` +
          (inUse
            ? ": the port is in use (a flanneld still running on this node? another Backend.Port?)"
            : ""),
        { cause: error },
      );
    }
    for (const option of [SO_SNDBUFFORCE, SO_RCVBUFFORCE]) {
      try {
        setsockoptInt(fd, SOL_SOCKET, option, SOCKET_BUFFER_BYTES, "setsockopt(socket buffer)");
      } catch {
        // Without CAP_NET_ADMIN the kernel's default buffers still work, only burst tolerance is lower.
      }
    }
    return fd;
  } catch (error) {
    close(fd);
    throw error;
  }
}

/** What starts the proxy's thread; a seam so the shell's bookkeeping is unit-tested without threads. */
export type ProxyLauncher = (setup: ProxySetup, transfer: MessagePort) => ProxyThread;

export interface ProxyThread {
  /** Called once when the thread ends: with the proxy's reason, or the error that ended it. */
  onExit(listener: (reason: string | undefined) => void): void;
  terminate(): Promise<void>;
}

export const workerLauncher: ProxyLauncher = (setup, transfer) => {
  const worker = new Worker(new URL("./proxy-worker.js", import.meta.url), {
    workerData: setup,
    transferList: [transfer],
  });
  // The proxy never keeps the agent alive on its own: the agent decides when it ends.
  worker.unref();
  let reason: string | undefined;
  return {
    onExit(listener) {
      worker.on("message", (message: ProxyFailure) => (reason = message.reason));
      worker.on("error", (error) => (reason = `the proxy thread failed: ${error.message}`));
      worker.on("exit", () => listener(reason ?? "the proxy thread ended"));
    },
    terminate: async () => {
      await worker.terminate();
    },
  };
};

interface Running {
  readonly thread: ProxyThread;
  readonly tunFd: number;
  readonly port: MessagePort;
  readonly control: Int32Array;
  stopping: boolean;
}

export interface ForwarderOptions {
  readonly device: string;
  readonly port: number;
  readonly launcher?: ProxyLauncher;
  readonly attach?: (device: string) => number;
  /** Keeps what a restarted agent needs to start the proxy at once (resume.ts); called on changes. */
  readonly persist?: (state: ResumeState) => void;
}

export class UdpForwarder implements UserspaceDataPath {
  private readonly routes = new Map<string, UserspaceRoute>();
  private readonly counterBuffer = new SharedArrayBuffer(8 * PROXY_COUNTERS.length);
  private readonly counterView = new Float64Array(this.counterBuffer);
  private socketFd: number | undefined;
  private boundTo: IPv4 | undefined;
  private wakeFd: number | undefined;
  private running: Running | undefined;
  private stoppedListener: ((reason: string) => void) | undefined;
  private readonly launcher: ProxyLauncher;
  private readonly attach: (device: string) => number;
  /** Why the proxy last stopped on its own or could not start, until it runs again. */
  private lastFailure: string | undefined;
  /** Times the proxy was started again: it stopped on its own, or its TUN device was made anew. */
  private restarts = 0;
  /**
   * Starts and stops run one after the other: a stop closes descriptors after an await, and a start
   * overlapping it could hand a closed (and reused) descriptor number to a new thread.
   */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: ForwarderOptions) {
    this.launcher = options.launcher ?? workerLauncher;
    this.attach = options.attach ?? ((device) => attachTun(device, { persist: true }));
  }

  onStopped(listener: (reason: string) => void): void {
    this.stoppedListener = listener;
  }

  counters(): ProxyCounters {
    const values = {} as Record<ProxyCounter, number>;
    PROXY_COUNTERS.forEach((name, i) => (values[name] = this.counterView[i] ?? 0));
    return values;
  }

  status(): UdpProxyStatus {
    const c = this.counters();
    return {
      kind: "udp",
      what: `udp proxy on ${this.options.device}, port ${this.options.port}`,
      device: this.options.device,
      running: this.running !== undefined,
      lastFailure: this.lastFailure,
      peers: this.routes.size,
      txPackets: c.txPackets,
      txBytes: c.txBytes,
      rxPackets: c.rxPackets,
      rxBytes: c.rxBytes,
      drops: {
        no_route: c.dropNoRoute,
        ttl_expired: c.dropTtl,
        unknown_sender: c.dropUnknownSender,
        malformed: c.dropMalformed,
        not_ipv4: c.dropNotIpv4,
        send_error: c.dropSendError,
        tun_write_error: c.dropTunWriteError,
      },
      icmpUnreachableSent: c.icmpUnreachableSent,
      restarts: this.restarts,
    };
  }

  /** The device and port it serves. */
  get device(): string {
    return this.options.device;
  }

  get port(): number {
    return this.options.port;
  }

  ensureRunning(node: NodeFacts, deviceRemade: boolean): Promise<boolean> {
    return this.startSerialized(node.external.ifaceIp, deviceRemade);
  }

  /** Starts with the socket bound to `bindAddress` before the node is known (a restart, resume.ts). */
  resume(bindAddress: IPv4): Promise<boolean> {
    return this.startSerialized(bindAddress, false);
  }

  private startSerialized(bindAddress: IPv4, deviceRemade: boolean): Promise<boolean> {
    return this.serialized(async () => {
      try {
        const started = await this.start(bindAddress, deviceRemade);
        // What a restart resumes from changes only with a start (the bound address) or the table.
        if (started) this.persistState();
        return started;
      } catch (error) {
        this.lastFailure = error instanceof Error ? error.message : String(error);
        throw error;
      }
    });
  }

  stop(): Promise<void> {
    return this.serialized(async () => {
      await this.stopThread();
      if (this.socketFd !== undefined) close(this.socketFd);
      if (this.wakeFd !== undefined) close(this.wakeFd);
      this.socketFd = undefined;
      this.wakeFd = undefined;
    });
  }

  private serialized<T>(step: () => Promise<T>): Promise<T> {
    const result = this.tail.then(step);
    this.tail = result.catch(() => undefined);
    return result;
  }

  private async start(address: IPv4, deviceRemade: boolean): Promise<boolean> {
    if (this.socketFd !== undefined && this.boundTo !== address) {
      await this.stopThread();
      close(this.socketFd);
      this.socketFd = undefined;
    }
    if (deviceRemade && this.running !== undefined) {
      await this.stopThread();
      this.restarts++;
    }
    if (this.running !== undefined) return false;
    this.socketFd ??= udpSocket(address, this.options.port);
    this.boundTo = address;
    this.wakeFd ??= eventfd(EFD_NONBLOCK | EFD_CLOEXEC);
    const tunFd = this.attach(this.options.device);
    const channel = new MessageChannel();
    const control = new Int32Array(new SharedArrayBuffer(4));
    const setup: ProxySetup = {
      tunFd,
      socketFd: this.socketFd,
      wakeFd: this.wakeFd,
      port: channel.port2,
      counters: this.counterBuffer,
      control: control.buffer,
    };
    // The whole table first, queued before the thread starts: its first packet already has every peer.
    channel.port1.postMessage({ type: "clear" } satisfies ProxyCommand);
    for (const [key, route] of this.routes) channel.port1.postMessage(setCommand(key, route));
    let thread: ProxyThread;
    try {
      thread = this.launcher(setup, channel.port2);
    } catch (error) {
      closeSync(tunFd);
      channel.port1.close();
      throw error;
    }
    const running: Running = { thread, tunFd, port: channel.port1, control, stopping: false };
    this.running = running;
    this.lastFailure = undefined;
    thread.onExit((reason) => this.exited(running, reason));
    return true;
  }

  update(changes: ReadonlyMap<string, UserspaceRoute | undefined>): void {
    const commands: ProxyCommand[] = [];
    for (const [key, route] of changes) {
      if (route === undefined) {
        if (this.routes.delete(key)) commands.push({ type: "delete", key });
      } else {
        const before = this.routes.get(key);
        if (before !== undefined && sameRoute(before, route)) continue;
        this.routes.set(key, route);
        commands.push(setCommand(key, route));
      }
    }
    this.send(commands);
    if (commands.length > 0) this.persistState();
  }

  private persistState(): void {
    if (this.boundTo === undefined) return;
    this.options.persist?.({
      device: this.options.device,
      port: this.options.port,
      bindAddress: this.boundTo,
      routes: this.routes,
    });
  }

  replaceAll(routes: ReadonlyMap<string, UserspaceRoute>): void {
    const changes = new Map<string, UserspaceRoute | undefined>();
    for (const key of this.routes.keys()) if (!routes.has(key)) changes.set(key, undefined);
    for (const [key, route] of routes) changes.set(key, route);
    this.update(changes);
  }

  private send(commands: readonly ProxyCommand[]): void {
    const running = this.running;
    if (running === undefined || commands.length === 0) return;
    for (const command of commands) running.port.postMessage(command);
    this.wake();
  }

  private wake(): void {
    if (this.wakeFd !== undefined) write(this.wakeFd, WAKE);
  }

  private async stopThread(): Promise<void> {
    const running = this.running;
    if (running === undefined) return;
    running.stopping = true;
    this.running = undefined;
    Atomics.store(running.control, 0, 1);
    this.wake();
    await running.thread.terminate();
    this.release(running);
  }

  /** Each run is released once: by stopThread, or by exited when it ended on its own. */
  private release(running: Running): void {
    running.port.close();
    closeSync(running.tunFd);
  }

  private exited(running: Running, reason: string | undefined): void {
    if (running.stopping) return;
    if (this.running === running) this.running = undefined;
    this.release(running);
    this.lastFailure = reason ?? "the proxy thread ended";
    this.restarts++;
    this.stoppedListener?.(this.lastFailure);
  }
}

function setCommand(key: string, route: UserspaceRoute): ProxyCommand {
  return {
    type: "set",
    key,
    entry: { network: route.subnet.ip, prefixLen: route.subnet.prefixLen, endpoint: route.endpoint },
  };
}

function sameRoute(a: UserspaceRoute, b: UserspaceRoute): boolean {
  return (
    a.subnet.ip === b.subnet.ip &&
    a.subnet.prefixLen === b.subnet.prefixLen &&
    a.endpoint.address === b.endpoint.address &&
    a.endpoint.port === b.endpoint.port
  );
}
