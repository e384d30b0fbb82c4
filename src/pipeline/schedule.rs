//! Running the planned jobs: blocks in dependency order, the jobs of ready
//! blocks side by side up to `--parallel`, each on a named `pipeline-job`
//! thread running the ordinary job lifecycle; time limits, fail-fast,
//! skipped dependents and Ctrl-C, decided on the calling thread.
//!
//! The calling thread is the only one that changes the run's state: job
//! threads report their result over a bounded channel (one slot per job,
//! so a send never blocks) and every thread is joined before [`run`]
//! returns. Every decision is made on typed states (`outcome`'s
//! [`SkipReason`], [`JobEnd`]); the words people read are made by
//! `output`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::expand::PlannedJob;
use super::outcome::{JobEnd, LimitLevel, Outcome, Progress, Row, SkipReason};
use super::output::{Console, JobSink};
use super::PipelineResult;
use crate::events::JobResult;
use crate::job::{JobStop, Settings as JobSettings};

/// A block as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct BlockPlan {
    pub name: String,
    /// Indexes of the blocks it waits for.
    pub deps: Vec<usize>,
    /// Why it does not run, decided before the run (a `skip`/`run`
    /// condition, not selected).
    pub skipped: Option<SkipReason>,
    /// Its `execution_time_limit`, minutes.
    pub time_limit: Option<u64>,
    /// The task's fail-fast: stop (true) or cancel (false) the block's
    /// other jobs when one fails.
    pub fail_fast_stop: Option<bool>,
    /// `after_pipeline`: runs once every other block ended, whatever their
    /// results.
    pub always: bool,
}

/// How a run goes.
pub struct Settings {
    pub parallel: usize,
    pub keep_going: bool,
    /// The pipeline's fail-fast: stop (true) or cancel (false).
    pub fail_fast_stop: Option<bool>,
    /// The pipeline's `execution_time_limit`, minutes (Semaphore's default
    /// is one hour).
    pub time_limit: u64,
    pub prefix_output: bool,
    /// `--verbose`: every setup line of a job.
    pub verbose: bool,
    /// Each job's settings, by job index (HOME differs per job).
    pub job_settings: Vec<JobSettings>,
}

#[derive(Debug, Clone, PartialEq)]
enum JobState {
    Waiting,
    Running,
    Done(JobResult, f64, JobEnd),
    Skipped(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BlockState {
    Pending,
    Running,
    Passed,
    Failed,
    /// Decided not to run; counts as passed for its dependents.
    Skipped,
    /// Not run because of a failure (dependency, fail-fast, stop).
    Cancelled,
}

struct Live {
    stop: JobStop,
    started: Instant,
    /// The earliest limit that applies, and how the job ends when it hits.
    deadline: Option<(Instant, JobEnd)>,
    handle: std::thread::JoinHandle<()>,
}

/// One minute, shortened in test builds by the knob
/// `SEMAPHORE_AGENT_TEST_PIPELINE_MINUTE_MS` so a time-limit test need
/// not wait minutes.
pub fn minute() -> Duration {
    crate::test_knobs::millis("PIPELINE_MINUTE_MS")
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(60))
}

/// What the loop does after a round of starting.
enum Next {
    /// Nothing runs and nothing more can start.
    Finish,
    /// Nothing runs, but a block may start now.
    Again,
    /// Wait for a job to end.
    Wait,
}

/// Runs `jobs` (block by block as `blocks` says) and returns the rows of
/// the final table and the pipeline's result. `interrupted` is raised by
/// Ctrl-C; `live_stops` is where the Ctrl-C handler finds the running
/// jobs.
pub fn run(
    jobs: &[PlannedJob],
    blocks: &[BlockPlan],
    settings: &Settings,
    console: &Console,
    interrupted: &Arc<AtomicBool>,
    live_stops: &Arc<Mutex<BTreeMap<usize, JobStop>>>,
) -> (Vec<Row>, PipelineResult) {
    let mut run = Run::new(jobs, blocks, settings, console, live_stops);
    loop {
        if interrupted.load(Ordering::SeqCst) && !run.stopped {
            run.interrupt();
        }
        // Blocks whose jobs all ended, before their dependents are looked
        // at (so a block change is one progress line).
        settle_blocks(&run.job_state, &mut run.block_state, jobs);
        run.open_ready_blocks();
        run.start_jobs();
        settle_blocks(&run.job_state, &mut run.block_state, jobs);
        run.report_progress();
        match run.next() {
            Next::Finish => break,
            Next::Again => continue,
            Next::Wait => {}
        }
        if !run.collect_ended() {
            break;
        }
        run.enforce_deadlines();
    }
    run.finish()
}

/// The jobs found ended when none came within the wait: each result in
/// `rx`, and a failure for each job whose thread ended without one (a job
/// thread sends before it ends, so it panicked). `finished` (the job
/// threads that ended) is asked before `rx` is read, so a thread that sends
/// and ends while this runs is found by its result, never taken for a
/// panicked one.
fn sweep_ended(
    finished: impl FnOnce() -> Vec<usize>,
    rx: &Receiver<(usize, JobResult)>,
) -> Vec<(usize, JobResult, JobEnd)> {
    let finished = finished();
    let mut ended: Vec<(usize, JobResult, JobEnd)> = Vec::new();
    while let Ok((j, result)) = rx.try_recv() {
        ended.push((j, result, JobEnd::Ran));
    }
    for j in finished {
        if !ended.iter().any(|(e, ..)| *e == j) {
            ended.push((j, JobResult::Failed, JobEnd::Panicked));
        }
    }
    ended
}

/// The state of one run, changed only by the calling thread.
struct Run<'a> {
    jobs: &'a [PlannedJob],
    blocks: &'a [BlockPlan],
    settings: &'a Settings,
    console: &'a Console,
    live_stops: &'a Arc<Mutex<BTreeMap<usize, JobStop>>>,
    started: Instant,
    minute: Duration,
    pipeline_deadline: Instant,
    job_state: Vec<JobState>,
    block_state: Vec<BlockState>,
    block_started: Vec<Option<Instant>>,
    tx: SyncSender<(usize, JobResult)>,
    rx: Receiver<(usize, JobResult)>,
    live: BTreeMap<usize, Live>,
    /// Jobs stopped by a time limit, and which.
    timed_out: BTreeMap<usize, JobEnd>,
    /// Ctrl-C.
    stopped: bool,
    last_progress: Option<Progress>,
}

