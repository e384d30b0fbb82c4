//! The compose file of a job, in the Go agent's layout: `version: "2.0"`,
//! one service per container (`image`, then `command`, `user`,
//! `entrypoint` when set, then `environment`), the main service `links`
//! to every other one and gets the agent's `--files` as `volumes`.
//!
//! Owns the file's text and the checks that keep a request from writing
//! YAML of its own: names must be compose service names, and no value may
//! span lines. Environment values and volume paths are quoted (and `$`
//! doubled, which compose would otherwise interpolate); `command` and
//! `entrypoint` stay as written, as they are YAML for compose to read, the
//! way Go passes them. It must not touch the file system.

use crate::request::Container;

/// Why a container cannot go into a compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComposeFileError {
    NoContainers,
    /// Not `[A-Za-z0-9._-]+`.
    BadName {
        name: String,
    },
    /// A field of container `name` holds a line break.
    MultiLine {
        name: String,
        field: &'static str,
    },
    /// An env var of container `name` whose value is not base64.
    BadEnvVar {
        name: String,
        var: String,
    },
}

impl std::fmt::Display for ComposeFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComposeFileError::NoContainers => {
                write!(f, "the job's compose section has no containers")
            }
            ComposeFileError::BadName { name } => write!(
                f,
                "container name {name:?} is not a valid compose service name \
                 (letters, digits, '.', '_' and '-')"
            ),
            ComposeFileError::MultiLine { name, field } => {
                write!(f, "the {field} of container {name:?} spans several lines")
            }
            ComposeFileError::BadEnvVar { name, var } => write!(
                f,
                "env var {var} of container {name:?} has a value that is not valid base64"
            ),
        }
    }
}

impl std::error::Error for ComposeFileError {}

/// A `--files` entry that is mounted into the main container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: String,
    pub dest: String,
}

/// The compose file for `containers` (the first is the main one).
pub fn render(containers: &[Container], mounts: &[Mount]) -> Result<String, ComposeFileError> {
    render_labelled(containers, mounts, &[])
}

/// [`render`] with `labels` on every service (after its `environment`),
/// so the containers say which agent made them: a later agent finds and
/// removes those of agents that are gone (`leftovers.rs`). Label values
/// are the agent's own, never the request's, and are quoted.
pub fn render_labelled(
    containers: &[Container],
    mounts: &[Mount],
    labels: &[(&str, String)],
) -> Result<String, ComposeFileError> {
    render_main(containers, mounts, labels, &MainSettings::default())
}

/// What the agent adds to the main container only (never a sidecar):
/// its GPUs (`--gpus`) and limits (`--job-memory-limit`, `--job-cpus`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MainSettings {
    /// GPU ids (indexes or UUIDs) for an engine device request.
    pub gpus: Option<Vec<String>>,
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

/// [`render_labelled`] with the agent's [`MainSettings`] on the main
/// service: `mem_limit` (and `memswap_limit`, so swap is no way around
/// it), `cpus`, and a device request (`driver: nvidia`, the ids,
/// `capabilities: [gpu]`), which the engine's NVIDIA driver turns into
/// exactly those GPUs in the container.
pub fn render_main(
    containers: &[Container],
    mounts: &[Mount],
    labels: &[(&str, String)],
    settings: &MainSettings,
) -> Result<String, ComposeFileError> {
    let Some((main, rest)) = containers.split_first() else {
        return Err(ComposeFileError::NoContainers);
    };
    let mut out = String::from("version: \"2.0\"\n\nservices:\n");
    service(&mut out, main)?;
    push_labels(&mut out, labels);
    push_main_settings(&mut out, settings);
    if !rest.is_empty() {
        out.push_str("    links:\n");
        for link in rest {
            out.push_str(&format!("      - {}\n", link.name));
        }
    }
    if !mounts.is_empty() {
        out.push_str("    volumes:\n");
        for mount in mounts {
            let spec = format!("{}:{}", mount.host, mount.dest);
            out.push_str(&format!("      - {}\n", quote(&spec)));
        }
    }
    out.push('\n');
    for container in rest {
        service(&mut out, container)?;
        push_labels(&mut out, labels);
        out.push('\n');
    }
    Ok(out)
}

fn push_main_settings(out: &mut String, settings: &MainSettings) {
    if let Some(bytes) = settings.memory_bytes {
        out.push_str(&format!(
            "    mem_limit: {bytes}\n    memswap_limit: {bytes}\n"
        ));
    }
    if let Some(millis) = settings.cpu_millis {
        out.push_str(&format!("    cpus: {}\n", crate::shell::cpus_text(millis)));
    }
    if let Some(ids) = &settings.gpus {
        let ids: Vec<String> = ids.iter().map(|id| quote(id)).collect();
        out.push_str(&format!(
            "    deploy:\n      resources:\n        reservations:\n          devices:\n            \
             - driver: \"nvidia\"\n              device_ids: [{}]\n              \
             capabilities: [\"gpu\"]\n",
            ids.join(", ")
        ));
    }
}

fn push_labels(out: &mut String, labels: &[(&str, String)]) {
    if labels.is_empty() {
        return;
    }
    out.push_str("    labels:\n");
    for (key, value) in labels {
        out.push_str(&format!("      {key}: {}\n", quote(value)));
    }
}

