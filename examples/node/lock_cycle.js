#!/usr/bin/env node
// A full ticketlock lock cycle from Node.js, with the contract loaded at run time
// from ../../protos/ticketlock/v1/lock_service.proto (no generated code).
//
//   npm ci
//   node lock_cycle.js [ADDR] [CONVERSATION_ID]
//
// ADDR defaults to $TICKETLOCK_ADDR, then 127.0.0.1:50051. CONVERSATION_ID
// defaults to a fresh random id (two ids are used: "<id>" and "<id>-stream").
// $TICKETLOCK_TOKEN, when set, is sent as `authorization: Bearer <token>`.
// $TICKETLOCK_TIMEOUT_MS bounds the whole run (default 20000).
//
// 1. The ticket protocol: IssueTicket twice for one conversation, WaitForTicket
//    on the second ticket (a server stream) while the first still holds the
//    lock, FinishServing the first, receive `acquired = true`, Cleanup.
// 2. The session-bound lock: a Lock bidirectional stream, acquire -> acquired
//    -> release -> released.
//
// On success it prints one JSON line summarising what happened and exits 0; on
// any failure it prints a message to stderr and exits 1.

"use strict";

const crypto = require("node:crypto");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const PROTO_FILE = "ticketlock/v1/lock_service.proto";
const CALL_TIMEOUT_MS = 5000;

function loadLockService() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as written in the proto: conversation_id, ...
    longs: Number, // int64 ticket numbers as JS numbers
    enums: String,
    defaults: true,
    oneofs: true, // `action` / `event` name the member that is set
  });
  return grpc.loadPackageDefinition(definition).ticketlock.v1.LockService;
}

function deadline(ms = CALL_TIMEOUT_MS) {
  return new Date(Date.now() + ms);
}

function describe(error) {
  if (error && typeof error.code === "number") {
    const name = Object.keys(grpc.status).find((key) => grpc.status[key] === error.code);
    return `${name || error.code}: ${error.details || error.message}`;
  }
  return error && error.message ? error.message : String(error);
}

// A unary call as a promise.
function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: deadline() }, (error, response) => {
      if (error) reject(new Error(`${method} failed: ${describe(error)}`));
      else resolve(response);
    });
  });
}

// Part 1: the ticket protocol with a streaming wait.
async function ticketProtocol(client, metadata, conversationId) {
  const order = [];
  const first = await unary(
    client,
    "IssueTicket",
    { conversation_id: conversationId, lifetime_seconds: 30 },
    metadata,
  );
  order.push(`issued:${first.ticket.number}`);
  if (first.now_serving !== first.ticket.number) {
    throw new Error(
      `first ticket ${first.ticket.number} does not hold the lock (now serving ${first.now_serving})`,
    );
  }
  const second = await unary(
    client,
    "IssueTicket",
    { conversation_id: conversationId, lifetime_seconds: 30 },
    metadata,
  );
  order.push(`issued:${second.ticket.number}`);
  if (second.now_serving !== first.ticket.number) {
    throw new Error(
      `second ticket should wait behind ${first.ticket.number}, now serving ${second.now_serving}`,
    );
  }

  const updates = [];
  let finished = null; // the FinishServing call, once sent
  const acquiredLock = await new Promise((resolve, reject) => {
    let acquired = null;
    const stream = client.WaitForTicket(
      { conversation_id: conversationId, ticket_number: second.ticket.number },
      metadata,
      { deadline: deadline() },
    );
    stream.on("data", (message) => {
      updates.push({
        now_serving: message.now_serving,
        tickets_ahead: message.tickets_ahead,
        acquired: message.acquired,
      });
      if (message.acquired) {
        order.push(`acquired:${second.ticket.number}`);
        acquired = message.lock;
        return;
      }
      order.push(`waiting:ahead=${message.tickets_ahead}`);
      if (finished === null) {
        // The wait is established and the first ticket still holds the lock:
        // finishing it must push `acquired = true` to this stream.
        order.push(`finish:${first.ticket.number}`);
        finished = unary(
          client,
          "FinishServing",
          { conversation_id: conversationId, ticket_number: first.ticket.number },
          metadata,
        );
        finished.catch((error) => {
          stream.cancel();
          reject(error);
        });
      }
    });
    stream.on("error", (error) => reject(new Error(`WaitForTicket failed: ${describe(error)}`)));
    stream.on("status", (status) => {
      if (status.code !== grpc.status.OK) return; // reported by "error"
      if (acquired === null) reject(new Error("WaitForTicket ended without acquired = true"));
      else resolve(acquired);
    });
  });
  if (finished === null) {
    throw new Error("the second ticket acquired the lock before the first was finished");
  }
  await finished;

  const cleanup = await unary(
    client,
    "Cleanup",
    { conversation_id: conversationId, ticket_number: second.ticket.number },
    metadata,
  );
  order.push(`cleanup:lock_deleted=${cleanup.lock_deleted}`);

  return {
    conversation_id: conversationId,
    first_ticket: first.ticket.number,
    second_ticket: second.ticket.number,
    now_serving_at_issue: [first.now_serving, second.now_serving],
    wait_updates: updates,
    acquired: updates.length > 0 && updates[updates.length - 1].acquired,
    acquired_lock_tickets: acquiredLock ? acquiredLock.tickets.map((t) => t.number) : [],
    lock_deleted: cleanup.lock_deleted,
    order,
  };
}

