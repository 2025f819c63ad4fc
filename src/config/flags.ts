// A small table-driven flag parser that speaks flanneld's dialect: Go-style flags (`-flag` or
// `--flag`, `--flag=value`, booleans as `--flag` or `--flag=false`, repeatable flags), each also
// settable from the environment as TWILL_<FLAG> or, for flanneld's own flags, FLANNELD_<FLAG>, so
// existing unit files and manifests keep working. Precedence: command line > TWILL_ > FLANNELD_ > default.
// (node:util parseArgs and commander handle neither single-dash long flags nor the second env prefix.)

export type FlagKind = "string" | "bool" | "int" | "duration" | "list";

export interface FlagSpec {
  readonly name: string;
  readonly kind: FlagKind;
  /** Default as text, exactly as it would be typed ("" = empty / unset). */
  readonly default: string;
  readonly help: string;
  /** flanneld has this flag with the same meaning: FLANNELD_<FLAG> is honoured too. */
  readonly flannel?: boolean;
  /** Repeatable on the command line (values accumulate); from env a single value. */
  readonly repeatable?: boolean;
  /** Inclusive bounds for int/duration (duration in seconds). */
  readonly min?: number;
  readonly max?: number;
  /** Allowed values for a string flag. */
  readonly choices?: readonly string[];
  /** Help text for the value, e.g. "ADDR". */
  readonly metavar?: string;
}

/** A flag problem: names the flag (or env var) and says what is allowed. */
export class FlagError extends Error {
  override name = "FlagError";
}

export type FlagValue = string | boolean | number | string[];

export interface ParsedFlags {
  readonly values: ReadonlyMap<string, FlagValue>;
  /** Where each value came from: "flag", "TWILL_…", "FLANNELD_…" or "default". */
  readonly sources: ReadonlyMap<string, string>;
  /** Arguments that are not flags (sub-command operands). */
  readonly positionals: readonly string[];
}

export function envName(prefix: "TWILL_" | "FLANNELD_", flag: string): string {
  return prefix + flag.toUpperCase().replace(/[-.]/g, "_");
}

/** Parses a Go-style duration ("24h", "90s", "1m30s", "500ms") or bare seconds ("86400") into seconds. */
export function parseDurationSeconds(text: string): number | undefined {
  if (/^\d+$/.test(text)) return Number(text);
  const units: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600 };
  let total = 0;
  let rest = text;
  if (rest === "") return undefined;
  while (rest.length > 0) {
    const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)/.exec(rest);
    if (!match) return undefined;
    const [whole, amount = "", unit = ""] = match;
    total += Number(amount) * (units[unit] ?? 0);
    rest = rest.slice(whole.length);
  }
  return total;
}

/** A boolean flag's text as Go's strconv.ParseBool reads the usual spellings; undefined for others. */
export function parseBoolText(raw: string): boolean | undefined {
  const lowered = raw.toLowerCase();
  if (["true", "1", "t", "yes"].includes(lowered)) return true;
  if (["false", "0", "f", "no"].includes(lowered)) return false;
  return undefined;
}

function convert(spec: FlagSpec, raw: string, origin: string): FlagValue {
  const where = origin === "flag" ? `--${spec.name}` : `${origin} (--${spec.name})`;
  switch (spec.kind) {
    case "bool": {
      const value = parseBoolText(raw);
      if (value === undefined) throw new FlagError(`${where}: "${raw}" is not a boolean (use true or false)`);
      return value;
    }
    case "int": {
      if (!/^-?\d+$/.test(raw)) throw new FlagError(`${where}: "${raw}" is not an integer${bounds(spec)}`);
      const value = Number(raw);
      checkBounds(spec, value, raw, where);
      return value;
    }
    case "duration": {
      const seconds = parseDurationSeconds(raw);
      if (seconds === undefined) {
        throw new FlagError(
          `${where}: "${raw}" is not a duration (e.g. 30s, 5m, 24h, or seconds)${bounds(spec)}`,
        );
      }
      checkBounds(spec, seconds, raw, where);
      return seconds;
    }
    case "list":
      return raw === ""
        ? []
        : raw
            .split(",")
            .map((part) => part.trim())
            .filter((part) => part !== "");
    case "string":
      if (spec.choices && !spec.choices.includes(raw)) {
        throw new FlagError(`${where}: "${raw}" is not allowed (allowed: ${spec.choices.join(", ")})`);
      }
      return raw;
  }
}

