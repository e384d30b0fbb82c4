//! Running the planned jobs: blocks in dependency order, the jobs of ready
//! blocks side by side up to `--parallel`, each on a named `pipeline-job`
//! thread running the ordinary job lifecycle; time limits, fail-fast,
//! skipped dependents and Ctrl-C, decided on the calling thread.
//!
//! The calling thread is the only one that changes the run's state: job
//! threads report their result over a bounded channel (one slot per job,
//! so a send never blocks) and every thread is joined before [`run`]
//! returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::expand::PlannedJob;
use super::output::{Console, JobSink, Row};
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
    pub skipped: Option<String>,
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
    /// Each job's settings, by job index (HOME differs per job).
    pub job_settings: Vec<JobSettings>,
}

#[derive(Debug, Clone, PartialEq)]
enum JobState {
    Waiting,
    Running,
    Done(JobResult, f64, String),
    Skipped(String),
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
    deadline: Option<(Instant, String)>,
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
) -> (Vec<Row>, &'static str) {
    let started = Instant::now();
    let minute = minute();
    let pipeline_deadline = started + minute * settings.time_limit.max(1) as u32;
    let mut job_state: Vec<JobState> = vec![JobState::Waiting; jobs.len()];
    let mut block_state: Vec<BlockState> = vec![BlockState::Pending; blocks.len()];
    let mut block_started: Vec<Option<Instant>> = vec![None; blocks.len()];
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
    let mut live: BTreeMap<usize, Live> = BTreeMap::new();
    let mut timed_out: BTreeMap<usize, String> = BTreeMap::new();
    let mut pipeline_stopped = false;
    let mut last_progress = String::new();

    loop {
        if interrupted.load(Ordering::SeqCst) && !pipeline_stopped {
            pipeline_stopped = true;
            for l in live.values() {
                l.stop.stop();
            }
            cancel_waiting(&mut job_state, &mut block_state, jobs, "Ctrl-C");
        }
        // Blocks whose dependencies are settled.
        for b in 0..blocks.len() {
            if block_state[b] != BlockState::Pending || pipeline_stopped {
                continue;
            }
            let plan = &blocks[b];
            let deps_done = if plan.always {
                (0..blocks.len())
                    .filter(|&o| o != b && !blocks[o].always)
                    .all(|o| settled(block_state[o]))
            } else {
                plan.deps.iter().all(|&d| settled(block_state[d]))
            };
            if !deps_done {
                continue;
            }
            let failed_dep = plan
                .deps
                .iter()
                .find(|&&d| matches!(block_state[d], BlockState::Failed | BlockState::Cancelled));
            if let (Some(&d), false, false) = (failed_dep, settings.keep_going, plan.always) {
                block_state[b] = BlockState::Cancelled;
                let why = format!("dependency {:?} did not pass", blocks[d].name);
                for (j, job) in jobs.iter().enumerate() {
                    if job.block_index == b {
                        job_state[j] = JobState::Skipped(why.clone());
                    }
                }
                continue;
            }
            block_state[b] = BlockState::Running;
            block_started[b] = Some(Instant::now());
        }
        // Start jobs of running blocks, in pipeline order.
        for j in 0..jobs.len() {
            if live.len() >= settings.parallel.max(1) || pipeline_stopped {
                break;
            }
            let b = jobs[j].block_index;
            if job_state[j] != JobState::Waiting || block_state[b] != BlockState::Running {
                continue;
            }
            let now = Instant::now();
            let mut deadlines = vec![(
                pipeline_deadline,
                limit_note("pipeline", settings.time_limit),
            )];
            if let (Some(m), Some(s)) = (blocks[b].time_limit, block_started[b]) {
                deadlines.push((s + minute * m as u32, limit_note("block", m)));
            }
            if let Some(m) = jobs[j].time_limit {
                deadlines.push((now + minute * m as u32, limit_note("job", m)));
            }
            let deadline = deadlines.into_iter().min_by_key(|(t, _)| *t);
            let stop = JobStop::new();
            if let Ok(mut stops) = live_stops.lock() {
                stops.insert(j, stop.clone());
            }
            let extra = if blocks[b].always {
                after_pipeline_vars(jobs, blocks, &job_state, started)
            } else {
                Vec::new()
            };
            let handle = spawn_job(
                j,
                &jobs[j],
                extra,
                settings,
                console,
                stop.clone(),
                tx.clone(),
            );
            match handle {
                Ok(handle) => {
                    job_state[j] = JobState::Running;
                    live.insert(
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
                    job_state[j] = JobState::Done(
                        JobResult::Failed,
                        0.0,
                        format!("cannot start a thread: {e}"),
                    );
                }
            }
        }
        settle_blocks(&job_state, &mut block_state, jobs);
        if !console.json {
            let line = progress(&job_state, &block_state, jobs, blocks);
            if line != last_progress {
                console.note(&line);
                last_progress = line;
            }
        }
        if live.is_empty() && !block_state.iter().any(|s| matches!(s, BlockState::Pending)) {
            break;
        }
        if live.is_empty() && pipeline_stopped {
            break;
        }
        if live.is_empty() {
            // Pending blocks whose dependencies can no longer settle
            // cannot exist (no cycles), but never spin.
            if !block_state
                .iter()
                .enumerate()
                .any(|(b, s)| *s == BlockState::Pending && deps_settled(b, blocks, &block_state))
            {
                break;
            }
            continue;
        }
        let mut ended: Vec<(usize, JobResult, String)> = Vec::new();
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((j, result)) => ended.push((j, result, String::new())),
            Err(RecvTimeoutError::Timeout) => {
                // A job thread sends before it ends, so one that ended
                // without a result panicked: its job failed.
                while let Ok((j, result)) = rx.try_recv() {
                    ended.push((j, result, String::new()));
                }
                for (&j, l) in &live {
                    if l.handle.is_finished() && !ended.iter().any(|(e, ..)| *e == j) {
                        ended.push((j, JobResult::Failed, "the job's thread panicked".into()));
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        for (j, result, panic_note) in ended {
            if let Some(l) = live.remove(&j) {
                let took = l.started.elapsed().as_secs_f64();
                let _ = l.handle.join();
                let note = timed_out.remove(&j).unwrap_or(panic_note);
                job_state[j] = JobState::Done(result, took, note);
                if let Ok(mut stops) = live_stops.lock() {
                    stops.remove(&j);
                }
                if result != JobResult::Passed && !pipeline_stopped {
                    fail_fast(
                        j,
                        jobs,
                        blocks,
                        settings,
                        &live,
                        &mut job_state,
                        &mut block_state,
                    );
                }
            }
        }
        let now = Instant::now();
        for (&j, l) in &live {
            if let Some((at, note)) = &l.deadline {
                if now >= *at && !timed_out.contains_key(&j) {
                    timed_out.insert(j, note.clone());
                    l.stop.stop();
                }
            }
        }
    }
    // Every thread is joined, also after a channel error.
    for (_, l) in std::mem::take(&mut live) {
        l.stop.stop();
        let _ = l.handle.join();
    }
    let rows: Vec<Row> = jobs
        .iter()
        .zip(&job_state)
        .map(|(job, state)| {
            let (result, duration_s, note) = match state {
                JobState::Done(r, d, n) => (r.as_str().to_string(), *d, n.clone()),
                JobState::Skipped(why) => ("skipped".to_string(), 0.0, why.clone()),
                JobState::Waiting | JobState::Running => {
                    ("not run".to_string(), 0.0, String::new())
                }
            };
            Row {
                block: job.block.clone(),
                job: job.job.clone(),
                result,
                duration_s,
                note,
            }
        })
        .collect();
    let result = if pipeline_stopped {
        "stopped"
    } else if rows.iter().all(|r| {
        r.result == "passed" || (r.result == "skipped" && !r.note.contains("did not pass"))
    }) {
        "passed"
    } else {
        "failed"
    };
    (rows, result)
}

fn limit_note(level: &str, minutes: u64) -> String {
    format!("{level} execution_time_limit of {minutes} min reached")
}

fn settled(s: BlockState) -> bool {
    matches!(
        s,
        BlockState::Passed | BlockState::Failed | BlockState::Skipped | BlockState::Cancelled
    )
}

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
    why: &str,
) {
    for (j, s) in job_state.iter_mut().enumerate() {
        if *s == JobState::Waiting {
            *s = JobState::Skipped(why.to_string());
            let b = jobs[j].block_index;
            if block_state[b] == BlockState::Pending {
                block_state[b] = BlockState::Cancelled;
            }
        }
    }
}

/// A failed job: the task's fail-fast acts on its block, the pipeline's
/// on every block.
fn fail_fast(
    j: usize,
    jobs: &[PlannedJob],
    blocks: &[BlockPlan],
    settings: &Settings,
    live: &BTreeMap<usize, Live>,
    job_state: &mut [JobState],
    block_state: &mut [BlockState],
) {
    let b = jobs[j].block_index;
    if let Some(stop) = blocks[b].fail_fast_stop {
        for (o, job) in jobs.iter().enumerate() {
            if job.block_index != b {
                continue;
            }
            if job_state[o] == JobState::Waiting {
                job_state[o] = JobState::Skipped("the block's fail_fast".into());
            }
            if stop {
                if let Some(l) = live.get(&o) {
                    l.stop.stop();
                }
            }
        }
    }
    if let Some(stop) = settings.fail_fast_stop {
        for (o, job) in jobs.iter().enumerate() {
            if blocks[job.block_index].always {
                continue;
            }
            if job_state[o] == JobState::Waiting {
                job_state[o] = JobState::Skipped("the pipeline's fail_fast".into());
                if block_state[job.block_index] == BlockState::Pending {
                    block_state[job.block_index] = BlockState::Cancelled;
                }
            }
            if stop {
                if let Some(l) = live.get(&o) {
                    l.stop.stop();
                }
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

fn progress(
    job_state: &[JobState],
    block_state: &[BlockState],
    jobs: &[PlannedJob],
    blocks: &[BlockPlan],
) -> String {
    let running = job_state
        .iter()
        .filter(|s| **s == JobState::Running)
        .count();
    let passed = job_state
        .iter()
        .filter(|s| matches!(s, JobState::Done(JobResult::Passed, ..)))
        .count();
    let failed = job_state
        .iter()
        .filter(|s| matches!(s, JobState::Done(r, ..) if *r != JobResult::Passed))
        .count();
    let done_blocks = block_state.iter().filter(|s| settled(**s)).count();
    let current: Vec<&str> = blocks
        .iter()
        .zip(block_state)
        .filter(|(_, s)| **s == BlockState::Running)
        .map(|(b, _)| b.name.as_str())
        .collect();
    let _ = jobs;
    format!(
        "--- blocks {done_blocks}/{} done{}: {running} running, {passed} passed, {failed} failed",
        blocks.len(),
        if current.is_empty() {
            String::new()
        } else {
            format!(" (running: {})", current.join(", "))
        }
    )
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
    let timed_out = mine()
        .any(|s| matches!(s, JobState::Done(_, _, note) if note.contains("execution_time_limit")));
    let failed = mine().any(|s| {
        matches!(s, JobState::Done(r, ..) if *r != JobResult::Passed)
            || matches!(s, JobState::Skipped(why) if why.contains("did not pass") || why.contains("fail_fast"))
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
        settings.prefix_output,
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
