// Renders the agent's flag table as the Markdown table in docs/configuration.md, so the reference
// is generated from the code and a test keeps the two identical (`npm run docs` rewrites it).
import { envName, type FlagSpec } from "./flags.js";

function escape(text: string): string {
  return text.replace(/\|/g, "\\|");
}

export function flagTableMarkdown(specs: readonly FlagSpec[]): string {
  const lines = ["| flag | default | environment | meaning |", "|---|---|---|---|"];
  for (const spec of specs) {
    const value = spec.kind === "bool" ? "" : ` ${spec.metavar ?? spec.kind.toUpperCase()}`;
    const env = [envName("TWILL_", spec.name), ...(spec.flannel ? [envName("FLANNELD_", spec.name)] : [])]
      .map((e) => `\`${e}\``)
      .join(", ");
    const limits: string[] = [];
    if (spec.min !== undefined && spec.max !== undefined) limits.push(`${spec.min}–${spec.max}`);
    if (spec.choices) limits.push(`one of ${spec.choices.join(", ")}`);
    if (spec.repeatable) limits.push("repeatable");
    if (spec.flannel) limits.push("as flanneld");
    const suffix = limits.length > 0 ? ` (${limits.join("; ")})` : "";
    const def = spec.default === "" ? "—" : `\`${spec.default}\``;
    lines.push(
      `| \`--${spec.name}\`${escape(value)} | ${escape(def)} | ${env} | ${escape(spec.help)}${escape(suffix)} |`,
    );
  }
  return lines.join("\n");
}

export const FLAGS_BEGIN =
  "<!-- flags:begin (generated from src/config/agent-options.ts by `npm run docs`) -->";
export const FLAGS_END = "<!-- flags:end -->";

/** Replaces the generated block in a document's text. */
export function withFlagTable(doc: string, table: string): string {
  const begin = doc.indexOf(FLAGS_BEGIN);
  const end = doc.indexOf(FLAGS_END);
  if (begin < 0 || end < begin)
    throw new Error("docs/configuration.md lacks the flags:begin/flags:end markers");
  return `${doc.slice(0, begin + FLAGS_BEGIN.length)}\n${table}\n${doc.slice(end)}`;
}
