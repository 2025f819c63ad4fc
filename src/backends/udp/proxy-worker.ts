// The worker thread the udp backend's packet path runs on (see proxy.ts): the agent's event loop is
// never blocked by packets, and the proxy is never delayed by etcd, netlink or HTTP work.
import { parentPort, workerData } from "node:worker_threads";
import { runProxy, type ProxyFailure, type ProxySetup } from "./proxy.js";

const reason = runProxy(workerData as ProxySetup);
if (reason !== undefined) parentPort?.postMessage({ type: "failed", reason } satisfies ProxyFailure);
