// Reading `ethtool -k` output for the TX checksum feature.
import { describe, expect, it } from "vitest";
import { parseEthtoolFeatures, TX_CHECKSUM_FEATURE } from "../../src/backends/vxlan/offload.js";

// As ethtool 6.1 prints it for a vxlan device (trimmed).
const VXLAN_ON = `Features for flannel.1:
rx-checksumming: on
tx-checksumming: on
	tx-checksum-ipv4: off [fixed]
	tx-checksum-ip-generic: on
	tx-checksum-ipv6: off [fixed]
scatter-gather: on
	tx-scatter-gather: on
tcp-segmentation-offload: on
`;

describe("parseEthtoolFeatures", () => {
  it("reads indented sub-features and [fixed] ones", () => {
    const features = parseEthtoolFeatures(VXLAN_ON);
    expect(features.get(TX_CHECKSUM_FEATURE)).toBe(true);
    expect(features.get("tx-checksum-ipv4")).toBe(false);
    expect(features.get("tx-checksumming")).toBe(true);
    expect(features.has("Features for flannel.1")).toBe(false);
  });

  it("sees the feature off", () => {
    const off = VXLAN_ON.replace("tx-checksum-ip-generic: on", "tx-checksum-ip-generic: off");
    expect(parseEthtoolFeatures(off).get(TX_CHECKSUM_FEATURE)).toBe(false);
  });

  it("has no entry for a feature the device does not list", () => {
    expect(
      parseEthtoolFeatures("Features for lo:\nrx-checksumming: on [fixed]\n").get(TX_CHECKSUM_FEATURE),
    ).toBeUndefined();
  });
});
