//! The module layering, checked: every `crate::<module>` reference in
//! `src/` must point to a module of a lower layer, so no two modules import
//! each other and nothing low reaches up (issue 8). A new module gets a
//! line in `LAYERS`; the test fails until it has one.

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
    ],
    // The agent's private temp dir and file creation; job log masking; the
    // operations registry the listener and the log flusher update.
    &["private_tmp", "mask", "metrics"],
    // The PTY shell; the health and metrics HTTP server; the Kubernetes
    // API client and objects.
    &["shell", "health", "kubernetes"],
    // How a job's commands run; where its events go.
    &["executor", "logs"],
    // The job lifecycle; the control-plane client; the raw CLI.
    &["job", "api", "cli"],
    // The validated configuration.
    &["config"],
    // The ways the agent runs: `run` (a job, or a whole pipeline) and `start`.
    &["local", "listener", "pipeline"],
];

/// Items of the crate root (`lib.rs`) that any module may use.
const ROOT_ITEMS: &[&str] = &["unix_now", "unix_nanos", "VERSION"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `(module, referenced module)` for every `crate::x` in `text`, comments
/// skipped.
fn references(module: &str, text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module && !ROOT_ITEMS.contains(&name.as_str()) {
                found.push((module.to_string(), name));
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

#[test]
fn no_module_uses_its_own_layer_or_a_higher_one() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src",
        files.len()
    );
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap_or(&file);
        let first = relative
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "layers") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (from, to) in references(&module, &text) {
            match (layer_of(&from), layer_of(&to)) {
                (Some(a), Some(b)) if b < a => {}
                (None, _) => violations.push(format!("{from}: not in LAYERS (src/layers.rs)")),
                (_, None) => violations.push(format!("{to} (used by {from}): not in LAYERS")),
                _ => violations.push(format!(
                    "{} uses crate::{to}, which is not in a lower layer",
                    relative.display()
                )),
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_reference() {
    let refs = references(
        "events",
        "use crate::job::JobOptions; // crate::api in a comment",
    );
    assert_eq!(refs, vec![("events".to_string(), "job".to_string())]);
    assert!(layer_of("job") > layer_of("events"));
}