impl<'a> Run<'a> {
    fn new(
        jobs: &'a [PlannedJob],
        blocks: &'a [BlockPlan],
        settings: &'a Settings,
        console: &'a Console,
        live_stops: &'a Arc<Mutex<BTreeMap<usize, JobStop>>>,
    ) -> Run<'a> {
        let started = Instant::now();
        let minute = minute();
        let mut job_state: Vec<JobState> = vec![JobState::Waiting; jobs.len()];
        let mut block_state: Vec<BlockState> = vec![BlockState::Pending; blocks.len()];
        for (b, plan) in blocks.iter().enumerate() {
            if let Some(why) = &plan.skipped {
                block_state[b] = BlockState::Skipped;
                for (j, job) in jobs.iter().enumerate() {
                    if job.block_index == b {
                        job_state[j] = JobState::Skipped(why.clone());
                    }
                }
            }
        }
        let (tx, rx) = sync_channel::<(usize, JobResult)>(jobs.len().max(1));
        Run {
            jobs,
            blocks,
            settings,
            console,
            live_stops,
            started,
            minute,
            pipeline_deadline: started + minute * settings.time_limit.max(1) as u32,
            job_state,
            block_state,
            block_started: vec![None; blocks.len()],
            tx,
            rx,
            live: BTreeMap::new(),
            timed_out: BTreeMap::new(),
            stopped: false,
            last_progress: None,
        }
    }

    /// Ctrl-C: every running job is stopped, nothing more starts.
    fn interrupt(&mut self) {
        self.stopped = true;
        for l in self.live.values() {
            l.stop.stop();
        }
        cancel_waiting(
            &mut self.job_state,
            &mut self.block_state,
            self.jobs,
            SkipReason::Interrupted,
        );
    }

    /// Pending blocks whose dependencies are settled start, or are
    /// cancelled when one of them did not pass (unless `--keep-going`).
    fn open_ready_blocks(&mut self) {
        if self.stopped {
            return;
        }
        for b in 0..self.blocks.len() {
            if self.block_state[b] != BlockState::Pending
                || !deps_settled(b, self.blocks, &self.block_state)
            {
                continue;
            }
            let plan = &self.blocks[b];
            let failed_dep = plan.deps.iter().find(|&&d| {
                matches!(
                    self.block_state[d],
                    BlockState::Failed | BlockState::Cancelled
                )
            });
            if let (Some(&d), false, false) = (failed_dep, self.settings.keep_going, plan.always) {
                self.block_state[b] = BlockState::Cancelled;
                let why = SkipReason::DependencyFailed(self.blocks[d].name.clone());
                for (j, job) in self.jobs.iter().enumerate() {
                    if job.block_index == b {
                        self.job_state[j] = JobState::Skipped(why.clone());
                    }
                }
                continue;
            }
            self.block_state[b] = BlockState::Running;
            self.block_started[b] = Some(Instant::now());
        }
    }

    /// Waiting jobs of running blocks start, in pipeline order, up to
    /// `--parallel` at once.
    fn start_jobs(&mut self) {
        for j in 0..self.jobs.len() {
            if self.live.len() >= self.settings.parallel.max(1) || self.stopped {
                break;
            }
            let b = self.jobs[j].block_index;
            if self.job_state[j] != JobState::Waiting || self.block_state[b] != BlockState::Running
            {
                continue;
            }
            self.start_job(j);
        }
    }

    fn start_job(&mut self, j: usize) {
        let b = self.jobs[j].block_index;
        let now = Instant::now();
        let deadline = self.deadline(j, now);
        let stop = JobStop::new();
        if let Ok(mut stops) = self.live_stops.lock() {
            stops.insert(j, stop.clone());
        }
        let extra = if self.blocks[b].always {
            after_pipeline_vars(self.jobs, self.blocks, &self.job_state, self.started)
        } else {
            Vec::new()
        };
        let handle = spawn_job(
            j,
            &self.jobs[j],
            extra,
            self.settings,
            self.console,
            stop.clone(),
            self.tx.clone(),
        );
        match handle {
            Ok(handle) => {
                self.job_state[j] = JobState::Running;
                self.live.insert(
                    j,
                    Live {
                        stop,
                        started: now,
                        deadline,
                        handle,
                    },
                );
            }
            Err(e) => {
                self.job_state[j] =
                    JobState::Done(JobResult::Failed, 0.0, JobEnd::CannotStart(e.to_string()));
            }
        }
    }

    /// The earliest of the pipeline's, the block's and the job's limits.
    fn deadline(&self, j: usize, now: Instant) -> Option<(Instant, JobEnd)> {
        let b = self.jobs[j].block_index;
        let limit = |level, minutes: u64| JobEnd::TimeLimit { level, minutes };
        let mut deadlines = vec![(
            self.pipeline_deadline,
            limit(LimitLevel::Pipeline, self.settings.time_limit),
        )];
        if let (Some(m), Some(s)) = (self.blocks[b].time_limit, self.block_started[b]) {
            deadlines.push((s + self.minute * m as u32, limit(LimitLevel::Block, m)));
        }
        if let Some(m) = self.jobs[j].time_limit {
            deadlines.push((now + self.minute * m as u32, limit(LimitLevel::Job, m)));
        }
        deadlines.into_iter().min_by_key(|(t, _)| *t)
    }

    /// The progress line, when the blocks changed since the last one.
    fn report_progress(&mut self) {
        if self.console.json {
            return;
        }
        let now = progress(&self.block_state, self.blocks);
        if self.last_progress.as_ref() != Some(&now) {
            self.console.note(&super::output::progress_line(&now));
            self.last_progress = Some(now);
        }
    }

    fn next(&self) -> Next {
        if !self.live.is_empty() {
            return Next::Wait;
        }
        if self.stopped || !self.block_state.contains(&BlockState::Pending) {
            return Next::Finish;
        }
        // Pending blocks whose dependencies can no longer settle cannot
        // exist (no cycles), but never spin.
        let can_start = self.block_state.iter().enumerate().any(|(b, s)| {
            *s == BlockState::Pending && deps_settled(b, self.blocks, &self.block_state)
        });
        if can_start {
            Next::Again
        } else {
            Next::Finish
        }
    }

    /// Waits (at most 100 ms) for jobs to end and records them; `false`
    /// when the channel broke.
    fn collect_ended(&mut self) -> bool {
        let ended = match self.rx.recv_timeout(Duration::from_millis(100)) {
            Ok((j, result)) => vec![(j, result, JobEnd::Ran)],
            Err(RecvTimeoutError::Timeout) => {
                let live = &self.live;
                let finished = || {
                    (live.iter())
                        .filter(|(_, l)| l.handle.is_finished())
                        .map(|(&j, _)| j)
                        .collect()
                };
                sweep_ended(finished, &self.rx)
            }
            Err(RecvTimeoutError::Disconnected) => return false,
        };
        for (j, result, end) in ended {
            self.job_ended(j, result, end);
        }
        true
    }

    fn job_ended(&mut self, j: usize, result: JobResult, end: JobEnd) {
        let Some(l) = self.live.remove(&j) else {
            return;
        };
        let took = l.started.elapsed().as_secs_f64();
        let _ = l.handle.join();
        let end = self.timed_out.remove(&j).unwrap_or(end);
        self.job_state[j] = JobState::Done(result, took, end);
        if let Ok(mut stops) = self.live_stops.lock() {
            stops.remove(&j);
        }
        if result != JobResult::Passed && !self.stopped {
            self.fail_fast(j);
        }
    }

    /// A failed job: the task's fail-fast acts on its block, the
    /// pipeline's on every block.
    fn fail_fast(&mut self, j: usize) {
        let b = self.jobs[j].block_index;
        if let Some(stop) = self.blocks[b].fail_fast_stop {
            for (o, job) in self.jobs.iter().enumerate() {
                if job.block_index != b {
                    continue;
                }
                if self.job_state[o] == JobState::Waiting {
                    self.job_state[o] = JobState::Skipped(SkipReason::BlockFailFast);
                }
                if stop {
                    if let Some(l) = self.live.get(&o) {
                        l.stop.stop();
                    }
                }
            }
        }
        if let Some(stop) = self.settings.fail_fast_stop {
            for (o, job) in self.jobs.iter().enumerate() {
                if self.blocks[job.block_index].always {
                    continue;
                }
                if self.job_state[o] == JobState::Waiting {
                    self.job_state[o] = JobState::Skipped(SkipReason::PipelineFailFast);
                    if self.block_state[job.block_index] == BlockState::Pending {
                        self.block_state[job.block_index] = BlockState::Cancelled;
                    }
                }
                if stop {
                    if let Some(l) = self.live.get(&o) {
                        l.stop.stop();
                    }
                }
            }
        }
    }

    /// Running jobs past their deadline are stopped (once).
    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        for (&j, l) in &self.live {
            if let Some((at, end)) = &l.deadline {
                if now >= *at && !self.timed_out.contains_key(&j) {
                    self.timed_out.insert(j, end.clone());
                    l.stop.stop();
                }
            }
        }
    }

    /// Joins every thread (also after a channel error) and makes the rows
    /// and the result.
    fn finish(mut self) -> (Vec<Row>, PipelineResult) {
        for (_, l) in std::mem::take(&mut self.live) {
            l.stop.stop();
            let _ = l.handle.join();
        }
        let rows: Vec<Row> = self
            .jobs
            .iter()
            .zip(&self.job_state)
            .map(|(job, state)| Row {
                block: job.block.clone(),
                job: job.job.clone(),
                outcome: match state {
                    JobState::Done(r, d, end) => Outcome::Ran {
                        result: *r,
                        duration_s: *d,
                        end: end.clone(),
                    },
                    JobState::Skipped(why) => Outcome::Skipped(why.clone()),
                    JobState::Waiting | JobState::Running => Outcome::NotRun,
                },
            })
            .collect();
        let result = if self.stopped {
            PipelineResult::Stopped
        } else if rows.iter().all(|r| r.outcome.passes()) {
            PipelineResult::Passed
        } else {
            PipelineResult::Failed
        };
        (rows, result)
    }
}

