//! A fake Kubernetes API server and a `kubectl` stand-in, for tests only.
//!
//! [`FakeKube`] answers the calls the agent's Kubernetes executor makes
//! (ConfigMaps, Secrets, Pods in one namespace) over HTTPS on 127.0.0.1:
//! a plain tiny_http server behind the TLS front of `tls.rs`, with a
//! certificate from a private CA and a bearer token, laid out as a pod's
//! service account directory. It records every request, moves a created
//! pod from Pending to Running/Ready after a few GETs (or answers an image
//! pull error, or keeps it pending), injects 401/404/409/5xx answers on
//! demand, writes every object it receives to a directory (for
//! kubernetes-validate) and puts the job's secret where the stand-in "pod"
//! reads it. Every thread is named and joined on drop. It must not reach
//! anything but 127.0.0.1.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::tls::{TestCa, TlsFront};

/// The bearer token of the fake service account.
pub const KUBE_TOKEN: &str = "fake-service-account-token";

/// One request as the fake API server saw it.
#[derive(Debug, Clone)]
pub struct KubeRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub authorization: Option<String>,
    pub body: Option<Value>,
}

/// How a created pod behaves while the agent waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodBehaviour {
    /// Pending for this many GETs, then Running with every container ready.
    ReadyAfter(u32),
    /// Pending with the main container in `ImagePullBackOff`.
    PullError,
    /// Pending for ever.
    Stuck,
}

struct State {
    requests: Vec<KubeRequest>,
    config_maps: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Value>,
    /// Each pod and how many times it was read.
    pods: BTreeMap<String, (Value, u32)>,
    behaviour: PodBehaviour,
    /// (method, resource kind, status) answered once each, in order, by
    /// the first matching request.
    faults: VecDeque<(String, String, u16)>,
    token: String,
    objects_written: usize,
    /// `METHOD path` of the upgrades refused.
    upgrades: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    namespace: String,
    objects_dir: PathBuf,
    injected_dir: PathBuf,
}

/// The fake API server.
pub struct FakeKube {
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    front: TlsFront,
    /// The service account directory (`token`, `ca.crt`, `namespace`).
    pub service_account: PathBuf,
}

