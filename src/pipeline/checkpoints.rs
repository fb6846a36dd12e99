//! What the stages share about checkpoints besides their messages: the
//! latest one committed, and a worker's request for the next one sooner
//! than `state.checkpoint_interval`.
//!
//! A slot of kept state may leave memory only once the checkpoint that
//! saved it is committed (see [`super::cache`]). A worker over its memory
//! budget therefore asks for a checkpoint, and once it has sent its part,
//! waits for the committer to commit it before it reads more work: the
//! budget then bounds the state, however far the committer falls behind.
//! A worker whose changes since the last checkpoint pass a quarter of its
//! budget asks too, without waiting, so that no checkpoint carries more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::PipelineError;

/// How long a wait for a commit lasts before it is said in the log (and
/// goes on).
const WAIT_NOTICE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(super) struct Checkpoints {
    /// The latest checkpoint committed (0: none yet).
    committed: AtomicU64,
    /// Nothing more will commit (see [`Checkpoints::stop`]).
    stopped: AtomicBool,
    /// A worker asked for a checkpoint sooner than the interval.
    wanted: AtomicBool,
    /// Held while a commit or the stop is told to the waiting workers.
    lock: Mutex<()>,
    moved: Condvar,
}

impl Checkpoints {
    /// The latest checkpoint committed.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Notes that checkpoint `epoch` is committed, and wakes who waits.
    pub fn commit(&self, epoch: u64) {
        self.committed.store(epoch, Ordering::Release);
        self.notify();
    }

    /// Notes that nothing more will commit (the committer stopped, or a
    /// stage that takes part in checkpoints failed), and wakes who waits.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.notify();
    }

    fn notify(&self) {
        let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.moved.notify_all();
    }

    /// Waits until checkpoint `epoch` is committed; false if the committer
    /// stopped first.
    pub fn wait_for(&self, epoch: u64) -> bool {
        if self.committed() >= epoch {
            // The common case, without the lock.
            return true;
        }
        let mut held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut waited = Duration::ZERO;
        while self.committed() < epoch {
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            let (next, timeout) = self
                .moved
                .wait_timeout(held, WAIT_NOTICE)
                .unwrap_or_else(PoisonError::into_inner);
            held = next;
            if timeout.timed_out() {
                waited += WAIT_NOTICE;
                tracing::warn!(
                    epoch,
                    committed = self.committed(),
                    waited_s = waited.as_secs(),
                    "still waiting for a checkpoint to commit"
                );
            }
        }
        true
    }

    /// Runs `stage`, a stage that takes part in checkpoints: if it fails or
    /// panics, no checkpoint will commit any more, and whoever waits for
    /// one hears it.
    pub fn stop_on_failure<T>(
        &self,
        stage: impl FnOnce() -> Result<T, PipelineError>,
    ) -> Result<T, PipelineError> {
        struct Guard<'a> {
            checkpoints: &'a Checkpoints,
            ok: bool,
        }
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if !self.ok {
                    self.checkpoints.stop();
                }
            }
        }
        let mut guard = Guard {
            checkpoints: self,
            ok: false,
        };
        let result = stage();
        guard.ok = result.is_ok();
        result
    }

    /// Asks for a checkpoint sooner than the interval.
    pub fn ask(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    /// Whether a checkpoint was asked for since the last call.
    pub fn take_request(&self) -> bool {
        self.wanted.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Checkpoints, PipelineError};

    #[test]
    fn a_waiter_wakes_at_the_commit_it_waits_for_or_at_the_stop() {
        let checkpoints = Arc::new(Checkpoints::default());
        checkpoints.commit(1);
        assert!(checkpoints.wait_for(1), "committed already: no wait");

        let waiter = {
            let c = Arc::clone(&checkpoints);
            std::thread::spawn(move || c.wait_for(3))
        };
        checkpoints.commit(2);
        checkpoints.commit(3);
        assert!(waiter.join().unwrap(), "woken by the commit of 3");

        let waiter = {
            let c = Arc::clone(&checkpoints);
            std::thread::spawn(move || c.wait_for(4))
        };
        checkpoints.stop();
        assert!(!waiter.join().unwrap(), "the committer stopped before 4");
    }

    #[test]
    fn a_stage_that_fails_or_panics_wakes_who_waits_for_a_commit() {
        let failing = Checkpoints::default();
        let failed: Result<(), _> =
            failing.stop_on_failure(|| Err(PipelineError::Disconnected("sink")));
        assert!(failed.is_err());
        assert!(!failing.wait_for(1), "nothing more will commit");

        let panicking = Arc::new(Checkpoints::default());
        let c = Arc::clone(&panicking);
        let stage = std::thread::spawn(move || {
            c.stop_on_failure(|| -> Result<(), PipelineError> { panic!("a stage panics") })
        });
        assert!(stage.join().is_err());
        assert!(!panicking.wait_for(1), "nothing more will commit");

        let fine = Checkpoints::default();
        assert!(fine.stop_on_failure(|| Ok(())).is_ok());
        fine.commit(1);
        assert!(fine.wait_for(1), "a stage that ends well stops nothing");
    }

    #[test]
    fn a_request_is_taken_once() {
        let checkpoints = Checkpoints::default();
        assert!(!checkpoints.take_request());
        checkpoints.ask();
        checkpoints.ask();
        assert!(checkpoints.take_request());
        assert!(!checkpoints.take_request());
    }
}
