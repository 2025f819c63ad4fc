// Small pure helpers for reading JSON objects the way Go's encoding/json fills a struct: keys match
// field names case-insensitively, later keys win, unknown keys are ignored. Type errors name the field
// and show the offending value, so an operator can find it in the config.

export type JsonObject = Readonly<Record<string, unknown>>;

/** A JSON value of the wrong type for a field; `field` is its dotted path, e.g. "Backend.VNI". */
export class JsonFieldError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = "JsonFieldError";
  }
}

export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Folds a key for matching, as Go's encoding/json does (bytes.EqualFold semantics). Besides ASCII
 * case, Go folds U+017F (long s) to "s" and U+212A (Kelvin sign) to "k"; no other non-ASCII character
 * folds to an ASCII letter, so this is exact for ASCII field names.
 */
export function foldKey(key: string): string {
  return key
    .replace(/\u017f/g, "s")
    .replace(/\u212a/g, "k")
    .toLowerCase();
}

/** A value as shown in messages: JSON text, shortened so a huge value cannot flood the log. */
export function describeJsonValue(value: unknown): string {
  // JSON.stringify gives undefined for non-JSON values (never from JSON.parse, but keep this total).
  const text = JSON.stringify(value) as string | undefined;
  if (text === undefined) return String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

export interface ResolvedFields<K extends string> {
  /** The value given for each known field (JSON null included); fields not given are absent. */
  readonly values: ReadonlyMap<K, unknown>;
  readonly warnings: string[];
}

/**
 * Maps an object's keys onto known field names, case-insensitively. Go assigns every matching key in
 * document order, so the last one wins; we do the same, and warn because it is almost always a typo.
 * `prefix` (e.g. "Backend.") only changes how fields are named in warnings.
 */
export function resolveFields<K extends string>(
  obj: JsonObject,
  known: readonly K[],
  prefix = "",
): ResolvedFields<K> {
  const byFold = new Map<string, K>(known.map((name) => [foldKey(name), name]));
  const values = new Map<K, unknown>();
  const spellings = new Map<K, string[]>();
  const warnings: string[] = [];
  for (const [key, value] of Object.entries(obj)) {
    const name = byFold.get(foldKey(key));
    if (name === undefined) {
      warnings.push(`unknown field ${JSON.stringify(prefix + key)} ignored`);
      continue;
    }
    values.set(name, value);
    const seen = spellings.get(name);
    if (seen === undefined) spellings.set(name, [key]);
    else seen.push(key);
  }
  for (const [name, keys] of spellings) {
    if (keys.length < 2) continue;
    const list = keys.map((k) => JSON.stringify(k)).join(", ");
    warnings.push(`field "${prefix}${name}" given more than once (as ${list}); using the last one`);
  }
  return { values, warnings };
}

function typeError(field: string, expected: string, value: unknown): JsonFieldError {
  return new JsonFieldError(field, `${field}: expected ${expected}, got ${describeJsonValue(value)}`);
}

// Getters: undefined or JSON null means "not set" (Go leaves a plain field untouched for null).

export function optionalBoolean(value: unknown, field: string): boolean | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "boolean") throw typeError(field, "true or false", value);
  return value;
}

export function optionalString(value: unknown, field: string, expected = "a string"): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw typeError(field, expected, value);
  return value;
}

/** A Go `uint` field. */
export function optionalUint(value: unknown, field: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw typeError(field, "a non-negative integer", value);
  }
  return value;
}

/** A Go `int` field. */
export function optionalInt(value: unknown, field: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isSafeInteger(value)) throw typeError(field, "an integer", value);
  return value;
}
