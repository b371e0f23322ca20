//! [`GuardCache`]: one target's guard with the verdicts it has already given, so that each
//! distinct SQL text is parsed once per target and the per-event path is a hash lookup.
//!
//! Refusals are cached too (a guest that repeats a denied statement does not cost a parse
//! each time). The cache is bounded by entries and by bytes; past either bound it keeps what it
//! has and checks new texts without remembering them, which is slower but never wrong.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Checked, Guard, GuardError, Mode};

/// The most distinct statements one target's cache remembers.
///
/// A projector uses a handful of fixed statements; a thousand covers any real one, while a guest
/// that generates SQL text per event cannot grow the host's memory without bound.
pub const MAX_CACHED_STATEMENTS: usize = 1024;

/// The most bytes of SQL text (as sent and as rewritten) one target's cache remembers.
///
/// Statements may be up to 64 KiB each, so the entry bound alone would allow 64 MiB per target.
pub const MAX_CACHED_BYTES: usize = 4 * 1024 * 1024;

/// A verdict as cached: the checked statement, shared, or the refusal.
type Verdict = Result<Arc<Checked>, GuardError>;

/// Verdicts by SQL text, hashed with foldhash: the lookup is on every guest statement's path.
type Verdicts = HashMap<String, Verdict, foldhash::fast::RandomState>;

/// A [`Guard`] with a bounded memory of the statements it has checked.
#[derive(Debug)]
pub struct GuardCache {
    guard: Guard,
    data: Verdicts,
    setup: Verdicts,
    bytes: usize,
    parses: u64,
}

impl GuardCache {
    /// An empty cache in front of `guard`.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard,
            data: Verdicts::default(),
            setup: Verdicts::default(),
            bytes: 0,
            parses: 0,
        }
    }

    /// The guard this cache fronts.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Checks `sql` as [`Guard::check`] does, parsing it only the first time this cache sees it
    /// in `mode`.
    ///
    /// # Errors
    ///
    /// The same as [`Guard::check`]; a refusal is remembered like a success.
    pub fn check(&mut self, sql: &str, mode: Mode) -> Result<Arc<Checked>, GuardError> {
        let map = match mode {
            Mode::Data => &self.data,
            Mode::Setup => &self.setup,
        };
        if let Some(verdict) = map.get(sql) {
            return verdict.clone();
        }
        self.parses += 1;
        let verdict = self.guard.check(sql, mode).map(Arc::new);
        let cost = sql.len()
            + match &verdict {
                Ok(checked) => checked.sql.len(),
                Err(error) => error.message().len(),
            };
        let room = self.len() < MAX_CACHED_STATEMENTS && self.bytes + cost <= MAX_CACHED_BYTES;
        if room {
            self.bytes += cost;
            let map = match mode {
                Mode::Data => &mut self.data,
                Mode::Setup => &mut self.setup,
            };
            map.insert(sql.to_owned(), verdict.clone());
        }
        verdict
    }

    /// How many statements this cache has parsed: the checks it could not answer from memory.
    pub fn parses(&self) -> u64 {
        self.parses
    }

    /// How many verdicts it remembers.
    pub fn len(&self) -> usize {
        self.data.len() + self.setup.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Dialect, PhysicalName};

    fn cache() -> GuardCache {
        GuardCache::new(Guard::new(
            Dialect::Sqlite,
            [(
                "balances".to_owned(),
                PhysicalName::unqualified("zdr_r_k1__balances"),
            )],
            None,
        ))
    }

    #[test]
    fn the_same_text_is_parsed_once() {
        let mut cache = cache();
        let sql = "UPDATE balances SET balance = balance + $1 WHERE id = $2";
        let first = cache.check(sql, Mode::Data).unwrap();
        let second = cache.check(sql, Mode::Data).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(cache.parses(), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.guard().dialect(), Dialect::Sqlite);
    }

    #[test]
    fn refusals_are_remembered_too() {
        let mut cache = cache();
        for _ in 0..3 {
            assert!(matches!(
                cache.check("SELECT * FROM stored_events", Mode::Data),
                Err(GuardError::Denied(_))
            ));
        }
        assert_eq!(cache.parses(), 1);
    }

    #[test]
    fn modes_are_cached_apart() {
        let mut cache = cache();
        let sql = "CREATE TABLE balances (id INTEGER PRIMARY KEY)";
        assert!(cache.check(sql, Mode::Data).is_err());
        assert!(cache.check(sql, Mode::Setup).is_ok());
        assert!(cache.check(sql, Mode::Data).is_err());
        assert_eq!(cache.parses(), 2);
    }

    #[test]
    fn the_entry_bound_holds() {
        let mut cache = cache();
        let total = MAX_CACHED_STATEMENTS + 10;
        for i in 0..total {
            let sql = format!("SELECT {i} FROM balances");
            assert!(cache.check(&sql, Mode::Data).is_ok());
        }
        assert_eq!(cache.len(), MAX_CACHED_STATEMENTS);
        // Remembered texts are answered from memory; the overflow is checked again each time.
        cache.check("SELECT 0 FROM balances", Mode::Data).unwrap();
        let overflow = format!("SELECT {} FROM balances", total - 1);
        cache.check(&overflow, Mode::Data).unwrap();
        assert_eq!(cache.parses(), u64::try_from(total).unwrap() + 1);
        assert_eq!(cache.len(), MAX_CACHED_STATEMENTS);
    }

    #[test]
    fn the_byte_bound_holds() {
        let mut cache = cache();
        let padding = " ".repeat(60 * 1024);
        let mut remembered = 0;
        for i in 0..100 {
            let sql = format!("SELECT {i}{padding} FROM balances");
            cache.check(&sql, Mode::Data).unwrap();
            remembered = cache.len();
        }
        assert!(cache.bytes <= MAX_CACHED_BYTES);
        assert!(remembered < 100 && remembered > 10, "{remembered}");
    }
}
