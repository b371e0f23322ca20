//! Tests of the MySQL/MariaDB backend against the server of the tests (`ZDR_TEST_MYSQL_URL`,
//! default root on the local server); they fail, never skip, when it is unreachable.

use super::*;
use crate::backend::Db;
use crate::backend::testing::{MyTestDatabase, one_table_target};
use crate::model::{Description, Role};

const INSERT: &str = "INSERT INTO stored_events (event_class, event_properties, meta_data, created_at) \
                      VALUES ('E', '{}', '{}', UTC_TIMESTAMP())";

#[test]
fn the_head_never_passes_an_insert_still_in_flight() {
    let test = MyTestDatabase::new("inflight");
    let store = Db::open(&test.url()).expect("open");
    store.init().expect("init");
    let (mut a, mut b) = (test.connect(), test.connect());
    // A draws id 1 and stays open; B draws id 2 and commits first.
    test.exec(&mut a, "START TRANSACTION");
    test.exec(&mut a, INSERT);
    test.exec(&mut b, INSERT);
    assert_eq!(
        store.head().expect("head"),
        0,
        "id 2 is visible but 1 may still commit"
    );
    assert_eq!(
        store.head().expect("head"),
        0,
        "still held on the next look"
    );
    // Held past the grace a gap gets: the writer holds its row's lock.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(store.head().expect("head"), 0, "still held after the grace");
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
    let test = MyTestDatabase::new("rollback");
    let store = Db::open(&test.url()).expect("open");
    store.init().expect("init");
    let (mut a, mut b) = (test.connect(), test.connect());
    test.exec(&mut a, "START TRANSACTION");
    test.exec(&mut a, INSERT);
    test.exec(&mut b, INSERT);
    test.exec(&mut b, INSERT);
    assert_eq!(store.head().expect("head"), 0);
    test.exec(&mut a, "ROLLBACK");
    // The gap at 1 is final now. Transactions of tests running beside this one are open
    // transactions too and may hold the gap a moment: look again until the head moves, and
    // check where it lands.
    let settles = |store: &Db| {
        (0..600)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                store.head().expect("head")
            })
            .find(|head| *head != 0)
    };
    assert_eq!(settles(&store), Some(3));
    let fresh = Db::open(&test.url()).expect("open");
    assert_eq!(settles(&fresh), Some(3));
}

