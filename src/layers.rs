//! The module layering, checked: every reference from one module of
//! `src/` to another (`crate::x`, a grouped `use crate::{x, y}`, and
//! `super::` paths, resolved from where they stand) must point to a module
//! of a lower layer, so no two modules import each other and nothing low
//! reaches up (issue 8); and no two files import each other, directly or in
//! a ring, inside a module either (issue 21). A new module gets a line in
//! `LAYERS`; the test fails until it has one.
//!
//! The scan is lexical: comments, string and character literals are blanked
//! first, so neither a doc comment nor a message can hide or fake a
//! reference, and inline `mod name { ... }` blocks (a file's `tests`) are
//! followed, so their `super::` means the file itself.

use std::collections::{BTreeMap, BTreeSet};

/// Lowest first. A module may use the modules of the layers above it in
/// this list, never its own layer's or a later one's.
const LAYERS: &[&[&str]] = &[
    // The test-only mutation fuzzer the parsers' tests use.
    &["fuzz"],
    // Vocabulary and leaf utilities: they know nothing of the agent.
    &[
        "random",
        "events",
        "request",
        "output",
        "net",
        "keys",
        "notify",
        "child_env",
        "platform",
        "usage",
        "test_knobs",
        "liveness",
    ],
    // The agent's private temp dir and file creation; job log masking; the
    // operations registry the listener and the log flusher update.
    &["private_tmp", "mask", "metrics"],
    // The PTY shell; the health and metrics HTTP server; the Kubernetes
    // API client and objects.
    // The running job's debug socket.
    &["shell", "health", "kubernetes", "debug_socket"],
    // How a job's commands run; where its events go.
    &["executor", "logs"],
    // The job lifecycle; the control-plane client; the raw CLI.
    &["job", "api", "cli"],
    // The validated configuration.
    &["config"],
    // The ways the agent runs: `run` (a job, or a whole pipeline) and `start`.
    // `debug`: a person's shell in a running job.
    &["local", "listener", "pipeline", "debug"],
];

