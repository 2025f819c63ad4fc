// Regenerates the flag reference in docs/configuration.md from the flag table (npm run docs).
import { readFileSync, writeFileSync } from "node:fs";
import { agentFlags } from "../src/config/agent-options.js";
import { flagTableMarkdown, withFlagTable } from "../src/config/flag-docs.js";

const path = new URL("../docs/configuration.md", import.meta.url);
writeFileSync(path, withFlagTable(readFileSync(path, "utf8"), flagTableMarkdown(agentFlags)));
console.log("docs/configuration.md: flag table regenerated");
