//! Tests of the PostgreSQL backend against the server of the tests (`ZDR_TEST_POSTGRES_URL`,
//! default the local one); they fail, never skip, when it is unreachable.

use super::*;
use crate::backend::testing::{TestDatabase, one_table_target};
use crate::model::Role;

const INSERT: &str = "INSERT INTO stored_events (event_class, event_properties, meta_data, created_at) \
                      VALUES ('E', '{}', '{}', localtimestamp)";

#[test]
fn the_head_never_passes_an_insert_still_in_flight() {
    let test = TestDatabase::new("inflight");
    let store = super::super::Db::open(&test.url()).expect("open");
    store.init().expect("init");
    let (mut a, mut b) = (test.connect(), test.connect());
    // A draws id 1 and stays open; B draws id 2 and commits first.
    test.exec(&mut a, &format!("BEGIN; {INSERT}"));
    test.exec(&mut b, INSERT);
    assert_eq!(
        store.head().expect("head"),
        0,
        "id 2 is visible but 1 may still commit"
    );
    assert_eq!(
        store.head().expect("head"),
        0,
        "still held after the confirmation"
    );
    test.exec(&mut a, "COMMIT");
    assert_eq!(store.head().expect("head"), 2);
    let ids: Vec<i64> = store
        .read_events(0, 2, 10)
        .expect("read")
        .iter()
        .map(ReadEvent::id)
        .collect();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn a_rolled_back_id_is_passed_once_its_transaction_ended() {
    let test = TestDatabase::new("rollback");
    let store = super::super::Db::open(&test.url()).expect("open");
    store.init().expect("init");
    let (mut a, mut b) = (test.connect(), test.connect());
    test.exec(&mut a, &format!("BEGIN; {INSERT}"));
    test.exec(&mut b, INSERT);
    test.exec(&mut b, INSERT);
    assert_eq!(store.head().expect("head"), 0);
    test.exec(&mut a, "ROLLBACK");
    // The gap at 1 is final now. Transaction ids are cluster-wide, so a transaction of a
    // test running beside this one can hold the horizon back for a moment: look again
    // until the head moves, and check where it lands.
    let settles = |store: &super::super::Db| {
        (0..600)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                store.head().expect("head")
            })
            .find(|head| *head != 0)
    };
    assert_eq!(settles(&store), Some(3));
    // A fresh reader meets the old gap and passes it, never stopping short of it.
    let fresh = super::super::Db::open(&test.url()).expect("open");
    assert_eq!(settles(&fresh), Some(3));
}

#[test]
fn writes_roll_back_and_tables_move_between_schemas() {
    let test = TestDatabase::new("tables");
    let db = super::super::Db::open(&test.url()).expect("open");
    db.init().expect("init");
    db.ensure_ready().expect("ready");
    let (clone, description) = one_table_target(
        &db,
        "items",
        &[
            "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
            "CREATE INDEX items_by_n ON items (n)",
        ],
        Role::Clone,
    );
    assert!(db.object_exists("zdr_r_k1.items").expect("exists"));
    let mut guest = db.guest_connection(&clone, &description);
    let call = || crate::backend::Call {
        deadline: Instant::now() + Duration::from_secs(30),
    };
    let refused = guest
        .execute(
            "INSERT INTO items (id, n) VALUES ($1, $2)",
            &[Value::Text("a".into()), Value::Null],
            call(),
        )
        .expect_err("NOT NULL holds");
    // The failure is remembered: PostgreSQL aborts a transaction at its first failure.
    assert_eq!(guest.take_aborted(), Some(refused));
    guest
        .execute(
            "INSERT INTO items (id, n) VALUES ($1, $2)",
            &[Value::Text("a".into()), Value::Integer(7)],
            call(),
        )
        .expect("insert");
    // The same statement with a NULL first and a number after, and a real number where an
    // integer came first: each value reaches the server as what it is.
    guest
        .execute(
            "UPDATE items SET n = $1 WHERE id = $2",
            &[Value::Real(7.0), Value::Text("a".into())],
            call(),
        )
        .expect("update with a real");
    guest
        .execute(
            "UPDATE items SET n = $1 WHERE id = $2",
            &[Value::Integer(7), Value::Text("a".into())],
            call(),
        )
        .expect("update with an integer");
    let rows = guest
        .query("SELECT id, n FROM items", &[], call())
        .expect("query");
    assert_eq!(
        rows.rows,
        vec![vec![Value::Text("a".into()), Value::Integer(7)]]
    );
    // A write with RETURNING is a query too, through the same row cap.
    let returned = guest
        .query(
            "INSERT INTO items (id, n) VALUES ($1, $2) RETURNING id, n",
            &[Value::Text("b".into()), Value::Integer(8)],
            call(),
        )
        .expect("insert returning");
    assert_eq!(returned.columns, ["id", "n"]);
    assert_eq!(
        returned.rows,
        vec![vec![Value::Text("b".into()), Value::Integer(8)]]
    );
    let sorted = guest
        .query("SELECT n FROM items ORDER BY n DESC", &[], call())
        .expect("ordered query");
    assert_eq!(
        sorted.rows,
        vec![vec![Value::Integer(8)], vec![Value::Integer(7)]]
    );
    let refused = guest
        .query("SELECT format('%5000000s', id) FROM items", &[], call())
        .expect_err("a row over the cap");
    assert!(matches!(&refused, DbError::LimitExceeded(m) if m.contains("longer than the limit")));
    assert_eq!(guest.take_aborted(), Some(refused));
    guest
        .execute(
            "DELETE FROM items WHERE id = $1",
            &[Value::Text("b".into())],
            call(),
        )
        .expect("delete");
    assert!(matches!(
        guest.query("SELECT * FROM pg_catalog.pg_class", &[], call()),
        Err(DbError::Denied(_))
    ));
    db.write(|db| {
        db.rename_tables(&clone, &description, Role::Live, None)?;
        db.set_role(clone.id, Role::Live, None)
    })
    .expect("promote");
    assert!(db.object_exists("items").expect("exists"));
    assert!(!db.object_exists("zdr_r_k1.items").expect("exists"));
    let rows = db.read_rows("SELECT n FROM items").expect("rows");
    assert_eq!(rows.rows, vec![vec![Value::Integer(7)]]);
    let failed: Result<(), StoreError> = db.write(|db| {
        db.set_checkpoint(clone.id, 99)?;
        Err(StoreError::Corrupt("abort".into()))
    });
    assert!(failed.is_err());
    assert_eq!(
        db.target(clone.id)
            .expect("target")
            .expect("row")
            .checkpoint,
        0
    );
}

