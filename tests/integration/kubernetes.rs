//! `semaphore-agent start --kubernetes-executor` end to end: the real
//! binary against the fake control plane (tests/support/hub.rs) and a fake
//! Kubernetes API server over TLS with a private CA and a service account
//! token (tests/support/kube.rs), with a `kubectl` STAND-IN on PATH for the
//! exec step (it checks its arguments and runs a local login bash as the
//! "pod"). Covers the Go agent's event stream, the objects created (checked
//! against the Kubernetes OpenAPI schema with kubernetes-validate when it
//! is installed; required with CI=true) and what a real API server will not
//! do on demand: injected 401/409/5xx answers, a refused WebSocket upgrade
//! (the kubectl stand-in is the fallback), a kubectl that fails, a pod that
//! stays Pending while the job is stopped. Everything a real cluster can
//! show runs on one: tests/integration/kubernetes_cluster.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::agent::Agent;
use crate::support::events::{commands, step, steps};
use crate::support::hub::Hub;
use crate::support::kube::{
    kubectl_stand_in, path_without_kubectl, FakeKube, PodBehaviour, KUBE_TOKEN,
};
use crate::support::{self, b64, Sandbox, WAIT};

const NAMESPACE: &str = "ci-jobs";

/// Everything one test needs: a sandbox, the hub, the fake cluster and the
/// stand-in "pod" home.
struct Cluster {
    sandbox: Sandbox,
    hub: Hub,
    kube: FakeKube,
    pod_home: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let sandbox = Sandbox::new();
        let hub = Hub::start();
        let kube = FakeKube::start(&sandbox.path("kube"), NAMESPACE);
        let pod_home = sandbox.path("pod-home");
        Cluster {
            sandbox,
            hub,
            kube,
            pod_home,
        }
    }

    /// The agent with `--kubernetes-executor` and `extra`, in the fake
    /// cluster, with the kubectl stand-in first on PATH.
    fn agent(&self, extra: &[&str]) -> Agent {
        self.agent_with(extra, self.kube.agent_env())
    }

    /// [`Cluster::agent`] with `env` for reaching the cluster.
    fn agent_with(&self, extra: &[&str], mut env: Vec<(String, String)>) -> Agent {
        env.extend(kubectl_stand_in(
            &self.sandbox.path("bin"),
            NAMESPACE,
            &self.pod_home,
        ));
        let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let mut args = vec!["--no-https", "--kubernetes-executor"];
        args.extend(extra);
        Agent::start(&self.sandbox, &self.hub.endpoint(), &args, &env)
    }

    fn run(&self, job: Value) -> (String, Vec<Value>) {
        let id = self.hub.queue_job(job);
        let result = self.hub.wait_for_result(&id, WAIT);
        let events = self.hub.events(&id);
        assert!(result.is_some(), "job never finished: {events:#?}");
        (result.unwrap_or_default(), events)
    }

    fn kubectl_calls(&self) -> String {
        std::fs::read_to_string(self.sandbox.path("bin").join("kubectl.log")).unwrap_or_default()
    }
}

/// kubernetes-validate, if this machine has it: KUBERNETES_VALIDATE, the
/// venv `.ci/kubernetes.sh` makes, or PATH.
fn kubernetes_validate() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBERNETES_VALIDATE") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/kubernetes-validate/bin/kubernetes-validate");
    if venv.is_file() {
        return Some(venv);
    }
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| PathBuf::from("kubernetes-validate"))
}