fn settled(s: BlockState) -> bool {
    matches!(
        s,
        BlockState::Passed | BlockState::Failed | BlockState::Skipped | BlockState::Cancelled
    )
}

/// Whether `b` may start: its dependencies settled, or for
/// `after_pipeline` every other block.
fn deps_settled(b: usize, blocks: &[BlockPlan], state: &[BlockState]) -> bool {
    if blocks[b].always {
        return (0..blocks.len())
            .filter(|&o| o != b && !blocks[o].always)
            .all(|o| settled(state[o]));
    }
    blocks[b].deps.iter().all(|&d| settled(state[d]))
}

fn cancel_waiting(
    job_state: &mut [JobState],
    block_state: &mut [BlockState],
    jobs: &[PlannedJob],
    why: SkipReason,
) {
    for (j, s) in job_state.iter_mut().enumerate() {
        if *s == JobState::Waiting {
            *s = JobState::Skipped(why.clone());
            let b = jobs[j].block_index;
            if block_state[b] == BlockState::Pending {
                block_state[b] = BlockState::Cancelled;
            }
        }
    }
}

/// A running block whose jobs all ended becomes passed or failed.
fn settle_blocks(job_state: &[JobState], block_state: &mut [BlockState], jobs: &[PlannedJob]) {
    for (b, state) in block_state.iter_mut().enumerate() {
        if *state != BlockState::Running {
            continue;
        }
        let mine: Vec<&JobState> = jobs
            .iter()
            .zip(job_state)
            .filter(|(job, _)| job.block_index == b)
            .map(|(_, s)| s)
            .collect();
        if mine
            .iter()
            .any(|s| matches!(s, JobState::Waiting | JobState::Running))
        {
            continue;
        }
        let passed = mine
            .iter()
            .all(|s| matches!(s, JobState::Done(JobResult::Passed, ..)));
        *state = if passed {
            BlockState::Passed
        } else {
            BlockState::Failed
        };
    }
}

