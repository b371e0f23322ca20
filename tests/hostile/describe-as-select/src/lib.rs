//! A hostile guest: its table is created `AS SELECT` from `stored_events`, reading the event
//! store at set-up time, outside any handled event.

hostile_common::describe_only!(hostile_common::description(
    "as-select",
    &[(
        "notes",
        &["CREATE TABLE notes AS SELECT * FROM stored_events"]
    )]
));
