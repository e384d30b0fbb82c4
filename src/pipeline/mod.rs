//! `run <pipeline.yml>`: a whole Semaphore pipeline on this machine,
//! validated, expanded and scheduled as Semaphore would, each job run by
//! the one job runner of every entry point (`job::run_with_secrets`).
//!
//! Pieces: `schema` (the v1.0 checks, every error with its YAML path),
//! `expand` (pipeline → job requests), `when` (conditions), `git` (the
//! local repository's facts, `change_in`, the checkout snapshot),
//! `secrets` (`--secrets-file`), `schedule` (blocks and job threads),
//! `output` (what is printed). Must not touch the network (a compose job's
//! image pull is docker's), nor exit (`main` decides exit codes).
//!
//! # The rules, as Semaphore applies them (read from semaphoreio/semaphore)
//!
//! Schema (`plumber/spec/priv/v1.0.yml`): the top level needs `version`,
//! `agent` (with `machine.type`) and `blocks` (1–300); no unknown keys
//! anywhere; a block has `task` (or `task_file`), at most one of `skip`,
//! `run`, `filters`; a task has 1–50 `jobs`; a job, a `prologue` and each
//! epilogue part have exactly one of `commands` and `commands_file`; a job
//! has at most one of `matrix` and `parallelism` (1–50); a matrix axis has
//! `env_var` and a non-empty `values`; env vars need `name` and `value`;
//! `execution_time_limit` has exactly one of `minutes` and `hours` (≥ 1);
//! `when` is a boolean or a non-empty string.
//!
//! Dependencies (`definition_validator`, `implicit_dependency`): either
//! every block has `dependencies` or none has; with none, each block
//! depends on the one before it. An unknown name or a cycle is an error;
//! block names and job names in a block are unique. A nameless block is
//! `Nameless block N`, a nameless job `Nameless N`.
//!
//! Expansion (`plumber/job_matrix`, the blocks reviser, the schedule
//! request formatter): `parallelism: N` becomes a matrix over
//! `SEMAPHORE_JOB_INDEX` = 1..N after `SEMAPHORE_JOB_COUNT` = N is appended
//! to the job's env vars, and names the jobs `<name> - i/N`; a matrix is
//! the Cartesian product of its axes, the first axis outermost, each
//! combination's variables appended to the job's own and named
//! `<name> - A=1, B=2`. An epilogue written as `{commands: ...}` is the
//! `always` epilogue. `global_job_config` merges into every block: its
//! secrets, env vars and prologue commands come *before* the task's, its
//! epilogue commands *after* the task's. A block without an agent gets the
//! pipeline's. `commands_file` and `task_file` are read relative to the
//! pipeline file, or to the repository's root when they start with `/`
//! (`Block.CodeRepo.Expand`, spc's commands extractor); each line of a
//! commands file is a command as written, a blank line an empty command
//! (spc), and an empty file is an error. A job's commands are the
//! prologue's then its own.
//!
//! Parameters (spc's template evaluator): every string value outside
//! `commands` has its `${{parameters.NAME}}` replaced by the variable
//! `NAME` (here `--env NAME=VALUE`), or by `NAME` itself when unset.
//!
//! Time limits (`MaxTimeLimitChecker`): a job's `execution_time_limit`
//! longer than its block's, or a block's or job's longer than the
//! pipeline's (one hour when unset), is refused.
//!
//! Env var order (zebra's job request factory): `TERM`, `CI`, `SEMAPHORE`,
//! `SEMAPHORE_PROJECT_NAME`/`_ID`, `SEMAPHORE_JOB_NAME`/`_ID`/
//! `_CREATION_TIME`/`_TYPE`, `SEMAPHORE_AGENT_MACHINE_TYPE`/`_OS_IMAGE`;
//! then the repository's `SEMAPHORE_GIT_URL`, `_REPO_NAME`, `_DIR`, `_SHA`,
//! `_REPO_SLUG`, `_REF`, `_COMMIT_RANGE`, then `_REF_TYPE` and `_BRANCH`/
//! `_WORKING_BRANCH` (or `_BRANCH` = the ref and `_TAG_NAME` on a tag);
//! then the secrets' env vars; then the pipeline's variables
//! (`SEMAPHORE_WORKFLOW_ID`, `_NUMBER`, the triggered-by flags,
//! `SEMAPHORE_PIPELINE_ID`, `_NAME`, `SEMAPHORE_BLOCK_NAME`, ...,
//! `SEMAPHORE_GIT_COMMIT_AUTHOR`, `SEMAPHORE_GIT_COMMITTER`), then the
//! run's parameters (`--env` here), then global, task and job env vars.
//! Secret files come before other files, mode 0644. Images
//! `semaphoreci/x` are pulled as `registry.semaphoreci.com/x`; any agent
//! container makes the job a `dockercompose` job.
//!
//! Locally: the workflow, pipeline and job ids are random per run,
//! `SEMAPHORE_WORKFLOW_NUMBER` is 1, the project name is the repository's
//! name, the git values come from the local repository (`git.rs`), and a
//! run is never a pull request. Each job gets a fresh HOME of its own (a
//! fresh machine on Semaphore), removed at the end; its `~/.bash_profile`
//! sources an installed toolbox and defines `checkout` (a clone of the
//! local repository at the snapshot commit) and stand-ins for
//! `sem-version` and `sem-service`.

