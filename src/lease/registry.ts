// The lease store as the lease room sees it: every call the keeper, the lifecycle, the watches and
// the CLI make. etcd-registry.ts implements it over etcd; test/helpers/memory-registry.ts in memory,
// so the lease logic is tested at unit speed. Implementations decide nothing: allocation and
// validation are pure, elsewhere.
import type { RawEntry } from "./peer-view.js";

/** A key written on a fresh etcd lease: the lease and the key's new revision. */
export interface WrittenLease {
  readonly leaseId: string;
  readonly modRevision: number;
}

export interface Snapshot {
  readonly entries: RawEntry[];
  /** The store revision the snapshot was read at; watch from revision + 1. */
  readonly revision: number;
}

export type WatchChange = { type: "put"; entry: RawEntry } | { type: "delete"; key: string };

export interface WatchHandlers {
  /** One batch of changes as the store delivered them (one watch response), oldest first. */
  onChanges(changes: WatchChange[], revision: number): void;
  /** The watch is broken (compaction, cancel, disconnect): the caller re-lists and re-watches. */
  onBroken(reason: string): void;
}

export interface WatchHandle {
  cancel(): Promise<void>;
}

/** The reason a watch from a compacted revision breaks with; the same for every implementation. */
export const COMPACTED_WATCH_REASON = "watch cancelled by etcd (revision compacted)";

/** A failed store call, naming where it went (the etcd endpoints); the original error is its cause. */
export class LeaseStoreError extends Error {
  override name = "LeaseStoreError";
  constructor(where: string, cause: unknown) {
    // Loggers print the cause's message after ours: give them the cleaned one, with the original stack.
    super(`etcd call failed (${where})`, { cause: cleanedCause(cause) });
  }
}

function cleanedCause(cause: unknown): unknown {
  if (!(cause instanceof Error)) return cause;
  const message = storeErrorMessage(cause);
  if (message === cause.message) return cause;
  const cleaned = new Error(message);
  cleaned.name = cause.name;
  const head = `${cause.name}: ${cause.message}`;
  const stack = cause.stack ?? "";
  const frames = stack.startsWith(head) ? stack.slice(head.length) : stack.slice(stack.indexOf("\n"));
  cleaned.stack = `${cause.name}: ${message}${frames}`;
  return cleaned;
}

/**
 * The real cause of a failed etcd call, in one line: gRPC's details without its empty "Resolution
 * note:" tail and its timestamp, and never etcd3's "circuit breaker is open" (twill's client has none).
 */
export function storeErrorMessage(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text
    .replace(/\s*Resolution note:.*$/s, "")
    .replace(/ \(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, "")
    .replace(/\s+/g, " ")
    .trim();
}

/** The store cannot be reached: the cause as its last call failed, and since when calls fail. */
export interface StoreProblem {
  /** The real cause, one line: "connect ECONNREFUSED 198.18.0.254:2379", a TLS failure, a deadline. */
  readonly message: string;
  /** ms since the epoch of the first failed call in a row. */
  readonly since: number;
  /** Where the calls went (the endpoints). */
  readonly where: string;
}

export interface LeaseRegistry {
  /** The key prefix, e.g. /coreos.com/network. */
  readonly prefix: string;
  /** `<prefix>/config`. */
  readonly configKey: string;
  /** `<prefix>/subnets/`. */
  readonly subnetsPrefix: string;

  /**
   * A failed call's error wrapped with where it went, for logs: `{ err: registry.explain(error) }`
   * keeps the original error (type, message, stack) as the cause.
   */
  explain(error: unknown): LeaseStoreError;

  getConfig(): Promise<{ text: string | undefined; revision: number }>;
  putConfig(text: string): Promise<void>;
  listSubnets(): Promise<Snapshot>;
  getKey(key: string): Promise<RawEntry | undefined>;

  /**
   * Creates `key` bound to a fresh lease, only if the key does not exist (flannel's createSubnet).
   * Returns the lease ID and the key's revision, or undefined when someone else holds the key.
   */
  createIfAbsent(key: string, value: string, ttlSeconds: number): Promise<WrittenLease | undefined>;

  /**
   * Rebinds `key` to a fresh lease with `value`, but only if the key is still at `expectedModRevision`
   * (so a renewal never resurrects a key someone deleted, nor overwrites one someone else took).
   * Returns undefined when the key changed under us.
   */
  replaceIfUnchanged(
    key: string,
    value: string,
    ttlSeconds: number,
    expectedModRevision: number,
  ): Promise<WrittenLease | undefined>;

  /** Rewrites a reservation (a key without a lease) keeping it lease-less; undefined if it changed. */
  putReservationIfUnchanged(
    key: string,
    value: string,
    expectedModRevision: number,
  ): Promise<number | undefined>;

  /** Deletes `key` only if it is still at `modRevision` (a stale lease of ours, or our own on release). */
  deleteIfUnchanged(key: string, modRevision: number): Promise<boolean>;

  /** Best effort, never rejects: a failed revoke only leaves an unused lease to expire on its own. */
  revoke(leaseId: string): Promise<void>;

  /** Seconds left on a lease; undefined when the lease does not exist (expired, revoked, or "0"). */
  timeToLive(leaseId: string): Promise<number | undefined>;

  /**
   * Calls `listener` when the store becomes unreachable (with the cause) and reachable again
   * (undefined); returns the unsubscribe. Optional: an in-memory store is never unreachable.
   */
  onProblem?(listener: (problem: StoreProblem | undefined) => void): () => void;

  /** Watches every key under `prefix` from `fromRevision`. Any trouble ends the watch via onBroken. */
  watchPrefix(prefix: string, fromRevision: number, handlers: WatchHandlers): Promise<WatchHandle>;

  close(): void;
}
