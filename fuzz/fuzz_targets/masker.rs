//! Secret masking (`mask::secrets_for`, `mask::glob_match`, `mask::Masker`).
//!
//! The fuzzer picks env var names and values, name patterns, tokens (the
//! sentinel among them), and a stream of events whose output and
//! directives hold secrets, parts of secrets and anything else, cut into
//! chunks anywhere. Checked:
//! - `secrets_for` keeps exactly the tokens and the values of matching
//!   names that are long enough, longest first, once each, and
//!   `glob_match` agrees with a plain dynamic-programming matcher;
//! - no secret is whole in the masked output between two other events (a
//!   secret with `[` or `]`, or inside `[REDACTED]`, could be made of the
//!   replacement itself, so those are left out of this check), nor in a
//!   masked directive;
//! - output holding no secret passes through unchanged, and with a single
//!   secret the output is the input with each copy replaced, whatever the
//!   chunks.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use semaphore_agent::events::{Event, EventSink, JobResult};
use semaphore_agent::mask::{
    glob_match, secrets_for, Masker, DEFAULT_PATTERNS, MIN_SECRET_LEN, REDACTED,
};
use semaphore_agent::request::{encode_base64, EnvVar, JobRequest};
use semaphore_agent_fuzz::{check_error, SENTINEL};

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

/// `glob_match` as a table: `*` any run, `?` one character, ASCII case
/// ignored.
fn glob_model(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_uppercase()).collect();
    let n: Vec<char> = name.chars().map(|c| c.to_ascii_uppercase()).collect();
    // m[i][j]: p[..i] matches n[..j].
    let mut m = vec![vec![false; n.len() + 1]; p.len() + 1];
    m[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=n.len() {
            m[i][j] = match p[i - 1] {
                '*' => m[i - 1][j] || (j > 0 && m[i][j - 1]),
                '?' => j > 0 && m[i - 1][j - 1],
                c => j > 0 && c == n[j - 1] && m[i - 1][j - 1],
            };
        }
    }
    m[p.len()][n.len()]
}

/// A string from a small alphabet, so names, patterns and values meet.
fn word(u: &mut Unstructured<'_>, alphabet: &[u8], max: usize) -> Result<String> {
    let n = u.int_in_range(0..=max)?;
    let mut s = String::new();
    for _ in 0..n {
        if u.ratio(1, 16)? {
            // Now and then anything, multi-byte characters included.
            s.push(u.arbitrary::<char>()?);
        } else {
            s.push(char::from(*u.choose(alphabet)?));
        }
    }
    Ok(s)
}

const NAME_CHARS: &[u8] = b"AB_TOKENPASWRD";
const PATTERN_CHARS: &[u8] = b"AB_TOKEN*?";
const VALUE_CHARS: &[u8] = b"ab-12[]REDACT";

/// Whether a masked text could show `secret` only by leaking it: a secret
/// without brackets that is not part of `[REDACTED]` cannot overlap a
/// replacement.
fn checkable(secret: &str) -> bool {
    !secret.contains(['[', ']']) && !REDACTED.contains(secret)
}

/// Output, directives and their pieces: secrets whole and cut, and filler.
fn text(u: &mut Unstructured<'_>, secrets: &[String]) -> Result<String> {
    let mut s = String::new();
    for _ in 0..u.int_in_range(0..=4)? {
        match u.int_in_range(0..=3u8)? {
            0 if !secrets.is_empty() => s.push_str(u.choose(secrets)?),
            1 if !secrets.is_empty() => {
                let secret = u.choose(secrets)?;
                let cut = u.int_in_range(0..=secret.len())?;
                let mut cut = cut;
                while !secret.is_char_boundary(cut) {
                    cut -= 1;
                }
                let (a, b) = secret.split_at(cut);
                s.push_str(if u.arbitrary()? { a } else { b });
            }
            _ => s.push_str(&word(u, VALUE_CHARS, 8)?),
        }
    }
    Ok(s)
}

/// The events the masker passed on, as (non-output events, output text
/// between them).
fn segments(events: &[Event]) -> (Vec<&Event>, Vec<String>) {
    let mut others = Vec::new();
    let mut texts = vec![String::new()];
    for e in events {
        match e {
            Event::CmdOutput { output, .. } => texts.last_mut().unwrap().push_str(output),
            other => {
                others.push(other);
                texts.push(String::new());
            }
        }
    }
    (others, texts)
}

