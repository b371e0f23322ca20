//! A hostile guest: it declares the event store itself, `stored_events`, as its table, hoping
//! the host would let it write (or drop and recreate) the history every projector reads.

hostile_common::describe_only!(hostile_common::description(
    "stored-events",
    &[(
        "stored_events",
        &["CREATE TABLE stored_events (id INTEGER PRIMARY KEY)"]
    )]
));
