//! Command-line surface: the argh structs for `start`, `run` and `version`,
//! and a small pre-pass that accepts the Go agent's `--flag=value` forms.
//!
//! `start`'s options are generated from the key table in `crate::keys` (one
//! row per key gives the field, its argh kind and its help line); only
//! `--config-file` and the hidden `--switch-off` are written out here.
//!
//! This module only describes and parses arguments; it must not interpret
//! them, nor exit the process (`main` decides every exit code). Merging flags with the environment and the config file, and every
//! check on a value, belongs to `config`, so that a value is validated the
//! same way whichever source it came from.
//!
//! Differences from the Go agent's pflag parsing, all documented here:
//! - `--flag=value` is accepted by rewriting it to `--flag value` before argh
//!   sees it (argh itself only knows the space form).
//! - A boolean flag is a switch (`--no-https`); `--no-https=true` and
//!   `--no-https=false` are also accepted, and the latter really sets false
//!   (it overrides the environment and the file, as in Go).
//! - Giving a single-valued flag twice is an error here; pflag keeps the last.
//! - List flags (`--env-vars`, `--files`, ...) may be repeated and each value
//!   may hold several comma-separated items, with `"..."` quoting for an item
//!   that contains a comma, as pflag's string slices do.

use std::fmt;
use std::path::PathBuf;

use argh::FromArgs;

use crate::keys::Key;

/// Semaphore self-hosted agent.
#[derive(FromArgs, Debug, PartialEq)]
pub struct Cli {
    #[argh(subcommand)]
    pub cmd: Command,
}

/// The subcommands.
// Parsed once and kept on `main`'s stack, so the size of `StartArgs` does
// not matter; argh's derive cannot look through a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum Command {
    Start(StartArgs),
    Run(RunArgs),
    Version(VersionArgs),
    Debug(DebugArgs),
}

