//! Image pull credentials of a compose job: which registry login a
//! credential asks for (`DOCKER_CREDENTIAL_TYPE`) and the exact `docker
//! login` command line the Go agent shows and runs for it.
//!
//! Owns the login command lines and the AWS CLI questions they need (`aws
//! --version`, the account id). It must not run the login itself or log
//! anything: the executor runs the line with only the credential's
//! variables, so no secret is ever in a command line or the agent log.
//! Where Go's line would put a password in `docker login`'s argv (`-p`,
//! visible to every local user in `ps`), the line run differs from the
//! line shown: it pipes the password to `--password-stdin` from a bash
//! builtin (`printf`), so no process ever has it in its argv.

use std::time::Duration;

use crate::request::ImagePullCredentials;
use crate::shell::host::{self, Capture, HostCommand, HostError};

/// How a credential logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    DockerHub,
    GenericDocker,
    Ecr,
    Gcr,
}

impl Strategy {
    /// The line logged before the login command.
    pub fn banner(self) -> &'static str {
        match self {
            Strategy::DockerHub => "Setting up credentials for DockerHub\n",
            Strategy::GenericDocker => "Setting up credentials for Docker\n",
            Strategy::Ecr => "Setting up credentials for ECR\n",
            Strategy::Gcr => "Setting up credentials for GCR\n",
        }
    }
}

/// Where the GCR login reads its key file from (the Go agent's fixed path).
pub const GCR_KEY_FILE: &str = "/tmp/gcr/keyfile.json";

/// Why no login command could be made; each message is what the job log
/// shows (never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialError {
    /// No `DOCKER_CREDENTIAL_TYPE` among the credential's variables.
    TypeNotSet,
    /// A `DOCKER_CREDENTIAL_TYPE` this agent does not know.
    UnknownType { value: String },
    /// A variable whose value is not base64.
    BadValue { name: String },
    /// Asking the AWS CLI failed (not installed, no version, no account).
    Aws { what: String },
}

impl std::fmt::Display for CredentialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialError::TypeNotSet => write!(f, "DOCKER_CREDENTIAL_TYPE not set"),
            CredentialError::UnknownType { value } => {
                write!(f, "unknown DOCKER_CREDENTIAL_TYPE: '{value}'")
            }
            CredentialError::BadValue { name } => write!(f, "error decoding '{name}'"),
            CredentialError::Aws { what } => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for CredentialError {}

/// The login strategy named by the credential's `DOCKER_CREDENTIAL_TYPE`.
pub fn strategy(credential: &ImagePullCredentials) -> Result<Strategy, CredentialError> {
    let Some(var) = credential
        .env_vars
        .iter()
        .find(|v| v.name == "DOCKER_CREDENTIAL_TYPE")
    else {
        return Err(CredentialError::TypeNotSet);
    };
    let value = var.decode().map_err(|_| CredentialError::BadValue {
        name: var.name.clone(),
    })?;
    match value.as_str() {
        "DockerHub" => Ok(Strategy::DockerHub),
        "GenericDocker" => Ok(Strategy::GenericDocker),
        "AWS_ECR" => Ok(Strategy::Ecr),
        "GCR" => Ok(Strategy::Gcr),
        _ => Err(CredentialError::UnknownType { value }),
    }
}

/// The credential's variables, decoded, for the login's environment.
pub fn env_vars(
    credential: &ImagePullCredentials,
) -> Result<Vec<(String, String)>, CredentialError> {
    credential
        .env_vars
        .iter()
        .map(|var| {
            var.decode()
                .map(|value| (var.name.clone(), value))
                .map_err(|_| CredentialError::BadValue {
                    name: var.name.clone(),
                })
        })
        .collect()
}

/// A login: the line the job log shows (Go's) and the bash line that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Go's command line, shown in the job log (variables, never values).
    pub shown: String,
    /// What runs: the same login, with every password on `docker login`'s
    /// stdin instead of its argv.
    pub run: String,
}

impl Login {
    fn same(line: String) -> Login {
        Login {
            shown: line.clone(),
            run: line,
        }
    }
}

