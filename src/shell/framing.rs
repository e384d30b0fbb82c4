//! Framing one command in the shell's output stream.
//!
//! Owns the line typed into bash for each command and the parser that finds
//! where that command's output starts and ends in the PTY bytes. Each
//! command gets a fresh random nonce; the markers are `\x01<nonce>S\x01`
//! before the command and `\x01<nonce>E<status>\x01` after it, printed by
//! bash itself. The nonce is only in the typed line (never echoed, history
//! off), not in the command file, so a job cannot print a marker by chance
//! or by reading its own script. This module must not touch the PTY or
//! processes: it only builds strings and splits bytes.

use super::quote::shell_quote;

/// The byte that opens and closes every marker.
const MARK: u8 = 0x01;

/// `$?` is 0..=255, so a status has at most three digits.
const MAX_STATUS_DIGITS: usize = 3;

/// A fresh 128-bit random nonce as 32 upper-case hex digits.
pub(super) fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    crate::random::fill(&mut bytes);
    // Upper case: output processing such as `stty olcuc` maps lower-case
    // letters, and must not be able to break a marker.
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The markers printed around the output of one command, and the commands
/// that print them. The `printf`s run inside `{ ...; } 2>/dev/null` so that
/// `set -x` in a job does not trace them into the job's output, and through
/// `\builtin` so that a job's aliases and functions cannot replace them.
/// They go to the shell's terminal (`/dev/tty`, the job's PTY), not to its
/// stdout: a job that ran `exec >/dev/null 2>&1` or `exec >file 2>&1`
/// moved its stdout, and a marker sent there would never come back (the
/// job would hang until stopped). Only where the shell has no terminal do
/// they fall back to stdout.
fn print_start(nonce: &str) -> String {
    format!(
        r"{{ \builtin printf '\001{nonce}S\001' >/dev/tty || \builtin printf '\001{nonce}S\001'; }} 2>/dev/null"
    )
}

/// The shell variable that holds the end marker while it is printed.
const END_VAR: &str = "__SEMAPHORE_AGENT_END";

fn print_end(nonce: &str, status: &str) -> String {
    format!(
        r#"{{ \builtin printf -v {END_VAR} '\001{nonce}E%d\001' {status}; \builtin printf '%s' "${END_VAR}" >/dev/tty || \builtin printf '%s' "${END_VAR}"; \builtin unset -v {END_VAR}; }} 2>/dev/null"#
    )
}

/// The shell variable that holds a command's status while the shell's
/// state is written (`state_then_end`).
const STATUS_VAR: &str = "__SEMAPHORE_AGENT_STATUS";

