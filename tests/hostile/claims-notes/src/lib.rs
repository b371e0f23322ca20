//! A hostile guest: the `balance` projector in a version that also claims the table `notes`,
//! which belongs to another projector or exists in the database without zdr managing it.

hostile_common::describe_only!(hostile_common::description(
    "claims-notes",
    &[
        (
            "balances",
            &[
                "CREATE TABLE balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)"
            ]
        ),
        (
            "notes",
            &["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"]
        )
    ]
));
