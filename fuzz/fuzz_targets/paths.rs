//! Path normalisation of job files: where `files[].path` lands, on Unix
//! (`executor::normalize_path`) and on Windows
//! (`executor::windows_normalize_path`, compiled everywhere).
//!
//! Checked: no panic on any path; the result is absolute; a relative path
//! is cleaned exactly as a plain model of Go's `filepath.Join` cleans it
//! (no `.`, `..`, empty or trailing parts); extra `./` and slashes do not
//! change it; normalising the result again changes nothing.

#![no_main]

use std::path::Path;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use semaphore_agent::executor::{normalize_path, windows_normalize_path};

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

/// A path built from parts that matter to the cleaner, and raw bytes.
fn path(u: &mut Unstructured<'_>) -> Result<String> {
    let mut out = String::new();
    for _ in 0..u.int_in_range(0..=12)? {
        let part = match u.int_in_range(0..=11u8)? {
            0 => "/",
            1 => "\\",
            2 => ".",
            3 => "..",
            4 => "~",
            5 => "a",
            6 => "bc",
            7 => "C:",
            8 => "\\\\",
            9 => "é",
            10 => ":",
            _ => {
                let n = u.int_in_range(0..=6)?;
                let bytes = u.bytes(n.min(u.len()))?;
                out.push_str(&String::from_utf8_lossy(bytes));
                ""
            }
        };
        out.push_str(part);
    }
    Ok(out)
}

/// Go's lexical clean of `home` joined with the relative `rel` (neither
/// starting with `~` nor `/`), as plain string work.
fn unix_model(home: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in home.split('/').chain(rel.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn check_unix(home: &str, p: &str) {
    let result = normalize_path(p, Path::new(home));
    assert!(result.is_absolute(), "{p:?} -> {result:?}");
    let again = normalize_path(&result.to_string_lossy(), Path::new(home));
    assert_eq!(again, result, "normalising {p:?} twice");
    if p.starts_with('~') {
        assert!(
            result.starts_with(home),
            "{p:?} -> {result:?} is not under {home}"
        );
    } else if !p.starts_with('/') {
        let model = unix_model(home, p);
        assert_eq!(result.to_string_lossy(), model, "{p:?} under {home}");
        // Extra `./` and repeated slashes do not change where it goes.
        let padded = format!("./{}", p.replace('/', "//./"));
        assert_eq!(
            normalize_path(&padded, Path::new(home)),
            result,
            "{padded:?}"
        );
    }
}

/// The same model for Windows: `\` parts under a `C:` home, `..` stops at
/// the root.
fn windows_model(home: &str, rel: &str) -> String {
    let (volume, home_rest) = home.split_at(2);
    let mut parts: Vec<&str> = Vec::new();
    for part in home_rest.split('\\').chain(rel.split('\\')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("{volume}\\{}", parts.join("\\"))
}

fn check_windows(home: &str, p: &str) {
    let result = windows_normalize_path(p, home);
    assert!(!result.contains('/'), "{p:?} -> {result:?}");
    let again = windows_normalize_path(&result, home);
    assert_eq!(again, result, "normalising {p:?} twice");
    let backslashed = p.replace('/', "\\");
    if backslashed.starts_with('~') {
        assert!(
            result.starts_with(home.trim_end_matches('\\')),
            "{p:?} -> {result:?} is not under {home}"
        );
    } else if !semaphore_agent::executor::windows_is_absolute(&backslashed) {
        assert_eq!(
            result,
            windows_model(home, &backslashed),
            "{p:?} under {home}"
        );
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let unix_home = *u.choose(&["/home/u", "/", "/root", "/home/user/x/"])?;
    let windows_home = *u.choose(&["C:\\Users\\u", "C:\\", "D:\\a\\b\\"])?;
    let p = path(u)?;
    check_unix(unix_home, &p);
    check_windows(windows_home, &p);
    Ok(())
}
