// The VTEP MAC, kept across agent restarts and node reboots in the state dir, so peers never see it
// change (flannel's etcd mode makes a new random MAC whenever the device is re-created, and peers keep
// stale neighbour entries: flannel#1795, #1330). The file is bound to the node it was made on: a state
// dir copied with a VM image would otherwise give two nodes one MAC, and neither could be reached.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { isUnicastMac, parseMac, randomVtepMac } from "../../ip/mac.js";
import { writeFileAtomic } from "../../node/subnet-env.js";
import type { IdentityOrigin } from "../backend.js";

/** The file of a VXLAN device's MAC: vtep-mac.flannel.<VNI>, vtep-mac.flannel-v6.<VNI>. */
export function vtepMacPath(stateDir: string, vni: number, device = `flannel.${vni}`): string {
  return join(stateDir, `vtep-mac.${device}`);
}

/** What the file holds: the MAC on the first line, then `bound-to <binding>` (absent in older files). */
export interface VtepMacFile {
  readonly mac: string | undefined;
  readonly binding: string | undefined;
}

export function parseVtepMacFile(text: string): VtepMacFile {
  const [first = "", ...rest] = text.split("\n");
  const mac = parseMac(first);
  const bound = rest.map((line) => /^bound-to (\S+)\s*$/.exec(line)?.[1]).find((b) => b !== undefined);
  return { mac: mac !== undefined && isUnicastMac(mac) ? mac : undefined, binding: bound };
}

export function formatVtepMacFile(mac: string, binding: string): string {
  return `${mac}\nbound-to ${binding}\n`;
}

export interface VtepMacChoice {
  readonly mac: string;
  readonly origin: IdentityOrigin;
}

/**
 * The MAC to use, as a pure decision: the persisted one when it was made on this node (or by an older
 * twill that did not record where); else the MAC of a flannel.<VNI> device already on the node (left
 * by flanneld during a migration, so peers see no change) unless the state was copied; else a new one.
 * `renew`: another node holds the persisted MAC, make a new one.
 */
export function chooseVtepMac(
  file: VtepMacFile | undefined,
  options: { readonly binding: string; readonly existingMac?: string | undefined; readonly renew: boolean },
  random: () => string = randomVtepMac,
): VtepMacChoice {
  if (options.renew) return { mac: random(), origin: "renewed" };
  if (file?.mac !== undefined) {
    if (file.binding === undefined || file.binding === options.binding)
      return { mac: file.mac, origin: "persisted" };
    return { mac: random(), origin: "state-copied" };
  }
  const adopted = options.existingMac === undefined ? undefined : parseMac(options.existingMac);
  if (adopted !== undefined && isUnicastMac(adopted)) return { mac: adopted, origin: "adopted" };
  return { mac: random(), origin: "first-start" };
}

/** Reads, decides (chooseVtepMac) and persists the VTEP MAC of a VXLAN device, bound to this node. */
export async function loadOrCreateVtepMac(
  stateDir: string,
  vni: number,
  options: {
    readonly binding: string;
    readonly existingMac?: string | undefined;
    readonly renew: boolean;
    /** The device whose MAC this is (default flannel.<VNI>). */
    readonly device?: string;
  },
): Promise<VtepMacChoice> {
  const path = vtepMacPath(stateDir, vni, options.device);
  let file: VtepMacFile | undefined;
  let text: string | undefined;
  try {
    text = await readFile(path, "utf8");
    file = parseVtepMacFile(text);
  } catch {
    // first start on this node (or unreadable): decided below
  }
  const choice = chooseVtepMac(file, options);
  const wanted = formatVtepMacFile(choice.mac, options.binding);
  if (wanted !== text) await writeFileAtomic(path, wanted, 0o644);
  return choice;
}
