// The bank example's `balance` projector, version 1, in JavaScript: one row per account with
// its balance. The same table, SQL and behaviour as the Rust `plugins/balance-v1`, so both
// build byte-identical read models. Built by `../build.mjs v1` with componentize-js.
import { log } from "zdr:projector/log@0.2.0";
import { HANDLED_CLASSES, applySent, integer, text } from "../common.js";

const NAME = "balance";
const VERSION = "1";

const CREATE_BALANCES =
  "CREATE TABLE balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)";
const OPEN_ACCOUNT = "INSERT INTO balances (account_uuid, name, balance) VALUES ($1, $2, 0)";
const ADD_MONEY = "UPDATE balances SET balance = balance + $1 WHERE account_uuid = $2";
const SUBTRACT_MONEY = "UPDATE balances SET balance = balance - $1 WHERE account_uuid = $2";

/** The handle to this instance's target, set once by `use-connection`. */
let connection = null;
/** Whether this instance replays history into a clone (it has no side effects to skip). */
let replaying = false;

export function describe() {
  return {
    name: NAME,
    version: VERSION,
    tables: [{ name: "balances", ddl: [CREATE_BALANCES] }],
    handles: [...HANDLED_CLASSES],
  };
}

export function useConnection(conn) {
  connection = conn;
}

export function forReplay() {
  replaying = true;
  log("debug", "balance v1 (js): replaying, side effects off");
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
  if (parsed.kind === "AccountOpened") {
    return [OPEN_ACCOUNT, [account, text(parsed.name)]];
  }
  const sql = parsed.kind === "MoneyAdded" ? ADD_MONEY : SUBTRACT_MONEY;
  return [sql, [integer(parsed.amount), account]];
}

export function promote() {
  const wasReplaying = replaying;
  replaying = false;
  log("info", `balance v1 (js): promoted to live (was replaying: ${wasReplaying})`);
}

export function removeTarget() {
  log("info", "balance v1 (js): target removed");
}
