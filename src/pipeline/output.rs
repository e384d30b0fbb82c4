//! What a pipeline run prints: each job's events (for people, each line
//! prefixed with the job's name, or `block / job` where a name repeats,
//! when jobs run side by side, the setup steps folded into one line unless
//! `--verbose`; or JSON lines with `block` and `job` added), progress
//! lines, notes, the final table and `pipeline_finished`.
//!
//! Every job thread writes through one [`Console`] (a mutex around
//! stdout), a whole line at a time, so lines of parallel jobs never mix.
//! A job's unfinished line is held back at most [`MAX_PARTIAL`] bytes.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::outcome::{JobEnd, LimitLevel, Outcome, Progress, Row, SkipReason};
use super::PipelineResult;
use crate::events::{Event, EventSink};

/// The most of an unfinished output line a job holds before printing it.
const MAX_PARTIAL: usize = 8 * 1024;

/// The shared stdout.
#[derive(Clone)]
pub struct Console {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    pub json: bool,
}

impl Console {
    pub fn new(out: Box<dyn Write + Send>, json: bool) -> Console {
        Console {
            out: Arc::new(Mutex::new(out)),
            json,
        }
    }

    /// Writes `text` at once; a closed stdout is ignored (`| head`).
    pub fn write(&self, text: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// A note for people: a line on stdout, or on stderr under `--json`
    /// (stdout then holds JSON only).
    pub fn note(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            self.write(&format!("{line}\n"));
        }
    }
}

/// One job's sink.
pub struct JobSink {
    console: Console,
    block: String,
    job: String,
    /// `[label] ` before each line, or nothing.
    prefix: String,
    partial: String,
    /// `--verbose`: every setup line as the job log has it.
    verbose: bool,
    /// The setup step running now (folded unless `verbose`).
    setup: Option<SetupStep>,
    /// What the setup steps before the first command did, until it is
    /// told in one line.
    folded: Option<Folded>,
}

/// A setup step ("Exporting environment variables", "Injecting Files")
/// held back: its lines are shown only if it fails.
struct SetupStep {
    held: String,
}

#[derive(Default)]
struct Folded {
    variables: usize,
    files: usize,
    /// The line was printed (later setup steps stay silent).
    told: bool,
}

impl JobSink {
    /// `label` is what prefixes every line (`job`, or `block / job` where
    /// job names repeat across blocks), or `None` for no prefix.
    pub fn new(
        console: Console,
        block: &str,
        job: &str,
        label: Option<&str>,
        verbose: bool,
    ) -> JobSink {
        JobSink {
            console,
            block: block.to_string(),
            job: job.to_string(),
            prefix: label.map(|l| format!("[{l}] ")).unwrap_or_default(),
            partial: String::new(),
            verbose,
            setup: None,
            folded: (!verbose).then(Folded::default),
        }
    }

    fn lines(&mut self, text: &str) {
        self.partial.push_str(text);
        let mut out = String::new();
        while let Some(at) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=at).collect();
            out.push_str(&self.prefix);
            out.push_str(&line);
        }
        if self.partial.len() > MAX_PARTIAL {
            out.push_str(&self.prefix);
            out.push_str(&std::mem::take(&mut self.partial));
            out.push('\n');
        }
        if !out.is_empty() {
            self.console.write(&out);
        }
    }

    fn end_line(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.console.write(&format!("{}{rest}\n", self.prefix));
        }
    }

    /// The one line that stands for the setup steps before the first
    /// command, once.
    fn tell_setup(&mut self) {
        let Some(f) = &mut self.folded else { return };
        if f.told {
            return;
        }
        f.told = true;
        let line = setup_line(f.variables, f.files);
        self.lines(&line);
    }
}

/// The one warning for secrets a run goes without: each name once.
pub fn missing_secrets_line(names: &[String]) -> String {
    match names {
        [one] => format!("warning: secret {one} is not in the secrets file; running without it"),
        _ => format!(
            "warning: secrets {} are not in the secrets file; running without them",
            names.join(", ")
        ),
    }
}

/// `setup: 39 variables, 2 files`.
pub fn setup_line(variables: usize, files: usize) -> String {
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let mut line = format!("setup: {}", plural(variables, "variable"));
    if files > 0 {
        line.push_str(&format!(", {}", plural(files, "file")));
    }
    line.push('\n');
    line
}

fn is_setup(directive: &str) -> bool {
    directive == crate::job::lifecycle::EXPORT_ENV_DIRECTIVE
        || directive == crate::job::lifecycle::INJECT_FILES_DIRECTIVE
}

