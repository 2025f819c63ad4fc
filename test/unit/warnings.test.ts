import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { routeWarnings } from "../../src/util/warnings.js";

describe("process warnings", () => {
  let saved: NodeJS.WarningListener[] = [];
  beforeEach(() => {
    saved = process.listeners("warning");
  });
  afterEach(() => {
    process.removeAllListeners("warning");
    for (const listener of saved) process.on("warning", listener);
  });

  it("go to the sink (the logger), except DEP0123, and no longer to Node's own stderr printer", async () => {
    const seen: (string | undefined)[] = [];
    routeWarnings((warning) => seen.push(warning.code));
    expect(process.listeners("warning")).toHaveLength(1);
    process.emitWarning("Setting the TLS ServerName to an IP address is not permitted", {
      type: "DeprecationWarning",
      code: "DEP0123",
    });
    process.emitWarning("something else", { code: "TWILL_TEST" });
    await new Promise((resolve) => setImmediate(resolve));
    expect(seen).toEqual(["TWILL_TEST"]);
  });
});
