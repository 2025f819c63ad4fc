// The node's WireGuard private key, in a file as flanneld keeps it (base64, mode 0400): made when
// absent, read otherwise. twill keeps it in the state dir, which survives reboots (flanneld's
// /run/flannel/wgkey does not, so every reboot gave a flanneld node a new key). A key flanneld left on
// this node is taken over, so a node moving from flanneld keeps its public key.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { IdentityOrigin } from "../backend.js";
import { writeFileAtomic } from "../../node/subnet-env.js";
import { decodeKey, encodeKey, generatePrivateKey, publicKeyOf } from "./keys.js";

/** flanneld's key file, and the variable that moves it. */
export const FLANNEL_KEY_FILE = "/run/flannel/wgkey";
export const KEY_FILE_VARIABLE = "WIREGUARD_KEY_FILE";
export const DEFAULT_KEY_FILE_NAME = "wireguard.key";

export interface NodeKey {
  readonly privateKey: string;
  readonly publicKey: string;
  readonly path: string;
  readonly origin: IdentityOrigin;
}

/** --wireguard-key-file if given, else $WIREGUARD_KEY_FILE (flanneld's variable), else <state-dir>/wireguard.key. */
export function keyFilePath(flag: string, stateDir: string, env: NodeJS.ProcessEnv = process.env): string {
  if (flag !== "") return flag;
  const fromEnv = env[KEY_FILE_VARIABLE];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  return join(stateDir, DEFAULT_KEY_FILE_NAME);
}

/** The private key in `text` (a key file's content), or an error naming the file and the fix. */
export function parseKeyFile(text: string, path: string): string {
  const decoded = decodeKey(text);
  if (typeof decoded === "string") {
    throw new Error(
      `WireGuard private key file ${path}: ${decoded}; put a key there (wg genkey > ${path}) or delete ` +
        `the file, and twill makes a new key (the node's peers learn it from its lease)`,
    );
  }
  return encodeKey(decoded);
}

async function readKeyFile(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`WireGuard private key file ${path}: cannot read it (${(error as Error).message})`, {
      cause: error,
    });
  }
}

function nodeKey(privateKey: string, path: string, origin: IdentityOrigin): NodeKey {
  return { privateKey, publicKey: encodeKey(publicKeyOf(Buffer.from(privateKey, "base64"))), path, origin };
}

/** Writes a new key to `path` (0400) and returns it. */
export async function writeNewKey(path: string, origin: IdentityOrigin): Promise<NodeKey> {
  const privateKey = encodeKey(generatePrivateKey());
  await writeFileAtomic(path, privateKey, 0o400);
  return nodeKey(privateKey, path, origin);
}

/** The node's key: read, taken over from flanneld, or made (also when `renew`). */
export async function loadOrCreateKey(
  path: string,
  options: { readonly renew?: boolean; readonly flannelKeyFile?: string } = {},
): Promise<NodeKey> {
  if (options.renew === true) return writeNewKey(path, "renewed");
  const text = await readKeyFile(path);
  if (text !== undefined) return nodeKey(parseKeyFile(text, path), path, "persisted");
  const flannelPath = options.flannelKeyFile ?? FLANNEL_KEY_FILE;
  if (flannelPath !== path) {
    const flannelText = await readKeyFile(flannelPath).catch(() => undefined);
    if (flannelText !== undefined && typeof decodeKey(flannelText) !== "string") {
      const privateKey = parseKeyFile(flannelText, flannelPath);
      await writeFileAtomic(path, privateKey, 0o400);
      return nodeKey(privateKey, path, "adopted");
    }
  }
  return writeNewKey(path, "first-start");
}

/** The key the file holds now, or undefined when it is absent or unreadable (the caller keeps its key). */
export async function currentKeyInFile(path: string): Promise<string | undefined> {
  const text = await readKeyFile(path).catch(() => undefined);
  if (text === undefined) return undefined;
  const decoded = decodeKey(text);
  return typeof decoded === "string" ? undefined : encodeKey(decoded);
}
