//! Hostile and broken components (`tests/hostile/`, plus bytes written by the tests): every
//! invalid component class is refused by `zdr projector deploy` and `zdr replay create` with a
//! message that says what is wrong, and the database is left exactly as it was. Tables are
//! owned by one projector, and a table zdr does not manage is never taken over.

use crate::support::{
    Backend, Env, Generator, Query, both_backends, built_component, describe, guests, repo_root,
};

both_backends!(
    every_invalid_component_is_refused_with_its_reason_and_changes_nothing,
    a_table_belongs_to_one_projector,
    an_unmanaged_table_is_not_taken_over_by_a_new_projector,
    an_unmanaged_table_is_not_taken_over_by_a_replay,
    an_unmanaged_table_is_not_taken_over_by_an_upgrade,
    a_valid_guest_of_the_hostile_set_deploys,
);

/// The path of a component built from `tests/hostile/` (its crate name with `_`), after
/// `plugins/build-all.sh` built every workspace.
fn hostile(name: &str) -> String {
    guests();
    built_component("tests/hostile", &format!("{name}.wasm"))
}

/// Deterministic bytes that are not WebAssembly (a xorshift stream).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

/// Writes `bytes` to `name` in the env's directory and returns the path.
fn write(env: &Env, name: &str, bytes: &[u8]) -> String {
    let path = env.dir().join(name);
    std::fs::write(&path, bytes).expect("cannot write a test file");
    path.to_str().expect("UTF-8 path").to_string()
}

