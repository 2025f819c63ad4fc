// docs/ must stay true: the flag reference is generated from the flag table and must match it, and the
// metrics reference names every metric and every value of the labels it enumerates.
import { readFileSync } from "node:fs";
import { format, resolveConfig } from "prettier";
import type { MetricObjectWithValues, MetricValue } from "prom-client";
import { describe, expect, it } from "vitest";
import { agentFlags } from "../../src/config/agent-options.js";
import { flagTableMarkdown, withFlagTable } from "../../src/config/flag-docs.js";
import { Metrics } from "../../src/metrics/metrics.js";
import { initialState } from "../../src/state.js";

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
  const metricsDoc = (): string => readFileSync(new URL("../../docs/metrics.md", import.meta.url), "utf8");
  const twillMetrics = async (): Promise<MetricObjectWithValues<MetricValue<string>>[]> => {
    const metrics = new Metrics({ version: "test", state: initialState, defaultMetrics: false });
    return (await metrics.registry.getMetricsAsJSON()).filter((metric) => metric.name.startsWith("twill_"));
  };

  it("documents every twill_ metric the agent exports", async () => {
    const doc = metricsDoc();
    const names = (await twillMetrics()).map((metric) => metric.name);
    expect(names.length).toBeGreaterThan(15);
    for (const name of names) expect(doc, name).toContain(`\`${name}\``);
  });

  it("lists every value of a label it enumerates (`label` = `a`, `b`), as exported from the start", async () => {
    const doc = metricsDoc();
    for (const metric of await twillMetrics()) {
      const row = doc.split("\n").find((line) => line.startsWith(`| \`${metric.name}\``)) ?? "";
      for (const sample of metric.values) {
        for (const [label, value] of Object.entries(sample.labels)) {
          // Only labels whose values the row spells out; `version` and the like are free text.
          if (!row.includes(`\`${label}\` = `)) continue;
          expect(row, `${metric.name}{${label}="${String(value)}"}`).toContain(`\`${String(value)}\``);
        }
      }
    }
  });
});
