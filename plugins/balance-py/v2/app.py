"""The bank example's `balance` projector, version 2, in Python: version 1 plus a transaction
count and the time of the last activity per account, and an index by holder's name. The same
table, SQL and behaviour as the Rust `plugins/balance-v2`, so both build byte-identical read
models. Built by `../build.sh v2` with componentize-py.
"""

from typing import List, Tuple

from wit_world import WitWorld
from wit_world.imports import database, types
from wit_world.imports.log import Level, log

import balance_common

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

    def partition_by(self) -> List[Tuple[str, str]]:
        # Every row this projector writes for an event is that event's account's, and no event
        # reads another account's row: a replay may split history by account.
        return [("balances", "account_uuid")]

    def use_connection(self, conn: database.Connection) -> None:
        global _connection
        _connection = conn

    def for_replay(self) -> None:
        global _replaying
        _replaying = True
        log(Level.DEBUG, "balance v2 (python): replaying, side effects off")

    def handle_events(self, events: List[types.Event]) -> None:
        # Sends the writes of every event without waiting, then flushes once: the host runs
        # them in one round trip where it pipelines (PostgreSQL). The row counts then show a
        # deposit or withdrawal whose account did not exist, and the first one names its event.
        balance_common.apply_sent(_connection, events, _write)

    def promote(self) -> None:
        global _replaying
        was_replaying, _replaying = _replaying, False
        log(Level.INFO, f"balance v2 (python): promoted to live (was replaying: {str(was_replaying).lower()})")

    def remove_target(self) -> None:
        log(Level.INFO, "balance v2 (python): target removed")


def _write(event: types.Event, parsed: balance_common.BalanceEvent) -> Tuple[str, list]:
    """The write of one parsed event to the `balances` table."""
    account = types.Value_Text(parsed.account)
    # Every event stamps `last_activity` with the time the event was recorded.
    at = types.Value_Text(event.created_at)
    if parsed.kind == "AccountOpened":
        return OPEN_ACCOUNT, [account, types.Value_Text(parsed.value), at]
    sql = ADD_MONEY if parsed.kind == "MoneyAdded" else SUBTRACT_MONEY
    return sql, [types.Value_Integer(parsed.value), at, account]
