// The deploy files, checked with the tools that consume them where this machine has them: systemd-analyze
// (verify and the offline security score) for the unit, promtool (check config, check rules, and rule unit
// tests generated here) for the Prometheus files, a YAML parser for the Kubernetes manifest (every property
// the DaemonSet needs, and its install-cni script run for real against temp directories), JSON for the
// Grafana dashboard (its queries are parsed by promtool as recording rules). Every flag and TWILL_/FLANNELD_
// variable the files use must be one `twill agent --help` lists; every metric they query must be one twill
// exports.
//
// Docker cannot run on this machine (no daemon), so `docker build` is not tested: the Dockerfile's
// structure is checked instead, and the final stage's file set (dist/, production-only node_modules,
// package.json) is rebuilt in a temp dir the way the build stage makes it and run.
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, posix } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import { parseAgentOptions } from "../../src/config/agent-options.js";
import { parseNetworkConfig } from "../../src/config/network-config.js";
import { LAUNCHER_FLAGS } from "../helpers/agent.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const deployPath = (...parts: string[]): string => join(ROOT, "deploy", ...parts);
const read = (path: string): string => readFileSync(path, "utf8");

// ---- the metric names twill exports (src/metrics), and the only other one the files may use -----------
const GAUGES_AND_COUNTERS = [
  "twill_build_info",
  "twill_config_valid",
  "twill_lease_expiry_timestamp_seconds",
  "twill_lease_reserved",
  "twill_peer_subnets",
  "twill_lease_acquisitions_total",
  "twill_lease_renewals_total",
  "twill_lease_lost_total",
  "twill_identity_conflicts",
  "twill_identity_renewals_total",
  "twill_subnet_pool_size",
  "twill_subnet_pool_leased",
  "twill_peers",
  "twill_udp_proxy_up",
  "twill_udp_peers",
  "twill_udp_proxy_restarts_total",
  "twill_udp_packets_total",
  "twill_udp_bytes_total",
  "twill_udp_dropped_packets_total",
  "twill_wireguard_up",
  "twill_wireguard_peers",
  "twill_wireguard_restarts_total",
  "twill_wireguard_repairs_total",
  "twill_wireguard_peer_handshake_age_seconds",
  "twill_wireguard_peer_bytes_total",
  "twill_invalid_entries",
  "twill_invalid_entries_skipped_total",
  "twill_kernel_objects",
  "twill_dataplane_operations_total",
  "twill_reconcile_rounds_total",
  "twill_drift_repairs_total",
  "twill_etcd_watch_restarts_total",
  "twill_etcd_connected",
  "twill_masq_rules_restored_total",
  "twill_masq_errors_total",
  "twill_ready",
];
const HISTOGRAMS = ["twill_reconcile_duration_seconds", "twill_peer_event_to_programmed_seconds"];
const KNOWN_SERIES = new Set([
  ...GAUGES_AND_COUNTERS,
  ...HISTOGRAMS.flatMap((h) => [`${h}_bucket`, `${h}_sum`, `${h}_count`]),
  "up",
]);

// ---- small helpers ---------------------------------------------------------------------------------------
interface RunResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(cmd: string, args: readonly string[], options: { cwd?: string } = {}): RunResult {
  const result = spawnSync(cmd, args, { encoding: "utf8", cwd: options.cwd, timeout: 60_000 });
  if (result.error)
    throw new Error(`${cmd}: ${result.error.message} (is it installed? see scripts/setup.sh)`);
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

const tempDirs: string[] = [];
function tempDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `twill-deploy-${label}-`));
  tempDirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** Walks parsed YAML/JSON without `any`: a missing step gives undefined. */
function at(value: unknown, ...path: readonly (string | number)[]): unknown {
  let current = value;
  for (const key of path) {
    if (typeof key === "number") {
      if (!Array.isArray(current)) return undefined;
      current = (current as unknown[])[key];
    } else {
      if (typeof current !== "object" || current === null || Array.isArray(current)) return undefined;
      current = (current as Record<string, unknown>)[key];
    }
  }
  return current;
}
const list = (value: unknown): unknown[] => (Array.isArray(value) ? (value as unknown[]) : []);
const text = (value: unknown): string | undefined => (typeof value === "string" ? value : undefined);
const byName = (items: unknown, name: string): unknown =>
  list(items).find((item) => at(item, "name") === name);

// ---- `twill agent --help`: the flags, their defaults and their environment names ------------------------
interface FlagHelp {
  readonly name: string;
  readonly defaultValue: string | undefined;
  readonly env: readonly string[];
}

function agentHelp(): FlagHelp[] {
  // dist/ is built by test/global-setup.ts.
  const result = run(process.execPath, [join(ROOT, "dist/cli/main.js"), "agent", "--help"]);
  expect(result.status, result.stderr).toBe(0);
  const flags: { name: string; defaultValue: string | undefined; env: string[] }[] = [];
  for (const line of result.stdout.split("\n")) {
    const flag = /^ {2}--([a-z0-9][a-z0-9_-]*)/.exec(line);
    if (flag?.[1] !== undefined) {
      flags.push({ name: flag[1], defaultValue: undefined, env: [] });
      continue;
    }
    const current = flags.at(-1);
    if (current === undefined || !line.startsWith("      ")) continue;
    const body = line.trim();
    if (body.startsWith("env: ")) current.env.push(...body.slice(5).split(/,\s*/));
    else {
      const def = /\(default (.*?)\)(?: \[repeatable\])?$/.exec(body);
      if (def?.[1] !== undefined) current.defaultValue = def[1];
    }
  }
  return flags;
}

let help: FlagHelp[] = [];
let flagNames = new Set<string>();
let envNames = new Set<string>();
beforeAll(() => {
  help = agentHelp();
  flagNames = new Set(help.map((f) => f.name));
  envNames = new Set(help.flatMap((f) => f.env));
});

function helpDefault(flag: string): string {
  const value = help.find((f) => f.name === flag)?.defaultValue;
  if (value === undefined) throw new Error(`twill agent --help shows no default for --${flag}`);
  return value;
}

/** The `--flag` names in command-line words (`--a=b`, `--a`, `-a`), "$(VAR)" forms included. */
function flagsIn(words: readonly string[]): string[] {
  return words.flatMap((word) => {
    const match = /^--?([a-z0-9][a-z0-9-]*)(=|$)/.exec(word);
    return match?.[1] === undefined ? [] : [match[1]];
  });
}

function expectRealFlags(used: readonly string[], where: string): void {
  const unknown = used.filter((flag) => !flagNames.has(flag));
  expect(unknown, `${where} uses flags that twill agent does not have`).toEqual([]);
}

function expectRealEnv(used: readonly string[], where: string): void {
  const unknown = used.filter((name) => !envNames.has(name));
  expect(unknown, `${where} uses variables that twill agent does not read`).toEqual([]);
}

// ---- PromQL: the metric names an expression reads ---------------------------------------------------------
const PROMQL_WORDS = new Set(["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"]);

/** Metric names referenced by a PromQL expression (functions, keywords, label names and matchers excluded). */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
    .replace(/\$\{?\w+\}?/g, " ");
  const names: string[] = [];
  for (const match of stripped.matchAll(/(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?/g)) {
    const [, name, call] = match;
    if (name === undefined || call !== undefined || PROMQL_WORDS.has(name.toLowerCase())) continue;
    names.push(name);
  }
  return names;
}

describe("metricNames (the checker itself)", () => {
  it("finds metric names and nothing else", () => {
    expect(
      metricNames(
        'sum by (job, le) (rate(twill_x_bucket{job="twill", a=~"b|c"}[$__rate_interval])) ' +
          "> 1e3 and on (instance) up == 0 or histogram_quantile(0.5, foo) offset 5m - time()",
      ),
    ).toEqual(["twill_x_bucket", "up", "foo"]);
  });
});

// ---- systemd ----------------------------------------------------------------------------------------------
/** A systemd unit as section → key → values (a key may repeat); comments dropped. */
function parseUnit(source: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let section: Map<string, string[]> | undefined;
  for (const raw of source.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header?.[1] !== undefined) {
      section = new Map();
      sections.set(header[1], section);
      continue;
    }
    const eq = line.indexOf("=");
    if (section === undefined || eq < 0) throw new Error(`unit: cannot parse line "${line}"`);
    const key = line.slice(0, eq).trim();
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return sections;
}

/** `KEY=value` assignments of an EnvironmentFile, commented-out ones included (they document defaults). */
function envFileAssignments(source: string): { name: string; value: string }[] {
  const out: { name: string; value: string }[] = [];
  for (const line of source.split("\n")) {
    const match = /^#?\s*([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (match?.[1] === undefined) continue;
    let value = match[2] ?? "";
    if (/^".*"$|^'.*'$/.test(value)) value = value.slice(1, -1);
    out.push({ name: match[1], value });
  }
  return out;
}