/// What follows a command: with a `state` file, the shell's exported
/// variables (`export -p`) and its directory (a `cd` line) are written
/// there first, for `semaphore-agent debug` (the status kept aside,
/// failures ignored even under `set -e`, no trace under `set -x`); then
/// the end marker with the command's status.
fn state_then_end(nonce: &str, state: Option<&str>) -> String {
    match state {
        None => print_end(nonce, r#""$?""#),
        Some(file) => format!(
            r#"{{ {STATUS_VAR}=$?; {{ \builtin export -p; \builtin printf '\\builtin cd -- %q\n' "$PWD"; }} >| {}; }} 2>/dev/null || :; {}; {{ \builtin unset -v {STATUS_VAR}; }} 2>/dev/null"#,
            shell_quote(file),
            print_end(nonce, &format!(r#""${STATUS_VAR}""#)),
        ),
    }
}

/// The line typed into bash to run the command stored in `file`: it is
/// `source`d, so `return N` ends it with N and its state stays in the shell.
/// With `state`, the shell's state is written there after it
/// ([`state_then_end`]).
pub(super) fn command_line(nonce: &str, file: &str, state: Option<&str>) -> String {
    format!(
        r#"{}; \builtin source {}; {}"#,
        print_start(nonce),
        shell_quote(file),
        state_then_end(nonce, state)
    ) + "\n"
}

/// The shell variable that holds an inline command while it is typed.
const INLINE_VAR: &str = "__SEMAPHORE_AGENT_CMD";

/// The longest escaped text typed on one line for an inline command: far
/// below the terminal's 4096-byte line limit (canonical mode drops what
/// goes beyond it), and short enough for readline to redraw cheaply.
const INLINE_CHUNK: usize = 768;

/// The lines typed into bash to run `cmd` when bash cannot read a file of
/// ours (it runs in a pod): the command is put into a shell variable in
/// `$'...'` pieces of at most [`INLINE_CHUNK`] characters of printable
/// ASCII (so no tab reaches readline's completion and no line outgrows the
/// terminal), then `source`d from a process substitution fed by the
/// `printf` builtin, so `return N` and the shell state behave as with a
/// file and nothing outside bash (no `base64` in the image) is needed.
pub(super) fn inline_command_lines(nonce: &str, cmd: &str, state: Option<&str>) -> String {
    let mut text = cmd.as_bytes().to_vec();
    // A heredoc delimiter on the last line needs its newline.
    text.push(b'\n');
    let mut lines = String::new();
    let mut piece = String::new();
    let mut first = true;
    let flush = |piece: &mut String, lines: &mut String, first: &mut bool| {
        let op = if *first { "=" } else { "+=" };
        lines.push_str(&format!("{INLINE_VAR}{op}$'{piece}'\n"));
        piece.clear();
        *first = false;
    };
    for &byte in &text {
        let escaped = match byte {
            b'\'' => "\\'".to_string(),
            b'\\' => "\\\\".to_string(),
            0x20..=0x7e => (byte as char).to_string(),
            other => format!("\\x{other:02x}"),
        };
        if piece.len() + escaped.len() > INLINE_CHUNK {
            flush(&mut piece, &mut lines, &mut first);
        }
        piece.push_str(&escaped);
    }
    flush(&mut piece, &mut lines, &mut first);
    lines.push_str(&format!(
        r#"{}; \builtin source <(\builtin printf '%s' "${INLINE_VAR}"); {}; \builtin unset -v {INLINE_VAR}"#,
        print_start(nonce),
        state_then_end(nonce, state)
    ));
    lines.push('\n');
    lines
}

/// The first line typed into a new shell: silences every prompt, keeps the
/// typed lines (and so the nonces) out of the history, goes to `cd` if
/// given, and frames an empty output with status 0 to say the shell is
/// ready.
pub(super) fn init_line(nonce: &str, cd: Option<&str>, state: Option<&str>) -> String {
    let cd = cd.map_or(String::new(), |dir| {
        format!(r"\builtin cd -- {} ; ", shell_quote(dir))
    });
    // The state file, owner-only from the first moment (a subshell, so
    // the shell's own umask stays); later writes truncate it.
    let state = state.map_or(String::new(), |file| {
        format!(
            r"( \builtin umask 077; : >| {} ) 2>/dev/null; ",
            shell_quote(file)
        )
    });
    format!(
        r"PS1=; PS2=; PS0=; \builtin unset PROMPT_COMMAND; \builtin set +o history; {cd}{state}{}; {}",
        print_start(nonce),
        print_end(nonce, "0")
    ) + "\n"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Skipping what bash printed before the command (job notices, leftovers).
    AwaitStart,
    /// Passing the command's output on.
    Body,
    /// The end marker was seen with this status.
    Done(i32),
}

enum EndMatch {
    No,
    /// The bytes so far could still become the end marker.
    Partial,
    Complete(i32),
}

/// Splits the PTY bytes of one command into its output and its status.
/// (Public, hidden, only for the fuzz targets in `fuzz/`.)
#[derive(Debug)]
pub struct Framer {
    start: Vec<u8>,
    end_prefix: Vec<u8>,
    phase: Phase,
    /// Before the start: the last bytes, which may begin the start marker.
    /// In the body: a possible beginning of the end marker (under 40 bytes).
    carry: Vec<u8>,
    /// The last bytes skipped before the start marker (at most
    /// `SKIPPED_KEEP`): what a launcher said before it gave up.
    skipped: Vec<u8>,
}

/// How much of the output before the start marker a framer keeps.
const SKIPPED_KEEP: usize = 2048;

impl Framer {
    pub fn new(nonce: &str) -> Framer {
        let marker = |kind: u8| {
            let mut m = vec![MARK];
            m.extend_from_slice(nonce.as_bytes());
            m.push(kind);
            m
        };
        let mut start = marker(b'S');
        start.push(MARK);
        Framer {
            start,
            end_prefix: marker(b'E'),
            phase: Phase::AwaitStart,
            carry: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// The last output seen before the start marker, for an error message
    /// when the start never came (a launcher such as `kubectl` failed).
    pub fn skipped(&self) -> &[u8] {
        &self.skipped
    }

    /// The status, once the end marker was seen.
    pub fn status(&self) -> Option<i32> {
        match self.phase {
            Phase::Done(status) => Some(status),
            _ => None,
        }
    }

    /// Takes the next bytes read from the PTY, passes the command's output
    /// in them to `body`, and returns the status once the end marker is
    /// complete. Bytes after the end marker are dropped.
    pub fn feed(&mut self, data: &[u8], body: &mut dyn FnMut(&[u8])) -> Option<i32> {
        match self.phase {
            Phase::Done(status) => Some(status),
            Phase::AwaitStart => {
                self.skipped.extend_from_slice(data);
                if self.skipped.len() > SKIPPED_KEEP {
                    self.skipped.drain(..self.skipped.len() - SKIPPED_KEEP);
                }
                self.carry.extend_from_slice(data);
                match find(&self.carry, &self.start) {
                    Some(at) => {
                        let rest = self.carry.split_off(at + self.start.len());
                        self.carry.clear();
                        self.phase = Phase::Body;
                        self.scan(&rest, body)
                    }
                    None => {
                        let keep = self.start.len() - 1;
                        if self.carry.len() > keep {
                            self.carry.drain(..self.carry.len() - keep);
                        }
                        None
                    }
                }
            }
            Phase::Body if self.carry.is_empty() => self.scan(data, body),
            Phase::Body => {
                let mut joined = std::mem::take(&mut self.carry);
                joined.extend_from_slice(data);
                self.scan(&joined, body)
            }
        }
    }

    /// The output ended without an end marker (the shell died or was
    /// stopped): bytes held back as a possible marker are output after all.
    pub fn finish(&mut self, body: &mut dyn FnMut(&[u8])) {
        if self.phase == Phase::Body && !self.carry.is_empty() {
            body(&self.carry);
        }
        self.carry.clear();
    }

    fn scan(&mut self, buf: &[u8], body: &mut dyn FnMut(&[u8])) -> Option<i32> {
        let mut from = 0;
        while let Some(offset) = memchr::memchr(MARK, &buf[from..]) {
            let at = from + offset;
            match self.match_end(&buf[at..]) {
                EndMatch::Complete(status) => {
                    if at > 0 {
                        body(&buf[..at]);
                    }
                    self.phase = Phase::Done(status);
                    return Some(status);
                }
                EndMatch::Partial => {
                    if at > 0 {
                        body(&buf[..at]);
                    }
                    self.carry = buf[at..].to_vec();
                    return None;
                }
                EndMatch::No => from = at + 1,
            }
        }
        if !buf.is_empty() {
            body(buf);
        }
        None
    }

    fn match_end(&self, tail: &[u8]) -> EndMatch {
        let prefix = &self.end_prefix;
        if tail.len() < prefix.len() {
            return if prefix.starts_with(tail) {
                EndMatch::Partial
            } else {
                EndMatch::No
            };
        }
        if !tail.starts_with(prefix) {
            return EndMatch::No;
        }
        let after = &tail[prefix.len()..];
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > MAX_STATUS_DIGITS {
            return EndMatch::No;
        }
        match after.get(digits) {
            None => EndMatch::Partial,
            Some(&MARK) if digits > 0 => std::str::from_utf8(&after[..digits])
                .ok()
                .and_then(|s| s.parse().ok())
                .map_or(EndMatch::No, EndMatch::Complete),
            Some(_) => EndMatch::No,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "0123456789ABCDEF0123456789ABCDEF";

    fn start() -> Vec<u8> {
        format!("\x01{NONCE}S\x01").into_bytes()
    }

    fn end(status: i32) -> Vec<u8> {
        format!("\x01{NONCE}E{status}\x01").into_bytes()
    }

    /// Feeds `stream` cut into pieces of `piece` bytes; returns output and status.
    fn frame(stream: &[u8], piece: usize) -> (Vec<u8>, Option<i32>) {
        let mut framer = Framer::new(NONCE);
        let mut out = Vec::new();
        let mut status = None;
        for part in stream.chunks(piece) {
            status = framer.feed(part, &mut |b| out.extend_from_slice(b));
        }
        if status.is_none() {
            framer.finish(&mut |b| out.extend_from_slice(b));
        }
        (out, status)
    }

    fn stream(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn output_between_markers_at_every_split() {
        let s = stream(&[
            b"[1]+ Done  junk\r\n",
            &start(),
            b"hi\r\n",
            &end(42),
            b"late",
        ]);
        for piece in 1..s.len() {
            assert_eq!(
                frame(&s, piece),
                (b"hi\r\n".to_vec(), Some(42)),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn output_without_final_newline_ends_at_the_marker() {
        let s = stream(&[&start(), b"abc", &end(0)]);
        assert_eq!(frame(&s, 2), (b"abc".to_vec(), Some(0)));
    }

    #[test]
    fn markers_of_another_nonce_are_output() {
        let other = "\x01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFE0\x01";
        let s = stream(&[&start(), other.as_bytes(), b"\x01\x01x", &end(1)]);
        for piece in [1, 3, 100] {
            let (out, status) = frame(&s, piece);
            assert_eq!(out, stream(&[other.as_bytes(), b"\x01\x01x"]));
            assert_eq!(status, Some(1));
        }
    }

    #[test]
    fn almost_markers_are_output() {
        let mut fake = end(5);
        fake.pop(); // no closing byte: digits then text
        fake.extend_from_slice(b"x");
        let too_long = format!("\x01{NONCE}E1234\x01");
        let no_digits = format!("\x01{NONCE}E\x01");
        let s = stream(&[
            &start(),
            &fake,
            too_long.as_bytes(),
            no_digits.as_bytes(),
            &end(3),
        ]);
        let expected = stream(&[&fake, too_long.as_bytes(), no_digits.as_bytes()]);
        for piece in 1..8 {
            assert_eq!(
                frame(&s, piece),
                (expected.clone(), Some(3)),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn a_cut_off_marker_is_output_when_the_stream_ends() {
        let mut partial = end(7);
        partial.truncate(10);
        let s = stream(&[&start(), b"out", &partial]);
        assert_eq!(frame(&s, 4), (stream(&[b"out", &partial]), None));
    }

    #[test]
    fn nothing_is_output_before_the_start() {
        let s = stream(&[b"noise", &end(0)]);
        assert_eq!(frame(&s, 3), (Vec::new(), None));
    }

    #[test]
    fn carry_before_the_start_stays_small() {
        let mut framer = Framer::new(NONCE);
        for _ in 0..1000 {
            framer.feed(&[b'x'; 4096], &mut |_| {});
        }
        assert!(framer.carry.len() < start().len());
    }

    #[test]
    fn nonces_differ_and_are_hex() {
        let a = new_nonce();
        let b = new_nonce();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }

    #[test]
    fn the_typed_line_holds_no_raw_marker() {
        // The typed line must not contain the marker bytes themselves, or an
        // echoing terminal would fake them.
        for state in [None, Some("/tmp/state")] {
            let line = command_line(NONCE, "/tmp/x", state);
            assert!(!line.as_bytes().contains(&MARK));
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        }
    }

    #[test]
    fn inline_commands_are_typed_as_short_printable_lines() {
        let cmd = format!("echo 'it''s'\tdone \\ é\n{}", "x".repeat(3000));
        let lines = inline_command_lines(NONCE, &cmd, Some("/tmp/.state"));
        for line in lines.lines() {
            assert!(line.len() < 1024, "{} bytes", line.len());
            assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line}");
        }
        assert!(lines.ends_with("__SEMAPHORE_AGENT_CMD\n"), "{lines}");
        assert!(lines.lines().count() > 3, "{lines}");
    }

    /// The state part writes the exports and the directory and ends with
    /// the command's own status, whatever writing the state did.
    #[test]
    fn the_state_is_written_and_the_status_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let missing = dir.path().join("missing/state");
        for (file, written) in [(&state, true), (&missing, false)] {
            let script = format!(
                "set -eu; cd {d}; export JOB_VAR='a b'; (exit 7); {end}",
                d = shell_quote(&dir.path().to_string_lossy()),
                end = state_then_end(NONCE, Some(&file.to_string_lossy()))
            );
            // `(exit 7)` under `set -e` would end the script: run the
            // tail in a function whose status is tested instead.
            let script = script.replace("(exit 7); ", "f() { return 7; }; f || ");
            let out = std::process::Command::new("bash")
                .args(["-c", &script])
                .output()
                .unwrap();
            let marker = format!("\x01{NONCE}E7\x01");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(&marker), "{stdout:?} {out:?}");
            assert_eq!(out.stderr, b"", "{out:?}");
            if written {
                let text = std::fs::read_to_string(file).unwrap();
                assert!(text.contains("declare -x JOB_VAR=\"a b\""), "{text}");
                assert!(text.contains("\\builtin cd -- "), "{text}");
                assert!(!text.contains("__SEMAPHORE_AGENT"), "{text}");
            }
        }
    }
}
