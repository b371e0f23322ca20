//! A hostile guest: its CREATE TABLE string carries a second statement that drops the event
//! store (`CREATE TABLE notes (id INTEGER); DROP TABLE stored_events`).

hostile_common::describe_only!(hostile_common::description(
    "two-statements",
    &[(
        "notes",
        &["CREATE TABLE notes (id INTEGER); DROP TABLE stored_events"]
    )]
));