/// Every object the agent sent, valid against the Kubernetes OpenAPI
/// schema (strict: unknown fields are errors). Skipped with a reason
/// without kubernetes-validate, except with CI=true.
fn assert_objects_valid(kube: &FakeKube, at_least: usize) {
    let files: Vec<PathBuf> = std::fs::read_dir(kube.objects_dir())
        .expect("objects dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert!(
        files.len() >= at_least,
        "only {} objects: {files:?}",
        files.len()
    );
    let Some(validate) = kubernetes_validate() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubernetes-validate is required with CI=true (run .ci/kubernetes.sh)"
        );
        eprintln!(
            "SKIPPED schema validation: kubernetes-validate not installed (run .ci/kubernetes.sh)"
        );
        return;
    };
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "objects rejected by the Kubernetes schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_job_runs_in_its_own_pod_with_env_and_files_and_nothing_is_left() {
    let c = Cluster::new();
    let mut agent = c.agent(&[
        "--kubernetes-default-image",
        "registry.example.com/ci:1",
        "--kubernetes-labels",
        "app=semaphore,example.com/team=ci",
        "--env-vars",
        "FROM_AGENT=agent value",
    ]);
    let (result, events) = c.run(json!({
        "job_id": "job-ok",
        "env_vars": [{"name": "GREETING", "value": b64("it's a \"test\" $HOME")}],
        "files": [
            {"path": "notes/a b.txt", "content": b64("hello file\n"), "mode": "0640"},
            {"path": "/tmp/../tmp/abs.txt", "content": b64("abs\n"), "mode": "0600"},
        ],
        "commands": commands(&[
            "echo \"$GREETING|$FROM_AGENT\"",
            "cat ~/'notes/a b.txt'; stat -c %a ~/'notes/a b.txt'",
            "cd /tmp && pwd",
        ]),
    }));
    let steps = steps(&events);
    assert_eq!(result, "passed", "{steps:#?}");
    let directives: Vec<&str> = steps.iter().map(|(d, _, _)| d.as_str()).collect();
    assert_eq!(
        &directives[..5],
        &[
            "Creating Kubernetes resources for job...",
            "Starting shell session...",
            "Exporting environment variables",
            "Injecting Files",
            "echo \"$GREETING|$FROM_AGENT\"",
        ]
    );
    let (_, start, code) = step(&steps, "Starting shell session...");
    assert_eq!(*code, 0);
    assert!(start.contains("pod in pending state"), "{start}");
    for line in [
        "Pod is ready.\n",
        "Starting a new bash session in the pod...\n",
        "Shell session is ready.\n",
        "User: ",
        "User identity: uid=",
        &format!("Working directory: {}\n", c.pod_home.display()),
    ] {
        assert!(start.contains(line), "{line:?} not in {start:?}");
    }
    let (_, exported, _) = step(&steps, "Exporting environment variables");
    assert_eq!(exported, "Exporting FROM_AGENT\nExporting GREETING\n");
    let (_, injected, code) = step(&steps, "Injecting Files");
    assert_eq!(*code, 0);
    assert_eq!(
        injected,
        "Injecting notes/a b.txt with file mode 0640\nInjecting /tmp/../tmp/abs.txt with file mode 0600\n"
    );
    let (_, out, _) = step(&steps, "echo \"$GREETING|$FROM_AGENT\"");
    assert_eq!(out, "it's a \"test\" $HOME|agent value\n");
    let (_, out, _) = step(
        &steps,
        "cat ~/'notes/a b.txt'; stat -c %a ~/'notes/a b.txt'",
    );
    assert_eq!(out, "hello file\n640\n");

    // The objects, their order and their cleanup.
    let pod = "semaphore-job-job-ok";
    let base = format!("/api/v1/namespaces/{NAMESPACE}");
    let calls = c.kube.calls();
    // Outside a cluster, first a look for what an earlier run left, which
    // the executor's Role (no list) refuses.
    assert_eq!(calls[0], format!("GET {base}/pods"));
    assert_eq!(calls[1], format!("POST {base}/secrets"));
    assert_eq!(calls[2], format!("POST {base}/pods"));
    assert!(calls[3..]
        .iter()
        .any(|c| c == &format!("GET {base}/pods/{pod}")));
    let tail = &calls[calls.len() - 2..];
    assert_eq!(
        tail,
        &[
            format!("DELETE {base}/pods/{pod}"),
            format!("DELETE {base}/secrets/{pod}-secret"),
        ]
    );
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
    assert!(c
        .kube
        .requests()
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {KUBE_TOKEN}"))));
    let secret = c
        .kube
        .created("secrets", &format!("{pod}-secret"))
        .expect("secret");
    assert_eq!(secret["immutable"], true);
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["labels"]["example.com/team"], "ci");
    let env = support::b64_decode(secret["data"][".env"].as_str().unwrap_or(""));
    assert!(
        env.contains("export FROM_AGENT=") && env.contains("export GREETING="),
        "{env}"
    );
    let created = c.kube.created("pods", pod).expect("pod");
    assert_eq!(
        created["spec"]["containers"][0]["image"],
        "registry.example.com/ci:1"
    );
    assert_eq!(created["metadata"]["labels"]["app"], "semaphore");
    assert_eq!(
        created["metadata"]["labels"]["semaphoreci.com/agent"],
        "agent-under-test"
    );
    assert_eq!(
        secret["metadata"]["labels"]["semaphoreci.com/agent"],
        "agent-under-test"
    );
    assert!(created["metadata"].get("ownerReferences").is_none());
    // The exec went to the WebSocket first, then SPDY; the fake refused
    // both upgrades, so kubectl was the last resort.
    assert_eq!(
        c.kube.upgrades(),
        [
            format!("GET {base}/pods/{pod}/exec"),
            format!("POST {base}/pods/{pod}/exec")
        ]
    );
    assert_eq!(
        c.kubectl_calls(),
        format!("exec -it -n {NAMESPACE} {pod} -c main -- bash --login\n")
    );
    assert_objects_valid(&c.kube, 2);

    // The secret's values never reach the agent's own log.
    let log = agent.log();
    assert!(
        !log.contains("agent value") && !log.contains(KUBE_TOKEN),
        "{log}"
    );
    assert!(
        log.contains("Not looking for objects an earlier run of agent-under-test left: the Role grants no list"),
        "{log}"
    );
    let fallback: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("without kubectl was refused"))
        .collect();
    assert_eq!(fallback.len(), 1, "{log}");
    let refused = "the WebSocket exec was refused: HTTP 400: the fake Kubernetes API does not \
                   upgrade; the SPDY/3.1 exec was refused: HTTP 400: the fake Kubernetes API \
                   does not upgrade";
    assert!(
        fallback[0].contains(refused) && fallback[0].contains("falling back to kubectl exec"),
        "{log}"
    );
    // The job log says so too.
    let (_, start, _) = step(&steps, "Starting shell session...");
    assert!(
        start.contains(&format!(
            "Exec without kubectl was refused ({refused}); trying kubectl exec\n"
        )),
        "{start}"
    );
    // What the job used is only kubectl's share here, and the line says
    // so; the refused bridge ran nothing and has no line.
    let usage: Vec<&str> = log.lines().filter(|l| l.contains("Job used ")).collect();
    assert_eq!(usage.len(), 1, "{log}");
    assert!(
        usage[0].contains("launcher only; the job ran in a container or pod)"),
        "{log}"
    );
    c.hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