impl FakeKube {
    /// Starts the server for `namespace`; files go under `dir`.
    pub fn start(dir: &Path, namespace: &str) -> FakeKube {
        let service_account = dir.join("serviceaccount");
        let objects_dir = dir.join("objects");
        let injected_dir = dir.join("injected");
        for d in [&service_account, &objects_dir, &injected_dir] {
            std::fs::create_dir_all(d).expect("create fake kube dirs");
        }
        let ca = TestCa::new("fake kubernetes CA");
        ca.write_pem(&service_account.join("ca.crt"));
        std::fs::write(service_account.join("token"), KUBE_TOKEN).expect("write the token");
        std::fs::write(service_account.join("namespace"), namespace).expect("write namespace");

        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake kube"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requests: Vec::new(),
                config_maps: BTreeMap::new(),
                secrets: BTreeMap::new(),
                pods: BTreeMap::new(),
                behaviour: PodBehaviour::ReadyAfter(2),
                faults: VecDeque::new(),
                token: KUBE_TOKEN.to_string(),
                objects_written: 0,
                upgrades: Vec::new(),
            }),
            namespace: namespace.to_string(),
            objects_dir,
            injected_dir,
        });
        let quit = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, shared, quit) = (server.clone(), shared.clone(), quit.clone());
            std::thread::Builder::new()
                .name("fake-kube".into())
                .spawn(move || {
                    while !quit.load(Ordering::SeqCst) {
                        match server.recv_timeout(Duration::from_millis(50)) {
                            Ok(Some(request)) => handle(&shared, request),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                })
                .expect("start the fake kube thread")
        };
        let front = TlsFront::start(ca.issue(&["127.0.0.1"]), port);
        FakeKube {
            shared,
            server,
            quit,
            thread: Some(thread),
            front,
            service_account,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The HTTPS port (KUBERNETES_SERVICE_PORT).
    pub fn port(&self) -> u16 {
        self.front.port()
    }

    /// Where every received object is written as JSON.
    pub fn objects_dir(&self) -> PathBuf {
        self.shared.objects_dir.clone()
    }

    /// Where the job's secret appears once its pod is created (the
    /// stand-in for the pod's `/tmp/injected` mount).
    pub fn injected_dir(&self) -> PathBuf {
        self.shared.injected_dir.clone()
    }

    /// The agent's environment for running in this "cluster": in-cluster
    /// settings pointing here, and the debug-build knobs.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), self.port().to_string()),
            ("KUBERNETES_NAMESPACE".into(), self.shared.namespace.clone()),
            (
                "SEMAPHORE_AGENT_TEST_SERVICE_ACCOUNT_DIR".into(),
                self.service_account.display().to_string(),
            ),
            (
                "SEMAPHORE_AGENT_TEST_KUBERNETES_INJECTED_DIR".into(),
                self.injected_dir().display().to_string(),
            ),
            (
                "SEMAPHORE_AGENT_TEST_KUBERNETES_POLL_MS".into(),
                "100".into(),
            ),
        ]
    }

    pub fn set_behaviour(&self, behaviour: PodBehaviour) {
        self.lock().behaviour = behaviour;
    }

    /// Answers the next `method` on `kind` (`pods`, `secrets`,
    /// `configmaps`) with `status`.
    pub fn fail_next(&self, method: &str, kind: &str, status: u16) {
        self.lock()
            .faults
            .push_back((method.to_string(), kind.to_string(), status));
    }

    /// Accepts only `token` from now on (a rotated service account token).
    pub fn rotate_token(&self, token: &str) {
        self.lock().token = token.to_string();
    }

    pub fn add_config_map(&self, name: &str, data: Value) {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.shared.namespace}, "data": data});
        self.lock().config_maps.insert(name.to_string(), cm);
    }

    pub fn requests(&self) -> Vec<KubeRequest> {
        self.lock().requests.clone()
    }

    /// `METHOD path` of the upgrades refused so far.
    pub fn upgrades(&self) -> Vec<String> {
        self.lock().upgrades.clone()
    }

    /// `METHOD path` of every request, in order.
    pub fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// The body of the first POST to `kind` whose name is `name`.
    pub fn created(&self, kind: &str, name: &str) -> Option<Value> {
        self.requests().into_iter().find_map(|r| {
            (r.method == "POST"
                && r.path.ends_with(&format!("/{kind}"))
                && r.body.as_ref()?["metadata"]["name"] == name)
                .then_some(r.body)
                .flatten()
        })
    }

    /// Names of the pods and secrets that exist now.
    pub fn live_objects(&self) -> Vec<String> {
        let s = self.lock();
        s.pods
            .keys()
            .map(|n| format!("pods/{n}"))
            .chain(s.secrets.keys().map(|n| format!("secrets/{n}")))
            .collect()
    }

    /// Waits until nothing of any job is left; false on timeout.
    pub fn wait_until_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.live_objects().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.live_objects().is_empty()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": reason, "code": code})
    .to_string()
}

fn respond(request: tiny_http::Request, code: u16, body: String) {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("a valid header");
    let _ = request.respond(
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header),
    );
}

