//! `zdr init`: create zdr's tables and the event store.

use clap::Args;

use super::blocking;
use crate::backend::Db;
use crate::config::Settings;

/// Create zdr's tables (or upgrade those an older zdr made) and, when absent, Spatie's
/// `stored_events` table; the only command that creates a SQLite file. Warns about writers
/// of the event store zdr cannot read safely.
#[derive(Debug, Args)]
pub struct Init {}

impl Init {
    /// Runs the command.
    ///
    /// # Errors
    /// An unreachable database, a newer schema, or an incompatible `stored_events`.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let url = settings.database_url.clone();
        let warnings = blocking(move || {
            let db = Db::create(&url)?;
            Ok(db.init()?)
        })
        .await?;
        for warning in &warnings {
            errln!("warning: {warning}");
        }
        outln!("initialised {}", settings.database_url);
        Ok(())
    }
}
