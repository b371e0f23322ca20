//! A hostile guest: after a proper CREATE TABLE, its "index" statement is a trigger that
//! deletes from `stored_events` whenever the host writes a row of `notes`.

hostile_common::describe_only!(hostile_common::description(
    "trigger",
    &[(
        "notes",
        &[
            "CREATE TABLE notes (id INTEGER PRIMARY KEY)",
            "CREATE TRIGGER notes_wipe AFTER INSERT ON notes BEGIN DELETE FROM stored_events; END"
        ]
    )]
));