fn handle(shared: &Shared, mut request: tiny_http::Request) {
    let method = request.method().as_str().to_string();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    // Like an API server behind a proxy that passes no upgrade: the
    // agent's exec WebSocket (a GET) and SPDY exec (a POST) are both
    // refused (the body is the raw connection, never read here), so the
    // agent falls back to `kubectl exec` (the stand-in).
    if request.headers().iter().any(|h| h.field.equiv("Upgrade")) {
        shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrades
            .push(format!("{method} {path}"));
        return respond(
            request,
            400,
            status_body(
                400,
                "BadRequest",
                "the fake Kubernetes API does not upgrade",
            ),
        );
    }
    let authorization = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_string());
    let mut text = String::new();
    let _ = request.as_reader().read_to_string(&mut text);
    let body: Option<Value> = serde_json::from_str(&text).ok();
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    s.requests.push(KubeRequest {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    if authorization.as_deref() != Some(&format!("Bearer {}", s.token)) {
        drop(s);
        return respond(
            request,
            401,
            status_body(401, "Unauthorized", "Unauthorized"),
        );
    }
    let prefix = format!("/api/v1/namespaces/{}/", shared.namespace);
    let Some(rest) = path.strip_prefix(&prefix) else {
        drop(s);
        return respond(
            request,
            404,
            status_body(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let (kind, name) = match rest.split_once('/') {
        Some((kind, name)) => (kind.to_string(), Some(name.to_string())),
        None => (rest.to_string(), None),
    };
    if let Some(at) = s
        .faults
        .iter()
        .position(|(m, k, _)| *m == method && *k == kind)
    {
        let (_, _, code) = s.faults.remove(at).unwrap_or_default();
        drop(s);
        let reason = match code {
            401 => "Unauthorized",
            404 => "NotFound",
            409 => "AlreadyExists",
            _ => "InternalError",
        };
        return respond(
            request,
            code,
            status_body(
                code,
                reason,
                &format!("injected {code} for {method} {kind}"),
            ),
        );
    }
    let (code, answer) = match (method.as_str(), name) {
        ("POST", None) => create(shared, &mut s, &kind, body),
        ("GET", Some(name)) => get(&mut s, &kind, &name),
        // As the executor's Role (the Helm chart's) answers a list.
        ("GET", None) => (
            403,
            status_body(
                403,
                "Forbidden",
                &format!(
                    "{kind} is forbidden: User \"system:serviceaccount:{ns}:agent\" cannot list \
                     resource \"{kind}\" in API group \"\" in the namespace \"{ns}\"",
                    ns = shared.namespace
                ),
            ),
        ),
        ("DELETE", Some(name)) => {
            let removed = match kind.as_str() {
                "pods" => s.pods.remove(&name).map(|(p, _)| p),
                "secrets" => s.secrets.remove(&name),
                _ => None,
            };
            match removed {
                Some(object) => (200, object.to_string()),
                None => (
                    404,
                    status_body(404, "NotFound", &format!("{kind} \"{name}\" not found")),
                ),
            }
        }
        _ => (
            405,
            status_body(405, "MethodNotAllowed", "not supported by the fake"),
        ),
    };
    drop(s);
    respond(request, code, answer)
}

fn create(shared: &Shared, s: &mut State, kind: &str, body: Option<Value>) -> (u16, String) {
    let Some(object) = body else {
        return (400, status_body(400, "BadRequest", "no JSON body"));
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    s.objects_written += 1;
    let file = shared
        .objects_dir
        .join(format!("{:03}-{kind}-{name}.json", s.objects_written));
    let _ = std::fs::write(
        file,
        serde_json::to_string_pretty(&object).unwrap_or_default(),
    );
    let exists = match kind {
        "pods" => s.pods.contains_key(&name),
        "secrets" => s.secrets.contains_key(&name),
        _ => return (404, status_body(404, "NotFound", "unknown resource")),
    };
    if exists {
        return (
            409,
            status_body(
                409,
                "AlreadyExists",
                &format!("{kind} \"{name}\" already exists"),
            ),
        );
    }
    if kind == "secrets" {
        s.secrets.insert(name, object.clone());
    } else {
        materialize_secret(shared, s, &object);
        s.pods.insert(name, (object.clone(), 0));
    }
    (201, object.to_string())
}

/// What the kubelet would mount: the pod's `environment` secret volume,
/// decoded into the injected dir.
fn materialize_secret(shared: &Shared, s: &State, pod: &Value) {
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(secret_name) = volumes
        .iter()
        .find(|v| v["name"] == "environment")
        .and_then(|v| v["secret"]["secretName"].as_str())
    else {
        return;
    };
    let Some(secret) = s.secrets.get(secret_name) else {
        return;
    };
    if let Some(data) = secret["data"].as_object() {
        for (key, value) in data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap_or(""))
                .unwrap_or_default();
            let _ = std::fs::write(shared.injected_dir.join(key), bytes);
        }
    }
}

fn get(s: &mut State, kind: &str, name: &str) -> (u16, String) {
    let not_found = || {
        (
            404,
            status_body(404, "NotFound", &format!("{kind} \"{name}\" not found")),
        )
    };
    match kind {
        "configmaps" => s
            .config_maps
            .get(name)
            .map_or_else(not_found, |cm| (200, cm.to_string())),
        "secrets" => s
            .secrets
            .get(name)
            .map_or_else(not_found, |x| (200, x.to_string())),
        "pods" => {
            let behaviour = s.behaviour;
            let Some((pod, gets)) = s.pods.get_mut(name) else {
                return not_found();
            };
            *gets += 1;
            let mut pod = pod.clone();
            pod["status"] = pod_status(&pod, behaviour, *gets);
            (200, pod.to_string())
        }
        _ => not_found(),
    }
}

fn pod_status(pod: &Value, behaviour: PodBehaviour, gets: u32) -> Value {
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses = |state: Value, ready: bool| -> Vec<Value> {
        containers
            .iter()
            .map(
                |c| json!({"name": c["name"], "image": c["image"], "ready": ready, "state": state}),
            )
            .collect()
    };
    match behaviour {
        PodBehaviour::ReadyAfter(n) if gets > n => json!({
            "phase": "Running",
            "containerStatuses": statuses(json!({"running": {"startedAt": "2024-01-01T00:00:00Z"}}), true),
        }),
        PodBehaviour::PullError if gets > 1 => json!({
            "phase": "Pending",
            "containerStatuses": statuses(json!({"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image"}}), false),
        }),
        _ if gets <= 1 => json!({"phase": "Pending"}),
        _ => json!({
            "phase": "Pending",
            "containerStatuses": statuses(json!({"waiting": {"reason": "ContainerCreating"}}), false),
        }),
    }
}

/// Writes the `kubectl` stand-in into `bin` and returns the environment it
/// needs: a script named `kubectl` that is NOT kubectl. It accepts only
/// `exec -it -n <namespace> semaphore-job-<id> -c main -- bash --login`,
/// records the arguments, and starts a local login bash with a clean
/// environment in `pod_home` in place of the pod's container (or, with
/// `KUBECTL_STAND_IN_FAIL` set, prints it and exits 1 as a refused exec).
pub fn kubectl_stand_in(bin: &Path, namespace: &str, pod_home: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(bin).expect("create the stand-in bin dir");
    std::fs::create_dir_all(pod_home).expect("create the stand-in pod home");
    let script = bin.join("kubectl");
    std::fs::write(
        &script,
        r#"#!/usr/bin/env bash
# kubectl STAND-IN for the agent's tests: not the real kubectl. It checks
# the arguments of the exec step and runs a local login bash instead.
printf '%s\n' "$*" >> "$KUBECTL_STAND_IN_LOG"
if [ $# -ne 10 ] || [ "$1" != exec ] || [ "$2" != -it ] || [ "$3" != -n ] \
   || [ "$4" != "$KUBECTL_STAND_IN_NAMESPACE" ] || [[ "$5" != semaphore-job-* ]] \
   || [ "$6" != -c ] || [ "$7" != main ] || [ "$8" != -- ] || [ "$9" != bash ] \
   || [ "${10}" != --login ]; then
    echo "kubectl stand-in: unexpected arguments: $*" >&2
    exit 2
fi
[ -t 0 ] || { echo "kubectl stand-in: -it needs a terminal" >&2; exit 3; }
if [ -n "$KUBECTL_STAND_IN_FAIL" ]; then
    echo "$KUBECTL_STAND_IN_FAIL" >&2
    exit 1
fi
cd "$KUBECTL_STAND_IN_POD_HOME" || exit 4
exec env -i HOME="$KUBECTL_STAND_IN_POD_HOME" PATH=/usr/local/bin:/usr/bin:/bin TERM=xterm bash --login
"#,
    )
    .expect("write the kubectl stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("make the stand-in executable");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    vec![
        ("PATH".into(), path),
        (
            "KUBECTL_STAND_IN_LOG".into(),
            bin.join("kubectl.log").display().to_string(),
        ),
        ("KUBECTL_STAND_IN_NAMESPACE".into(), namespace.into()),
        (
            "KUBECTL_STAND_IN_POD_HOME".into(),
            pod_home.display().to_string(),
        ),
    ]
}

/// This machine's PATH without any directory holding a kubectl (the real
/// cluster's, one in /usr/bin): for an agent that must not need one.
pub fn path_without_kubectl() -> String {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let dirs: Vec<&str> = path
        .split(':')
        .filter(|d| !d.is_empty() && !Path::new(d).join("kubectl").exists())
        .collect();
    dirs.join(":")
}
