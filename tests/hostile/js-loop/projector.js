// A hostile JavaScript guest (`zdr:projector@0.2.0`): records every event it sees in `js_seen`,
// and on a `Loop` event spins forever. The host's epoch deadline must interrupt it and stop only
// this projector.
// Built by plugins/build-all.sh (plugins/balance-js/build.mjs) into
// tests/hostile/target/js/js_loop.wasm.
const CREATE = "CREATE TABLE js_seen (event_id INTEGER PRIMARY KEY)";
const SEEN = "INSERT INTO js_seen (event_id) VALUES ($1)";

let connection = null;

export function describe() {
  return { name: "js-loop", version: "1", tables: [{ name: "js_seen", ddl: [CREATE] }], handles: [] };
}

export function useConnection(conn) {
  connection = conn;
}

export function forReplay() {}

export function handleEvents(events) {
  for (const event of events) {
    if (event.eventClass === "Loop") {
      let spins = 0;
      for (;;) {
        spins += 1;
      }
    }
    connection.execute(SEEN, [{ tag: "integer", val: event.id }]);
  }
}

export function promote() {}

export function removeTarget() {}
