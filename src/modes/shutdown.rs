//! How a running mode is asked to stop: the control handle its sources and
//! outputs watch, and the signals (SIGINT, SIGTERM) that set it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a stop request waits for outputs to be acknowledged before
/// giving up (what was not committed is read again on restart).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How a running daemon is asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Stop reading, finish the batch, flush, commit, exit.
    pub stop: Arc<AtomicBool>,
    /// Stop waiting for the broker (the shutdown took too long).
    pub give_up: Arc<AtomicBool>,
}

impl Control {
    /// Sets `stop` on SIGINT or SIGTERM, and `give_up` on a second signal or
    /// [`SHUTDOWN_TIMEOUT`] later.
    pub fn on_signals(&self, runtime: &tokio::runtime::Handle) {
        let control = self.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                tracing::error!("cannot listen for SIGTERM");
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: finishing the batch, flushing outputs, committing state");
            control.stop.store(true, Ordering::SeqCst);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = tokio::time::sleep(SHUTDOWN_TIMEOUT) => {}
            }
            tracing::warn!("giving up waiting for the broker; uncommitted records will be read again on restart");
            control.give_up.store(true, Ordering::SeqCst);
        });
    }
}
