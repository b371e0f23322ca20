"""Tests of the `{{name}}` projector, run natively with a fake database in place of the host's
connection: `bash test.sh` (or `zdr plugin test`)."""

import unittest
from unittest import mock

from componentize_py_types import Err
from wit_world.imports import types
from wit_world.imports.log import Level

import app


class FakeConnection:
    """Records every statement and keeps the counts the statements stand for. With
    `fail_with` set, every statement fails the way the host reports a database error."""

    def __init__(self, fail_with=None):
        self.statements = []
        self.counts = {}
        self.fail_with = fail_with

    def execute(self, sql, params):
        if self.fail_with is not None:
            raise Err(self.fail_with)
        self.statements.append((sql, params))
        if sql != app.COUNT_EVENT or len(params) != 1 or not isinstance(params[0], types.Value_Text):
            raise AssertionError(f"unexpected statement {sql!r} with {params!r}")
        self.counts[params[0].value] = self.counts.get(params[0].value, 0) + 1
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

    def test_an_event_before_use_connection_is_refused(self):
        with self.assertRaises(Err) as raised:
            self.projector.handle_event(event(1, "MoneyAdded"))
        self.assertIn("use-connection was not called", raised.exception.value)

    def test_describes_its_one_table(self):
        description = self.projector.describe()
        self.assertEqual(description.name, "{{name}}")
        self.assertEqual([table.name for table in description.tables], ["{{ident}}_counts"])
        self.assertEqual(description.tables[0].ddl, [app.CREATE_TABLE])
        self.assertEqual(description.handles, [], "it handles every event")

    def test_counts_each_event_under_its_class(self):
        connection = FakeConnection()
        self.projector.use_connection(connection)
        for id, event_class in [(1, "AccountOpened"), (2, "MoneyAdded"), (3, "MoneyAdded")]:
            self.projector.handle_event(event(id, event_class))
        self.assertEqual(connection.counts, {"AccountOpened": 1, "MoneyAdded": 2})
        self.assertEqual(len(connection.statements), 3, "one statement per event")

    def test_a_database_error_names_the_event(self):
        self.projector.use_connection(FakeConnection(fail_with=types.Error_Denied("table not declared")))
        with self.assertRaises(Err) as raised:
            self.projector.handle_event(event(42, "MoneyAdded"))
        self.assertTrue(raised.exception.value.startswith("event 42: "), raised.exception.value)
        self.assertIn("table not declared", raised.exception.value)

    def test_a_replay_is_logged(self):
        with mock.patch.object(app, "log") as log:
            self.projector.for_replay()
        log.assert_called_once_with(Level.DEBUG, "{{name}}: replaying, side effects off")


if __name__ == "__main__":
    unittest.main()
