// The local demo (README's first command): a real etcd and three hosts in network namespaces, each
// running the real agent, two pods per host. Prints what it built and a ping matrix, then runs until
// stopped and tears everything down: namespaces, processes and temp dirs.
//
// Every way it can end leads to the same teardown: Ctrl-C (SIGINT), SIGTERM, SIGHUP (the terminal
// closed), its output going away (the reader of a pipe ended, e.g. `demo.sh | tee log` after tee died:
// writes fail with EPIPE, which would otherwise crash the demo before it cleans up), a failed start,
// and an unexpected error. A stop while it starts ends the start and removes what was made so far.
import { startDemo, type Demo } from "./demo-cluster.js";

const STOP_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
/** Exit codes as a shell reports a process ended by the signal (128 + number); SIGPIPE for lost output. */
const SIGNAL_EXIT: Record<string, number> = { SIGHUP: 129, SIGINT: 130, SIGPIPE: 141, SIGTERM: 143 };

const backend = process.argv.includes("--host-gw")
  ? "host-gw"
  : process.argv.includes("--udp")
    ? "udp"
    : process.argv.includes("--wireguard")
      ? "wireguard"
      : "vxlan";
const ipv6 = process.argv.includes("--ipv6-only")
  ? ("ipv6-only" as const)
  : process.argv.includes("--dual-stack")
    ? ("dual-stack" as const)
    : undefined;
const stop = new AbortController();
/** What stopped the demo: a signal's name, or SIGPIPE for output that went away. */
let stoppedBy: string | undefined;
let failed = false;

const request = (reason: string): void => {
  if (stop.signal.aborted) return;
  stoppedBy = reason;
  stop.abort(new Error(`stopped (${reason})`));
};

// Output that cannot be written (EPIPE: the pipe's reader is gone; EIO: the terminal is gone) is
// dropped from then on, and nobody is left to watch: the demo stops. Listening here is what keeps
// the write error from crashing the process (an 'error' event without a listener throws).
const open = { stdout: true, stderr: true };
for (const name of ["stdout", "stderr"] as const) {
  process[name].on("error", () => {
    open[name] = false;
    request("SIGPIPE");
  });
}
const say = (line: string): void => {
  if (open.stdout) console.log(line);
};
const warn = (line: string): void => {
  if (open.stderr) console.error(line);
};

// Installed before anything is made, and kept (`on`, not `once`): a second Ctrl-C must not kill the
// demo mid-teardown (execa's signal-exit re-raises a signal nobody else listens to).
for (const signal of STOP_SIGNALS) {
  process.on(signal, () => {
    if (stop.signal.aborted) say(`${signal}: already tearing down, one moment …`);
    request(signal);
  });
}
// A bug anywhere must still tear down what was made: report it and stop.
const crashed = (error: unknown): void => {
  failed = true;
  warn(`demo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  request("error");
};
process.on("uncaughtException", crashed);
process.on("unhandledRejection", crashed);

let demo: Demo | undefined;
try {
  demo = await startDemo({
    backend,
    ...(ipv6 === undefined ? {} : { ipv6 }),
    print: say,
    signal: stop.signal,
  });
  const first = demo.cluster.nodes[0];
  say(`\nThe agents keep running. Look around in another terminal, e.g.:`);
  if (first) {
    say(`  ip netns exec ${first.host.ns} ip route`);
    say(
      `  ip netns exec ${first.host.ns} node dist/cli/main.js leases --etcd-endpoints=${demo.cluster.etcd.endpoint}`,
    );
    say(`  ip netns exec ${first.host.ns} curl -s http://127.0.0.1:9102/metrics | grep ^twill_`);
    say(`  ip netns exec ${first.host.ns} node dist/cli/main.js status`);
    // Each host has its own /run/wireguard (wireguard-go's socket) in a mount namespace of its own.
    if (first.mountNs !== undefined)
      say(`  nsenter ${first.mountNs.enter(first.host.ns).join(" ")} wg show flannel-wg`);
  }
  say("Press Ctrl-C to stop and remove everything.");
  if (!stop.signal.aborted) {
    await new Promise<void>((resolve) =>
      stop.signal.addEventListener("abort", () => resolve(), { once: true }),
    );
  }
} catch (error) {
  if (!stop.signal.aborted) {
    failed = true;
    warn(`demo failed: ${error instanceof Error ? error.message : String(error)}`);
  } else if (demo === undefined && stoppedBy !== "error") {
    say(`\n${stoppedBy ?? "stop"} while starting: removing what was made so far …`);
  }
} finally {
  say("\ntearing down: agents, pods, etcd, namespaces, temp dirs …");
  await demo?.destroy();
  say("done; nothing left behind.");
}
// Stopped after a complete start is how the demo ends (0); a start cut short ends as the signal would.
const started = demo !== undefined;
process.exit(failed ? 1 : started ? 0 : (SIGNAL_EXIT[stoppedBy ?? ""] ?? 1));
