// The bank example's `balance` projector, version 2, in JavaScript: version 1 plus a
// transaction count and the time of the last activity per account, and an index by holder's
// name. The same table, SQL and behaviour as the Rust `plugins/balance-v2`, so both build
// byte-identical read models. Built by `../build.mjs v2` with componentize-js.
import { log } from "zdr:projector/log@0.2.0";
import { HANDLED_CLASSES, NO_CONNECTION, eachEvent, execute, integer, noAccount, parse, send, text } from "../common.js";

const NAME = "balance";
const VERSION = "2";

const CREATE_BALANCES =
  "CREATE TABLE balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL, transaction_count INTEGER NOT NULL DEFAULT 0, last_activity TEXT)";
const INDEX_BY_NAME = "CREATE INDEX balances_by_name ON balances (name)";
const OPEN_ACCOUNT =
  "INSERT INTO balances (account_uuid, name, balance, transaction_count, last_activity) VALUES ($1, $2, 0, 0, $3)";
const ADD_MONEY =
  "UPDATE balances SET balance = balance + $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3";
const SUBTRACT_MONEY =
  "UPDATE balances SET balance = balance - $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3";

/** The handle to this instance's target, set once by `use-connection`. */
let connection = null;
/** Whether this instance replays history into a clone (it has no side effects to skip). */
let replaying = false;

export function describe() {
  return {
    name: NAME,
    version: VERSION,
    tables: [{ name: "balances", ddl: [CREATE_BALANCES, INDEX_BY_NAME] }],
    handles: [...HANDLED_CLASSES],
  };
}

export function useConnection(conn) {
  connection = conn;
}

export function forReplay() {
  replaying = true;
  log("debug", "balance v2 (js): replaying, side effects off");
}

export function handleEvents(events) {
  eachEvent(events, apply);
}

/** Applies one event to the `balances` table; a thrown message is its failure. */
function apply(event) {
  if (connection === null) {
    throw NO_CONNECTION;
  }
  const parsed = parse(event);
  if (parsed === null) {
    return;
  }
  const account = text(parsed.account);
  // Every event stamps `last_activity` with the time the event was recorded.
  const at = text(event.createdAt);
  if (parsed.kind === "AccountOpened") {
    // Nothing to read back: the write goes without waiting for its answer.
    send(connection, event.id, OPEN_ACCOUNT, [account, text(parsed.name), at]);
    return;
  }
  const sql = parsed.kind === "MoneyAdded" ? ADD_MONEY : SUBTRACT_MONEY;
  const changed = execute(connection, event.id, sql, [integer(parsed.amount), at, account]);
  if (changed === 0n) {
    throw noAccount(parsed.account, event.id);
  }
}

export function promote() {
  const wasReplaying = replaying;
  replaying = false;
  log("info", `balance v2 (js): promoted to live (was replaying: ${wasReplaying})`);
}

export function removeTarget() {
  log("info", "balance v2 (js): target removed");
}
