// Creating sockets inside a named network namespace (`ip netns add NAME`, /run/netns/NAME) from a
// process that stays where it is: a socket belongs for life to the namespace it was created in, so the
// main thread steps into the namespace, creates its sockets and steps back out.
//
// Why this is safe in a multithreaded Node process: setns(CLONE_NEWNET) moves only the calling thread
// (unlike CLONE_NEWUSER or CLONE_NEWNS, the network namespace may differ between the threads of one
// process), and everything between the two setns calls is synchronous on the main thread, so no other
// JavaScript runs in the namespace, and libuv's and V8's threads never leave their own.
import { closeSync, openSync } from "node:fs";
import { CLONE_NEWNET, setns } from "./libc.js";

/** The calling thread's own network namespace: /proc/self would name the process's main thread. */
export const THREAD_NETNS_PATH = "/proc/thread-self/ns/net";

/**
 * Runs `create` with the calling thread inside network namespace `name` and returns its result; the
 * thread is back in its own namespace afterwards, also when `create` throws.
 */
export function insideNetns<T>(name: string, create: () => T): T {
  if (name === "" || name === "." || name === ".." || /[/\0]/.test(name)) {
    throw new Error(`"${name}" is not a network namespace name`);
  }
  const path = `/run/netns/${name}`;
  let target: number;
  try {
    target = openSync(path, "r");
  } catch (error) {
    throw new Error(`network namespace ${name} does not exist (cannot open ${path})`, { cause: error });
  }
  try {
    const original = openSync(THREAD_NETNS_PATH, "r");
    try {
      setns(target, CLONE_NEWNET);
      try {
        return create();
      } finally {
        returnTo(original);
      }
    } finally {
      closeSync(original);
    }
  } finally {
    closeSync(target);
  }
}

function returnTo(original: number): void {
  try {
    setns(original, CLONE_NEWNET);
  } catch (error) {
    // Nothing sensible can run on a main thread stranded in another namespace.
    throw new Error(`could not return the main thread to its own network namespace: ${String(error)}`, {
      cause: error,
    });
  }
}
