//! A hostile guest: it declares table `notes`, but its DDL creates `other`, a table the host
//! would neither own nor guard.

hostile_common::describe_only!(hostile_common::description(
    "ddl-mismatch",
    &[("notes", &["CREATE TABLE other (id INTEGER PRIMARY KEY)"])]
));
