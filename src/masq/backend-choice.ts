// Which iptables backend (nf_tables or legacy) the rules go to. Both can hold rules on one node, and a
// container image's `iptables` need not be the host's: rules written to the backend kube-proxy does not
// use still run, but in an order nobody chose and out of sight of `iptables -S`. So, like the
// iptables-wrapper script that flannel's and kube-proxy's images use, "auto" follows kubelet's hint chain,
// then whichever backend holds more rules, and otherwise the system's own `iptables`.

import type { IptablesMode } from "../config/iptables-mode.js";

export { IPTABLES_MODES, iptablesMode, type IptablesMode } from "../config/iptables-mode.js";

/** What each backend holds now: `<command>-save` output, or undefined when that backend cannot be read. */
export interface BackendEvidence {
  readonly nft: string | undefined;
  readonly legacy: string | undefined;
}

export interface BackendChoice {
  /** The command to run: "iptables-nft", "iptables-legacy" or "iptables" (the system's alternative). */
  readonly command: string;
  /** Why, for the log and `twill status`. */
  readonly reason: string;
}

/** Chains kubelet creates in the mangle table of the backend it uses (KUBE-IPTABLES-HINT since 1.24). */
const HINT_CHAINS = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/** The hint chain declared in an iptables-save text, if any. */
export function hintChainIn(save: string | undefined): string | undefined {
  if (save === undefined) return undefined;
  return HINT_CHAINS.find((chain) => new RegExp(`^:${chain} `, "m").test(save));
}

/** Rules (`-A …` lines) in an iptables-save text. */
export function countRules(save: string | undefined): number {
  if (save === undefined) return 0;
  return save.split("\n").filter((line) => line.startsWith("-A ")).length;
}

const COMMANDS = { nft: "iptables-nft", legacy: "iptables-legacy" } as const;

export function chooseIptablesBackend(mode: IptablesMode, evidence: BackendEvidence): BackendChoice {
  if (mode === "system") return { command: "iptables", reason: "--iptables-mode=system" };
  if (mode !== "auto") return { command: COMMANDS[mode], reason: `--iptables-mode=${mode}` };

  for (const backend of ["nft", "legacy"] as const) {
    const hint = hintChainIn(evidence[backend]);
    if (hint !== undefined) {
      return { command: COMMANDS[backend], reason: `kubelet's ${hint} chain is in the ${backend} tables` };
    }
  }
  const nft = countRules(evidence.nft);
  const legacy = countRules(evidence.legacy);
  if (nft !== legacy) {
    const [winner, more, fewer] =
      nft > legacy ? (["nft", nft, legacy] as const) : (["legacy", legacy, nft] as const);
    const other = winner === "nft" ? "legacy" : "nft";
    return { command: COMMANDS[winner], reason: `${more} ${winner} rules against ${fewer} ${other} rules` };
  }
  if (evidence.nft === undefined && evidence.legacy === undefined) {
    return {
      command: "iptables",
      reason: "neither iptables-nft nor iptables-legacy can be read: the system's iptables",
    };
  }
  return { command: "iptables", reason: `no hint and ${nft} rules in either backend: the system's iptables` };
}

/**
 * The IPv6 twin of an iptables command, of the same backend: "iptables-nft" → "ip6tables-nft",
 * "iptables-legacy" → "ip6tables-legacy", "iptables" → "ip6tables" (also with a directory in front).
 * Undefined when the command's name does not start with "iptables".
 */
export function ip6tablesCommand(command: string): string | undefined {
  const match = /^(.*\/)?iptables([^/]*)$/.exec(command);
  if (match === null) return undefined;
  return `${match[1] ?? ""}ip6tables${match[2] ?? ""}`;
}