/// The directive of an event, if it has one.
fn directive(event: &Event) -> Option<&str> {
    match event {
        Event::CmdStarted { directive, .. } | Event::CmdFinished { directive, .. } => {
            Some(directive)
        }
        _ => None,
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    // Secrets: env vars, agent vars and tokens.
    let mut env_vars = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let name = word(u, NAME_CHARS, 12)?;
        let value = word(u, VALUE_CHARS, 12)?;
        let encoded = if u.ratio(1, 8)? {
            format!("{value}!") // not base64: skipped, never shown
        } else {
            encode_base64(value.as_bytes())
        };
        env_vars.push((name, value, encoded));
    }
    let agent_vars: Vec<(String, String)> = (0..u.int_in_range(0..=2)?)
        .map(|_| Ok((word(u, NAME_CHARS, 12)?, word(u, VALUE_CHARS, 12)?)))
        .collect::<Result<_>>()?;
    let mut patterns: Vec<String> = (0..u.int_in_range(0..=3)?)
        .map(|_| word(u, PATTERN_CHARS, 8))
        .collect::<Result<_>>()?;
    if u.arbitrary()? {
        patterns.extend(DEFAULT_PATTERNS.iter().map(|p| p.to_string()));
    }
    let mut tokens: Vec<String> = (0..u.int_in_range(0..=2)?)
        .map(|_| word(u, VALUE_CHARS, 12))
        .collect::<Result<_>>()?;
    tokens.push(SENTINEL.to_string());
    let request = JobRequest {
        env_vars: env_vars
            .iter()
            .map(|(name, _, encoded)| EnvVar {
                name: name.clone(),
                value: encoded.clone(),
            })
            .collect(),
        ..JobRequest::default()
    };
    for var in &request.env_vars {
        if let Err(e) = var.decode() {
            check_error("EnvVar::decode", &e);
        }
    }
    let all_secrets = secrets_for(&request, &agent_vars, &patterns, &tokens);

    // secrets_for keeps exactly what it should, in order.
    let matches = |name: &str| {
        patterns.iter().any(|p| {
            let got = glob_match(p, name);
            assert_eq!(got, glob_model(p, name), "glob {p:?} on {name:?}");
            got
        })
    };
    let mut want: Vec<String> = Vec::new();
    for (name, value, encoded) in &env_vars {
        if matches(name) && !encoded.ends_with('!') {
            want.push(value.clone());
        }
    }
    for (name, value) in &agent_vars {
        if matches(name) {
            want.push(value.clone());
        }
    }
    want.extend(tokens.iter().cloned());
    want.retain(|s| s.len() >= MIN_SECRET_LEN);
    want.sort();
    want.dedup();
    let mut got = all_secrets.clone();
    got.sort();
    assert_eq!(got, want, "secrets_for");
    assert!(
        all_secrets
            .windows(2)
            .all(|w| w[0].len() >= w[1].len() && w[0] != w[1]),
        "not longest first, once each: {all_secrets:?}"
    );

    // Sometimes a single secret, for the exact check.
    let secrets = if u.ratio(1, 3)? {
        vec![u.choose(&all_secrets)?.clone()]
    } else {
        all_secrets
    };

    // The events, and the masker's output.
    let mut input = Vec::new();
    for _ in 0..u.int_in_range(0..=24)? {
        input.push(match u.int_in_range(0..=9u8)? {
            0 => Event::CmdStarted {
                timestamp: 1,
                directive: text(u, &secrets)?,
            },
            1 => Event::CmdFinished {
                timestamp: 2,
                directive: text(u, &secrets)?,
                exit_code: 0,
                started_at: 1,
                finished_at: 2,
            },
            2 if u.ratio(1, 4)? => Event::JobFinished {
                timestamp: 3,
                result: JobResult::Passed,
            },
            _ => Event::CmdOutput {
                timestamp: 1,
                output: text(u, &secrets)?,
            },
        });
    }
    let mut output: Vec<Event> = Vec::new();
    {
        let mut masker = Masker::new(&mut output, secrets.clone());
        for event in input.clone() {
            masker.emit(event);
        }
    }

    let (in_others, in_texts) = segments(&input);
    let (out_others, out_texts) = segments(&output);
    assert_eq!(in_others.len(), out_others.len(), "events lost or added");
    for (text_in, text_out) in in_texts.iter().zip(&out_texts) {
        for secret in secrets.iter().filter(|s| checkable(s)) {
            assert!(
                !text_out.contains(secret.as_str()),
                "{secret:?} shown in {text_out:?} (from {text_in:?})"
            );
        }
        if !secrets.iter().any(|s| text_in.contains(s.as_str())) {
            assert_eq!(text_out, text_in, "output without secrets changed");
        }
        // (With brackets, a replacement and the text after it can form the
        // secret again, which a later chunk then masks too.)
        match secrets.as_slice() {
            [secret] if checkable(secret) => assert_eq!(
                *text_out,
                text_in.replace(secret.as_str(), REDACTED),
                "single secret {secret:?}"
            ),
            _ => {}
        }
    }
    for (a, b) in in_others.iter().zip(&out_others) {
        match (directive(a), directive(b)) {
            (Some(a), Some(b)) => {
                for secret in secrets.iter().filter(|s| checkable(s)) {
                    assert!(!b.contains(secret.as_str()), "{secret:?} shown in {b:?}");
                }
                if !secrets.iter().any(|s| a.contains(s.as_str())) {
                    assert_eq!(a, b, "a directive without secrets changed");
                }
            }
            _ => assert_eq!(format!("{a:?}"), format!("{b:?}"), "an event changed"),
        }
    }
    Ok(())
}
