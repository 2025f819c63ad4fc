import { describe, expect, it } from "vitest";
import { LeaseStoreError, storeErrorMessage } from "../../src/lease/registry.js";

describe("etcd errors as an operator reads them", () => {
  it.each([
    [
      "14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 198.18.0.254:2379 (2026-12-02T22:00:00.123Z)\nResolution note: ",
      "14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 198.18.0.254:2379",
    ],
    [
      "4 DEADLINE_EXCEEDED: Deadline exceeded after 5.001s\nResolution note: ",
      "4 DEADLINE_EXCEEDED: Deadline exceeded after 5.001s",
    ],
    ["etcdserver: permission denied", "etcdserver: permission denied"],
  ])("%j → %j", (raw, clean) => {
    expect(storeErrorMessage(new Error(raw))).toBe(clean);
  });

  it("a LeaseStoreError keeps the original stack, under the cleaned message", () => {
    const original = new Error("14 UNAVAILABLE: No connection established\nResolution note: ");
    const wrapped = new LeaseStoreError("etcd endpoints: http://198.18.0.254:2379", original);
    expect(wrapped.message).toBe("etcd call failed (etcd endpoints: http://198.18.0.254:2379)");
    const cause = wrapped.cause as Error;
    expect(cause.message).toBe("14 UNAVAILABLE: No connection established");
    expect(cause.stack).toContain("store-error.test.ts");
    expect(cause.stack).not.toContain("Resolution note");
  });
});
