//! A hostile guest: after a proper CREATE TABLE, its "index" statement is a view over
//! `stored_events`, which would expose the event store (and outlive the swap of clone and live
//! tables) under a name the host does not guard.

hostile_common::describe_only!(hostile_common::description(
    "view",
    &[(
        "notes",
        &[
            "CREATE TABLE notes (id INTEGER PRIMARY KEY)",
            "CREATE VIEW notes_events AS SELECT * FROM stored_events"
        ]
    )]
));
