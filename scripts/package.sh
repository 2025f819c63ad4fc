#!/usr/bin/env bash
# Builds a self-contained twill for hosts without a suitable Node.js (Debian 12 ships Node 18; twill needs
# >= 20.19): twill-<version>-linux-<arch>.tar.gz with the Node.js binary that runs this script, the built
# agent and its production dependencies (koffi's prebuilt binary included: no compiler on the target).
# It needs only glibc and libstdc++ on the host, as Node.js itself does.
#
#   bash scripts/package.sh [OUT_DIR]          (default: ./out; PACKAGE_PREBUILT=1 packs dist/ as it is)
#   tar -C /opt -xzf out/twill-*.tar.gz && ln -sf /opt/twill/bin/twill /usr/local/bin/twill
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-out}" && cd "${1:-out}" && pwd)
version=$(node -p 'require("./package.json").version')
arch=$(node -p 'process.arch')
node_bin=$(node -p 'process.execPath')
node_version=$(node -p 'process.version')

stage=$(mktemp -d "${TMPDIR:-/tmp}/twill-package-XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/twill"
mkdir -p "$root/bin" "$root/lib" "$root/systemd"

# The tests pack the dist/ their run built: rebuilding it under running tests would pull files away.
[ "${PACKAGE_PREBUILT:-}" = 1 ] || npm run build --silent >/dev/null
cp -r dist package.json package-lock.json "$root/lib/"
(cd "$root/lib" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
cp "$node_bin" "$root/lib/node"
cp deploy/systemd/twill.service deploy/systemd/twill.env.example deploy/systemd/docker-twill.conf "$root/systemd/"

# The launcher: the shipped node with the flags every twill launcher uses (src/cli/main.ts's first line).
flags=$(head -n 1 src/cli/main.ts | sed -E 's/^#!\S*env (-S )?node ?//')
cat >"$root/bin/twill" <<WRAPPER
#!/bin/sh
# twill $version with its own Node.js $node_version (lib/node): no node needed on the host.
self=\$(readlink -f "\$0" 2>/dev/null || echo "\$0")
lib="\${self%/bin/*}/lib"
exec "\$lib/node" $flags "\$lib/dist/cli/main.js" "\$@"
WRAPPER
chmod 0755 "$root/bin/twill"

artefact="$out/twill-$version-linux-$arch.tar.gz"
tar -C "$stage" -czf "$artefact" twill
echo "$artefact"