/// Items of the crate root (`lib.rs`) that any module may use.
const ROOT_ITEMS: &[&str] = &["unix_now", "unix_nanos", "VERSION"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `text` with every comment and the inside of every string and character
/// literal replaced by spaces (line breaks kept), so offsets stay the same.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push('"');
            out.push_str(&" ".repeat(j - i));
            i = j + 1;
            while i < chars.len() {
                if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
                    out.push('"');
                    out.push_str(&" ".repeat(hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() {
                if chars[i] == '\\' {
                    out.push(' ');
                    if let Some(&escaped) = chars.get(i + 1) {
                        out.push(blank(escaped));
                    }
                    i += 2;
                    continue;
                }
                if chars[i] == '"' {
                    out.push('"');
                    i += 1;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '\'' && is_char_literal(&chars, i) {
            out.push('\'');
            i += 1;
            while i < chars.len() {
                if chars[i] == '\\' {
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                if chars[i] == '\'' {
                    out.push('\'');
                    i += 1;
                    break;
                }
                out.push(' ');
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && is_ident_char(chars[i - 1])
}

/// Whether the `'` at `i` opens a character literal (`'x'`, `'\n'`,
/// `'{'`) rather than a lifetime (`'a`).
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

/// The inline modules of `code` (already [`code_only`]): `(start, end,
/// name)` of each `mod name { ... }` block.
fn inline_modules(code: &str) -> Vec<(usize, usize, String)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    // (name, offset of its `{`, depth inside it)
    let mut open: Vec<(String, usize, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                if let Some((_, start, d)) = open.last() {
                    if *d == depth {
                        let (name, start) = (open.last().map(|o| o.0.clone()), *start);
                        open.pop();
                        found.push((start, i, name.unwrap_or_default()));
                    }
                }
                depth = depth.saturating_sub(1);
            }
            b'm' if code[i..].starts_with("mod ")
                && (i == 0 || !is_ident_char(bytes[i - 1] as char)) =>
            {
                let rest = &code[i + 4..];
                let name: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| is_ident_char(*c))
                    .collect();
                let after = rest.trim_start()[name.len()..].trim_start();
                if !name.is_empty() && after.starts_with('{') {
                    let brace = code.len() - after.len();
                    open.push((name, brace, depth + 1));
                    // The scan meets that `{` next and counts it.
                    i = brace;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Reads one use tree at the start of `s`: `a::b`, `a::{b, c::{d}}`,
/// `{a, b}`; every path it names, as segments (`self` folded in).
fn use_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut at = 0;
    let mut prefix: Vec<String> = Vec::new();
    loop {
        let rest = &s[at..];
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        if trimmed.starts_with('{') {
            at += 1;
            let mut paths = Vec::new();
            loop {
                let rest = &s[at..];
                let trimmed = rest.trim_start();
                at += rest.len() - trimmed.len();
                if trimmed.starts_with('}') {
                    at += 1;
                    break;
                }
                if trimmed.is_empty() {
                    break;
                }
                let (inner, used) = use_tree(&s[at..]);
                at += used.max(1);
                for path in inner {
                    let mut full = prefix.clone();
                    full.extend(path.into_iter().filter(|p| p != "self"));
                    paths.push(full);
                }
                let rest = &s[at..];
                let trimmed = rest.trim_start();
                at += rest.len() - trimmed.len();
                if trimmed.starts_with(',') {
                    at += 1;
                }
            }
            return (paths, at);
        }
        let name: String = trimmed
            .chars()
            .take_while(|c| is_ident_char(*c) || *c == '*')
            .collect();
        if name.is_empty() {
            return (vec![prefix], at);
        }
        at += name.len();
        if name != "*" {
            prefix.push(name);
        }
        if s[at..].starts_with("::") {
            at += 2;
        } else {
            return (vec![prefix], at);
        }
    }
}

/// Every path a file of module `module` (e.g. `["executor", "bash"]`)
/// refers to through `crate::` or `super::`, made absolute.
fn absolute_references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let code = code_only(text);
    let inline = inline_modules(&code);
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let starts_path = i == 0 || !(is_ident_char(bytes[i - 1] as char) || bytes[i - 1] == b':');
        let root = if starts_path && bytes[i..].starts_with(b"crate::") {
            Some(("crate", 7))
        } else if starts_path && bytes[i..].starts_with(b"super::") {
            Some(("super", 7))
        } else {
            None
        };
        let Some((root, skip)) = root else {
            i += 1;
            continue;
        };
        let (paths, used) = use_tree(&code[i + skip..]);
        let base: Vec<String> = if root == "crate" {
            Vec::new()
        } else {
            // Where this `super::` stands: the file's module and the
            // inline modules around it.
            let mut here = module.to_vec();
            let mut around: Vec<&(usize, usize, String)> =
                inline.iter().filter(|(s, e, _)| *s < i && i < *e).collect();
            around.sort_by_key(|(s, _, _)| *s);
            here.extend(around.iter().map(|(_, _, n)| n.clone()));
            here.pop();
            here
        };
        for path in paths {
            let mut path = path.as_slice();
            let mut start = base.clone();
            while path.first().map(String::as_str) == Some("super") {
                start.pop();
                path = &path[1..];
            }
            start.extend(path.iter().cloned());
            found.push(start);
        }
        i += skip + used.max(1);
    }
    found
}

/// Every violation among `files` (module path → text): a reference to a
/// module of the same or a higher layer, a module missing from `LAYERS`,
/// and files of one module that import each other (a ring).
fn check(files: &BTreeMap<Vec<String>, String>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in files {
        let Some(top) = module.first() else {
            continue;
        };
        for path in absolute_references(module, text) {
            let Some(to) = path.first() else {
                continue;
            };
            if ROOT_ITEMS.contains(&to.as_str()) {
                continue;
            }
            if to != top {
                match (layer_of(top), layer_of(to)) {
                    (Some(a), Some(b)) if b < a => {}
                    (None, _) => violations.push(format!("{top}: not in LAYERS (src/layers.rs)")),
                    (_, None) => violations.push(format!("{to} (used by {top}): not in LAYERS")),
                    _ => violations.push(format!(
                        "{} uses crate::{to}, which is not in a lower layer",
                        module.join("/")
                    )),
                }
                continue;
            }
            // Inside one module: the file that defines the path.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| files.contains_key(p));
            if let Some(target) = target {
                let nested = target.starts_with(module) || module.starts_with(&target);
                if !nested {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    for ring in rings(&edges) {
        let names: Vec<String> = ring.iter().map(|m| m.join("/")).collect();
        violations.push(format!(
            "files import each other: {} -> {}",
            names.join(" -> "),
            names[0]
        ));
    }
    violations.sort();
    violations.dedup();
    violations
}

/// The rings in a graph: for each file on one, the shortest way back to
/// itself (each ring reported once, from its smallest file).
fn rings(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    let mut found: Vec<Vec<Vec<String>>> = Vec::new();
    for start in edges.keys() {
        // Breadth first from `start` back to `start`.
        let mut came_from: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut closed = None;
        while let Some(at) = queue.pop_front() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    closed = Some(at.clone());
                    break;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next.clone(), at.clone());
                    queue.push_back(next.clone());
                }
            }
            if closed.is_some() {
                break;
            }
        }
        if let Some(mut at) = closed {
            let mut ring = vec![at.clone()];
            while &at != start {
                at = came_from[&at].clone();
                ring.push(at.clone());
            }
            ring.reverse();
            if ring.iter().min() == Some(start) {
                found.push(ring);
            }
        }
    }
    found
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `executor/bash.rs` → `["executor", "bash"]`; `executor/mod.rs` →
/// `["executor"]`.
fn module_path(relative: &std::path::Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        if last != "mod.rs" {
            parts.push(last.trim_end_matches(".rs").to_string());
        }
    }
    parts
}

fn modules(files: &[(&str, &str)]) -> BTreeMap<Vec<String>, String> {
    files
        .iter()
        .map(|(path, text)| (module_path(std::path::Path::new(path)), text.to_string()))
        .collect()
}

#[test]
fn no_module_uses_its_own_layer_or_a_higher_one() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    assert!(
        paths.len() > 20,
        "found only {} files under src",
        paths.len()
    );
    let mut files = BTreeMap::new();
    for path in paths {
        let relative = path.strip_prefix(&src).unwrap_or(&path);
        let module = module_path(relative);
        if matches!(
            module.first().map(String::as_str),
            Some("lib" | "main" | "layers")
        ) {
            continue;
        }
        files.insert(module, std::fs::read_to_string(&path).unwrap_or_default());
    }
    let violations = check(&files);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_reference() {
    let files = modules(&[(
        "events.rs",
        "use crate::job::JobOptions; // crate::api in a comment\nconst S: &str = \"crate::api\";",
    )]);
    assert_eq!(
        check(&files),
        vec!["events uses crate::job, which is not in a lower layer".to_string()]
    );
    assert!(layer_of("job") > layer_of("events"));
}

#[test]
fn the_checker_sees_grouped_imports() {
    let files = modules(&[(
        "mask.rs",
        "use crate::{\n    random::fill,\n    job::{self, JobOptions},\n    listener,\n};\n",
    )]);
    assert_eq!(
        check(&files),
        vec![
            "mask uses crate::job, which is not in a lower layer".to_string(),
            "mask uses crate::listener, which is not in a lower layer".to_string(),
        ]
    );
}

#[test]
fn the_checker_resolves_super_imports() {
    // `super::` from a top-level file is the crate root; from a file's
    // `tests` module it is the file itself.
    let files = modules(&[
        ("events.rs", "use super::api::Api;\n"),
        (
            "job/lifecycle.rs",
            "use super::super::{listener, random};\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
    ]);
    assert_eq!(
        check(&files),
        vec![
            "events uses crate::api, which is not in a lower layer".to_string(),
            "job/lifecycle uses crate::listener, which is not in a lower layer".to_string(),
        ]
    );
}

#[test]
fn the_checker_sees_files_that_import_each_other() {
    let files = modules(&[
        ("executor/mod.rs", "mod a;\nmod b;\nmod c;\npub use a::X;\n"),
        ("executor/a.rs", "use super::b::Y;\nuse super::Stop;\n"),
        (
            "executor/b.rs",
            "fn f() -> super::c::Z { todo!() }\nuse crate::executor::{JobLog};\n",
        ),
        ("executor/c.rs", "use crate::executor::{a::X, JobLog};\n"),
    ]);
    assert_eq!(
        check(&files),
        vec![
            "files import each other: executor/a -> executor/b -> executor/c -> executor/a"
                .to_string()
        ]
    );
    // Without the way back, no ring.
    let mut files = files;
    files.insert(
        vec!["executor".into(), "c".into()],
        "use crate::executor::JobLog;\n".into(),
    );
    assert!(check(&files).is_empty(), "{:?}", check(&files));
}
