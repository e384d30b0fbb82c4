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
/// It lives in the fuzz crate's target dir, which `.ci/fuzz.sh` cleans.
fn job_file(ext: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/request-files")
        .join(std::process::id().to_string());
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
        same_content(file, secrets_inside);
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

/// `File::write_content` (decoding a chunk at a time) and `File::decode`
/// (all at once) give the same bytes, or the same error.
fn same_content(file: &File, secrets_inside: bool) {
    let mut written = Vec::new();
    let streamed = file.write_content(&mut written);
    match (file.decode(), streamed) {
        (Ok(whole), Ok(n)) => {
            assert_eq!(n, whole.len() as u64, "write_content's count");
            assert!(
                whole == written,
                "write_content wrote other bytes than decode"
            );
        }
        (Err(a), Err(b)) => {
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "decode and write_content errors differ"
            );
            if secrets_inside {
                check_error("File::decode", &a);
                check_error("File::write_content", &b);
            }
        }
        (a, b) => panic!(
            "decode and write_content disagree: {:?} vs {b:?}",
            a.map(|v| v.len())
        ),
    }
}

/// Everything a request holds that `Debug` leaves out.
fn secrets_of(job: &JobRequest) -> Vec<&str> {
    let mut out = vec![job.logger.token.as_str()];
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
    out.extend(vars.map(|v| v.value.as_str()));
    let files = job.files.iter().chain(
        job.compose
            .image_pull_credentials
            .iter()
            .flat_map(|c| &c.files),
    );
    out.extend(files.map(|f| f.content.as_str()));
    out
}

/// `from_json` (from a string) and `from_json_reader` (streaming, file
/// contents taken over from the parser's buffer) agree.
fn parse_json(json: &[u8], secrets_inside: bool) {
    let streamed = JobRequest::from_json_reader(json);
    if let Err(e) = &streamed {
        if secrets_inside {
            check_error("from_json_reader", e);
        }
    }
    let Ok(text) = std::str::from_utf8(json) else {
        return;
    };
    match (JobRequest::from_json(text), streamed) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "from_json_reader differs"
            );
            assert_eq!(secrets_of(&a), secrets_of(&b), "from_json_reader differs");
            exercise(&a, secrets_inside);
        }
        (Err(e), Err(_)) => {
            if secrets_inside {
                check_error("from_json", &e);
            }
        }
        (a, b) => panic!(
            "from_json and from_json_reader disagree: {:?} vs {:?}",
            a.err(),
            b.err()
        ),
    }
}

fn raw(data: &[u8]) {
    parse_json(data, false);
    if let Ok(text) = std::str::from_utf8(data) {
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
    Ok(match u.int_in_range(0..=4u8)? {
        0 => SENTINEL.to_string(),
        4 => {
            // Line breaks, as MIME base64 has: escaped in JSON.
            let mut b64 = sentinel_base64();
            let at = u.int_in_range(0..=b64.len())?;
            b64.insert_str(at, if u.arbitrary()? { "\n" } else { "\r\n\t" });
            b64
        }
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
    parse_json(json, true);
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
    // Contents over the chunk size of `write_content` (64 KiB), with a
    // few bytes changed anywhere: the same bytes or error as `decode`.
    let unit_len = u.int_in_range(1..=48)?.min(u.len());
    let unit = u.bytes(unit_len)?.to_vec();
    if !unit.is_empty() {
        let len: usize = u.int_in_range(40_000..=150_000)?;
        let mut content = encode_base64(&unit.repeat(len / unit.len()));
        for _ in 0..u.int_in_range(0..=4)? {
            let at = u.int_in_range(0..=content.len())?;
            let b = *u.choose(&[b' ', b'\n', b'=', b'!', b'A', b'-', b'\t'])?;
            content.insert(at, char::from(b));
        }
        if u.arbitrary()? {
            content.truncate(u.int_in_range(0..=content.len())?);
        }
        same_content(
            &File {
                path: "big".into(),
                content,
                mode: "0644".into(),
            },
            true,
        );
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
