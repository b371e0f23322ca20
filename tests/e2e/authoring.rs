//! Authoring projectors: `zdr plugin new` scaffolds a projector in each language whose own
//! tests pass (and fail when its fold is broken), which `plugin build` builds, `plugin
//! inspect` checks against the world, and `projector deploy` runs.
//!
//! These are the slowest tests of the suite (each runs a language's toolchain twice, cold on a
//! fresh clone); the module's name sorts first, so the test runner starts them first and the
//! rest of the suite runs beside them.

use crate::support::{Backend, Env, Generator, assert_same_rows};

/// `plugin new`, then `plugin test`, `build`, `inspect` and `deploy` work out of the box for
/// every language, one test each so that the three toolchains run side by side.
mod plugin_new_then_plugin_test_build_and_deploy_work {
    #[test]
    fn rust() {
        super::scaffold_round_trip("rust");
    }

    #[test]
    fn js() {
        super::scaffold_round_trip("js");
    }

    #[test]
    fn python() {
        super::scaffold_round_trip("python");
    }
}

fn scaffold_round_trip(lang: &str) {
    let env = Env::new(Backend::Sqlite);
    let mut generator = Generator::new(7);
    env.import(&generator.open_accounts(3));
    env.import(&generator.money(40));
    let mut expected: Vec<Vec<String>> = env.rows(
        "SELECT event_class, COUNT(*) FROM stored_events GROUP BY event_class ORDER BY event_class",
    );
    expected.sort();

    {
        let name = format!("counter-{lang}");
        let out = env.ok(&["plugin", "new", &name, "--lang", lang]);
        assert!(
            out.contains(&format!("created {lang} projector {name}")),
            "{out}"
        );
        assert!(env.dir().join(&name).join("zdr-plugin.toml").is_file());

        // The scaffold's own tests pass out of the box, and they test something: a projector
        // that counts every event under the wrong class fails them.
        let out = env.ok(&["plugin", "test", &name]);
        assert!(out.starts_with(&format!("tested {name}: `")), "{out}");
        let (source, right, wrong, failing_test) = match lang {
            "rust" => (
                "src/lib.rs",
                "Value::Text(event.event_class.clone())",
                "Value::Text(String::new())",
                "counts_each_event_under_its_class",
            ),
            "js" => (
                "projector.js",
                "val: event.eventClass",
                "val: \"\"",
                "counts each event under its class",
            ),
            _ => (
                "app.py",
                "types.Value_Text(event.event_class)",
                "types.Value_Text(\"\")",
                "test_counts_each_event_under_its_class",
            ),
        };
        let source = env.dir().join(&name).join(source);
        let original = std::fs::read_to_string(&source).unwrap();
        assert_eq!(original.matches(right).count(), 1, "{lang}: {right}");
        std::fs::write(&source, original.replace(right, wrong)).unwrap();
        // Not `env.fail`: the test runner's own output (a Rust test's panic) is expected here.
        let output = env.zdr(&["plugin", "test", &name]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{lang}: {err}");
        assert!(err.contains("error: the test command `"), "{err}");
        assert!(err.contains(failing_test), "{lang}: {err}");
        std::fs::write(&source, &original).unwrap();

        let out = env.ok(&["plugin", "build", &name]);
        let output = out
            .trim()
            .rsplit_once(": ")
            .map(|(_, path)| path.to_string())
            .unwrap_or_else(|| panic!("`plugin build` did not print the output path: {out}"));
        assert!(out.starts_with(&format!("built {name} version 1")), "{out}");

        let inspection = env.json(&["plugin", "inspect", &output, "--json"]);
        assert_eq!(inspection["matches_world"], true, "{inspection:#}");
        assert_eq!(inspection["name"], name.as_str(), "{inspection:#}");

        env.deploy(&name, &output);
        let table = format!("{}_counts", name.replace('-', "_"));
        let mut rows = env.rows(&format!("SELECT event_class, events FROM {table}"));
        rows.sort();
        assert_same_rows(&rows, &expected, &format!("the {lang} scaffold's counts"));
    }
    // A second `new` into an existing folder is refused, the folder left as it was.
    let name = format!("counter-{lang}");
    let err = env.fail(&["plugin", "new", &name, "--lang", lang]);
    assert!(err.contains("already exists"), "{err}");
}
