//! `zdr demo` tells the whole story on a fresh SQLite file, or an empty PostgreSQL database,
//! and checks itself.

use crate::support::{Backend, Env, both_backends, guests, repo_root};

both_backends!(the_demo_runs_on_a_fresh_database_and_ends_with_live_equal_to_a_fresh_rebuild);

fn the_demo_runs_on_a_fresh_database_and_ends_with_live_equal_to_a_fresh_rebuild(backend: Backend) {
    guests();
    // An env for its temporary directory, its empty database and its command set-up; on
    // SQLite the demo makes its own database file. It runs from the repository root, where it
    // finds the built projectors.
    let env = Env::uninitialised(backend);
    let file = env.dir().join("demo.db");
    let output = env
        .command(&[
            "demo",
            "--file",
            file.to_str().expect("UTF-8 path"),
            "--events",
            "2000",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cannot run zdr demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "zdr demo failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(" 0 differing"),
        "the demo's check did not pass:\n{stdout}"
    );
    assert!(
        stdout.contains("v2 serving"),
        "the demo did not end with v2 serving:\n{stdout}"
    );
    assert!(
        stderr.contains("hot swap"),
        "the demo's daemon did not hot-swap:\n{stderr}"
    );
    match backend {
        Backend::Sqlite => {
            assert!(file.is_file(), "the demo did not write {}", file.display());
        }
        Backend::Postgres | Backend::Mariadb => {
            assert!(!file.exists(), "the demo wrote a file on a server");
            assert!(
                env.table_exists("balances"),
                "the demo left no live table in the database"
            );
        }
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}
