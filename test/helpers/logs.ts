// A pino logger that keeps its records, for unit tests that assert what was logged.
import { pino, type Logger } from "pino";

export interface CapturedLogs {
  readonly log: Logger;
  /** Every record so far, parsed. */
  records(): Record<string, unknown>[];
  /** Records with this message. */
  withMsg(msg: string): Record<string, unknown>[];
}

export function captureLogs(level: pino.LevelWithSilent = "debug"): CapturedLogs {
  const lines: string[] = [];
  const log = pino(
    { level, base: null, timestamp: false },
    { write: (line: string) => void lines.push(line) },
  );
  const records = (): Record<string, unknown>[] =>
    lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  return { log, records, withMsg: (msg) => records().filter((r) => r.msg === msg) };
}
