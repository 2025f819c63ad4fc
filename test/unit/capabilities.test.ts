import { describe, expect, it } from "vitest";
import {
  missingCapabilities,
  missingCapabilitiesMessage,
  neededCapabilities,
  parseEffectiveCapabilities,
} from "../../src/node/capabilities.js";

describe("capability check", () => {
  it("reads CapEff from a /proc status text", () => {
    expect(parseEffectiveCapabilities("Name:\tnode\nCapEff:\t000001fffeffefff\nCapBnd:\t0\n")).toBe(
      0x1fffeffefffn,
    );
    expect(parseEffectiveCapabilities("Name:\tnode\n")).toBeUndefined();
  });

  it.each([
    ["root", 0x1fffeffffffn, true, []],
    ["without NET_ADMIN", 0x1fffeffefffn, true, ["CAP_NET_ADMIN"]],
    ["without NET_ADMIN and NET_RAW", 0x1fffeffcfffn, true, ["CAP_NET_ADMIN", "CAP_NET_RAW"]],
    ["without NET_RAW, iptables not used", 0x1fffeffdfffn, false, []],
    ["without NET_RAW, iptables used", 0x1fffeffdfffn, true, ["CAP_NET_RAW"]],
    ["nothing at all", 0n, false, ["CAP_NET_ADMIN"]],
  ])("%s", (_name, effective, iptables, expected) => {
    const needed = neededCapabilities({ ipMasq: false, iptablesForwardRules: iptables });
    expect(missingCapabilities(effective, needed).map((cap) => cap.name)).toEqual(expected);
  });

  it("says what is missing, what for, and how to grant it", () => {
    const needed = neededCapabilities({ ipMasq: true, iptablesForwardRules: false });
    const message = missingCapabilitiesMessage(missingCapabilities(0n, needed));
    expect(message).toMatch(/^missing CAP_NET_ADMIN and CAP_NET_RAW: /);
    expect(message).toContain("create the tunnel device");
    expect(message).toContain("capabilities.add: [NET_ADMIN, NET_RAW]");
    expect(message).toContain("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW");
    expect(message).toContain("Nothing was published or written");
  });
});
