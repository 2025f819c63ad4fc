#!/usr/bin/env bash
# The main job: a local demo cluster (real etcd, three hosts in network namespaces, the real agent).
# Installs what it needs first. Needs root (network namespaces). Ctrl-C stops and removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx --no-install tsx scripts/demo.ts "$@"
