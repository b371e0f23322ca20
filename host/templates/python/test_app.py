"""Tests of the `{{name}}` projector, run natively with a fake database in place of the host's
connection: `bash test.sh` (or `zdr plugin test`)."""

import unittest
from unittest import mock

from componentize_py_types import Err
from wit_world.imports import types
from wit_world.imports.log import Level

import app


class FakeConnection:
    """Records every statement and keeps the rows the statements stand for. A statement about
    class `fail_class` fails the way the host reports a database error, `fail_with`."""

    def __init__(self, fail_class=None, fail_with=None):
        self.statements = []
        self.counts = {}
        self.fail_class = fail_class
        self.fail_with = fail_with

    def send(self, sql, params):
        self._run("send", sql, params)

    def execute(self, sql, params):
        return self._run("execute", sql, params)

    def _run(self, kind, sql, params):
        if len(params) != 1 or not isinstance(params[0], types.Value_Text):
            raise AssertionError(f"unexpected parameters {params!r}")
        event_class = params[0].value
        if event_class == self.fail_class:
            raise Err(self.fail_with)
        self.statements.append((kind, sql, params))
        if sql == app.ADD_CLASS:
            self.counts.setdefault(event_class, 0)
            return 1
        if sql != app.COUNT_EVENT:
            raise AssertionError(f"unexpected statement {sql!r}")
        if event_class not in self.counts:
            return 0
        self.counts[event_class] += 1
        return 1


def event(id, event_class):
    return types.Event(
        id=id,
        aggregate_uuid="11111111-2222-3333-4444-555555555555",
        aggregate_version=id,
        event_version=1,
        event_class=event_class,
        event_properties="{}",
        meta_data="{}",
        created_at="2026-01-01 00:00:00",
    )


class ProjectorTest(unittest.TestCase):
    def setUp(self):
        app._connection = None
        self.projector = app.WitWorld()

    def assert_fails(self, events, index, message_start):
        """`handle_events(events)` fails with the contract's `event-failure`."""
        with self.assertRaises(Err) as raised:
            self.projector.handle_events(events)
        failure = raised.exception.value
        self.assertIsInstance(failure, types.EventFailure)
        self.assertEqual(failure.index, index, failure)
        self.assertTrue(failure.message.startswith(message_start), failure)
        return failure

    def test_an_event_before_use_connection_is_refused(self):
        self.assert_fails([event(1, "MoneyAdded")], 0, "use-connection was not called")

    def test_describes_its_one_table(self):
        description = self.projector.describe()
        self.assertEqual(description.name, "{{name}}")
        self.assertEqual([table.name for table in description.tables], ["{{ident}}_counts"])
        self.assertEqual(description.tables[0].ddl, [app.CREATE_TABLE])
        self.assertEqual(description.handles, [], "it handles every event")

    def test_counts_each_event_under_its_class(self):
        connection = FakeConnection()
        self.projector.use_connection(connection)
        self.projector.handle_events([event(1, "AccountOpened"), event(2, "MoneyAdded")])
        self.projector.handle_events([event(3, "MoneyAdded")])
        self.assertEqual(connection.counts, {"AccountOpened": 1, "MoneyAdded": 2})
        self.assertEqual(
            [kind for kind, _, _ in connection.statements],
            ["send", "execute"] * 3,
            "a send and an execute per event",
        )

    def test_a_database_error_names_the_event_and_its_position(self):
        self.projector.use_connection(
            FakeConnection(fail_class="Broken", fail_with=types.Error_Denied("table not declared"))
        )
        failure = self.assert_fails(
            [event(41, "MoneyAdded"), event(42, "Broken"), event(43, "MoneyAdded")], 1, "event 42: "
        )
        self.assertIn("table not declared", failure.message)

    def test_a_replay_is_logged(self):
        with mock.patch.object(app, "log") as log:
            self.projector.for_replay()
        log.assert_called_once_with(Level.DEBUG, "{{name}}: replaying, side effects off")


if __name__ == "__main__":
    unittest.main()