pub mod expand;
pub mod git;
pub mod outcome;
pub mod output;
pub mod schedule;
pub mod schema;
pub mod secrets;
pub mod when;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::PipelineRun;
use crate::job::JobStop;
use outcome::SkipReason;
use schema::Cond;

/// Why a pipeline cannot run (exit 2).
#[derive(Debug)]
pub enum PipelineError {
    Read(PathBuf, std::io::Error),
    /// Every schema error, one per line.
    Invalid(PathBuf, Vec<String>),
    Secrets(String),
    /// A selection (`--block`, `--job`) or option that matches nothing.
    Selection(String),
    /// A directory of the run's scratch space cannot be made.
    MakeDir {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A job's `~/.bash_profile` cannot be written.
    WriteProfile(std::io::Error),
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipelineError::Read(p, e) => write!(f, "cannot read pipeline {}: {e}", p.display()),
            PipelineError::Invalid(p, errors) => {
                write!(
                    f,
                    "pipeline {} is not valid ({} error{}):",
                    p.display(),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                )?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            PipelineError::Secrets(m) | PipelineError::Selection(m) => f.write_str(m),
            PipelineError::MakeDir { path, error } => {
                write!(f, "cannot make {}: {error}", path.display())
            }
            PipelineError::WriteProfile(e) => write!(f, "cannot write the job's profile: {e}"),
        }
    }
}

impl std::error::Error for PipelineError {}

/// How the pipeline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineResult {
    Passed,
    Failed,
    Stopped,
}

/// Whether `path` holds a pipeline (a YAML mapping with `version` and
/// `blocks`) rather than a job request.
pub fn is_pipeline(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "json") {
        return false;
    }
    // A job file can be hundreds of megabytes; a pipeline is small. Only
    // the start of a big file is looked at.
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.len() > 16 * 1024 * 1024 {
        return false;
    }
    std::fs::read_to_string(path).is_ok_and(|t| schema::looks_like_pipeline(&t))
}

struct Facts<'a>(&'a git::GitInfo);

impl when::Facts for Facts<'_> {
    fn keyword(&self, name: &str) -> Option<String> {
        self.0.keyword(name)
    }
    fn change_in(&self, args: &[when::Arg]) -> Result<bool, Box<dyn std::error::Error>> {
        Ok(self.0.change_in(args)?)
    }
}

/// `Some(true/false)`, or `None` with the reason noted once.
fn decide(
    cond: &Cond,
    git: &git::GitInfo,
    what: output::Condition<'_>,
    notes: &mut Vec<String>,
) -> Option<bool> {
    match cond {
        Cond::Bool(b) => Some(*b),
        Cond::Expr(expr) => match when::eval(expr, &Facts(git)) {
            when::Truth::Yes => Some(true),
            when::Truth::No => Some(false),
            when::Truth::Unknown(why) => {
                let note = output::undecided_note(what, &why);
                if !notes.contains(&note) {
                    notes.push(note);
                }
                None
            }
        },
    }
}