#[test]
fn the_schema_comes_off_the_url() {
    assert_eq!(
        split_schema("postgres://u@h/db").unwrap(),
        ("postgres://u@h/db".into(), "public".into())
    );
    assert_eq!(
        split_schema("postgres://u@h/db?schema=app&sslmode=disable").unwrap(),
        ("postgres://u@h/db?sslmode=disable".into(), "app".into())
    );
    assert!(split_schema("postgres://u@h/db?schema=Bad-Name").is_err());
    assert!(split_schema("postgres://u@h/db?schema=pg_catalog").is_err());
}

#[test]
fn passwords_never_show() {
    assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
}

#[test]
fn lock_keys_are_stable_and_distinct() {
    assert_eq!(lock_key("projector-a"), lock_key("projector-a"));
    assert_ne!(lock_key("projector-a"), lock_key("projector-b"));
}

/// A database with one live target of a projector `t` whose table is made by `ddl`, and a
/// guest connection bound to it (outside any transaction: each round trip commits).
fn guest_on(
    name: &str,
    table: &str,
    ddl: &str,
) -> (
    TestDatabase,
    super::super::Db,
    Box<dyn crate::backend::GuestConnection>,
) {
    let test = TestDatabase::new(name);
    let db = super::super::Db::open(&test.url()).expect("open");
    db.init().expect("init");
    db.ensure_ready().expect("ready");
    let (live, description) = one_table_target(&db, table, &[ddl], Role::Live);
    let guest = db.guest_connection(&live, &description);
    (test, db, guest)
}

fn call() -> crate::backend::Call {
    crate::backend::Call {
        deadline: Instant::now() + Duration::from_secs(30),
    }
}

