#!/usr/bin/env bash
# Runs every test: lint, type check, unit and integration tests (real etcd, real network namespaces).
# Ends with one line: "tests: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "tests: 0 passed, 1 failed"; exit 1; }

failed_checks=0
echo "== lint"
npx --no-install eslint . || failed_checks=$((failed_checks + 1))
npx --no-install prettier --check . >/dev/null || { echo "prettier: files need formatting (npm run format)"; failed_checks=$((failed_checks + 1)); }
echo "== typecheck"
npx --no-install tsc -p tsconfig.json --noEmit || failed_checks=$((failed_checks + 1))

echo "== vitest"
rm -f .vitest-results.json
npx --no-install vitest run "$@"
vitest_rc=$?

node scripts/summarize-results.js .vitest-results.json "$failed_checks" "$vitest_rc"
