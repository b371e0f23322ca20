"""The bank example's `balance` projector, version 2, in Python: version 1 plus a transaction
count and the time of the last activity per account, and an index by holder's name. The same
table, SQL and behaviour as the Rust `plugins/balance-v2`, so both build byte-identical read
models. Built by `../build.sh v2` with componentize-py.
"""

from typing import List

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import database, types
from wit_world.imports.log import Level, log

import balance_common
from balance_common import execute, send

NAME = "balance"
VERSION = "2"

CREATE_BALANCES = "CREATE TABLE balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL, transaction_count INTEGER NOT NULL DEFAULT 0, last_activity TEXT)"
INDEX_BY_NAME = "CREATE INDEX balances_by_name ON balances (name)"
OPEN_ACCOUNT = "INSERT INTO balances (account_uuid, name, balance, transaction_count, last_activity) VALUES ($1, $2, 0, 0, $3)"
ADD_MONEY = "UPDATE balances SET balance = balance + $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3"
SUBTRACT_MONEY = "UPDATE balances SET balance = balance - $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3"


#: The handle to this instance's target, set once by `use-connection`. Module state, not
#: attributes: componentize-py makes a new `WitWorld` object for every exported call, while
#: the module lives as long as the component instance.
_connection = None
#: Whether this instance replays history into a clone (it has no side effects to skip).
_replaying = False


class WitWorld(WitWorld):
    """The exported projector."""

    def describe(self) -> types.Description:
        return types.Description(
            name=NAME,
            version=VERSION,
            tables=[types.Table(name="balances", ddl=[CREATE_BALANCES, INDEX_BY_NAME])],
            handles=list(balance_common.HANDLED_CLASSES),
        )

    def use_connection(self, conn: database.Connection) -> None:
        global _connection
        _connection = conn

    def for_replay(self) -> None:
        global _replaying
        _replaying = True
        log(Level.DEBUG, "balance v2 (python): replaying, side effects off")

    def handle_events(self, events: List[types.Event]) -> None:
        balance_common.each_event(events, _apply)

    def promote(self) -> None:
        global _replaying
        was_replaying, _replaying = _replaying, False
        log(Level.INFO, f"balance v2 (python): promoted to live (was replaying: {str(was_replaying).lower()})")

    def remove_target(self) -> None:
        log(Level.INFO, "balance v2 (python): target removed")


def _apply(event: types.Event) -> None:
    """Applies one event to the `balances` table; `Err(message)` is its failure."""
    conn = _connection
    if conn is None:
        raise Err(balance_common.NO_CONNECTION)
    parsed = balance_common.parse(event)
    if parsed is None:
        return
    account = types.Value_Text(parsed.account)
    # Every event stamps `last_activity` with the time the event was recorded.
    at = types.Value_Text(event.created_at)
    if parsed.kind == "AccountOpened":
        # Nothing to read back: the write goes without waiting for its answer.
        send(conn, event.id, OPEN_ACCOUNT, [account, types.Value_Text(parsed.value), at])
        return
    sql = ADD_MONEY if parsed.kind == "MoneyAdded" else SUBTRACT_MONEY
    if execute(conn, event.id, sql, [types.Value_Integer(parsed.value), at, account]) == 0:
        raise Err(balance_common.no_account(parsed.account, event.id))