/// The fail-fast mode of a task (`block`) or of the pipeline (`None`):
/// stop (true) or cancel (false), when its condition holds.
fn fail_fast_mode(
    f: &Option<schema::FailFast>,
    git: &git::GitInfo,
    block: Option<&str>,
    notes: &mut Vec<String>,
) -> Option<bool> {
    let f = f.as_ref()?;
    if let Some(c) = &f.stop {
        if decide(c, git, output::Condition::FailFastStop(block), notes) == Some(true) {
            return Some(true);
        }
    }
    if let Some(c) = &f.cancel {
        if decide(c, git, output::Condition::FailFastCancel(block), notes) == Some(true) {
            return Some(false);
        }
    }
    None
}

/// Validates, expands and (unless `--list`) runs the pipeline.
pub fn run(opts: PipelineRun) -> Result<PipelineResult, PipelineError> {
    let text = std::fs::read_to_string(&opts.file)
        .map_err(|e| PipelineError::Read(opts.file.clone(), e))?;
    let git = git::GitInfo::read(&opts.file, opts.base.as_deref());
    // Outside a repository, `/` paths are read from the current directory
    // (where Semaphore's compiler stands: the repository's root).
    let root = git.top.clone().unwrap_or_else(|| PathBuf::from("."));
    let source = schema::Source {
        root: &root,
        parameters: &opts.env,
    };
    let pipeline = schema::parse_in(&text, &opts.file, source)
        .map_err(|e| PipelineError::Invalid(opts.file.clone(), e))?;
    let secrets = match &opts.secrets_file {
        Some(path) => secrets::load(path).map_err(PipelineError::Secrets)?,
        None => BTreeMap::new(),
    };
    let console = output::Console::new(Box::new(std::io::stdout()), opts.json);
    check_secrets(&opts, &pipeline, &secrets, &console)?;
    let created_at = crate::unix_now();
    let cx = expand::Context {
        git: &git,
        secrets: &secrets,
        parameters: &opts.env,
        workflow_id: expand::new_id(),
        pipeline_id: expand::new_id(),
        created_at,
    };
    let mut jobs = expand::expand(&pipeline, &cx);
    let mut after = expand::expand_after(&pipeline, &cx);

    let (selected, deps_idx) = select(&opts, &pipeline, &mut jobs, &mut after)?;
    let mut notes = Vec::new();
    let blocks = block_plans(
        &pipeline, &selected, &deps_idx, &git, &mut jobs, after, &mut notes,
    );
    label_repeated_names(&mut jobs);
    let pipeline_fail_fast = fail_fast_mode(&pipeline.fail_fast, &git, None, &mut notes);

    if opts.list {
        print_list(&console, &jobs, &blocks, &notes);
        return Ok(PipelineResult::Passed);
    }

    for n in &notes {
        console.note(n);
    }
    for line in summary(&pipeline) {
        console.note(&line);
    }
    if jobs.is_empty() {
        console.note("nothing to run");
    }

    // Per-job HOMEs in a private scratch directory.
    let scratch = make_scratch(&opts.settings.options.tmp_dir)?;
    let snapshot = match git::snapshot(&git, opts.checkout_head, &scratch) {
        Ok(c) => Some(c),
        Err(why) => {
            console.note(&format!("note: checkout will not work: {why}"));
            None
        }
    };
    let real_home = crate::platform::home_var().map(PathBuf::from);
    let mut job_settings = Vec::new();
    for (i, _) in jobs.iter().enumerate() {
        let home = scratch.join(format!("job-{i}"));
        if let Err(e) = std::fs::create_dir_all(&home) {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(PipelineError::MakeDir {
                path: home,
                error: e,
            });
        }
        let profile = bash_profile(
            git.top.as_deref(),
            snapshot.as_deref(),
            real_home.as_deref(),
        );
        if let Err(e) = std::fs::write(home.join(".bash_profile"), profile) {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(PipelineError::WriteProfile(e));
        }
        // The one setting that differs per job: its own HOME.
        let mut s = opts.settings.clone();
        s.options.home = home;
        job_settings.push(s);
    }
    let parallel = if opts.parallel == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.parallel
    };
    let settings = schedule::Settings {
        parallel,
        keep_going: opts.keep_going,
        fail_fast_stop: pipeline_fail_fast,
        time_limit: pipeline.execution_time_limit.unwrap_or(60),
        prefix_output: parallel > 1 && jobs.len() > 1,
        verbose: opts.verbose,
        job_settings,
    };
    log::info!("{}", crate::executor::containment());
    let interrupted = Arc::new(AtomicBool::new(false));
    let live: Arc<Mutex<BTreeMap<usize, JobStop>>> = Arc::new(Mutex::new(BTreeMap::new()));
    {
        let interrupted = interrupted.clone();
        let live = live.clone();
        if let Err(e) = ctrlc::set_handler(move || {
            interrupted.store(true, Ordering::SeqCst);
            if let Ok(stops) = live.lock() {
                for s in stops.values() {
                    s.stop();
                }
            }
        }) {
            log::warn!("Ctrl-C will not stop the jobs cleanly: {e}");
        }
    }
    let (rows, result) = schedule::run(&jobs, &blocks, &settings, &console, &interrupted, &live);
    let _ = std::fs::remove_dir_all(&scratch);
    if opts.json {
        console.write(&format!("{}\n", output::finished_json(result, &rows)));
    } else {
        console.write(&format!(
            "\n{}Pipeline {}\n",
            output::table(&rows),
            output::result_word(result)
        ));
    }
    Ok(result)
}

