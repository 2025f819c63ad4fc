// subnet.env: the file flannel writes for the CNI plugin and mk-docker-opts.sh, and reads back at startup
// to ask for the same subnet again. Byte-compatible with flannel's output, IPv4, dual-stack and IPv6-only.
import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { firstHost, formatCidr, formatIPv4, parseCidr, type Subnet } from "../ip/ipv4.js";
import { firstHost6, formatCidr6, formatIPv6, parseCidr6, type Subnet6 } from "../ip/ipv6.js";
import type { LeaseSubnets } from "../lease/key.js";

export interface SubnetEnv {
  /** The IPv4 network; 0.0.0.0/0 on an IPv6-only node, whose file has no IPv4 lines (as flannel's). */
  readonly network: Subnet;
  /** The node's lease (network address); the file holds its first host, e.g. 10.244.5.1/24. */
  readonly subnet: Subnet;
  /** IPv6Network and the node's IPv6 subnet (first host in the file), when IPv6 is on. */
  readonly ipv6Network?: Subnet6 | undefined;
  readonly ipv6Subnet?: Subnet6 | undefined;
  readonly mtu: number;
  readonly ipMasq: boolean;
}

/** flannel's exact layout: fixed key order, no quotes, one trailing newline. */
export function formatSubnetEnv(v: SubnetEnv): string {
  if (!Number.isInteger(v.mtu) || v.mtu <= 0) throw new RangeError(`invalid MTU ${v.mtu} for subnet.env`);
  let text = "";
  if (v.subnet.prefixLen > 0) {
    text += `FLANNEL_NETWORK=${formatCidr(v.network)}\nFLANNEL_SUBNET=${formatIPv4(firstHost(v.subnet))}/${v.subnet.prefixLen}\n`;
  }
  if (v.ipv6Network !== undefined && v.ipv6Subnet !== undefined) {
    text +=
      `FLANNEL_IPV6_NETWORK=${formatCidr6(v.ipv6Network)}\n` +
      `FLANNEL_IPV6_SUBNET=${formatIPv6(firstHost6(v.ipv6Subnet))}/${v.ipv6Subnet.prefixLen}\n`;
  }
  return text + `FLANNEL_MTU=${v.mtu}\nFLANNEL_IPMASQ=${v.ipMasq}\n`;
}

/**
 * Reads subnet.env text. Like flannel (godotenv + ReadCIDRFromSubnetFile), a CIDR value may be a comma
 * list: entries that do not parse are skipped, and anything but exactly one valid entry counts as absent.
 * Unlike godotenv, a malformed line is skipped rather than voiding the whole file.
 */
export function parseSubnetEnv(text: string): Partial<SubnetEnv> {
  const vars = parseDotenv(text);
  const result: {
    network?: Subnet;
    subnet?: Subnet;
    ipv6Network?: Subnet6;
    ipv6Subnet?: Subnet6;
    mtu?: number;
    ipMasq?: boolean;
  } = {};
  const network = singleCidr(vars.get("FLANNEL_NETWORK"));
  if (network !== undefined) result.network = network;
  // parseCidr drops host bits, so 10.244.5.1/24 comes back as the lease 10.244.5.0/24.
  const subnet = singleCidr(vars.get("FLANNEL_SUBNET"));
  if (subnet !== undefined) result.subnet = subnet;
  const ipv6Network = singleCidr6(vars.get("FLANNEL_IPV6_NETWORK"));
  if (ipv6Network !== undefined) result.ipv6Network = ipv6Network;
  const ipv6Subnet = singleCidr6(vars.get("FLANNEL_IPV6_SUBNET"));
  if (ipv6Subnet !== undefined) result.ipv6Subnet = ipv6Subnet;
  const mtuText = vars.get("FLANNEL_MTU");
  if (mtuText !== undefined && /^\d{1,5}$/.test(mtuText) && Number(mtuText) > 0) result.mtu = Number(mtuText);
  const masq = vars.get("FLANNEL_IPMASQ");
  if (masq === "true" || masq === "false") result.ipMasq = masq === "true";
  return result;
}

function singleCidr(value: string | undefined): Subnet | undefined {
  if (value === undefined) return undefined;
  const valid: Subnet[] = [];
  for (const entry of value.split(",")) {
    try {
      valid.push(parseCidr(entry));
    } catch {
      // flannel logs and skips entries that are not CIDRs
    }
  }
  return valid.length === 1 ? valid[0] : undefined;
}

function singleCidr6(value: string | undefined): Subnet6 | undefined {
  if (value === undefined) return undefined;
  const valid: Subnet6[] = [];
  for (const entry of value.split(",")) {
    try {
      valid.push(parseCidr6(entry));
    } catch {
      // as for IPv4: entries that are not CIDRs are skipped
    }
  }
  return valid.length === 1 ? valid[0] : undefined;
}

/** KEY=value lines (comments, `export`, quotes allowed), as flannel's dotenv reader takes them. */
export function parseDotenv(text: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const rawLine of text.split(/\r?\n/)) {
    let line = rawLine.trim();
    if (line === "" || line.startsWith("#")) continue;
    if (line.startsWith("export ")) line = line.slice("export ".length).trimStart();
    const eq = line.indexOf("=");
    if (eq < 0) continue;
    const key = line.slice(0, eq).trim();
    if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(key)) continue;
    vars.set(key, unquote(line.slice(eq + 1).trim()));
  }
  return vars;
}

function unquote(value: string): string {
  const quote = value[0];
  if (quote === '"' || quote === "'") {
    const end = value.indexOf(quote, 1);
    if (end > 0) {
      const inner = value.slice(1, end);
      return quote === '"' ? inner.replace(/\\([\\"nr])/g, (_m, c: string) => unescapeChar(c)) : inner;
    }
  }
  // Unquoted: an inline comment starts at whitespace followed by '#'.
  const comment = value.search(/\s#/);
  return (comment >= 0 ? value.slice(0, comment) : value).trim();
}

function unescapeChar(c: string): string {
  if (c === "n") return "\n";
  if (c === "r") return "\r";
  return c;
}

/**
 * Replaces `path` atomically (temp file in the same directory, fsync, chmod, rename), as flannel does
 * with renameio: readers see the old file or the new one, never a partial write. The mode is set with
 * chmod so the umask does not apply. The parent directory is created (0755) if missing.
 */
export async function writeFileAtomic(path: string, content: string, mode = 0o644): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const temp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  let handle: FileHandle | undefined;
  try {
    // "wx": fail rather than write through a file or symlink someone else put at the temp name.
    handle = await open(temp, "wx", mode);
    await handle.writeFile(content, "utf8");
    await handle.chmod(mode);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(temp, path);
  } catch (err) {
    await handle?.close().catch(() => undefined);
    await rm(temp, { force: true }).catch(() => undefined);
    throw err;
  }
  await syncDir(dir);
}

/** Makes the rename itself durable; best effort, since some filesystems refuse fsync on directories. */
async function syncDir(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(dir, "r");
    await handle.sync();
  } catch {
    // the file content is already synced; losing only the rename on a crash is tolerable
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/** The lease recorded by a previous run (FLANNEL_SUBNET as a network), or undefined if none is readable. */
export async function readPreviousSubnet(path: string): Promise<LeaseSubnets | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    return undefined;
  }
  const env = parseSubnetEnv(text);
  if (env.subnet === undefined && env.ipv6Subnet === undefined) return undefined;
  return { subnet: env.subnet ?? { ip: 0, prefixLen: 0 }, ipv6Subnet: env.ipv6Subnet };
}