/// Makes `StartArgs` (the argh struct of `start`), its redacted `Debug`
/// and [`StartArgs::flag_values`] from the key table in `crate::keys`: one
/// field per key, typed by the key's kind (`Str` and `Int`:
/// `Option<String>`, `Bool`: a switch, `List`: a repeatable option), with
/// the key's help line as its doc. The rows are munched one at a time
/// because a macro cannot expand to a single struct field.
macro_rules! define_start_args {
    (@fields [$($done:tt)*] $field:ident Str $help:tt; $($rest:tt)*) => {
        define_start_args!(@fields [$($done)* #[doc = $help] #[argh(option)] pub $field: Option<String>,] $($rest)*);
    };
    (@fields [$($done:tt)*] $field:ident Int $help:tt; $($rest:tt)*) => {
        define_start_args!(@fields [$($done)* #[doc = $help] #[argh(option)] pub $field: Option<String>,] $($rest)*);
    };
    (@fields [$($done:tt)*] $field:ident Bool $help:tt; $($rest:tt)*) => {
        define_start_args!(@fields [$($done)* #[doc = $help] #[argh(switch)] pub $field: bool,] $($rest)*);
    };
    (@fields [$($done:tt)*] $field:ident List $help:tt; $($rest:tt)*) => {
        define_start_args!(@fields [$($done)* #[doc = $help] #[argh(option)] pub $field: Vec<String>,] $($rest)*);
    };
    (@fields [$($done:tt)*]) => {
        /// Register with Semaphore and run the jobs it sends.
        #[derive(FromArgs, PartialEq, Default)]
        #[argh(
            subcommand,
            name = "start",
            note = "Every option can also be set in the --config-file YAML (the key is the \
                    flag name) or in the environment as SEMAPHORE_AGENT_<NAME_IN_UPPER_SNAKE>. \
                    Precedence: flag > environment > file. --flag=value also works."
        )]
        pub struct StartArgs {
            /// YAML config file whose keys are the flag names
            #[argh(option)]
            pub config_file: Option<PathBuf>,
            $($done)*
            /// switches explicitly turned off with `--switch=false` (set by the
            /// `--flag=value` pre-pass)
            #[argh(option, long = "switch-off", hidden_help)]
            pub switch_off: Vec<String>,
        }
    };
    ($($variant:ident, $field:ident, $name:tt, $kind:ident, $supported:tt, $secrecy:ident,
       $default:tt, $help:tt;)*) => {
        define_start_args!(@fields [] $($field $kind $help;)*);

        impl StartArgs {
            /// Every key's flag as given (or not) on the command line, in
            /// table order.
            pub fn flag_values(&self) -> Vec<(Key, FlagValue<'_>)> {
                vec![$((Key::$variant, FlagValue::from(&self.$field)),)*]
            }
        }

        /// Redacted as the key table says: the token and env var values
        /// must not reach a log through `{:?}`.
        impl fmt::Debug for StartArgs {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("StartArgs")
                    .field("config_file", &self.config_file)
                    $(.field(stringify!($field), &Redacted(Key::$variant, FlagValue::from(&self.$field))))*
                    .field("switch_off", &self.switch_off)
                    .finish()
            }
        }
    };
}

crate::keys::config_keys!(define_start_args);

/// One key's flag in `StartArgs`, whatever its kind.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FlagValue<'a> {
    /// A `Str` or `Int` option; `None` if not given.
    Text(&'a Option<String>),
    /// A switch: true if given (`--x=false` shows in `switch_off` instead).
    Switch(bool),
    /// A repeatable option: every value given, each maybe comma-separated.
    List(&'a [String]),
}

impl<'a> From<&'a Option<String>> for FlagValue<'a> {
    fn from(v: &'a Option<String>) -> Self {
        FlagValue::Text(v)
    }
}

impl<'a> From<&'a bool> for FlagValue<'a> {
    fn from(v: &'a bool) -> Self {
        FlagValue::Switch(*v)
    }
}

impl<'a> From<&'a Vec<String>> for FlagValue<'a> {
    fn from(v: &'a Vec<String>) -> Self {
        FlagValue::List(v)
    }
}

/// A flag's value for `{:?}`, redacted as its key says.
struct Redacted<'a>(Key, FlagValue<'a>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Redacted(key, value) = *self;
        match value {
            FlagValue::Text(v) => v.as_ref().map(|v| key.shown(v)).fmt(f),
            FlagValue::Switch(on) => on.fmt(f),
            FlagValue::List(values) => values
                .iter()
                .flat_map(|v| split_csv(v))
                .map(|item| key.shown(&item))
                .collect::<Vec<_>>()
                .fmt(f),
        }
    }
}

/// Run one job (a job request file) or a whole Semaphore pipeline (a file
/// with `version` and `blocks`) locally, without a control plane.
#[derive(FromArgs, PartialEq, Default)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// the job request file (YAML or JSON) or pipeline file
    #[argh(positional)]
    pub job_file: PathBuf,
    /// print the job's events as JSON lines instead of plain output
    #[argh(switch)]
    pub json: bool,
    /// NAME=VALUE exported in the job (repeatable, comma-separated)
    #[argh(option)]
    pub env_vars: Vec<String>,
    /// script run before the job
    #[argh(option)]
    pub pre_job_hook_path: Option<String>,
    /// script run after the job
    #[argh(option)]
    pub post_job_hook_path: Option<String>,
    /// fail the job if the pre-job hook fails
    #[argh(switch)]
    pub fail_on_pre_job_hook_error: bool,
    /// run the pre-job hook with `source` in the job shell instead of `bash`
    #[argh(switch)]
    pub source_pre_job_hook: bool,
    /// pipeline: print the jobs it would run (with --json: their job
    /// requests), run nothing
    #[argh(switch)]
    pub list: bool,
    /// pipeline: run this block (repeatable) and, unless --only, the
    /// blocks it depends on
    #[argh(option)]
    pub block: Vec<String>,
    /// pipeline: with --block, leave out the blocks it depends on
    #[argh(switch)]
    pub only: bool,
    /// pipeline: run only the job of this name (repeatable; a matrix or
    /// parallelism job's base name selects all of its jobs)
    #[argh(option)]
    pub job: Vec<String>,
    /// pipeline: how many jobs run at once (default: one per core)
    #[argh(option)]
    pub parallel: Option<String>,
    /// pipeline: secrets in the shape `sem get secret NAME -o yaml` prints
    #[argh(option)]
    pub secrets_file: Option<PathBuf>,
    /// pipeline: run even when a secret is not in the secrets file
    #[argh(switch)]
    pub allow_missing_secrets: bool,
    /// pipeline: NAME=VALUE given to every job as a parameter (repeatable)
    #[argh(option)]
    pub env: Vec<String>,
    /// pipeline: run blocks whose dependencies failed
    #[argh(switch)]
    pub keep_going: bool,
    /// pipeline: print every setup line of a job (exported variables,
    /// injected files) instead of one summary line
    #[argh(switch)]
    pub verbose: bool,
    /// pipeline: what `checkout` gives a job: `worktree` (the commit plus
    /// uncommitted changes, the default) or `head` (the commit only)
    #[argh(option)]
    pub checkout: Option<String>,
    /// pipeline: the default branch `change_in` compares with
    #[argh(option)]
    pub base: Option<String>,
    /// switches explicitly turned off with `--switch=false`
    #[argh(option, long = "switch-off", hidden_help)]
    pub switch_off: Vec<String>,
}

