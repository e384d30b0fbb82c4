//! The job request parser (`semaphore_agent::request`): JSON from the
//! control plane, JSON or YAML job files for `run`, and the base64 values
//! decoded at the point of use.
//!
//! Three kinds of input, chosen by the first byte:
//! - raw text, parsed as JSON and YAML: never a panic, and what parses
//!   decodes consistently;
//! - a request the fuzzer shapes (any fields, any types, unknown fields,
//!   cut off anywhere) with the sentinel secret in every env var value,
//!   file content and token: no error (Display or Debug) and no `Debug` of
//!   the parsed request shows it;
//! - single values around the sentinel given to the decoders directly, and
//!   base64 round trips.

#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use semaphore_agent::request::{decode_base64, encode_base64, EnvVar, File, JobRequest};
use semaphore_agent_fuzz::{
    assert_no_sentinel, check_error, not_secret, sentinel_base64, short_string, SENTINEL,
};
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => raw(rest),
        1 => {
            let _ = shaped(&mut Unstructured::new(rest));
        }
        _ => {
            let _ = values(&mut Unstructured::new(rest));
        }
    }
});

/// A job file of this run (one per process: libFuzzer runs inputs one at
/// a time), so `JobRequest::load` and its `LoadError` are what is tested.
fn job_file(ext: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("semaphore-fuzz-request-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("job.{ext}"))
}

/// Loads `text` as a job file with extension `ext`; with `secrets_inside`,
/// checks that an error does not show the sentinel.
fn load(
    text: &[u8],
    ext: &str,
    secrets_inside: bool,
) -> Option<std::result::Result<JobRequest, String>> {
    let path = job_file(ext);
    std::fs::write(&path, text).ok()?;
    Some(JobRequest::load(&path).map_err(|e| {
        if secrets_inside {
            check_error("LoadError", &e);
        }
        e.to_string()
    }))
}

/// Decodes everything a parsed request holds, as the executors do.
fn exercise(job: &JobRequest, secrets_inside: bool) {
    let _ = job.executor();
    let _ = job.find_env_var("A");
    let vars = job
        .env_vars
        .iter()
        .chain(job.compose.containers.iter().flat_map(|c| &c.env_vars))
        .chain(
            job.compose
                .image_pull_credentials
                .iter()
                .flat_map(|c| &c.env_vars),
        );
    for var in vars {
        match (var.decode(), var.decode_bytes()) {
            (Ok(text), Ok(bytes)) => assert_eq!(text, String::from_utf8_lossy(&bytes)),
            (Err(a), Err(b)) => {
                assert_eq!(a, b);
                if secrets_inside {
                    check_error("EnvVar::decode", &a);
                }
            }
            (a, b) => panic!("decode and decode_bytes disagree: {a:?} {b:?}"),
        }
    }
    let files = job.files.iter().chain(
        job.compose
            .image_pull_credentials
            .iter()
            .flat_map(|c| &c.files),
    );
    for file in files {
        if let (Err(e), true) = (file.decode(), secrets_inside) {
            check_error("File::decode", &e);
        }
        match file.parse_mode() {
            Ok(mode) => assert!(mode <= 0o7777, "mode {mode:o} from {:?}", file.mode),
            Err(e) if secrets_inside => check_error("File::parse_mode", &e),
            Err(_) => {}
        }
    }
    if secrets_inside {
        assert_no_sentinel("Debug of the job request", &format!("{job:?}"));
    }
}

fn raw(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(job) = JobRequest::from_json(text) {
            exercise(&job, false);
        }
        let _ = decode_base64(text);
    }
    for ext in ["json", "yml"] {
        if let Some(Ok(job)) = load(data, ext, false) {
            exercise(&job, false);
        }
    }
}

