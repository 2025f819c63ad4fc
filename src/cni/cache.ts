// The result cache, like libcni's /var/lib/cni/results: what ADD returned and what it ran, per
// (network, container, interface). CHECK needs the result; DEL gets it as prevResult and replays the
// same config and port mappings (portmap removes its rules only when told which ones).
import { readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../node/subnet-env.js";
import { isJsonObject, parseJsonObject, type JsonObject } from "./json.js";

export const DEFAULT_CNI_CACHE_DIR = "/var/lib/twill/cni-results";
const KIND = "twillCniCacheV1";

export interface CachedAttachment {
  readonly containerId: string;
  readonly ifName: string;
  readonly networkName: string;
  /** The netns path ADD ran against. */
  readonly netns: string;
  readonly cniArgs: string;
  readonly capabilityArgs: JsonObject;
  /** The network config list ADD ran. */
  readonly config: JsonObject;
  /** The final ADD result, as the last plugin printed it. */
  readonly result: JsonObject;
}

export function cachePath(dir: string, networkName: string, containerId: string, ifName: string): string {
  return join(dir, `${networkName}-${containerId}-${ifName}.json`);
}

/** The cached attachment, or undefined when there is none; throws when the file is unreadable garbage. */
export async function readCache(path: string): Promise<CachedAttachment | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if (isNodeError(error) && error.code === "ENOENT") return undefined;
    throw error;
  }
  const value = parseJsonObject(text, `cached result ${path}`);
  const str = (key: string): string => {
    const v = value[key];
    if (typeof v !== "string") throw new Error(`cached result ${path}: "${key}" is missing`);
    return v;
  };
  const obj = (key: string): JsonObject => {
    const v = value[key];
    if (!isJsonObject(v)) throw new Error(`cached result ${path}: "${key}" is missing`);
    return v;
  };
  if (value.kind !== KIND) throw new Error(`cached result ${path}: not a twill cache entry`);
  return {
    containerId: str("containerId"),
    ifName: str("ifName"),
    networkName: str("networkName"),
    netns: str("netns"),
    cniArgs: str("cniArgs"),
    capabilityArgs: obj("capabilityArgs"),
    config: obj("config"),
    result: obj("result"),
  };
}

/**
 * The one cached attachment of container/ifName in any network, for a detach when the conflist is
 * gone. Throws when several networks have one (the caller must say which, with --conf).
 */
export async function findCache(
  dir: string,
  containerId: string,
  ifName: string,
): Promise<CachedAttachment | undefined> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if (isNodeError(error) && error.code === "ENOENT") return undefined;
    throw error;
  }
  const suffix = `-${containerId}-${ifName}.json`;
  const found: CachedAttachment[] = [];
  for (const name of names.filter((n) => n.endsWith(suffix)).sort()) {
    const entry = await readCache(join(dir, name)).catch(() => undefined);
    if (entry?.containerId === containerId && entry.ifName === ifName) found.push(entry);
  }
  if (found.length > 1) {
    throw new Error(
      `${containerId}/${ifName} is attached to several networks (${found.map((f) => f.networkName).join(", ")}); give --conf`,
    );
  }
  return found[0];
}

export async function writeCache(path: string, entry: CachedAttachment): Promise<void> {
  const body: JsonObject = {
    kind: KIND,
    containerId: entry.containerId,
    ifName: entry.ifName,
    networkName: entry.networkName,
    netns: entry.netns,
    cniArgs: entry.cniArgs,
    capabilityArgs: entry.capabilityArgs,
    config: entry.config,
    result: entry.result,
  };
  // 0600: CNI_ARGS may carry values an operator would not want world-readable.
  await writeFileAtomic(path, `${JSON.stringify(body, null, 2)}\n`, 0o600);
}

export async function removeCache(path: string): Promise<void> {
  await rm(path, { force: true });
}

function isNodeError(error: unknown): error is NodeJS.ErrnoException {
  return error instanceof Error && "code" in error;
}
