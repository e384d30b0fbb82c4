//! What a pipeline run decides, as values: why a job was skipped, how a
//! started job ended, each job's outcome, where the blocks are. The
//! scheduler decides on these; `output` alone turns them into words.

use crate::events::JobResult;

/// Why a job did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Left out by `--block`/`--only`.
    NotSelected,
    /// Its block's `skip` condition is true.
    SkipCondition,
    /// Its block's `run` condition is false.
    RunCondition,
    /// A block it depends on (this one) did not pass.
    DependencyFailed(String),
    /// Another job of its block failed under the task's fail-fast.
    BlockFailFast,
    /// A job failed under the pipeline's fail-fast.
    PipelineFailFast,
    /// Ctrl-C.
    Interrupted,
}

impl SkipReason {
    /// Whether the pipeline fails for this skip: only a failure upstream
    /// (a job that failed under fail-fast fails the run by itself).
    pub fn fails_pipeline(&self) -> bool {
        matches!(self, SkipReason::DependencyFailed(_))
    }

    /// Whether the skip comes from a failed job (what `after_pipeline`
    /// sees as a failed pipeline).
    pub fn after_failure(&self) -> bool {
        matches!(
            self,
            SkipReason::DependencyFailed(_)
                | SkipReason::BlockFailFast
                | SkipReason::PipelineFailFast
        )
    }
}

/// Which `execution_time_limit` stopped a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitLevel {
    Pipeline,
    Block,
    Job,
}

/// How a job that was started came to its end, besides its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// It ran to its end, or was stopped by fail-fast or Ctrl-C.
    Ran,
    /// An `execution_time_limit` of `minutes` stopped it.
    TimeLimit { level: LimitLevel, minutes: u64 },
    /// Its thread ended without a result.
    Panicked,
    /// Its thread could not be started (the OS's reason).
    CannotStart(String),
}

/// How one job of the final table came out.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ran {
        result: JobResult,
        duration_s: f64,
        end: JobEnd,
    },
    Skipped(SkipReason),
    /// Still waiting when the run ended.
    NotRun,
}

impl Outcome {
    /// Whether this job lets the pipeline pass.
    pub fn passes(&self) -> bool {
        match self {
            Outcome::Ran { result, .. } => *result == JobResult::Passed,
            Outcome::Skipped(why) => !why.fails_pipeline(),
            Outcome::NotRun => false,
        }
    }

    pub fn duration_s(&self) -> f64 {
        match self {
            Outcome::Ran { duration_s, .. } => *duration_s,
            Outcome::Skipped(_) | Outcome::NotRun => 0.0,
        }
    }
}

/// One row of the final table.
pub struct Row {
    pub block: String,
    pub job: String,
    pub outcome: Outcome,
}

/// Where the blocks of a run are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub failed: usize,
    pub running: Vec<String>,
}
