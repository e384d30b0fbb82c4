//! The job log's vocabulary: the five wire events, the job result and the
//! [`EventSink`] every producer writes to.
//!
//! The lowest layer of the job path: the executors and the lifecycle write
//! events here, the log transport (`logs`) and the control-plane client
//! (`api`) read them. It must not know where events go.

use serde::{Deserialize, Serialize};

/// The outcome of a job, as reported in `job_finished` and `finished-job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobResult {
    Passed,
    Failed,
    Stopped,
}

impl JobResult {
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Passed => "passed",
            JobResult::Failed => "failed",
            JobResult::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for JobResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job log event. Field order in the JSON follows the wire examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    JobStarted {
        timestamp: u64,
    },
    CmdStarted {
        timestamp: u64,
        directive: String,
    },
    CmdOutput {
        timestamp: u64,
        output: String,
    },
    CmdFinished {
        timestamp: u64,
        directive: String,
        exit_code: i32,
        started_at: u64,
        finished_at: u64,
    },
    JobFinished {
        timestamp: u64,
        result: JobResult,
    },
}

impl Event {
    /// The event as one line of JSON, without the trailing newline.
    pub fn to_json(&self) -> String {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where the job lifecycle sends its events, in order. Implementations must
/// not block for long: the job's output path waits on `emit`.
pub trait EventSink: Send {
    fn emit(&mut self, event: Event);
}

/// A sink that collects events in memory; for tests and small tools.
impl EventSink for Vec<Event> {
    fn emit(&mut self, event: Event) {
        self.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_encode_as_the_wire_expects() {
        let e = Event::CmdFinished {
            timestamp: 3,
            directive: "echo hi".into(),
            exit_code: 0,
            started_at: 1,
            finished_at: 2,
        };
        assert_eq!(
            e.to_json(),
            r#"{"event":"cmd_finished","timestamp":3,"directive":"echo hi","exit_code":0,"started_at":1,"finished_at":2}"#
        );
        let f = Event::JobFinished {
            timestamp: 4,
            result: JobResult::Stopped,
        };
        assert_eq!(
            f.to_json(),
            r#"{"event":"job_finished","timestamp":4,"result":"stopped"}"#
        );
        let back: Event = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }
}
