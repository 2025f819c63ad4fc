import { describe, expect, it } from "vitest";
import { formatTextRecord } from "../../src/util/log.js";

describe("--log-format=text", () => {
  it("writes time, level name, message, then the fields as key=value", () => {
    expect(
      formatTextRecord({
        level: "warn",
        time: "2026-12-02T22:10:00.000Z",
        pid: 42,
        msg: "peer not programmed: unreachable",
        key: "/coreos.com/network/subnets/10.244.3.0-24",
        reason: "peer 10.244.3.0/24 is not on-link",
        count: 3,
        ok: false,
      }),
    ).toBe(
      '2026-12-02T22:10:00.000Z WARN  peer not programmed: unreachable key=/coreos.com/network/subnets/10.244.3.0-24 reason="peer 10.244.3.0/24 is not on-link" count=3 ok=false\n',
    );
  });

  it("shows an error by its message and other objects as JSON", () => {
    expect(
      formatTextRecord({
        level: "error",
        time: "t",
        msg: "kernel operation failed",
        err: { type: "Error", message: "File exists (EEXIST)", stack: "Error: …" },
        more: { "replace route": 2 },
      }),
    ).toBe('t ERROR kernel operation failed err="File exists (EEXIST)" more={"replace route":2}\n');
  });
});
