//! The test-only knobs: `SEMAPHORE_AGENT_TEST_*` variables with which the
//! integration tests shrink retry delays and sync intervals, turn cgroups
//! off, or point the Kubernetes executor at a stand-in. Not a supported
//! interface.
//!
//! Owns the one gate (a dev build, which `cargo test` makes, or the
//! `test-knobs` cargo feature), the one bound on a duration (an hour) and
//! the one warning a release build logs when it ignores a knob. Every knob
//! of the crate is read here, so nothing in a user's environment can shrink
//! the agent's retries or move its files in a release build. It must not
//! decide what a knob does.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Whether this build honours the knobs: builds for tests only, i.e. the
/// dev profile (`cargo test` builds the binary in it) or the `test-knobs`
/// cargo feature.
pub const HONOURED: bool = cfg!(any(debug_assertions, feature = "test-knobs"));

/// The prefix of every knob.
pub const PREFIX: &str = "SEMAPHORE_AGENT_TEST_";

/// The largest value a duration knob may take, in milliseconds (one hour):
/// far above what a test needs and far below what would overflow a
/// `Duration` sum or an `Instant` deadline.
pub const MAX_MS: u64 = 60 * 60 * 1000;

/// The knobs a release build already said it ignores (each said once).
static WARNED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The text of knob `PREFIX` + `name` in the agent's environment, when
/// this build honours knobs.
pub fn text(name: &str) -> Option<String> {
    text_from(name, &|var| std::env::var(var).ok(), HONOURED)
}

/// [`text`] with the environment and the gate given: `None` when unset,
/// and when `honoured` is false (then logging, once per knob, that it is
/// ignored).
pub fn text_from(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    honoured: bool,
) -> Option<String> {
    let var = format!("{PREFIX}{name}");
    let text = env(&var)?;
    if honoured {
        return Some(text);
    }
    let first = WARNED.lock().map_or(true, |mut warned| {
        let first = !warned.contains(&var);
        if first {
            warned.push(var.clone());
        }
        first
    });
    if first {
        log::warn!("Ignoring {var}: test-only settings are not honoured by a release build");
    }
    None
}

/// A duration knob in whole milliseconds from 0 to [`MAX_MS`]; another
/// value is logged (naming it) and ignored.
pub fn millis(name: &str) -> Option<Duration> {
    millis_from(name, &|var| std::env::var(var).ok(), HONOURED)
}

/// [`millis`] with the environment and the gate given.
pub fn millis_from(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    honoured: bool,
) -> Option<Duration> {
    let text = text_from(name, env, honoured)?;
    match text.trim().parse::<u64>() {
        Ok(ms) if ms <= MAX_MS => Some(Duration::from_millis(ms)),
        _ => {
            log::error!(
                "Ignoring {PREFIX}{name}='{text}': expected whole milliseconds from 0 to {MAX_MS}"
            );
            None
        }
    }
}

/// A path knob.
pub fn path(name: &str) -> Option<PathBuf> {
    text(name).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |var| var.starts_with(PREFIX).then(|| value.to_string())
    }

    #[test]
    fn knobs_are_read_only_when_honoured() {
        assert_eq!(text_from("X", &env("off"), true).as_deref(), Some("off"));
        assert_eq!(text_from("X", &env("off"), false), None);
        assert_eq!(text_from("X", &|_| None, true), None);
        assert_eq!(
            millis_from("X_MS", &env("250"), true),
            Some(Duration::from_millis(250))
        );
        assert_eq!(millis_from("X_MS", &env("250"), false), None);
    }

    #[test]
    fn durations_are_bounded_to_an_hour() {
        let max = Box::leak(MAX_MS.to_string().into_boxed_str());
        let past = Box::leak((MAX_MS + 1).to_string().into_boxed_str());
        assert_eq!(
            millis_from("X_MS", &env(max), true),
            Some(Duration::from_millis(MAX_MS))
        );
        for bad in [&*past, "-1", "junk", "18446744073709551615"] {
            assert_eq!(millis_from("X_MS", &env(bad), true), None, "{bad}");
        }
    }
}
