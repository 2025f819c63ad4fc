// A real etcd (Debian's etcd-server) for tests: own data dir, free loopback ports, ended by PID.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { freePort, startProcess, waitFor, type Started } from "./processes.js";

export interface EtcdServer {
  /** Client URL, e.g. http://127.0.0.1:40123. */
  readonly endpoint: string;
  readonly dataDir: string;
  process: Started;
  /** Runs etcdctl against this server and returns its stdout. */
  ctl(args: readonly string[], input?: string): string;
  /** Stops the server, keeping its data (for restart tests). */
  stopServer(): Promise<void>;
  /** Starts the server again on the same ports and data. */
  restartServer(): Promise<void>;
  /** Stops the server and removes its data dir. */
  destroy(): Promise<void>;
}

export interface EtcdTls {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
  /** Client certificate for etcdctl (the server requires one). */
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
}

export interface EtcdOptions {
  /** Serve TLS only and require client certificates signed by caFile. */
  readonly tls?: EtcdTls;
  /** Address to listen on; default 127.0.0.1. Inside a netns, the namespace's own address. */
  readonly host?: string;
  /** Run inside this network namespace (ip netns exec). */
  readonly netns?: string;
  /**
   * Client and peer ports; default two free loopback ports. A private namespace should pass fixed ones:
   * ports found free in the root namespace say nothing about another one, and two picks can collide.
   */
  readonly ports?: { readonly client: number; readonly peer: number };
}

export async function startEtcd(options: EtcdOptions = {}): Promise<EtcdServer> {
  const host = options.host ?? "127.0.0.1";
  const clientPort = options.ports?.client ?? (await freePort());
  const peerPort = options.ports?.peer ?? (await freePort());
  const dataDir = mkdtempSync(join(tmpdir(), "twill-etcd-"));
  const scheme = options.tls ? "https" : "http";
  const endpoint = `${scheme}://${host}:${clientPort}`;
  const args = [
    "--name=test",
    `--data-dir=${dataDir}`,
    `--listen-client-urls=${endpoint}`,
    `--advertise-client-urls=${endpoint}`,
    `--listen-peer-urls=http://${host}:${peerPort}`,
    `--initial-advertise-peer-urls=http://${host}:${peerPort}`,
    `--initial-cluster=test=http://${host}:${peerPort}`,
    "--logger=zap",
    "--log-level=error",
    "--unsafe-no-fsync=true",
    ...(options.tls
      ? [
          `--cert-file=${options.tls.certFile}`,
          `--key-file=${options.tls.keyFile}`,
          `--trusted-ca-file=${options.tls.caFile}`,
          "--client-cert-auth=true",
        ]
      : []),
  ];
  const tlsArgs = options.tls
    ? [
        `--cacert=${options.tls.caFile}`,
        `--cert=${options.tls.clientCertFile}`,
        `--key=${options.tls.clientKeyFile}`,
      ]
    : [];
  const launch = (): Started =>
    options.netns === undefined
      ? startProcess("etcd", args)
      : startProcess("ip", ["netns", "exec", options.netns, "etcd", ...args]);

  const ctl = (ctlArgs: readonly string[], input?: string): string => {
    const prefix = options.netns === undefined ? [] : ["netns", "exec", options.netns];
    const command = options.netns === undefined ? "etcdctl" : "ip";
    return execFileSync(
      command,
      [...prefix, ...(options.netns ? ["etcdctl"] : []), `--endpoints=${endpoint}`, ...tlsArgs, ...ctlArgs],
      {
        env: { ...process.env, ETCDCTL_API: "3" },
        input,
        encoding: "utf8",
        stdio: ["pipe", "pipe", "pipe"],
      },
    );
  };
  const waitHealthy = () =>
    waitFor(`etcd at ${endpoint} to be healthy`, () => {
      ctl(["endpoint", "health", "--command-timeout=1s"]);
      return true;
    });

  const server: EtcdServer = {
    endpoint,
    dataDir,
    process: launch(),
    ctl,
    stopServer: async () => {
      await server.process.stop();
    },
    restartServer: async () => {
      server.process = launch();
      await waitHealthy();
    },
    destroy: async () => {
      await server.process.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  try {
    await waitHealthy();
  } catch (error) {
    await server.destroy();
    throw new Error(`etcd did not start: ${String(error)}\n${server.process.output()}`, { cause: error });
  }
  return server;
}
