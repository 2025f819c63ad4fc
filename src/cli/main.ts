#!/usr/bin/env -S node --max-semi-space-size=1 --v8-pool-size=1 --heap-growing-percent=10
// twill's command-line entry point: `twill agent`, and the admin commands.
import { runCli } from "./commands.js";

process.exitCode = await runCli(process.argv.slice(2), process.env);
