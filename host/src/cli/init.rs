//! `zdr init`: create zdr's tables and the event store.

use clap::Args;

use super::blocking;
use crate::backend::Db;
use crate::config::Settings;

/// Create zdr's tables and, when absent, Spatie's `stored_events` table.
#[derive(Debug, Args)]
pub struct Init {}

impl Init {
    /// Runs the command.
    ///
    /// # Errors
    /// An unreachable database, a newer schema, or an incompatible `stored_events`.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let url = settings.database_url.clone();
        blocking(move || {
            let db = Db::open(&url)?;
            db.init()?;
            Ok(())
        })
        .await?;
        println!("initialised {}", settings.database_url);
        Ok(())
    }
}
