"""The `{{name}}` projector: counts events per class into `{{ident}}_counts`.

Build with `zdr plugin build` (or `bash build.sh`), then
`zdr projector deploy {{name}} dist/{{ident}}.wasm`.
"""

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import database, types
from wit_world.imports.log import Level, log

CREATE_TABLE = "CREATE TABLE {{ident}}_counts (event_class TEXT PRIMARY KEY, events INTEGER NOT NULL)"
COUNT_EVENT = (
    "INSERT INTO {{ident}}_counts (event_class, events) VALUES ($1, 1) "
    "ON CONFLICT (event_class) DO UPDATE SET events = events + 1"
)


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

    # Raising Err(message) is the error the host records for this event.
    def handle_event(self, event: types.Event) -> None:
        if _connection is None:
            raise Err("use-connection was not called")
        try:
            _connection.execute(COUNT_EVENT, [types.Value_Text(event.event_class)])
        except Err as error:
            raise Err(f"event {event.id}: {error.value}")

    def promote(self) -> None:
        pass

    def remove_target(self) -> None:
        pass
