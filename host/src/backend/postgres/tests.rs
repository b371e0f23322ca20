//! Tests of the PostgreSQL backend against the server of the tests (`ZDR_TEST_POSTGRES_URL`,
//! default the local one); they fail, never skip, when it is unreachable.

use super::*;
use crate::backend::testing::TestDatabase;
use crate::model::{Description, Role};

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
    let description = Description {
        name: "t".into(),
        version: "1".into(),
        tables: vec![crate::model::TableDecl {
            name: "items".into(),
            ddl: vec![
                "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)".into(),
                "CREATE INDEX items_by_n ON items (n)".into(),
            ],
        }],
        handles: vec![],
        partition_by: vec![],
    };
    let version = db
        .register_version("h", b"wasm", &description)
        .expect("version");
    let clone = db
        .write(|db| {
            let target = db.insert_target("t", version, Role::Clone, Some("k1"))?;
            db.create_tables(&target, &description)?;
            Ok::<_, StoreError>(target)
        })
        .expect("create");
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