/// Everything in the database: every schema object (on SQLite with its SQL, on PostgreSQL
/// with its columns), then every row of every table (on SQLite `sqlite_sequence` included, so
/// an insert rolled back or deleted afterwards shows; PostgreSQL's sequences are left out, as
/// they move outside transactions by design).
fn snapshot(env: &Env) -> Vec<(String, Vec<Vec<String>>)> {
    let objects: Vec<String> = env.schema_objects();
    env.read_consistently(|q: &mut dyn Query| {
        let mut rows = |sql: &str| q.rows(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let (shapes, tables) = match env.backend() {
            Backend::Sqlite => (
                (
                    "sqlite_master",
                    rows("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"),
                ),
                rows("SELECT '\"' || name || '\"' FROM sqlite_master WHERE type = 'table' ORDER BY name"),
            ),
            Backend::Postgres => (
                (
                    "columns",
                    rows(
                        "SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default \
                         FROM information_schema.columns \
                         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
                         ORDER BY 1, 2, ordinal_position",
                    ),
                ),
                rows(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
                ),
            ),
            Backend::Mariadb => {
                let mine = format!(
                    "(table_schema = '{}' OR table_schema LIKE 'zdr%\\_{}')",
                    env.database_name(),
                    crate::support::mariadb_owner(&env.database_name())
                );
                (
                    (
                        "columns",
                        rows(&format!(
                            "SELECT table_schema, table_name, column_name, column_type, is_nullable, \
                             column_default FROM information_schema.columns WHERE {mine} \
                             ORDER BY 1, 2, ordinal_position"
                        )),
                    ),
                    rows(&format!(
                        "SELECT CONCAT('\"', table_schema, '\".\"', table_name, '\"') \
                         FROM information_schema.tables WHERE {mine} AND table_type = 'BASE TABLE' ORDER BY 1"
                    )),
                )
            }
        };
        let mut dump = vec![
            (
                "schema objects".to_string(),
                objects.into_iter().map(|o| vec![o]).collect(),
            ),
            (shapes.0.to_string(), shapes.1),
        ];
        for table in tables {
            let name = &table[0];
            dump.push((
                name.clone(),
                rows(&format!("SELECT * FROM {name} ORDER BY 1")),
            ));
        }
        dump
    })
}

/// What differs between two snapshots, cells shortened (components are stored as blobs).
fn changes(
    before: &[(String, Vec<Vec<String>>)],
    after: &[(String, Vec<Vec<String>>)],
) -> Option<String> {
    if before == after {
        return None;
    }
    let short = |row: &Vec<String>| {
        row.iter()
            .map(|c| match c.char_indices().nth(60) {
                Some((i, _)) => format!("{}…", &c[..i]),
                None => c.clone(),
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    let names: Vec<&String> = before.iter().chain(after).map(|(n, _)| n).collect();
    let mut seen = Vec::new();
    for name in names {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let find = |s: &[(String, Vec<Vec<String>>)]| {
            s.iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| r.clone())
                .unwrap_or_default()
        };
        let (old, new) = (find(before), find(after));
        if old == new {
            continue;
        }
        let gone: Vec<_> = old.iter().filter(|r| !new.contains(r)).map(short).collect();
        let added: Vec<_> = new.iter().filter(|r| !old.contains(r)).map(short).collect();
        out.push(format!("  {name}: removed {gone:?}, added {added:?}"));
    }
    Some(out.join("\n"))
}

/// Runs `zdr ARGS` and checks it was refused cleanly: a non-zero exit code (not a signal), no
/// panic of the host (a guest's relayed panic is tagged with its stream), an error that
/// contains every one of `expect`, and not a single change in the database. Returns what went
/// wrong, so that a table-driven test can report every case at once.
fn refused(env: &Env, args: &[&str], expect: &[&str]) -> Result<(), String> {
    let before = snapshot(env);
    let output = env.zdr(args);
    let after = snapshot(env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut problems = Vec::new();
    if output.status.success() {
        problems.push("it succeeded".to_string());
    } else if output.status.code().is_none() {
        problems.push("it was killed by a signal".to_string());
    }
    if stderr
        .lines()
        .any(|l| l.contains("panicked") && !l.contains("stream="))
    {
        problems.push("the host panicked".to_string());
    }
    if !stderr.contains("error") {
        problems.push("no error message".to_string());
    }
    for want in expect {
        if !stderr.contains(want) {
            problems.push(format!("the message lacks {want:?}"));
        }
    }
    if let Some(diff) = changes(&before, &after) {
        problems.push(format!("the database changed:\n{diff}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}",
            problems.join("; "),
            describe(args, &output)
        ))
    }
}

/// Panics with every problem found, or returns when there is none.
#[track_caller]
fn assert_none(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} refusal(s) went wrong:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// A component class that must be refused, and what the refusal must say.
struct Case {
    what: &'static str,
    file: String,
    expect: &'static [&'static str],
}

/// Every invalid component class, as files: bytes that are not a component, components that do
/// not fit the world, and components whose `describe` must be refused.
fn invalid_components(env: &Env) -> Vec<Case> {
    let g = guests();
    let balance_v1 = std::fs::read(&g.balance_v1).expect("cannot read balance_v1.wasm");
    let mut header_and_noise = b"\0asm\x0d\x00\x01\x00".to_vec();
    header_and_noise.extend(noise(4096, 7));
    let case = |what, file: String, expect| Case { what, file, expect };
    let built = |name: &str| hostile(name);
    vec![
        case(
            "random bytes",
            write(env, "random.wasm", &noise(4096, 42)),
            &["not a WebAssembly file"],
        ),
        case(
            "an empty file",
            write(env, "empty.wasm", b""),
            &["not a WebAssembly file"],
        ),
        case(
            "the WIT source instead of the component",
            repo_root()
                .join("wit/projector.wit")
                .to_str()
                .expect("UTF-8 path")
                .to_string(),
            &["not a WebAssembly file"],
        ),
        case(
            "a core module (the minimal valid one)",
            write(env, "core.wasm", b"\0asm\x01\x00\x00\x00"),
            &["core WebAssembly module, not a component"],
        ),
        case(
            "a truncated component (first 1000 bytes of balance v1)",
            write(env, "truncated.wasm", &balance_v1[..1000]),
            &["the component does not compile", "unexpected end-of-file"],
        ),
        case(
            "a component header followed by noise",
            write(env, "header-noise.wasm", &header_and_noise),
            &["the component does not compile"],
        ),
        case(
            "a component for another world",
            built("wrong_world"),
            &[
                "does not implement the zdr:projector world",
                "no export `describe`",
            ],
        ),
        case(
            "a component without the remove-target export",
            built("missing_export"),
            &[
                "does not implement the zdr:projector world",
                "no export `remove-target`",
            ],
        ),
        case(
            "a component importing evil:net/socket",
            built("extra_import"),
            &[
                "does not implement the zdr:projector world",
                "evil:net/socket",
            ],
        ),
        case(
            "a component whose check export has the wrong type",
            built("check_wrong_type"),
            &["the component exports `check`, but not as `func() -> result<_, string>`"],
        ),
        case(
            "a partitioned projector naming a table it does not declare",
            built("partition_stranger"),
            &[
                "invalid description",
                "partition-by() names table accounts, which describe() does not declare",
            ],
        ),
        case(
            "describe() panics",
            built("describe_traps"),
            &["the projector trapped"],
        ),
        case(
            "describe() declares no tables",
            built("describe_empty"),
            &["invalid description", "declares no tables"],
        ),
        case(
            "describe() returns an empty version",
            built("describe_empty_version"),
            &["invalid description", "empty name or version"],
        ),
        case(
            "a component describing itself under another name",
            built("notes"),
            &[r#"describes itself as projector "notes", not "balance""#],
        ),
        case(
            "a table named stored_events",
            built("describe_stored_events"),
            &[r#"table name "stored_events" is reserved"#],
        ),
        case(
            "a table named zdr_targets",
            built("describe_zdr_table"),
            &[r#"table name "zdr_targets" is reserved"#],
        ),
        case(
            "a qualified, quoted table name",
            built("describe_bad_name"),
            &["must be 1 to 63 characters of lowercase letters"],
        ),
        case(
            "DDL creating another table than the one declared",
            built("describe_ddl_mismatch"),
            &[r#"table "other" is not declared by this projector"#],
        ),
        case(
            "a second statement hidden in the CREATE TABLE",
            built("describe_two_statements"),
            &["multiple statements are not allowed"],
        ),
        case(
            "a foreign key to stored_events",
            built("describe_references"),
            &["foreign keys (REFERENCES) are not allowed"],
        ),
        case(
            "CREATE TABLE … AS SELECT from stored_events",
            built("describe_as_select"),
            &["CREATE TABLE … AS SELECT is not allowed"],
        ),
        case(
            "a trigger deleting from stored_events",
            built("describe_trigger"),
            &["CREATE TRIGGER is not allowed"],
        ),
        case(
            "a view over stored_events",
            built("describe_view"),
            &["CREATE VIEW is not allowed"],
        ),
        case(
            "the same table declared twice",
            built("describe_duplicate_tables"),
            &[r#"declares table "NOTES" twice"#],
        ),
    ]
}

fn every_invalid_component_is_refused_with_its_reason_and_changes_nothing(backend: Backend) {
    let g = guests();
    let mut generator = Generator::new(4);
    // Nothing deployed yet: `deploy` would build a new projector.
    let fresh = Env::new(backend);
    fresh.import(&generator.open_accounts(4));
    // Balance version 1 live: `deploy` would upgrade it, `replay create` would clone it.
    let live = Env::new(backend);
    live.import(&generator.open_accounts(4));
    live.deploy("balance", &g.balance_v1);

    let mut problems = Vec::new();
    for case in invalid_components(&fresh) {
        let spec = format!("balance={}", case.file);
        let runs: [(&Env, Vec<&str>); 3] = [
            (&fresh, vec!["projector", "deploy", "balance", &case.file]),
            (&live, vec!["projector", "deploy", "balance", &case.file]),
            (&live, vec!["replay", "create", "k", "--projector", &spec]),
        ];
        for (env, args) in runs {
            if let Err(problem) = refused(env, &args, case.expect) {
                problems.push(format!("[{}] {problem}", case.what));
            }
        }
    }
    assert_none(&problems);
    // The host is fine afterwards: a valid replay still goes through.
    let out = live.create_balance_replay("k", &g.balance_v2);
    assert!(out.contains("created replay k"), "{out}");
}

fn a_table_belongs_to_one_projector(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.deploy("notes", &hostile("notes"));
    let claims = hostile("claims_notes");
    let owned = &[r#"table "notes" already belongs to projector "notes""#][..];
    let spec = format!("balance={claims}");
    let mut problems = Vec::new();
    // As a new projector.
    problems.extend(refused(&env, &["projector", "deploy", "balance", &claims], owned).err());
    env.deploy("balance", &g.balance_v1);
    // As an upgrade, and as a replay.
    problems.extend(refused(&env, &["projector", "deploy", "balance", &claims], owned).err());
    problems.extend(
        refused(
            &env,
            &["replay", "create", "k", "--projector", &spec],
            owned,
        )
        .err(),
    );
    assert_none(&problems);
}

/// A database with balance version 1 live and a table `notes` that zdr does not manage, with
/// a row in it.
fn env_with_unmanaged_notes(backend: Backend) -> Env {
    let env = Env::new(backend);
    env.deploy("balance", &guests().balance_v1);
    env.execute(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, secret TEXT);
         INSERT INTO notes (id, secret) VALUES (1, 'not zdr''s');",
    );
    env
}

/// Asserts the unmanaged `notes` table is still there with its row.
fn assert_unmanaged_notes_intact(env: &Env) {
    assert_eq!(
        env.rows("SELECT id, secret FROM notes"),
        [["1", "not zdr's"]],
        "the unmanaged table was touched"
    );
}

/// What refusing an unmanaged table must say.
const UNMANAGED: &[&str] = &[r#"a table named "notes" already exists and zdr does not manage it"#];

fn an_unmanaged_table_is_not_taken_over_by_a_new_projector(backend: Backend) {
    let env = env_with_unmanaged_notes(backend);
    let result = refused(
        &env,
        &["projector", "deploy", "notes", &hostile("notes")],
        UNMANAGED,
    );
    assert_none(&Vec::from_iter(result.err()));
    assert_unmanaged_notes_intact(&env);
}

fn an_unmanaged_table_is_not_taken_over_by_a_replay(backend: Backend) {
    let env = env_with_unmanaged_notes(backend);
    let spec = format!("balance={}", hostile("claims_notes"));
    let result = refused(
        &env,
        &["replay", "create", "k", "--projector", &spec],
        UNMANAGED,
    );
    assert_none(&Vec::from_iter(result.err()));
    assert_unmanaged_notes_intact(&env);
}

fn an_unmanaged_table_is_not_taken_over_by_an_upgrade(backend: Backend) {
    let env = env_with_unmanaged_notes(backend);
    let result = refused(
        &env,
        &["projector", "deploy", "balance", &hostile("claims_notes")],
        UNMANAGED,
    );
    assert_none(&Vec::from_iter(result.err()));
    assert_unmanaged_notes_intact(&env);
}

/// The control: `notes` is built like the `describe-*` guests (`hostile-common`), so when it
/// deploys and builds its table, their refusals are about what they describe, not the scaffold.
fn a_valid_guest_of_the_hostile_set_deploys(backend: Backend) {
    let env = Env::new(backend);
    env.deploy("notes", &hostile("notes"));
    assert!(env.table_exists("notes"));
    // Deployed and caught up; no daemon serves it yet.
    assert_eq!(env.projector("notes")["status"], "unserved");
}