/// A missing secret stops the run (exit 2) unless `--allow-missing-secrets`
/// or `--list`; then one line names them.
fn check_secrets(
    opts: &PipelineRun,
    pipeline: &schema::Pipeline,
    secrets: &BTreeMap<String, secrets::Secret>,
    console: &output::Console,
) -> Result<(), PipelineError> {
    let missing = expand::missing_secrets(pipeline, secrets);
    if !missing.is_empty() {
        if !opts.allow_missing_secrets && !opts.list {
            let hint = if opts.secrets_file.is_none() {
                " (give them with --secrets-file, in the shape `sem get secret NAME -o yaml` prints)"
            } else {
                ""
            };
            return Err(PipelineError::Secrets(format!(
                "missing secrets{hint}; --allow-missing-secrets runs without them:\n  {}",
                missing.join("\n  ")
            )));
        }
        console.note(&output::missing_secrets_line(
            &expand::missing_secret_names(pipeline, secrets),
        ));
    }
    Ok(())
}

/// `--block`/`--only`/`--job`: which blocks run (by index), each block's
/// dependencies (by index); `jobs` and `after` keep the selected jobs.
fn select(
    opts: &PipelineRun,
    pipeline: &schema::Pipeline,
    jobs: &mut Vec<expand::PlannedJob>,
    after: &mut Vec<expand::PlannedJob>,
) -> Result<(Vec<bool>, Vec<Vec<usize>>), PipelineError> {
    let names: Vec<&str> = pipeline.blocks.iter().map(|b| b.name.as_str()).collect();
    for b in &opts.blocks {
        if !names.contains(&b.as_str()) {
            return Err(PipelineError::Selection(format!(
                "--block {b:?}: no such block (blocks: {})",
                names.join(", ")
            )));
        }
    }
    let deps_idx: Vec<Vec<usize>> = pipeline
        .dependencies()
        .iter()
        .map(|d| {
            d.iter()
                .filter_map(|n| names.iter().position(|x| x == n))
                .collect()
        })
        .collect();
    let mut selected = vec![opts.blocks.is_empty(); names.len()];
    for b in &opts.blocks {
        if let Some(i) = names.iter().position(|n| n == b) {
            selected[i] = true;
        }
    }
    if !opts.only && !opts.blocks.is_empty() {
        // Dependencies of selected blocks, transitively (bounded: each
        // pass adds a block or stops).
        for _ in 0..names.len() {
            let before = selected.clone();
            for i in 0..names.len() {
                if before[i] {
                    for &d in &deps_idx[i] {
                        selected[d] = true;
                    }
                }
            }
            if before == selected {
                break;
            }
        }
    }
    if !opts.jobs.is_empty() {
        for j in &opts.jobs {
            if !jobs
                .iter()
                .chain(after.iter())
                .any(|p| job_selected(j, &p.block, &p.job))
            {
                return Err(PipelineError::Selection(format!(
                    "--job {j:?}: no job has that name (give `name`, or `block/name` for one block's)"
                )));
            }
        }
    }
    let job_matches = |block: &str, name: &str| {
        opts.jobs.is_empty() || opts.jobs.iter().any(|j| job_selected(j, block, name))
    };
    let select_after = opts.blocks.is_empty();
    jobs.retain(|j| selected[j.block_index] && job_matches(&j.block, &j.job));
    after.retain(|j| select_after && job_matches(&j.block, &j.job));

    Ok((selected, deps_idx))
}

