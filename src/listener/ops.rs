//! What the listener tells operators (issue 13): the metrics registry, the
//! health server's lifetime, systemd notifications and the job id on JSON
//! agent-log lines, behind a few calls so the sync loop stays about syncing.
//!
//! Owns the mapping from listener events (registered, synced, state
//! changed, job taken or ended, shutting down) to those outputs. Must not
//! decide anything about the agent's behaviour, and must never pass a
//! token along (nothing here sees one).

use std::time::Duration;

use super::agent_log::set_log_job;
use super::host;
use super::shutdown::ShutdownReason;
use super::state::Machine;
use super::ListenerOptions;
use crate::api::AgentState;
use crate::config::Config;
use crate::events::JobResult;
use crate::health::{HealthError, HealthServer};
use crate::metrics::{global, Request};
use crate::notify::Notifier;

pub(super) struct Ops {
    notifier: Notifier,
    /// Held, never read: dropping it (when the listener ends) stops the
    /// server.
    _health: Option<HealthServer>,
    /// The last STATUS sent, so only changes are sent.
    status: String,
}

/// Counts one failed request of `kind`.
pub(super) fn failed(kind: Request) {
    global().request_failed(kind);
}

impl Ops {
    /// Notes the start time, takes systemd's variables (before any other
    /// thread runs) and starts the health server when configured.
    pub(super) fn start(config: &Config, options: &ListenerOptions) -> Result<Ops, HealthError> {
        global().started();
        let notifier = Notifier::from_env();
        let health = match &config.health_address {
            Some(address) => {
                let server = crate::health::start(address, global(), options.sync_interval.1)?;
                log::info!(
                    "Serving /healthz and /metrics on http://{}",
                    server.local_addr()
                );
                Some(server)
            }
            None => None,
        };
        Ok(Ops {
            notifier,
            _health: health,
            status: String::new(),
        })
    }

    pub(super) fn registered(&mut self, name: &str, machine: &Machine) {
        global().registered(name, &host::os_name(), &host::arch());
        self.notifier.ready();
        self.state(machine);
    }

    pub(super) fn synced(&self) {
        global().sync_succeeded();
        self.notifier.watchdog();
    }

    pub(super) fn planned_wait(&self, wait: Duration) {
        global().set_sync_interval(wait);
    }

    /// Reports the machine's state if it changed since the last call.
    pub(super) fn state(&mut self, machine: &Machine) {
        let request = machine.sync_request(0);
        let status = match request.state {
            AgentState::WaitingForJobs => request.state.as_str().to_string(),
            state => format!("{} (job {})", state.as_str(), request.job_id),
        };
        if status != self.status {
            global().set_state(request.state.as_str());
            self.notifier.status(&status);
            self.status = status;
        }
    }

    pub(super) fn job_started(&self, job_id: &str) {
        global().job_started();
        set_log_job(Some(job_id));
    }

    pub(super) fn job_finished(&self, result: JobResult) {
        global().job_finished(result);
    }

    pub(super) fn job_forgotten(&self) {
        set_log_job(None);
    }

    pub(super) fn stopping(&self, reason: ShutdownReason) {
        global().shutting_down();
        self.notifier.status(&format!("shutting down: {reason}"));
        self.notifier.stopping();
    }
}