#[test]
fn sent_writes_run_in_order_and_flush_answers_their_row_counts() {
    let (_test, _db, mut guest) = guest_on(
        "pipeline",
        "items",
        "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    );
    let text = |t: &str| Value::Text(t.into());
    let insert = "INSERT INTO items (id, n) VALUES ($1, $2)";
    let add = "UPDATE items SET n = n + $1 WHERE id = $2";
    guest
        .send(insert, &[text("a"), Value::Integer(1)], call())
        .expect("queued");
    guest
        .send(add, &[Value::Integer(2), text("a")], call())
        .expect("queued");
    guest
        .send(add, &[Value::Integer(2), text("nobody")], call())
        .expect("queued");
    // A statement that waits for its answer runs after the writes sent before it.
    assert_eq!(
        guest
            .execute(add, &[Value::Integer(10), text("a")], call())
            .expect("execute"),
        1
    );
    guest
        .send(insert, &[text("b"), Value::Integer(5)], call())
        .expect("queued");
    let rows = guest
        .query("SELECT id, n FROM items ORDER BY id", &[], call())
        .expect("query");
    assert_eq!(
        rows.rows,
        vec![
            vec![text("a"), Value::Integer(13)],
            vec![text("b"), Value::Integer(5)]
        ]
    );
    // The counts of the sent writes only, in the order sent; the next flush starts empty.
    assert_eq!(guest.flush(call()).expect("flush"), [1, 1, 0, 1]);
    assert_eq!(guest.flush(call()).expect("flush"), Vec::<u64>::new());

    // More writes than one round trip takes, through more statements than stay prepared.
    let many = super::guest::MAX_QUEUED_WRITES * 2 + 7;
    for i in 0..many {
        guest
            .send(insert, &[text(&format!("k{i}")), Value::Integer(0)], call())
            .expect("queued");
    }
    for k in 0..200 {
        let distinct = format!("UPDATE items SET n = n + {k} WHERE id = $1");
        guest
            .send(&distinct, &[text(&format!("k{k}"))], call())
            .expect("queued");
    }
    let counts = guest.flush(call()).expect("flush");
    assert_eq!(counts.len(), many + 200);
    assert!(counts.iter().all(|&c| c == 1), "{counts:?}");
    let total = guest
        .query(
            "SELECT CAST(SUM(n) AS BIGINT) FROM items WHERE id LIKE 'k%'",
            &[],
            call(),
        )
        .expect("sum");
    assert_eq!(total.rows, vec![vec![Value::Integer((0..200).sum())]]);
    assert_eq!(guest.take_aborted(), None);
}

#[test]
fn every_value_a_sent_write_binds_arrives_exactly() {
    let (_test, _db, mut guest) = guest_on(
        "literals",
        "vals",
        "CREATE TABLE vals (k INTEGER PRIMARY KEY, t TEXT, b BYTEA, r DOUBLE PRECISION, \
         i BIGINT, o BOOLEAN)",
    );
    let insert = "INSERT INTO vals (k, t, b, r, i, o) VALUES ($1, $2, $3, $4, $5, $6)";
    let tricky = [
        "it's",
        "back\\slash \\x00 \\'",
        "E'x' ; DROP TABLE vals; --",
        "$1 $$ /* */ \u{2603} \u{1F600}",
        "",
        "line\nbreak\ttab\r",
    ];
    let reals = [
        0.1,
        -0.0,
        1e300,
        -2.5e-308,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let ints = [i64::MIN, i64::MAX, 0, -1, 42];
    let mut expected = Vec::new();
    for k in 0..8_i64 {
        let idx = k as usize;
        let row = vec![
            Value::Integer(k),
            tricky
                .get(idx)
                .map_or(Value::Null, |t| Value::Text((*t).into())),
            Value::Blob((0..=255u8).cycle().skip(idx * 31).take(idx * 40).collect()),
            Value::Real(reals[idx]),
            ints.get(idx).map_or(Value::Null, |i| Value::Integer(*i)),
            if k % 3 == 2 {
                Value::Null
            } else {
                Value::Boolean(k % 2 == 0)
            },
        ];
        guest.send(insert, &row, call()).expect("queued");
        expected.push(row);
    }
    assert_eq!(guest.flush(call()).expect("flush"), [1; 8]);
    // Read back through the extended protocol, which binds nothing as text.
    let rows = guest
        .query("SELECT k, t, b, r, i, o FROM vals ORDER BY k", &[], call())
        .expect("query");
    for (got, want) in rows.rows.iter().zip(&expected) {
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (Value::Integer(a), Value::Integer(b)) => assert_eq!(a, b),
                (Value::Real(a), Value::Real(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                (a, b) => assert_eq!(a, b),
            }
        }
    }
    assert_eq!(rows.rows.len(), expected.len());
    // NaN reads back as NaN.
    guest
        .send(
            "UPDATE vals SET r = $1 WHERE k = 0",
            &[Value::Real(f64::NAN)],
            call(),
        )
        .expect("queued");
    guest.flush(call()).expect("flush");
    let nan = guest
        .query("SELECT r FROM vals WHERE k = 0", &[], call())
        .expect("query");
    assert!(matches!(nan.rows[0][0], Value::Real(r) if r.is_nan()));
    // Text with a NUL byte is refused at once, as the server refuses it as a parameter.
    let refused = guest
        .send(
            insert,
            &[
                Value::Integer(99),
                Value::Text("a\0b".into()),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
            call(),
        )
        .expect_err("NUL in text");
    assert!(
        matches!(&refused, DbError::InvalidSql { sqlstate: Some(s), .. } if s == "22021"),
        "{refused}"
    );
}

#[test]
fn a_sent_write_that_fails_fails_the_flush_or_the_end_of_the_call() {
    let (_test, db, mut guest) = guest_on(
        "pipeline_fail",
        "items",
        "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    );
    let insert = "INSERT INTO items (id, n) VALUES ($1, $2)";
    let text = |t: &str| Value::Text(t.into());
    // Invalid SQL is caught when the statement is prepared: at the send itself.
    let err = guest
        .send(
            "UPDATE items SET nope = 1 WHERE id = $1",
            &[text("a")],
            call(),
        )
        .expect_err("no such column");
    assert!(matches!(&err, DbError::InvalidSql { .. }), "{err}");
    assert_eq!(guest.take_aborted(), Some(err));

    guest
        .send(insert, &[text("a"), Value::Integer(1)], call())
        .expect("queued");
    guest
        .send(insert, &[text("a"), Value::Integer(2)], call())
        .expect("queued: the duplicate is only found when it runs");
    let err = guest.flush(call()).expect_err("duplicate key");
    assert!(matches!(&err, DbError::Constraint { .. }), "{err}");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    assert_eq!(guest.take_aborted(), Some(err));

    // A failure nobody flushed is kept at the end of the call, for the projection to see.
    guest
        .send(insert, &[text("c"), Value::Null], call())
        .expect("queued");
    guest.end_call(call());
    let err = guest.take_aborted().expect("the NOT NULL failure");
    assert!(err.to_string().contains("not-null"), "{err}");

    // A reconnect between the send and its flush: the queued write belonged to the lost
    // connection's transaction and never runs on the new one.
    guest
        .send(insert, &[text("d"), Value::Integer(4)], call())
        .expect("queued");
    db.reconnect().expect("reconnect");
    let err = guest.flush(call()).expect_err("connection lost");
    assert!(err.is_connection_lost(), "{err}");
    guest.take_aborted();
    // Outside a transaction, each flush is one of its own: the duplicate took the first
    // insert with it, and nothing else ever ran.
    let rows = db
        .read_rows("SELECT id FROM items ORDER BY id")
        .expect("rows");
    assert_eq!(rows.rows, Vec::<Vec<Value>>::new());
    // The new connection prepares the statement again.
    guest
        .send(insert, &[text("e"), Value::Integer(5)], call())
        .expect("queued");
    assert_eq!(guest.flush(call()).expect("flush"), [1]);
}

/// Invariant 8 for pipelined writes: a queued write still running at the call's deadline
/// (here waiting on a row another session holds) is stopped there, at the flush or at the end
/// of the call, and the connection is usable afterwards.
#[test]
fn a_queued_write_past_the_deadline_is_stopped_at_it() {
    let (test, _db, mut guest) = guest_on(
        "pipeline_deadline",
        "items",
        "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    );
    let text = |t: &str| Value::Text(t.into());
    guest
        .send(
            "INSERT INTO items (id, n) VALUES ($1, $2)",
            &[text("a"), Value::Integer(1)],
            call(),
        )
        .expect("queued");
    assert_eq!(guest.flush(call()).expect("flush"), [1]);
    // Another session holds the row until it commits.
    let mut holder = test.connect();
    test.exec(&mut holder, "BEGIN");
    test.exec(&mut holder, "UPDATE items SET n = 2 WHERE id = 'a'");
    let add = "UPDATE items SET n = n + $1 WHERE id = $2";
    let short = || crate::backend::Call {
        deadline: Instant::now() + Duration::from_millis(300),
    };
    for end_of_call in [false, true] {
        let started = Instant::now();
        guest
            .send(add, &[Value::Integer(1), text("a")], short())
            .expect("queued");
        let err = if end_of_call {
            guest.end_call(short());
            guest.take_aborted().expect("the stopped write")
        } else {
            let err = guest.flush(short()).expect_err("stopped");
            guest.take_aborted();
            err
        };
        assert!(
            matches!(&err, DbError::LimitExceeded(m) if m.contains("deadline")),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the write waited for the row instead of stopping at the deadline"
        );
    }
    test.exec(&mut holder, "ROLLBACK");
    guest
        .send(add, &[Value::Integer(1), text("a")], call())
        .expect("queued");
    assert_eq!(guest.flush(call()).expect("flush"), [1]);
}

#[test]
fn a_session_lock_is_exclusive_and_free_as_soon_as_it_is_dropped() {
    let test = TestDatabase::new("locks");
    let db = super::super::Db::open(&test.url()).expect("open");
    // Advisory locks are per database, and the test's database is its own.
    let name = "projector-a";
    let mut held = db.try_lock(name).expect("lock").expect("free");
    assert!(held.is_held());
    assert!(db.try_lock(name).expect("lock").is_none(), "exclusive");
    drop(held);
    // Released when dropped, not when the server gets round to noticing the closed
    // connection: whoever asks next takes it, every time.
    for round in 0..200 {
        let again = db.try_lock(name).expect("lock");
        assert!(again.is_some(), "round {round}: the dropped lock is free");
    }
}