/// The blocks as the scheduler sees them (skip/run conditions decided,
/// fail-fast modes), `after_pipeline` last with its jobs moved into `jobs`.
fn block_plans(
    pipeline: &schema::Pipeline,
    selected: &[bool],
    deps_idx: &[Vec<usize>],
    git: &git::GitInfo,
    jobs: &mut Vec<expand::PlannedJob>,
    mut after: Vec<expand::PlannedJob>,
    notes: &mut Vec<String>,
) -> Vec<schedule::BlockPlan> {
    let mut blocks: Vec<schedule::BlockPlan> = Vec::new();
    for (i, b) in pipeline.blocks.iter().enumerate() {
        let mut skipped = None;
        if !selected[i] {
            skipped = Some(SkipReason::NotSelected);
        } else if let Some(c) = &b.skip {
            if decide(c, git, output::Condition::Skip(&b.name), notes) == Some(true) {
                skipped = Some(SkipReason::SkipCondition);
            }
        } else if let Some(c) = &b.run {
            if decide(c, git, output::Condition::Run(&b.name), notes) == Some(false) {
                skipped = Some(SkipReason::RunCondition);
            }
        }
        blocks.push(schedule::BlockPlan {
            name: b.name.clone(),
            deps: deps_idx[i].clone(),
            skipped,
            time_limit: b.execution_time_limit,
            fail_fast_stop: fail_fast_mode(&b.task.fail_fast, git, Some(&b.name), notes),
            always: false,
        });
    }
    if !after.is_empty() {
        for j in &mut after {
            j.block_index = blocks.len();
        }
        blocks.push(schedule::BlockPlan {
            name: "after_pipeline".into(),
            always: true,
            ..schedule::BlockPlan::default()
        });
        jobs.extend(after);
    }
    blocks
}

/// `--list`: the plan (with `--json`, each job's request), nothing run.
fn print_list(
    console: &output::Console,
    jobs: &[expand::PlannedJob],
    blocks: &[schedule::BlockPlan],
    notes: &[String],
) {
    if console.json {
        for j in jobs {
            console.write(&format!("{}\n", j.list_json()));
        }
    } else {
        for (i, b) in blocks.iter().enumerate() {
            let deps: Vec<&str> = b.deps.iter().map(|&d| blocks[d].name.as_str()).collect();
            let state = b
                .skipped
                .as_ref()
                .map(|s| format!(" [skipped: {}]", output::skip_reason(s)))
                .unwrap_or_default();
            console.write(&format!(
                "block \"{}\"{}{state}\n",
                b.name,
                if deps.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", deps.join(", "))
                }
            ));
            for j in jobs.iter().filter(|j| j.block_index == i) {
                console.write(&format!(
                    "  job \"{}\" ({} commands)\n",
                    j.job,
                    j.commands.len()
                ));
            }
        }
    }
    for n in notes {
        console.note(n);
    }
}

/// What a local run did with the parts of a pipeline that only mean
/// something on Semaphore.
fn summary(p: &schema::Pipeline) -> Vec<String> {
    let mut out = Vec::new();
    if !p.promotions.is_empty() {
        let names: Vec<String> = p
            .promotions
            .iter()
            .map(|x| {
                format!(
                    "{} ({}{})",
                    x.name,
                    x.pipeline_file,
                    if x.auto { ", auto" } else { "" }
                )
            })
            .collect();
        out.push(format!("note: promotions are not started by a local run: {}; run a promoted pipeline with `semaphore-agent run <its file>`", names.join(", ")));
    }
    if p.auto_cancel {
        out.push("note: auto_cancel has nothing to cancel locally (one run at a time)".into());
    }
    if !p.queue.is_empty() {
        out.push(format!(
            "note: queue {} ignored: a local run does not wait for other pipelines",
            p.queue.join(", ")
        ));
    }
    if p.after_pipeline.is_some() {
        out.push("note: after_pipeline jobs run once every block ended".into());
    }
    if !p.unset_parameters.is_empty() {
        out.push(format!(
            "note: no --env for parameters {}: each ${{{{parameters.NAME}}}} became its name, as on Semaphore",
            p.unset_parameters.join(", ")
        ));
    }
    out.extend(foreign_machines(p));
    out
}

