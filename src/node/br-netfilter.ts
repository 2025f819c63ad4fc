// Kubernetes Services need bridged pod traffic to pass through iptables: when a client pod and the
// Service's backend pod share the node's bridge, the backend's reply crosses the bridge at layer 2 and,
// without br_netfilter (net.bridge.bridge-nf-call-iptables=1), never meets kube-proxy's NAT, so the
// client drops it. flanneld exits when the module is missing (flannel#2068, #2166); twill says what is
// wrong and how to fix it, and keeps the overlay running, since pod-to-pod traffic does not need it.
import { readFile } from "node:fs/promises";

export const BR_NETFILTER_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables";

const CONSEQUENCE =
  "replies from a Service's backend to a client pod on the same node will miss kube-proxy's NAT";

/** What is wrong, given the sysctl file's content (undefined: the file does not exist); undefined if nothing. */
export function brNetfilterProblem(content: string | undefined): string | undefined {
  if (content === undefined) {
    return `the br_netfilter module is not loaded (no ${BR_NETFILTER_SYSCTL}): ${CONSEQUENCE}; run \`modprobe br_netfilter\` and list it in /etc/modules-load.d`;
  }
  const value = content.trim();
  if (value === "1") return undefined;
  return `net.bridge.bridge-nf-call-iptables is ${value || "empty"}, not 1: ${CONSEQUENCE}; run \`sysctl -w net.bridge.bridge-nf-call-iptables=1\` and set it in /etc/sysctl.d`;
}

/** Reads the sysctl in the agent's own namespace (undefined content: the module is not loaded). */
export async function checkBrNetfilter(path = BR_NETFILTER_SYSCTL): Promise<string | undefined> {
  const content = await readFile(path, "utf8").catch(() => undefined);
  return brNetfilterProblem(content);
}
