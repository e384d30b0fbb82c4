//! Unit tests for configuration loading: precedence, list syntax, the Go
//! agent's file shape, every validation error and redaction of secrets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::cli::{Cli, Command};

const TOKEN: &str = "s3cr3t-T0KEN-value";

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn start_args(args: &[&str]) -> StartArgs {
    let mut argv = vec!["start".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    match Cli::parse("semaphore-agent", &argv) {
        Ok(Cli {
            cmd: Command::Start(s),
        }) => s,
        Ok(other) => panic!("not start: {other:?}"),
        Err(e) => panic!("bad args {args:?}: {}", e.output),
    }
}

fn yaml(text: &str) -> Result<RawConfig, ConfigError> {
    RawConfig::from_yaml(text, Path::new("/etc/agent/config.yaml"))
}

/// Loads from a YAML text, an environment and flags, as `load_start_config`
/// does but without a file on disk.
fn load(file: &str, env: &[(&str, &str)], flags: &[&str]) -> Result<Config, ConfigError> {
    let env = env_of(env);
    let raw = yaml(file)?
        .merge(RawConfig::from_env(&env))
        .merge(RawConfig::from_start_args(&start_args(flags)));
    Config::validate(&raw, &env)
}

const BASE: &str = "endpoint: org.semaphoreci.com\ntoken: s3cr3t-T0KEN-value\n";

fn load_ok(file: &str, env: &[(&str, &str)], flags: &[&str]) -> Config {
    match load(file, env, flags) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn load_err(file: &str, env: &[(&str, &str)], flags: &[&str]) -> String {
    match load(file, env, flags) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains(TOKEN), "token leaked: {msg}");
            assert!(!format!("{e:?}").contains(TOKEN), "token leaked in Debug");
            msg
        }
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "{msg:?} does not mention {part:?}");
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

// ---- precedence -------------------------------------------------------

#[test]
fn scalar_precedence_is_file_then_env_then_flag() {
    let file = "endpoint: file.example.com\ntoken: t\n";
    let env = [("SEMAPHORE_AGENT_ENDPOINT", "env.example.com")];
    assert_eq!(load_ok(file, &[], &[]).endpoint, "file.example.com");
    assert_eq!(load_ok(file, &env, &[]).endpoint, "env.example.com");
    let c = load_ok(file, &env, &["--endpoint", "flag.example.com"]);
    assert_eq!(c.endpoint, "flag.example.com");
}

#[test]
fn list_precedence_replaces_whole_lists() {
    let file = format!("{BASE}env-vars: [A=1, B=2]\n");
    let env = [("SEMAPHORE_AGENT_ENV_VARS", "C=3")];
    assert_eq!(
        load_ok(&file, &[], &[]).env_vars,
        pairs(&[("A", "1"), ("B", "2")])
    );
    assert_eq!(load_ok(&file, &env, &[]).env_vars, pairs(&[("C", "3")]));
    let c = load_ok(&file, &env, &["--env-vars", "D=4"]);
    assert_eq!(c.env_vars, pairs(&[("D", "4")]));
}

#[test]
fn bool_precedence_including_explicit_false_flag() {
    let file = format!("{BASE}no-https: true\n");
    assert!(load_ok(&file, &[], &[]).no_https);
    let env_off = [("SEMAPHORE_AGENT_NO_HTTPS", "false")];
    assert!(!load_ok(&file, &env_off, &[]).no_https);
    assert!(load_ok(&file, &env_off, &["--no-https"]).no_https);
    let env_on = [("SEMAPHORE_AGENT_NO_HTTPS", "true")];
    assert!(!load_ok(BASE, &env_on, &["--no-https=false"]).no_https);
}

#[test]
fn int_precedence() {
    let file = format!("{BASE}disconnect-after-idle-timeout: 10\n");
    let env = [("SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT", "20")];
    assert_eq!(load_ok(&file, &[], &[]).disconnect_after_idle_timeout, 10);
    assert_eq!(load_ok(&file, &env, &[]).disconnect_after_idle_timeout, 20);
    let c = load_ok(&file, &env, &["--disconnect-after-idle-timeout=30"]);
    assert_eq!(c.disconnect_after_idle_timeout, 30);
}

#[test]
fn empty_env_var_counts_as_unset() {
    let env = [("SEMAPHORE_AGENT_ENDPOINT", "")];
    assert_eq!(load_ok(BASE, &env, &[]).endpoint, "org.semaphoreci.com");
}

