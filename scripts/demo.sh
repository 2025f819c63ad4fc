#!/usr/bin/env bash
# The main job: a local demo cluster (real etcd, three hosts in network namespaces, the real agent).
# Installs what it needs first (DEMO_SKIP_SETUP=1 skips that, on a machine already set up and built).
# Needs root (network namespaces). Ctrl-C, SIGTERM, a closed terminal or a closed output pipe stop it
# and remove everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${DEMO_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh
# Node itself with tsx's loader, in place of this shell: one process that gets the signals and tears
# down. (`npx tsx` would put two relaying processes in between; tsx's relay SIGKILLs a child that does
# not acknowledge a signal within milliseconds, cutting the teardown short.)
exec node --import tsx scripts/demo.ts "$@"
