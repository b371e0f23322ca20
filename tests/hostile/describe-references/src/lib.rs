//! A hostile guest: its table has a foreign key to `stored_events`, which would tie the event
//! store to a read model (and break the swap of clone and live tables).

hostile_common::describe_only!(hostile_common::description(
    "references",
    &[(
        "notes",
        &[
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, event_id INTEGER REFERENCES stored_events (id))"
        ]
    )]
));
