// Prints the closing line CI reads ("tests: N passed, N failed") from vitest's JSON report.
// Lint/type-check failures count as failed tests; a missing report (vitest crashed) counts as one failure.
import { readFileSync } from "node:fs";

const [reportPath = ".vitest-results.json", failedChecksArg = "0", vitestRcArg = "0"] = process.argv.slice(2);
const failedChecks = Number(failedChecksArg);
const vitestRc = Number(vitestRcArg);

let passed = 0;
let failed = failedChecks;
let skipped = 0;
try {
  const report = JSON.parse(readFileSync(reportPath, "utf8"));
  passed = report.numPassedTests;
  failed += report.numFailedTests;
  skipped = report.numPendingTests + report.numTodoTests;
  // A suite that failed to load (syntax error, failing beforeAll) has no failed tests of its own.
  failed += report.testResults.filter((r) => r.status === "failed" && r.assertionResults.length === 0).length;
} catch {
  failed += 1;
}
if (vitestRc !== 0 && failed === 0) failed = 1;
const skippedPart = skipped > 0 ? `, ${skipped} skipped` : "";
console.log(`tests: ${passed} passed, ${failed} failed${skippedPart}`);
process.exit(failed > 0 ? 1 : 0);