fn service(out: &mut String, c: &Container) -> Result<(), ComposeFileError> {
    let valid = !c.name.is_empty()
        && c.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if !valid {
        return Err(ComposeFileError::BadName {
            name: c.name.clone(),
        });
    }
    let one_line = |field: &'static str, value: &str| {
        if value.contains(['\n', '\r']) {
            Err(ComposeFileError::MultiLine {
                name: c.name.clone(),
                field,
            })
        } else {
            Ok(())
        }
    };
    one_line("image", &c.image)?;
    one_line("command", &c.command)?;
    one_line("user", &c.user)?;
    one_line("entrypoint", &c.entrypoint)?;
    out.push_str(&format!("  {}:\n", c.name));
    out.push_str(&format!("    image: {}\n", quote(&c.image)));
    if !c.command.is_empty() {
        out.push_str(&format!("    command: {}\n", c.command));
    }
    if !c.user.is_empty() {
        out.push_str(&format!("    user: {}\n", quote(&c.user)));
    }
    if !c.entrypoint.is_empty() {
        out.push_str(&format!("    entrypoint: {}\n", c.entrypoint));
    }
    if !c.env_vars.is_empty() {
        out.push_str("    environment:\n");
        for var in &c.env_vars {
            let value = var.decode().map_err(|_| ComposeFileError::BadEnvVar {
                name: c.name.clone(),
                var: var.name.clone(),
            })?;
            out.push_str(&format!(
                "      - {}\n",
                quote(&format!("{}={value}", var.name))
            ));
        }
    }
    Ok(())
}

/// A YAML double-quoted scalar (JSON escaping is valid YAML), with `$`
/// doubled so compose keeps it literal.
fn quote(value: &str) -> String {
    let escaped = serde_json::to_string(value).unwrap_or_else(|_| String::from("\"\""));
    escaped.replace('$', "$$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_and_limits_go_on_the_main_service_only() {
        let containers = vec![container("main", "cuda:12"), container("db", "postgres")];
        let text = render_main(
            &containers,
            &[],
            &[],
            &MainSettings {
                gpus: Some(vec!["1".into(), "GPU-abc".into()]),
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(500),
            },
        )
        .unwrap();
        let (main, db) = text.split_once("  db:").unwrap();
        assert!(
            main.contains("    mem_limit: 67108864\n    memswap_limit: 67108864\n"),
            "{text}"
        );
        assert!(main.contains("    cpus: 0.5\n"), "{text}");
        assert!(
            main.contains(
                "          devices:\n            - driver: \"nvidia\"\n              \
                 device_ids: [\"1\", \"GPU-abc\"]\n              capabilities: [\"gpu\"]\n"
            ),
            "{text}"
        );
        for word in ["mem_limit", "cpus", "deploy", "nvidia"] {
            assert!(!db.contains(word), "{word} on a sidecar: {text}");
        }
        assert_eq!(
            render_main(&containers, &[], &[], &MainSettings::default()).unwrap(),
            render(&containers, &[]).unwrap()
        );
    }

    #[test]
    fn labels_go_on_every_service_quoted() {
        let containers = vec![container("main", "ruby:3"), container("db", "postgres")];
        let text = render_labelled(
            &containers,
            &[],
            &[("com.semaphoreci.agent.owner", "1:2:3".to_string())],
        )
        .unwrap();
        assert_eq!(
            text.matches("    labels:\n      com.semaphoreci.agent.owner: \"1:2:3\"\n")
                .count(),
            2,
            "{text}"
        );
        assert_eq!(
            render(&containers, &[]).unwrap().matches("labels").count(),
            0
        );
    }
    use crate::request::{encode_base64, EnvVar};

    fn container(name: &str, image: &str) -> Container {
        Container {
            name: name.into(),
            image: image.into(),
            ..Container::default()
        }
    }

    #[test]
    fn main_links_the_others_and_mounts_the_agent_files() {
        let mut main = container("main", "ruby:2.6");
        main.env_vars.push(EnvVar {
            name: "A".into(),
            value: encode_base64(b"it's \"$HOME\""),
        });
        let mut db = container("db", "postgres:9.6");
        db.user = "postgres".into();
        db.entrypoint = "/docker-entrypoint.sh".into();
        db.command = "postgres -c fsync=off".into();
        let text = render(
            &[main, db],
            &[Mount {
                host: "/tmp/a.txt".into(),
                dest: "/tmp/b.txt".into(),
            }],
        )
        .unwrap();
        assert_eq!(
            text,
            r#"version: "2.0"

services:
  main:
    image: "ruby:2.6"
    environment:
      - "A=it's \"$$HOME\""
    links:
      - db
    volumes:
      - "/tmp/a.txt:/tmp/b.txt"

  db:
    image: "postgres:9.6"
    command: postgres -c fsync=off
    user: "postgres"
    entrypoint: /docker-entrypoint.sh

"#
        );
    }

    #[test]
    fn requests_cannot_write_yaml_of_their_own() {
        assert_eq!(render(&[], &[]), Err(ComposeFileError::NoContainers));
        let bad = container("main:\n  privileged: true", "x");
        assert!(matches!(
            render(&[bad], &[]),
            Err(ComposeFileError::BadName { .. })
        ));
        let mut bad = container("main", "x");
        bad.command = "true\n    privileged: true".into();
        let err = render(&[bad], &[]).unwrap_err();
        assert_eq!(
            err,
            ComposeFileError::MultiLine {
                name: "main".into(),
                field: "command"
            }
        );
        let mut bad = container("main", "x");
        bad.env_vars.push(EnvVar {
            name: "SECRET".into(),
            value: "%%%".into(),
        });
        let err = render(&[bad], &[]).unwrap_err().to_string();
        assert!(err.contains("SECRET"), "{err}");
    }
}
