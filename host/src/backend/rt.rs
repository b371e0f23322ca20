//! A private async runtime for the sqlx backends (PostgreSQL, MySQL): their interface is
//! synchronous, so each store drives its async connections from the calling thread.

use std::future::Future;

/// Runs futures to completion from synchronous code, on a current-thread runtime of the
/// store's own.
///
/// The store's connections are registered with this runtime, so the thread that waits for a
/// reply also reads it from the socket. On the process's shared runtime every round trip also
/// needed a hand-off between threads (the I/O driver's thread wakes the waiting one); without
/// it a replay is 5–20% faster (`docs/benchmarks.md`). Several threads may call
/// [`Rt::block_on`] at once: the first drives the I/O and wakes the others.
pub(super) struct Rt {
    /// Always `Some`; taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Rt {
    /// Starts the runtime.
    pub(super) fn new() -> Result<Rt, std::io::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Rt {
            runtime: Some(runtime),
        })
    }

    /// Drives `future` to completion on this thread. On a worker thread of another runtime
    /// the thread is first handed over to blocking work, as a runtime may not be entered from
    /// inside another one's task; on any other thread it simply blocks.
    pub(super) fn block_on<F: Future>(&self, future: F) -> F::Output {
        // Invariant: `runtime` is `Some` until `drop`, and `drop` has `&mut self`.
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| runtime.block_on(future))
        } else {
            runtime.block_on(future)
        }
    }

    /// Drives `future` to completion on a thread of its own, waiting for it: for `drop`,
    /// which may run where [`Rt::block_on`] cannot (on a current-thread runtime's worker,
    /// where blocking in place is forbidden).
    pub(super) fn block_on_aside(&self, future: impl Future<Output = ()> + Send) {
        std::thread::scope(|scope| {
            // A panic in the future is the drop's to lose, not to pass on while unwinding.
            let _ = scope.spawn(|| self.block_on(future)).join();
        });
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        // A plain drop waits for the runtime's tasks, which panics on another runtime's worker
        // thread. This runtime spawns no tasks, so there is nothing to wait for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
