"""The `{{name}}` projector: counts events per class into `{{ident}}_counts`.

Build with `zdr plugin build` (or `bash build.sh`), then
`zdr projector deploy {{name}} dist/{{ident}}.wasm`.
"""

from typing import List

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import database, types
from wit_world.imports.log import Level, log

CREATE_TABLE = "CREATE TABLE {{ident}}_counts (event_class TEXT PRIMARY KEY, events INTEGER NOT NULL)"
#: Makes sure class `$1` has its row.
ADD_CLASS = (
    "INSERT INTO {{ident}}_counts (event_class, events) VALUES ($1, 0) "
    "ON CONFLICT (event_class) DO NOTHING"
)
#: Counts one event of class `$1`: changes exactly one row.
COUNT_EVENT = "UPDATE {{ident}}_counts SET events = events + 1 WHERE event_class = $1"


# The handle to this instance's target. Keep instance state in the module, not on `self`:
# componentize-py makes a new WitWorld object for every exported call.
_connection = None


class WitWorld(WitWorld):
    """The exported projector."""

    def describe(self) -> types.Description:
        return types.Description(
            name="{{name}}",
            version="1",
            tables=[types.Table(name="{{ident}}_counts", ddl=[CREATE_TABLE])],
            # Empty: every event. List event classes here to receive only those.
            handles=[],
        )

    def use_connection(self, conn: database.Connection) -> None:
        global _connection
        _connection = conn

    def for_replay(self) -> None:
        log(Level.DEBUG, "{{name}}: replaying, side effects off")

    # The host hands events over in order, several per call. A failure names the event by its
    # position in `events`: raise Err(types.EventFailure(index, message)). The host then rolls
    # the call back and runs its events again one at a time, so keep nothing in memory that the
    # tables do not also hold.
    def handle_events(self, events: List[types.Event]) -> None:
        for index, event in enumerate(events):
            try:
                project(event)
            except Err as error:
                raise Err(types.EventFailure(index=index, message=error.value))

    def promote(self) -> None:
        pass

    def remove_target(self) -> None:
        pass


def project(event: types.Event) -> None:
    """Folds one event into the read model; raising Err(message) is its failure."""
    if _connection is None:
        raise Err("use-connection was not called")
    event_class = types.Value_Text(event.event_class)
    try:
        # `send` for a write whose row count is not needed: the host may answer its failure later.
        _connection.send(ADD_CLASS, [event_class])
        # `execute` where the row count is checked.
        changed = _connection.execute(COUNT_EVENT, [event_class])
    except Err as error:
        raise Err(f"event {event.id}: {error.value}")
    if changed != 1:
        raise Err(f"event {event.id}: counted {changed} rows for class {event.event_class}, not 1")