#[test]
fn sidecars_a_decorator_and_pull_credentials_shape_the_pod() {
    let c = Cluster::new();
    c.kube.add_config_map(
        "semaphore-pod-spec",
        json!({
            "pod": "nodeSelector: {pool: ci}\nvolumes: [{name: cache, emptyDir: {}}]\n",
            "mainContainer": "resources: {limits: {cpu: '2'}}\nvolumeMounts: [{name: cache, mountPath: /cache}]\n",
            "sidecarContainers": "resources: {limits: {memory: 1Gi}}\n",
        }),
    );
    let mut agent = c.agent(&["--kubernetes-pod-spec", "semaphore-pod-spec"]);
    let (result, events) = c.run(json!({
        "job_id": "job-sidecars",
        "compose": {
            "containers": [
                {"name": "main", "image": "ruby:3", "env_vars": [{"name": "IN_MAIN", "value": b64("1")}]},
                {"name": "db", "image": "postgres:16", "command": "postgres -c 'fsync=off'",
                 "entrypoint": "docker-entrypoint.sh", "user": "999",
                 "env_vars": [{"name": "POSTGRES_PASSWORD", "value": b64("pw")}]},
                {"name": "cache", "image": "redis:7"},
            ],
            "image_pull_credentials": [{"env_vars": [
                {"name": "DOCKER_CREDENTIAL_TYPE", "value": b64("DockerHub")},
                {"name": "DOCKERHUB_USERNAME", "value": b64("user")},
                {"name": "DOCKERHUB_PASSWORD", "value": b64("secret-pw")},
            ]}],
        },
        "commands": commands(&["echo in the pod"]),
    }));
    assert_eq!(result, "passed", "{:#?}", steps(&events));
    let pod_name = "semaphore-job-job-sidecars";
    let pod = c.kube.created("pods", pod_name).expect("pod");
    let spec = &pod["spec"];
    assert_eq!(spec["nodeSelector"]["pool"], "ci");
    assert_eq!(
        spec["hostAliases"],
        json!([{"ip": "127.0.0.1", "hostnames": ["db", "cache"]}])
    );
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": format!("{pod_name}-image-pull-secret")}])
    );
    let main = &spec["containers"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(main["resources"]["limits"]["cpu"], "2");
    assert_eq!(main["env"], json!([{"name": "IN_MAIN", "value": "1"}]));
    assert_eq!(main["volumeMounts"][0]["mountPath"], "/cache");
    let db = &spec["containers"][1];
    assert_eq!(db["command"], json!(["docker-entrypoint.sh"]));
    assert_eq!(db["args"], json!(["postgres", "-c", "fsync=off"]));
    assert_eq!(db["securityContext"]["runAsUser"], 999);
    assert_eq!(db["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(spec["containers"][2]["name"], "cache");
    let pull = c
        .kube
        .created("secrets", &format!("{pod_name}-image-pull-secret"))
        .expect("pull secret");
    assert_eq!(pull["type"], "kubernetes.io/dockerconfigjson");
    let config: Value = serde_json::from_str(&support::b64_decode(
        pull["data"][".dockerconfigjson"].as_str().unwrap_or(""),
    ))
    .expect("docker config JSON");
    assert_eq!(config["auths"]["docker.io"]["username"], "user");
    assert_eq!(config["auths"]["docker.io"]["password"], "secret-pw");
    assert!(c.kube.calls().contains(&format!(
        "GET /api/v1/namespaces/{NAMESPACE}/configmaps/semaphore-pod-spec"
    )));
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
    assert_objects_valid(&c.kube, 3);
    assert!(!agent.log().contains("secret-pw"));
    c.hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

#[test]
fn api_errors_fail_the_job_with_the_api_s_message_or_are_waited_out() {
    let c = Cluster::new();
    let _agent = c.agent(&["--kubernetes-default-image", "img:1"]);
    // A conflict creating the secret: the job fails, naming the call.
    c.kube.fail_next("POST", "secrets", 409);
    let (result, events) = c.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let (_, out, _) = step(&steps(&events), "Creating Kubernetes resources for job...").clone();
    assert!(
        out.starts_with("Failed to create environment secret: creating secret 'semaphore-job-job-1-secret' in namespace 'ci-jobs' failed: HTTP 409: injected 409 for POST secrets"),
        "{out}"
    );
    // A server error while the pod starts is shown and waited out.
    c.kube.fail_next("GET", "pods", 503);
    let (result, events) = c.run(json!({"commands": commands(&["echo fine"])}));
    let (_, out, _) = step(&steps(&events), "Starting shell session...").clone();
    assert_eq!(result, "passed", "{out}");
    assert!(out.contains("HTTP 503: injected 503 for GET pods"), "{out}");
    // The pod gone while the agent waits (404) will not come back: the
    // job fails at once, naming the pod.
    c.kube.fail_next("GET", "pods", 404);
    let (result, events) = c.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let (_, out, _) = step(&steps(&events), "Starting shell session...").clone();
    assert!(
        out.contains("Failed to create pod: getting pod 'semaphore-job-job-3' in namespace 'ci-jobs' failed: HTTP 404"),
        "{out}"
    );
    // A creation error after the secret: the secret is still deleted.
    c.kube.fail_next("POST", "pods", 500);
    let (result, _) = c.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
    // A rotated token is read again from the service account.
    c.kube.rotate_token("rotated-token");
    std::fs::write(c.kube.service_account.join("token"), "rotated-token").expect("rotate");
    let (result, events) = c.run(json!({"commands": commands(&["echo rotated"])}));
    assert_eq!(result, "passed", "{:#?}", steps(&events));
    // A token the API refuses: 401, named.
    c.kube.rotate_token("another-token");
    let (result, events) = c.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let (_, out, _) = step(&steps(&events), "Creating Kubernetes resources for job...").clone();
    assert!(out.contains("HTTP 401: Unauthorized"), "{out}");
}

#[test]
fn a_stop_while_the_pod_starts_ends_the_wait_and_cleans_up() {
    let c = Cluster::new();
    c.kube.set_behaviour(PodBehaviour::Stuck);
    let _agent = c.agent(&["--kubernetes-default-image", "img:1"]);
    let id = c
        .hub
        .queue_job(json!({"commands": commands(&["echo never"])}));
    assert!(
        c.hub
            .wait_until(WAIT, |h| h.output(&id).contains("pod in pending state")),
        "{:#?}",
        c.hub.events(&id)
    );
    c.hub.stop_job(&id);
    // The start timeout is 300 s: a result within WAIT means the stop
    // ended the wait.
    assert_eq!(c.hub.wait_for_result(&id, WAIT).as_deref(), Some("stopped"));
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
    assert!(c.kubectl_calls().is_empty());
}

#[test]
fn a_kubeconfig_reaches_the_cluster_outside_a_pod() {
    let c = Cluster::new();
    // No service account: KUBECONFIG with the CA as a file next to it and
    // a bearer token; the namespace still comes from KUBERNETES_NAMESPACE.
    let dir = c.sandbox.path("kubeconfig");
    std::fs::create_dir_all(&dir).expect("kubeconfig dir");
    std::fs::copy(c.kube.service_account.join("ca.crt"), dir.join("ca.crt")).expect("copy CA");
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             contexts:\n- name: fake\n  context: {{cluster: fake, user: agent}}\n\
             clusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: ca.crt\n\
             users:\n- name: agent\n  user:\n    token: {KUBE_TOKEN}\n",
            c.kube.port()
        ),
    )
    .expect("write kubeconfig");
    let env: Vec<(String, String)> = c
        .kube
        .agent_env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("KUBERNETES_SERVICE_") && !k.contains("SERVICE_ACCOUNT"))
        .chain([("KUBECONFIG".to_string(), config.display().to_string())])
        .collect();
    let _agent = c.agent_with(&["--kubernetes-default-image", "img:1"], env);
    let (result, events) = c.run(json!({"commands": commands(&["echo via kubeconfig"])}));
    assert_eq!(result, "passed", "{:#?}", steps(&events));
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
    // A kubeconfig that names no usable user credentials fails the job
    // with the file and the reason.
    std::fs::write(&config, "current-context: missing\n").expect("break kubeconfig");
    let (result, events) = c.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let (_, out, _) = step(&steps(&events), "Creating Kubernetes resources for job...").clone();
    assert!(
        out.contains("Failed to create the Kubernetes client") && out.contains("'missing'"),
        "{out}"
    );
}

