// TX checksum offload on the VXLAN device. Some kernels and NICs send VXLAN packets with a bad UDP
// checksum once NAT is involved (flannel#1279: Services and DNS time out after 63 s); the known
// workaround is `ethtool -K flannel.1 tx-checksum-ip-generic off`. Done by hand it is lost whenever the
// device is re-created, which twill does to repair it, so with --vxlan-tx-checksum-offload=false the
// agent turns it off and keeps it off.
import type { CommandRunner } from "../../exec/command.js";
import type { DeviceRepair } from "../backend.js";

export class OffloadError extends Error {
  override name = "OffloadError";
}

export const TX_CHECKSUM_FEATURE = "tx-checksum-ip-generic";

/** `ethtool -k` output → feature name → on; "[fixed]" features are included with their value. */
export function parseEthtoolFeatures(text: string): Map<string, boolean> {
  const features = new Map<string, boolean>();
  for (const line of text.split("\n")) {
    const match = /^\s*([a-z0-9-]+): (on|off)\b/.exec(line);
    if (match?.[1] !== undefined) features.set(match[1], match[2] === "on");
  }
  return features;
}

/** Turns TX checksum offload off on `dev` when it is on; a repair when it changed something. */
export async function ensureTxChecksumOff(runner: CommandRunner, dev: string): Promise<DeviceRepair[]> {
  const shown = await runner.run("ethtool", ["-k", dev]);
  if (shown.exitCode !== 0) {
    throw new OffloadError(
      `ethtool -k ${dev}: ${shown.stderr.trim() || `exit ${shown.exitCode}`} (is ethtool installed?)`,
    );
  }
  const on = parseEthtoolFeatures(shown.stdout).get(TX_CHECKSUM_FEATURE);
  if (on === undefined) throw new OffloadError(`ethtool -k ${dev}: no ${TX_CHECKSUM_FEATURE} feature listed`);
  if (!on) return [];
  const set = await runner.run("ethtool", ["-K", dev, TX_CHECKSUM_FEATURE, "off"]);
  if (set.exitCode !== 0) {
    throw new OffloadError(
      `ethtool -K ${dev} ${TX_CHECKSUM_FEATURE} off: ${set.stderr.trim() || `exit ${set.exitCode}`}`,
    );
  }
  return [{ device: dev, what: "offload", detail: `${TX_CHECKSUM_FEATURE} off` }];
}
