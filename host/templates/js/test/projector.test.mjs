// Tests of the `{{name}}` projector under Node, with a fake database in place of the host's
// connection: `node --test test/projector.test.mjs test/json.test.mjs` (or `zdr plugin test`).
import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register("./wit-hooks.mjs", import.meta.url);
const projector = await import("../projector.js");
const { logged } = await import("zdr:projector/log@0.2.0");

// A connection that records every statement and keeps the rows the statements stand for.
// A statement about class `failClass` fails the way the host reports a database error.
function fakeConnection({ failClass = null, failWith = null } = {}) {
  const statements = [];
  const counts = new Map();
  const run = (kind, sql, params) => {
    assert.equal(params.length, 1);
    assert.equal(params[0].tag, "text");
    const eventClass = params[0].val;
    if (eventClass === failClass) {
      throw Object.assign(new Error("database error"), { payload: failWith });
    }
    statements.push([kind, sql, params]);
    if (/^INSERT INTO {{ident}}_counts .* DO NOTHING$/.test(sql)) {
      counts.set(eventClass, counts.get(eventClass) ?? 0);
      return 1n;
    }
    assert.match(sql, /^UPDATE {{ident}}_counts SET events = events \+ 1 /, `unexpected statement ${sql}`);
    if (!counts.has(eventClass)) {
      return 0n;
    }
    counts.set(eventClass, counts.get(eventClass) + 1);
    return 1n;
  };
  return {
    statements,
    counts,
    send(sql, params) {
      run("send", sql, params);
    },
    execute(sql, params) {
      return run("execute", sql, params);
    },
  };
}

function event(id, eventClass, eventProperties = "{}") {
  return {
    id: BigInt(id),
    aggregateUuid: "11111111-2222-3333-4444-555555555555",
    aggregateVersion: BigInt(id),
    eventVersion: 1n,
    eventClass,
    eventProperties,
    metaData: "{}",
    createdAt: "2026-01-01 00:00:00",
  };
}

// `handleEvents` fails with the contract's `event-failure`: `{ index, message }`.
function failure(index, message) {
  return (error) => {
    assert.equal(error.index, index, `index of ${JSON.stringify(error)}`);
    assert.match(error.message, message);
    return true;
  };
}

// First: the module's connection is still unset here.
test("an event before use-connection is refused", () => {
  assert.throws(() => projector.handleEvents([event(1, "MoneyAdded")]), failure(0, /use-connection was not called/));
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
  projector.handleEvents([event(1, "AccountOpened"), event(2, "MoneyAdded")]);
  projector.handleEvents([event(3, "MoneyAdded")]);
  assert.deepEqual(Object.fromEntries(connection.counts), { AccountOpened: 1, MoneyAdded: 2 });
  assert.deepEqual(
    connection.statements.map(([kind]) => kind),
    ["send", "execute", "send", "execute", "send", "execute"],
    "a send and an execute per event",
  );
});

test("a database error names the event and its position", () => {
  projector.useConnection(fakeConnection({ failClass: "Broken", failWith: { tag: "denied", val: "table not declared" } }));
  assert.throws(
    () => projector.handleEvents([event(41, "MoneyAdded"), event(42, "Broken"), event(43, "MoneyAdded")]),
    failure(1, /^event 42: .*table not declared/),
  );
});

test("a payload that is not a JSON object fails its event", () => {
  projector.useConnection(fakeConnection());
  assert.throws(
    () => projector.handleEvents([event(1, "MoneyAdded"), event(2, "MoneyAdded", "{")]),
    failure(1, /^event 2: event-properties is not JSON/),
  );
  assert.throws(
    () => projector.handleEvents([event(3, "MoneyAdded", "[]")]),
    failure(0, /^event 3: event-properties is not a JSON object/),
  );
});

test("a replay is logged", () => {
  projector.forReplay();
  assert.deepEqual(logged.at(-1), ["debug", "{{name}}: replaying, side effects off"]);
});
