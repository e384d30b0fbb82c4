//! Shared parts of the fuzz targets: the sentinel secret and the check that
//! no error message shows it, and helpers that turn fuzz bytes into values.
//!
//! The targets place [`SENTINEL`] wherever secrets live (env var values,
//! file contents, tokens, values given to the masker) and let the fuzzer's
//! bytes drive everything else; an error that quotes the sentinel, plainly
//! or in base64, is a leak and aborts the run.

use libfuzzer_sys::arbitrary::{Result, Unstructured};

/// The secret every target hides somewhere.
pub const SENTINEL: &str = "SENTINEL-s3cr3t-9f2c";

/// [`SENTINEL`] in padded standard base64, as the control plane sends it.
pub fn sentinel_base64() -> String {
    semaphore_agent::request::encode_base64(SENTINEL.as_bytes())
}

/// Panics (a finding) when `text`, an error's Display or Debug, shows the
/// sentinel or its base64 (padded or not).
pub fn assert_no_sentinel(what: &str, text: &str) {
    let b64 = sentinel_base64();
    assert!(
        !text.contains(SENTINEL) && !text.contains(b64.trim_end_matches('=')),
        "{what} shows the sentinel secret: {text}"
    );
}

/// Checks the Display and the Debug of an error.
pub fn check_error<E: std::fmt::Display + std::fmt::Debug>(what: &str, err: &E) {
    assert_no_sentinel(what, &err.to_string());
    assert_no_sentinel(what, &format!("{err:?}"));
}

/// `text` with any copy of the sentinel (or its base64) broken up: the
/// fuzzer learns the sentinel from the comparisons and would otherwise put
/// it into fields that are not secret, where showing it is fine.
pub fn not_secret(text: String) -> String {
    let b64 = sentinel_base64();
    let b64 = b64.trim_end_matches('=');
    if text.contains(SENTINEL) || text.contains(b64) {
        // Both start with an upper-case letter; lower-casing them all
        // breaks every copy, even overlapping ones.
        text.replace('S', "s").replace('U', "u")
    } else {
        text
    }
}

/// A short string of the fuzzer's choice (at most `max` bytes), never
/// holding the sentinel.
pub fn short_string(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let len = u.int_in_range(0..=max)?;
    let bytes = u.bytes(len.min(u.len()))?;
    Ok(not_secret(String::from_utf8_lossy(bytes).into_owned()))
}
