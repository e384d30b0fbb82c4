//! The objects a Kubernetes job needs, as JSON, and reading a pod's status.
//!
//! Pure functions: the job's secret (`.env` and files), the image pull
//! secret, the pod (decorated by the `--kubernetes-pod-spec` ConfigMap),
//! and what a pod's status means for the job. Field names and messages
//! follow the Go agent's `pkg/kubernetes`; values are sent as `data`
//! (base64) rather than `stringData`, so env values and files that are not
//! UTF-8 arrive byte for byte. Nothing here talks to the API.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::request::{Container, EnvVar, File, ImagePullCredentials};

/// The secret key holding the env file.
pub const ENV_KEY: &str = ".env";
/// The pod volume that mounts the job's secret.
pub const ENV_VOLUME: &str = "environment";

/// Why a job's objects could not be built; `Display` is the line the job
/// log shows (Go's wording where Go has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSpecError {
    NoContainers,
    ImageNotAllowed {
        image: String,
    },
    /// A container's `user` is not a numeric `UID[:GID]`, which is all a
    /// pod's securityContext can express.
    BadUser {
        container: String,
        user: String,
    },
    /// A container's `command` or `entrypoint` has an unclosed quote.
    BadCommand {
        container: String,
        field: &'static str,
    },
    BadEnvVar {
        container: String,
        name: String,
    },
    BadFile {
        path: String,
        message: String,
    },
    /// The path's secret key would be longer than Kubernetes allows.
    PathTooLong {
        path: String,
    },
    BadCredentials {
        message: String,
    },
    /// The `key` part of the pod-spec ConfigMap `config_map` is not a
    /// YAML mapping; `message` says why.
    ReadDecorator {
        config_map: String,
        key: String,
        message: String,
    },
}

impl std::fmt::Display for PodSpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodSpecError::NoContainers => f.write_str(
                "no containers specified in Semaphore YAML, and no default container is provided",
            ),
            PodSpecError::ImageNotAllowed { image } => {
                write!(f, "error validating images: image '{image}' is not allowed")
            }
            PodSpecError::BadUser { container, user } => write!(
                f,
                "container '{container}': user '{user}' must be a numeric UID or UID:GID in Kubernetes"
            ),
            PodSpecError::BadCommand { container, field } => {
                write!(f, "container '{container}': {field} has an unclosed quote")
            }
            PodSpecError::BadEnvVar { container, name } => write!(
                f,
                "container '{container}': env var {name} has a value that is not valid base64"
            ),
            PodSpecError::BadFile { path, message } => {
                write!(f, "error decoding file '{path}': {message}")
            }
            PodSpecError::PathTooLong { path } => write!(
                f,
                "file path '{path}' is too long to be a Kubernetes secret key once encoded"
            ),
            PodSpecError::BadCredentials { message } => f.write_str(message),
            PodSpecError::ReadDecorator {
                config_map,
                key,
                message,
            } => write!(
                f,
                "error unmarshaling {key} spec from configmap '{config_map}': {message}"
            ),
        }
    }
}

impl std::error::Error for PodSpecError {}

/// The secret key of a job file: its path in unpadded URL-safe base64, as
/// keys may only hold `[-._a-zA-Z0-9]`.
pub fn file_key(path: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(path.as_bytes())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn metadata(name: &str, namespace: &str, labels: &[(String, String)]) -> Value {
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({ "name": name, "namespace": namespace, "labels": labels })
}

/// The job's secret: the env file under `.env` and one key per file.
pub fn env_secret(
    name: &str,
    namespace: &str,
    labels: &[(String, String)],
    env_file: &[u8],
    files: &[File],
) -> Result<Value, PodSpecError> {
    let mut data = Map::new();
    data.insert(ENV_KEY.to_string(), Value::String(b64(env_file)));
    for file in files {
        let content = file.decode().map_err(|e| PodSpecError::BadFile {
            path: file.path.clone(),
            message: e.to_string(),
        })?;
        let key = file_key(&file.path);
        if key.len() > 253 {
            return Err(PodSpecError::PathTooLong {
                path: file.path.clone(),
            });
        }
        data.insert(key, Value::String(b64(&content)));
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(name, namespace, labels),
        "type": "Opaque",
        "immutable": true,
        "data": data,
    }))
}

