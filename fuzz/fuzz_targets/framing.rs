//! The command framer (`shell::Framer`): finds a command's output and
//! status between the start and end markers in the PTY bytes.
//!
//! The fuzzer builds a stream from raw bytes, real markers, markers cut
//! short, markers of another nonce and stray marker bytes, and cuts it into
//! reads. Checked: the output and status are the same whatever the reads,
//! they are what a plain search of the whole stream finds, no empty output
//! is passed on, and what is kept from before the start stays bounded.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use semaphore_agent::shell::Framer;

const NONCE: &str = "0123456789ABCDEF0123456789ABCDEF";
const OTHER_NONCE: &str = "0123456789ABCDEF0123456789ABCDEE";

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn start(nonce: &str) -> Vec<u8> {
    format!("\x01{nonce}S\x01").into_bytes()
}

fn end(nonce: &str, status: &str) -> Vec<u8> {
    format!("\x01{nonce}E{status}\x01").into_bytes()
}

fn stream(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while !u.is_empty() && out.len() < 8192 {
        let nonce = if u.ratio(1, 8)? { OTHER_NONCE } else { NONCE };
        let piece = match u.int_in_range(0..=7u8)? {
            0 | 1 => {
                let n = u.int_in_range(0..=64)?;
                u.bytes(n.min(u.len()))?.to_vec()
            }
            2 => start(nonce),
            3 => end(nonce, &u.int_in_range(0..=255u16)?.to_string()),
            4 => {
                // Any digits: too many, none, leading zeros.
                let n = u.int_in_range(0..=5)?;
                let digits: String = (0..n)
                    .map(|_| Ok(char::from(b'0' + u.int_in_range(0..=9u8)?)))
                    .collect::<Result<_>>()?;
                end(nonce, &digits)
            }
            5 => {
                // A marker cut short.
                let mut m = if u.arbitrary()? {
                    start(nonce)
                } else {
                    end(nonce, "7")
                };
                m.truncate(u.int_in_range(0..=m.len())?);
                m
            }
            6 => vec![0x01],
            _ => b"\r\n".to_vec(),
        };
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// Output and status the way the framer is meant to find them: the output
/// starts after the first start marker and ends at the first end marker
/// (`\x01<nonce>E`, one to three digits, `\x01`) after it; with no end
/// marker it runs to the end of the stream.
fn expected(stream: &[u8]) -> (Vec<u8>, Option<i32>) {
    let start = start(NONCE);
    let Some(at) = stream.windows(start.len()).position(|w| w == start) else {
        return (Vec::new(), None);
    };
    let body = &stream[at + start.len()..];
    let prefix = format!("\x01{NONCE}E").into_bytes();
    for i in 0..body.len() {
        let Some(after) = body[i..].strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if (1..=3).contains(&digits) && after.get(digits) == Some(&0x01) {
            let status = std::str::from_utf8(&after[..digits])
                .ok()
                .and_then(|s| s.parse().ok());
            return (body[..i].to_vec(), status);
        }
    }
    (body.to_vec(), None)
}

/// Feeds `stream` cut at `cuts`; returns the output and the status.
fn frame(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<i32>) {
    let mut framer = Framer::new(NONCE);
    let mut out = Vec::new();
    let mut status = None;
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.clamp(from, stream.len());
        let got = framer.feed(&stream[from..cut], &mut |b: &[u8]| {
            assert!(!b.is_empty(), "empty output passed on");
            out.extend_from_slice(b);
        });
        assert_eq!(got, framer.status(), "feed and status disagree");
        if status.is_some() {
            assert_eq!(got, status, "the status changed after the end");
        }
        status = got;
        assert!(framer.skipped().len() <= 2048, "skipped grows");
        from = cut;
    }
    if status.is_none() {
        framer.finish(&mut |b: &[u8]| {
            assert!(!b.is_empty(), "empty output passed on");
            out.extend_from_slice(b)
        });
    }
    (out, status)
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let n_cuts = u.int_in_range(0..=16)?;
    let mut cuts: Vec<usize> = (0..n_cuts)
        .map(|_| u.int_in_range(0..=8192usize))
        .collect::<Result<_>>()?;
    cuts.sort_unstable();
    let stream = stream(u)?;
    let want = expected(&stream);
    assert_eq!(frame(&stream, &[]), want, "whole stream");
    assert_eq!(frame(&stream, &cuts), want, "cut at {cuts:?}");
    // One byte per read: every marker is split at every place.
    let ones: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(frame(&stream, &ones), want, "byte by byte");
    Ok(())
}
