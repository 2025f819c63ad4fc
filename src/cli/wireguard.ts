// `twill wireguard rotate-key`: gives the node a new WireGuard key. It writes the key file the agent
// uses; the agent notices within half a second, sets the new key on the device and then publishes the
// new public key in its lease, and every peer, seeing the lease, replaces the node's peer entry. This
// command then waits until the agent's /status shows the new key in use.
import { agentFlags } from "../config/agent-options.js";
import { formatFlagHelp, parseFlags, type FlagSpec } from "../config/flags.js";
import { fetchStatus } from "../metrics/status.js";
import { currentKeyInFile, keyFilePath, writeNewKey } from "../backends/wireguard/key-file.js";
import { encodeKey, publicKeyOf } from "../backends/wireguard/keys.js";

type Env = Readonly<Record<string, string | undefined>>;

const shared = new Set(["state-dir", "wireguard-key-file"]);
const rotateFlags: readonly FlagSpec[] = [
  ...agentFlags.filter((flag) => shared.has(flag.name)),
  {
    name: "address",
    kind: "string",
    default: "http://127.0.0.1:9102",
    help: "the agent's metrics address, asked until it shows the new key",
    metavar: "URL",
  },
  {
    name: "timeout",
    kind: "duration",
    default: "10s",
    min: 0,
    max: 600,
    help: "how long to wait for the agent to take the new key up; 0 = do not wait",
    metavar: "DURATION",
  },
];

const usage = `Usage: twill wireguard rotate-key [flags]

Makes a new WireGuard private key for this node and writes it to the agent's key file (the same
--state-dir and --wireguard-key-file as the agent's, or $WIREGUARD_KEY_FILE). The running agent
takes it up within half a second: it sets the key on flannel-wg, then publishes the new public key
in its lease, and its peers follow the lease. Pod traffic between this node and each peer waits
(WireGuard holds it) until that peer has the new key and has shaken hands anew, so rotate while
etcd is reachable: the peers learn the key only from the lease.

Flags:
${formatFlagHelp(rotateFlags)}`;

function write(stream: NodeJS.WriteStream, text: string): void {
  stream.write(text.endsWith("\n") ? text : `${text}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function rotateKey(argv: readonly string[], env: Env): Promise<number> {
  const parsed = parseFlags(rotateFlags, argv, env);
  if (parsed.positionals.length > 0) {
    write(
      process.stderr,
      `twill: wireguard rotate-key: unexpected argument "${parsed.positionals[0] ?? ""}"`,
    );
    return 2;
  }
  const path = keyFilePath(
    String(parsed.values.get("wireguard-key-file")),
    String(parsed.values.get("state-dir")),
    env,
  );
  const old = await currentKeyInFile(path);
  const oldPublic = old === undefined ? undefined : encodeKey(publicKeyOf(Buffer.from(old, "base64")));
  const key = await writeNewKey(path, "renewed");
  write(
    process.stdout,
    `new WireGuard key written to ${path}: public key ${oldPublic ?? "(none)"} -> ${key.publicKey}`,
  );
  const timeoutSeconds = Number(parsed.values.get("timeout"));
  if (timeoutSeconds === 0) return 0;
  const address = String(parsed.values.get("address"));
  const deadline = Date.now() + timeoutSeconds * 1000;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const status = await fetchStatus(address, 2000);
      const wg = status.userspace?.kind === "wireguard" ? status.userspace : undefined;
      if (wg === undefined) last = `the agent at ${address} does not run the wireguard backend`;
      else if (wg.publicKey === key.publicKey) {
        write(
          process.stdout,
          "the agent uses the new key; its lease carries it as soon as etcd has taken the update (twill leases shows it)",
        );
        return 0;
      } else last = `the agent at ${address} still shows public key ${wg.publicKey}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(100);
  }
  write(
    process.stderr,
    `twill: wireguard rotate-key: the key is written, but after ${timeoutSeconds} s ${last}; an agent using ` +
      `${path} takes it up within half a second of running`,
  );
  return 1;
}

export async function wireguardCommand(argv: readonly string[], env: Env): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "rotate-key") {
    if (rest.some((a) => a === "--help" || a === "-h" || a === "-help")) {
      write(process.stdout, usage);
      return 0;
    }
    return rotateKey(rest, env);
  }
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    write(process.stdout, usage);
    return sub === undefined ? 2 : 0;
  }
  write(process.stderr, `twill: wireguard: unknown command "${sub}"; the one there is: rotate-key`);
  return 2;
}
