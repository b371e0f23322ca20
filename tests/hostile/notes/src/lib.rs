//! A valid guest, the projector `notes` owning the table `notes`: it tries no escape itself.
//! The tests use it to prove that a table has one owner (no other projector may declare
//! `notes` once it is deployed), that a table zdr does not manage is never taken over, and
//! that a component is refused when it describes itself under another name than the one given.

hostile_common::describe_only!(hostile_common::description_of(
    "notes",
    "1",
    &[(
        "notes",
        &["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"]
    )]
));