/// Where the blocks are (`after_pipeline` is not one).
fn progress(block_state: &[BlockState], blocks: &[BlockPlan]) -> Progress {
    let counted = || blocks.iter().zip(block_state).filter(|(b, _)| !b.always);
    Progress {
        total: counted().count(),
        done: counted().filter(|(_, s)| settled(**s)).count(),
        failed: counted().filter(|(_, s)| **s == BlockState::Failed).count(),
        running: counted()
            .filter(|(_, s)| **s == BlockState::Running)
            .map(|(b, _)| b.name.clone())
            .collect(),
    }
}

/// What an `after_pipeline` job learns about the pipeline that ran: its
/// result (passed, failed or stopped), the reason (`test` for a failed
/// job, `timeout` for a time limit), when it started and ended.
fn after_pipeline_vars(
    jobs: &[PlannedJob],
    blocks: &[BlockPlan],
    job_state: &[JobState],
    started: Instant,
) -> Vec<(String, String)> {
    let mine = || {
        jobs.iter()
            .zip(job_state)
            .filter(|(j, _)| !blocks[j.block_index].always)
            .map(|(_, s)| s)
    };
    let timed_out = mine().any(|s| matches!(s, JobState::Done(_, _, JobEnd::TimeLimit { .. })));
    let failed = mine().any(|s| match s {
        JobState::Done(r, ..) => *r != JobResult::Passed,
        JobState::Skipped(why) => why.after_failure(),
        JobState::Waiting | JobState::Running => false,
    });
    let (result, reason) = match (failed, timed_out) {
        (_, true) => ("failed", "timeout"),
        (true, false) => ("failed", "test"),
        (false, false) => ("passed", "test"),
    };
    let now = crate::unix_now();
    let ran = started.elapsed().as_secs();
    vec![
        ("SEMAPHORE_PIPELINE_RESULT".into(), result.into()),
        ("SEMAPHORE_PIPELINE_RESULT_REASON".into(), reason.into()),
        (
            "SEMAPHORE_PIPELINE_STARTED_AT".into(),
            now.saturating_sub(ran).to_string(),
        ),
        ("SEMAPHORE_PIPELINE_DONE_AT".into(), now.to_string()),
        (
            "SEMAPHORE_PIPELINE_RUNNING_DURATION".into(),
            ran.to_string(),
        ),
    ]
}

