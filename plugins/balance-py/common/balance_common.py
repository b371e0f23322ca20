"""What the bank example's events mean, shared by every version of the Python `balance`
projector: the same reading, checks and messages as the Rust `balance-common` crate, so that
both languages fold the same events into the same rows.

Each version (v1/, v2/) owns its table layout and its SQL; this module owns only the reading
of the three events (`AccountOpened`, `MoneyAdded`, `MoneySubtracted`).
"""

import json
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import types

#: The event classes every balance projector handles, by short name.
HANDLED_CLASSES = ["AccountOpened", "MoneyAdded", "MoneySubtracted"]

#: The answer to `handle-events` before the host has handed over a connection.
NO_CONNECTION = "no connection: use-connection was not called"

#: The range of the contract's s64.
_S64_MIN, _S64_MAX = -(2**63), 2**63 - 1


@dataclass
class BalanceEvent:
    """One balance event, parsed and checked."""

    account: str
    kind: str
    #: The holder's name (AccountOpened) or the amount (MoneyAdded, MoneySubtracted).
    value: Union[str, int]


def short_class(event_class: str) -> str:
    """The last segment after a backslash: `App\\Events\\MoneyAdded` is `MoneyAdded`."""
    return event_class.rsplit("\\", 1)[-1]


def parse(event: types.Event) -> Optional[BalanceEvent]:
    """Parses one event, or returns None when its class is not handled.

    Raises `Err(message)` naming the event when a balance event is malformed.
    """
    kind = short_class(event.event_class)
    if kind not in HANDLED_CLASSES:
        return None
    context = f"event {event.id} ({kind})"
    if not event.aggregate_uuid:
        raise Err(f"{context} has no aggregate-uuid (the account id)")
    try:
        properties = json.loads(event.event_properties)
    except ValueError as error:
        raise Err(f"{context}: event-properties is not valid JSON: {error}")
    if not isinstance(properties, dict):
        raise Err(f"{context}: event-properties is not a JSON object")
    try:
        if kind == "AccountOpened":
            value: Union[str, int] = _text_field(properties, "name")
        else:
            value = _integer_field(properties, "amount")
    except ValueError as error:
        raise Err(f"{context}: {error}")
    return BalanceEvent(event.aggregate_uuid, kind, value)


def no_account(account: str, event_id: int) -> str:
    """The error for an update that found no row: the account was never opened."""
    return f"no account {account} for event {event_id}"


def describe_error(error: types.Error) -> str:
    """A one-line account of a database error, with its SQLSTATE where there is one."""
    if isinstance(error, types.Error_Denied):
        return f"denied: {error.value}"
    if isinstance(error, types.Error_LimitExceeded):
        return f"limit exceeded: {error.value}"
    kind = {
        types.Error_InvalidSql: "invalid sql",
        types.Error_Constraint: "constraint",
    }.get(type(error), "database error")
    failure = error.value
    if failure.sqlstate is not None:
        return f"{kind}: {failure.message} (SQLSTATE {failure.sqlstate})"
    return f"{kind}: {failure.message}"


def apply_sent(
    conn,
    events: List[types.Event],
    write: Callable[[types.Event, BalanceEvent], Tuple[str, list]],
) -> None:
    """A call's events applied the pipelined way, for `handle-events`: each handled event's
    write goes out with `send` (the host answers it later where it pipelines, on PostgreSQL),
    then one `flush` returns every write's row count. A deposit or withdrawal whose write
    changed no row refers to an account never opened; the first one fails the call.
    `write(event, parsed)` returns the SQL and parameters of one parsed event.

    A failure, `Err(message)`, becomes the contract's `event-failure`: `Err(EventFailure)`
    naming the event by its position in `events` (for a write whose failure `flush` reported,
    the first one sent: the host then finds the event by giving them one per call). Any other
    exception is left to trap.
    """
    # For each write sent: its event's index and id, and the account a balance change must
    # find (an account opening finds nothing).
    sent: List[Tuple[int, int, Optional[str]]] = []
    if conn is None and events:
        raise Err(types.EventFailure(index=0, message=NO_CONNECTION))
    for index, event in enumerate(events):
        try:
            parsed = parse(event)
            if parsed is None:
                continue
            sql, params = write(event, parsed)
            send(conn, event.id, sql, params)
        except Err as error:
            raise Err(types.EventFailure(index=index, message=error.value))
        must_find = None if parsed.kind == "AccountOpened" else parsed.account
        sent.append((index, event.id, must_find))
    if not sent:
        return
    try:
        counts = conn.flush()
    except Err as error:
        raise Err(types.EventFailure(index=sent[0][0], message=describe_error(error.value)))
    for (index, event_id, account), count in zip(sent, counts):
        if account is not None and count == 0:
            raise Err(types.EventFailure(index=index, message=no_account(account, event_id)))


def send(conn, event_id: int, sql: str, params: list) -> None:
    """Sends one write whose row count is not needed. A database error may come back here or
    from a later statement of the same call; the host then names the event that failed by
    giving the events again one at a time."""
    try:
        conn.send(sql, params)
    except Err as error:
        raise Err(f"event {event_id}: {describe_error(error.value)}")


def _text_field(properties: dict, field: str) -> str:
    if field not in properties:
        raise ValueError(f"missing string field `{field}`")
    value = properties[field]
    if not isinstance(value, str):
        raise ValueError(f"field `{field}` must be a string, got {_json(value)}")
    return value


def _integer_field(properties: dict, field: str) -> int:
    if field not in properties:
        raise ValueError(f"missing integer field `{field}`")
    value = properties[field]
    # bool is an int in Python, not in JSON: refuse it like floats and numeric strings.
    if isinstance(value, bool) or not isinstance(value, int) or not _S64_MIN <= value <= _S64_MAX:
        raise ValueError(
            f"field `{field}` must be an integer in the signed 64-bit range, got {_json(value)}"
        )
    return value


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
