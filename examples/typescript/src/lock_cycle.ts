// A full ticketlock lock cycle from TypeScript, over code generated from the proto
// by buf.gen.yaml (ts-proto, for @grpc/grpc-js) and type-checked by tsc.
//
//   (cd ../../tools && npm ci) && (cd ../.. && buf generate)   # or the TS plugin only
//   npm ci && npm run build
//   node dist/lock_cycle.js [ADDR] [CONVERSATION_ID]
//
// ADDR defaults to $TICKETLOCK_ADDR, then 127.0.0.1:50051; CONVERSATION_ID to a
// fresh random id. $TICKETLOCK_TOKEN, when set, is sent as
// `authorization: Bearer <token>`.
//
// Two Lock streams on one conversation: the holder acquires; the waiter queues
// and waits on its stream (a streaming wait, no polling); the holder releases,
// which the server pushes to the waiter as `acquired`; the waiter releases.
// GetLock then finds no lock. Prints one JSON line and exits 0; on any failure
// prints a message to stderr and exits 1.

import { randomUUID } from "node:crypto";
import {
  type ClientDuplexStream,
  credentials,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import {
  type GetLockResponse,
  type LockRequest,
  type LockResponse,
  LockServiceClient,
} from "./gen/ticketlock/v1/lock_service";

const CALL_TIMEOUT_MS = 5000;

type Event = "queued" | "acquired" | "released" | "refreshed";

interface Summary {
  ok: true;
  target: string;
  conversationId: string;
  holderTicket: number;
  waiterTicket: number;
  waiterQueuedBehind: number;
  order: string[];
  lockAfter: null;
}

function eventOf(response: LockResponse): Event {
  if (response.queued !== undefined) return "queued";
  if (response.acquired !== undefined) return "acquired";
  if (response.released !== undefined) return "released";
  if (response.refreshed !== undefined) return "refreshed";
  throw new Error(`a LockResponse with no event: ${JSON.stringify(response)}`);
}

function describe(error: unknown): string {
  const maybe = error as Partial<ServiceError>;
  if (typeof maybe.code === "number") {
    return `${status[maybe.code] ?? maybe.code}: ${maybe.details ?? maybe.message ?? ""}`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** One Lock stream, read one message at a time. */
class LockSession {
  private readonly stream: ClientDuplexStream<LockRequest, LockResponse>;
  private readonly pending: LockResponse[] = [];
  private readonly readers: Array<{
    resolve: (response: LockResponse) => void;
    reject: (error: Error) => void;
  }> = [];
  private failure: Error | null = null;

  constructor(client: LockServiceClient, metadata: Metadata, readonly name: string) {
    this.stream = client.lock(metadata, { deadline: Date.now() + 4 * CALL_TIMEOUT_MS });
    this.stream.on("data", (response: LockResponse) => {
      const reader = this.readers.shift();
      if (reader) reader.resolve(response);
      else this.pending.push(response);
    });
    this.stream.on("error", (error: Error) => this.fail(new Error(`${name}: ${describe(error)}`)));
    this.stream.on("end", () => this.fail(new Error(`${name}: the stream ended`)));
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const reader of this.readers.splice(0)) reader.reject(error);
  }

  send(request: LockRequest): void {
    this.stream.write(request);
  }

  next(): Promise<LockResponse> {
    const ready = this.pending.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.readers.push({ resolve, reject }));
  }

  async expect(wanted: Event): Promise<LockResponse> {
    const response = await this.next();
    const got = eventOf(response);
    if (got !== wanted) throw new Error(`${this.name}: expected ${wanted}, got ${got}`);
    return response;
  }

  close(): void {
    this.stream.end();
  }
}

function getLock(
  client: LockServiceClient,
  metadata: Metadata,
  conversationId: string,
): Promise<GetLockResponse> {
  return new Promise((resolve, reject) => {
    client.getLock(
      { conversationId },
      metadata,
      { deadline: Date.now() + CALL_TIMEOUT_MS },
      (error: ServiceError | null, response: GetLockResponse) => {
        if (error) reject(new Error(`GetLock failed: ${describe(error)}`));
        else resolve(response);
      },
    );
  });
}

async function lockCycle(target: string, conversationId: string): Promise<Summary> {
  const client = new LockServiceClient(target, credentials.createInsecure());
  const metadata = new Metadata();
  const token = process.env.TICKETLOCK_TOKEN;
  if (token) metadata.set("authorization", `Bearer ${token}`);
  const order: string[] = [];
  try {
    const holder = new LockSession(client, metadata, "holder");
    holder.send({ acquire: { conversationId, lifetimeSeconds: 30 } });
    const held = await holder.expect("acquired");
    const holderTicket = held.acquired?.ticket?.number ?? -1;
    order.push(`holder:acquired:${holderTicket}`);

    const waiter = new LockSession(client, metadata, "waiter");
    waiter.send({ acquire: { conversationId, lifetimeSeconds: 30 } });
    const queued = await waiter.expect("queued");
    const waiterTicket = queued.queued?.ticket?.number ?? -1;
    const behind = queued.queued?.ticketsAhead ?? -1;
    order.push(`waiter:queued:${waiterTicket}:ahead=${behind}`);

    // The waiter's stream is open and waiting: the release must reach it as `acquired`.
    holder.send({ release: {} });
    await holder.expect("released");
    order.push("holder:released");
    holder.close();
    let acquired = await waiter.next();
    while (eventOf(acquired) === "queued") acquired = await waiter.next(); // position updates
    if (eventOf(acquired) !== "acquired") throw new Error(`waiter: got ${eventOf(acquired)}`);
    order.push(`waiter:acquired:${acquired.acquired?.ticket?.number ?? -1}`);
    waiter.send({ release: {} });
    await waiter.expect("released");
    order.push("waiter:released");
    waiter.close();

    const after = await getLock(client, metadata, conversationId);
    if (after.lock !== undefined) throw new Error(`a lock is left: ${JSON.stringify(after.lock)}`);
    return {
      ok: true,
      target,
      conversationId,
      holderTicket,
      waiterTicket,
      waiterQueuedBehind: behind,
      order,
      lockAfter: null,
    };
  } finally {
    client.close();
  }
}

async function main(): Promise<number> {
  const target = process.argv[2] ?? process.env.TICKETLOCK_ADDR ?? "127.0.0.1:50051";
  const conversationId = process.argv[3] ?? `ts-example-${randomUUID()}`;
  try {
    const summary = await lockCycle(target, conversationId);
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`lock_cycle: ${describe(error)}\n`);
    return 1;
  }
}

void main().then((code) => {
  process.exitCode = code;
});