function bounds(spec: FlagSpec): string {
  if (spec.min !== undefined && spec.max !== undefined) return ` (allowed: ${spec.min} to ${spec.max})`;
  if (spec.min !== undefined) return ` (allowed: ${spec.min} or more)`;
  return "";
}

function checkBounds(spec: FlagSpec, value: number, raw: string, where: string): void {
  if ((spec.min !== undefined && value < spec.min) || (spec.max !== undefined && value > spec.max)) {
    throw new FlagError(`${where}: ${raw} is out of range${bounds(spec)}`);
  }
}

/** Parses argv (after the sub-command) against `specs`, with env fallbacks. */
export function parseFlags(
  specs: readonly FlagSpec[],
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): ParsedFlags {
  const byName = new Map(specs.map((spec) => [spec.name, spec]));
  const fromCli = new Map<string, string[]>();
  const positionals: string[] = [];

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      positionals.push(arg);
      continue;
    }
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const spec = byName.get(name);
    if (!spec) {
      const close = specs
        .filter((s) => s.name.includes(name) || name.includes(s.name))
        .map((s) => `--${s.name}`);
      const hint = close.length > 0 ? ` (did you mean ${close.slice(0, 3).join(", ")}?)` : "";
      throw new FlagError(`unknown flag --${name}${hint}; see --help for the list`);
    }
    let raw: string;
    if (eq >= 0) raw = body.slice(eq + 1);
    else if (spec.kind === "bool") raw = "true";
    else {
      const next = argv[i + 1];
      if (next === undefined) throw new FlagError(`--${name}: needs a value`);
      raw = next;
      i++;
    }
    const seen = fromCli.get(name);
    if (seen && !spec.repeatable && spec.kind !== "list") {
      throw new FlagError(`--${name}: given more than once`);
    }
    fromCli.set(name, [...(seen ?? []), raw]);
  }

  const values = new Map<string, FlagValue>();
  const sources = new Map<string, string>();
  for (const spec of specs) {
    const cli = fromCli.get(spec.name);
    if (cli) {
      const converted = cli.map((raw) => convert(spec, raw, "flag"));
      const accumulates = spec.repeatable === true || spec.kind === "list";
      values.set(spec.name, accumulates ? converted.flat().map(String) : (converted[0] ?? ""));
      sources.set(spec.name, "flag");
      continue;
    }
    const envCandidates = [
      envName("TWILL_", spec.name),
      ...(spec.flannel ? [envName("FLANNELD_", spec.name)] : []),
    ];
    const envHit = envCandidates.find((candidate) => env[candidate] !== undefined);
    if (envHit !== undefined) {
      const converted = convert(spec, env[envHit] ?? "", envHit);
      values.set(spec.name, spec.repeatable && typeof converted === "string" ? [converted] : converted);
      sources.set(spec.name, envHit);
      continue;
    }
    const converted = convert(spec, spec.default, "default");
    values.set(spec.name, spec.repeatable && spec.default === "" ? [] : converted);
    sources.set(spec.name, "default");
  }
  return { values, sources, positionals };
}

/** Renders the flag table as --help text. */
export function formatFlagHelp(specs: readonly FlagSpec[]): string {
  const lines: string[] = [];
  for (const spec of specs) {
    const meta = spec.kind === "bool" ? "" : ` ${spec.metavar ?? spec.kind.toUpperCase()}`;
    const def = spec.default === "" ? "" : ` (default ${spec.default})`;
    const env = [
      envName("TWILL_", spec.name),
      ...(spec.flannel ? [envName("FLANNELD_", spec.name)] : []),
    ].join(", ");
    lines.push(`  --${spec.name}${meta}`);
    lines.push(`      ${spec.help}${def}${spec.repeatable ? " [repeatable]" : ""}`);
    lines.push(`      env: ${env}`);
  }
  return lines.join("\n");
}

/** How messages name a flag: "--flag", or "TWILL_FLAG (--flag)" when its value came from that variable. */
export function flagLabel(parsed: ParsedFlags, flag: string): string {
  const source = parsed.sources.get(flag) ?? "flag";
  return source === "flag" || source === "default" ? `--${flag}` : `${source} (--${flag})`;
}

/** flagLabel for each of `flags`, e.g. for the etcd client's error messages. */
export function flagLabels(parsed: ParsedFlags, flags: readonly string[]): Record<string, string> {
  return Object.fromEntries(flags.map((flag) => [flag, flagLabel(parsed, flag)]));
}