/// The event as a JSON line with `block` and `job` added after the wire
/// fields.
pub fn tagged_json(event: &Event, block: &str, job: &str) -> String {
    let wire = event.to_json();
    let extra = json!({"block": block, "job": job}).to_string();
    match (wire.strip_suffix('}'), extra.strip_prefix('{')) {
        (Some(head), Some(tail)) => format!("{head},{tail}"),
        _ => wire,
    }
}

impl EventSink for JobSink {
    fn emit(&mut self, event: Event) {
        if self.console.json {
            let line = tagged_json(&event, &self.block, &self.job);
            self.console.write(&format!("{line}\n"));
            return;
        }
        match event {
            Event::JobStarted { .. } => {}
            Event::CmdStarted { directive, .. } => {
                self.end_line();
                let shown = format!("$ {}\n", directive.trim_end());
                if !self.verbose && is_setup(&directive) {
                    self.setup = Some(SetupStep { held: shown });
                } else {
                    self.tell_setup();
                    self.lines(&shown);
                }
            }
            Event::CmdOutput { output, .. } => match (&mut self.setup, &mut self.folded) {
                (Some(step), Some(f)) => {
                    let count = output.lines().count().max(1);
                    if output.starts_with("Exporting ") {
                        f.variables += count;
                    } else if output.starts_with("Injecting ") {
                        f.files += count;
                    }
                    step.held.push_str(&output);
                }
                _ => self.lines(&output),
            },
            Event::CmdFinished {
                exit_code,
                started_at,
                finished_at,
                ..
            } => {
                self.end_line();
                let took = finished_at.saturating_sub(started_at);
                let exit = format!("[exit code {exit_code}, {took}s]\n");
                if let Some(step) = self.setup.take() {
                    // A setup step that failed is shown whole.
                    if exit_code != 0 {
                        self.tell_setup();
                        let held = step.held;
                        self.lines(&held);
                        self.end_line();
                        self.lines(&exit);
                    }
                    return;
                }
                self.lines(&exit);
            }
            Event::JobFinished { result, .. } => {
                self.end_line();
                self.tell_setup();
                self.lines(&format!("Job {result}\n"));
            }
        }
    }
}

impl Drop for JobSink {
    fn drop(&mut self) {
        self.end_line();
    }
}

/// passed, failed, stopped, skipped, or not run.
fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Ran { result, .. } => result.as_str(),
        Outcome::Skipped(_) => "skipped",
        Outcome::NotRun => "not run",
    }
}

/// Why, for the table: a skip's reason or what ended a job early.
fn outcome_note(o: &Outcome) -> String {
    match o {
        Outcome::Ran { end, .. } => job_end(end),
        Outcome::Skipped(why) => skip_reason(why),
        Outcome::NotRun => String::new(),
    }
}

/// A skip's reason, as the table says it.
pub fn skip_reason(why: &SkipReason) -> String {
    match why {
        SkipReason::NotSelected => "not selected".into(),
        SkipReason::SkipCondition => "skip condition is true".into(),
        SkipReason::RunCondition => "run condition is false".into(),
        SkipReason::DependencyFailed(block) => format!("dependency \"{block}\" did not pass"),
        SkipReason::BlockFailFast => "the block's fail_fast".into(),
        SkipReason::PipelineFailFast => "the pipeline's fail_fast".into(),
        SkipReason::Interrupted => "Ctrl-C".into(),
    }
}

/// What ended a job early, or nothing.
fn job_end(end: &JobEnd) -> String {
    match end {
        JobEnd::Ran => String::new(),
        JobEnd::TimeLimit { level, minutes } => {
            let level = match level {
                LimitLevel::Pipeline => "pipeline",
                LimitLevel::Block => "block",
                LimitLevel::Job => "job",
            };
            format!("{level} execution_time_limit of {minutes} min reached")
        }
        JobEnd::Panicked => "the job's thread panicked".into(),
        JobEnd::CannotStart(e) => format!("cannot start a thread: {e}"),
    }
}

