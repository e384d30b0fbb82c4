//! Sinks that print a job's events to a terminal or a pipe, for `run`.
//!
//! They write straight to the given writer and flush at command boundaries
//! so output streams; they must not buffer a job's output in memory.

use std::io::Write;

use super::{Event, EventSink};

/// Prints events as JSON lines, exactly as they would go on the wire.
pub struct JsonLines<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }
}

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn emit(&mut self, event: Event) {
        // A closed stdout (e.g. `| head`) must not stop the job: drop output.
        let _ = writeln!(self.out, "{}", event.to_json());
        let _ = self.out.flush();
    }
}

/// Prints a job for people: each directive, its output as it comes, and how
/// it ended.
pub struct Human<W: Write + Send> {
    out: W,
    /// Whether the last output written ended with a newline.
    at_line_start: bool,
}

impl<W: Write + Send> Human<W> {
    pub fn new(out: W) -> Self {
        Human {
            out,
            at_line_start: true,
        }
    }

    fn line_break(&mut self) {
        if !self.at_line_start {
            let _ = writeln!(self.out);
            self.at_line_start = true;
        }
    }
}

impl<W: Write + Send> EventSink for Human<W> {
    fn emit(&mut self, event: Event) {
        match event {
            Event::JobStarted { .. } => {}
            Event::CmdStarted { directive, .. } => {
                self.line_break();
                let _ = writeln!(self.out, "$ {}", directive.trim_end());
            }
            Event::CmdOutput { output, .. } => {
                let _ = self.out.write_all(output.as_bytes());
                if !output.is_empty() {
                    self.at_line_start = output.ends_with('\n');
                }
            }
            Event::CmdFinished {
                exit_code,
                started_at,
                finished_at,
                ..
            } => {
                self.line_break();
                let took = finished_at.saturating_sub(started_at);
                let _ = writeln!(self.out, "[exit code {exit_code}, {took}s]");
            }
            Event::JobFinished { result, .. } => {
                self.line_break();
                let _ = writeln!(self.out, "Job {result}");
            }
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::JobResult;

    #[test]
    fn human_output_shows_directives_output_and_result() {
        let mut buf = Vec::new();
        {
            let mut sink = Human::new(&mut buf);
            sink.emit(Event::CmdStarted {
                timestamp: 1,
                directive: "echo hi".into(),
            });
            sink.emit(Event::CmdOutput {
                timestamp: 1,
                output: "hi".into(),
            });
            sink.emit(Event::CmdFinished {
                timestamp: 3,
                directive: "echo hi".into(),
                exit_code: 0,
                started_at: 1,
                finished_at: 3,
            });
            sink.emit(Event::JobFinished {
                timestamp: 3,
                result: JobResult::Passed,
            });
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "$ echo hi\nhi\n[exit code 0, 2s]\nJob passed\n"
        );
    }
}