#[test]
fn with_both_execs_refused_and_no_kubectl_the_job_fails_naming_kubectl_and_why() {
    let c = Cluster::new();
    let mut env = c.kube.agent_env();
    env.push(("PATH".into(), path_without_kubectl()));
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let agent = Agent::start(
        &c.sandbox,
        &c.hub.endpoint(),
        &[
            "--no-https",
            "--kubernetes-executor",
            "--kubernetes-default-image",
            "img:1",
        ],
        &env,
    );
    let (result, events) = c.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let (_, out, code) = step(&steps(&events), "Starting shell session...").clone();
    assert_eq!(code, 1);
    for line in [
        "Exec without kubectl was refused (the WebSocket exec was refused: HTTP 400: the fake \
         Kubernetes API does not upgrade; the SPDY/3.1 exec was refused: HTTP 400: the fake \
         Kubernetes API does not upgrade); trying kubectl exec\n",
        "Failed to start shell in kubernetes container\n",
        "cannot start the job's shell: starting kubectl: kubectl is not on PATH",
    ] {
        assert!(out.contains(line), "{line:?} not in {out}");
    }
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
    // No shell ran: no usage line.
    let log = agent.log();
    assert!(!log.contains("Job used "), "{log}");
}

#[test]
fn a_refused_kubectl_exec_fails_the_job_with_kubectl_s_words() {
    let c = Cluster::new();
    let mut env = c.kube.agent_env();
    env.push((
        "KUBECTL_STAND_IN_FAIL".into(),
        "Error from server (Forbidden): pods \"x\" is forbidden: cannot create resource \"pods/exec\"".into(),
    ));
    let _agent = c.agent_with(&["--kubernetes-default-image", "img:1"], env);
    let (result, events) = c.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let (_, out, code) = step(&steps(&events), "Starting shell session...").clone();
    assert_eq!(code, 1);
    assert!(out.contains("Pod is ready.\n"), "{out}");
    assert!(
        out.contains("Failed to start shell in kubernetes container\n"),
        "{out}"
    );
    assert!(
        out.contains("kubectl exited with status 1 while starting: Error from server (Forbidden)"),
        "{out}"
    );
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
}