impl fmt::Debug for RunArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunArgs")
            .field("job_file", &self.job_file)
            .field("json", &self.json)
            .field(
                "env_vars",
                &Redacted(Key::EnvVars, FlagValue::List(&self.env_vars)),
            )
            .field("pre_job_hook_path", &self.pre_job_hook_path)
            .field("post_job_hook_path", &self.post_job_hook_path)
            .field(
                "fail_on_pre_job_hook_error",
                &self.fail_on_pre_job_hook_error,
            )
            .field("source_pre_job_hook", &self.source_pre_job_hook)
            .field("list", &self.list)
            .field("block", &self.block)
            .field("only", &self.only)
            .field("job", &self.job)
            .field("parallel", &self.parallel)
            .field("secrets_file", &self.secrets_file)
            .field("allow_missing_secrets", &self.allow_missing_secrets)
            .field("env", &Redacted(Key::EnvVars, FlagValue::List(&self.env)))
            .field("keep_going", &self.keep_going)
            .field("verbose", &self.verbose)
            .field("checkout", &self.checkout)
            .field("base", &self.base)
            .field("switch_off", &self.switch_off)
            .finish()
    }
}

/// Print the agent's version.
#[derive(FromArgs, Debug, PartialEq, Default)]
#[argh(subcommand, name = "version")]
pub struct VersionArgs {}

/// Open a shell inside a job that an agent of this user runs on this host
/// now: its environment, its directory, its container or pod.
#[derive(FromArgs, Debug, PartialEq, Default)]
#[argh(subcommand, name = "debug")]
pub struct DebugArgs {
    /// the job to attach to when several are running
    #[argh(option)]
    pub job: Option<String>,
    /// print the job's environment as `export` lines instead of attaching
    #[argh(switch)]
    pub print_env: bool,
}

/// The switches of `run` that are not `start` keys. With the table's
/// `Bool` keys, these are every switch the `--flag=value` pre-pass must
/// know, to turn `--x=false` into an override rather than into a value argh
/// would reject.
const RUN_ONLY_SWITCHES: &[&str] = &[
    "json",
    "list",
    "only",
    "allow-missing-secrets",
    "keep-going",
    "verbose",
];

/// The options of `run` (for pipelines) that are not `start` keys.
#[cfg(test)]
const RUN_ONLY_OPTIONS: &[&str] = &[
    "block",
    "job",
    "parallel",
    "secrets-file",
    "env",
    "checkout",
    "base",
];

fn is_switch(name: &str) -> bool {
    Key::is_switch(name) || RUN_ONLY_SWITCHES.contains(&name)
}

