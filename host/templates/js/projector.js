// The `{{name}}` projector: counts events per class into `{{ident}}_counts`.
//
// Build with `zdr plugin build` (or `node build.mjs`), then
// `zdr projector deploy {{name}} dist/{{ident}}.wasm`.
import { log } from "zdr:projector/log@0.1.0";

const CREATE_TABLE = "CREATE TABLE {{ident}}_counts (event_class TEXT PRIMARY KEY, events INTEGER NOT NULL)";
const COUNT_EVENT =
  "INSERT INTO {{ident}}_counts (event_class, events) VALUES ($1, 1) ON CONFLICT (event_class) DO UPDATE SET events = events + 1";

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

// A thrown string is the error the host records for this event.
export function handleEvent(event) {
  if (connection === null) {
    throw "use-connection was not called";
  }
  try {
    connection.execute(COUNT_EVENT, [{ tag: "text", val: event.eventClass }]);
  } catch (error) {
    throw `event ${event.id}: ${JSON.stringify(error.payload ?? String(error))}`;
  }
}

export function promote() {}

export function removeTarget() {}