/// The `.dockerconfigjson` for the job's image pull credentials:
/// `{"auths": {server: {username, password, auth}}}`. Docker Hub, generic
/// registries and GCR are read from the credentials' variables; AWS ECR
/// needs the `aws` CLI to get a password and is refused with a reason.
pub fn docker_config_json(credentials: &[ImagePullCredentials]) -> Result<Vec<u8>, PodSpecError> {
    let bad = |message: String| PodSpecError::BadCredentials { message };
    let mut auths = Map::new();
    for credential in credentials {
        let var = |name: &str| {
            credential
                .find_env_var(name)
                .ok_or_else(|| bad(format!("{name} not set in the image pull credentials")))
        };
        let kind = var("DOCKER_CREDENTIAL_TYPE")
            .map_err(|_| bad("DOCKER_CREDENTIAL_TYPE not set".to_string()))?;
        let (server, username, password) = match kind.as_str() {
            "DockerHub" => (
                "docker.io".to_string(),
                var("DOCKERHUB_USERNAME")?,
                var("DOCKERHUB_PASSWORD")?,
            ),
            "GenericDocker" => (
                var("DOCKER_URL")?,
                var("DOCKER_USERNAME")?,
                var("DOCKER_PASSWORD")?,
            ),
            "GCR" => {
                let key = credential
                    .files
                    .iter()
                    .find(|f| f.path == "/tmp/gcr/keyfile.json")
                    .ok_or_else(|| bad("/tmp/gcr/keyfile.json not found".to_string()))?
                    .decode()
                    .map_err(|e| bad(e.to_string()))?;
                (
                    var("GCR_HOSTNAME")?,
                    "_json_key".to_string(),
                    String::from_utf8_lossy(&key).into_owned(),
                )
            }
            "AWS_ECR" => {
                return Err(bad(
                    "AWS_ECR image pull credentials are not supported by this agent's \
                     Kubernetes executor; use a pull secret in the --kubernetes-pod-spec pod"
                        .to_string(),
                ))
            }
            other => return Err(bad(format!("unknown DOCKER_CREDENTIAL_TYPE: '{other}'"))),
        };
        let auth = b64(format!("{username}:{password}").as_bytes());
        auths.insert(
            server,
            json!({ "username": username, "password": password, "auth": auth }),
        );
    }
    let config = json!({ "auths": auths });
    Ok(config.to_string().into_bytes())
}

/// The image pull secret holding `docker_config` (from
/// [`docker_config_json`]).
pub fn pull_secret(
    name: &str,
    namespace: &str,
    labels: &[(String, String)],
    docker_config: &[u8],
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(name, namespace, labels),
        "type": "kubernetes.io/dockerconfigjson",
        "immutable": true,
        "data": { ".dockerconfigjson": b64(docker_config) },
    })
}

/// What the `--kubernetes-pod-spec` ConfigMap adds: a pod spec and
/// container fields for the main container and for every sidecar, each a
/// YAML document under its key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decorator {
    pub pod: Option<Map<String, Value>>,
    pub main_container: Option<Map<String, Value>>,
    pub sidecar_containers: Option<Map<String, Value>>,
}

impl Decorator {
    /// Reads the ConfigMap `name` as the API returned it; a missing key
    /// leaves that part undecorated, a key that is not a YAML mapping is
    /// an error naming the ConfigMap and the key.
    pub fn from_config_map(name: &str, config_map: &Value) -> Result<Decorator, PodSpecError> {
        let data = config_map.get("data");
        let bad = |key: &str, message: String| PodSpecError::ReadDecorator {
            config_map: name.to_string(),
            key: key.to_string(),
            message,
        };
        let part = |key: &str| -> Result<Option<Map<String, Value>>, PodSpecError> {
            let Some(text) = data.and_then(|d| d.get(key)).and_then(Value::as_str) else {
                log::info!("No '{key}' key in '{name}' - skipping its decoration");
                return Ok(None);
            };
            if text.trim().is_empty() {
                return Ok(None);
            }
            let mut value: Value =
                serde_yaml_ng::from_str(text).map_err(|e| bad(key, e.to_string()))?;
            octal_modes(&mut value);
            match value {
                Value::Object(map) => Ok(Some(map)),
                Value::Null => Ok(None),
                _ => Err(bad(key, "not a mapping".to_string())),
            }
        };
        Ok(Decorator {
            pod: part("pod")?,
            main_container: part("mainContainer")?,
            sidecar_containers: part("sidecarContainers")?,
        })
    }
}

