// The `{{name}}` projector: counts events per class into `{{ident}}_counts`.
//
// Build with `zdr plugin build` (or `node build.mjs`), then
// `zdr projector deploy {{name}} dist/{{ident}}.wasm`.
import { log } from "zdr:projector/log@0.2.0";

import { readJson } from "./json.js";

const CREATE_TABLE = "CREATE TABLE {{ident}}_counts (event_class TEXT PRIMARY KEY, events INTEGER NOT NULL)";
/** Makes sure class `$1` has its row. */
const ADD_CLASS = "INSERT INTO {{ident}}_counts (event_class, events) VALUES ($1, 0) ON CONFLICT (event_class) DO NOTHING";
/** Counts one event of class `$1`: changes exactly one row. */
const COUNT_EVENT = "UPDATE {{ident}}_counts SET events = events + 1 WHERE event_class = $1";

let connection = null;

export function describe() {
  return {
    name: "{{name}}",
    version: "1",
    tables: [{ name: "{{ident}}_counts", ddl: [CREATE_TABLE] }],
    // Empty: every event. List event classes here to receive only those.
    handles: [],
  };
}

export function useConnection(conn) {
  connection = conn;
}

export function forReplay() {
  log("debug", "{{name}}: replaying, side effects off");
}

// The host hands events over in order, several per call. A failure names the event by its
// position in `events`: the thrown object `{ index, message }` is the contract's
// `event-failure`. The host then rolls the call back and runs its events again one at a time,
// so keep nothing in memory that the tables do not also hold.
export function handleEvents(events) {
  events.forEach((event, index) => {
    try {
      project(event);
    } catch (error) {
      throw { index, message: error instanceof Error ? error.message : String(error) };
    }
  });
}

// Folds one event into the read model; a thrown string is its failure.
function project(event) {
  if (connection === null) {
    throw "use-connection was not called";
  }
  // The payload, with integers beyond 2^53 as exact BigInts (`JSON.parse` would round them).
  let properties;
  try {
    properties = readJson(event.eventProperties);
  } catch (error) {
    throw `event ${event.id}: event-properties is not JSON: ${error.message}`;
  }
  if (properties === null || typeof properties !== "object" || Array.isArray(properties)) {
    throw `event ${event.id}: event-properties is not a JSON object`;
  }
  const eventClass = { tag: "text", val: event.eventClass };
  // `send` for a write whose row count is not needed: the host may answer its failure later.
  database(event, () => connection.send(ADD_CLASS, [eventClass]));
  // `execute` where the row count is checked.
  const changed = database(event, () => connection.execute(COUNT_EVENT, [eventClass]));
  if (changed !== 1n) {
    throw `event ${event.id}: counted ${changed} rows for class ${event.eventClass}, not 1`;
  }
}

// Runs one statement; a database error (its `payload` is the contract's `error` variant)
// becomes a message naming the event.
function database(event, statement) {
  try {
    return statement();
  } catch (error) {
    throw `event ${event.id}: ${JSON.stringify(error.payload ?? String(error))}`;
  }
}

export function promote() {}

export function removeTarget() {}