#[allow(clippy::too_many_arguments)]
fn spawn_job(
    j: usize,
    job: &PlannedJob,
    extra_env: Vec<(String, String)>,
    settings: &Settings,
    console: &Console,
    stop: JobStop,
    tx: std::sync::mpsc::SyncSender<(usize, JobResult)>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut job = job.clone();
    job.env_vars.extend(extra_env);
    let request = job.request();
    let job_settings = settings.job_settings.get(j).cloned().unwrap_or_default();
    let secrets = job.secret_values.clone();
    let sink = JobSink::new(
        console.clone(),
        &job.block,
        &job.job,
        settings.prefix_output.then_some(job.label.as_str()),
        settings.verbose,
    );
    std::thread::Builder::new()
        .name("pipeline-job".into())
        .spawn(move || {
            let mut sink = sink;
            let result =
                crate::job::run_with_secrets(&request, &job_settings, &secrets, &mut sink, &stop);
            drop(sink);
            // One slot per job: this never blocks.
            let _ = tx.send((j, result));
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_that_sends_and_ends_while_the_sweep_runs_is_not_taken_for_a_panicked_one() {
        let (tx, rx) = sync_channel(4);
        tx.send((2, JobResult::Passed)).unwrap();
        // Job 0's thread sends its result and ends just as the sweep asks
        // which threads ended; job 1's ended without sending (a panic).
        let ended = sweep_ended(
            || {
                tx.send((0, JobResult::Failed)).unwrap();
                vec![0, 1, 2]
            },
            &rx,
        );
        assert_eq!(
            ended,
            vec![
                (2, JobResult::Passed, JobEnd::Ran),
                (0, JobResult::Failed, JobEnd::Ran),
                (1, JobResult::Failed, JobEnd::Panicked),
            ]
        );
    }
}
