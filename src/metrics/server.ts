// The agent's HTTP endpoints on node:http: /metrics (Prometheus text format), /healthz (liveness: the
// process's loops are not stuck), /readyz (readiness, 503 with the reasons) and /status (JSON for
// `twill status`). The same handler serves --metrics-address and flannel's --healthz-ip/--healthz-port,
// so flannel manifests' probes keep working.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { errorMessage } from "../util/log.js";
import { Backoff, sleep, stopped } from "../util/time.js";
import { formatListenAddress, type ListenAddress } from "../config/listen-address.js";

export { formatListenAddress, parseListenAddress, type ListenAddress } from "../config/listen-address.js";

/** What the endpoints serve, read at request time. */
export interface EndpointSource {
  /** Why the agent is not ready; empty when ready. */
  notReady(): readonly string[];
  /** Why the process is unhealthy (stuck loops); empty when healthy. */
  unhealthy(): readonly string[];
  /** The /status document (StatusJson from status.ts). */
  status(): unknown;
}

export interface HandlerOptions {
  readonly registry: Registry;
  readonly source: EndpointSource;
  /** Called when serving fails unexpectedly (e.g. a metric's collect threw). */
  readonly onError?: (path: string, error: unknown) => void;
  /**
   * Serve /status to every client (--status-from-anywhere). By default only loopback clients get it:
   * it names the lease, every peer and their public IPs, which a scraper has no need of.
   */
  readonly statusFromAnywhere?: boolean;
}

/** A loopback peer address as node:net reports it (IPv4, IPv6, or IPv4-mapped IPv6). */
export function isLoopbackClient(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith("::ffff:") ? address.slice("::ffff:".length) : address;
  return v4.startsWith("127.") || address === "::1";
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, {
    "Content-Type": contentType,
    "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-store",
  });
  res.end(body);
}

const TEXT = "text/plain; charset=utf-8";
const PATHS = new Set(["/metrics", "/healthz", "/readyz", "/status"]);

/** The request handler, separate from listening so tests and several listeners can share it. */
export function createHandler(options: HandlerOptions): Handler {
  const { registry, source } = options;
  const serve = async (path: string, res: ServerResponse): Promise<void> => {
    switch (path) {
      case "/metrics":
        send(res, 200, registry.contentType, await registry.metrics());
        return;
      case "/healthz": {
        const problems = source.unhealthy();
        if (problems.length === 0) send(res, 200, TEXT, "ok\n");
        else send(res, 500, TEXT, problems.map((line) => `${line}\n`).join(""));
        return;
      }
      case "/readyz": {
        const reasons = source.notReady();
        if (reasons.length === 0) send(res, 200, TEXT, "ready\n");
        else send(res, 503, TEXT, reasons.map((line) => `${line}\n`).join(""));
        return;
      }
      case "/status":
        send(res, 200, "application/json; charset=utf-8", `${JSON.stringify(source.status(), null, 2)}\n`);
        return;
    }
  };
  return (req, res) => {
    // Only the path matters; a query string (e.g. a scraper's) is ignored.
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (!PATHS.has(path)) {
      send(res, 404, TEXT, `not found: ${path} (try /metrics, /healthz, /readyz, /status)\n`);
      return;
    }
    if (req.method !== "GET") {
      res.setHeader("Allow", "GET");
      send(res, 405, TEXT, `method ${req.method ?? "?"} not allowed on ${path}; use GET\n`);
      return;
    }
    if (
      path === "/status" &&
      options.statusFromAnywhere !== true &&
      !isLoopbackClient(req.socket.remoteAddress)
    ) {
      send(
        res,
        403,
        TEXT,
        "/status is served to loopback clients only (run twill status on the node); " +
          "start the agent with --status-from-anywhere to serve it to every client\n",
      );
      return;
    }
    serve(path, res).catch((error: unknown) => {
      options.onError?.(path, error);
      if (res.headersSent) res.destroy();
      else send(res, 500, TEXT, `internal error: ${errorMessage(error)}\n`);
    });
  };
}

export interface RunningServer {
  /** The bound address (with the real port when 0 was asked). */
  readonly address: ListenAddress;
  /** http://host:port, for logs and tests. */
  readonly url: string;
  close(): Promise<void>;
}

/** Listens on `address`; rejects with a message naming the address when it cannot (e.g. in use). */
export async function listen(address: ListenAddress, handler: Handler): Promise<RunningServer> {
  const server: Server = createServer(
    // Probes and scrapes are small: a client that dawdles is cut off rather than held open.
    { requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 },
    handler,
  );
  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void =>
      reject(new Error(`cannot listen on ${formatListenAddress(address)}: ${errorMessage(error)}`));
    server.once("error", onError);
    server.listen(address.port, address.host === "" ? undefined : address.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const actual: ListenAddress = {
    host: address.host === "" ? bound.address : address.host,
    port: bound.port,
  };
  const urlHost = isWildcard(actual.host) ? "127.0.0.1" : actual.host;
  return {
    address: actual,
    url: `http://${urlHost.includes(":") ? `[${urlHost}]` : urlHost}:${actual.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections (Prometheus keeps one) would hold close() open until they time out.
        server.closeAllConnections();
      }),
  };
}

/**
 * The addresses to bind for the requested ones (--metrics-address and --healthz-ip:--healthz-port may
 * coincide): duplicates go, and so does a specific address on a port a wildcard already covers, since
 * binding it as well would fail with EADDRINUSE.
 */
export function listenPlan(addresses: readonly ListenAddress[]): ListenAddress[] {
  const distinct = [...new Map(addresses.map((address) => [formatListenAddress(address), address])).values()];
  const wildcards = new Map<number, ListenAddress>();
  for (const a of distinct) {
    if (a.port !== 0 && isWildcard(a.host) && !wildcards.has(a.port)) wildcards.set(a.port, a);
  }
  return distinct.filter((a) => a.port === 0 || !wildcards.has(a.port) || wildcards.get(a.port) === a);
}

export interface Endpoints {
  /** Listeners up so far (one per planned address once all are bound). */
  readonly servers: readonly RunningServer[];
  /** Stops retrying and closes every listener. */
  close(): Promise<void>;
}

export interface ServeEvents {
  listening?(server: RunningServer): void;
  /** A listen attempt failed (e.g. the port is in use); it is retried with backoff. */
  failed?(address: ListenAddress, error: unknown): void;
}

/**
 * Serves `handler` on every planned address. An address that cannot be bound is retried in the
 * background instead of stopping the agent: the data plane matters more than its endpoints, and the
 * port may be freed (an old process still exiting). Probes fail meanwhile, which says it plainly.
 */
export function serve(
  addresses: readonly ListenAddress[],
  handler: Handler,
  events: ServeEvents = {},
): Endpoints {
  const controller = new AbortController();
  const servers: RunningServer[] = [];
  const loops = listenPlan(addresses).map(async (address) => {
    const backoff = new Backoff(1000, 30_000);
    while (!stopped(controller.signal)) {
      try {
        const server = await listen(address, handler);
        if (stopped(controller.signal)) {
          await server.close();
          return;
        }
        servers.push(server);
        events.listening?.(server);
        return;
      } catch (error) {
        events.failed?.(address, error);
      }
      await sleep(backoff.next(), controller.signal);
    }
  });
  return {
    servers,
    close: async () => {
      controller.abort();
      await Promise.allSettled(loops);
      await Promise.all(servers.map((server) => server.close()));
    },
  };
}

function isWildcard(host: string): boolean {
  return host === "" || host === "0.0.0.0" || host === "::";
}
