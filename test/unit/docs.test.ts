// docs/ must stay true: the flag reference is generated from the flag table and must match it.
import { readFileSync } from "node:fs";
import { format, resolveConfig } from "prettier";
import { describe, expect, it } from "vitest";
import { agentFlags } from "../../src/config/agent-options.js";
import { flagTableMarkdown, withFlagTable } from "../../src/config/flag-docs.js";

const docPath = new URL("../../docs/configuration.md", import.meta.url);

describe("docs/configuration.md", () => {
  it("has the flag table generated from the code (run npm run docs after changing a flag)", async () => {
    const doc = readFileSync(docPath, "utf8");
    const options = (await resolveConfig(docPath.pathname)) ?? {};
    const expected = await format(withFlagTable(doc, flagTableMarkdown(agentFlags)), {
      ...options,
      parser: "markdown",
    });
    expect(doc).toBe(expected);
  });

  it("documents every flag with its environment variables", () => {
    const doc = readFileSync(docPath, "utf8");
    for (const flag of agentFlags) {
      expect(doc, flag.name).toContain(`\`--${flag.name}\``);
      expect(doc, flag.name).toContain(`TWILL_${flag.name.toUpperCase().replace(/-/g, "_")}`);
    }
  });
});

describe("docs/metrics.md", () => {
  it("documents every twill_ metric the agent exports", async () => {
    const { Metrics } = await import("../../src/metrics/metrics.js");
    const doc = readFileSync(new URL("../../docs/metrics.md", import.meta.url), "utf8");
    const names = (await new Metrics({ version: "test" }).registry.getMetricsAsJSON())
      .map((metric) => metric.name)
      .filter((name) => name.startsWith("twill_"));
    expect(names.length).toBeGreaterThan(15);
    for (const name of names) expect(doc, name).toContain(`\`${name}\``);
  });
});
