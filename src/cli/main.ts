#!/usr/bin/env -S node --max-semi-space-size=1 --v8-pool-size=1 --heap-growing-percent=10
// twill's command-line entry point: `twill agent`, and the admin commands.
import { runCli } from "./commands.js";

const code = await runCli(process.argv.slice(2), process.env);
// Exit now that the command is done rather than when the last handle closes: an agent's etcd client
// took ~200 ms more to wind down, and while an agent restarts, the udp backend's packets wait for
// the next process. Output is not lost: stdout and stderr are synchronous for files and pipes on Linux.
process.exit(code);