/// File modes written the YAML 1.1 way (`defaultMode: 0755`), as Go's
/// YAML reads them and Kubernetes examples write them: our YAML 1.2
/// parser leaves `0755` a string, which the API refuses for these int32
/// fields (`defaultMode`, `mode`), so such strings become the octal number.
fn octal_modes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if let (true, Value::String(text)) = (key == "defaultMode" || key == "mode", &*item)
                {
                    let octal = text.len() > 1
                        && text.starts_with('0')
                        && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
                    if let (true, Ok(mode)) = (octal, u32::from_str_radix(text, 8)) {
                        *item = Value::from(mode);
                    }
                } else {
                    octal_modes(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

/// The job's pod, named `name`: the decorator's pod spec with the job's
/// containers (the first is `main`, kept alive by [`MAIN_COMMAND`], with
/// the job's secret mounted read-only at `injected_dir`), host aliases for
/// the sidecars, the pull secret, `restartPolicy: Never` and the labels.
/// `allowed` are the `--kubernetes-allowed-images` (empty allows all).
#[allow(clippy::too_many_arguments)]
pub fn pod(
    name: &str,
    namespace: &str,
    labels: &[(String, String)],
    decorator: &Decorator,
    containers: &[Container],
    default_image: Option<&str>,
    allowed: &[regex_lite::Regex],
    env_secret: &str,
    pull_secret: Option<&str>,
    injected_dir: &str,
) -> Result<Value, PodSpecError> {
    let default;
    let containers = if containers.is_empty() {
        let Some(image) = default_image else {
            return Err(PodSpecError::NoContainers);
        };
        default = [Container {
            image: image.to_string(),
            ..Container::default()
        }];
        &default[..]
    } else {
        for container in containers {
            if !allowed.is_empty() && !allowed.iter().any(|r| r.is_match(&container.image)) {
                return Err(PodSpecError::ImageNotAllowed {
                    image: container.image.clone(),
                });
            }
        }
        containers
    };

    let mut spec = decorator.pod.clone().unwrap_or_default();
    let mut built = vec![main_container(
        &containers[0],
        decorator.main_container.as_ref(),
        injected_dir,
    )?];
    for sidecar in &containers[1..] {
        built.push(sidecar_container(
            sidecar,
            decorator.sidecar_containers.as_ref(),
        )?);
    }
    if containers.len() > 1 {
        let names: Vec<Value> = containers[1..]
            .iter()
            .map(|c| Value::String(c.name.clone()))
            .collect();
        spec.insert(
            "hostAliases".into(),
            json!([{ "ip": "127.0.0.1", "hostnames": names }]),
        );
    }
    spec.insert("containers".into(), Value::Array(built));
    if let Some(secret) = pull_secret {
        append(&mut spec, "imagePullSecrets", json!({ "name": secret }));
    }
    spec.insert("restartPolicy".into(), json!("Never"));
    append(
        &mut spec,
        "volumes",
        json!({ "name": ENV_VOLUME, "secret": { "secretName": env_secret } }),
    );
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(name, namespace, labels),
        "spec": spec,
    }))
}

/// Appends `item` to the list `key` of `map`, making the list if needed.
fn append(map: &mut Map<String, Value>, key: &str, item: Value) {
    match map.get_mut(key) {
        Some(Value::Array(items)) => items.push(item),
        _ => {
            map.insert(key.to_string(), Value::Array(vec![item]));
        }
    }
}

fn env_list(container: &Container) -> Result<Vec<Value>, PodSpecError> {
    container
        .env_vars
        .iter()
        .map(|var: &EnvVar| {
            let value = var.decode().map_err(|_| PodSpecError::BadEnvVar {
                container: container.name.clone(),
                name: var.name.clone(),
            })?;
            Ok(json!({ "name": var.name, "value": value }))
        })
        .collect()
}

/// What keeps the main container alive: a `sleep` that ends at SIGTERM.
/// A bare `sleep infinity` as PID 1 ignores SIGTERM (the kernel delivers
/// no default action to a namespace's init), so every pod delete would wait
/// out the whole grace period with nothing left to stop.
pub const MAIN_COMMAND: &str = "trap 'exit 0' TERM; sleep infinity & wait";

