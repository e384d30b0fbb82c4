//! The one poll-until helper of the tests: every wait for something that
//! happens in another process or thread is bounded and checks again every
//! few milliseconds. (The fake hub has its own wait, woken by its
//! requests: `Hub::wait_until`.) Self-contained (no `super::`), because
//! `tests/orphan_reaping.rs` includes it on its own.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(10);

/// Whether `ready` holds within `bound`; it is checked once more at the
/// end, so a bound of zero checks it once.
pub fn until(bound: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    ready()
}

/// The value of `read` once `done` holds for it, or its last value after
/// `bound`: for asserts that show what was seen.
pub fn value<T>(bound: Duration, mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + bound;
    loop {
        let v = read();
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(POLL);
    }
}
