//! The host sweep: what agents that are gone (killed, crashed) left on
//! this host is found and removed on a thread of its own, off the start
//! path, so registration does not wait for a `docker ps`.
//!
//! Owns the "host-sweep" thread, started once the first sync was answered
//! (the start path, register and first sync, has the CPU to itself), and
//! its end: the containment mode line
//! (finding the mode kills and removes job cgroups of gone agents), the
//! private temp dirs of gone agents, and their compose jobs' containers,
//! networks, volumes and dirs (whose `docker` runs through `shell::host`).
//! The sync loop joins it once it is done; at exit the sweep gets
//! [`EXIT_GRACE`] to finish, is then stopped (a running `docker` is killed
//! within one poll) and joined. Each sweep only
//! touches what belongs to an agent that is certainly gone, so it can run
//! while this agent registers and runs jobs. It must not decide anything
//! about the agent's state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long an exiting agent waits for a sweep still running before it
/// stops it.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The sweep to run ([`HostSweep::begin`]), running, or over; joined by
/// [`HostSweep::finish`] or on drop.
pub(super) struct HostSweep {
    /// The temp dir to sweep, until the sweep is begun.
    pending: Option<PathBuf>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    done: Option<Receiver<()>>,
}

impl HostSweep {
    /// A sweep of `tmp_dir` (and the host's cgroups and Docker), not
    /// started yet.
    pub(super) fn new(tmp_dir: PathBuf) -> HostSweep {
        HostSweep {
            pending: Some(tmp_dir),
            thread: None,
            stop: Arc::new(AtomicBool::new(false)),
            done: None,
        }
    }

    /// Starts the sweep on the "host-sweep" thread, the first time only;
    /// if the thread cannot start, sweeps here.
    pub(super) fn begin(&mut self) {
        let Some(tmp_dir) = self.pending.take() else {
            return;
        };
        let (done_tx, done) = sync_channel(1);
        let flag = Arc::clone(&self.stop);
        let dir = tmp_dir.clone();
        let spawned = std::thread::Builder::new()
            .name("host-sweep".into())
            .spawn(move || {
                sweep(&dir, &|| flag.load(Ordering::SeqCst));
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(handle) => {
                self.thread = Some(handle);
                self.done = Some(done);
            }
            Err(e) => {
                log::warn!("Cannot start the host sweep thread ({e}); sweeping now");
                sweep(&tmp_dir, &|| false);
            }
        }
    }

    /// Joins the thread if the sweep is over (cheap; the sync loop calls
    /// it every round).
    pub(super) fn join_if_done(&mut self) {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            self.end();
        }
    }

    /// Waits up to [`EXIT_GRACE`] for the sweep, then stops and joins it.
    pub(super) fn finish(&mut self) {
        self.end();
    }

    fn end(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let waited = self.done.take().map(|done| done.recv_timeout(EXIT_GRACE));
        if waited.is_some_and(|w| w.is_err()) && !thread.is_finished() {
            log::info!("Stopping the sweep of what gone agents left; the next start goes on");
        }
        self.stop.store(true, Ordering::SeqCst);
        if thread.join().is_err() {
            log::warn!("The host sweep thread panicked");
        }
    }
}

impl Drop for HostSweep {
    fn drop(&mut self) {
        self.end();
    }
}

/// One sweep; `stopped` ends it between steps and kills a running
/// `docker`.
fn sweep(tmp_dir: &std::path::Path, stopped: &dyn Fn() -> bool) {
    log::info!("{}", crate::executor::containment());
    if stopped() {
        return;
    }
    crate::private_tmp::remove_dirs_of_gone_agents(tmp_dir);
    #[cfg(unix)]
    crate::executor::remove_compose_leftovers(tmp_dir, stopped);
}
