//! The agent's state machine, without threads or HTTP.
//!
//! Owns which state the agent reports and how each sync action changes it
//! (PROTOCOL section 1). It only decides: the caller performs the returned
//! [`Effect`] (spawn or stop the job thread, shut down). Keeping it pure lets
//! every transition be tested without a server or a shell.

use crate::api::{Action, AgentState, SyncRequest, SyncResponse};
use crate::events::JobResult;

use super::ShutdownReason;

/// Where the agent is; the job id travels with every state that has a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    WaitingForJobs,
    StartingJob { job_id: String },
    RunningJob { job_id: String },
    StoppingJob { job_id: String },
    FinishedJob { job_id: String, result: JobResult },
}

/// What the caller must do after an action was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    /// Spawn the job thread for this job.
    StartJob(String),
    /// Stop the running job (the job thread reports when it is done).
    StopJob,
    /// Forget the finished job: its thread has ended and can be joined.
    ForgetJob,
    Shutdown(ShutdownReason),
}

/// `--disconnect-after-job` plays no part here: like the Go agent, the
/// agent only tells the control plane (`single_job` on register) and the
/// control plane ends it with `shutdown` / `job-finished` after the job.
#[derive(Debug)]
pub struct Machine {
    state: State,
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

impl Machine {
    pub fn new() -> Machine {
        Machine {
            state: State::WaitingForJobs,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// True while a job thread exists whose end has not been reported.
    pub fn has_live_job(&self) -> bool {
        matches!(
            self.state,
            State::StartingJob { .. } | State::RunningJob { .. } | State::StoppingJob { .. }
        )
    }

    pub fn sync_request(&self, interrupted_at: u64) -> SyncRequest {
        match &self.state {
            State::WaitingForJobs => {
                SyncRequest::new(AgentState::WaitingForJobs, "", None, interrupted_at)
            }
            State::StartingJob { job_id } => {
                SyncRequest::new(AgentState::StartingJob, job_id, None, interrupted_at)
            }
            State::RunningJob { job_id } => {
                SyncRequest::new(AgentState::RunningJob, job_id, None, interrupted_at)
            }
            State::StoppingJob { job_id } => {
                SyncRequest::new(AgentState::StoppingJob, job_id, None, interrupted_at)
            }
            State::FinishedJob { job_id, result } => SyncRequest::new(
                AgentState::FinishedJob,
                job_id,
                Some(*result),
                interrupted_at,
            ),
        }
    }

    /// The job thread fetched the job and started running it.
    pub fn job_running(&mut self) {
        if let State::StartingJob { job_id } = &self.state {
            self.state = State::RunningJob {
                job_id: job_id.clone(),
            };
        }
        // Already stopping: stay there, the stop wins.
    }

    /// The job thread ended with `result`.
    pub fn job_finished(&mut self, result: JobResult) {
        let job_id = match &self.state {
            State::StartingJob { job_id }
            | State::RunningJob { job_id }
            | State::StoppingJob { job_id } => job_id.clone(),
            // No live job: a stale message; nothing to record.
            State::WaitingForJobs | State::FinishedJob { .. } => return,
        };
        self.state = State::FinishedJob { job_id, result };
    }

    /// Applies the control plane's answer to the request `sent`.
    pub fn apply(&mut self, sent: &SyncRequest, response: &SyncResponse) -> Effect {
        match &response.action {
            Action::Continue | Action::Unknown(_) => Effect::Nothing,
            Action::Shutdown => {
                Effect::Shutdown(ShutdownReason::from_api(&response.shutdown_reason))
            }
            Action::RunJob => match &self.state {
                State::WaitingForJobs | State::FinishedJob { .. }
                    if !response.job_id.is_empty() =>
                {
                    self.state = State::StartingJob {
                        job_id: response.job_id.clone(),
                    };
                    Effect::StartJob(response.job_id.clone())
                }
                _ => {
                    log::warn!(
                        "Ignoring run-job for job '{}' while in state {}",
                        response.job_id,
                        sent.state
                    );
                    Effect::Nothing
                }
            },
            Action::StopJob => match &self.state {
                State::StartingJob { job_id } | State::RunningJob { job_id } => {
                    self.state = State::StoppingJob {
                        job_id: job_id.clone(),
                    };
                    Effect::StopJob
                }
                // Already stopping, or the job ended before the stop came:
                // the next sync reports where we are.
                _ => Effect::Nothing,
            },
            Action::WaitForJobs => match &self.state {
                State::FinishedJob { .. } => {
                    self.state = State::WaitingForJobs;
                    Effect::ForgetJob
                }
                State::WaitingForJobs => Effect::Nothing,
                _ => {
                    log::warn!(
                        "Ignoring wait-for-jobs while the job is still in state {}",
                        sent.state
                    );
                    Effect::Nothing
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(action: &str, job_id: &str) -> SyncResponse {
        SyncResponse::from_json(&format!(
            r#"{{"action":"{action}","job_id":"{job_id}","shutdown_reason":"requested"}}"#
        ))
        .unwrap()
    }

    fn step(m: &mut Machine, action: &str, job_id: &str) -> Effect {
        let sent = m.sync_request(0);
        m.apply(&sent, &answer(action, job_id))
    }

    #[test]
    fn a_job_goes_round_the_states() {
        let mut m = Machine::new();
        assert_eq!(m.sync_request(0).state, AgentState::WaitingForJobs);
        assert_eq!(step(&mut m, "continue", ""), Effect::Nothing);
        assert_eq!(step(&mut m, "run-job", "j1"), Effect::StartJob("j1".into()));
        assert_eq!(m.sync_request(0).state, AgentState::StartingJob);
        assert_eq!(m.sync_request(0).job_id, "j1");
        m.job_running();
        assert_eq!(m.sync_request(0).state, AgentState::RunningJob);
        m.job_finished(JobResult::Passed);
        let r = m.sync_request(5);
        assert_eq!(
            (
                r.state,
                r.job_id.as_str(),
                r.job_result.as_str(),
                r.interrupted_at
            ),
            (AgentState::FinishedJob, "j1", "passed", 5)
        );
        // `continue` keeps reporting the result until wait-for-jobs.
        assert_eq!(step(&mut m, "continue", ""), Effect::Nothing);
        assert_eq!(m.sync_request(0).state, AgentState::FinishedJob);
        assert_eq!(step(&mut m, "wait-for-jobs", ""), Effect::ForgetJob);
        assert_eq!(m.state(), &State::WaitingForJobs);
    }

    #[test]
    fn stop_job_stops_a_live_job_and_is_ignored_after_it_ended() {
        let mut m = Machine::new();
        step(&mut m, "run-job", "j1");
        m.job_running();
        assert_eq!(step(&mut m, "stop-job", "j1"), Effect::StopJob);
        assert_eq!(m.sync_request(0).state, AgentState::StoppingJob);
        // A second stop while stopping does nothing more.
        assert_eq!(step(&mut m, "stop-job", "j1"), Effect::Nothing);
        // A late "running" message must not undo the stop.
        m.job_running();
        assert_eq!(m.sync_request(0).state, AgentState::StoppingJob);
        m.job_finished(JobResult::Stopped);
        assert_eq!(step(&mut m, "stop-job", "j1"), Effect::Nothing);
        assert_eq!(m.sync_request(0).job_result, "stopped");
    }

    #[test]
    fn stop_while_starting_is_honoured() {
        let mut m = Machine::new();
        step(&mut m, "run-job", "j1");
        assert_eq!(step(&mut m, "stop-job", "j1"), Effect::StopJob);
        m.job_finished(JobResult::Stopped);
        assert_eq!(m.sync_request(0).state, AgentState::FinishedJob);
    }

    #[test]
    fn run_job_is_refused_while_a_job_lives_or_without_an_id() {
        let mut m = Machine::new();
        assert_eq!(step(&mut m, "run-job", ""), Effect::Nothing);
        assert_eq!(step(&mut m, "run-job", "j1"), Effect::StartJob("j1".into()));
        assert_eq!(step(&mut m, "run-job", "j2"), Effect::Nothing);
        assert_eq!(step(&mut m, "wait-for-jobs", ""), Effect::Nothing);
        assert_eq!(m.sync_request(0).job_id, "j1");
    }

    #[test]
    fn shutdown_reasons_map_like_go() {
        let mut m = Machine::new();
        for (text, reason) in [
            ("idle", ShutdownReason::Idle),
            ("job-finished", ShutdownReason::JobFinished),
            ("requested", ShutdownReason::Requested),
            ("interrupted", ShutdownReason::Interrupted),
            ("whatever", ShutdownReason::Unknown),
            ("", ShutdownReason::Unknown),
        ] {
            let sent = m.sync_request(0);
            let resp = SyncResponse::from_json(&format!(
                r#"{{"action":"shutdown","shutdown_reason":"{text}"}}"#
            ))
            .unwrap();
            assert_eq!(m.apply(&sent, &resp), Effect::Shutdown(reason));
        }
    }

    #[test]
    fn a_reported_result_is_kept_until_the_control_plane_moves_on() {
        // As in the Go agent, nothing but the control plane ends the agent
        // after a job, even with --disconnect-after-job.
        let mut m = Machine::new();
        step(&mut m, "run-job", "j1");
        m.job_running();
        m.job_finished(JobResult::Failed);
        assert_eq!(step(&mut m, "continue", ""), Effect::Nothing);
        assert_eq!(m.sync_request(0).state, AgentState::FinishedJob);
        assert_eq!(step(&mut m, "wait-for-jobs", ""), Effect::ForgetJob);
    }

    #[test]
    fn unknown_actions_change_nothing() {
        let mut m = Machine::new();
        assert_eq!(step(&mut m, "dance", ""), Effect::Nothing);
        assert_eq!(m.state(), &State::WaitingForJobs);
    }
}