/// The login for `strategy`. ECR asks the AWS CLI found on `path` (the
/// `PATH` the login runs with) for its version and, with CLI v2 and no
/// `AWS_ACCOUNT_ID`, for the account id. `key_file` is where the GCR key
/// was written (the job's private dir, or Go's [`GCR_KEY_FILE`]).
pub fn login_command(
    credential: &ImagePullCredentials,
    strategy: Strategy,
    path: &str,
    key_file: &str,
) -> Result<Login, CredentialError> {
    match strategy {
        Strategy::DockerHub => Ok(Login::same(
            "echo $DOCKERHUB_PASSWORD | docker login --username $DOCKERHUB_USERNAME --password-stdin"
                .to_string(),
        )),
        Strategy::GenericDocker => Ok(Login {
            shown: r#"docker login -u "$DOCKER_USERNAME" -p "$DOCKER_PASSWORD" $DOCKER_URL"#
                .to_string(),
            run: r#"printf '%s\n' "$DOCKER_PASSWORD" | docker login -u "$DOCKER_USERNAME" --password-stdin $DOCKER_URL"#
                .to_string(),
        }),
        Strategy::Gcr => Ok(Login {
            shown: format!(
                "cat {GCR_KEY_FILE} | docker login -u _json_key --password-stdin https://$GCR_HOSTNAME"
            ),
            run: format!(
                "docker login -u _json_key --password-stdin https://$GCR_HOSTNAME < {}",
                crate::shell::shell_quote(key_file)
            ),
        }),
        Strategy::Ecr => ecr_login_command(credential, path),
    }
}

/// AWS CLI v1's `aws ecr get-login` prints `docker login -u AWS -p <token>
/// <url>` lines, which Go runs as they are (the token in argv). Each line
/// is read instead, and its token piped to `--password-stdin`.
fn ecr_v1_login(get_login: String) -> Login {
    let run = format!(
        "set -o pipefail; {get_login} | while read -r _ _ _ user _ pass url; do \
         printf '%s\\n' \"$pass\" | docker login -u \"$user\" --password-stdin \"$url\" || exit 1; done"
    );
    Login {
        shown: format!("$({get_login})"),
        run,
    }
}

fn ecr_login_command(
    credential: &ImagePullCredentials,
    path: &str,
) -> Result<Login, CredentialError> {
    let vars = env_vars(credential)?;
    let account_id = vars
        .iter()
        .find(|(name, _)| name == "AWS_ACCOUNT_ID")
        .map(|(_, value)| value.clone());
    let version = aws(&vars, path, "aws --version 2>&1")?;
    if aws_major_version(&version).ok_or_else(|| CredentialError::Aws {
        what: format!("cannot read the AWS CLI version from '{}'", version.trim()),
    })? >= 2
    {
        let account_id = match account_id {
            Some(id) => id,
            None => aws(
                &vars,
                path,
                "aws sts get-caller-identity --query Account --output text",
            )?
            .trim_end_matches('\n')
            .to_string(),
        };
        return Ok(Login::same(format!(
            "aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin {account_id}.dkr.ecr.$AWS_REGION.amazonaws.com"
        )));
    }
    Ok(ecr_v1_login(match account_id {
        Some(id) => {
            format!("aws ecr get-login --no-include-email --region $AWS_REGION --registry-ids {id}")
        }
        None => "aws ecr get-login --no-include-email --region $AWS_REGION".to_string(),
    }))
}

/// `aws-cli/2.15.0 Python/3.11 ...` → 2.
fn aws_major_version(output: &str) -> Option<u32> {
    let first = output.split_whitespace().next()?;
    let version = first.split('/').nth(1)?;
    version.split('.').next()?.parse().ok()
}

