// What the bank example's events mean, shared by every version of the JavaScript `balance`
// projector: the same reading, checks and messages as the Rust `balance-common` crate, so
// that both languages fold the same events into the same rows.
//
// Each version (v1/, v2/) owns its table layout and its SQL; this module owns only the
// reading of the three events (`AccountOpened`, `MoneyAdded`, `MoneySubtracted`).

/** The event classes every balance projector handles, by short name. */
export const HANDLED_CLASSES = ["AccountOpened", "MoneyAdded", "MoneySubtracted"];

/** The answer to `handle-events` before the host has handed over a connection. */
export const NO_CONNECTION = "no connection: use-connection was not called";

/**
 * The short name of an event class: the last segment after a backslash, so that the PHP
 * class name `App\Events\MoneyAdded` and a bare `MoneyAdded` name the same event.
 */
export function shortClass(eventClass) {
  const at = eventClass.lastIndexOf("\\");
  return at < 0 ? eventClass : eventClass.slice(at + 1);
}

/**
 * Parses one event into `{ account, kind, name | amount }`, or `null` when its class is not
 * handled. Throws a message naming the event when a balance event is malformed.
 *
 * Amounts are returned as BigInt (the contract's s64). JavaScript numbers hold integers
 * exactly only up to 2^53, so an amount beyond that is refused rather than rounded.
 */
export function parse(event) {
  const kind = shortClass(event.eventClass);
  if (!HANDLED_CLASSES.includes(kind)) {
    return null;
  }
  const context = `event ${event.id} (${kind})`;
  const account = event.aggregateUuid;
  if (account === undefined || account === null || account === "") {
    throw `${context} has no aggregate-uuid (the account id)`;
  }
  let properties;
  try {
    properties = JSON.parse(event.eventProperties);
  } catch (error) {
    throw `${context}: event-properties is not valid JSON: ${error.message}`;
  }
  if (properties === null || typeof properties !== "object" || Array.isArray(properties)) {
    throw `${context}: event-properties is not a JSON object`;
  }
  try {
    if (kind === "AccountOpened") {
      return { account, kind, name: textField(properties, "name") };
    }
    return { account, kind, amount: integerField(properties, "amount") };
  } catch (message) {
    throw `${context}: ${message}`;
  }
}

/** The error for an update that found no row: the event refers to an account never opened. */
export function noAccount(account, eventId) {
  return `no account ${account} for event ${eventId}`;
}

/** A one-line account of a database error (the contract's `error` variant). */
export function describeError(error) {
  const payload = error && error.payload !== undefined ? error.payload : error;
  if (!payload || typeof payload.tag !== "string") {
    return String(error);
  }
  const kinds = {
    denied: "denied",
    "limit-exceeded": "limit exceeded",
    "invalid-sql": "invalid sql",
    constraint: "constraint",
    other: "database error",
  };
  const kind = kinds[payload.tag] ?? payload.tag;
  if (typeof payload.val === "string") {
    return `${kind}: ${payload.val}`;
  }
  const { message, sqlstate } = payload.val;
  return sqlstate ? `${kind}: ${message} (SQLSTATE ${sqlstate})` : `${kind}: ${message}`;
}

/**
 * A call's events applied the pipelined way, for `handle-events`: each handled event's write
 * goes out with `send` (the host answers it later where it pipelines, on PostgreSQL), then one
 * `flush` returns every write's row count. A deposit or withdrawal whose write changed no row
 * refers to an account never opened; the first one fails the call. `write(event, parsed)`
 * returns `[sql, params]` for one parsed event.
 *
 * A failure becomes the contract's `event-failure`, naming the event by its position in
 * `events` (for a write whose failure `flush` reported, the first one sent: the host then
 * finds the event by giving them one per call). The generated export turns a thrown plain
 * object into the `err` payload.
 */
export function applySent(conn, events, write) {
  // For each write sent: its event's index and id, and the account a balance change must find
  // (an account opening finds nothing).
  const sent = [];
  if (conn === null && events.length > 0) {
    throw { index: 0, message: NO_CONNECTION };
  }
  events.forEach((event, index) => {
    try {
      const parsed = parse(event);
      if (parsed === null) {
        return;
      }
      const [sql, params] = write(event, parsed);
      send(conn, event.id, sql, params);
      sent.push([index, event.id, parsed.kind === "AccountOpened" ? null : parsed.account]);
    } catch (error) {
      throw { index, message: messageOf(error) };
    }
  });
  if (sent.length === 0) {
    return;
  }
  let counts;
  try {
    counts = conn.flush();
  } catch (error) {
    throw { index: sent[0][0], message: describeError(error) };
  }
  sent.forEach(([index, id, account], i) => {
    if (account !== null && counts[i] === 0n) {
      throw { index, message: noAccount(account, id) };
    }
  });
}

/** The message of a failure thrown as a string, or of an unexpected `Error`. */
function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Sends one write whose row count is not needed. A database error may come back here or from a
 * later statement of the same call; the host then names the event that failed by giving the
 * events again one at a time.
 */
export function send(conn, eventId, sql, params) {
  try {
    conn.send(sql, params);
  } catch (error) {
    throw `event ${eventId}: ${describeError(error)}`;
  }
}

/** A text parameter. */
export function text(value) {
  return { tag: "text", val: value };
}

/** An integer parameter (a BigInt, the contract's s64). */
export function integer(value) {
  return { tag: "integer", val: value };
}

function textField(properties, field) {
  if (!Object.hasOwn(properties, field)) {
    throw `missing string field \`${field}\``;
  }
  const value = properties[field];
  if (typeof value !== "string") {
    throw `field \`${field}\` must be a string, got ${JSON.stringify(value)}`;
  }
  return value;
}

function integerField(properties, field) {
  if (!Object.hasOwn(properties, field)) {
    throw `missing integer field \`${field}\``;
  }
  const value = properties[field];
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw `field \`${field}\` must be an integer in the signed 64-bit range, got ${JSON.stringify(value)}`;
  }
  return BigInt(value);
}
