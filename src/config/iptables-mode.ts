// --iptables-mode: which iptables backend the rules go to (see masq/backend-choice.ts for the choice).
export const IPTABLES_MODES = ["auto", "nft", "legacy", "system"] as const;
export type IptablesMode = (typeof IPTABLES_MODES)[number];

/** Narrows a flag value already checked against IPTABLES_MODES. */
export function iptablesMode(value: string): IptablesMode {
  const mode = IPTABLES_MODES.find((m) => m === value);
  if (mode === undefined)
    throw new Error(`--iptables-mode: "${value}" is not one of ${IPTABLES_MODES.join(", ")}`);
  return mode;
}
