// The files consumers read from the agent besides subnet.env: the CNI conflist (kubelet/containerd,
// `twill netns`) and, on Docker hosts, the docker options file and daemon.json. Each is written
// atomically and only when its content changes, so watchers (containerd watches /etc/cni/net.d) see
// an event only for a real change and never a half-written file.
import { readFile } from "node:fs/promises";
import { writeFileAtomic, type SubnetEnv } from "../node/subnet-env.js";
import { daemonJsonFragment, formatDockerOpts, mergeDaemonJson } from "../node/docker-opts.js";
import { formatConflist, twillConflist } from "./conflist.js";
import { errorMessage } from "../util/log.js";

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
  /** --cni-conf-file; "" = do not write a conflist. */
  readonly cniConfFile: string;
  /** --bridge */
  readonly bridge: string;
  /** --docker-opts-file; "" = off. */
  readonly dockerOptsFile: string;
  /** --docker-daemon-json; "" = off. */
  readonly dockerDaemonJson: string;
}

export interface NodeFileReport {
  readonly kind: "cni-conflist" | "docker-opts" | "docker-daemon-json";
  readonly path: string;
  readonly outcome: UpdateOutcome | undefined;
  /** Why it could not be written; the other files are still tried. */
  readonly error: string | undefined;
}

/** Brings every configured file in line with the lease; never throws, reports per file. */
export async function updateNodeFiles(env: SubnetEnv, options: NodeFilesOptions): Promise<NodeFileReport[]> {
  const jobs: {
    kind: NodeFileReport["kind"];
    path: string;
    render: (current: string | undefined) => string;
  }[] = [];
  // Rendering happens inside each job, so a rendering error is reported like a write error.
  if (options.cniConfFile !== "") {
    jobs.push({
      kind: "cni-conflist",
      path: options.cniConfFile,
      render: () => formatConflist(twillConflist({ ...env, bridge: options.bridge })),
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
      });
    }
  }
  return reports;
}