fn main_container(
    container: &Container,
    decorator: Option<&Map<String, Value>>,
    injected_dir: &str,
) -> Result<Value, PodSpecError> {
    let mut main = decorator.cloned().unwrap_or_default();
    main.insert("name".into(), json!("main"));
    main.insert("image".into(), json!(container.image));
    for var in env_list(container)? {
        append(&mut main, "env", var);
    }
    main.insert("command".into(), json!(["bash", "-c", MAIN_COMMAND]));
    append(
        &mut main,
        "volumeMounts",
        json!({ "name": ENV_VOLUME, "readOnly": true, "mountPath": injected_dir }),
    );
    Ok(Value::Object(main))
}

/// A sidecar: compose's `entrypoint` becomes the container's `command`
/// and compose's `command` its `args` (what each overrides in the image),
/// and a numeric `user` its `securityContext` — all three are documented
/// by Semaphore and dropped by the Go agent.
fn sidecar_container(
    container: &Container,
    decorator: Option<&Map<String, Value>>,
) -> Result<Value, PodSpecError> {
    let mut sidecar = decorator.cloned().unwrap_or_default();
    sidecar.insert("name".into(), json!(container.name));
    sidecar.insert("image".into(), json!(container.image));
    for var in env_list(container)? {
        append(&mut sidecar, "env", var);
    }
    let words = |text: &str, field: &'static str| {
        split_words(text).ok_or_else(|| PodSpecError::BadCommand {
            container: container.name.clone(),
            field,
        })
    };
    if !container.entrypoint.trim().is_empty() {
        sidecar.insert(
            "command".into(),
            json!(words(&container.entrypoint, "entrypoint")?),
        );
    }
    if !container.command.trim().is_empty() {
        sidecar.insert("args".into(), json!(words(&container.command, "command")?));
    }
    if !container.user.trim().is_empty() {
        let bad = || PodSpecError::BadUser {
            container: container.name.clone(),
            user: container.user.clone(),
        };
        let user = container.user.trim();
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user, None),
        };
        let uid: i64 = uid.parse().map_err(|_| bad())?;
        let gid: Option<i64> = gid.map(|g| g.parse().map_err(|_| bad())).transpose()?;
        let context = sidecar
            .entry("securityContext")
            .or_insert_with(|| json!({}));
        if let Value::Object(context) = context {
            context.insert("runAsUser".into(), json!(uid));
            if let Some(gid) = gid {
                context.insert("runAsGroup".into(), json!(gid));
            }
        }
    }
    Ok(Value::Object(sidecar))
}

/// Splits a compose `command`/`entrypoint` string into words the way a
/// shell would without expanding anything: whitespace separates, single
/// and double quotes group, a backslash escapes the next character
/// (outside single quotes). `None` for an unclosed quote.
fn split_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => word.push(chars.next()?),
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// Where a pod is on its way to running the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodProgress {
    /// Running with every container ready.
    Ready,
    /// Not yet; the line says why (shown to users while they wait).
    Waiting(String),
    /// It will never run the job: it finished, or an image cannot be
    /// pulled.
    Failed(String),
}

