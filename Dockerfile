# syntax=docker/dockerfile:1
# twill's container image: the agent on a slim Node.js LTS base with the network tools it drives (ip from
# iproute2, iptables-restore, sysctl from procps, ethtool, and for the wireguard backend wg from
# wireguard-tools and wireguard-go). Used by deploy/kubernetes/twill.yaml.
#
#   docker build -t ghcr.io/twill/twill:0.1.0 .
#
# Two stages: the first installs every dependency and compiles TypeScript, then drops the dev dependencies;
# the second gets only dist/, the production node_modules and package.json (for --version), so no compiler,
# npm build step or dev package ends up in the image. Node 22 is newer than the engines floor (>=20.19).

ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-fund --no-audit
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM ${NODE_IMAGE}
# Runs as root on purpose: the agent programs the host's network namespace (hostNetwork) and needs
# CAP_NET_ADMIN/CAP_NET_RAW as root, which a non-root user cannot hold for `ip` and `iptables` without file
# capabilities. The DaemonSet drops every other capability and makes the root file system read-only.
# iptables is Debian's, with both backends: --iptables-mode=auto picks the one the host's kube-proxy uses.
# The wireguard backend configures the kernel's WireGuard device with wg (wireguard-tools), and runs
# wireguard-go where the host's kernel has no WireGuard module (--wireguard-implementation=auto).
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 iptables procps ethtool wireguard-tools wireguard-go \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# `twill` on the PATH for admin commands in the pod: kubectl exec ds/twill -- twill leases ...
# Node's flags are those of dist/cli/main.js's first line (docs/operations.md, "Memory and CPU"): a 1 MiB
# young generation, one V8 worker thread and a heap that grows in 10 % steps keep a resident agent small.
RUN printf '#!/bin/sh\nexec node --max-semi-space-size=1 --v8-pool-size=1 --heap-growing-percent=10 /app/dist/cli/main.js "$@"\n' \
    >/usr/local/bin/twill \
    && chmod 0755 /usr/local/bin/twill
EXPOSE 9102
ENTRYPOINT ["node", "--max-semi-space-size=1", "--v8-pool-size=1", "--heap-growing-percent=10", "/app/dist/cli/main.js"]
CMD ["agent"]
