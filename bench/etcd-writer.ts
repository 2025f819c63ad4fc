// A small etcd client that runs inside a namespace. The harness's etcd listens on the switch
// namespace's 198.18.0.254, which the benchmark process (in the root namespace) cannot reach, so the
// benchmark starts this with `ip netns exec <switch> node … bench/etcd-writer.ts <endpoint>` and talks
// to it over stdin/stdout: one JSON request per line in, one JSON answer per line out.
//
// Times are process.hrtime (CLOCK_MONOTONIC, shared by every process on the machine), so the
// benchmark can subtract a put's start here from a route's arrival it saw itself.
import { createInterface } from "node:readline";
import { Etcd3 } from "etcd3";

export interface WriterRequest {
  readonly id: number;
  readonly op: "put" | "delete" | "list";
  /** For "put": [key, value] pairs; for "delete": keys (value ignored); for "list": one prefix. */
  readonly kvs: readonly (readonly [string, string])[];
  /** Requests in flight at once; 1 = strictly one after the other. */
  readonly concurrency: number;
}

export interface WriterAnswer {
  readonly id: number;
  /** hrtime (ns, as a decimal string) just before the first request was sent. */
  readonly startNs: string;
  /** hrtime after the last acknowledgement. */
  readonly endNs: string;
  /** For "list": every key under the prefix with its value. */
  readonly kvs?: readonly (readonly [string, string])[];
  readonly error?: string;
}

function isRequest(value: unknown): value is WriterRequest {
  if (typeof value !== "object" || value === null) return false;
  const r = value as Record<string, unknown>;
  return (
    typeof r.id === "number" &&
    (r.op === "put" || r.op === "delete" || r.op === "list") &&
    typeof r.concurrency === "number" &&
    Array.isArray(r.kvs)
  );
}

async function pool<T>(
  items: readonly T[],
  width: number,
  work: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.max(1, Math.min(width, items.length)) }, async () => {
    while (next < items.length) {
      const item = items[next++];
      if (item !== undefined) await work(item);
    }
  });
  await Promise.all(lanes);
}

const endpoint = process.argv[2];
if (endpoint === undefined) throw new Error("usage: etcd-writer.ts <etcd endpoint>");
const client = new Etcd3({ hosts: endpoint });
// Requests are served one at a time, in order; a request's own concurrency is inside it.
let queue: Promise<void> = Promise.resolve();

async function serve(request: WriterRequest): Promise<WriterAnswer> {
  const start = process.hrtime.bigint();
  try {
    if (request.op === "list") {
      const prefix = request.kvs[0]?.[0] ?? "";
      const all = await client.getAll().prefix(prefix).strings();
      const kvs = Object.entries(all);
      return { id: request.id, startNs: String(start), endNs: String(process.hrtime.bigint()), kvs };
    }
    await pool(request.kvs, request.concurrency, ([key, value]) =>
      request.op === "put" ? client.put(key).value(value).exec() : client.delete().key(key).exec(),
    );
    return { id: request.id, startNs: String(start), endNs: String(process.hrtime.bigint()) };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    return { id: request.id, startNs: String(start), endNs: String(process.hrtime.bigint()), error: message };
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const parsed: unknown = JSON.parse(line);
  if (!isRequest(parsed)) throw new Error(`bad request: ${line.slice(0, 200)}`);
  queue = queue.then(async () => {
    process.stdout.write(`${JSON.stringify(await serve(parsed))}\n`);
  });
});
lines.on("close", () => {
  void queue.then(() => client.close());
});
// Say we are connected, so the first timed request does not pay for the gRPC channel set-up.
await client.get("/bench-writer-hello").string();
process.stdout.write(`${JSON.stringify({ id: 0, startNs: "0", endNs: "0" })}\n`);