/// Reads a pod as `GET pods/<name>` returned it, the way the Go agent
/// does: a finished pod or an image pull error fails at once; a container
/// not ready or a pending pod waits.
pub fn pod_progress(pod: &Value) -> PodProgress {
    let status = &pod["status"];
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let phase = status["phase"].as_str().unwrap_or("");
    let empty = Vec::new();
    let statuses = status["containerStatuses"].as_array().unwrap_or(&empty);
    if phase == "Failed" || phase == "Succeeded" {
        return PodProgress::Failed(format!(
            "pod '{name}' already finished with status {phase} - reason: '{}', message: '{}', statuses: {}",
            status["reason"].as_str().unwrap_or(""),
            status["message"].as_str().unwrap_or(""),
            describe_statuses(statuses)
        ));
    }
    for container in statuses {
        let cname = container["name"].as_str().unwrap_or("");
        let reason = container["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or("");
        if reason == "ErrImagePull" || reason == "ImagePullBackOff" {
            return PodProgress::Failed(format!(
                "failed to pull image for '{cname}': {}",
                describe_statuses(statuses)
            ));
        }
        if container["ready"].as_bool() != Some(true) {
            return PodProgress::Waiting(format!(
                "container '{cname}' is not ready yet - statuses: {}",
                describe_statuses(statuses)
            ));
        }
    }
    if phase == "Pending" || phase.is_empty() || statuses.is_empty() {
        return PodProgress::Waiting(format!(
            "pod in pending state - statuses: {}",
            describe_statuses(statuses)
        ));
    }
    PodProgress::Ready
}

/// One line per container state, in Go's `[a b]` list format.
fn describe_statuses(statuses: &[Value]) -> String {
    let mut parts = Vec::new();
    for s in statuses {
        let image = s["image"].as_str().unwrap_or("");
        let state = &s["state"];
        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
        if state["terminated"].is_object() {
            parts.push(format!(
                "container '{image}' terminated - reason='{}', message='{}'",
                text(&state["terminated"]["reason"]),
                text(&state["terminated"]["message"])
            ));
        }
        if state["waiting"].is_object() {
            parts.push(format!(
                "container '{image}' waiting - reason='{}', message='{}'",
                text(&state["waiting"]["reason"]),
                text(&state["waiting"]["message"])
            ));
        }
        if state["running"].is_object() {
            parts.push(format!(
                "container '{image}' is running since {}",
                text(&state["running"]["startedAt"])
            ));
        }
    }
    format!("[{}]", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_file_modes_become_numbers() {
        let cm = json!({"data": {"pod": "volumes:\n- name: hooks\n  configMap:\n    name: h\n    defaultMode: 0755\n    items: [{key: a, path: a, mode: 0600}, {key: b, path: b, mode: 420}]\n- name: other\n  secret: {secretName: s, defaultMode: '0x1'}\n"}});
        let decorator = Decorator::from_config_map("spec", &cm).unwrap();
        let volumes = &decorator.pod.unwrap()["volumes"];
        assert_eq!(volumes[0]["configMap"]["defaultMode"], 493);
        assert_eq!(volumes[0]["configMap"]["items"][0]["mode"], 384);
        assert_eq!(volumes[0]["configMap"]["items"][1]["mode"], 420);
        // Not octal: left for the API to refuse with the field's name.
        assert_eq!(volumes[1]["secret"]["defaultMode"], "0x1");
    }
    use crate::request::encode_base64;

    fn container(name: &str, image: &str) -> Container {
        Container {
            name: name.into(),
            image: image.into(),
            ..Container::default()
        }
    }

    fn labels() -> Vec<(String, String)> {
        vec![("app".into(), "ci".into())]
    }

    fn build(
        decorator: &Decorator,
        containers: &[Container],
        allowed: &[&str],
    ) -> Result<Value, PodSpecError> {
        let allowed: Vec<regex_lite::Regex> = allowed
            .iter()
            .map(|r| regex_lite::Regex::new(r).unwrap())
            .collect();
        pod(
            "semaphore-job-1",
            "ns",
            &labels(),
            decorator,
            containers,
            Some("default:1"),
            &allowed,
            "semaphore-job-1-secret",
            Some("semaphore-job-1-image-pull-secret"),
            "/tmp/injected",
        )
    }

    #[test]
    fn a_pod_without_containers_uses_the_default_image() {
        let pod = build(&Decorator::default(), &[], &["^nothing$"]).unwrap();
        let spec = &pod["spec"];
        assert_eq!(pod["metadata"]["name"], "semaphore-job-1");
        assert_eq!(pod["metadata"]["namespace"], "ns");
        assert_eq!(pod["metadata"]["labels"]["app"], "ci");
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
        let main = &spec["containers"][0];
        assert_eq!(main["name"], "main");
        assert_eq!(main["image"], "default:1");
        assert_eq!(main["command"], json!(["bash", "-c", MAIN_COMMAND]));
        assert_eq!(
            main["volumeMounts"],
            json!([{"name": "environment", "readOnly": true, "mountPath": "/tmp/injected"}])
        );
        assert_eq!(spec["restartPolicy"], "Never");
        assert!(spec.get("hostAliases").is_none());
        assert_eq!(
            spec["volumes"],
            json!([{"name": "environment", "secret": {"secretName": "semaphore-job-1-secret"}}])
        );
        assert_eq!(
            spec["imagePullSecrets"],
            json!([{"name": "semaphore-job-1-image-pull-secret"}])
        );
    }

    #[test]
    fn no_containers_and_no_default_is_go_s_error() {
        let err = pod(
            "p",
            "ns",
            &[],
            &Decorator::default(),
            &[],
            None,
            &[],
            "s",
            None,
            "/tmp/injected",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no containers specified in Semaphore YAML, and no default container is provided"
        );
    }

    #[test]
    fn images_must_match_an_allowed_regex_anywhere() {
        let ok = build(
            &Decorator::default(),
            &[container("main", "registry.io/ruby:3")],
            &["^registry\\.io/"],
        );
        assert!(ok.is_ok());
        let err = build(
            &Decorator::default(),
            &[
                container("main", "registry.io/ruby:3"),
                container("db", "postgres"),
            ],
            &["^registry\\.io/"],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "error validating images: image 'postgres' is not allowed"
        );
    }

    #[test]
    fn sidecars_get_host_aliases_commands_and_users() {
        let mut db = container("db", "postgres:16");
        db.entrypoint = "docker-entrypoint.sh".into();
        db.command = "postgres -c 'max_connections=5'".into();
        db.user = "999:998".into();
        db.env_vars = vec![EnvVar {
            name: "POSTGRES_PASSWORD".into(),
            value: encode_base64(b"pw"),
        }];
        let pod = build(
            &Decorator::default(),
            &[container("main", "ruby"), db, container("cache", "redis")],
            &[],
        )
        .unwrap();
        let spec = &pod["spec"];
        assert_eq!(
            spec["hostAliases"],
            json!([{"ip": "127.0.0.1", "hostnames": ["db", "cache"]}])
        );
        let db = &spec["containers"][1];
        assert_eq!(db["name"], "db");
        assert_eq!(db["command"], json!(["docker-entrypoint.sh"]));
        assert_eq!(db["args"], json!(["postgres", "-c", "max_connections=5"]));
        assert_eq!(
            db["securityContext"],
            json!({"runAsUser": 999, "runAsGroup": 998})
        );
        assert_eq!(
            db["env"],
            json!([{"name": "POSTGRES_PASSWORD", "value": "pw"}])
        );
        let cache = &spec["containers"][2];
        assert!(cache.get("command").is_none() && cache.get("args").is_none());
    }

    #[test]
    fn a_user_name_cannot_be_expressed_in_a_pod() {
        let mut db = container("db", "postgres");
        db.user = "postgres".into();
        let err = build(&Decorator::default(), &[container("main", "r"), db], &[]).unwrap_err();
        assert!(err.to_string().contains("'postgres'"), "{err}");
    }

    #[test]
    fn the_decorator_is_kept_and_extended() {
        let config_map = json!({"data": {
            "pod": "hostAliases: [{ip: 10.0.0.1, hostnames: [x]}]\nvolumes:\n- name: cache\n  emptyDir: {}\nimagePullSecrets: [{name: mine}]\n",
            "mainContainer": "env: [{name: FROM_DECORATOR, value: '1'}]\nresources:\n  limits: {cpu: '1'}\n",
            "sidecarContainers": "resources:\n  limits: {memory: 1Gi}\n",
        }});
        let decorator = Decorator::from_config_map("deco", &config_map).unwrap();
        let mut main = container("main", "ruby");
        main.env_vars = vec![EnvVar {
            name: "JOB".into(),
            value: encode_base64(b"2"),
        }];
        let pod = build(&decorator, &[main.clone()], &[]).unwrap();
        let spec = &pod["spec"];
        assert_eq!(
            spec["hostAliases"],
            json!([{"ip": "10.0.0.1", "hostnames": ["x"]}])
        );
        assert_eq!(spec["volumes"][0]["name"], "cache");
        assert_eq!(spec["volumes"][1]["name"], "environment");
        assert_eq!(
            spec["imagePullSecrets"],
            json!([{"name": "mine"}, {"name": "semaphore-job-1-image-pull-secret"}])
        );
        let m = &spec["containers"][0];
        assert_eq!(
            m["env"],
            json!([{"name": "FROM_DECORATOR", "value": "1"}, {"name": "JOB", "value": "2"}])
        );
        assert_eq!(m["resources"]["limits"]["cpu"], "1");
        let pod = build(&decorator, &[main, container("db", "pg")], &[]).unwrap();
        assert_eq!(
            pod["spec"]["containers"][1]["resources"]["limits"]["memory"],
            "1Gi"
        );
        assert_eq!(
            pod["spec"]["hostAliases"],
            json!([{"ip": "127.0.0.1", "hostnames": ["db"]}])
        );
        let bad = json!({"data": {"pod": "- a list"}});
        let err = Decorator::from_config_map("deco", &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("deco") && err.contains("pod"), "{err}");
    }

    #[test]
    fn the_env_secret_holds_the_env_file_and_each_file_by_encoded_path() {
        let files = vec![File {
            path: "~/.ssh/id_rsa".into(),
            content: encode_base64(&[0xff, 0x00, b'k']),
            mode: "0600".into(),
        }];
        let secret = env_secret("s", "ns", &labels(), b"export A='x'\n", &files).unwrap();
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(secret["immutable"], true);
        assert_eq!(secret["data"][".env"], b64(b"export A='x'\n"));
        let key = file_key("~/.ssh/id_rsa");
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(secret["data"][key.as_str()], b64(&[0xff, 0x00, b'k']));
        let bad = vec![File {
            path: "x".into(),
            content: "%%%".into(),
            mode: "0600".into(),
        }];
        assert!(env_secret("s", "ns", &[], b"", &bad).is_err());
    }

    #[test]
    fn pull_credentials_become_a_docker_config() {
        let creds = ImagePullCredentials {
            env_vars: vec![
                EnvVar {
                    name: "DOCKER_CREDENTIAL_TYPE".into(),
                    value: encode_base64(b"GenericDocker"),
                },
                EnvVar {
                    name: "DOCKER_URL".into(),
                    value: encode_base64(b"registry.example.com"),
                },
                EnvVar {
                    name: "DOCKER_USERNAME".into(),
                    value: encode_base64(b"u"),
                },
                EnvVar {
                    name: "DOCKER_PASSWORD".into(),
                    value: encode_base64(b"p"),
                },
            ],
            files: Vec::new(),
        };
        let config: Value = serde_json::from_slice(&docker_config_json(&[creds]).unwrap()).unwrap();
        assert_eq!(
            config,
            json!({"auths": {"registry.example.com": {"username": "u", "password": "p", "auth": b64(b"u:p")}}})
        );
        let unknown = ImagePullCredentials {
            env_vars: vec![EnvVar {
                name: "DOCKER_CREDENTIAL_TYPE".into(),
                value: encode_base64(b"Nope"),
            }],
            files: Vec::new(),
        };
        assert_eq!(
            docker_config_json(&[unknown]).unwrap_err().to_string(),
            "unknown DOCKER_CREDENTIAL_TYPE: 'Nope'"
        );
    }

    #[test]
    fn pod_status_is_read_like_go() {
        let pending = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}});
        assert!(
            matches!(pod_progress(&pending), PodProgress::Waiting(m) if m.starts_with("pod in pending state"))
        );
        let pulling = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "main", "image": "nope:1", "ready": false, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}}]}});
        assert_eq!(
            pod_progress(&pulling),
            PodProgress::Failed(
                "failed to pull image for 'main': [container 'nope:1' waiting - reason='ImagePullBackOff', message='back-off']".into()
            )
        );
        let done =
            json!({"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted"}});
        assert!(
            matches!(pod_progress(&done), PodProgress::Failed(m) if m.contains("already finished with status Failed - reason: 'Evicted'"))
        );
        let starting = json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "main", "image": "r", "ready": false, "state": {"running": {"startedAt": "t"}}}]}});
        assert!(
            matches!(pod_progress(&starting), PodProgress::Waiting(m) if m.starts_with("container 'main' is not ready yet"))
        );
        let ready = json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "main", "image": "r", "ready": true, "state": {"running": {"startedAt": "t"}}}]}});
        assert_eq!(pod_progress(&ready), PodProgress::Ready);
    }

    #[test]
    fn words_split_like_a_shell_without_expansion() {
        assert_eq!(
            split_words(r#"a "b c" 'd e' f\ g $X"#).unwrap(),
            vec!["a", "b c", "d e", "f g", "$X"]
        );
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert!(split_words("'open").is_none());
    }
}