#[test]
fn every_key_reads_its_env_var() {
    let env = [
        ("SEMAPHORE_AGENT_ENDPOINT", "e.example.com"),
        ("SEMAPHORE_AGENT_TOKEN", TOKEN),
        ("SEMAPHORE_AGENT_NAME", "agent-from-env"),
        ("SEMAPHORE_AGENT_NO_HTTPS", "true"),
        ("SEMAPHORE_AGENT_SHUTDOWN_HOOK_PATH", "/s.sh"),
        ("SEMAPHORE_AGENT_PRE_JOB_HOOK_PATH", "/pre.sh"),
        ("SEMAPHORE_AGENT_POST_JOB_HOOK_PATH", "/post.sh"),
        ("SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB", "true"),
        ("SEMAPHORE_AGENT_JOB_ID", "job-1"),
        ("SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT", "5"),
        ("SEMAPHORE_AGENT_INTERRUPTION_GRACE_PERIOD", "7"),
        ("SEMAPHORE_AGENT_ENV_VARS", "A=1,B=2"),
        ("SEMAPHORE_AGENT_FILES", "/a:/b"),
        ("SEMAPHORE_AGENT_FAIL_ON_MISSING_FILES", "1"),
        ("SEMAPHORE_AGENT_UPLOAD_JOB_LOGS", "when-trimmed"),
        ("SEMAPHORE_AGENT_FAIL_ON_PRE_JOB_HOOK_ERROR", "T"),
        ("SEMAPHORE_AGENT_SOURCE_PRE_JOB_HOOK", "True"),
        ("SEMAPHORE_AGENT_HEALTH_ADDRESS", "[::1]:9464"),
        ("SEMAPHORE_AGENT_LOG_FORMAT", "json"),
        ("SEMAPHORE_AGENT_GPUS", "0,GPU-abc"),
        ("SEMAPHORE_AGENT_GPU_HEALTH_COMMAND", "nvidia-smi -L"),
        ("SEMAPHORE_AGENT_JOB_MEMORY_LIMIT", "512M"),
        ("SEMAPHORE_AGENT_JOB_CPUS", "1.5"),
        ("SEMAPHORE_AGENT_JOB_STOP_GRACE_PERIOD", "5"),
    ];
    let c = load_ok("", &env, &[]);
    let expected = Config {
        endpoint: "e.example.com".into(),
        token: TOKEN.into(),
        name: "agent-from-env".into(),
        name_from_env: String::new(),
        no_https: true,
        shutdown_hook_path: Some(PathBuf::from("/s.sh")),
        pre_job_hook_path: Some(PathBuf::from("/pre.sh")),
        post_job_hook_path: Some(PathBuf::from("/post.sh")),
        disconnect_after_job: true,
        job_id: "job-1".into(),
        disconnect_after_idle_timeout: 5,
        env_vars: pairs(&[("A", "1"), ("B", "2")]),
        files: vec!["/a:/b".into()],
        fail_on_missing_files: true,
        upload_job_logs: UploadJobLogs::WhenTrimmed,
        fail_on_pre_job_hook_error: true,
        source_pre_job_hook: true,
        interruption_grace_period: 7,
        redact_env_vars: crate::mask::DEFAULT_PATTERNS
            .iter()
            .map(|p| p.to_string())
            .collect(),
        health_address: Some("[::1]:9464".into()),
        log_format: LogFormat::Json,
        warnings: vec![],
        kubernetes: None,
        gpus: Some(GpuSelection::Ids(vec!["0".into(), "GPU-abc".into()])),
        gpu_health_command: Some("nvidia-smi -L".into()),
        job_limits: JobLimits {
            memory_bytes: Some(512 << 20),
            cpu_millis: Some(1500),
        },
        job_stop_grace_period: Some(std::time::Duration::from_secs(5)),
    };
    assert_eq!(c, expected);
}

#[test]
fn gpu_and_limit_values_are_checked_and_bad_ones_named() {
    let c = load_ok(
        &format!(
            "{BASE}gpus: all\njob-memory-limit: 4G\njob-cpus: \"0.25\"\njob-stop-grace-period: 0\n"
        ),
        &[],
        &[],
    );
    assert_eq!(c.gpus, Some(GpuSelection::All));
    assert_eq!(c.job_limits.memory_bytes, Some(4 << 30));
    assert_eq!(c.job_limits.cpu_millis, Some(250));
    assert_eq!(c.job_stop_grace_period, Some(std::time::Duration::ZERO));
    let summary = c.redacted_summary();
    for line in [
        "gpus: all\n",
        "job-memory-limit: 4 GiB\n",
        "job-cpus: 0.25\n",
        "job-stop-grace-period: 0 s\n",
    ] {
        assert!(summary.contains(line), "{line} not in {summary}");
    }
    let plain = load_ok(BASE, &[], &[]);
    assert_eq!(plain.gpus, None);
    assert!(plain.job_limits.is_empty());
    assert_eq!(plain.job_stop_grace_period, None);
    assert!(plain
        .redacted_summary()
        .contains("job-stop-grace-period: 0.5 s\n"));
    for (flag, value, form) in [
        ("--gpus", "0,one", "GPU indexes or UUIDs"),
        ("--job-memory-limit", "lots", "a size such as 512M"),
        ("--job-memory-limit", "1M", "at least 4M"),
        ("--job-memory-limit", "2X", "a size"),
        ("--job-cpus", "0", "greater than 0"),
        ("--job-cpus", "-1", "number of CPUs"),
        ("--job-cpus", "0.0001", "at most 3 decimals"),
        ("--job-stop-grace-period", "forever", "seconds"),
        ("--job-stop-grace-period", "3601", "seconds from 0 to 3600"),
    ] {
        let msg = load_err(BASE, &[], &[flag, value]);
        assert_mentions(&msg, &[&flag[2..], value, form]);
    }
}

