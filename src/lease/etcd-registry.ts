// The lease registry over etcd: every etcd call twill makes goes through here, with a deadline, and
// nothing here decides anything (allocation and validation are pure, elsewhere).
import { readFileSync } from "node:fs";
import { noop } from "cockatiel";
import { Etcd3, isRecoverableError, type IOptions, type IKeyValue, type Watcher } from "etcd3";
import { etcdEndpointProblem } from "../config/etcd-endpoint.js";
import { errorMessage } from "../util/log.js";
import { sleep } from "../util/time.js";
import { subnetsPrefix } from "./key.js";
import type { RawEntry } from "./peer-view.js";
import {
  COMPACTED_WATCH_REASON,
  LeaseStoreError,
  storeErrorMessage,
  type LeaseRegistry,
  type StoreProblem,
  type Snapshot,
  type WatchChange,
  type WatchHandle,
  type WatchHandlers,
  type WrittenLease,
} from "./registry.js";

export interface EtcdConnectionOptions {
  readonly endpoints: readonly string[];
  readonly caFile?: string | undefined;
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  /** Deadline of each unary call. */
  readonly callTimeoutMs?: number;
  /**
   * How to name each setting in errors, by flag: e.g. "etcd-cafile" → "TWILL_ETCD_CAFILE (--etcd-cafile)"
   * when the value came from the environment; default "--<flag>".
   */
  readonly flagNames?: Readonly<Record<string, string>>;
}

/** A problem with the etcd connection settings themselves (not a passing outage): names the culprit. */
export class EtcdSettingsError extends Error {
  override name = "EtcdSettingsError";
}

function readTlsFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new EtcdSettingsError(`${flag} ${path}: cannot read the file (${errorMessage(error)})`);
  }
}

/** Builds etcd3 client options; TLS files are read here so a bad path fails loudly and early. */
export function etcdClientOptions(options: EtcdConnectionOptions): IOptions {
  const name = (flag: string): string => options.flagNames?.[flag] ?? `--${flag}`;
  if (options.endpoints.length === 0)
    throw new EtcdSettingsError(`${name("etcd-endpoints")}: no endpoint given`);
  for (const endpoint of options.endpoints) {
    const problem = etcdEndpointProblem(endpoint);
    if (problem !== undefined) throw new EtcdSettingsError(`${name("etcd-endpoints")}: ${problem}`);
  }
  const timeout = options.callTimeoutMs ?? 5000;
  const clientOptions: IOptions = {
    hosts: options.endpoints.map((e) => e.replace(/\/$/, "")),
    dialTimeout: timeout,
    // Streams (watches) live forever; unary calls get a deadline so an outage surfaces as an error.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeout }),
    // No per-host circuit breaker: while open it fails calls with "Execution prevented because the
    // circuit breaker is open" instead of the cause (ECONNREFUSED, a TLS failure, a deadline), and
    // every caller here already retries with its own backoff. The global retry across hosts stays.
    faultHandling: { host: () => noop },
  };
  const wantsTls = options.caFile || options.certFile || options.keyFile;
  if (wantsTls) {
    if (Boolean(options.certFile) !== Boolean(options.keyFile)) {
      throw new EtcdSettingsError(
        options.certFile
          ? `${name("etcd-keyfile")}: required when --etcd-certfile is set`
          : `${name("etcd-certfile")}: required when --etcd-keyfile is set`,
      );
    }
    const plain = options.endpoints.filter((e) => e.startsWith("http://"));
    if (plain.length > 0) {
      throw new EtcdSettingsError(
        `${name("etcd-endpoints")}: ${plain.join(", ")} is plaintext (http://) but TLS files are set; use https://`,
      );
    }
    clientOptions.credentials = {
      rootCertificate: options.caFile ? readTlsFile(name("etcd-cafile"), options.caFile) : Buffer.alloc(0),
      ...(options.certFile ? { certChain: readTlsFile(name("etcd-certfile"), options.certFile) } : {}),
      ...(options.keyFile ? { privateKey: readTlsFile(name("etcd-keyfile"), options.keyFile) } : {}),
    };
  }
  if (options.username) {
    clientOptions.auth = { username: options.username, password: options.password ?? "" };
  }
  return clientOptions;
}

function toRawEntry(kv: IKeyValue): RawEntry {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    etcdLeaseId: kv.lease,
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
  };
}

