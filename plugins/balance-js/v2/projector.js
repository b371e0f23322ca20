// The bank example's `balance` projector, version 2, in JavaScript: version 1 plus a
// transaction count and the time of the last activity per account, and an index by holder's
// name. The same table, SQL and behaviour as the Rust `plugins/balance-v2`, so both build
// byte-identical read models. Built by `../build.mjs v2` with componentize-js.
import { log } from "zdr:projector/log@0.2.0";
import { HANDLED_CLASSES, applySent, integer, text } from "../common.js";

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

/**
 * Every row this projector writes for an event is that event's account's, and no event reads
 * another account's row: a replay may split history by account (`partition-by` of the
 * `partitioned-projector` world).
 */
export function partitionBy() {
  return [["balances", "account_uuid"]];
}

export function useConnection(conn) {
  connection = conn;
}

export function forReplay() {
  replaying = true;
  log("debug", "balance v2 (js): replaying, side effects off");
}

/**
 * Sends the writes of every event without waiting, then flushes once: the host runs them in
 * one round trip where it pipelines (PostgreSQL). The row counts then show a deposit or
 * withdrawal whose account did not exist, and the first one names its event.
 */
export function handleEvents(events) {
  applySent(connection, events, write);
}

/** The write of one parsed event to the `balances` table. */
function write(event, parsed) {
  const account = text(parsed.account);
  // Every event stamps `last_activity` with the time the event was recorded.
  const at = text(event.createdAt);
  if (parsed.kind === "AccountOpened") {
    return [OPEN_ACCOUNT, [account, text(parsed.name), at]];
  }
  const sql = parsed.kind === "MoneyAdded" ? ADD_MONEY : SUBTRACT_MONEY;
  return [sql, [integer(parsed.amount), at, account]];
}

export function promote() {
  const wasReplaying = replaying;
  replaying = false;
  log("info", `balance v2 (js): promoted to live (was replaying: ${wasReplaying})`);
}

export function removeTarget() {
  log("info", "balance v2 (js): target removed");
}
