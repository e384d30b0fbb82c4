//! The raw configuration layer: every setting as text, exactly as one source
//! gave it, together with where it came from.
//!
//! Each source (YAML file, `SEMAPHORE_AGENT_*` environment, command-line
//! flags) becomes one `RawConfig`; `RawConfig::merge` stacks them. This layer
//! only reshapes input; it must not judge values (is this a bool? a valid
//! name?) — that is `Config::validate`'s job, so a value is checked the same
//! way whichever source it came from. The one exception is the file's keys:
//! an unknown key is rejected here, because only here do we still see it.
//! Which keys exist, their environment names and their flags all come from
//! the one table in `crate::keys`; nothing here lists keys by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::ConfigError;
use crate::cli::{parse_bool, split_csv, FlagValue, RunArgs, StartArgs};
use crate::keys::{Key, Kind};

/// One source's settings; a key is absent where the source says nothing.
#[derive(Clone, Default)]
pub struct RawConfig {
    settings: BTreeMap<Key, RawSetting>,
}

/// The Go agent accepts `config-file` inside the file itself (and ignores
/// it), so a file that has it must keep loading.
const IGNORED_FILE_KEYS: &[&str] = &["config-file"];

/// Whether `setting` is what the Go agent would use with `key` unset (its
/// table default); used to warn only about unsupported keys that actually
/// ask for something.
pub(crate) fn is_default(key: Key, setting: &RawSetting) -> bool {
    let default = key.default_text();
    match (&setting.value, key.kind()) {
        (RawValue::List(items), _) => items.is_empty(),
        (RawValue::Scalar(s), Kind::Bool) => parse_bool(s) == parse_bool(default),
        (RawValue::Scalar(s), Kind::Int) => s.trim() == default,
        (RawValue::Scalar(s), _) => s == default,
    }
}

/// A value as a source gave it. Booleans and numbers from YAML are kept as
/// their text so every source is validated by the same code.
#[derive(Clone, PartialEq, Eq)]
pub enum RawValue {
    Scalar(String),
    List(Vec<String>),
}

/// Where a setting came from, so an error can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "in config file {}", path.display()),
            Origin::Env(var) => write!(f, "from environment variable {var}"),
            Origin::Flag => f.write_str("from the command line"),
        }
    }
}

/// One key's value from one source. Deliberately not `Debug`: it may hold
/// the token.
#[derive(Clone, PartialEq, Eq)]
pub struct RawSetting {
    pub value: RawValue,
    pub origin: Origin,
}

