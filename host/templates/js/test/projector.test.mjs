// Tests of the `{{name}}` projector under Node, with a fake database in place of the host's
// connection: `node --test test/` (or `zdr plugin test`).
import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register("./wit-hooks.mjs", import.meta.url);
const projector = await import("../projector.js");
const { logged } = await import("zdr:projector/log@0.1.0");

// A connection that records every statement and keeps the counts the statements stand for.
// With `failWith` set, every statement fails the way the host reports a database error.
function fakeConnection(failWith = null) {
  const statements = [];
  const counts = new Map();
  return {
    statements,
    counts,
    execute(sql, params) {
      if (failWith !== null) {
        throw Object.assign(new Error("database error"), { payload: failWith });
      }
      statements.push([sql, params]);
      assert.match(sql, /^INSERT INTO {{ident}}_counts /, `unexpected statement ${sql}`);
      assert.equal(params.length, 1);
      assert.equal(params[0].tag, "text");
      counts.set(params[0].val, (counts.get(params[0].val) ?? 0) + 1);
      return 1n;
    },
  };
}

function event(id, eventClass) {
  return {
    id: BigInt(id),
    aggregateUuid: "11111111-2222-3333-4444-555555555555",
    aggregateVersion: BigInt(id),
    eventVersion: 1n,
    eventClass,
    eventProperties: "{}",
    metaData: "{}",
    createdAt: "2026-01-01 00:00:00",
  };
}

// First: the module's connection is still unset here.
test("an event before use-connection is refused", () => {
  assert.throws(() => projector.handleEvent(event(1, "MoneyAdded")), /use-connection was not called/);
});

test("describes its one table", () => {
  const description = projector.describe();
  assert.equal(description.name, "{{name}}");
  assert.deepEqual(
    description.tables.map((table) => table.name),
    ["{{ident}}_counts"],
  );
  assert.match(description.tables[0].ddl[0], /^CREATE TABLE {{ident}}_counts /);
  assert.deepEqual(description.handles, [], "it handles every event");
});

test("counts each event under its class", () => {
  const connection = fakeConnection();
  projector.useConnection(connection);
  projector.handleEvent(event(1, "AccountOpened"));
  projector.handleEvent(event(2, "MoneyAdded"));
  projector.handleEvent(event(3, "MoneyAdded"));
  assert.deepEqual(Object.fromEntries(connection.counts), { AccountOpened: 1, MoneyAdded: 2 });
  assert.equal(connection.statements.length, 3, "one statement per event");
});

test("a database error names the event", () => {
  projector.useConnection(fakeConnection({ tag: "denied", val: "table not declared" }));
  assert.throws(
    () => projector.handleEvent(event(42, "MoneyAdded")),
    (error) => typeof error === "string" && error.startsWith("event 42: ") && error.includes("table not declared"),
  );
});

test("a replay is logged", () => {
  projector.forReplay();
  assert.deepEqual(logged.at(-1), ["debug", "{{name}}: replaying, side effects off"]);
});