/// A condition a note is about.
#[derive(Debug, Clone, Copy)]
pub enum Condition<'a> {
    /// The block's `skip`.
    Skip(&'a str),
    /// The block's `run`.
    Run(&'a str),
    /// The `fail_fast.stop` of a block's task, or of the pipeline (`None`).
    FailFastStop(Option<&'a str>),
    FailFastCancel(Option<&'a str>),
}

/// The note for a condition a local run cannot decide, and what it does.
pub fn undecided_note(c: Condition<'_>, why: &str) -> String {
    let whose = |block: Option<&str>| match block {
        Some(b) => format!("block \"{b}\""),
        None => "the pipeline's".to_string(),
    };
    let (what, taken) = match c {
        Condition::Skip(b) => (
            format!("block \"{b}\" skip condition"),
            "false: the block runs",
        ),
        Condition::Run(b) => (
            format!("block \"{b}\" run condition"),
            "true: the block runs",
        ),
        Condition::FailFastStop(b) => (
            format!("{} fail_fast.stop", whose(b)),
            "false: no fail-fast",
        ),
        Condition::FailFastCancel(b) => (
            format!("{} fail_fast.cancel", whose(b)),
            "false: no fail-fast",
        ),
    };
    format!("note: {what} cannot be decided locally ({why}); it is taken as {taken}")
}

/// `--- blocks 1/4 done, 1 failed; running: B, C`.
pub fn progress_line(p: &Progress) -> String {
    let mut line = format!("--- blocks {}/{} done", p.done, p.total);
    if p.failed > 0 {
        line.push_str(&format!(", {} failed", p.failed));
    }
    if !p.running.is_empty() {
        line.push_str(&format!("; running: {}", p.running.join(", ")));
    }
    line
}

/// The pipeline's last word.
pub fn result_word(result: PipelineResult) -> &'static str {
    match result {
        PipelineResult::Passed => "passed",
        PipelineResult::Failed => "failed",
        PipelineResult::Stopped => "stopped",
    }
}

/// The final table, columns padded.
pub fn table(rows: &[Row]) -> String {
    let w_block = rows
        .iter()
        .map(|r| r.block.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let w_job = rows
        .iter()
        .map(|r| r.job.chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut out = format!(
        "{:<w_block$}  {:<w_job$}  {:<8}  {:>8}\n",
        "BLOCK", "JOB", "RESULT", "DURATION"
    );
    for r in rows {
        let duration = match r.outcome {
            Outcome::Skipped(_) => "-".to_string(),
            _ => format!("{:.1}s", r.outcome.duration_s()),
        };
        let note = outcome_note(&r.outcome);
        let note = if note.is_empty() {
            note
        } else {
            format!("  ({note})")
        };
        out.push_str(&format!(
            "{:<w_block$}  {:<w_job$}  {:<8}  {:>8}{note}\n",
            r.block,
            r.job,
            outcome_word(&r.outcome),
            duration
        ));
    }
    out
}

/// The last JSON line, its keys in the documented order.
pub fn finished_json(result: PipelineResult, rows: &[Row]) -> String {
    let jobs: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"block\":{},\"job\":{},\"result\":{},\"duration_s\":{}}}",
                json!(r.block),
                json!(r.job),
                json!(outcome_word(&r.outcome)),
                json!((r.outcome.duration_s() * 10.0).round() / 10.0)
            )
        })
        .collect();
    format!(
        "{{\"event\":\"pipeline_finished\",\"result\":{},\"jobs\":[{}]}}",
        json!(result_word(result)),
        jobs.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::JobResult;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(buf: &Buf) -> String {
        String::from_utf8_lossy(&buf.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }

    #[test]
    fn prefixed_lines_are_whole() {
        let buf = Buf::default();
        let console = Console::new(Box::new(buf.clone()), false);
        let mut a = JobSink::new(console.clone(), "B", "a", Some("a"), false);
        let mut b = JobSink::new(console, "B", "b", Some("b"), false);
        a.emit(Event::CmdOutput {
            timestamp: 1,
            output: "one ".into(),
        });
        b.emit(Event::CmdOutput {
            timestamp: 1,
            output: "x\ny".into(),
        });
        a.emit(Event::CmdOutput {
            timestamp: 1,
            output: "two\n".into(),
        });
        drop(b);
        assert_eq!(text(&buf), "[b] x\n[a] one two\n[b] y\n");
    }

    #[test]
    fn json_lines_carry_block_and_job() {
        let line = tagged_json(
            &Event::JobStarted { timestamp: 5 },
            "Build \"x\"",
            "a - 1/2",
        );
        assert_eq!(
            line,
            r#"{"event":"job_started","timestamp":5,"block":"Build \"x\"","job":"a - 1/2"}"#
        );
        let rows = [Row {
            block: "B".into(),
            job: "j".into(),
            outcome: Outcome::Ran {
                result: JobResult::Passed,
                duration_s: 1.26,
                end: JobEnd::Ran,
            },
        }];
        assert_eq!(
            finished_json(PipelineResult::Passed, &rows),
            r#"{"event":"pipeline_finished","result":"passed","jobs":[{"block":"B","job":"j","result":"passed","duration_s":1.3}]}"#
        );
        assert!(table(&rows).contains("B      j    passed"));
    }
}
