// pino JSON logs to stdout; human-readable (pino-pretty) when stdout is a terminal.
import { pino, type Logger, type LevelWithSilent } from "pino";

export type { Logger };

export function createLogger(level: LevelWithSilent = "info", pretty = process.stdout.isTTY): Logger {
  if (pretty) {
    try {
      return pino({
        level,
        transport: { target: "pino-pretty", options: { colorize: true, translateTime: "SYS:HH:MM:ss.l" } },
      });
    } catch {
      // pino-pretty missing from a slimmed install: JSON logs are still complete logs.
    }
  }
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}

/** The message of an unknown thrown value, for log fields. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