/// The longest one AWS CLI question may take (it talks to AWS).
const AWS_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `script` with bash, with only the credential's variables and
/// `PATH`, bounded by [`AWS_TIMEOUT`]; its output on success. The output is
/// never logged: it may be a token.
fn aws(vars: &[(String, String)], path: &str, script: &str) -> Result<String, CredentialError> {
    let command = HostCommand::with_only_env("bash")
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .envs(vars.iter().map(|(k, v)| (k, v)));
    let limits = host::Limits {
        timeout: AWS_TIMEOUT,
        stopped: &|| false,
        scratch: None,
    };
    let shown = script.trim_end_matches(" 2>&1");
    let done = host::run(&command, Capture::Stdout, &limits).map_err(|e| CredentialError::Aws {
        what: match e {
            HostError::TimedOut { timeout, .. } => {
                format!("'{shown}' did not finish within {}s", timeout.as_secs())
            }
            HostError::Spawn { source, .. } => format!("cannot run bash for the AWS CLI: {source}"),
            other => format!("cannot run bash for the AWS CLI: {other}"),
        },
    })?;
    if !done.status.success() {
        return Err(CredentialError::Aws {
            what: format!("'{shown}' failed with {}", done.status),
        });
    }
    Ok(done.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{encode_base64, EnvVar};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn credential(vars: &[(&str, &str)]) -> ImagePullCredentials {
        ImagePullCredentials {
            env_vars: vars
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.to_string(),
                    value: encode_base64(value.as_bytes()),
                })
                .collect(),
            files: Vec::new(),
        }
    }

    /// A stand-in for the AWS CLI: answers `--version` with `version`,
    /// `sts get-caller-identity` with 123456789012, and records every call.
    fn fake_aws(version: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "#!/bin/sh\n# stand-in for the AWS CLI (test only)\necho \"$*\" >> \"$(dirname \"$0\")/calls\"\n\
             case \"$1\" in\n  --version) echo 'aws-cli/{version} Python/3.11.0 Linux/6.1 botocore/1.0' ;;\n  \
             sts) echo 123456789012 ;;\n  *) exit 3 ;;\nesac\n"
        );
        let path = dir.path().join("aws");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let search = format!("{}:/usr/bin:/bin", dir.path().display());
        (dir, search)
    }

    fn calls(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default()
    }

    #[test]
    fn strategies_come_from_docker_credential_type() {
        for (value, expected) in [
            ("DockerHub", Strategy::DockerHub),
            ("GenericDocker", Strategy::GenericDocker),
            ("AWS_ECR", Strategy::Ecr),
            ("GCR", Strategy::Gcr),
        ] {
            let c = credential(&[("X", "y"), ("DOCKER_CREDENTIAL_TYPE", value)]);
            assert_eq!(strategy(&c), Ok(expected), "{value}");
        }
        let err = strategy(&credential(&[("DOCKER_CREDENTIAL_TYPE", "Quay")])).unwrap_err();
        assert_eq!(err.to_string(), "unknown DOCKER_CREDENTIAL_TYPE: 'Quay'");
        let err = strategy(&credential(&[("A", "b")])).unwrap_err();
        assert_eq!(err.to_string(), "DOCKER_CREDENTIAL_TYPE not set");
    }

    #[test]
    fn docker_hub_generic_and_gcr_lines_are_gos() {
        let c = credential(&[]);
        assert_eq!(
            login_command(&c, Strategy::DockerHub, "/bin", "/k").unwrap().shown,
            "echo $DOCKERHUB_PASSWORD | docker login --username $DOCKERHUB_USERNAME --password-stdin"
        );
        assert_eq!(
            login_command(&c, Strategy::GenericDocker, "/bin", "/k")
                .unwrap()
                .shown,
            r#"docker login -u "$DOCKER_USERNAME" -p "$DOCKER_PASSWORD" $DOCKER_URL"#
        );
        assert_eq!(
            login_command(&c, Strategy::Gcr, "/bin", "/k").unwrap().shown,
            "cat /tmp/gcr/keyfile.json | docker login -u _json_key --password-stdin https://$GCR_HOSTNAME"
        );
    }

    #[test]
    fn ecr_with_aws_cli_v1_uses_get_login_with_or_without_registry_ids() {
        let (dir, path) = fake_aws("1.18.69");
        let c = credential(&[
            ("DOCKER_CREDENTIAL_TYPE", "AWS_ECR"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        assert_eq!(
            login_command(&c, Strategy::Ecr, &path, "/k").unwrap().shown,
            "$(aws ecr get-login --no-include-email --region $AWS_REGION)"
        );
        let c = credential(&[("AWS_REGION", "eu-west-1"), ("AWS_ACCOUNT_ID", "999")]);
        assert_eq!(
            login_command(&c, Strategy::Ecr, &path, "/k").unwrap().shown,
            "$(aws ecr get-login --no-include-email --region $AWS_REGION --registry-ids 999)"
        );
        assert_eq!(calls(&dir), "--version\n--version\n", "v1 never asks STS");
    }

    #[test]
    fn ecr_with_aws_cli_v2_pipes_the_password_to_the_account_registry() {
        let (dir, path) = fake_aws("2.15.30");
        let c = credential(&[("AWS_REGION", "us-east-1"), ("AWS_ACCOUNT_ID", "777")]);
        assert_eq!(
            login_command(&c, Strategy::Ecr, &path, "/k").unwrap().shown,
            "aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin 777.dkr.ecr.$AWS_REGION.amazonaws.com"
        );
        assert_eq!(calls(&dir), "--version\n");
        let c = credential(&[("AWS_REGION", "us-east-1")]);
        assert_eq!(
            login_command(&c, Strategy::Ecr, &path, "/k").unwrap().shown,
            "aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin 123456789012.dkr.ecr.$AWS_REGION.amazonaws.com"
        );
        assert_eq!(
            calls(&dir),
            "--version\n--version\nsts get-caller-identity --query Account --output text\n"
        );
    }

    /// A stand-in for `docker` (test only): records its argv and stdin.
    fn fake_docker(dir: &Path) {
        let script = "#!/bin/sh\n# stand-in for docker (test only)\n\
                      echo \"argv: $*\" >> \"$(dirname \"$0\")/docker-calls\"\n\
                      echo \"stdin: $(cat)\" >> \"$(dirname \"$0\")/docker-calls\"\n";
        let path = dir.join("docker");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn run_login(login: &Login, path: &str, vars: &[(&str, &str)]) -> bool {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c").arg(&login.run).env_clear().env("PATH", path);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.status().unwrap().success()
    }

    /// Every password reaches `docker login` on its stdin, never in its
    /// argv, whatever line the job log shows.
    #[test]
    fn no_login_puts_a_password_in_an_argv() {
        let (dir, path) = fake_aws("1.18.69");
        // The v1 CLI prints a `docker login -p` line for each registry.
        let aws = dir.path().join("aws");
        let script = std::fs::read_to_string(&aws).unwrap().replace(
            "  *) exit 3 ;;",
            "  ecr) echo 'docker login -u AWS -p ecr-t0ken-1 https://1.dkr.ecr.x.amazonaws.com' ;;\n  *) exit 3 ;;",
        );
        std::fs::write(&aws, script).unwrap();
        fake_docker(dir.path());
        let key = dir.path().join("key file.json");
        std::fs::write(&key, "gcr-k3y").unwrap();
        let key = key.display().to_string();
        let c = credential(&[("AWS_REGION", "eu-west-1")]);
        for (strategy, vars, secret) in [
            (
                Strategy::GenericDocker,
                vec![
                    ("DOCKER_USERNAME", "u"),
                    ("DOCKER_PASSWORD", "gen-pa55 word"),
                    ("DOCKER_URL", "r.example"),
                ],
                "gen-pa55 word",
            ),
            (
                Strategy::DockerHub,
                vec![
                    ("DOCKERHUB_USERNAME", "u"),
                    ("DOCKERHUB_PASSWORD", "hub-pa55"),
                ],
                "hub-pa55",
            ),
            (Strategy::Gcr, vec![("GCR_HOSTNAME", "gcr.io")], "gcr-k3y"),
            (
                Strategy::Ecr,
                vec![("AWS_REGION", "eu-west-1")],
                "ecr-t0ken-1",
            ),
        ] {
            let _ = std::fs::remove_file(dir.path().join("docker-calls"));
            let login = login_command(&c, strategy, &path, &key).unwrap();
            assert!(run_login(&login, &path, &vars), "{strategy:?}: {login:?}");
            let calls = std::fs::read_to_string(dir.path().join("docker-calls")).unwrap();
            let argv = calls.lines().find(|l| l.starts_with("argv: ")).unwrap();
            assert!(argv.starts_with("argv: login "), "{strategy:?}: {calls}");
            assert!(
                !argv.contains(secret),
                "{strategy:?} has its secret in argv: {calls}"
            );
            assert!(
                calls.contains(&format!("stdin: {secret}")),
                "{strategy:?}: {calls}"
            );
        }
    }

    #[test]
    fn ecr_without_an_aws_cli_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let c = credential(&[("AWS_REGION", "us-east-1")]);
        let err =
            login_command(&c, Strategy::Ecr, &dir.path().display().to_string(), "/k").unwrap_err();
        assert!(matches!(err, CredentialError::Aws { .. }), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable_only() {
        let mut c = credential(&[("AWS_REGION", "x")]);
        c.env_vars.push(EnvVar {
            name: "AWS_SECRET_ACCESS_KEY".into(),
            value: "%%%".into(),
        });
        let err = env_vars(&c).unwrap_err();
        assert_eq!(err.to_string(), "error decoding 'AWS_SECRET_ACCESS_KEY'");
    }

    #[test]
    fn aws_versions_are_read_from_the_first_word() {
        assert_eq!(aws_major_version("aws-cli/2.1.0 Python/3"), Some(2));
        assert_eq!(aws_major_version("aws-cli/1.18.69 Python/2.7"), Some(1));
        assert_eq!(aws_major_version("command not found"), None);
    }
}
