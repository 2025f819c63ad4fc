// Batched kernel writes: one `ip -force -batch -` (or `bridge …`) process per reconcile round, with every
// failure mapped back to the 0-based index of the line that caused it.
//
// What iproute2 6.1 does in `-force -batch -` mode (verified by experiment):
//   - a line the kernel rejects prints its message(s), then `Command failed -:<1-based line>`, and the
//     batch goes on;
//   - a line that fails to *parse* (bad prefix, bad protocol value, …) calls exit(): the message is
//     printed without any `Command failed` line and every later line is silently skipped;
//   - a line that succeeds may still print warnings (e.g. `vxlan: destination port not specified`);
//   - the exit code is 1 for both "some lines failed" and some parse aborts, so it tells nothing.
// To attribute every message exactly, each line is followed by a marker line `-`, which iproute2 rejects in
// user space ("Object "-" is unknown") with its own `Command failed` line: markers sit on odd line numbers,
// real lines on even ones. A marker also leads the input, proving the tool started reading. A missing marker
// means the process stopped at that line; the rest is run again in a fresh process.
import type { CommandRunner } from "./runner.js";

export type BatchTool = "ip" | "bridge";

export interface BatchFailure {
  /** 0-based index into the `lines` given to runBatch. */
  readonly index: number;
  readonly line: string;
  readonly error: string;
}

/** A line that succeeded but printed something (kept apart so it is never mistaken for a failure). */
export interface BatchWarning {
  readonly index: number;
  readonly line: string;
  readonly message: string;
}

export interface BatchResult {
  readonly failed: BatchFailure[];
  readonly warnings: BatchWarning[];
  /** Processes spawned: 1 normally, one more per line that aborted the tool, 0 for an empty batch. */
  readonly processes: number;
}

const MARKER = "-";
const MARKER_COMPLAINT = /^Object "-" is unknown/;
const COMMAND_FAILED = /^Command failed .*:(\d+)$/;

interface Op {
  readonly index: number;
  readonly line: string;
}

/** Why a line cannot be sent safely: batch mode reads `#` as a comment and `\` + newline as continuation. */
function unsafe(line: string): string | undefined {
  if (line.trim() === "") return "empty command";
  if (/[\r\n]/.test(line)) return "line contains a newline";
  if (line.includes("#")) return "'#' starts a comment in batch mode";
  if (line.endsWith("\\")) return "trailing backslash would join the next line";
  return undefined;
}

interface RoundOutcome {
  /** False when the leading marker never showed up: the tool did not run at all. */
  readonly started: boolean;
  /** How many ops of the round ran to completion (their trailing marker was seen). */
  readonly completed: number;
  /** stderr after the last marker: the reason the process stopped early, if it did. */
  readonly trailing: string;
}

interface Sinks {
  readonly failed: BatchFailure[];
  readonly warnings: BatchWarning[];
}

function parseRound(stderr: string, ops: readonly Op[], result: Sinks): RoundOutcome {
  let buffer: string[] = [];
  let started = false;
  let completed = 0;
  const failedHere = new Set<number>();
  for (const text of stderr.split("\n")) {
    const match = COMMAND_FAILED.exec(text);
    if (match === null) {
      if (text.trim() !== "") buffer.push(text);
      continue;
    }
    const lineNo = Number(match[1]);
    if (lineNo % 2 === 1) {
      if (buffer.length > 0 && MARKER_COMPLAINT.test(buffer[buffer.length - 1] ?? "")) buffer.pop();
      if (lineNo === 1) {
        started = true;
      } else {
        const position = (lineNo - 3) / 2;
        const op = ops[position];
        if (op !== undefined && buffer.length > 0 && !failedHere.has(position)) {
          result.warnings.push({ index: op.index, line: op.line, message: buffer.join("\n") });
        }
        completed = position + 1;
      }
    } else {
      const position = (lineNo - 2) / 2;
      const op = ops[position];
      if (op !== undefined) {
        result.failed.push({ index: op.index, line: op.line, error: buffer.join("\n") || "command failed" });
        failedHere.add(position);
      }
    }
    buffer = [];
  }
  return { started, completed, trailing: buffer.join("\n") };
}

/**
 * Runs `lines` (e.g. `route replace 10.244.3.0/24 via … proto 151`) through `<tool> -force -batch -`.
 * Every line is attempted even when others fail; `failed` is sorted by index.
 */
export async function runBatch(
  runner: CommandRunner,
  tool: BatchTool,
  lines: readonly string[],
): Promise<BatchResult> {
  const result: Sinks = { failed: [], warnings: [] };
  let processes = 0;
  let pending: Op[] = [];
  lines.forEach((line, index) => {
    const problem = unsafe(line);
    if (problem === undefined) pending.push({ index, line });
    else result.failed.push({ index, line, error: `not sent: ${problem}` });
  });

  while (pending.length > 0) {
    const input = `${MARKER}\n${pending.map((op) => `${op.line}\n${MARKER}\n`).join("")}`;
    const run = await runner.run(tool, ["-force", "-batch", "-"], input);
    processes += 1;
    const outcome = parseRound(run.stderr, pending, result);

    if (!outcome.started) {
      const why = outcome.trailing || run.stderr.trim() || `exit code ${run.exitCode}`;
      for (const op of pending) {
        result.failed.push({
          index: op.index,
          line: op.line,
          error: `${tool} did not run (${runner.where}): ${why}`,
        });
      }
      break;
    }
    if (outcome.completed >= pending.length) break;

    // The op after the last completed one made the tool exit; everything after it never ran.
    const stopper = pending[outcome.completed];
    if (stopper === undefined) break;
    result.failed.push({
      index: stopper.index,
      line: stopper.line,
      error: outcome.trailing || `${tool} exited with code ${run.exitCode} on this line`,
    });
    pending = pending.slice(outcome.completed + 1);
  }

  result.failed.sort((a, b) => a.index - b.index);
  result.warnings.sort((a, b) => a.index - b.index);
  return { ...result, processes };
}
