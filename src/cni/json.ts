// JSON values as CNI passes them around: configs and results travel between plugins as raw objects
// (unknown fields included), so they are kept as JSON and only the fields twill reads are typed.
import { errorMessage } from "../util/log.js";

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Parses text that must hold one JSON object; `what` names it in the error. */
export function parseJsonObject(text: string, what: string): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`${what} is not valid JSON: ${errorMessage(error)}`, { cause: error });
  }
  if (!isJsonObject(value)) throw new SyntaxError(`${what} is not a JSON object`);
  return value;
}

/** A deep copy, so a plugin's stdin built from shared objects never aliases them. */
export function cloneJson<T extends JsonValue>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}
