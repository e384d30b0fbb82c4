//! The output chunker (`output::Chunker`): PTY bytes to `cmd_output` text.
//!
//! The fuzzer picks the size cap, the flush delay, the bytes of every read
//! and when the clock is polled. Checked: the chunks joined are the whole
//! input with `\r\n` as `\n` and bad UTF-8 as U+FFFD, whatever the reads;
//! no chunk is empty or over its cap; and whenever no deadline is pending,
//! everything but a held-back partial character or `\r` was emitted.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use semaphore_agent::output::Chunker;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

/// The text the whole input must become.
fn reference(input: &[u8]) -> String {
    let mut kept = Vec::with_capacity(input.len());
    for (i, &b) in input.iter().enumerate() {
        if b == b'\r' && input.get(i + 1) == Some(&b'\n') {
            continue;
        }
        kept.push(b);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Bytes that make the interesting cases likely: CR, LF, the lead and
/// continuation bytes of multi-byte characters, and bytes never valid.
fn read_bytes(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=40)?;
    (0..n)
        .map(|_| {
            Ok(match u.int_in_range(0..=9u8)? {
                0 => b'\r',
                1 => b'\n',
                2 => 0xC3,
                3 => 0xE2,
                4 => 0xF0,
                5 => 0x80 | u.int_in_range(0..=0x3Fu8)?,
                _ => u.arbitrary()?,
            })
        })
        .collect()
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let cap = match u.int_in_range(0..=3u8)? {
        0 => semaphore_agent::output::MAX_CHUNK_BYTES,
        _ => u.int_in_range(0..=40usize)?,
    };
    // The chunker never takes a cap below 8.
    let effective_cap = cap.max(8);
    let flush = Duration::from_millis(u.int_in_range(0..=200)?);
    let mut chunker = Chunker::with_limits(cap, flush);
    let t0 = Instant::now();
    let mut now = t0;
    let mut input = Vec::new();
    let mut chunks: Vec<String> = Vec::new();
    let mut emitted = String::new();
    while !u.is_empty() {
        now += Duration::from_millis(u.int_in_range(0..=150)?);
        let mut out = |c: &str| {
            assert!(!c.is_empty(), "an empty chunk");
            // A raw byte becomes at most 3 bytes of text (U+FFFD).
            assert!(c.len() <= 3 * effective_cap, "chunk of {} bytes", c.len());
            chunks.push(c.to_string());
        };
        match u.int_in_range(0..=3u8)? {
            0 => chunker.poll(now, &mut out),
            1 if u.ratio(1, 4)? => {
                // One big read, over the cap several times.
                let read = vec![u.arbitrary::<u8>()?; u.int_in_range(0..=3 * effective_cap)?];
                input.extend_from_slice(&read);
                chunker.push(&read, now, &mut out);
            }
            _ => {
                let read = read_bytes(u)?;
                input.extend_from_slice(&read);
                chunker.push(&read, now, &mut out);
            }
        }
        for c in chunks.drain(..) {
            emitted.push_str(&c);
        }
        if let Some(deadline) = chunker.deadline() {
            assert!(
                deadline <= now + flush,
                "a byte would wait past its flush delay"
            );
        } else {
            // Nothing waits for a timer: all was emitted but a trailing
            // `\r` or the start of a character (at most 3 bytes, which
            // are U+FFFD each if they cannot become one).
            let whole = reference(&input);
            assert!(
                whole.starts_with(&emitted),
                "emitted {emitted:?} is not a prefix of {whole:?}"
            );
            let rest = &whole[emitted.len()..];
            assert!(
                rest.is_empty()
                    || rest == "\r"
                    || (rest.chars().count() <= 3 && rest.chars().all(|c| c == '\u{FFFD}')),
                "{rest:?} held back with no deadline; input {input:?}"
            );
        }
    }
    chunker.finish(&mut |c| {
        assert!(!c.is_empty(), "an empty chunk");
        chunks.push(c.to_string());
    });
    for c in chunks.drain(..) {
        emitted.push_str(&c);
    }
    assert_eq!(emitted, reference(&input), "input {input:?}");
    assert!(chunker.deadline().is_none());
    Ok(())
}