/// Where the sentinel goes in a secret field: as it is, in base64, or in
/// base64 between bytes of the fuzzer's choice.
fn secret(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => SENTINEL.to_string(),
        1 => sentinel_base64(),
        2 => sentinel_base64().trim_end_matches('=').to_string(),
        _ => {
            let before = short_string(u, 8)?;
            let after = short_string(u, 8)?;
            encode_base64(format!("{before}{SENTINEL}{after}").as_bytes())
        }
    })
}

/// Any JSON value (never holding the sentinel), for fields that are not
/// secret: the parser must cope with every type anywhere.
fn any_value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let kind = u.int_in_range(0..=if depth == 0 { 4 } else { 6u8 })?;
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.arbitrary::<i64>()?),
        3 => json!(u.arbitrary::<f64>()?),
        4 => Value::String(short_string(u, 24)?),
        5 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array(
                (0..n)
                    .map(|_| any_value(u, depth - 1))
                    .collect::<Result<_>>()?,
            )
        }
        _ => {
            let mut map = Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                map.insert(short_string(u, 12)?, any_value(u, depth - 1)?);
            }
            Value::Object(map)
        }
    })
}

/// A string field: usually a string, sometimes anything.
fn text(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 8)? {
        any_value(u, 2)
    } else {
        Ok(Value::String(short_string(u, 24)?))
    }
}

/// A list of `item`s: usually an array, sometimes null or anything.
fn list(
    u: &mut Unstructured<'_>,
    item: fn(&mut Unstructured<'_>) -> Result<Value>,
) -> Result<Value> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => Value::Null,
        1 => any_value(u, 2)?,
        _ => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| item(u)).collect::<Result<_>>()?)
        }
    })
}