/// Parses Go's `strconv.ParseBool` spellings, which is what the Go agent
/// accepts for a boolean given as text.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Why the `--flag=value` pre-pass refused the arguments; the text is the
/// early exit's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// Switch `flag` was given `value`, which is not a boolean.
    BadSwitchValue { flag: String, value: String },
}

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgsError::BadSwitchValue { flag, value } => {
                write!(
                    f,
                    "invalid value '{value}' for {flag}: expected true or false"
                )
            }
        }
    }
}

impl std::error::Error for ArgsError {}

/// Rewrites pflag-style arguments into the form argh understands:
/// `--flag=value` becomes `--flag value`, `--switch=true` becomes `--switch`
/// and `--switch=false` becomes `--switch-off switch`. Arguments after `--`
/// are left alone. A switch given a value that is not a boolean is an error
/// naming the flag and the value.
pub fn normalize_args(args: &[String]) -> Result<Vec<String>, ArgsError> {
    let mut out = Vec::with_capacity(args.len() + 4);
    let mut options_ended = false;
    for arg in args {
        if options_ended || !arg.starts_with("--") {
            out.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_ended = true;
            out.push(arg.clone());
            continue;
        }
        let Some((flag, value)) = arg.split_once('=') else {
            out.push(arg.clone());
            continue;
        };
        let name = &flag[2..];
        if is_switch(name) {
            match parse_bool(value) {
                Some(true) => out.push(flag.to_string()),
                Some(false) => {
                    out.push("--switch-off".to_string());
                    out.push(name.to_string());
                }
                None => {
                    return Err(ArgsError::BadSwitchValue {
                        flag: flag.to_string(),
                        value: value.to_string(),
                    })
                }
            }
        } else {
            out.push(flag.to_string());
            out.push(value.to_string());
        }
    }
    Ok(out)
}

impl Cli {
    /// Parses `args` (without the program name) after the `--flag=value`
    /// pre-pass. `command` is the program name used in help and errors.
    pub fn parse(command: &str, args: &[String]) -> Result<Cli, argh::EarlyExit> {
        let args = normalize_args(args).map_err(|e| argh::EarlyExit {
            output: e.to_string(),
            status: Err(()),
        })?;
        let strs: Vec<&str> = args.iter().map(String::as_str).collect();
        <Cli as FromArgs>::from_args(&[command], &strs)
    }

    /// Parses the process arguments. `Err` is an early exit: `--help`
    /// (whose text goes to stdout) or a bad command line (a message for
    /// stderr); `main` decides the exit code of each.
    pub fn from_env() -> Result<Cli, CliExit> {
        let mut argv = std::env::args_os().map(|a| a.into_string());
        let program = match argv.next() {
            Some(Ok(p)) => p,
            _ => "semaphore-agent".to_string(),
        };
        let command = std::path::Path::new(&program)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("semaphore-agent")
            .to_string();
        let mut args = Vec::new();
        for arg in argv {
            match arg {
                Ok(a) => args.push(a),
                Err(bad) => {
                    return Err(CliExit::Invalid(format!(
                        "Invalid UTF-8 argument: {}",
                        bad.to_string_lossy()
                    )))
                }
            }
        }
        Cli::parse(&command, &args).map_err(|exit| match exit.status {
            Ok(()) => CliExit::Help(exit.output),
            Err(()) => CliExit::Invalid(format!(
                "{}\nRun {command} --help for more information.",
                exit.output
            )),
        })
    }
}

/// Why parsing the command line ended the program before it ran anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliExit {
    /// `--help` (or `help`) was asked for; the text is the help.
    Help(String),
    /// The command line is wrong; the message says how.
    Invalid(String),
}

