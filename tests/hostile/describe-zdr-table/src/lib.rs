//! A hostile guest: it declares the host's own `zdr_targets` as its table, hoping to take over
//! the host's bookkeeping (checkpoints, roles).

hostile_common::describe_only!(hostile_common::description(
    "zdr-table",
    &[(
        "zdr_targets",
        &["CREATE TABLE zdr_targets (id INTEGER PRIMARY KEY)"]
    )]
));