/// An object with some of `fields` (in the fuzzer's order) and maybe an
/// unknown field.
fn object(
    u: &mut Unstructured<'_>,
    fields: &[(&str, fn(&mut Unstructured<'_>) -> Result<Value>)],
) -> Result<Value> {
    let mut map = Map::new();
    for (name, make) in fields {
        if u.ratio(3, 4)? {
            map.insert((*name).to_string(), make(u)?);
        }
    }
    if u.ratio(1, 8)? {
        map.insert(short_string(u, 12)?, any_value(u, 2)?);
    }
    Ok(Value::Object(map))
}

fn command(u: &mut Unstructured<'_>) -> Result<Value> {
    object(u, &[("directive", text), ("alias", text)])
}

fn env_var(u: &mut Unstructured<'_>) -> Result<Value> {
    object(
        u,
        &[("name", text), ("value", |u| Ok(Value::String(secret(u)?)))],
    )
}

fn file(u: &mut Unstructured<'_>) -> Result<Value> {
    object(
        u,
        &[
            ("path", text),
            ("content", |u| Ok(Value::String(secret(u)?))),
            ("mode", text),
        ],
    )
}

fn logger(u: &mut Unstructured<'_>) -> Result<Value> {
    object(
        u,
        &[
            ("method", text),
            ("url", text),
            ("token", |u| Ok(Value::String(secret(u)?))),
            ("max_size_in_bytes", |u| {
                if u.ratio(1, 4)? {
                    any_value(u, 1)
                } else {
                    Ok(json!(u.arbitrary::<i64>()?))
                }
            }),
        ],
    )
}

fn container(u: &mut Unstructured<'_>) -> Result<Value> {
    object(
        u,
        &[
            ("name", text),
            ("image", text),
            ("command", text),
            ("entrypoint", text),
            ("user", text),
            ("env_vars", |u| list(u, env_var)),
        ],
    )
}

fn credentials(u: &mut Unstructured<'_>) -> Result<Value> {
    object(
        u,
        &[
            ("env_vars", |u| list(u, env_var)),
            ("files", |u| list(u, file)),
        ],
    )
}

fn compose(u: &mut Unstructured<'_>) -> Result<Value> {
    object(
        u,
        &[
            ("containers", |u| list(u, container)),
            ("image_pull_credentials", |u| list(u, credentials)),
            ("host_setup_commands", |u| list(u, command)),
        ],
    )
}

fn request(u: &mut Unstructured<'_>) -> Result<Value> {
    object(
        u,
        &[
            ("job_id", text),
            ("executor", text),
            ("commands", |u| list(u, command)),
            ("epilogue_always_commands", |u| list(u, command)),
            ("epilogue_on_pass_commands", |u| list(u, command)),
            ("epilogue_on_fail_commands", |u| list(u, command)),
            ("env_vars", |u| list(u, env_var)),
            ("files", |u| list(u, file)),
            ("ssh_public_keys", |u| {
                list(u, |u| Ok(Value::String(short_string(u, 24)?)))
            }),
            ("logger", logger),
            ("compose", compose),
        ],
    )
}

fn shaped(u: &mut Unstructured<'_>) -> Result<()> {
    let value = request(u)?;
    let json = if u.arbitrary()? {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    }
    .unwrap_or_default();
    let yaml = serde_yaml_ng::to_string(&value).unwrap_or_default();
    // Cut off anywhere: a request that ends early (a dropped connection,
    // a half-written file) must fail without quoting what it holds.
    let cut_json = u.int_in_range(0..=json.len())?;
    let cut_yaml = u.int_in_range(0..=yaml.len())?;
    let whole = u.ratio(1, 2)?;
    let (json, yaml) = if whole {
        (json.as_bytes(), yaml.as_bytes())
    } else {
        (&json.as_bytes()[..cut_json], &yaml.as_bytes()[..cut_yaml])
    };
    if let Ok(text) = std::str::from_utf8(json) {
        match JobRequest::from_json(text) {
            Ok(job) => exercise(&job, true),
            Err(e) => check_error("from_json", &e),
        }
    }
    for (text, ext) in [(json, "json"), (yaml, "yml"), (json, "yaml")] {
        if let Some(Ok(job)) = load(text, ext, true) {
            exercise(&job, true);
        }
    }
    Ok(())
}

fn values(u: &mut Unstructured<'_>) -> Result<()> {
    let name = not_secret(short_string(u, 16)?);
    let path = not_secret(short_string(u, 16)?);
    let mode = not_secret(short_string(u, 8)?);
    let before = short_string(u, 12)?;
    let after = short_string(u, 12)?;
    let value = match u.int_in_range(0..=2u8)? {
        0 => format!("{before}{SENTINEL}{after}"),
        1 => format!("{before}{}{after}", sentinel_base64()),
        _ => format!("{before}{}{after}", secret(u)?),
    };
    let var = EnvVar {
        name,
        value: value.clone(),
    };
    if let Err(e) = var.decode_bytes() {
        check_error("EnvVar::decode_bytes", &e);
    }
    assert_no_sentinel("Debug of EnvVar", &format!("{var:?}"));
    let file = File {
        path,
        content: value.clone(),
        mode,
    };
    if let Err(e) = file.decode() {
        check_error("File::decode", &e);
    }
    if let Err(e) = file.parse_mode() {
        check_error("File::parse_mode", &e);
    }
    assert_no_sentinel("Debug of File", &format!("{file:?}"));
    if let Err(e) = decode_base64(&value) {
        check_error("decode_base64", &e);
    }
    // Base64 round trip, padded or not, with whitespace anywhere.
    let len = u.int_in_range(0..=64)?.min(u.len());
    let bytes = u.bytes(len)?;
    let encoded = encode_base64(bytes);
    assert_eq!(decode_base64(&encoded).ok().as_deref(), Some(bytes));
    let unpadded = encoded.trim_end_matches('=');
    assert_eq!(decode_base64(unpadded).ok().as_deref(), Some(bytes));
    let at = u.int_in_range(0..=unpadded.len())?;
    let spaced = format!("{} \n\t{}\r\n", &unpadded[..at], &unpadded[at..]);
    assert_eq!(decode_base64(&spaced).ok().as_deref(), Some(bytes));
    Ok(())
}