export class EtcdRegistry implements LeaseRegistry {
  readonly client: Etcd3;

  readonly endpoints: readonly string[];

  private problem: StoreProblem | undefined;
  private readonly problemListeners = new Set<(problem: StoreProblem | undefined) => void>();

  constructor(
    connection: EtcdConnectionOptions,
    readonly prefix: string,
    private readonly now: () => number = Date.now,
  ) {
    this.client = new Etcd3(etcdClientOptions(connection));
    this.endpoints = connection.endpoints;
  }

  /** An etcd error with the endpoints it concerns, so a log line says where to look. */
  explain(error: unknown): LeaseStoreError {
    return new LeaseStoreError(`etcd endpoints: ${this.endpoints.join(", ")}`, error);
  }

  onProblem(listener: (problem: StoreProblem | undefined) => void): () => void {
    this.problemListeners.add(listener);
    if (this.problem !== undefined) listener(this.problem);
    return () => this.problemListeners.delete(listener);
  }

  /** Runs one etcd call, noting whether etcd answered: the agent's readiness and status say so. */
  private async call<T>(run: () => Promise<T>): Promise<T> {
    try {
      const result = await run();
      this.answered();
      return result;
    } catch (error) {
      this.failed(error);
      throw error;
    }
  }

  private answered(): void {
    if (this.problem === undefined) return;
    this.problem = undefined;
    for (const listener of this.problemListeners) listener(undefined);
  }

  private failed(error: unknown): void {
    // Only trouble getting an answer makes etcd unreachable (etcd3's own "recoverable" class: unavailable,
    // deadline, cancelled …); a refusal (permission denied, a bad request) is an answer.
    if (!(error instanceof Error && isRecoverableError(error))) return;
    const message = storeErrorMessage(error);
    const since = this.problem?.since ?? this.now();
    if (this.problem?.message === message) return;
    this.problem = { message, since, where: this.endpoints.join(", ") };
    for (const listener of this.problemListeners) listener(this.problem);
  }

  get configKey(): string {
    return `${this.prefix}/config`;
  }

  get subnetsPrefix(): string {
    return subnetsPrefix(this.prefix);
  }

  async getConfig(): Promise<{ text: string | undefined; revision: number }> {
    const response = await this.call(() => this.client.get(this.configKey).exec());
    const kv = response.kvs[0];
    return { text: kv?.value.toString(), revision: Number(response.header.revision) };
  }

  async putConfig(text: string): Promise<void> {
    await this.call(() => this.client.put(this.configKey).value(text).exec());
  }

  async listSubnets(): Promise<Snapshot> {
    const response = await this.call(() => this.client.getAll().prefix(this.subnetsPrefix).exec());
    return { entries: response.kvs.map(toRawEntry), revision: Number(response.header.revision) };
  }

  async getKey(key: string): Promise<RawEntry | undefined> {
    const response = await this.call(() => this.client.get(key).exec());
    const kv = response.kvs[0];
    return kv ? toRawEntry(kv) : undefined;
  }

