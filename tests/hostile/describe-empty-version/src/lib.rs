//! A broken guest: `describe` returns an empty version, which the host could not record or
//! show; it must be refused as an invalid description.

hostile_common::describe_only!(hostile_common::description(
    "",
    &[("notes", &["CREATE TABLE notes (id INTEGER PRIMARY KEY)"])]
));
