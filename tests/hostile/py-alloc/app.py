"""A hostile Python guest (`zdr:projector@0.2.0`): records every event it sees in `py_seen`; on
an `Alloc` event it allocates without bound, and on a `Raise` event it raises an uncaught
exception. The host's memory cap must stop it (and a raise is a trap, not a crash), stopping
only this projector.
Built by plugins/build-all.sh (plugins/balance-py/build.sh) into
tests/hostile/target/py/py_alloc.wasm.
"""

from typing import List

from wit_world import WitWorld
from wit_world.imports import types

CREATE = "CREATE TABLE py_seen (event_id INTEGER PRIMARY KEY)"
SEEN = "INSERT INTO py_seen (event_id) VALUES ($1)"


# Module state: componentize-py makes a new WitWorld object for every exported call.
_connection = None
_hoard = []


class WitWorld(WitWorld):
    def describe(self) -> types.Description:
        return types.Description("py-alloc", "1", [types.Table("py_seen", [CREATE])], [])

    def use_connection(self, conn) -> None:
        global _connection
        _connection = conn

    def for_replay(self) -> None:
        pass

    def handle_events(self, events: List[types.Event]) -> None:
        for event in events:
            if event.event_class == "Alloc":
                while True:
                    _hoard.append(bytearray(1 << 20))
            if event.event_class == "Raise":
                raise RuntimeError(f"py-alloc raised on purpose at event {event.id}")
            _connection.execute(SEEN, [types.Value_Integer(event.id)])

    def promote(self) -> None:
        pass

    def remove_target(self) -> None:
        pass
