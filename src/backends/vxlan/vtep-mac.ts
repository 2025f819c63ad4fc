// The VTEP MAC, kept across agent restarts and node reboots in the state dir, so peers never see it
// change (flannel's etcd mode makes a new random MAC whenever the device is re-created, and peers keep
// stale neighbour entries: flannel#1795, #1330).
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { isUnicastMac, parseMac, randomVtepMac } from "../../ip/mac.js";
import { writeFileAtomic } from "../../node/subnet-env.js";

export function vtepMacPath(stateDir: string, vni: number): string {
  return join(stateDir, `vtep-mac.flannel.${vni}`);
}

/**
 * Reads the persisted VTEP MAC for this VNI. The first time, it adopts `existingMac` (the MAC of a
 * flannel.<VNI> device already on the node, e.g. left by flanneld during a migration, so peers see no
 * change) or makes a random one, and persists it.
 */
export async function loadOrCreateVtepMac(
  stateDir: string,
  vni: number,
  existingMac?: string,
): Promise<string> {
  const path = vtepMacPath(stateDir, vni);
  try {
    const mac = parseMac(await readFile(path, "utf8"));
    if (mac !== undefined && isUnicastMac(mac)) return mac;
  } catch {
    // first start on this node (or unreadable): make a new one below
  }
  const adopted = existingMac === undefined ? undefined : parseMac(existingMac);
  const mac = adopted !== undefined && isUnicastMac(adopted) ? adopted : randomVtepMac();
  await writeFileAtomic(path, `${mac}\n`, 0o644);
  return mac;
}
