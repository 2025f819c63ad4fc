#!/usr/bin/env bash
# Installs everything twill's demo and tests need on a fresh Debian machine, then builds.
# Idempotent: packages already present are not reinstalled, node_modules is reused when the lockfile matches.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: command to look for -> package that provides it.
declare -A needs=(
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [ip]=iproute2
  [bridge]=iproute2
  [iptables-restore]=iptables
  [nft]=nftables
  [ping]=iputils-ping
  [openssl]=openssl
  [sysctl]=procps
  [promtool]=prometheus
  [systemd-analyze]=systemd
  [iperf3]=iperf3
  [ethtool]=ethtool
  [python3]=python3
  [tcpdump]=tcpdump
  # The wireguard backend: wireguard-go where the kernel has no WireGuard module, wg for the kernel's
  # device and for looking at either.
  [wireguard-go]=wireguard-go
  [wg]=wireguard-tools
)
missing=()
for cmd in "${!needs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
# The standard CNI plugins (bridge, host-local, portmap …) for `twill netns` and the CNI tests: not
# commands on PATH, so looked for where Debian puts them.
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

# npm packages: reinstall only when package-lock.json changed since the last install.
stamp=node_modules/.twill-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing npm packages"
  npm ci --no-fund --no-audit --loglevel=error
  echo "$want" >"$stamp"
fi

npm run --silent build
