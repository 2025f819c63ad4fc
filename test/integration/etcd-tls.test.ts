// The agent against a real etcd that requires client certificates (a PKI made by openssl): the right
// files work; a wrong CA, a missing key or a plaintext endpoint give a clear error naming the file or
// endpoint, and the agent keeps retrying instead of crashing.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startAgent, type AgentProcess } from "../helpers/agent.js";
import { makePki, type TestPki } from "../helpers/certs.js";
import type { EtcdServer } from "../helpers/etcd.js";
import { createUnderlay, UNDERLAY_GATEWAY, type Cluster, type Host } from "../helpers/netns.js";
import { waitFor } from "../helpers/processes.js";

let pki: TestPki;
let cluster: Cluster;
let etcd: EtcdServer;
let host: Host;
const agents: AgentProcess[] = [];

beforeAll(async () => {
  pki = makePki(UNDERLAY_GATEWAY);
  cluster = await createUnderlay();
  etcd = await cluster.startEtcd({
    tls: {
      caFile: pki.caFile,
      certFile: pki.serverCertFile,
      keyFile: pki.serverKeyFile,
      clientCertFile: pki.clientCertFile,
      clientKeyFile: pki.clientKeyFile,
    },
  });
  host = await cluster.addHost(1);
  etcd.ctl(["put", "/coreos.com/network/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}']);
}, 60_000);
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.destroy()));
});
afterAll(async () => {
  await cluster.destroy();
  pki.destroy();
});

function agentWith(args: string[], endpoint = etcd.endpoint, env: Record<string, string> = {}): AgentProcess {
  const agent = startAgent({ netns: host.ns, etcdEndpoint: endpoint, args: ["--iface=eth0", ...args], env });
  agents.push(agent);
  return agent;
}

const errorsOf = (agent: AgentProcess): string[] =>
  agent
    .logs()
    .filter((l) => ["warn", "error", "fatal"].includes(String(l.level)))
    .map((l) => `${String(l.msg)}: ${typeof l.err === "string" ? l.err : JSON.stringify(l.err ?? "")}`);

/** The agent logged `pattern` at least twice (it retried) and is still running. */
async function retriesWith(agent: AgentProcess, pattern: RegExp): Promise<void> {
  await waitFor(
    `two reports matching ${pattern}`,
    () => errorsOf(agent).filter((e) => pattern.test(e)).length >= 2,
    // Each attempt can take a 5 s deadline plus backoff; two of them on a loaded machine need room.
    45_000,
  );
  expect(agent.process.child.exitCode).toBeNull();
  expect(agent.subnetEnv()).toBeUndefined();
}

describe("etcd over TLS with client certificates", () => {
  it("connects with the right CA, certificate and key", async () => {
    const agent = agentWith([
      `--etcd-cafile=${pki.caFile}`,
      `--etcd-certfile=${pki.clientCertFile}`,
      `--etcd-keyfile=${pki.clientKeyFile}`,
    ]);
    const env = await waitFor("subnet.env", () => agent.subnetEnv(), 30_000);
    expect(env).toMatch(/^FLANNEL_SUBNET=10\.244\.\d+\.1\/24$/m);
    // https://<IP>: Node's DEP0123 warning (TLS ServerName set to an IP) used to land on stderr as a
    // plain line; every line the agent writes is a JSON record.
    const lines = agent.process.output().trim().split("\n");
    expect(lines.filter((line) => !line.startsWith("{"))).toEqual([]);
  });

  it("a wrong CA is reported with the endpoint, and retried", async () => {
    const agent = agentWith([
      `--etcd-cafile=${pki.otherCaFile}`,
      `--etcd-certfile=${pki.clientCertFile}`,
      `--etcd-keyfile=${pki.clientKeyFile}`,
    ]);
    await retriesWith(agent, new RegExp(`etcd endpoints: ${etcd.endpoint.replace(/[.]/g, "\\.")}`));
    expect(errorsOf(agent).join("\n")).toMatch(/certificate|self.signed|verify/i);
  });

  it("a missing key file is reported naming the flag and the file, and retried", async () => {
    const missing = `${pki.dir}/no-such.key`;
    const agent = agentWith([
      `--etcd-cafile=${pki.caFile}`,
      `--etcd-certfile=${pki.clientCertFile}`,
      `--etcd-keyfile=${missing}`,
    ]);
    await retriesWith(
      agent,
      new RegExp(`--etcd-keyfile ${missing.replace(/[.]/g, "\\.")}: cannot read the file`),
    );
  });

  it("a key file still missing after --startup-timeout ends the agent: exit 1, one line naming flag and file", async () => {
    const missing = `${pki.dir}/never.key`;
    const agent = agentWith([
      `--etcd-cafile=${pki.caFile}`,
      `--etcd-certfile=${pki.clientCertFile}`,
      `--etcd-keyfile=${missing}`,
      "--startup-timeout=2s",
    ]);
    expect(await agent.process.exited()).toBe(1);
    const fatal = agent.logs().filter((l) => l.level === "fatal");
    expect(fatal).toHaveLength(1);
    expect(String(fatal[0]?.msg)).toBe(
      `--etcd-keyfile ${missing}: cannot read the file (ENOENT: no such file or directory, open '${missing}'); ` +
        "still failing after --startup-timeout=2s, giving up: fix it and start the agent again",
    );
  });

  it("names the environment variable when the missing key file came from one (as in the manifest)", async () => {
    const missing = `${pki.dir}/no-such-env.key`;
    const agent = agentWith(
      [`--etcd-cafile=${pki.caFile}`, `--etcd-certfile=${pki.clientCertFile}`],
      etcd.endpoint,
      {
        TWILL_ETCD_KEYFILE: missing,
      },
    );
    await retriesWith(
      agent,
      new RegExp(
        `TWILL_ETCD_KEYFILE \\(--etcd-keyfile\\) ${missing.replace(/[.]/g, "\\.")}: cannot read the file`,
      ),
    );
  });

  it("a plaintext endpoint with TLS files is reported naming the endpoint, and retried", async () => {
    const plain = etcd.endpoint.replace("https://", "http://");
    const agent = agentWith(
      [
        `--etcd-cafile=${pki.caFile}`,
        `--etcd-certfile=${pki.clientCertFile}`,
        `--etcd-keyfile=${pki.clientKeyFile}`,
      ],
      plain,
    );
    await retriesWith(
      agent,
      new RegExp(`${plain.replace(/[.]/g, "\\.")} is plaintext \\(http://\\) but TLS files are set`),
    );
  });

  it("a plaintext client against the TLS-only server is reported with the endpoint, and retried", async () => {
    const plain = etcd.endpoint.replace("https://", "http://");
    const agent = agentWith([], plain);
    await retriesWith(agent, new RegExp(`etcd endpoints: ${plain.replace(/[.]/g, "\\.")}`));
  });
});