  async grant(ttlSeconds: number): Promise<string> {
    const response = await this.call(() => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }));
    return response.ID;
  }

  /** Best effort: a failed revoke only leaves an unused lease to expire on its own. */
  async revoke(leaseId: string): Promise<void> {
    try {
      await this.client.leaseClient.leaseRevoke({ ID: leaseId });
    } catch {
      // already gone or etcd unreachable: the lease expires by itself
    }
  }

  /** Seconds left on an etcd lease; undefined when the lease does not exist (expired, revoked, or 0). */
  async timeToLive(leaseId: string): Promise<number | undefined> {
    if (leaseId === "0") return undefined;
    const response = await this.call(() =>
      this.client.leaseClient.leaseTimeToLive({ ID: leaseId, keys: false }),
    );
    const ttl = Number(response.TTL);
    return ttl < 0 ? undefined : ttl;
  }

  /**
   * Creates `key` bound to a fresh lease, only if the key does not exist (flannel's createSubnet).
   * Returns the lease ID and the key's revision, or undefined when someone else holds the key.
   */
  async createIfAbsent(key: string, value: string, ttlSeconds: number): Promise<WrittenLease | undefined> {
    return this.putOnFreshLease(key, value, ttlSeconds, "Version", 0);
  }

  /**
   * Rebinds `key` to a fresh lease with `value`, but only if the key is still at `expectedModRevision`
   * (so a renewal never resurrects a key someone deleted, nor overwrites one someone else took).
   * Returns undefined when the key changed under us.
   */
  async replaceIfUnchanged(
    key: string,
    value: string,
    ttlSeconds: number,
    expectedModRevision: number,
  ): Promise<WrittenLease | undefined> {
    return this.putOnFreshLease(key, value, ttlSeconds, "Mod", expectedModRevision);
  }

  /** Puts `key` bound to a newly granted lease if `key`'s `field` equals `expected`; else revokes it. */
  private async putOnFreshLease(
    key: string,
    value: string,
    ttlSeconds: number,
    field: "Version" | "Mod",
    expected: number,
  ): Promise<WrittenLease | undefined> {
    const leaseId = await this.grant(ttlSeconds);
    try {
      const result = await this.call(() =>
        this.client
          .if(key, field, "==", expected)
          .then(this.client.put(key).value(value).lease(leaseId))
          .commit(),
      );
      if (!result.succeeded) {
        await this.revoke(leaseId);
        return undefined;
      }
      return { leaseId, modRevision: Number(result.header.revision) };
    } catch (error) {
      // The commit may have been applied even though the call failed (e.g. its deadline fired first):
      // revoking then would delete the key just written. Revoke only a lease that holds nothing.
      const now = await this.getKey(key).catch(() => undefined);
      if (now?.etcdLeaseId !== leaseId) await this.revoke(leaseId);
      throw error;
    }
  }

  /** Rewrites a reservation (a key without a lease) keeping it lease-less; undefined if it changed. */
  async putReservationIfUnchanged(
    key: string,
    value: string,
    expectedModRevision: number,
  ): Promise<number | undefined> {
    const result = await this.call(() =>
      this.client.if(key, "Mod", "==", expectedModRevision).then(this.client.put(key).value(value)).commit(),
    );
    return result.succeeded ? Number(result.header.revision) : undefined;
  }

  /** Deletes `key` only if it is still at `modRevision` (a stale lease of ours, or our own on release). */
  async deleteIfUnchanged(key: string, modRevision: number): Promise<boolean> {
    const result = await this.call(() =>
      this.client.if(key, "Mod", "==", modRevision).then(this.client.delete().key(key)).commit(),
    );
    return result.succeeded;
  }

  /** Watches every key under `prefix` from `fromRevision`. Any trouble ends the watch via onBroken. */
  async watchPrefix(prefix: string, fromRevision: number, handlers: WatchHandlers): Promise<WatchHandle> {
    const watcher: Watcher = await this.call(() =>
      this.client.watch().prefix(prefix).startRevision(String(fromRevision)).create(),
    );
    let broken = false;
    // etcd3's cancel() waits for etcd to confirm; a watch that etcd already cancelled (compaction)
    // or a dead connection never confirms, so never wait on it for long.
    const cancelQuietly = async (): Promise<void> => {
      const giveUp = new AbortController();
      await Promise.race([watcher.cancel().catch(() => undefined), sleep(2000, giveUp.signal)]);
      giveUp.abort(); // clear the timer, so it cannot hold the process open at exit
    };
    const breakWith = (reason: string): void => {
      if (broken) return;
      broken = true;
      void cancelQuietly();
      handlers.onBroken(reason);
    };
    watcher.on("data", (response) => {
      if (broken) return;
      const changes: WatchChange[] = response.events.map((event) =>
        event.type === "Put"
          ? { type: "put", entry: toRawEntry(event.kv) }
          : { type: "delete", key: event.kv.key.toString() },
      );
      if (changes.length > 0) handlers.onChanges(changes, Number(response.header.revision));
    });
    // etcd3 would resume by itself after a disconnect, but a resume can miss a compaction window;
    // a re-list and diff is always exact, so every interruption goes through that path.
    watcher.on("disconnected", (error: Error) => {
      this.failed(error);
      breakWith(`disconnected: ${storeErrorMessage(error)}`);
    });
    // etcd 3.4 cancels a compacted watch with an empty reason: say what it almost always means.
    watcher.on("error", (error: Error) =>
      breakWith(/canceled:\s*$/.test(error.message) ? COMPACTED_WATCH_REASON : error.message),
    );
    watcher.on("end", () => breakWith("watch ended"));
    return {
      cancel: async () => {
        if (broken) return;
        broken = true;
        await cancelQuietly();
      },
    };
  }

  close(): void {
    this.client.close();
  }
}
