// What makes this node unique, as one short string: persisted state (the VTEP MAC) records it, and
// state found with another binding was copied from another node (a cloned VM image with the state dir).
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { hostname } from "node:os";

/** The binding of a node with these facts: a hash, so the state file does not spell them out. */
export function nodeBinding(facts: {
  readonly machineId: string | undefined;
  readonly hostname: string;
  readonly publicIP: string;
}): string {
  const text = [facts.machineId ?? "", facts.hostname, facts.publicIP].join("\n");
  return createHash("sha256").update(text).digest("hex").slice(0, 16);
}

/** systemd's machine id, or D-Bus's where there is no systemd; undefined when neither can be read. */
async function readMachineId(): Promise<string | undefined> {
  for (const path of ["/etc/machine-id", "/var/lib/dbus/machine-id"]) {
    try {
      const id = (await readFile(path, "utf8")).trim();
      if (id !== "") return id;
    } catch {
      // try the next one
    }
  }
  return undefined;
}

/**
 * This node's binding. The public IP is part of it because the machine id and host name are often
 * cloned with an image too, and two nodes of one cluster never share a public IP.
 */
export async function thisNodeBinding(publicIP: string): Promise<string> {
  return nodeBinding({ machineId: await readMachineId(), hostname: hostname(), publicIP });
}
