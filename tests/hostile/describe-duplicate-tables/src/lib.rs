//! A broken guest: it declares table `notes` twice (the second time in capitals), so two
//! declarations would fight over one physical table.

hostile_common::describe_only!(hostile_common::description(
    "duplicate-tables",
    &[
        ("notes", &["CREATE TABLE notes (id INTEGER PRIMARY KEY)"]),
        ("NOTES", &["CREATE TABLE NOTES (id INTEGER PRIMARY KEY)"])
    ]
));
