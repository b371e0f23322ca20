use super::*;
use crate::sandbox::Mode;

#[test]
fn explore() {
    let sqls = std::fs::read_to_string("/tmp/explore.sql").unwrap();
    for sql in sqls.split("\n---\n") {
        let sql = sql.trim();
        if sql.is_empty() { continue; }
        let (mode, sql) = match sql.strip_prefix("SETUP:") { Some(s) => (Mode::Setup, s), None => (Mode::Data, sql) };
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            println!("{d:?} {sql}\n   => {:?}", clone_guard(d).check(sql, mode));
        }
    }
}
