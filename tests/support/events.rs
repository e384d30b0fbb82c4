//! Job requests and job logs as the integration tests build and read them:
//! the `commands` list of a job request, and the `(directive, output, exit
//! code)` steps of a job log's events. One copy, used by the host, compose
//! and Kubernetes tests alike.

use serde_json::{json, Value};

/// The `commands` list of a job request: one `{"directive": ...}` each.
pub fn commands(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|c| json!({ "directive": c })).collect())
}

/// `directive` of each `cmd_started`, with the `cmd_output`s between it
/// and its `cmd_finished` joined, and its exit code (-1 when missing).
pub fn steps(events: &[Value]) -> Vec<(String, String, i64)> {
    let mut steps = Vec::new();
    let mut current: Option<(String, String)> = None;
    for e in events {
        match e["event"].as_str() {
            Some("cmd_started") => {
                current = Some((e["directive"].as_str().unwrap_or("").into(), String::new()))
            }
            Some("cmd_output") => {
                if let Some((_, out)) = current.as_mut() {
                    out.push_str(e["output"].as_str().unwrap_or(""));
                }
            }
            Some("cmd_finished") => {
                if let Some((d, out)) = current.take() {
                    steps.push((d, out, e["exit_code"].as_i64().unwrap_or(-1)));
                }
            }
            _ => {}
        }
    }
    steps
}

/// The step of `directive`; panics, listing every step, when there is none.
pub fn step<'a>(steps: &'a [(String, String, i64)], directive: &str) -> &'a (String, String, i64) {
    steps
        .iter()
        .find(|(d, _, _)| d == directive)
        .unwrap_or_else(|| panic!("no step {directive:?} in {steps:#?}"))
}
