//! `zdr serve`: run the daemon until Ctrl-C or SIGTERM.

use clap::Args;

use crate::config::Settings;

/// Project new events to every live projector and projecting replay, hot-swapping promoted
/// versions, until Ctrl-C or SIGTERM.
#[derive(Debug, Args)]
pub struct Serve {
    /// How often an idle worker looks for new events, in milliseconds.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
}

impl Serve {
    /// Runs the command.
    ///
    /// # Errors
    /// When the database cannot be opened or is not initialised.
    pub async fn run(self, mut settings: Settings) -> anyhow::Result<()> {
        if let Some(ms) = self.poll_interval_ms {
            settings.poll_interval = std::time::Duration::from_millis(ms.max(1));
        }
        let runtime = super::runtime(&settings)?;
        crate::daemon::run(settings, runtime, shutdown_signal()).await
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
