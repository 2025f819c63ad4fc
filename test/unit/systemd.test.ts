import { describe, expect, it } from "vitest";
import { notifyAddress, sdNotify } from "../../src/node/systemd.js";

describe("sd_notify", () => {
  it("addresses a socket path NUL-terminated, and an @abstract name NUL-led, after AF_UNIX", () => {
    expect(notifyAddress("/run/systemd/notify").toString("hex")).toBe(
      `0100${Buffer.from("/run/systemd/notify").toString("hex")}00`,
    );
    expect(notifyAddress("@/org/freedesktop/systemd1/notify/1").toString("hex")).toBe(
      `010000${Buffer.from("/org/freedesktop/systemd1/notify/1").toString("hex")}`,
    );
    expect(() => notifyAddress("@")).toThrow(/NOTIFY_SOCKET "@" is not a usable socket address/);
  });

  it("says nothing without NOTIFY_SOCKET", () => {
    expect(sdNotify("READY=1", {})).toBe(false);
  });
});
