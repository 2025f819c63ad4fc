// The files consumers read from the agent: subnet.env (flannel's CNI plugin, mk-docker-opts.sh, and
// twill itself at the next start), the CNI conflist (kubelet/containerd, `twill netns`) and, on Docker
// hosts, the docker options file and daemon.json. Each is written atomically and only when its content
// changes, so watchers (containerd watches /etc/cni/net.d) see an event only for a real change and never a
// half-written file, and a restart with the same lease touches nothing. With IPv6 on, subnet.env and
// the conflist carry both families (or only IPv6 on an IPv6-only node); the Docker files stay IPv4, as
// flannel's mk-docker-opts.sh.
import { readFile } from "node:fs/promises";
import { formatSubnetEnv, writeFileAtomic, type SubnetEnv } from "./subnet-env.js";
import { daemonJsonFragment, formatDockerOpts, mergeDaemonJson } from "./docker-opts.js";
import { formatConflist, twillConflist } from "../cni/conflist.js";
import { formatCidr } from "../ip/ipv4.js";
import { formatCidr6 } from "../ip/ipv6.js";
import { systemClock, type Clock } from "../util/clock.js";
import { raceAbort, stopped } from "../util/time.js";
import { errorMessage, type Logger } from "../util/log.js";

export type UpdateOutcome = "created" | "updated" | "unchanged";

/**
 * Renders `path` from its current text (undefined when absent) and replaces it atomically only if
 * the text differs. The mode applies to new and replaced files.
 */
export async function updateFile(
  path: string,
  render: (current: string | undefined) => string,
  mode = 0o644,
): Promise<UpdateOutcome> {
  let current: string | undefined;
  try {
    current = await readFile(path, "utf8");
  } catch (error) {
    if (!(error instanceof Error && "code" in error && error.code === "ENOENT")) throw error;
  }
  const next = render(current);
  if (next === current) return "unchanged";
  await writeFileAtomic(path, next, mode);
  return current === undefined ? "created" : "updated";
}

export interface NodeFilesOptions {
  /** --subnet-file; "" = do not write one (the tests of the other files). */
  readonly subnetFile?: string;
  /** --cni-conf-file; "" = do not write a conflist. */
  readonly cniConfFile: string;
  /** --bridge */
  readonly bridge: string;
  /** --docker-opts-file; "" = off. */
  readonly dockerOptsFile: string;
  /** --docker-daemon-json; "" = off. */
  readonly dockerDaemonJson: string;
  /** The conflist's cniVersion: one the installed plugins speak (default TWILL_CNI_VERSION). */
  readonly cniVersion?: string;
}

export interface NodeFileReport {
  readonly kind: "subnet-env" | "cni-conflist" | "docker-opts" | "docker-daemon-json";
  readonly path: string;
  readonly outcome: UpdateOutcome | undefined;
  /** Why it could not be written; the other files are still tried. */
  readonly error: string | undefined;
  /** The error itself, for the log (type, message, stack). */
  readonly cause?: unknown;
}

/** Brings every configured file in line with the lease; never throws, reports per file. */
export async function updateNodeFiles(
  env: NodeFilesTarget,
  options: NodeFilesOptions,
): Promise<NodeFileReport[]> {
  const jobs: {
    kind: NodeFileReport["kind"];
    path: string;
    render: (current: string | undefined) => string;
  }[] = [];
  // Rendering happens inside each job, so a rendering error is reported like a write error.
  if (options.subnetFile !== undefined && options.subnetFile !== "") {
    jobs.push({ kind: "subnet-env", path: options.subnetFile, render: () => formatSubnetEnv(env) });
  }
  if (options.cniConfFile !== "") {
    jobs.push({
      kind: "cni-conflist",
      path: options.cniConfFile,
      render: () =>
        formatConflist(
          twillConflist({
            ...env,
            bridge: options.bridge,
            ...(options.cniVersion === undefined ? {} : { cniVersion: options.cniVersion }),
          }),
        ),
    });
  }
  if (options.dockerOptsFile !== "") {
    jobs.push({ kind: "docker-opts", path: options.dockerOptsFile, render: () => formatDockerOpts(env) });
  }
  if (options.dockerDaemonJson !== "") {
    jobs.push({
      kind: "docker-daemon-json",
      path: options.dockerDaemonJson,
      render: (current) => mergeDaemonJson(current, daemonJsonFragment(env)),
    });
  }
  const reports: NodeFileReport[] = [];
  for (const job of jobs) {
    try {
      reports.push({
        kind: job.kind,
        path: job.path,
        outcome: await updateFile(job.path, job.render),
        error: undefined,
      });
    } catch (error) {
      reports.push({
        kind: job.kind,
        path: job.path,
        outcome: undefined,
        error: errorMessage(error),
        cause: error,
      });
    }
  }
  return reports;
}