#[test]
fn sizes_and_cpus_parse() {
    use super::{parse_cpus, parse_size};
    assert_eq!(parse_size("64M"), Some(64 << 20));
    assert_eq!(parse_size("64m"), Some(64 << 20));
    assert_eq!(parse_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_size("2Gi"), Some(2 << 30));
    assert_eq!(parse_size("8192K"), Some(8 << 20));
    assert_eq!(parse_size("8388608"), Some(8 << 20));
    assert_eq!(parse_size("1.5G"), None);
    assert_eq!(parse_size("5ib"), None);
    assert_eq!(parse_size("99999999999T"), None);
    assert_eq!(parse_cpus("0.5"), Some(500));
    assert_eq!(parse_cpus(".5"), Some(500));
    assert_eq!(parse_cpus("2"), Some(2000));
    assert_eq!(parse_cpus("2."), Some(2000));
    assert_eq!(parse_cpus("."), None);
    assert_eq!(parse_cpus("1e3"), None);
}

// ---- list syntax ------------------------------------------------------

#[test]
fn comma_and_whitespace_lists() {
    let c = load_ok(BASE, &[("SEMAPHORE_AGENT_ENV_VARS", "A=1 B=2,C=3")], &[]);
    assert_eq!(c.env_vars, pairs(&[("A", "1"), ("B", "2"), ("C", "3")]));
    let c = load_ok(BASE, &[], &["--env-vars", "A=1,B=2", "--env-vars", "C=x y"]);
    assert_eq!(c.env_vars, pairs(&[("A", "1"), ("B", "2"), ("C", "x y")]));
    let c = load_ok(&format!("{BASE}files: /a:/b,/c:/d\n"), &[], &[]);
    assert_eq!(c.files, vec!["/a:/b".to_string(), "/c:/d".to_string()]);
    let c = load_ok(&format!("{BASE}env-vars:\n  - A=hello world\n"), &[], &[]);
    assert_eq!(c.env_vars, pairs(&[("A", "hello world")]));
}

#[test]
fn env_var_values_may_contain_equals() {
    let c = load_ok(BASE, &[], &["--env-vars", "URL=a=b"]);
    assert_eq!(c.env_vars, pairs(&[("URL", "a=b")]));
}

#[test]
fn empty_list_flag_clears_file_list() {
    let file = format!("{BASE}env-vars: [A=1]\n");
    assert!(load_ok(&file, &[], &["--env-vars", ""]).env_vars.is_empty());
}

// ---- the Go agent's file shape ----------------------------------------

/// The shape the Go agent's install.sh writes, plus the other keys its
/// config.example.yaml and flags know.
const GO_AGENT_CONFIG: &str = r#"endpoint: "myorg.semaphoreci.com"
token: "s3cr3t-T0KEN-value"
no-https: false
shutdown-hook-path: ""
disconnect-after-job: false
disconnect-after-idle-timeout: 0
env-vars: []
files: []
fail-on-missing-files: false
"#;

#[test]
fn go_agent_installer_config_parses_unchanged() {
    let c = load_ok(GO_AGENT_CONFIG, &[], &[]);
    assert_eq!(c.endpoint, "myorg.semaphoreci.com");
    assert_eq!(c.token, TOKEN);
    assert_eq!(c.shutdown_hook_path, None);
    assert!(!c.no_https && !c.disconnect_after_job && !c.fail_on_missing_files);
    assert_eq!(c.disconnect_after_idle_timeout, 0);
    assert!(c.env_vars.is_empty() && c.files.is_empty());
    assert_eq!(c.upload_job_logs, UploadJobLogs::Never);
    assert_eq!(c.name.len(), 20, "random name expected");
    assert!(c.warnings.is_empty());
}