/// The operating system a machine type or OS image asks for, when it is
/// not Linux.
fn foreign_os(agent: &schema::Agent) -> Option<&'static str> {
    let t = agent.machine_type.to_ascii_lowercase();
    let image = agent.os_image.to_ascii_lowercase();
    if t.contains("windows") || image.contains("windows") {
        Some("Windows")
    } else if t.starts_with("a1-") || t.starts_with("a2-") || image.starts_with("macos") {
        Some("macOS")
    } else {
        None
    }
}

/// One note per foreign machine: its blocks run their commands in bash on
/// this machine.
fn foreign_machines(p: &schema::Pipeline) -> Vec<String> {
    let mut by_machine: Vec<(&'static str, String, Vec<&str>)> = Vec::new();
    for b in &p.blocks {
        let agent = b.task.agent.as_ref().unwrap_or(&p.agent);
        let Some(os) = foreign_os(agent) else {
            continue;
        };
        let machine = if agent.os_image.is_empty() {
            agent.machine_type.clone()
        } else {
            format!("{} {}", agent.machine_type, agent.os_image)
        };
        match by_machine.iter_mut().find(|(_, m, _)| *m == machine) {
            Some((_, _, blocks)) => blocks.push(&b.name),
            None => by_machine.push((os, machine, vec![&b.name])),
        }
    }
    by_machine
        .into_iter()
        .map(|(os, machine, blocks)| {
            let (who, whose) = if blocks.len() == 1 {
                (format!("block {} asks", blocks[0]), "its")
            } else {
                (format!("blocks {} ask", blocks.join(", ")), "their")
            };
            format!(
                "note: {who} for a {os} machine ({machine}); {whose} jobs run here, in bash on this machine"
            )
        })
        .collect()
}

/// Whether `--job sel` selects the job `name` of `block`: its expanded
/// name, the base name of a matrix or parallelism job, or either after
/// `block/`.
fn job_selected(sel: &str, block: &str, name: &str) -> bool {
    let named = |sel: &str| {
        name == sel
            || name
                .strip_prefix(sel)
                .is_some_and(|rest| rest.starts_with(" - "))
    };
    named(sel)
        || sel
            .match_indices('/')
            .any(|(at, _)| sel[..at].trim() == block && named(sel[at + 1..].trim()))
}

/// Jobs whose name another block also has are labelled `block / job`.
fn label_repeated_names(jobs: &mut [expand::PlannedJob]) {
    let mut blocks_of: BTreeMap<String, std::collections::BTreeSet<usize>> = BTreeMap::new();
    for j in jobs.iter() {
        blocks_of
            .entry(j.job.clone())
            .or_default()
            .insert(j.block_index);
    }
    for j in jobs.iter_mut() {
        if blocks_of.get(&j.job).is_some_and(|b| b.len() > 1) {
            j.label = format!("{} / {}", j.block, j.job);
        }
    }
}

/// A private (0700) directory for this run's job HOMEs.
fn make_scratch(tmp: &Path) -> Result<PathBuf, PipelineError> {
    let base = if tmp.as_os_str().is_empty() {
        std::env::temp_dir()
    } else {
        tmp.to_path_buf()
    };
    let dir = base.join(format!("semaphore-pipeline-{:016x}", crate::random::u64()));
    crate::platform::create_dir_all(&dir, 0o700).map_err(|error| PipelineError::MakeDir {
        path: dir.clone(),
        error,
    })?;
    Ok(dir)
}

/// Single-quoted for bash.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The job's `~/.bash_profile`: an installed toolbox, then `checkout` and
/// the stand-ins.
fn bash_profile(top: Option<&Path>, commit: Option<&str>, real_home: Option<&Path>) -> String {
    let mut s = String::from("# Written by semaphore-agent for a local pipeline run.\n");
    if let Some(home) = real_home {
        let toolbox = home.join(".toolbox").join("toolbox");
        if toolbox.is_file() {
            s.push_str(&format!(
                "source {}\n",
                quoted(&toolbox.display().to_string())
            ));
        }
    }
    match (top, commit) {
        (Some(top), Some(commit)) => s.push_str(&format!(
            "checkout() {{\n  local dir=\"${{SEMAPHORE_GIT_DIR:-repo}}\"\n  case \"$dir\" in\n    /*) ;;\n    *) dir=\"$HOME/$dir\"; rm -rf \"$dir\" ;;\n  esac\n  git clone -q --no-checkout {} \"$dir\" &&\n  if [ -n \"$SEMAPHORE_GIT_BRANCH\" ] && [ \"$SEMAPHORE_GIT_REF_TYPE\" = branch ]; then\n    git -C \"$dir\" checkout -q -B \"$SEMAPHORE_GIT_BRANCH\" {c}\n  else\n    git -C \"$dir\" checkout -q --detach {c}\n  fi &&\n  cd \"$dir\" &&\n  echo \"checkout: cloned the local repository at {short} into $dir\"\n}}\n",
            quoted(&top.display().to_string()),
            c = quoted(commit),
            short = &commit[..commit.len().min(12)],
        )),
        _ => s.push_str("checkout() {\n  echo \"checkout: the pipeline is not in a git repository with a commit; nothing to check out\" >&2\n  return 1\n}\n"),
    }
    s.push_str("sem-version() {\n  echo \"sem-version $* skipped: it exists only on Semaphore's cloud machines; this job uses what is installed here\"\n}\n");
    s.push_str("sem-service() {\n  echo \"sem-service $* skipped: it exists only on Semaphore's cloud machines; start the service yourself (or use agent.containers)\"\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_profile_quotes_paths_and_defines_the_commands() {
        let p = bash_profile(Some(Path::new("/src/it's here")), Some("abc123"), None);
        assert!(
            p.contains("git clone -q --no-checkout '/src/it'\\''s here' \"$dir\""),
            "{p}"
        );
        assert!(
            p.contains("checkout() {")
                && p.contains("sem-version() {")
                && p.contains("sem-service() {")
        );
        let none = bash_profile(None, None, None);
        assert!(none.contains("not in a git repository"), "{none}");
        assert!(!none.contains("git clone"));
    }

    #[test]
    fn the_summary_says_what_was_done_with_cloud_only_parts() {
        let yaml = "version: v1.0\nagent:\n  machine:\n    type: t\nauto_cancel:\n  running:\n    when: true\nqueue:\n  name: deploys\npromotions:\n  - name: Prod\n    pipeline_file: prod.yml\n    auto_promote:\n      when: \"branch = 'main'\"\nblocks:\n  - task:\n      jobs:\n        - commands: [a]\n";
        let p = schema::parse(yaml, Path::new("p.yml")).unwrap_or_default();
        let lines = summary(&p).join("\n");
        assert!(
            lines.contains("promotions are not started by a local run: Prod (prod.yml, auto)"),
            "{lines}"
        );
        assert!(lines.contains("auto_cancel"), "{lines}");
        assert!(lines.contains("queue deploys ignored"), "{lines}");
    }

    #[test]
    fn only_a_mapping_with_version_and_blocks_is_a_pipeline() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            path
        };
        assert!(is_pipeline(&write("p.yml", "version: v1.0\nblocks: []\n")));
        assert!(!is_pipeline(&write(
            "j.yml",
            "commands:\n  - directive: echo\n"
        )));
        assert!(!is_pipeline(&write(
            "p.json",
            "{\"version\": 1, \"blocks\": []}"
        )));
        assert!(!is_pipeline(&dir.path().join("missing.yml")));
    }

    #[test]
    fn job_selects_by_name_base_name_or_block_slash_name() {
        assert!(job_selected("test", "B", "test"));
        assert!(job_selected("test", "B", "test - 1/2"));
        assert!(job_selected("B/test", "B", "test - 1/2"));
        assert!(job_selected("B / test - 1/2", "B", "test - 1/2"));
        assert!(job_selected("a/b", "B", "a/b"));
        assert!(!job_selected("A/test", "B", "test"));
        assert!(!job_selected("tes", "B", "test"));
    }
}
