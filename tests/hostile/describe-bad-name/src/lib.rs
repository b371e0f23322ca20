//! A hostile guest: its table name is a schema-qualified, quoted identifier
//! (`main."Notes"`), hoping to slip past the host's name checks and rewriting.

hostile_common::describe_only!(hostile_common::description(
    "bad-name",
    &[(
        "main.\"Notes\"",
        &["CREATE TABLE main.\"Notes\" (id INTEGER PRIMARY KEY)"]
    )]
));