describe("node flags of every launcher", () => {
  it("src/cli/main.ts's first line gives node a small young generation, and node accepts the flags", () => {
    expect(LAUNCHER_FLAGS).toContain("--max-semi-space-size=1");
    const result = run(process.execPath, [...LAUNCHER_FLAGS, "-e", "process.exit(0)"]);
    expect(result.status, result.stderr).toBe(0);
  });

  it("the built CLI keeps that line, is executable, and runs through it", () => {
    const built = join(ROOT, "dist", "cli", "main.js");
    expect(read(built).split("\n", 1)[0]).toBe(read(join(ROOT, "src", "cli", "main.ts")).split("\n", 1)[0]);
    const result = run(built, ["--version"]);
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout.trim()).toMatch(/^twill \d+\.\d+\.\d+/);
  });

  it("the systemd notes name the same flags for a wrapper script", () => {
    expect(read(deployPath("systemd", "twill.service"))).toContain(`exec node ${LAUNCHER_FLAGS.join(" ")} `);
  });
});

describe("systemd unit (deploy/systemd)", () => {
  const unitPath = deployPath("systemd", "twill.service");
  const envPath = deployPath("systemd", "twill.env.example");
  const unitText = read(unitPath);
  const unit = parseUnit(unitText);
  const values = (section: string, key: string): string[] => unit.get(section)?.get(key) ?? [];
  const one = (section: string, key: string): string | undefined => values(section, key).at(-1);
  const words = (section: string, key: string): string[] =>
    values(section, key).flatMap((v) => v.split(/\s+/).filter((w) => w !== ""));

  it("passes systemd-analyze verify (with ExecStart pointed at a stand-in executable)", () => {
    // verify checks that ExecStart's program exists; /usr/local/bin/twill is not installed here, so a
    // copy of the unit runs a stub instead. Everything else is verified as written.
    const dir = tempDir("unit");
    const stub = join(dir, "twill");
    writeFileSync(
      stub,
      `#!/bin/sh\nexec node ${LAUNCHER_FLAGS.join(" ")} /opt/twill/dist/cli/main.js "$@"\n`,
    );
    chmodSync(stub, 0o755);
    expect(unitText).toMatch(/^ExecStart=\/usr\/local\/bin\/twill agent/m);
    const copy = join(dir, "twill.service");
    writeFileSync(copy, unitText.replace(/^ExecStart=\/usr\/local\/bin\/twill /m, `ExecStart=${stub} `));
    const result = run("systemd-analyze", ["verify", "--man=no", copy]);
    const complaints = `${result.stdout}\n${result.stderr}`
      .split("\n")
      .filter((line) => line.includes("twill"));
    expect(complaints, "systemd-analyze verify complained about the unit").toEqual([]);
    expect(result.status, result.stderr).toBe(0);
  });

  it("scores as hardened in systemd-analyze security --offline", () => {
    const result = run("systemd-analyze", ["security", "--offline=true", "--no-pager", unitPath]);
    expect(result.status, result.stderr).toBe(0);
    const score = /Overall exposure level for twill\.service: ([\d.]+)/.exec(result.stdout)?.[1];
    expect(score, result.stdout).toBeDefined();
    expect(Number(score)).toBeLessThanOrEqual(3.5);
  });

  it("orders itself after the network and before the container runtimes and the kubelet", () => {
    expect(words("Unit", "Wants")).toContain("network-online.target");
    expect(words("Unit", "After")).toContain("network-online.target");
    expect(words("Unit", "Before")).toEqual(
      expect.arrayContaining(["docker.service", "containerd.service", "kubelet.service"]),
    );
  });

  it("runs `twill agent` from an optional environment file and always restarts it", () => {
    // The agent speaks sd_notify (READY=1 once ready; agent-lease.test.ts checks it over a real socket).
    expect(one("Service", "Type")).toBe("notify");
    expect(one("Service", "NotifyAccess")).toBe("main");
    expect(values("Service", "EnvironmentFile")).toContain("-/etc/twill/twill.env");
    expect(one("Service", "ExecStart")).toMatch(/^\/usr\/local\/bin\/twill agent(\s|$)/);
    expect(one("Service", "Restart")).toBe("always");
    expect(Number(one("Service", "RestartSec"))).toBeGreaterThan(0);
    expect(one("Install", "WantedBy")).toBe("multi-user.target");
  });

  it("stops only the agent, so wireguard-go (data plane) outlives a restart, and gives it /run/wireguard", () => {
    // control-group (the default) and mixed would kill wireguard-go with every restart of the unit.
    expect(one("Service", "KillMode")).toBe("process");
    expect(one("Service", "KillSignal")).toBe("SIGTERM");
    // wireguard-go's socket dir (fixed in wireguard-go, where wg looks): writable under ProtectSystem.
    expect(words("Service", "RuntimeDirectory")).toEqual(expect.arrayContaining(["flannel", "wireguard"]));
    expect(one("Service", "RuntimeDirectoryPreserve")).toBe("yes");
    expect(words("Service", "DeviceAllow")).toContain("/dev/net/tun");
  });

  it("is hardened but keeps what the agent needs (NET_ADMIN, netlink, /proc/sys, its files)", () => {
    expect(words("Service", "CapabilityBoundingSet").sort()).toEqual(["CAP_NET_ADMIN", "CAP_NET_RAW"]);
    expect(words("Service", "AmbientCapabilities").sort()).toEqual(["CAP_NET_ADMIN", "CAP_NET_RAW"]);
    for (const key of ["NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelModules"]) {
      expect(one("Service", key), key).toBe("yes");
    }
    expect(one("Service", "ProtectSystem")).toBe("strict");
    expect(words("Service", "RestrictAddressFamilies")).toEqual(
      expect.arrayContaining(["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]),
    );
    // The agent may set net.ipv4.ip_forward, and Node's JIT needs W+X memory.
    expect(one("Service", "ProtectKernelTunables") ?? "no").toBe("no");
    expect(one("Service", "MemoryDenyWriteExecute") ?? "no").toBe("no");
    expect(one("Service", "PrivateNetwork") ?? "no").toBe("no");
    // Writable: the default subnet file's dir, the default state dir, the CNI dir and the xtables lock.
    const writable = words("Service", "ReadWritePaths").map((p) => p.replace(/^-/, ""));
    expect(writable).toEqual(
      expect.arrayContaining([
        dirname(helpDefault("subnet-file")),
        helpDefault("state-dir"),
        "/etc/cni/net.d",
        "/run/xtables.lock",
      ]),
    );
  });

  it("uses only real flags and documented variables on its command line", () => {
    const exec = one("Service", "ExecStart") ?? "";
    const args = exec.split(/\s+/).slice(2);
    expectRealFlags(flagsIn(args), "ExecStart");
    const documented = new Set(envFileAssignments(read(envPath)).map((a) => a.name));
    for (const variable of args.filter((a) => a.startsWith("$"))) {
      expect(documented, `${variable} is not in twill.env.example`).toContain(
        variable.replace(/^\$\{?|\}$/g, ""),
      );
    }
  });

  it("twill.env.example documents every flag's variable, and only real ones", () => {
    const source = read(envPath);
    const assignments = envFileAssignments(source);
    const names = assignments.map((a) => a.name);
    const missing = help.map((f) => `TWILL_${f.name.toUpperCase().replace(/-/g, "_")}`);
    expect(
      missing.filter((name) => !names.includes(name)),
      "flags without a TWILL_ line in twill.env.example",
    ).toEqual([]);
    // Every TWILL_/FLANNELD_ name anywhere in the file, prose included, is one the agent reads.
    expectRealEnv(
      [...new Set(source.match(/\b(?:TWILL|FLANNELD)_[A-Z0-9_]+\b/g) ?? [])],
      "twill.env.example",
    );
    // Every other assignment is one the unit uses.
    const others = names.filter((name) => !/^(?:TWILL|FLANNELD)_/.test(name));
    for (const name of others) expect(unitText, `${name} is not used by twill.service`).toContain(`$${name}`);
    // Every --flag mentioned is real (`--help` is accepted by `twill agent` too).
    const mentioned = [...source.matchAll(/(?<![\w-])--([a-z0-9][a-z0-9_-]*)/g)].map((m) => m[1] ?? "");
    expectRealFlags(
      mentioned.filter((flag) => flag !== "help"),
      "twill.env.example",
    );
  });

  it("twill.env.example's values are accepted by the agent's option parser", () => {
    // Uncomment everything: each documented value must parse (booleans, durations, ranges, choices).
    const env: Record<string, string> = {};
    let extraArgs: string[] = [];
    for (const { name, value } of envFileAssignments(read(envPath))) {
      if (name === "EXTRA_ARGS") extraArgs = value.split(/\s+/).filter((w) => w !== "");
      else if (envNames.has(name)) env[name] = value;
    }
    expect(Object.keys(env).length).toBeGreaterThan(10);
    const options = parseAgentOptions(extraArgs, env);
    expect(options.subnetFile).toBe(helpDefault("subnet-file"));
    expect(options.stateDir).toBe(helpDefault("state-dir"));
  });
});

// ---- Kubernetes -------------------------------------------------------------------------------------------
function loadYamlDocuments(path: string): unknown[] {
  const docs = parseAllDocuments(read(path));
  const out: unknown[] = [];
  for (const doc of docs) {
    expect(doc.errors.map(String), `${path}: YAML errors`).toEqual([]);
    expect(doc.warnings.map(String), `${path}: YAML warnings`).toEqual([]);
    const value: unknown = doc.toJS();
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

describe("Kubernetes manifest (deploy/kubernetes/twill.yaml)", () => {
  const objects = loadYamlDocuments(deployPath("kubernetes", "twill.yaml"));
  const find = (kind: string, name: string): unknown => {
    const found = objects.find((o) => at(o, "kind") === kind && at(o, "metadata", "name") === name);
    if (found === undefined) throw new Error(`twill.yaml has no ${kind} ${name}`);
    return found;
  };
  const ds = find("DaemonSet", "twill");
  const pod = at(ds, "spec", "template", "spec");
  const container = byName(at(pod, "containers"), "twill");
  const args = list(at(container, "args")).map(String);
  const flagValue = (flag: string): string | undefined =>
    args.find((a) => a.startsWith(`--${flag}=`))?.slice(flag.length + 3);
  const volume = (name: string): unknown => byName(at(pod, "volumes"), name);
  const mountsOf = (c: unknown): { name: string; mountPath: string; readOnly: boolean }[] =>
    list(at(c, "volumeMounts")).map((m) => ({
      name: text(at(m, "name")) ?? "",
      mountPath: text(at(m, "mountPath")) ?? "",
      readOnly: at(m, "readOnly") === true,
    }));
  const envVar = (name: string): unknown => byName(at(container, "env"), name);

  it("has the namespace (privileged pod security), a service account and no broad RBAC", () => {
    const kinds = objects.map((o) => String(at(o, "kind")));
    expect(kinds).toEqual(expect.arrayContaining(["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]));
    const ns = find("Namespace", "kube-twill");
    expect(at(ns, "metadata", "labels", "pod-security.kubernetes.io/enforce")).toBe("privileged");
    for (const o of objects.filter((o) => at(o, "kind") !== "Namespace")) {
      expect(at(o, "metadata", "namespace"), String(at(o, "metadata", "name"))).toBe(
        /^Cluster/.test(String(at(o, "kind"))) ? undefined : "kube-twill",
      );
    }
    // twill uses etcd, not the API: any RBAC may at most read nodes.
    for (const role of objects.filter((o) => /Role$/.test(String(at(o, "kind"))))) {
      for (const rule of list(at(role, "rules"))) {
        expect(list(at(rule, "resources"))).toEqual(["nodes"]);
        expect(list(at(rule, "verbs")).every((v) => v === "get" || v === "list" || v === "watch")).toBe(true);
      }
    }
    expect(at(pod, "serviceAccountName")).toBe("twill");
    find("ServiceAccount", "twill");
  });

  it("runs on every Linux node: hostNetwork, system-node-critical, tolerates every taint", () => {
    expect(at(pod, "hostNetwork")).toBe(true);
    expect(at(pod, "priorityClassName")).toBe("system-node-critical");
    const tolerateAll = list(at(pod, "tolerations")).some(
      (t) => at(t, "operator") === "Exists" && at(t, "key") === undefined && at(t, "effect") === undefined,
    );
    expect(tolerateAll, "a toleration with operator Exists and no key or effect").toBe(true);
    const linux =
      at(pod, "nodeSelector", "kubernetes.io/os") === "linux" ||
      JSON.stringify(at(pod, "affinity", "nodeAffinity") ?? {}).includes('"kubernetes.io/os"');
    expect(linux).toBe(true);
    expect(at(ds, "spec", "selector", "matchLabels", "app")).toBe(
      at(ds, "spec", "template", "metadata", "labels", "app"),
    );
  });

  it("gives the agent NET_ADMIN and NET_RAW, not privileged", () => {
    expect(at(container, "securityContext", "privileged")).toBe(false);
    expect(list(at(container, "securityContext", "capabilities", "add"))).toEqual(
      expect.arrayContaining(["NET_ADMIN", "NET_RAW"]),
    );
    expect(String(at(container, "image"))).toMatch(/^ghcr\.io\/twill\/twill:\d+\.\d+\.\d+$/);
    expect(args[0]).toBe("agent");
  });

  it("takes the node name and IP from the downward API and advertises the node IP", () => {
    expect(at(envVar("NODE_NAME"), "valueFrom", "fieldRef", "fieldPath")).toBe("spec.nodeName");
    expect(at(envVar("NODE_IP"), "valueFrom", "fieldRef", "fieldPath")).toBe("status.hostIP");
    expect(args).toContain("--public-ip=$(NODE_IP)");
  });

  it("reads the etcd endpoints from a ConfigMap and the TLS files from the twill-etcd-tls Secret", () => {
    const ref = at(envVar("TWILL_ETCD_ENDPOINTS"), "valueFrom", "configMapKeyRef");
    const endpoints = at(find("ConfigMap", String(at(ref, "name"))), "data", String(at(ref, "key")));
    expect(
      String(endpoints)
        .split(",")
        .every((u) => /^https?:\/\/[^/\s]+:\d+$/.test(u.trim())),
    ).toBe(true);

    expect(at(volume("etcd-tls"), "secret", "secretName")).toBe("twill-etcd-tls");
    const mount = mountsOf(container).find((m) => m.name === "etcd-tls");
    expect(mount?.readOnly).toBe(true);
    const dir = mount?.mountPath ?? "?";
    expect(flagValue("etcd-cafile")).toBe(`${dir}/ca.crt`);
    expect(flagValue("etcd-certfile")).toBe(`${dir}/client.crt`);
    expect(flagValue("etcd-keyfile")).toBe(`${dir}/client.key`);
  });

  it("mounts the subnet file dir, CNI config dir, state dir, xtables lock and WireGuard socket dir from the host", () => {
    const mounts = mountsOf(container);
    const hostPaths: Record<string, string> = {
      "/run/flannel": "DirectoryOrCreate",
      "/etc/cni/net.d": "DirectoryOrCreate",
      "/var/lib/twill": "DirectoryOrCreate",
      "/run/xtables.lock": "FileOrCreate",
      // wireguard-go's socket (the root file system is read-only), visible to `wg show` on the host.
      "/run/wireguard": "DirectoryOrCreate",
    };
    for (const [path, type] of Object.entries(hostPaths)) {
      const vol = list(at(pod, "volumes")).find((v) => at(v, "hostPath", "path") === path);
      expect(vol, `hostPath volume ${path}`).toBeDefined();
      expect(at(vol, "hostPath", "type"), path).toBe(type);
      const mount = mounts.find((m) => m.name === at(vol, "name"));
      expect(mount?.mountPath, `${path} mounted at the same path`).toBe(path);
      expect(mount?.readOnly, `${path} writable`).toBe(false);
    }
    // The files the agent writes live under those mounts.
    expect(dirname(flagValue("subnet-file") ?? helpDefault("subnet-file"))).toBe("/run/flannel");
    expect(flagValue("state-dir") ?? helpDefault("state-dir")).toBe("/var/lib/twill");
  });

  it("mounts the node's CNI plugin dir read-only where --cni-bin-dir looks, to ask the plugins their versions", () => {
    const vol = list(at(pod, "volumes")).find((v) => at(v, "hostPath", "path") === "/opt/cni/bin");
    expect(vol, "hostPath volume /opt/cni/bin").toBeDefined();
    const mount = mountsOf(container).find((m) => m.name === at(vol, "name"));
    expect(mount?.mountPath).toBe("/opt/cni/bin");
    expect(mount?.readOnly, "/opt/cni/bin read-only").toBe(true);
    expect((flagValue("cni-bin-dir") ?? helpDefault("cni-bin-dir")).split(/[:,]/)).toContain("/opt/cni/bin");
  });

  it("probes /healthz and /readyz on the metrics port, which Prometheus is told to scrape", () => {
    const port = list(at(container, "ports")).find((p) => at(p, "name") === "metrics");
    expect(at(port, "containerPort")).toBe(9102);
    expect(at(container, "livenessProbe", "httpGet", "path")).toBe("/healthz");
    expect(at(container, "livenessProbe", "httpGet", "port")).toBe("metrics");
    expect(at(container, "readinessProbe", "httpGet", "path")).toBe("/readyz");
    expect(at(container, "readinessProbe", "httpGet", "port")).toBe("metrics");
    const annotations = at(ds, "spec", "template", "metadata", "annotations");
    expect(at(annotations, "prometheus.io/scrape")).toBe("true");
    expect(at(annotations, "prometheus.io/port")).toBe("9102");
  });

  it("the probed port is the one the agent listens on (--metrics-address)", () => {
    const address = flagValue("metrics-address") ?? helpDefault("metrics-address");
    expect(address).toMatch(/:9102$/);
  });

  it("requests resources and limits memory", () => {
    expect(at(container, "resources", "requests", "cpu")).toBe("100m");
    expect(at(container, "resources", "requests", "memory")).toBe("100Mi");
    expect(String(at(container, "resources", "limits", "memory"))).toMatch(/^\d+(Mi|Gi)$/);
  });

  it("uses only real flags and variables of twill agent", () => {
    expectRealFlags(flagsIn(args), "the DaemonSet's args");
    const envs = list(at(container, "env"))
      .map((e) => String(at(e, "name")))
      .filter((name) => /^(?:TWILL|FLANNELD)_/.test(name));
    expect(envs.length).toBeGreaterThan(0);
    expectRealEnv(envs, "the DaemonSet's env");
    // Every $(VAR) in the args is defined in the container's env (Kubernetes leaves unknown ones as is).
    for (const ref of args.join(" ").matchAll(/\$\(([A-Z_][A-Z0-9_]*)\)/g)) {
      expect(envVar(ref[1] ?? ""), `$(${ref[1] ?? ""})`).toBeDefined();
    }
  });

  it("carries a valid network config and a bridge + host-local + portmap CNI conflist", () => {
    const data = at(find("ConfigMap", "twill-cfg"), "data");
    const netConf = String(at(data, "net-conf.json"));
    const { config } = parseNetworkConfig(netConf);
    expect(config.backend.type).toBe("vxlan");
    expect(JSON.parse(netConf)).toEqual({ Network: "10.244.0.0/16", Backend: { Type: "vxlan" } });

    const conflist: unknown = JSON.parse(String(at(data, "cni-conf.json")));
    expect(typeof at(conflist, "name")).toBe("string");
    expect(String(at(conflist, "cniVersion"))).toMatch(/^\d+\.\d+\.\d+$/);
    const plugins = list(at(conflist, "plugins"));
    const bridge = plugins.find((p) => at(p, "type") === "bridge");
    expect(at(bridge, "bridge")).toBe(flagValue("bridge") ?? helpDefault("bridge"));
    expect(at(bridge, "ipam", "type")).toBe("host-local");
    expect(list(at(bridge, "ipam", "ranges")).length).toBeGreaterThan(0);
    // --ip-masq: twill masquerades, so the bridge plugin must not.
    expect(at(bridge, "ipMasq")).toBe(!args.includes("--ip-masq"));
    const portmap = plugins.find((p) => at(p, "type") === "portmap");
    expect(at(portmap, "capabilities", "portMappings")).toBe(true);
  });

  describe("install-cni init container", () => {
    const init = list(at(pod, "initContainers"))[0];
    const command = list(at(init, "command")).map(String);
    const script = command[2] ?? "";
    const conflistText = String(at(find("ConfigMap", "twill-cfg"), "data", "cni-conf.json"));

    it("is a shell script that copies to a temp file in /etc/cni/net.d and renames it with mv", () => {
      expect(command.slice(0, 2)).toEqual(["sh", "-c"]);
      const tmp = /^\s*tmp=(\S+)$/m.exec(script)?.[1] ?? "";
      const dest = /^\s*dest=(\S+)$/m.exec(script)?.[1] ?? "";
      expect(posix.dirname(tmp)).toBe("/etc/cni/net.d");
      expect(posix.dirname(dest)).toBe("/etc/cni/net.d");
      expect(dest).toMatch(/\.conflist$/);
      // Runtimes load *.conf, *.conflist and *.json: the temp name must be none of those.
      expect(tmp).not.toMatch(/\.(conf|conflist|json)$/);
      expect(script).toMatch(/^\s*mv (-f )?"\$tmp" "\$dest"$/m);
      expect(String(at(init, "image"))).toBe(String(at(container, "image")));
    });

    /** Runs the script with each mount path mapped to a temp dir; returns the dirs by volume name. */
    function runInstall(prepare: (dirs: Record<string, string>) => void): {
      result: RunResult;
      dirs: Record<string, string>;
    } {
      const base = tempDir("install-cni");
      const dirs: Record<string, string> = {};
      let mapped = script;
      const mounts = mountsOf(init).sort((a, b) => b.mountPath.length - a.mountPath.length);
      for (const mount of mounts) {
        const dir = join(base, mount.name);
        mkdirSync(dir, { recursive: true });
        dirs[mount.name] = dir;
        const configMap = text(at(volume(mount.name), "configMap", "name"));
        if (configMap !== undefined) {
          const data = (at(find("ConfigMap", configMap), "data") ?? {}) as Record<string, unknown>;
          for (const [key, value] of Object.entries(data)) writeFileSync(join(dir, key), String(value));
        }
        mapped = mapped.split(mount.mountPath).join(dir);
      }
      prepare(dirs);
      return { result: run("sh", ["-c", mapped]), dirs };
    }
    const cniDir = (dirs: Record<string, string>): string => dirs["cni-conf-dir"] ?? "?";
    const runDir = (dirs: Record<string, string>): string => dirs["run-flannel"] ?? "?";

    it("installs the ConfigMap's conflist (mode 0644) and leaves no temp file", () => {
      const { result, dirs } = runInstall(() => undefined);
      expect(result.status, result.stderr).toBe(0);
      expect(readdirSync(cniDir(dirs))).toEqual(["10-twill.conflist"]);
      const installed = join(cniDir(dirs), "10-twill.conflist");
      expect(read(installed)).toBe(conflistText);
      expect(statSync(installed).mode & 0o777).toBe(0o644);
    });

    it("replaces a conflist left from before a reboot (no subnet.env yet)", () => {
      const { result, dirs } = runInstall((d) => writeFileSync(join(cniDir(d), "10-twill.conflist"), "old"));
      expect(result.status, result.stderr).toBe(0);
      expect(read(join(cniDir(dirs), "10-twill.conflist"))).toBe(conflistText);
    });

    it("keeps the conflist the agent wrote for this boot's lease", () => {
      const { result, dirs } = runInstall((d) => {
        writeFileSync(join(cniDir(d), "10-twill.conflist"), "agent's\n");
        writeFileSync(join(runDir(d), "subnet.env"), "FLANNEL_SUBNET=10.244.7.1/24\n");
      });
      expect(result.status, result.stderr).toBe(0);
      expect(read(join(cniDir(dirs), "10-twill.conflist"))).toBe("agent's\n");
    });

    it("refuses to install a conflist that is not JSON, leaving the old one", () => {
      const { result, dirs } = runInstall((d) => {
        writeFileSync(join(cniDir(d), "10-twill.conflist"), "old");
        for (const name of readdirSync(d["twill-cfg"] ?? "?")) {
          if (name === "cni-conf.json") writeFileSync(join(d["twill-cfg"] ?? "?", name), "{ not json");
        }
      });
      expect(result.status).not.toBe(0);
      expect(readdirSync(cniDir(dirs))).toEqual(["10-twill.conflist"]);
      expect(read(join(cniDir(dirs), "10-twill.conflist"))).toBe("old");
    });
  });

  it("has a PodMonitor for the same pods and port, with job=twill", () => {
    const [monitor] = loadYamlDocuments(deployPath("kubernetes", "podmonitor.yaml"));
    expect(at(monitor, "apiVersion")).toBe("monitoring.coreos.com/v1");
    expect(at(monitor, "kind")).toBe("PodMonitor");
    expect(at(monitor, "metadata", "namespace")).toBe("kube-twill");
    const podLabels = at(ds, "spec", "template", "metadata", "labels") as Record<string, unknown>;
    const selector = at(monitor, "spec", "selector", "matchLabels") as Record<string, unknown>;
    for (const [key, value] of Object.entries(selector)) expect(podLabels[key], key).toBe(value);
    const endpoint = list(at(monitor, "spec", "podMetricsEndpoints"))[0];
    expect(at(endpoint, "port")).toBe("metrics");
    expect(at(endpoint, "path")).toBe("/metrics");
    // jobLabel names the pod label whose value becomes job: the alerts expect job="twill".
    expect(podLabels[String(at(monitor, "spec", "jobLabel"))]).toBe("twill");
  });
});

// ---- Prometheus -------------------------------------------------------------------------------------------
interface AlertRule {
  readonly alert: string;
  readonly expr: string;
  readonly labels: Record<string, unknown>;
  readonly annotations: Record<string, unknown>;
}

function alertRules(): AlertRule[] {
  const [doc] = loadYamlDocuments(deployPath("prometheus", "alerts.yaml"));
  return list(at(doc, "groups")).flatMap((group) =>
    list(at(group, "rules")).map((rule) => ({
      alert: String(at(rule, "alert")),
      expr: String(at(rule, "expr")),
      labels: (at(rule, "labels") ?? {}) as Record<string, unknown>,
      annotations: (at(rule, "annotations") ?? {}) as Record<string, unknown>,
    })),
  );
}

describe("Prometheus files (deploy/prometheus)", () => {
  it("promtool check rules accepts the alert rules", () => {
    const result = run("promtool", ["check", "rules", deployPath("prometheus", "alerts.yaml")]);
    expect(result.status, result.stdout + result.stderr).toBe(0);
  });

  it("promtool check config accepts the bare-metal example", () => {
    const result = run("promtool", ["check", "config", "prometheus.example.yml"], {
      cwd: deployPath("prometheus"),
    });
    expect(result.status, result.stdout + result.stderr).toBe(0);
  });

  it("promtool check config accepts the Kubernetes example (its relabelling, at least)", () => {
    const original = deployPath("prometheus", "prometheus.kubernetes.example.yml");
    let result = run("promtool", ["check", "config", original]);
    if (result.status !== 0 && /kubernetes_sd_configs not found/.test(result.stdout + result.stderr)) {
      // Debian's promtool is built without Kubernetes discovery: check the rest with a static target.
      const [config] = loadYamlDocuments(original);
      for (const job of list(at(config, "scrape_configs")) as Record<string, unknown>[]) {
        expect(job.kubernetes_sd_configs).toBeDefined();
        delete job.kubernetes_sd_configs;
        job.static_configs = [{ targets: ["127.0.0.1:9102"] }];
      }
      const dir = tempDir("promconfig");
      cpSync(deployPath("prometheus", "alerts.yaml"), join(dir, "alerts.yaml"));
      writeFileSync(join(dir, "prometheus.yml"), stringify(config));
      result = run("promtool", ["check", "config", join(dir, "prometheus.yml")]);
    }
    expect(result.status, result.stdout + result.stderr).toBe(0);
  });

  it("every alert has a severity, a summary and a description, and reads only twill's metrics", () => {
    const rules = alertRules();
    expect(rules.length).toBeGreaterThan(0);
    for (const rule of rules) {
      expect(["critical", "warning", "info"], rule.alert).toContain(rule.labels.severity);
      expect(text(rule.annotations.summary) ?? "", rule.alert).not.toBe("");
      expect((text(rule.annotations.description) ?? "").length, rule.alert).toBeGreaterThan(40);
      const unknown = metricNames(rule.expr).filter((name) => !KNOWN_SERIES.has(name));
      expect(unknown, `${rule.alert} reads metrics twill does not export`).toEqual([]);
    }
  });

  it("covers lease expiry and renewals, peers, reconcile and data-plane errors, etcd, readiness, scraping", () => {
    const reads = (alert: string): string[] =>
      metricNames(alertRules().find((r) => r.alert === alert)?.expr ?? "");
    expect(reads("TwillLeaseExpiringSoon")).toEqual(
      expect.arrayContaining(["twill_lease_expiry_timestamp_seconds", "twill_lease_reserved"]),
    );
    expect(reads("TwillLeaseRenewalFailures")).toContain("twill_lease_renewals_total");
    expect(reads("TwillPeersUnreachable")).toContain("twill_peers");
    expect(reads("TwillReconcileErrors")).toContain("twill_reconcile_rounds_total");
    expect(reads("TwillDataplaneOperationErrors")).toContain("twill_dataplane_operations_total");
    expect(reads("TwillEtcdDisconnected")).toContain("twill_etcd_connected");
    expect(reads("TwillNotReady")).toContain("twill_ready");
    expect(reads("TwillTargetDown")).toContain("up");
    expect(reads("TwillWireGuardDown")).toContain("twill_wireguard_up");
    expect(reads("TwillWireGuardPeerNoHandshake")).toEqual([
      "twill_wireguard_peer_handshake_age_seconds",
      "twill_wireguard_peer_bytes_total",
    ]);
  });

  it("the alert expressions select what they should (promtool test rules on generated series)", () => {
    const expr = (alert: string): string => {
      const rule = alertRules().find((r) => r.alert === alert);
      if (!rule) throw new Error(`no alert ${alert}`);
      return rule.expr;
    };
    const t = (instance: string, extra = ""): string =>
      `{job="twill", instance="${instance}"${extra === "" ? "" : `, ${extra}`}}`;
    // WireGuard peers: subnet and public key, as twill_wireguard_peer_* label them.
    const peerLabels = (subnet: string, key: string): { subnet: string; public_key: string } => ({
      subnet,
      public_key: key,
    });
    const P1_LABELS = peerLabels("10.244.1.0/24", "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=");
    const P2_LABELS = peerLabels("10.244.2.0/24", "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
    const P3_LABELS = peerLabels("10.244.3.0/24", "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=");
    const P4_LABELS = peerLabels("10.244.4.0/24", "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=");
    const labelText = (l: { subnet: string; public_key: string }): string =>
      `subnet="${l.subnet}", public_key="${l.public_key}"`;
    const [P1, P2, P3, P4] = [P1_LABELS, P2_LABELS, P3_LABELS, P4_LABELS].map(labelText) as [
      string,
      string,
      string,
      string,
    ];
    const INF_X10 = Array.from({ length: 11 }, () => "Inf").join(" ");
    const noHandshakeAnnotations = (
      l: { subnet: string; public_key: string },
      age: string,
    ): { summary: string; description: string } => ({
      summary: `twill on a: no WireGuard handshake with peer ${l.subnet} for over 5 minutes`,
      description:
        `This node sends packets to the peer that holds ${l.subnet} (public key ${l.public_key}), but its ` +
        `latest handshake with it was ${age} ago (+Inf: never), so pods there are unreachable from here. ` +
        "Check that the peer's agent runs (twill status there; twill_wireguard_up), that UDP to the peer's " +
        "PublicIP and ListenPort (51820 by default) is not blocked by a firewall or security group, that " +
        "both nodes use the same Backend.PSK, and that the peer's lease carries its current public key " +
        "(twill leases; `wg show flannel-wg` on both nodes).",
    });
    const tests = [
      {
        interval: "1m",
        input_series: [
          // a: 10 minutes left at 10m; b: a day left; c: reserved; d: no lease yet; e: reserved, odd expiry.
          { series: `twill_lease_expiry_timestamp_seconds${t("a")}`, values: "1200+0x20" },
          { series: `twill_lease_expiry_timestamp_seconds${t("b")}`, values: "86400+0x20" },
          { series: `twill_lease_expiry_timestamp_seconds${t("c")}`, values: "0+0x20" },
          { series: `twill_lease_expiry_timestamp_seconds${t("d")}`, values: "0+0x20" },
          { series: `twill_lease_expiry_timestamp_seconds${t("e")}`, values: "1000+0x20" },
          ...["a", "b", "d"].map((i) => ({ series: `twill_lease_reserved${t(i)}`, values: "0+0x20" })),
          ...["c", "e"].map((i) => ({ series: `twill_lease_reserved${t(i)}`, values: "1+0x20" })),
          { series: `twill_peers${t("a", 'backend="vxlan", state="programmed"')}`, values: "5+0x20" },
          { series: `twill_peers${t("a", 'backend="vxlan", state="unreachable"')}`, values: "2+0x20" },
          { series: `twill_peers${t("a", 'backend="vxlan", state="backend_mismatch"')}`, values: "0+0x20" },
          { series: `twill_peers${t("b", 'backend="vxlan", state="unreachable"')}`, values: "0+0x20" },
          { series: `twill_etcd_connected${t("a")}`, values: "0+0x20" },
          { series: `twill_etcd_connected${t("b")}`, values: "1+0x20" },
          // a cannot reach etcd (so its config is unknown): only b's invalid config alerts.
          { series: `twill_config_valid${t("a")}`, values: "0+0x20" },
          { series: `twill_config_valid${t("b")}`, values: "0+0x20" },
          { series: `twill_ready${t("a")}`, values: "1+0x20" },
          { series: `twill_ready${t("b")}`, values: "0+0x20" },
          { series: 'up{job="twill", instance="a"}', values: "0+0x20" },
          { series: 'up{job="node", instance="a"}', values: "0+0x20" },
          {
            series: `twill_reconcile_rounds_total${t("a", 'trigger="resync", result="error"')}`,
            values: "0+60x20",
          },
          {
            series: `twill_reconcile_rounds_total${t("b", 'trigger="resync", result="ok"')}`,
            values: "0+60x20",
          },
          {
            series: `twill_dataplane_operations_total${t("a", 'kind="route", op="replace", result="error"')}`,
            values: "0+60x20",
          },
          {
            series: `twill_dataplane_operations_total${t("b", 'kind="route", op="replace", result="ok"')}`,
            values: "0+60x20",
          },
        ],
        promql_expr_test: [
          {
            expr: expr("TwillLeaseExpiringSoon"),
            eval_time: "10m",
            exp_samples: [{ labels: t("a"), value: 600 }],
          },
          {
            expr: expr("TwillPeersUnreachable"),
            eval_time: "10m",
            exp_samples: [{ labels: t("a", 'backend="vxlan", state="unreachable"'), value: 2 }],
          },
          {
            expr: expr("TwillEtcdDisconnected"),
            eval_time: "10m",
            exp_samples: [{ labels: `twill_etcd_connected${t("a")}`, value: 0 }],
          },
          {
            expr: expr("TwillNetworkConfigInvalid"),
            eval_time: "10m",
            exp_samples: [{ labels: `twill_config_valid${t("b")}`, value: 0 }],
          },
          {
            expr: expr("TwillNotReady"),
            eval_time: "10m",
            exp_samples: [{ labels: `twill_ready${t("b")}`, value: 0 }],
          },
          {
            expr: expr("TwillTargetDown"),
            eval_time: "10m",
            exp_samples: [{ labels: 'up{job="twill", instance="a"}', value: 0 }],
          },
          {
            expr: expr("TwillReconcileErrors"),
            eval_time: "15m",
            exp_samples: [{ labels: t("a"), value: 1 }],
          },
          {
            expr: expr("TwillDataplaneOperationErrors"),
            eval_time: "15m",
            exp_samples: [{ labels: t("a", 'kind="route", op="replace"'), value: 1 }],
          },
        ],
      },
      {
        interval: "1m",
        input_series: [
          // a: its key overwritten; b: a duplicate public IP; c and d: the same two duplicate entries seen
          // from two nodes, and c has one more invalid entry of another kind.
          ...["own_key_overwritten", "duplicate_public_ip", "duplicate_identity"].flatMap((kind) =>
            ["a", "b", "c", "d"].map((i) => {
              const on =
                (i === "a" && kind === "own_key_overwritten") ||
                (i === "b" && kind === "duplicate_public_ip");
              const value = kind === "duplicate_identity" ? (i === "c" || i === "d" ? 2 : 0) : on ? 1 : 0;
              return { series: `twill_identity_conflicts${t(i, `kind="${kind}"`)}`, values: `${value}+0x20` };
            }),
          ),
          { series: `twill_invalid_entries${t("a")}`, values: "0+0x20" },
          { series: `twill_invalid_entries${t("c")}`, values: "3+0x20" },
          { series: `twill_invalid_entries${t("d")}`, values: "2+0x20" },
        ],
        promql_expr_test: [
          {
            expr: expr("TwillLeaseConflict"),
            eval_time: "10m",
            exp_samples: [
              { labels: t("a", 'kind="own_key_overwritten"'), value: 1 },
              { labels: t("b", 'kind="duplicate_public_ip"'), value: 1 },
            ],
          },
          {
            expr: expr("TwillDuplicateIdentity"),
            eval_time: "10m",
            exp_samples: [{ labels: '{job="twill"}', value: 2 }],
          },
          {
            expr: expr("TwillInvalidEtcdEntries"),
            eval_time: "10m",
            exp_samples: [{ labels: t("c"), value: 1 }],
          },
        ],
      },
      {
        interval: "1m",
        input_series: [
          // a: etcd away for a minute at 5m, its watch restarted 5 times meanwhile; b: etcd always there,
          // its watch restarting all the same (compaction, leader changes).
          { series: `twill_etcd_connected${t("a")}`, values: "1 1 1 1 1 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1" },
          {
            series: `twill_etcd_watch_restarts_total${t("a")}`,
            values: "0 0 0 0 0 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5",
          },
          { series: `twill_etcd_connected${t("b")}`, values: "1+0x20" },
          { series: `twill_etcd_watch_restarts_total${t("b")}`, values: "0+1x20" },
          // Pool of 255: c and d see 240 leases (94 %), e (another cluster) 10.
          ...["c", "d"].map((i) => ({ series: `twill_subnet_pool_size${t(i)}`, values: "255+0x30" })),
          ...["c", "d"].map((i) => ({ series: `twill_subnet_pool_leased${t(i)}`, values: "240+0x30" })),
          { series: `twill_subnet_pool_size{job="other", instance="e"}`, values: "255+0x30" },
          { series: `twill_subnet_pool_leased{job="other", instance="e"}`, values: "10+0x30" },
        ],
        promql_expr_test: [
          {
            expr: expr("TwillEtcdWatchRestarting"),
            eval_time: "10m",
            exp_samples: [{ labels: t("b"), value: 10 }],
          },
          {
            expr: expr("TwillSubnetPoolNearlyExhausted"),
            eval_time: "20m",
            exp_samples: [{ labels: '{job="twill"}', value: 240 / 255 }],
          },
        ],
      },
      {
        interval: "1m",
        input_series: [
          // a's proxy stopped at 3m for good; b's for one minute only; c runs vxlan (no series).
          { series: `twill_udp_proxy_up${t("a", 'device="flannel0"')}`, values: "1 1 1 0 0 0 0 0 0 0 0" },
          { series: `twill_udp_proxy_up${t("b", 'device="flannel0"')}`, values: "1 1 1 0 1 1 1 1 1 1 1" },
        ],
        promql_expr_test: [
          {
            expr: expr("TwillUdpProxyDown"),
            eval_time: "10m",
            exp_samples: [{ labels: `twill_udp_proxy_up${t("a", 'device="flannel0"')}`, value: 0 }],
          },
        ],
        alert_rule_test: [
          {
            alertname: "TwillUdpProxyDown",
            eval_time: "10m",
            exp_alerts: [
              {
                exp_labels: { severity: "critical", job: "twill", instance: "a", device: "flannel0" },
                exp_annotations: {
                  summary: "twill on a: the udp backend's proxy is not running",
                  description:
                    "Pods on this node cannot reach pods on other nodes: nothing moves packets between flannel0 and the UDP socket. `twill status` says why it stopped (the port taken by another process, /dev/net/tun missing in the container, the device deleted); the agent keeps trying to start it.",
                },
              },
            ],
          },
        ],
      },
      {
        interval: "1m",
        input_series: [
          // a's wireguard-go stopped at 3m for good; b's for one minute only; c has the kernel's device.
          {
            series: `twill_wireguard_up${t("a", 'device="flannel-wg", implementation="userspace"')}`,
            values: "1 1 1 0 0 0 0 0 0 0 0",
          },
          {
            series: `twill_wireguard_up${t("b", 'device="flannel-wg", implementation="userspace"')}`,
            values: "1 1 1 0 1 1 1 1 1 1 1",
          },
          {
            series: `twill_wireguard_up${t("c", 'device="flannel-wg", implementation="kernel"')}`,
            values: "1+0x10",
          },
        ],
        promql_expr_test: [
          {
            expr: expr("TwillWireGuardDown"),
            eval_time: "10m",
            exp_samples: [
              {
                labels: `twill_wireguard_up${t("a", 'device="flannel-wg", implementation="userspace"')}`,
                value: 0,
              },
            ],
          },
        ],
        alert_rule_test: [
          {
            alertname: "TwillWireGuardDown",
            eval_time: "10m",
            exp_alerts: [
              {
                exp_labels: {
                  severity: "critical",
                  job: "twill",
                  instance: "a",
                  device: "flannel-wg",
                  implementation: "userspace",
                },
                exp_annotations: {
                  summary: "twill on a: WireGuard device flannel-wg is not served (userspace)",
                  description:
                    'Pods on this node cannot reach pods on other nodes: flannel-wg is not configured, or (implementation="userspace") no wireguard-go serves it. `twill status` says why on its wireguard: line; the agent restarts wireguard-go by itself. Check that wireguard-go is installed (or --wireguard-go names it), /dev/net/tun and /run/wireguard are there (in the DaemonSet: their volumes), its log <state-dir>/wireguard-go-flannel-wg.log, and for the kernel\'s device that wireguard-tools (wg) is installed.',
                },
              },
            ],
          },
        ],
      },
      {
        interval: "1m",
        input_series: [
          // On a: p1 never shook hands and gets traffic (fires); p2 shook hands long ago and gets
          // traffic (fires); p3 shakes hands and gets traffic; p4 shook hands long ago but gets no
          // traffic (only received bytes). On b: p1's key and subnet too, never a handshake, no traffic:
          // a's traffic to p1 must not make b's series fire (matching on instance).
          { series: `twill_wireguard_peer_handshake_age_seconds${t("a", P1)}`, values: INF_X10 },
          {
            series: `twill_wireguard_peer_bytes_total${t("a", `${P1}, direction="tx"`)}`,
            values: "0+148x10",
          },
          { series: `twill_wireguard_peer_bytes_total${t("a", `${P1}, direction="rx"`)}`, values: "0+0x10" },
          { series: `twill_wireguard_peer_handshake_age_seconds${t("a", P2)}`, values: "900+60x10" },
          {
            series: `twill_wireguard_peer_bytes_total${t("a", `${P2}, direction="tx"`)}`,
            values: "0+5000x10",
          },
          { series: `twill_wireguard_peer_handshake_age_seconds${t("a", P3)}`, values: "30+0x10" },
          {
            series: `twill_wireguard_peer_bytes_total${t("a", `${P3}, direction="tx"`)}`,
            values: "0+9000x10",
          },
          { series: `twill_wireguard_peer_handshake_age_seconds${t("a", P4)}`, values: "900+60x10" },
          {
            series: `twill_wireguard_peer_bytes_total${t("a", `${P4}, direction="tx"`)}`,
            values: "700+0x10",
          },
          {
            series: `twill_wireguard_peer_bytes_total${t("a", `${P4}, direction="rx"`)}`,
            values: "0+9000x10",
          },
          { series: `twill_wireguard_peer_handshake_age_seconds${t("b", P1)}`, values: INF_X10 },
          { series: `twill_wireguard_peer_bytes_total${t("b", `${P1}, direction="tx"`)}`, values: "0+0x10" },
        ],
        promql_expr_test: [
          {
            expr: expr("TwillWireGuardPeerNoHandshake"),
            eval_time: "10m",
            exp_samples: [
              { labels: `twill_wireguard_peer_handshake_age_seconds${t("a", P1)}`, value: Infinity },
              { labels: `twill_wireguard_peer_handshake_age_seconds${t("a", P2)}`, value: 1500 },
            ],
          },
        ],
        alert_rule_test: [
          {
            alertname: "TwillWireGuardPeerNoHandshake",
            eval_time: "10m",
            exp_alerts: [
              {
                exp_labels: { severity: "warning", job: "twill", instance: "a", ...P1_LABELS },
                exp_annotations: noHandshakeAnnotations(P1_LABELS, "+Inf"),
              },
              {
                exp_labels: { severity: "warning", job: "twill", instance: "a", ...P2_LABELS },
                exp_annotations: noHandshakeAnnotations(P2_LABELS, "25m 0s"),
              },
            ],
          },
        ],
      },
      {
        interval: "1m",
        input_series: [
          { series: `twill_lease_renewals_total${t("a", 'result="failure"')}`, values: "0+1x60" },
          { series: `twill_lease_renewals_total${t("a", 'result="success"')}`, values: "0+1x60" },
          { series: `twill_lease_renewals_total${t("b", 'result="failure"')}`, values: "3+0x60" },
        ],
        promql_expr_test: [
          {
            expr: expr("TwillLeaseRenewalFailures"),
            eval_time: "60m",
            exp_samples: [{ labels: t("a", 'result="failure"'), value: 30 }],
          },
        ],
      },
    ];
    const dir = tempDir("promtest");
    const file = join(dir, "alerts.test.yaml");
    writeFileSync(file, stringify({ rule_files: [deployPath("prometheus", "alerts.yaml")], tests }));
    const result = run("promtool", ["test", "rules", file]);
    expect(result.status, result.stdout + result.stderr).toBe(0);
  });
});

// ---- Grafana ----------------------------------------------------------------------------------------------
describe("Grafana dashboard (deploy/grafana/twill-dashboard.json)", () => {
  const dashboard: unknown = JSON.parse(read(deployPath("grafana", "twill-dashboard.json")));
  const panels = list(at(dashboard, "panels"));
  const exprs = panels.flatMap((p) => list(at(p, "targets")).map((t) => String(at(t, "expr"))));
  const variableQueries = list(at(dashboard, "templating", "list"))
    .map((v) => at(v, "query", "query") ?? at(v, "query"))
    .filter((q): q is string => typeof q === "string" && q.startsWith("label_values("));

  it("is a dashboard Grafana can import (schema, unique panel ids, grid, targets)", () => {
    expect(Number(at(dashboard, "schemaVersion"))).toBeGreaterThanOrEqual(36);
    expect(typeof at(dashboard, "title")).toBe("string");
    expect(typeof at(dashboard, "uid")).toBe("string");
    const ids = panels.map((p) => at(p, "id"));
    expect(new Set(ids).size).toBe(ids.length);
    for (const panel of panels) {
      const title = String(at(panel, "title"));
      const x = Number(at(panel, "gridPos", "x"));
      const w = Number(at(panel, "gridPos", "w"));
      expect(x + w, title).toBeLessThanOrEqual(24);
      expect(Number(at(panel, "gridPos", "h")), title).toBeGreaterThan(0);
      if (at(panel, "type") === "row") continue;
      const targets = list(at(panel, "targets"));
      expect(targets.length, title).toBeGreaterThan(0);
      const refIds = targets.map((t) => at(t, "refId"));
      expect(new Set(refIds).size, title).toBe(refIds.length);
      expect(at(panel, "datasource", "uid"), title).toBe("${datasource}");
    }
    expect(list(at(dashboard, "templating", "list")).map((v) => at(v, "name"))).toEqual(
      expect.arrayContaining(["datasource", "instance"]),
    );
  });

  it("queries only metrics twill exports", () => {
    const unknown = [
      ...exprs.flatMap(metricNames),
      ...variableQueries.flatMap((q) => metricNames(/^label_values\((.*),\s*\w+\)$/.exec(q)?.[1] ?? q)),
    ].filter((name) => !KNOWN_SERIES.has(name));
    expect(unknown).toEqual([]);
  });

  it("shows lease expiry, peers by state, kernel objects, reconcile, latency, drift, op errors, etcd", () => {
    const all = exprs.join("\n");
    for (const metric of [
      "twill_lease_expiry_timestamp_seconds",
      "twill_peers",
      "twill_kernel_objects",
      "twill_reconcile_rounds_total",
      "twill_drift_repairs_total",
      "twill_dataplane_operations_total",
      "twill_etcd_connected",
    ]) {
      expect(all, metric).toContain(metric);
    }
    expect(all).toMatch(/sum by \(state\) \(twill_peers\{/);
    for (const histogram of HISTOGRAMS) {
      for (const q of ["0.5", "0.99"]) {
        expect(all, `${histogram} p${q}`).toContain(
          `histogram_quantile(${q}, sum by (le) (rate(${histogram}_bucket`,
        );
      }
    }
  });

  it("every query is valid PromQL (promtool parses them as recording rules)", () => {
    const rules = exprs.map((expr, i) => ({
      record: `twill:dashboard_query_${i}`,
      expr: expr
        .replaceAll("$__rate_interval", "1m")
        .replaceAll("$__range", "1h")
        .replaceAll("$instance", ".*"),
    }));
    expect(
      rules.every((r) => !r.expr.includes("$")),
      "unsubstituted Grafana variables",
    ).toBe(true);
    const dir = tempDir("grafana");
    const file = join(dir, "dashboard-rules.yaml");
    writeFileSync(file, stringify({ groups: [{ name: "dashboard", rules }] }));
    const result = run("promtool", ["check", "rules", file]);
    expect(result.status, result.stdout + result.stderr).toBe(0);
  });
});

// ---- Dockerfile -------------------------------------------------------------------------------------------
interface Instruction {
  readonly op: string;
  readonly args: string;
}

/** Dockerfile instructions (continuations joined, comments dropped), split into stages at FROM. */
function dockerStages(source: string): { from: string; instructions: Instruction[] }[] {
  const joined = source
    .split("\n")
    .filter((line) => !/^\s*#/.test(line))
    .join("\n")
    .replace(/\\\n/g, " ");
  const args = new Map<string, string>();
  const stages: { from: string; instructions: Instruction[] }[] = [];
  for (const line of joined.split("\n")) {
    const match = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (match?.[1] === undefined) continue;
    const op = match[1].toUpperCase();
    const rest = (match[2] ?? "").trim();
    if (op === "ARG" && stages.length === 0) {
      const [name = "", value = ""] = rest.split("=");
      args.set(name, value);
    } else if (op === "FROM") {
      const from = rest.replace(/\$\{?(\w+)\}?/g, (_, name: string) => args.get(name) ?? "");
      stages.push({ from, instructions: [] });
    } else {
      stages.at(-1)?.instructions.push({ op, args: rest });
    }
  }
  return stages;
}

/** The .dockerignore verdict for a path: the last matching pattern wins (enough of Docker's rules here). */
function dockerIgnored(patterns: readonly string[], path: string): boolean {
  let ignored = false;
  for (const raw of patterns) {
    const negate = raw.startsWith("!");
    const pattern = raw.replace(/^!/, "").replace(/^\/|\/$/g, "");
    const regex = new RegExp(`^${pattern.replace(/[.+^$()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*")}(/.*)?$`);
    if (regex.test(path)) ignored = !negate;
  }
  return ignored;
}

describe("Dockerfile (structure; docker build cannot run here)", () => {
  const stages = dockerStages(read(join(ROOT, "Dockerfile")));
  const build = stages[0];
  const final = stages.at(-1);
  const runs = (stage: typeof build): string =>
    (stage?.instructions ?? [])
      .filter((i) => i.op === "RUN")
      .map((i) => i.args)
      .join("\n");

  it("builds in one stage and ships from a second, both slim Node LTS images", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages) expect(stage.from).toMatch(/^node:(2[02468])-bookworm-slim( AS \w+)?$/i);
    expect(build?.from).toMatch(/ AS build$/i);
    const buildRuns = runs(build);
    expect(buildRuns).toContain("npm ci");
    expect(buildRuns).toContain("npm run build");
    expect(buildRuns).toContain("npm prune --omit=dev");
  });

  it("the final stage has iproute2, iptables, procps, ethtool and WireGuard's tools, and no build tools", () => {
    const finalRuns = runs(final);
    expect(finalRuns).toMatch(/apt-get install[^\n]*--no-install-recommends/);
    // ethtool: --vxlan-tx-checksum-offload=false runs it. wireguard-tools (wg): the kernel's WireGuard
    // device is configured through it; wireguard-go: WireGuard where the kernel has no module.
    for (const pkg of ["iproute2", "iptables", "procps", "ethtool", "wireguard-tools", "wireguard-go"])
      expect(finalRuns).toMatch(new RegExp(`\\b${pkg}\\b`));
    expect(finalRuns).toContain("rm -rf /var/lib/apt/lists");
    for (const tool of [
      /npm (ci|install|i)\b/,
      /npm run/,
      /\bgcc\b/,
      /\bg\+\+/,
      /\bmake\b/,
      /\bpython/,
      /build-essential/,
      /\btsc\b/,
    ]) {
      expect(finalRuns).not.toMatch(tool);
    }
    const copies = (final?.instructions ?? []).filter((i) => i.op === "COPY").map((i) => i.args);
    expect(copies.every((c) => c.startsWith("--from=build "))).toBe(true);
    for (const what of ["dist", "node_modules", "package.json"]) {
      expect(
        copies.some((c) => c.includes(`/${what} `)),
        what,
      ).toBe(true);
    }
  });

  it("the twill command in the image starts node with the launcher's flags", () => {
    const runs = (final?.instructions ?? []).filter((i) => i.op === "RUN").map((i) => i.args);
    const wrapper = runs.find((r) => r.includes("/usr/local/bin/twill"));
    expect(wrapper).toContain(`exec node ${LAUNCHER_FLAGS.join(" ")} /app/dist/cli/main.js`);
  });

  it("runs the built agent: ENTRYPOINT node with the launcher's flags dist/cli/main.js, CMD agent", () => {
    const last = (op: string): unknown => {
      const found = (final?.instructions ?? []).filter((i) => i.op === op).at(-1);
      return found === undefined ? undefined : (JSON.parse(found.args) as unknown);
    };
    expect(last("ENTRYPOINT")).toEqual(["node", ...LAUNCHER_FLAGS, "/app/dist/cli/main.js"]);
    expect(last("CMD")).toEqual(["agent"]);
    expect(
      at(
        final?.instructions.find((i) => i.op === "WORKDIR"),
        "args",
      ),
    ).toBe("/app");
    // Root on purpose (see the Dockerfile): no USER switch.
    expect((final?.instructions ?? []).some((i) => i.op === "USER")).toBe(false);
  });

  it("the build context (.dockerignore) holds what the build stage copies, and not host builds", () => {
    const patterns = read(join(ROOT, ".dockerignore"))
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
    const sources = (build?.instructions ?? [])
      .filter((i) => i.op === "COPY" && !i.args.startsWith("--from"))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1));
    expect(sources.length).toBeGreaterThan(0);
    for (const source of sources) {
      expect(existsSync(join(ROOT, source)), source).toBe(true);
      expect(dockerIgnored(patterns, source), `${source} is excluded by .dockerignore`).toBe(false);
      expect(dockerIgnored(patterns, `${source}/x.ts`), `${source}/… excluded`).toBe(false);
    }
    for (const excluded of ["node_modules", "dist", ".git", "test/unit/x.test.ts"]) {
      expect(dockerIgnored(patterns, excluded), excluded).toBe(true);
    }
  });

  describe("the final stage's file set, rebuilt here as the build stage makes it", () => {
    let app = "";
    beforeAll(() => {
      // package.json + lock + this checkout's node_modules, pruned of dev dependencies, + dist/.
      app = tempDir("image");
      for (const file of ["package.json", "package-lock.json"]) cpSync(join(ROOT, file), join(app, file));
      cpSync(join(ROOT, "node_modules"), join(app, "node_modules"), {
        recursive: true,
        verbatimSymlinks: true,
      });
      const prune = run("npm", ["prune", "--omit=dev", "--offline", "--no-audit", "--no-fund"], { cwd: app });
      expect(prune.status, prune.stderr).toBe(0);
      cpSync(join(ROOT, "dist"), join(app, "dist"), { recursive: true });
    }, 120_000);

    it("has no dev dependencies", () => {
      for (const dev of ["typescript", "vitest", "eslint", "tsx"]) {
        expect(existsSync(join(app, "node_modules", dev)), dev).toBe(false);
      }
    });

    it("starts: --version and agent --help", () => {
      const version = run(process.execPath, [join(app, "dist/cli/main.js"), "--version"], { cwd: app });
      expect(version.status, version.stderr).toBe(0);
      expect(version.stdout).toMatch(/^twill \d+\.\d+\.\d+/);
      const agentHelpRun = run(process.execPath, [join(app, "dist/cli/main.js"), "agent", "--help"], {
        cwd: app,
      });
      expect(agentHelpRun.status, agentHelpRun.stderr).toBe(0);
    });

    it("can log to a terminal (`docker run -it … agent`) without dev dependencies", () => {
      // createLogger(level, pretty=true) is what a TTY stdout selects.
      const script =
        `const { createLogger } = await import(${JSON.stringify(join(app, "dist/util/log.js"))});\n` +
        `createLogger("info", true).info("hello");\n` +
        `setTimeout(() => {}, 200);\n`;
      const result = run(process.execPath, ["--input-type=module", "-e", script], { cwd: app });
      expect(result.status, result.stderr).toBe(0);
    });
  });
});

describe("the docker.service drop-in", () => {
  it("passes systemd-analyze verify as a drop-in of a docker.service stand-in", () => {
    const text = readFileSync(new URL("../../deploy/systemd/docker-twill.conf", import.meta.url), "utf8");
    expect(text).toMatch(/^EnvironmentFile=-\/run\/flannel\/docker$/m);
    expect(text).toMatch(/\$DOCKER_OPTS$/m);
    const dir = mkdtempSync(join(tmpdir(), "twill-dropin-"));
    try {
      // A stand-in docker.service (dockerd is not installed here); systemd-analyze reads drop-ins
      // next to a unit given by path, so any output names a problem in the drop-in.
      writeFileSync(join(dir, "docker.service"), "[Service]\nExecStart=/bin/true\n");
      mkdirSync(join(dir, "docker.service.d"));
      writeFileSync(
        join(dir, "docker.service.d", "twill.conf"),
        text.replace("/usr/bin/dockerd", "/bin/true"),
      );
      const result = spawnSync("systemd-analyze", ["verify", "--man=no", join(dir, "docker.service")], {
        encoding: "utf8",
      });
      expect(result.stderr + result.stdout).toBe("");
      expect(result.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
