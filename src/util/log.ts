// The agent's logs: pino, one record per line on stdout. `json` (the default) writes JSON with level
// names ("level":"info", as Calico and Cilium do); `text` one readable line per record; a terminal gets
// pino-pretty's colours unless a format is asked for.
import { pino, type Logger, type LevelWithSilent } from "pino";

export type { Logger };

export const LOG_FORMATS = ["json", "text"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** A value as `text` shows it: bare when it needs no quoting, else JSON. */
function textValue(value: unknown): string {
  if (typeof value === "string") return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  if (typeof value === "object" && value !== null) {
    const error = value as { message?: unknown; type?: unknown };
    // An error object (pino's err serializer): its message says it; the stack stays in JSON logs.
    if (typeof error.message === "string") return JSON.stringify(error.message);
    return JSON.stringify(value);
  }
  return String(value);
}

function textOf(value: unknown): string {
  return typeof value === "string" ? value : value === undefined ? "" : JSON.stringify(value);
}

/** One JSON log record as a `text` line: `<time> <LEVEL> <message> key=value …`. */
export function formatTextRecord(record: Record<string, unknown>): string {
  const { time, level, msg, pid: _pid, hostname: _hostname, ...fields } = record;
  const parts = [textOf(time), textOf(level).toUpperCase().padEnd(5), textOf(msg)];
  for (const [key, value] of Object.entries(fields)) parts.push(`${key}=${textValue(value)}`);
  return `${parts.join(" ")}\n`;
}

export function createLogger(
  level: LevelWithSilent = "info",
  format?: LogFormat,
  pretty = process.stdout.isTTY,
): Logger {
  if (format === undefined && pretty) {
    try {
      return pino({
        level,
        transport: { target: "pino-pretty", options: { colorize: true, translateTime: "SYS:HH:MM:ss.l" } },
      });
    } catch {
      // pino-pretty missing from a slimmed install: JSON logs are still complete logs.
    }
  }
  const options = {
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (format !== "text") return pino(options);
  return pino(options, {
    write: (line: string) => {
      process.stdout.write(formatTextRecord(JSON.parse(line) as Record<string, unknown>));
    },
  });
}

/** The message of an unknown thrown value, for log fields. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