// Part 2: the session-bound Lock stream.
function lockStream(client, metadata, conversationId) {
  return new Promise((resolve, reject) => {
    const events = [];
    let ticket = null;
    let acquired = false;
    let released = false;
    const call = client.Lock(metadata, { deadline: deadline() });
    call.on("data", (message) => {
      events.push(message.event);
      if (message.event === "queued") {
        ticket = message.queued.ticket.number;
      } else if (message.event === "acquired") {
        ticket = message.acquired.ticket.number;
        acquired = true;
        call.write({ release: {} });
      } else if (message.event === "released") {
        released = true;
        call.end();
      }
    });
    call.on("error", (error) => reject(new Error(`Lock failed: ${describe(error)}`)));
    call.on("status", (status) => {
      if (status.code !== grpc.status.OK) return; // reported by "error"
      if (!acquired || !released) {
        reject(new Error(`Lock stream ended early after ${JSON.stringify(events)}`));
      } else {
        resolve({ conversation_id: conversationId, ticket, acquired, released, events });
      }
    });
    call.write({ acquire: { conversation_id: conversationId, lifetime_seconds: 30 } });
  });
}

async function main() {
  const target = process.argv[2] || process.env.TICKETLOCK_ADDR || "127.0.0.1:50051";
  const conversationId =
    process.argv[3] || `node-example-${crypto.randomBytes(8).toString("hex")}`;
  const metadata = new grpc.Metadata();
  if (process.env.TICKETLOCK_TOKEN) {
    metadata.set("authorization", `Bearer ${process.env.TICKETLOCK_TOKEN}`);
  }

  const LockService = loadLockService();
  const client = new LockService(target, grpc.credentials.createInsecure());
  try {
    const ticketResult = await ticketProtocol(client, metadata, conversationId);
    const lockResult = await lockStream(client, metadata, `${conversationId}-stream`);
    console.log(
      JSON.stringify({
        ok: true,
        target,
        ticket_protocol: ticketResult,
        lock_stream: lockResult,
      }),
    );
  } finally {
    client.close();
  }
}

const limit = Number(process.env.TICKETLOCK_TIMEOUT_MS || 20000);
const timer = setTimeout(() => {
  console.error(`lock_cycle: gave up after ${limit} ms`);
  process.exit(1);
}, limit);

main().then(
  () => {
    clearTimeout(timer);
    process.exitCode = 0;
  },
  (error) => {
    clearTimeout(timer);
    console.error(`lock_cycle: ${error.message}`);
    process.exit(1);
  },
);