#[test]
fn full_go_agent_config_parses() {
    let file = r#"
config-file: /ignored/like/in/go.yaml
endpoint: myorg.semaphoreci.com
token: s3cr3t-T0KEN-value
name: my-agent-0001
no-https: true
shutdown-hook-path: /opt/semaphore/shutdown.sh
pre-job-hook-path: /opt/semaphore/pre.sh
post-job-hook-path: /opt/semaphore/post.sh
disconnect-after-job: true
job-id: 5a1b2c3d-0000-4000-8000-000000000000
disconnect-after-idle-timeout: 300
interruption-grace-period: 60
env-vars:
  - FOO=bar
  - BAZ=qux
files:
  - /home/semaphore/.npmrc:/root/.npmrc
fail-on-missing-files: true
upload-job-logs: always
fail-on-pre-job-hook-error: true
source-pre-job-hook: true
kubernetes-executor: false
kubernetes-pod-spec: ""
kubernetes-allowed-images: []
kubernetes-pod-start-timeout: 300
kubernetes-labels: []
kubernetes-default-image: ""
"#;
    let c = load_ok(file, &[], &[]);
    assert_eq!(c.name, "my-agent-0001");
    assert!(c.no_https && c.disconnect_after_job && c.fail_on_missing_files);
    assert_eq!(c.job_id, "5a1b2c3d-0000-4000-8000-000000000000");
    assert_eq!(c.disconnect_after_idle_timeout, 300);
    assert_eq!(c.interruption_grace_period, 60);
    assert_eq!(c.env_vars, pairs(&[("FOO", "bar"), ("BAZ", "qux")]));
    assert_eq!(c.files, vec!["/home/semaphore/.npmrc:/root/.npmrc"]);
    assert_eq!(c.upload_job_logs, UploadJobLogs::Always);
    assert!(c.fail_on_pre_job_hook_error && c.source_pre_job_hook);
    assert_eq!(
        c.pre_job_hook_path,
        Some(PathBuf::from("/opt/semaphore/pre.sh"))
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn file_keys_are_case_insensitive_like_viper() {
    let c = load_ok("Endpoint: e.example.com\nTOKEN: t\n", &[], &[]);
    assert_eq!(c.endpoint, "e.example.com");
}

#[test]
fn empty_file_and_null_values_mean_unset() {
    assert!(yaml("").is_ok());
    assert!(yaml("# only a comment\n").is_ok());
    let c = load_ok(&format!("{BASE}name:\nenv-vars:\n"), &[], &[]);
    assert_eq!(c.name.len(), 20);
}

#[test]
fn string_values_from_yaml_scalars() {
    // viper renders numbers as strings for string keys.
    let c = load_ok(&format!("{BASE}name: 123456789\n"), &[], &[]);
    assert_eq!(c.name, "123456789");
}

// ---- kubernetes ---------------------------------------------------------

#[test]
fn kubernetes_settings_are_validated_and_typed() {
    let file = format!(
        "{BASE}kubernetes-executor: true\nkubernetes-pod-start-timeout: 60\n\
         kubernetes-labels: [a=b, example.com/team=ci]\nkubernetes-default-image: ''\n\
         kubernetes-allowed-images: ['^registry\\.io/']\nkubernetes-pod-spec: deco\n"
    );
    let c = load_ok(&file, &[("KUBERNETES_NAMESPACE", "jobs")], &[]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let k = c.kubernetes.expect("kubernetes on");
    assert_eq!(k.namespace, "jobs");
    assert_eq!(k.pod_start_timeout, std::time::Duration::from_secs(60));
    assert_eq!(k.labels, pairs(&[("a", "b"), ("example.com/team", "ci")]));
    assert_eq!(k.default_image, None);
    assert_eq!(k.allowed_images, vec!["^registry\\.io/".to_string()]);
    assert_eq!(k.pod_spec.as_deref(), Some("deco"));

    let c = load_ok(BASE, &[], &["--kubernetes-executor"]);
    let k = c.kubernetes.expect("kubernetes on");
    assert_eq!(k.namespace, "default");
    assert_eq!(k.pod_start_timeout, std::time::Duration::from_secs(300));
    assert!(load_ok(BASE, &[], &[]).kubernetes.is_none());
}

#[test]
fn bad_kubernetes_settings_are_named() {
    let msg = load_err(BASE, &[], &["--kubernetes-allowed-images", "ok,(unclosed"]);
    assert_mentions(
        &msg,
        &["kubernetes-allowed-images", "(unclosed", "command line"],
    );
    let msg = load_err(&format!("{BASE}kubernetes-labels: [novalue]\n"), &[], &[]);
    assert_mentions(&msg, &["kubernetes-labels", "novalue", "key=value"]);
    let env = [("SEMAPHORE_AGENT_KUBERNETES_POD_START_TIMEOUT", "-1")];
    let msg = load_err(BASE, &env, &[]);
    assert_mentions(&msg, &["kubernetes-pod-start-timeout", "-1"]);
}

// ---- every validation error -------------------------------------------

#[test]
fn unknown_key_in_file_is_fatal_and_named() {
    let msg = load_err(&format!("{BASE}disconect-after-job: true\n"), &[], &[]);
    assert_mentions(&msg, &["disconect-after-job", "/etc/agent/config.yaml"]);
    // A `serve`-only option is not a `start` option in Go either.
    let msg = load_err(&format!("{BASE}expose-kvm-device: true\n"), &[], &[]);
    assert_mentions(&msg, &["expose-kvm-device"]);
}

#[test]
fn invalid_yaml_names_the_file() {
    let msg = load_err("endpoint: [unclosed\ntoken: s3cr3t-T0KEN-value\n", &[], &[]);
    assert_mentions(&msg, &["/etc/agent/config.yaml", "invalid YAML"]);
    let msg = load_err("token: \"s3cr3t-T0KEN-value\n", &[], &[]);
    assert_mentions(&msg, &["/etc/agent/config.yaml"]);
}

#[test]
fn file_must_be_a_mapping() {
    let msg = load_err("- endpoint\n", &[], &[]);
    assert_mentions(&msg, &["/etc/agent/config.yaml", "mapping", "a list"]);
}

#[test]
fn nested_value_in_file_is_rejected() {
    let msg = load_err(&format!("{BASE}files:\n  a: b\n"), &[], &[]);
    assert_mentions(&msg, &["'files'", "a mapping", "config.yaml"]);
    let msg = load_err(&format!("{BASE}env-vars:\n  - [A=1]\n"), &[], &[]);
    assert_mentions(&msg, &["'env-vars'", "a list containing a list"]);
}

#[test]
fn unreadable_file_names_the_path() {
    let args = start_args(&["--config-file", "/nonexistent/dir/agent.yaml"]);
    let err = load_start_config(&args, &no_env)
        .err()
        .map(|e| e.to_string());
    assert_mentions(
        &err.unwrap_or_default(),
        &["/nonexistent/dir/agent.yaml", "cannot read"],
    );
}

#[test]
fn job_id_requires_disconnect_after_job() {
    let msg = load_err(BASE, &[], &["--job-id", "j1"]);
    assert_mentions(&msg, &["job-id", "disconnect-after-job", "command line"]);
    let c = load_ok(BASE, &[], &["--job-id", "j1", "--disconnect-after-job"]);
    assert_eq!(c.job_id, "j1");
}

#[test]
fn negative_or_non_numeric_seconds() {
    let msg = load_err(
        &format!("{BASE}disconnect-after-idle-timeout: -5\n"),
        &[],
        &[],
    );
    assert_mentions(&msg, &["disconnect-after-idle-timeout", "-5", "negative"]);
    let env = [("SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT", "soon")];
    let msg = load_err(BASE, &env, &[]);
    assert_mentions(
        &msg,
        &[
            "disconnect-after-idle-timeout",
            "soon",
            "SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT",
        ],
    );
    let msg = load_err(BASE, &[], &["--interruption-grace-period", "-1"]);
    assert_mentions(&msg, &["interruption-grace-period", "-1", "negative"]);
    let msg = load_err(&format!("{BASE}interruption-grace-period: 1.5\n"), &[], &[]);
    assert_mentions(&msg, &["interruption-grace-period", "1.5"]);
}

#[test]
fn bad_upload_job_logs_lists_allowed_values() {
    let msg = load_err(BASE, &[], &["--upload-job-logs", "sometimes"]);
    assert_mentions(
        &msg,
        &[
            "upload-job-logs",
            "sometimes",
            "never",
            "always",
            "when-trimmed",
        ],
    );
}

#[test]
fn name_length_rule_and_url_exemption() {
    let msg = load_err(BASE, &[], &["--name", "short"]);
    assert_mentions(&msg, &["'short'", "8", "80", "has 5"]);
    let long = "n".repeat(81);
    let msg = load_err(BASE, &[], &["--name", &long]);
    assert_mentions(&msg, &[long.as_str(), "has 81"]);
    let url = format!("https://ci.example.com/agents/{}", "x".repeat(100));
    assert_eq!(load_ok(BASE, &[], &["--name", &url]).name, url);
}

#[test]
fn name_from_env_reads_the_named_variable() {
    let env = [("MY_HOST_NAME", "builder-0042")];
    let c = load_ok(BASE, &env, &["--name-from-env", "MY_HOST_NAME"]);
    assert_eq!(c.name, "builder-0042");
    assert_eq!(c.name_from_env, "MY_HOST_NAME");
    // `name` wins over `name-from-env`.
    let c = load_ok(
        BASE,
        &env,
        &["--name-from-env", "MY_HOST_NAME", "--name", "explicit-name"],
    );
    assert_eq!(c.name, "explicit-name");
    let msg = load_err(BASE, &[], &["--name-from-env", "UNSET_VAR"]);
    assert_mentions(&msg, &["UNSET_VAR", "name-from-env", "has 0"]);
}

#[test]
fn random_name_without_one() {
    let a = load_ok(BASE, &[], &[]).name;
    let b = load_ok(BASE, &[], &[]).name;
    assert_eq!(a.len(), 20);
    assert_ne!(a, b);
}

#[test]
fn env_var_entry_must_have_equals_and_a_name() {
    let msg = load_err(BASE, &[], &["--env-vars", "A=1,JUSTANAME"]);
    assert_mentions(&msg, &["env-vars", "JUSTANAME", "NAME=VALUE"]);
    let msg = load_err(BASE, &[], &["--env-vars", "A=1,=hidden-value"]);
    assert_mentions(&msg, &["env-vars", "#2", "empty name"]);
    assert!(!msg.contains("hidden-value"), "value leaked: {msg}");
}

#[test]
fn files_entry_must_be_host_colon_dest() {
    for bad in ["/only/host", "/a:/b:/c", ":/dest", "/host:"] {
        let msg = load_err(BASE, &[], &["--files", bad]);
        assert_mentions(&msg, &["'files'", bad, "host-path:destination"]);
    }
}

#[test]
fn endpoint_and_token_are_required() {
    let msg = load_err("token: s3cr3t-T0KEN-value\n", &[], &[]);
    assert_mentions(&msg, &["endpoint", "SEMAPHORE_AGENT_ENDPOINT"]);
    let msg = load_err("endpoint: e.example.com\n", &[], &[]);
    assert_mentions(&msg, &["token", "SEMAPHORE_AGENT_TOKEN"]);
    let msg = load_err("endpoint: e.example.com\ntoken: ''\n", &[], &[]);
    assert_mentions(&msg, &["token"]);
}

/// Issue 26: a scheme in the endpoint either agrees with `no-https` and
/// is honoured, or the error names the flag to use.
#[test]
fn an_endpoint_scheme_agrees_with_no_https_or_is_refused() {
    let tok = "token: t\n";
    let ok = |endpoint: &str, flags: &[&str]| {
        let c = load_ok(&format!("endpoint: {endpoint}\n{tok}"), &[], flags);
        (c.endpoint, c.no_https)
    };
    assert_eq!(
        ok("https://e.example.com", &[]),
        ("e.example.com".into(), false)
    );
    assert_eq!(
        ok("HTTPS://e.example.com/", &[]),
        ("e.example.com".into(), false)
    );
    assert_eq!(
        ok("http://127.0.0.1:8000", &["--no-https"]),
        ("127.0.0.1:8000".into(), true)
    );
    assert_eq!(
        ok("e.example.com:443", &[]),
        ("e.example.com:443".into(), false)
    );
    let msg = load_err(&format!("endpoint: http://e.example.com\n{tok}"), &[], &[]);
    assert_mentions(
        &msg,
        &[
            "endpoint",
            "http://e.example.com",
            "--no-https",
            "config.yaml",
        ],
    );
    let msg = load_err(
        &format!("endpoint: https://e.example.com\n{tok}"),
        &[],
        &["--no-https"],
    );
    assert_mentions(&msg, &["https://e.example.com", "--no-https"]);
    let msg = load_err(&format!("endpoint: ftp://e.example.com\n{tok}"), &[], &[]);
    assert_mentions(&msg, &["ftp://e.example.com", "host"]);
    let msg = load_err(&format!("endpoint: e.example.com/api/v1\n{tok}"), &[], &[]);
    assert_mentions(&msg, &["e.example.com/api/v1", "path"]);
}

#[test]
fn non_bool_value_for_bool_key() {
    let msg = load_err(&format!("{BASE}no-https: yes please\n"), &[], &[]);
    assert_mentions(&msg, &["no-https", "yes please", "config.yaml"]);
    let env = [("SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB", "maybe")];
    let msg = load_err(BASE, &env, &[]);
    assert_mentions(
        &msg,
        &[
            "disconnect-after-job",
            "maybe",
            "SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB",
        ],
    );
    let msg = load_err(&format!("{BASE}source-pre-job-hook: 2\n"), &[], &[]);
    assert_mentions(&msg, &["source-pre-job-hook", "'2'"]);
}

#[test]
fn list_for_single_value_key_is_rejected_without_echoing_it() {
    let msg = load_err(
        "endpoint: e.example.com\ntoken: [s3cr3t-T0KEN-value]\n",
        &[],
        &[],
    );
    assert_mentions(&msg, &["'token'", "not a list"]);
}

// ---- secrets ----------------------------------------------------------

#[test]
fn summary_redacts_token_and_env_values() {
    let c = load_ok(
        BASE,
        &[],
        &[
            "--env-vars",
            "API_KEY=very-secret-value",
            "--name",
            "agent-0001",
        ],
    );
    let summary = c.redacted_summary();
    assert!(!summary.contains(TOKEN), "{summary}");
    assert!(!summary.contains("very-secret-value"), "{summary}");
    assert_mentions(
        &summary,
        &[
            "token: [REDACTED]",
            "env-vars: API_KEY=[REDACTED]",
            "endpoint: org.semaphoreci.com",
            "name: agent-0001",
            "upload-job-logs: never",
            "interruption-grace-period: 0",
        ],
    );
    // Every key of the Config shape is listed.
    for &key in Key::ALL.iter().filter(|k| k.is_supported()) {
        assert!(
            summary.contains(&format!("\n{}: ", key.name()))
                || summary.starts_with(&format!("{}: ", key.name())),
            "{} missing from summary",
            key.name()
        );
    }
    let debug = format!("{c:?}");
    assert!(!debug.contains(TOKEN) && !debug.contains("very-secret-value"));
}

#[test]
fn load_start_config_reads_the_file() {
    let dir = tempfile::tempdir();
    let Ok(dir) = dir else { panic!("tempdir") };
    let path = dir.path().join("config.yaml");
    assert!(std::fs::write(&path, GO_AGENT_CONFIG).is_ok());
    let Some(path_str) = path.to_str() else {
        panic!("non-UTF-8 temp path")
    };
    let args = start_args(&["--config-file", path_str, "--no-https"]);
    let env = env_of(&[("SEMAPHORE_AGENT_ENDPOINT", "env.example.com")]);
    match load_start_config(&args, &env) {
        Ok(c) => {
            assert_eq!(c.endpoint, "env.example.com");
            assert_eq!(c.token, TOKEN);
            assert!(c.no_https);
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn run_config_from_flags() {
    let argv: Vec<String> = [
        "run",
        "job.yaml",
        "--env-vars",
        "A=1,B=2",
        "--post-job-hook-path",
        "/post.sh",
        "--fail-on-pre-job-hook-error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Ok(Cli {
        cmd: Command::Run(args),
    }) = Cli::parse("semaphore-agent", &argv)
    else {
        panic!("run args did not parse")
    };
    match load_run_config(&args) {
        Ok(r) => {
            assert_eq!(r.job_file, PathBuf::from("job.yaml"));
            assert_eq!(r.env_vars, pairs(&[("A", "1"), ("B", "2")]));
            assert_eq!(r.post_job_hook_path, Some(PathBuf::from("/post.sh")));
            assert_eq!(r.pre_job_hook_path, None);
            assert!(r.fail_on_pre_job_hook_error && !r.source_pre_job_hook && !r.json);
            assert!(!format!("{r:?}").contains("A=1"));
        }
        Err(e) => panic!("{e}"),
    }
    let bad = RunArgs {
        env_vars: vec!["NOPE".into()],
        ..RunArgs::default()
    };
    let msg = load_run_config(&bad).err().map(|e| e.to_string());
    assert_mentions(&msg.unwrap_or_default(), &["NOPE", "env-vars"]);
}

#[test]
fn env_var_names_follow_upper_snake() {
    assert_eq!(
        Key::DisconnectAfterIdleTimeout.env_var(),
        "SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT"
    );
    assert_eq!(Key::from_name("ENV-VARS"), Some(Key::EnvVars));
    assert_eq!(Key::from_name("config-file"), None);
}

#[test]
fn mutated_config_files_never_panic() {
    let seeds = [
        "endpoint: \"org.semaphoreci.com\"\ntoken: \"abc\"\nno-https: false\nshutdown-hook-path: \"\"\n\
         disconnect-after-job: false\ndisconnect-after-idle-timeout: 0\nenv-vars: [A=1, B=2]\n\
         files: [\"/tmp/a:/tmp/b\"]\nfail-on-missing-files: false\nupload-job-logs: never\n\
         name: ab-cd\nname-from-env: \"\"\ninterruption-grace-period: 0\n",
        "endpoint: &e x\ntoken: *e\nenv-vars:\n  - A=1\n  - {B: 2}\n",
        "[1, 2]",
        "",
    ];
    let path = Path::new("fuzz.yaml");
    crate::fuzz::run(&seeds, 3000, |text| {
        if let Ok(raw) = RawConfig::from_yaml(text, path) {
            if let Ok(config) = Config::validate(&raw, &no_env) {
                let _ = config.redacted_summary();
            }
        }
    });
}

// ---- the key table ----------------------------------------------------

/// A value of the right shape for `key`, distinct per key.
fn sample_value(key: Key) -> RawValue {
    match key.kind() {
        Kind::Str => RawValue::Scalar(format!("value-of-{}", key.name())),
        Kind::Int => RawValue::Scalar("17".into()),
        Kind::Bool => RawValue::Scalar("true".into()),
        Kind::List => RawValue::List(vec![format!("{}=1", key.field()), "B=2".into()]),
    }
}

/// Every row of the key table is a flag, an environment variable and a
/// YAML key, read as the same raw value with the right origin: a key added
/// to the table is covered here without touching this test.
#[test]
fn every_table_key_is_read_from_flag_env_and_file() {
    let help = Cli::parse("semaphore-agent", &["start".into(), "--help".into()])
        .err()
        .map(|e| e.output)
        .unwrap_or_default();
    let file_path = Path::new("/etc/agent/config.yaml");
    for &key in Key::ALL {
        let expected = sample_value(key);
        let text = match &expected {
            RawValue::Scalar(s) => s.clone(),
            RawValue::List(items) => items.join(","),
        };

        let flag = format!("--{}", key.name());
        assert!(help.contains(&flag), "{flag} missing from start --help");
        let args = match key.kind() {
            Kind::Bool => start_args(&[&flag]),
            _ => start_args(&[&flag, &text]),
        };
        let from_flag = RawConfig::from_start_args(&args);
        assert!(
            from_flag.get(key)
                == Some(&RawSetting {
                    value: expected.clone(),
                    origin: Origin::Flag
                }),
            "{key} not read from {flag}"
        );

        let var = key.env_var();
        assert_eq!(
            var,
            format!("SEMAPHORE_AGENT_{}", key.field().to_ascii_uppercase())
        );
        let env = env_of(&[(var.as_str(), text.as_str())]);
        let from_env = RawConfig::from_env(&env);
        assert!(
            from_env.get(key)
                == Some(&RawSetting {
                    value: expected.clone(),
                    origin: Origin::Env(var.clone())
                }),
            "{key} not read from {var}"
        );

        let from_file = RawConfig::from_yaml(&format!("{}: \"{text}\"\n", key.name()), file_path);
        let from_file = match from_file {
            Ok(raw) => raw,
            Err(e) => panic!("{key} in YAML: {e}"),
        };
        assert!(
            from_file.get(key)
                == Some(&RawSetting {
                    value: expected.clone(),
                    origin: Origin::File(file_path.to_path_buf())
                }),
            "{key} not read from the YAML file"
        );

        // No other key picks the value up.
        for raw in [&from_flag, &from_env, &from_file] {
            for &other in Key::ALL.iter().filter(|&&k| k != key) {
                assert!(raw.get(other).is_none(), "{key} also set {other}");
            }
        }
    }
}

/// Each switch of the table can be turned off with `--x=false` over the
/// environment, which needs the pre-pass to know it from the table.
#[test]
fn every_table_switch_takes_an_explicit_false() {
    for &key in Key::ALL.iter().filter(|k| k.kind() == Kind::Bool) {
        let flag = format!("--{}=false", key.name());
        let raw = RawConfig::from_env(&env_of(&[(key.env_var().as_str(), "true")]))
            .merge(RawConfig::from_start_args(&start_args(&[&flag])));
        assert!(
            raw.get(key)
                == Some(&RawSetting {
                    value: RawValue::Scalar("false".into()),
                    origin: Origin::Flag
                }),
            "{flag}"
        );
    }
}

/// A key's table default is valid for its kind and is what an unset key
/// validates to.
#[test]
fn table_defaults_are_valid_and_used() {
    for &key in Key::ALL {
        let default = key.default_text();
        match key.kind() {
            Kind::Bool => assert!(crate::cli::parse_bool(default).is_some(), "{key}"),
            Kind::Int => assert!(default.parse::<u64>().is_ok(), "{key}"),
            Kind::Str | Kind::List => {}
        }
    }
    let c = load_ok(BASE, &[], &[]);
    assert_eq!(c.upload_job_logs, UploadJobLogs::Never);
    assert_eq!(c.interruption_grace_period, 0);
    assert!(!c.no_https);
    // The warning for an ignored key compares with the table default.
    assert!(load_ok(
        BASE,
        &[("SEMAPHORE_AGENT_KUBERNETES_POD_START_TIMEOUT", "300")],
        &[]
    )
    .warnings
    .is_empty());
}

/// A secret key's value does not reach the summary nor `{:?}` of the flags,
/// whatever the key: redaction comes from the table.
#[test]
fn secret_keys_from_the_table_are_redacted_everywhere() {
    for &key in Key::ALL.iter().filter(|k| k.secrecy() != Secrecy::Public) {
        let flag = format!("--{}", key.name());
        let args = start_args(&[&flag, "K=hidden-value-1"]);
        let debug = format!("{args:?}");
        assert!(!debug.contains("hidden-value-1"), "{debug}");
    }
    let c = load_ok(
        BASE,
        &[("SEMAPHORE_AGENT_ENV_VARS", "K=hidden-value-2")],
        &[],
    );
    assert!(!c.redacted_summary().contains("hidden-value-2"));
    assert!(!c.redacted_summary().contains(TOKEN));
}

// ---- the token on the command line --------------------------------------

#[test]
fn a_token_flag_warns_and_points_to_the_env_var_without_showing_it() {
    let c = load_ok("endpoint: e.example.com\n", &[], &["--token", TOKEN]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_mentions(
        &c.warnings[0],
        &["--token", "SEMAPHORE_AGENT_TOKEN", "config-file"],
    );
    assert!(!c.warnings[0].contains(TOKEN), "{}", c.warnings[0]);
    let env = [("SEMAPHORE_AGENT_TOKEN", TOKEN)];
    let c = load_ok("endpoint: e.example.com\n", &env, &[]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

// ---- redact-env-vars ------------------------------------------------------

#[test]
fn redact_env_vars_defaults_to_the_buildkite_like_patterns_and_can_be_emptied() {
    let c = load_ok(BASE, &[], &[]);
    assert_eq!(c.redact_env_vars, crate::mask::DEFAULT_PATTERNS);
    let c = load_ok(&format!("{BASE}redact-env-vars: []\n"), &[], &[]);
    assert!(c.redact_env_vars.is_empty(), "{:?}", c.redact_env_vars);
    let env = [("SEMAPHORE_AGENT_REDACT_ENV_VARS", "MY_*,OTHER")];
    let c = load_ok(&format!("{BASE}redact-env-vars: [A]\n"), &env, &[]);
    assert_eq!(c.redact_env_vars, ["MY_*", "OTHER"]);
    let c = load_ok(BASE, &env, &["--redact-env-vars", ""]);
    assert!(c.redact_env_vars.is_empty(), "{:?}", c.redact_env_vars);
}

#[test]
fn health_address_and_log_format_are_checked() {
    let env = env_of(&[
        ("SEMAPHORE_AGENT_ENDPOINT", "e.example.com"),
        ("SEMAPHORE_AGENT_TOKEN", "t"),
    ]);
    match load_start_config(&start_args(&["--health-address", "127.0.0.1:9090"]), &env) {
        Ok(c) => {
            assert_eq!(c.health_address.as_deref(), Some("127.0.0.1:9090"));
            assert_eq!(c.log_format, LogFormat::Text);
        }
        Err(e) => panic!("{e}"),
    }
    match load_start_config(&start_args(&["--log-format", "JSON"]), &env) {
        Ok(c) => {
            assert_eq!(c.health_address, None);
            assert_eq!(c.log_format, LogFormat::Json);
        }
        Err(e) => panic!("{e}"),
    }
    for bad in ["9090", "localhost:", ":9090", "h:0", "h:70000", "h:x"] {
        match load_start_config(&start_args(&["--health-address", bad]), &env) {
            Ok(_) => panic!("{bad} accepted"),
            Err(e) => assert!(e.to_string().contains(&format!("'{bad}'")), "{e}"),
        }
    }
    match load_start_config(&start_args(&["--log-format", "xml"]), &env) {
        Ok(_) => panic!("xml accepted"),
        Err(e) => assert!(e.to_string().contains("'xml'") && e.to_string().contains("json")),
    }
}