/// Splits one list-flag value the way pflag's string slices do: on commas,
/// with `"..."` quoting (and `""` for a literal quote inside quotes). Empty
/// items are dropped so that a trailing comma is harmless.
pub fn split_csv(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    let mut in_quotes = false;
    let mut at_item_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    current.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                current.push(c);
            }
            continue;
        }
        match c {
            '"' if at_item_start => {
                in_quotes = true;
                at_item_start = false;
            }
            ',' => {
                if !current.is_empty() {
                    items.push(std::mem::take(&mut current));
                }
                at_item_start = true;
            }
            _ => {
                current.push(c);
                at_item_start = false;
            }
        }
    }
    if !current.is_empty() {
        items.push(current);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn parse(args: &[&str]) -> Result<Cli, argh::EarlyExit> {
        Cli::parse("semaphore-agent", &strings(args))
    }

    fn start(args: &[&str]) -> StartArgs {
        match parse(args) {
            Ok(Cli {
                cmd: Command::Start(s),
            }) => s,
            Ok(other) => panic!("not start: {other:?}"),
            Err(e) => panic!("parse failed: {}", e.output),
        }
    }

    #[test]
    fn start_takes_every_go_flag() {
        let s = start(&[
            "start",
            "--config-file",
            "/etc/agent.yaml",
            "--name",
            "agent-0001",
            "--name-from-env",
            "HOSTNAME",
            "--endpoint",
            "org.semaphoreci.com",
            "--token",
            "tok",
            "--no-https",
            "--shutdown-hook-path",
            "/s.sh",
            "--pre-job-hook-path",
            "/pre.sh",
            "--post-job-hook-path",
            "/post.sh",
            "--disconnect-after-job",
            "--job-id",
            "j1",
            "--disconnect-after-idle-timeout",
            "60",
            "--interruption-grace-period",
            "30",
            "--env-vars",
            "A=1,B=2",
            "--env-vars",
            "C=3",
            "--files",
            "/a:/b",
            "--fail-on-missing-files",
            "--upload-job-logs",
            "always",
            "--fail-on-pre-job-hook-error",
            "--source-pre-job-hook",
            "--kubernetes-executor",
            "--kubernetes-pod-spec",
            "spec",
            "--kubernetes-allowed-images",
            "x",
            "--kubernetes-pod-start-timeout",
            "10",
            "--kubernetes-labels",
            "a=b",
            "--kubernetes-default-image",
            "img",
        ]);
        assert_eq!(s.config_file, Some(PathBuf::from("/etc/agent.yaml")));
        assert_eq!(s.endpoint.as_deref(), Some("org.semaphoreci.com"));
        assert!(s.no_https && s.disconnect_after_job && s.fail_on_missing_files);
        assert!(s.fail_on_pre_job_hook_error && s.source_pre_job_hook);
        assert!(s.kubernetes_executor);
        assert_eq!(s.env_vars, strings(&["A=1,B=2", "C=3"]));
        assert_eq!(s.disconnect_after_idle_timeout.as_deref(), Some("60"));
        assert_eq!(s.kubernetes_default_image.as_deref(), Some("img"));
    }

    #[test]
    fn equals_forms_are_accepted() {
        let s = start(&[
            "start",
            "--endpoint=e.example.com",
            "--token=a=b",
            "--no-https=true",
            "--disconnect-after-job=false",
            "--env-vars=A=1",
        ]);
        assert_eq!(s.endpoint.as_deref(), Some("e.example.com"));
        // Only the first '=' separates the flag from its value.
        assert_eq!(s.token.as_deref(), Some("a=b"));
        assert!(s.no_https);
        assert!(!s.disconnect_after_job);
        assert_eq!(s.switch_off, strings(&["disconnect-after-job"]));
        assert_eq!(s.env_vars, strings(&["A=1"]));
    }

    #[test]
    fn switch_with_non_bool_value_is_an_error_naming_it() {
        let err = parse(&["start", "--no-https=maybe"])
            .err()
            .map(|e| e.output);
        let msg = err.unwrap_or_default();
        assert!(msg.contains("--no-https") && msg.contains("maybe"), "{msg}");
    }

    #[test]
    fn arguments_after_double_dash_are_untouched() {
        let out = normalize_args(&strings(&["run", "--", "--x=1"])).unwrap_or_default();
        assert_eq!(out, strings(&["run", "--", "--x=1"]));
    }

    #[test]
    fn run_and_version_parse() {
        match parse(&[
            "run",
            "job.yaml",
            "--json",
            "--env-vars",
            "A=1",
            "--pre-job-hook-path",
            "/pre.sh",
            "--source-pre-job-hook",
        ]) {
            Ok(Cli {
                cmd: Command::Run(r),
            }) => {
                assert_eq!(r.job_file, PathBuf::from("job.yaml"));
                assert!(r.json && r.source_pre_job_hook && !r.fail_on_pre_job_hook_error);
                assert_eq!(r.pre_job_hook_path.as_deref(), Some("/pre.sh"));
            }
            other => panic!("unexpected: {other:?}"),
        }
        assert!(matches!(
            parse(&["version"]),
            Ok(Cli {
                cmd: Command::Version(_)
            })
        ));
    }

    #[test]
    fn help_works_for_each_subcommand() {
        for args in [
            vec!["--help"],
            vec!["start", "--help"],
            vec!["run", "--help"],
            vec!["version", "--help"],
        ] {
            match parse(&args) {
                Err(exit) => {
                    assert_eq!(exit.status, Ok(()), "{args:?}");
                    assert!(exit.output.contains("Usage"), "{}", exit.output);
                }
                Ok(cli) => panic!("--help parsed as {cli:?}"),
            }
        }
        let help = parse(&["start", "--help"]).err().map(|e| e.output);
        let help = help.unwrap_or_default();
        assert!(help.contains("--disconnect-after-idle-timeout"));
        assert!(!help.contains("--switch-off"), "hidden option shown");
    }

    /// `run`'s struct is written by hand (its own order and help): every
    /// option it shares with `start` must be a key of the table with the
    /// same shape, so that `config` reads it the same way.
    #[test]
    fn run_options_agree_with_the_key_table() {
        let help = parse(&["run", "--help"]).err().map(|e| e.output);
        let help = help.unwrap_or_default();
        let usage = help.lines().next().unwrap_or_default();
        let mut checked = 0;
        for part in usage.split('[').skip(1) {
            let part = part.split(']').next().unwrap_or_default();
            let Some(flag) = part.strip_prefix("--").filter(|f| !f.is_empty()) else {
                continue;
            };
            let (name, switch) = match flag.split_once(' ') {
                Some((name, _)) => (name, false),
                None => (flag, true),
            };
            if RUN_ONLY_SWITCHES.contains(&name) || RUN_ONLY_OPTIONS.contains(&name) {
                continue;
            }
            let key = Key::from_name(name);
            assert!(key.is_some(), "run --{name} is not in the key table");
            assert_eq!(
                key.map(|k| k.kind() == crate::keys::Kind::Bool),
                Some(switch),
                "{name}"
            );
            if let Some(key) = key {
                assert_eq!(is_switch(key.name()), switch);
            }
            checked += 1;
        }
        assert_eq!(checked, 5, "{usage}");
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let err = parse(&["start", "--bogus"]).err();
        assert!(matches!(err, Some(e) if e.status.is_err() && e.output.contains("--bogus")));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let cli = parse(&["start", "--token", "tok-123", "--env-vars", "K=hidden,N=v2"]);
        let text = format!("{cli:?}");
        assert!(
            !text.contains("tok-123") && !text.contains("hidden"),
            "{text}"
        );
        assert!(text.contains("K=[REDACTED]"), "{text}");
        let run = parse(&["run", "j.yaml", "--env-vars", "K=hidden"]);
        assert!(!format!("{run:?}").contains("hidden"));
    }

    #[test]
    fn csv_splitting() {
        assert_eq!(split_csv("A=1,B=2"), strings(&["A=1", "B=2"]));
        assert_eq!(split_csv("A=1,"), strings(&["A=1"]));
        assert_eq!(split_csv(""), Vec::<String>::new());
        assert_eq!(split_csv("\"A=1,2\",B=3"), strings(&["A=1,2", "B=3"]));
        assert_eq!(split_csv("\"A=\"\"q\"\"\""), strings(&["A=\"q\""]));
        assert_eq!(split_csv("A=hello world"), strings(&["A=hello world"]));
    }

    #[test]
    fn go_bool_spellings() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        assert_eq!(parse_bool("yes"), None);
    }
}