export interface NodeFilesWriterOptions extends Omit<NodeFilesOptions, "cniVersion"> {
  readonly subnetFile: string;
  /**
   * The conflist's cniVersion, or how to ask the plugins for it (src/cni/probe.ts): asked once, when
   * there is a first lease to write for, so the probe's processes do not compete with the start-up
   * (interface, config, lease); that first write waits for the answer, so the conflist is never
   * written with a version the plugins refuse.
   */
  readonly cniVersion?: string | (() => Promise<string>);
}

export interface NodeFilesEvents {
  /** After every attempt: whether subnet.env now holds the current lease. */
  subnetFileWritten(written: boolean): void;
}

/**
 * What the node files describe: the lease (IPv4 and, when IPv6 is on, IPv6), MTU and masquerade.
 * network/subnet are 0.0.0.0/0 on an IPv6-only node; ipv6Network/ipv6Subnet are given together or not at all.
 */
export type NodeFilesTarget = SubnetEnv;

/** A stable text of a target, to tell a change (subnets hold bigints, which JSON cannot write). */
function targetKey(target: NodeFilesTarget): string {
  return JSON.stringify(target, (_key, value: unknown) =>
    typeof value === "bigint" ? value.toString() : value,
  );
}

/** The lease's subnets for log lines: each family that is there. */
function leaseFields(target: NodeFilesTarget): { subnet?: string; ipv6Subnet?: string } {
  return {
    ...(target.subnet.prefixLen > 0 ? { subnet: formatCidr(target.subnet) } : {}),
    ...(target.ipv6Subnet === undefined ? {} : { ipv6Subnet: formatCidr6(target.ipv6Subnet) }),
  };
}

/**
 * The node-files writer: whenever the lease, config or MTU changes, brings every file in line, and
 * retries what could not be written every few seconds until it is.
 */
export class NodeFilesWriter {
  private target: NodeFilesTarget | undefined;
  private written: string | undefined;
  /** The plugins' answer, once asked (options.cniVersion as a function). */
  private askedCniVersion: Promise<string> | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly options: NodeFilesWriterOptions,
    private readonly log: Logger,
    private readonly events: NodeFilesEvents,
    private readonly clock: Clock = systemClock,
    private readonly retryMs = 5000,
  ) {}

  /** The lease the files must describe (both families on a dual-stack node). */
  set(target: NodeFilesTarget): void {
    this.target = target;
    this.wake?.();
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const target = this.target;
      const want = target === undefined ? undefined : targetKey(target);
      let retry = false;
      if (target !== undefined && want !== this.written) {
        const cniVersion = await this.cniVersion(signal);
        if (stopped(signal)) break;
        retry = !(await this.writeAll(target, cniVersion));
        if (!retry) this.written = want;
      }
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.wake = undefined;
          signal.removeEventListener("abort", done);
          timer?.cancel();
          resolve();
        };
        const timer = retry ? this.clock.setTimer(this.retryMs, done) : undefined;
        this.wake = done;
        signal.addEventListener("abort", done, { once: true });
        // A change that arrived while writing is picked up at once; an abort then (whose event has
        // fired already) ends the wait too.
        if (this.target !== target || signal.aborted) done();
      });
    }
  }

  /** The conflist's cniVersion: as given, or asked of the plugins once (the first call asks). */
  private async cniVersion(signal: AbortSignal): Promise<string | undefined> {
    const version = this.options.cniVersion;
    if (typeof version !== "function") return version;
    this.askedCniVersion ??= version();
    return raceAbort(this.askedCniVersion, signal, undefined);
  }

  /** Writes every file; true when all of them are right. */
  private async writeAll(target: NodeFilesTarget, cniVersion: string | undefined): Promise<boolean> {
    const { subnetFile, cniConfFile, bridge, dockerOptsFile, dockerDaemonJson } = this.options;
    const reports = await updateNodeFiles(target, {
      subnetFile,
      cniConfFile,
      bridge,
      dockerOptsFile,
      dockerDaemonJson,
      ...(cniVersion === undefined ? {} : { cniVersion }),
    });
    let ok = true;
    for (const report of reports) {
      if (report.error !== undefined) {
        ok = false;
        this.log.error(
          { err: report.cause ?? report.error, path: report.path, file: report.kind },
          report.kind === "subnet-env"
            ? "cannot write the subnet file; retrying"
            : "cannot write a node file; retrying",
        );
      } else if (report.kind === "subnet-env") {
        this.log.info(
          { path: report.path, ...leaseFields(target), outcome: report.outcome },
          "subnet file written",
        );
      } else {
        this.log.info(
          { path: report.path, file: report.kind, ...leaseFields(target) },
          `node file ${report.outcome ?? ""}`,
        );
      }
    }
    const subnetEnv = reports.find((r) => r.kind === "subnet-env");
    this.events.subnetFileWritten(subnetEnv === undefined || subnetEnv.error === undefined);
    return ok;
  }
}
