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
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// SIGTERM that arrives while the daemon is still starting must stop it cleanly, not kill it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |installed: std::io::Result<tokio::signal::unix::Signal>,
                        name: &'static str| async move {
                match installed {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(err) => {
                        tracing::error!("cannot listen for {name}: {err}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = wait(interrupt, "Ctrl-C") => tracing::info!("Ctrl-C received"),
                _ = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received");
    }
}