/// Splits a list given as one string in the environment or the file. The Go
/// agent (viper) splits such strings on whitespace; we also split on commas
/// so `A=1,B=2` works. Values containing spaces therefore cannot be given
/// this way (nor could they in Go); use a YAML list or repeated flags.
pub fn split_list_string(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

impl RawConfig {
    /// Stacks `over` on top of `self`: every key `over` sets replaces ours.
    /// Lists are replaced, not appended, as in the Go agent.
    pub fn merge(mut self, over: RawConfig) -> RawConfig {
        self.settings.extend(over.settings);
        self
    }

    /// What this source says about `key`.
    pub fn get(&self, key: Key) -> Option<&RawSetting> {
        self.settings.get(&key)
    }

    /// Sets `key` (replacing what this source said before).
    pub fn set(&mut self, key: Key, setting: RawSetting) {
        self.settings.insert(key, setting);
    }

    /// Reads and parses a YAML config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        RawConfig::from_yaml(&text, path)
    }

    /// Parses the text of a YAML config file; `path` is only for messages.
    /// The document must be a mapping (or empty); every key must be known.
    pub fn from_yaml(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::ParseFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mapping = match doc {
            Value::Null => return Ok(RawConfig::default()),
            Value::Mapping(m) => m,
            other => {
                return Err(ConfigError::FileNotAMapping {
                    path: path.to_path_buf(),
                    found: yaml_kind(&other),
                })
            }
        };
        let mut raw = RawConfig::default();
        for (k, v) in mapping {
            let name = match k {
                Value::String(s) => s,
                other => scalar_text(&other).unwrap_or_else(|| yaml_kind(&other).to_string()),
            };
            let Some(key) = Key::from_name(&name) else {
                if IGNORED_FILE_KEYS.contains(&name.to_ascii_lowercase().as_str()) {
                    continue;
                }
                return Err(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    key: name,
                });
            };
            let origin = Origin::File(path.to_path_buf());
            let value = match v {
                // `key:` with nothing after it means "not set", as in Go.
                Value::Null => continue,
                Value::Sequence(items) => {
                    let mut list = Vec::with_capacity(items.len());
                    for item in &items {
                        match scalar_text(item) {
                            Some(s) => list.push(s),
                            None => {
                                return Err(ConfigError::InvalidFileValue {
                                    path: path.to_path_buf(),
                                    key: key.name(),
                                    found: format!("a list containing {}", yaml_kind(item)),
                                })
                            }
                        }
                    }
                    RawValue::List(list)
                }
                other => match scalar_text(&other) {
                    Some(s) if key.kind() == Kind::List => RawValue::List(split_list_string(&s)),
                    Some(s) => RawValue::Scalar(s),
                    None => {
                        return Err(ConfigError::InvalidFileValue {
                            path: path.to_path_buf(),
                            key: key.name(),
                            found: yaml_kind(&other).to_string(),
                        })
                    }
                },
            };
            raw.set(key, RawSetting { value, origin });
        }
        Ok(raw)
    }

    /// Reads `SEMAPHORE_AGENT_<KEY>` for every key through `env`. An empty
    /// variable counts as unset, as with viper's defaults.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> RawConfig {
        let mut raw = RawConfig::default();
        for &key in Key::ALL {
            let var = key.env_var();
            let Some(text) = env(&var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let value = match key.kind() {
                Kind::List => RawValue::List(split_list_string(&text)),
                _ => RawValue::Scalar(text),
            };
            raw.set(
                key,
                RawSetting {
                    value,
                    origin: Origin::Env(var),
                },
            );
        }
        raw
    }

    /// The settings given as `start` flags.
    pub fn from_start_args(args: &StartArgs) -> RawConfig {
        let mut raw = RawConfig::default();
        for (key, value) in args.flag_values() {
            match value {
                FlagValue::Text(Some(v)) => raw.set_flag(key, RawValue::Scalar(v.clone())),
                FlagValue::Text(None) => {}
                FlagValue::Switch(on) => raw.set_switches(&[(key, on)], &args.switch_off),
                FlagValue::List(values) => raw.set_flag_list(key, values),
            }
        }
        raw
    }

    /// The settings given as `run` flags (the job-related subset).
    pub fn from_run_args(args: &RunArgs) -> RawConfig {
        let mut raw = RawConfig::default();
        if let Some(v) = &args.pre_job_hook_path {
            raw.set_flag(Key::PreJobHookPath, RawValue::Scalar(v.clone()));
        }
        if let Some(v) = &args.post_job_hook_path {
            raw.set_flag(Key::PostJobHookPath, RawValue::Scalar(v.clone()));
        }
        let switches = [
            (Key::FailOnPreJobHookError, args.fail_on_pre_job_hook_error),
            (Key::SourcePreJobHook, args.source_pre_job_hook),
        ];
        raw.set_switches(&switches, &args.switch_off);
        raw.set_flag_list(Key::EnvVars, &args.env_vars);
        raw
    }

    fn set_flag(&mut self, key: Key, value: RawValue) {
        self.set(
            key,
            RawSetting {
                value,
                origin: Origin::Flag,
            },
        );
    }

    /// A switch that was given sets true; one turned off with `--x=false`
    /// sets false (and wins, since we cannot know which came last); one not
    /// given leaves the key to the environment and the file.
    fn set_switches(&mut self, switches: &[(Key, bool)], switch_off: &[String]) {
        for &(key, on) in switches {
            let off = switch_off.iter().any(|s| s == key.name());
            if off || on {
                self.set_flag(key, RawValue::Scalar((!off).to_string()));
            }
        }
    }

    /// A list flag given at least once replaces the whole list, even if its
    /// values are empty (`--env-vars ""` clears a list from the file).
    fn set_flag_list(&mut self, key: Key, values: &[String]) {
        if !values.is_empty() {
            let items = values.iter().flat_map(|v| split_csv(v)).collect();
            self.set_flag(key, RawValue::List(items));
        }
    }
}

/// The text of a YAML scalar, as viper's `GetString` would render it.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What a YAML value is, for error messages ("must be a list, not a
/// string"); the pipeline checker says it the same way.
pub fn yaml_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