#[test]
fn writes_roll_back_and_tables_move_between_databases() {
    let test = MyTestDatabase::new("tables");
    let db = Db::open(&test.url()).expect("open");
    db.init().expect("init");
    db.ensure_ready().expect("ready");
    let (clone, description) = one_table_target(
        &db,
        "items",
        &[
            "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL, note TEXT)",
            "CREATE INDEX items_by_n ON items (n)",
        ],
        Role::Clone,
    );
    let clone_db = db
        .layout()
        .namespace(clone.id, Role::Clone, Some("k1"))
        .expect("a database");
    assert!(
        db.object_exists(&format!("{clone_db}.items"))
            .expect("exists")
    );
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
    assert!(matches!(refused, DbError::Constraint { .. }), "{refused:?}");
    assert_eq!(guest.take_aborted(), Some(refused));
    // Parameters bind by number, a number used twice binds twice.
    guest
        .execute(
            "INSERT INTO items (id, n, note) VALUES ($2, $1, $2)",
            &[Value::Integer(7), Value::Text("a".into())],
            call(),
        )
        .expect("insert");
    // An upsert on the primary key is translated; text compares case-sensitively.
    guest
        .execute(
            "INSERT INTO items (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = items.n + excluded.n",
            &[Value::Text("a".into()), Value::Integer(1)],
            call(),
        )
        .expect("upsert");
    guest
        .execute(
            "INSERT INTO items (id, n) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[Value::Text("A".into()), Value::Integer(100)],
            call(),
        )
        .expect("a different key");
    let rows = guest
        .query("SELECT id, n, note FROM items ORDER BY id", &[], call())
        .expect("query");
    assert_eq!(
        rows.rows,
        vec![
            vec![Value::Text("A".into()), Value::Integer(100), Value::Null],
            vec![
                Value::Text("a".into()),
                Value::Integer(8),
                Value::Text("a".into())
            ],
        ]
    );
    let concat = guest
        .query(
            "SELECT 'x' || id || '\\' AS s FROM items WHERE id = $1",
            &[Value::Text("a".into())],
            call(),
        )
        .expect("|| concatenates and a backslash is itself");
    assert_eq!(concat.rows, vec![vec![Value::Text("xa\\".into())]]);
    for hostile in [
        "SELECT * FROM mysql.user",
        "SELECT /*! 1 */ id FROM items",
        "SELECT @@version",
        "SELECT SLEEP(1)",
        "SELECT * FROM `items`",
    ] {
        assert!(
            matches!(
                guest.query(hostile, &[], call()),
                Err(DbError::Denied(_) | DbError::InvalidSql { .. })
            ),
            "{hostile}"
        );
    }
    // A promote: one RENAME TABLE, then the bookkeeping.
    db.write(|db| {
        db.rename_tables(&clone, &description, Role::Live, None)?;
        db.set_role(clone.id, Role::Live, None)
    })
    .expect("promote");
    assert!(db.object_exists("items").expect("exists"));
    assert!(
        !db.object_exists(&format!("{clone_db}.items"))
            .expect("exists")
    );
    let rows = db
        .read_rows("SELECT n FROM items ORDER BY id")
        .expect("rows");
    assert_eq!(
        rows.rows,
        vec![vec![Value::Integer(100)], vec![Value::Integer(8)]]
    );
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
fn a_statement_past_the_guest_deadline_is_stopped() {
    let test = MyTestDatabase::new("deadline");
    let db = Db::open(&test.url()).expect("open");
    db.init().expect("init");
    let raw = db.raw_guest_connection();
    let mut raw = raw;
    let checked = crate::sandbox::Checked {
        sql: "SELECT SLEEP(20)".into(),
        kind: crate::sandbox::StatementKind::Query,
        tables: vec![],
        param_count: 0,
        time_params: vec![],
        param_order: vec![],
    };
    let mut rows = crate::backend::guest::RowCollector::default();
    let started = Instant::now();
    let stopped = raw.query(
        &checked,
        &[],
        started + Duration::from_millis(300),
        &mut rows,
    );
    assert!(
        matches!(stopped, Err(DbError::LimitExceeded(_))),
        "{stopped:?}"
    );
    // The connection serves the next statement.
    assert_eq!(
        db.read_rows("SELECT 1").expect("next").rows,
        vec![vec![Value::Integer(1)]]
    );
}

#[test]
fn a_killed_connection_is_reported_lost_and_replaced() {
    let test = MyTestDatabase::new("killed");
    let db = Db::open(&test.url()).expect("open");
    db.init().expect("init");
    let id = db.read_rows("SELECT CONNECTION_ID()").expect("id").rows[0][0].clone();
    let Value::Integer(id) = id else {
        panic!("connection id {id:?}")
    };
    let mut admin = test.connect();
    test.exec(&mut admin, &format!("KILL {id}"));
    let lost = db.count_events().expect_err("the connection is gone");
    assert!(lost.is_connection_lost(), "{lost}");
    db.reconnect().expect("reconnect");
    assert_eq!(db.count_events().expect("count"), 0);
}

#[test]
fn named_locks_are_exclusive_and_die_with_their_connection() {
    let test = MyTestDatabase::new("locks");
    let db = Db::open(&test.url()).expect("open");
    let mut held = db.try_lock("projector-a").expect("lock").expect("free");
    assert!(held.is_held());
    assert!(db.try_lock("projector-a").expect("lock").is_none());
    assert!(db.try_lock("projector-b").expect("lock").is_some());
    drop(held);
    // Released when dropped, not when the server gets round to noticing the closed
    // connection: whoever asks next takes it, every time.
    for round in 0..200 {
        let again = db.try_lock("projector-a").expect("lock");
        assert!(again.is_some(), "round {round}: the dropped lock is free");
    }
    assert_eq!(lock_name("d", "x"), "zdr:d:x");
    assert!(lock_name(&"d".repeat(80), "x").len() <= 64);
}

#[test]
fn a_laravel_event_table_is_used_as_it_is() {
    let test = MyTestDatabase::new("laravel");
    let mut conn = test.connect();
    // Spatie's migration as Laravel runs it on MySQL.
    test.exec(
        &mut conn,
        "CREATE TABLE stored_events (id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         aggregate_uuid char(36) NULL, aggregate_version bigint unsigned NULL, \
         event_version tinyint unsigned NOT NULL DEFAULT 1, event_class varchar(255) NOT NULL, \
         event_properties json NOT NULL, meta_data json NOT NULL, created_at timestamp NOT NULL, \
         INDEX stored_events_event_class_index (event_class), \
         INDEX stored_events_aggregate_uuid_index (aggregate_uuid), \
         UNIQUE stored_events_aggregate_uuid_aggregate_version_unique (aggregate_uuid, aggregate_version)) \
         DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    );
    test.exec(
        &mut conn,
        "INSERT INTO stored_events (aggregate_uuid, aggregate_version, event_version, event_class, \
         event_properties, meta_data, created_at) VALUES \
         ('8e1b3c3e-1f3a-4c1e-9d7a-2b7f0c1d2e3f', 1, 1, 'App\\\\Events\\\\AccountOpened', \
          '{\"name\": \"Ada\"}', '{}', '2024-01-31 12:00:00')",
    );
    let db = Db::open(&test.url()).expect("open");
    assert!(db.init().expect("init").is_empty(), "no warnings");
    let events = db
        .read_events_of(0, 10, 10, &["AccountOpened".to_owned()])
        .expect("read");
    let [ReadEvent::Event(event)] = events.as_slice() else {
        panic!("one event: {events:?}")
    };
    assert_eq!(event.event_class, "App\\Events\\AccountOpened");
    assert_eq!(event.aggregate_version, Some(1));
    assert_eq!(event.created_at, "2024-01-31 12:00:00");
    assert!(event.event_properties.contains("Ada"));
    assert!(
        db.read_events_of(0, 10, 10, &["Other".to_owned()])
            .expect("read")
            .is_empty()
    );
    let appended = db
        .append_events(&[NewEvent {
            aggregate_uuid: None,
            aggregate_version: None,
            event_version: 1,
            event_class: "App\\Events\\MoneyAdded".into(),
            event_properties: "{}".into(),
            meta_data: "{}".into(),
            created_at: None,
        }])
        .expect("append");
    assert_eq!(appended, Some((2, 2)));
    assert_eq!(db.head().expect("head"), 2);
}

#[test]
fn mysql_and_mariadb_urls_name_this_backend_and_hide_their_password() {
    use crate::backend::Backend;
    assert_eq!(Backend::of("mysql://u@h/db").ok(), Some(Backend::MySql));
    assert_eq!(Backend::of("mariadb://u@h/db").ok(), Some(Backend::MySql));
    assert_eq!(
        redact("mysql://u:secret@h:3306/db"),
        "mysql://u:***@h:3306/db"
    );
    let refused = MyStore::open("mysql://root@127.0.0.1:3306")
        .err()
        .expect("no database");
    assert!(
        refused.to_string().contains("names no database"),
        "{refused}"
    );
    let refused = MyStore::open("mysql://zdr_nobody:secret@127.0.0.1:3306/test")
        .err()
        .expect("a refused login");
    let message = refused.to_string();
    assert!(!message.contains("secret"), "{message}");
    assert!(
        message.contains("Access denied"),
        "the server's reason: {message}"
    );
}

#[test]
fn values_convert_to_the_guests_types() {
    let test = MyTestDatabase::new("values");
    let db = Db::open(&test.url()).expect("open");
    let rows = db
        .read_rows(
            "SELECT CAST(18446744073709551615 AS UNSIGNED), CAST(7 AS UNSIGNED), 1.50, \
             JSON_OBJECT('a', 1), CAST('2024-01-31 12:00:01.5' AS DATETIME(6)), DATE '2024-01-31', \
             CAST('2024-01-31 12:00:00' AS DATETIME), CAST('-01:02:03' AS TIME), 2.5e0, x'00ff'",
        )
        .expect("a row");
    assert_eq!(
        rows.rows,
        vec![vec![
            Value::Text("18446744073709551615".into()),
            Value::Integer(7),
            Value::Text("1.50".into()),
            Value::Text("{\"a\": 1}".into()),
            Value::Text("2024-01-31 12:00:01.5".into()),
            Value::Text("2024-01-31".into()),
            Value::Text("2024-01-31 12:00:00".into()),
            Value::Text("-01:02:03".into()),
            Value::Real(2.5),
            Value::Blob(vec![0, 255]),
        ]]
    );
    assert_eq!(date_text_for_test(b"2024-01-31"), Some("2024-01-31".into()));
}

fn date_text_for_test(text: &[u8]) -> Option<String> {
    guest::date_text_public(text)
}

/// A promote's `RENAME TABLE` commits on its own, before the roles that go with it: a process
/// that dies in between leaves the tables swapped and the roles not. The next writer puts the
/// tables back before it writes anything, so live's rows stay under live's role.
#[test]
fn a_promote_that_died_after_its_rename_is_undone_before_anything_writes() {
    let test = MyTestDatabase::new("torn_promote");
    let db = Db::open(&test.url()).expect("open");
    db.init().expect("init");
    db.ensure_ready().expect("ready");
    let description = Description {
        name: "t".into(),
        version: "1".into(),
        tables: vec![crate::model::TableDecl {
            name: "items".into(),
            ddl: vec!["CREATE TABLE items (id TEXT PRIMARY KEY)".into()],
        }],
        handles: vec![],
        partition_by: vec![],
    };
    let version = db
        .register_version("h", b"wasm", &description)
        .expect("version");
    let (live, clone) = db
        .write(|db| {
            let live = db.insert_target("t", version, Role::Live, None)?;
            db.create_tables(&live, &description)?;
            let clone = db.insert_target("t", version, Role::Clone, Some("k1"))?;
            db.create_tables(&clone, &description)?;
            Ok::<_, StoreError>((live, clone))
        })
        .expect("targets");
    let clone_db = db
        .layout()
        .namespace(clone.id, Role::Clone, Some("k1"))
        .expect("a database");
    db.write(|db| {
        db.sql_execute("INSERT INTO items (id) VALUES ('live row')", &[])?;
        db.sql_execute(
            &format!("INSERT INTO {clone_db}.items (id) VALUES ('clone row')"),
            &[],
        )
    })
    .expect("rows");

    // The promote moves live to retired and the clone to live, then dies before its
    // bookkeeping commits (the transaction never commits, as when the process is killed).
    let died: Result<(), StoreError> = db.write(|db| {
        let mut moves = db.table_moves(&live, &description, Role::Retired, Some("k1"));
        moves.extend(db.table_moves(&clone, &description, Role::Live, None));
        db.move_tables(&moves)?;
        Err(StoreError::Corrupt("the process died here".into()))
    });
    assert!(died.is_err());
    assert_eq!(
        db.read_rows("SELECT id FROM items").expect("rows").rows,
        vec![vec![Value::Text("clone row".into())]],
        "test bug: the rename committed on its own"
    );

    // The next writer (a daemon's batch, say) finds the torn move and puts it back first.
    db.write(|_| Ok::<_, StoreError>(())).expect("a write");
    assert_eq!(
        db.read_rows("SELECT id FROM items").expect("rows").rows,
        vec![vec![Value::Text("live row".into())]],
        "live's tables are back under live's role"
    );
    assert_eq!(
        db.read_rows(&format!("SELECT id FROM {clone_db}.items"))
            .expect("rows")
            .rows,
        vec![vec![Value::Text("clone row".into())]],
        "the clone's tables are back under the clone's role"
    );
    assert_eq!(
        db.read_rows("SELECT COUNT(*) FROM zdr_moves")
            .expect("rows")
            .rows,
        vec![vec![Value::Integer(0)]]
    );

    // A move that commits leaves nothing to undo.
    db.write(|db| {
        let mut moves = db.table_moves(&live, &description, Role::Retired, Some("k1"));
        moves.extend(db.table_moves(&clone, &description, Role::Live, None));
        db.move_tables(&moves)
    })
    .expect("a whole promote");
    db.write(|_| Ok::<_, StoreError>(())).expect("a write");
    assert_eq!(
        db.read_rows("SELECT id FROM items").expect("rows").rows,
        vec![vec![Value::Text("clone row".into())]],
        "a recorded move stays"
    );
}

/// A full disk reaches MySQL and MariaDB under several numbers: its own (1021, 1114), and the
/// storage engine's or a file write's failure carrying the system's errno 28 (ENOSPC) in the
/// message (1030, 1026, and a temporary file that cannot be written, 1878). Each is the
/// database's failure, never an event's; other engine errors stay what they are.
#[test]
fn a_full_disk_is_recognised_under_every_number_the_server_gives_it() {
    let disk_full = Some(SQLSTATE_DISK_FULL);
    for (number, message) in [
        (
            1021,
            "Disk full (./test/t.ibd); waiting for someone to free some space...",
        ),
        (1114, "The table 'balances' is full"),
        (
            1030,
            "Got error 28 \"No space left on device\" from storage engine InnoDB",
        ),
        (
            1026,
            "Error writing file './test/#sql-1.MAI' (Errcode: 28 \"No space left on device\")",
        ),
        (1878, "Temporary file write failure"),
    ] {
        assert_eq!(
            resource_failure(number, message),
            disk_full,
            "{number}: {message}"
        );
    }
    assert_eq!(
        resource_failure(1041, "Out of memory"),
        Some(SQLSTATE_OUT_OF_MEMORY)
    );
    for (number, message) in [
        (
            1030,
            "Got error 168 \"Unknown (generic) error from engine\" from storage engine InnoDB",
        ),
        (1030, "Got error 128 from storage engine"),
        (1030, "Got error 280 from storage engine"),
        (
            1026,
            "Error writing file './x' (Errcode: 13 \"Permission denied\")",
        ),
        (1062, "Duplicate entry '28' for key 'PRIMARY'"),
    ] {
        assert_eq!(
            resource_failure(number, message),
            None,
            "{number}: {message}"
        );
    }
}