/// Issue 30: GPUs for Kubernetes jobs come from the pod spec decorator;
/// the example in packaging/kubernetes/gpu-pod-spec.yaml, as shipped, puts
/// `nvidia.com/gpu` into the main container's limits only.
#[test]
fn the_gpu_decorator_example_gives_the_main_container_a_gpu() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kubernetes/gpu-pod-spec.yaml"),
    )
    .expect("the GPU decorator example");
    let map: Value = serde_yaml_ng::from_str(&text).expect("the example is YAML");
    assert_eq!(map["kind"], "ConfigMap");
    let name = map["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    let c = Cluster::new();
    c.kube.add_config_map(&name, map["data"].clone());
    let mut agent = c.agent(&["--kubernetes-pod-spec", &name]);
    let (result, events) = c.run(json!({
        "job_id": "job-gpu",
        "compose": {"containers": [
            {"name": "main", "image": "nvidia/cuda:12.4.1-base-ubuntu22.04"},
            {"name": "db", "image": "postgres:16"},
        ]},
        "commands": commands(&["echo gpu job"]),
    }));
    assert_eq!(result, "passed", "{:#?}", steps(&events));
    let pod = c
        .kube
        .created("pods", "semaphore-job-job-gpu")
        .expect("pod");
    let spec = &pod["spec"];
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        1
    );
    assert!(spec["containers"][1]["resources"]["limits"]["nvidia.com/gpu"].is_null());
    assert_eq!(spec["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(spec["tolerations"][0]["key"], "nvidia.com/gpu");
    assert!(c.kube.wait_until_empty(WAIT), "{:?}", c.kube.live_objects());
    assert_objects_valid(&c.kube, 2);
    c.hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}
