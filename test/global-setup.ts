// Builds dist/ once before the tests: integration tests run the real CLI (node dist/cli/main.js),
// so they must never test a stale build.
import { execFileSync } from "node:child_process";

export default function setup(): void {
  execFileSync("npx", ["--no-install", "tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });
}
