//! `semaphore-agent start --kubernetes-executor` on a REAL single-node
//! Kubernetes (`.ci/k8s-cluster.sh up`: etcd, kube-apiserver with RBAC and
//! NodeRestriction, controller-manager, scheduler, containerd, kubelet on
//! 127.0.0.1; tests/support/cluster.rs), against the fake control plane
//! (tests/support/hub.rs). The agent holds a real ServiceAccount token
//! bound to exactly the Role of packaging/kubernetes/ (the Helm agent
//! chart's), so the API's validation, defaulting, admission and RBAC, the
//! kubelet and a real exec all take part. Each test has a namespace of its
//! own; the cluster is started once for the whole run. Without a cluster
//! the tests skip with a reason; with CI=true they fail.
//!
//! The fake API server (tests/integration/kubernetes.rs) stays for what a
//! real server will not do on demand: 5xx answers, slow or garbage ones.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::agent::Agent;
use crate::support::cluster::{role_rules, RealCluster, TestNamespace, JOB_IMAGE};
use crate::support::events::{commands, step, steps};
use crate::support::hub::Hub;
use crate::support::{b64, Sandbox};

/// A job on a real pod: image present on the node, a pod Ready in about a
/// second, but a loaded 2-core machine can take much longer.
const JOB_WAIT: Duration = Duration::from_secs(120);

/// How long deleting a job's objects may take (the pod's processes get
/// SIGTERM and the kubelet reports them gone).
const GONE_WAIT: Duration = Duration::from_secs(60);

/// One test's world: its namespace on the real cluster, the hub, a sandbox.
struct Run<'a> {
    ns: TestNamespace<'a>,
    hub: Hub,
    sandbox: Sandbox,
    kubeconfig: PathBuf,
}

impl<'a> Run<'a> {
    fn new(cluster: &'a RealCluster, prefix: &str) -> Run<'a> {
        Run::in_namespace(TestNamespace::new(cluster, prefix))
    }

    fn in_namespace(ns: TestNamespace<'a>) -> Run<'a> {
        let sandbox = Sandbox::new();
        let kubeconfig = ns.agent_kubeconfig(sandbox.dir.path());
        Run {
            ns,
            hub: Hub::start(),
            sandbox,
            kubeconfig,
        }
    }

    /// The agent with `--kubernetes-executor` and `extra`, reaching the
    /// cluster as the executor's ServiceAccount through a kubeconfig, with
    /// the cluster's kubectl on PATH for the exec fallback.
    fn agent(&self, extra: &[&str]) -> Agent {
        self.agent_with(extra, &[])
    }

    /// [`Run::agent`] with `more` variables in its environment.
    fn agent_with(&self, extra: &[&str], more: &[(&str, &str)]) -> Agent {
        let kubectl_dir = self
            .ns
            .cluster
            .kubectl
            .parent()
            .expect("kubectl dir")
            .display()
            .to_string();
        let path = format!(
            "{kubectl_dir}:{}",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut env = vec![
            ("KUBECONFIG", kubeconfig.as_str()),
            ("KUBERNETES_NAMESPACE", self.ns.name.as_str()),
            ("PATH", path.as_str()),
        ];
        env.extend(more.iter().copied());
        let mut args = vec!["--no-https", "--kubernetes-executor"];
        args.extend(extra);
        Agent::start(&self.sandbox, &self.hub.endpoint(), &args, &env)
    }

    fn run(&self, job: Value) -> (String, Vec<Value>, String) {
        let id = self.hub.queue_job(job);
        let result = self.hub.wait_for_result(&id, JOB_WAIT);
        let events = self.hub.events(&id);
        assert!(result.is_some(), "job never finished: {events:#?}");
        (result.unwrap_or_default(), events, id)
    }

    /// No pod and no secret left in the namespace.
    fn assert_nothing_left(&self) {
        assert!(
            self.ns.wait_until_empty(GONE_WAIT),
            "left in {}: {:?}",
            self.ns.name,
            self.ns.objects()
        );
    }
}

#[test]
fn the_executor_role_is_the_helm_agent_chart_s_and_get_for_the_exec_websocket() {
    // renderedtext/helm-charts charts/agent: these, plus `get` on
    // pods/exec, which the WebSocket upgrade (a GET) needs before 1.35.
    assert_eq!(
        role_rules(),
        [
            "configmaps:get",
            "pods/exec:create",
            "pods/exec:get",
            "pods:create",
            "pods:delete",
            "pods:get",
            "secrets:create",
            "secrets:delete",
        ]
    );
}

#[test]
fn a_job_runs_in_a_real_pod_with_env_files_unicode_and_exit_codes() {
    let Some(cluster) = RealCluster::find("a_job_runs_in_a_real_pod") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-job");
    let mut agent = r.agent(&[
        "--kubernetes-default-image",
        JOB_IMAGE,
        "--kubernetes-labels",
        "app=semaphore,example.com/team=ci",
        "--env-vars",
        "FROM_AGENT=agent value",
    ]);
    let quoted = "it's a \"test\" $HOME `x` \\n";
    let (result, events, _) = r.run(json!({
        "job_id": "real-ok",
        "env_vars": [{"name": "GREETING", "value": b64(quoted)}],
        "files": [
            {"path": "notes/a b.txt", "content": b64("hello file\n"), "mode": "0640"},
            {"path": "/tmp/run.sh", "content": b64("echo from script\n"), "mode": "0755"},
        ],
        "commands": commands(&[
            "echo \"$GREETING|$FROM_AGENT\"",
            "cat ~/'notes/a b.txt'; stat -c %a ~/'notes/a b.txt' /tmp/run.sh",
            "/tmp/run.sh",
            "echo 'héllo wörld ✓ 日本'",
            "hostname",
        ]),
    }));
    let steps = steps(&events);
    assert_eq!(result, "passed", "{steps:#?}");
    let (_, start, code) = step(&steps, "Starting shell session...");
    assert_eq!(*code, 0, "{start}");
    assert!(start.contains("Pod is ready.\n"), "{start}");
    assert!(start.contains("User: root\n"), "{start}");
    let (_, out, _) = step(&steps, "echo \"$GREETING|$FROM_AGENT\"");
    assert_eq!(out, &format!("{quoted}|agent value\n"));
    let (_, out, _) = step(
        &steps,
        "cat ~/'notes/a b.txt'; stat -c %a ~/'notes/a b.txt' /tmp/run.sh",
    );
    assert_eq!(out, "hello file\n640\n755\n");
    assert_eq!(step(&steps, "/tmp/run.sh").1, "from script\n");
    assert_eq!(
        step(&steps, "echo 'héllo wörld ✓ 日本'").1,
        "héllo wörld ✓ 日本\n"
    );
    // The commands really ran in the pod, not on this host.
    assert_eq!(step(&steps, "hostname").1, "semaphore-job-real-ok\n");
    r.assert_nothing_left();

    // A failing command: its exit code, the job failed, nothing left.
    let (result, events, _) = r.run(json!({
        "job_id": "real-fail",
        "commands": commands(&["echo before", "bash -c 'exit 7'", "echo never"]),
    }));
    assert_eq!(result, "failed");
    let failed = self::steps(&events);
    assert_eq!(step(&failed, "bash -c 'exit 7'").2, 7);
    assert!(!failed.iter().any(|(d, _, _)| d == "echo never"));
    r.assert_nothing_left();
    let log = agent.log();
    assert!(!log.contains("agent value"), "{log}");
    // The exec was the agent's own WebSocket, not kubectl.
    assert!(!log.contains("falling back to kubectl"), "{log}");
    r.hub.shutdown("requested");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn sidecars_are_reachable_by_name_in_a_real_pod() {
    let Some(cluster) = RealCluster::find("sidecars_are_reachable_by_name") else {
        return;
    };
    // The Helm chart's Role exactly: the exec WebSocket is refused (no
    // `get` on pods/exec), and the agent says so once and uses kubectl.
    let r = Run::in_namespace(TestNamespace::helm_exact(&cluster, "k8s-sidecar"));
    let agent = r.agent(&[]);
    let (result, events, _) = r.run(json!({
        "job_id": "real-sidecar",
        "compose": {"containers": [
            {"name": "main", "image": JOB_IMAGE},
            {"name": "web", "image": JOB_IMAGE, "command": "httpd -f -p 7070 -h /etc"},
        ]},
        "commands": commands(&[
            "for i in $(seq 1 50); do wget -qO- http://web:7070/group && break; sleep 0.2; done",
        ]),
    }));
    let steps = steps(&events);
    assert_eq!(result, "passed", "{steps:#?}");
    let (_, out, _) = step(
        &steps,
        "for i in $(seq 1 50); do wget -qO- http://web:7070/group && break; sleep 0.2; done",
    );
    assert!(out.contains("semaphore:x:1000:"), "{out}");
    r.assert_nothing_left();
    let log = agent.log();
    let fallback: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("falling back to kubectl exec"))
        .collect();
    assert_eq!(fallback.len(), 1, "{log}");
    assert!(
        fallback[0].contains("HTTP 403")
            && fallback[0].contains("cannot get resource \"pods/exec\""),
        "{log}"
    );
}

#[test]
fn a_decorator_config_map_and_a_sourced_pre_job_hook_from_it() {
    let Some(cluster) = RealCluster::find("a_decorator_config_map") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-decorator");
    // As the Helm agent chart sets it up: the hook in a ConfigMap, mounted
    // into the job pod by the pod-spec decorator.
    let objects = [
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "agent-hooks"},
               "data": {"pre-job-hook": "echo hook ran in $(hostname)\nexport FROM_HOOK=hooked\n"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "pod-spec"},
        "data": {
            "pod": "volumes: [{name: hooks, configMap: {name: agent-hooks, defaultMode: 0755}}]\nterminationGracePeriodSeconds: 5\n",
            "mainContainer": "volumeMounts: [{name: hooks, mountPath: /opt/semaphore/hooks}]\nenv: [{name: FROM_DECORATOR, value: decorated}]\n",
        }}),
    ];
    let text: String = objects.iter().map(|o| format!("{o}\n")).collect();
    cluster.kubectl_in(&["apply", "-n", &r.ns.name, "-f", "-"], Some(&text));
    let _agent = r.agent(&[
        "--kubernetes-default-image",
        JOB_IMAGE,
        "--kubernetes-pod-spec",
        "pod-spec",
        "--pre-job-hook-path",
        "/opt/semaphore/hooks/pre-job-hook",
        "--source-pre-job-hook",
    ]);
    let (result, events, id) = r.run(json!({
        "job_id": "real-hook",
        "commands": commands(&["echo \"$FROM_HOOK $FROM_DECORATOR\""]),
    }));
    let steps = steps(&events);
    assert_eq!(result, "passed", "{steps:#?}");
    assert!(
        r.hub
            .output(&id)
            .contains("hook ran in semaphore-job-real-hook"),
        "{steps:#?}"
    );
    assert_eq!(
        step(&steps, "echo \"$FROM_HOOK $FROM_DECORATOR\"").1,
        "hooked decorated\n"
    );
    r.assert_nothing_left();
}

#[test]
fn refused_missing_and_never_ready_images_fail_the_job_with_the_reason() {
    let Some(cluster) = RealCluster::find("refused_missing_and_never_ready_images") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-images");
    let _agent = r.agent(&[
        "--kubernetes-allowed-images",
        "^docker\\.io/local/",
        "--kubernetes-pod-start-timeout",
        "20",
    ]);
    // Not allowed: refused before anything is created.
    let (result, events, _) = r.run(json!({
        "compose": {"containers": [{"name": "main", "image": "quay.io/evil:1"}]},
        "commands": commands(&["echo never"]),
    }));
    assert_eq!(result, "failed");
    let out = &steps(&events)[0].1;
    assert!(
        out.contains("image 'quay.io/evil:1' is not allowed"),
        "{out}"
    );
    assert!(r.ns.objects().is_empty(), "{:?}", r.ns.objects());

    // No containers and no default image: Go's words, nothing created.
    let (result, events, _) = r.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let out = &steps(&events)[0].1;
    assert!(
        out.ends_with(
            "no containers specified in Semaphore YAML, and no default container is provided\n"
        ),
        "{out}"
    );
    assert!(r.ns.objects().is_empty(), "{:?}", r.ns.objects());

    // Allowed but not on the node (and no registry): the kubelet's pull
    // error, well before the start timeout.
    let started = std::time::Instant::now();
    let (result, events, _) = r.run(json!({
        "job_id": "real-nope",
        "compose": {"containers": [{"name": "main", "image": "docker.io/local/does-not-exist:1"}]},
        "commands": commands(&["echo never"]),
    }));
    assert_eq!(result, "failed");
    let steps_ = steps(&events);
    let (_, out, code) = step(&steps_, "Starting shell session...");
    assert_eq!(*code, 1);
    assert!(
        out.contains("Failed to create pod: failed to pull image for 'main'")
            || out.contains("ErrImageNeverPull"),
        "{out}"
    );
    assert!(
        !out.contains("was not ready within"),
        "waited out the start timeout: {out}"
    );
    assert!(started.elapsed() < JOB_WAIT);
    r.assert_nothing_left();
}

#[test]
fn a_pod_that_cannot_be_scheduled_meets_the_start_timeout() {
    let Some(cluster) = RealCluster::find("a_pod_that_cannot_be_scheduled") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-timeout");
    cluster.kubectl_in(
        &["apply", "-n", &r.ns.name, "-f", "-"],
        Some(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nowhere"},
                    "data": {"pod": "nodeSelector: {pool: no-such-pool}\n"}})
            .to_string(),
        ),
    );
    let agent = r.agent(&[
        "--kubernetes-default-image",
        JOB_IMAGE,
        "--kubernetes-pod-spec",
        "nowhere",
        "--kubernetes-pod-start-timeout",
        "4",
    ]);
    let (result, events, _) = r.run(json!({
        "job_id": "real-timeout",
        "commands": commands(&["echo never"]),
    }));
    assert_eq!(result, "failed");
    let (_, out, _) = step(&steps(&events), "Starting shell session...").clone();
    assert!(
        out.contains("pod 'semaphore-job-real-timeout' was not ready within 4s"),
        "{out}"
    );
    assert!(
        out.contains("Unschedulable") || out.contains("pending"),
        "{out}"
    );
    r.assert_nothing_left();
    drop(agent);

    // A decorator ConfigMap that is not there: the API's 404, named.
    let _agent = r.agent(&[
        "--kubernetes-default-image",
        JOB_IMAGE,
        "--kubernetes-pod-spec",
        "no-such-map",
    ]);
    let (result, events, _) = r.run(json!({"commands": commands(&["echo never"])}));
    assert_eq!(result, "failed");
    let out = &steps(&events)[0].1;
    assert!(
        out.starts_with(&format!(
            "Failed to load pod spec: error finding configmap 'no-such-map': getting configmap \
             'no-such-map' in namespace '{}' failed: HTTP 404: configmaps \"no-such-map\" not found",
            r.ns.name
        )),
        "{out}"
    );
    assert!(r.ns.objects().is_empty(), "{:?}", r.ns.objects());
}

#[test]
fn a_stop_during_a_command_in_a_real_pod_leaves_nothing() {
    let Some(cluster) = RealCluster::find("a_stop_during_a_command") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-stop");
    let _agent = r.agent(&["--kubernetes-default-image", JOB_IMAGE]);
    let id = r.hub.queue_job(json!({
        "job_id": "real-stop",
        "commands": commands(&["echo started; sleep 600", "echo never"]),
    }));
    assert!(
        r.hub
            .wait_until(JOB_WAIT, |h| h.output(&id).contains("started")),
        "{:#?}",
        r.hub.events(&id)
    );
    r.hub.stop_job(&id);
    assert_eq!(
        r.hub.wait_for_result(&id, JOB_WAIT).as_deref(),
        Some("stopped")
    );
    assert!(!r.hub.output(&id).contains("never"));
    r.assert_nothing_left();
}

#[test]
fn ten_megabytes_of_output_from_a_real_pod_arrive_complete() {
    let Some(cluster) = RealCluster::find("ten_megabytes_of_output") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-output");
    let _agent = r.agent(&["--kubernetes-default-image", JOB_IMAGE]);
    // 1 400 000 numbered lines: 10.4 MB, each line checkable.
    let (result, events, _) = r.run(json!({
        "job_id": "real-output",
        "commands": commands(&["seq 1 1400000"]),
    }));
    assert_eq!(result, "passed");
    let steps = steps(&events);
    let out = &step(&steps, "seq 1 1400000").1;
    assert!(out.len() > 10_000_000, "{} bytes", out.len());
    let mut expected = 1u64;
    for line in out.lines() {
        assert_eq!(line, expected.to_string(), "line {expected}");
        expected += 1;
    }
    assert_eq!(expected, 1_400_001);
    r.assert_nothing_left();
}

/// The agent image: this build's binary at /opt/semaphore/agent on static
/// bash + busybox, imported into the node once per test run.
fn agent_image(cluster: &RealCluster) -> &'static str {
    static IMPORTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const IMAGE: &str = "docker.io/local/semaphore-agent:test";
    IMPORTED.get_or_init(|| cluster.import_agent_image(IMAGE, &crate::support::agent_bin()));
    IMAGE
}

/// A Job as renderedtext/agent-k8s-controller makes one per Semaphore
/// job: container `semaphore-agent`, `/opt/semaphore/agent start` with
/// the controller's args, the agent's name and namespace from fieldRefs,
/// the registration token from the agent type's secret. `hostNetwork` and
/// KUBERNETES_SERVICE_HOST/PORT so it reaches the hub and the API on
/// 127.0.0.1 (no kube-proxy here).
fn controller_job(
    name: &str,
    image: &str,
    hub_port: u16,
    job_id: &str,
    extra_args: &[&str],
) -> Value {
    let mut args = vec![
        "--endpoint".to_string(),
        format!("127.0.0.1:{hub_port}"),
        "--job-id".to_string(),
        job_id.to_string(),
        "--kubernetes-labels".to_string(),
        "semaphoreci.com/agent-type=s1-test".to_string(),
        "--kubernetes-executor".to_string(),
        "--disconnect-after-job".to_string(),
        "--no-https".to_string(),
        "--kubernetes-default-image".to_string(),
        JOB_IMAGE.to_string(),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut namespace = field("metadata.namespace");
    namespace["name"] = json!("KUBERNETES_NAMESPACE");
    let mut agent_name = field("metadata.name");
    agent_name["name"] = json!("SEMAPHORE_AGENT_NAME");
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "semaphore-agent"}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 300,
                    "serviceAccountName": crate::support::cluster::SERVICE_ACCOUNT,
                    "hostNetwork": true,
                    "containers": [{
                        "name": "semaphore-agent",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/opt/semaphore/agent", "start"],
                        "args": args,
                        "env": [
                            namespace,
                            agent_name,
                            {"name": "SEMAPHORE_AGENT_LOG_LEVEL", "value": "debug"},
                            {"name": "SEMAPHORE_AGENT_TOKEN", "valueFrom": {"secretKeyRef": {
                                "name": "s1-test-token", "key": "registrationToken"}}},
                            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
                            {"name": "SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS", "value": "200"},
                            {"name": "SEMAPHORE_AGENT_TEST_DISCONNECT_DELAY_MS", "value": "10"},
                        ],
                    }],
                },
            },
        },
    })
}

fn registration_secret() -> String {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1-test-token"},
           "stringData": {"registrationToken": crate::support::hub::REGISTRATION_TOKEN}})
    .to_string()
}

#[test]
fn the_agent_runs_as_the_controller_starts_it_and_the_job_completes() {
    let Some(cluster) = RealCluster::find("the_agent_runs_as_the_controller_starts_it") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-controller");
    let image = agent_image(&cluster);
    let job_id = "ctrl-job-1";
    r.hub.queue_job(json!({
        "job_id": job_id,
        "commands": commands(&["echo in $(hostname) as $(whoami)", "test ! -e /opt/semaphore/agent"]),
    }));
    let manifest = format!(
        "{}\n{}\n",
        registration_secret(),
        controller_job("agent-job", image, r.hub.port(), job_id, &[])
    );
    cluster.kubectl_in(&["apply", "-n", &r.ns.name, "-f", "-"], Some(&manifest));
    let result = r.hub.wait_for_result(job_id, JOB_WAIT);
    let events = r.hub.events(job_id);
    let agent_log = || {
        cluster
            .try_kubectl(&["logs", "-n", &r.ns.name, "job/agent-job"], None)
            .unwrap_or_else(|e| e)
    };
    assert_eq!(
        result.as_deref(),
        Some("passed"),
        "{events:#?}\n{}",
        agent_log()
    );
    let steps = steps(&events);
    // The commands ran in the job pod (no agent binary there), not in the
    // agent's.
    assert_eq!(
        step(&steps, "echo in $(hostname) as $(whoami)").1,
        format!("in semaphore-job-{job_id} as root\n")
    );
    // The Job completes: the agent disconnected and exited 0.
    let completed = crate::support::wait::until(JOB_WAIT, || {
        cluster
            .get_json(&r.ns.name, "job/agent-job")
            .is_some_and(|j| j["status"]["succeeded"] == 1)
    });
    assert!(
        completed,
        "{:#?}\n{}",
        cluster.get_json(&r.ns.name, "job/agent-job"),
        agent_log()
    );
    assert!(r.hub.disconnects() >= 1);
    let log = agent_log();
    assert!(
        !log.contains("falling back to kubectl"),
        "the exec used kubectl: {log}"
    );
    assert!(
        !log.contains(crate::support::hub::REGISTRATION_TOKEN),
        "{log}"
    );
    // Only the agent's own pod (of the Job) and the token secret are left.
    assert!(
        r.ns.wait_until_empty_but(GONE_WAIT, &["pod/agent-job-", "secret/s1-test-token"]),
        "{:?}",
        r.ns.objects()
    );
}

#[test]
fn deleting_the_agent_s_pod_mid_job_deletes_the_job_s_pod_and_secrets() {
    let Some(cluster) = RealCluster::find("deleting_the_agent_s_pod_mid_job") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-owner");
    let image = agent_image(&cluster);
    let job_id = "owned-job-1";
    r.hub.queue_job(json!({
        "job_id": job_id,
        "commands": commands(&["echo started; sleep 600", "echo never"]),
    }));
    let manifest = format!(
        "{}\n{}\n",
        registration_secret(),
        controller_job("agent-dies", image, r.hub.port(), job_id, &[])
    );
    cluster.kubectl_in(&["apply", "-n", &r.ns.name, "-f", "-"], Some(&manifest));
    assert!(
        r.hub
            .wait_until(JOB_WAIT, |h| h.output(job_id).contains("started")),
        "{:#?}",
        r.hub.events(job_id)
    );
    let job_pod = format!("semaphore-job-{job_id}");
    let pod = cluster
        .get_json(&r.ns.name, &format!("pod/{job_pod}"))
        .expect("the job pod");
    let owners = &pod["metadata"]["ownerReferences"];
    assert_eq!(owners[0]["kind"], "Pod", "{pod:#?}");
    let agent_pod = owners[0]["name"].as_str().unwrap_or("").to_string();
    assert!(agent_pod.starts_with("agent-dies-"), "{owners}");
    assert_eq!(
        pod["metadata"]["labels"]["semaphoreci.com/agent"],
        agent_pod.as_str()
    );
    let secret = cluster
        .get_json(&r.ns.name, &format!("secret/{job_pod}-secret"))
        .expect("the job secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["name"],
        agent_pod.as_str()
    );

    // The agent dies with its pod, without a chance to clean up (grace 0:
    // SIGKILL); the garbage collector removes what it owned.
    cluster.kubectl(&[
        "delete",
        "pod",
        "-n",
        &r.ns.name,
        &agent_pod,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    let gone = crate::support::wait::until(GONE_WAIT, || {
        let objects = r.ns.objects();
        !objects.contains(&format!("pod/{job_pod}"))
            && !objects.contains(&format!("secret/{job_pod}-secret"))
    });
    assert!(gone, "left: {:?}", r.ns.objects());
}

/// An agent outside the cluster, SIGKILLed mid-job, then started again
/// under the same name: before its first job's objects it deletes what
/// the killed run left. With the executor's Role as it is (no `list`) the
/// agent's journal names them; with `list` and no journal (another
/// machine), the agent label finds them.
fn killed_agent_leftovers(prefix: &str, with_list: bool) {
    let Some(cluster) = RealCluster::find(prefix) else {
        return;
    };
    let r = Run::new(&cluster, prefix);
    if with_list {
        let sa = crate::support::cluster::SERVICE_ACCOUNT;
        let lister = format!(
            "{}\n{}\n",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": "lister"},
                   "rules": [{"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["list"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "lister"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lister"},
                   "subjects": [{"kind": "ServiceAccount", "name": sa}]}),
        );
        cluster.kubectl_in(&["apply", "-n", &r.ns.name, "-f", "-"], Some(&lister));
    }
    let mut first = r.agent(&["--kubernetes-default-image", JOB_IMAGE]);
    let id = r.hub.queue_job(json!({
        "job_id": "killed-run",
        "commands": commands(&["echo started; sleep 600"]),
    }));
    assert!(
        r.hub
            .wait_until(JOB_WAIT, |h| h.output(&id).contains("started")),
        "{:#?}",
        r.hub.events(&id)
    );
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    assert!(first.status().is_some(), "the first agent survived SIGKILL");
    let left = [
        "pod/semaphore-job-killed-run",
        "secret/semaphore-job-killed-run-secret",
    ];
    let objects = r.ns.objects();
    assert!(
        left.iter().all(|o| objects.iter().any(|x| x == o)),
        "{objects:?}"
    );
    let journal = r.sandbox.home().join(".cache/semaphore-agent");
    assert!(journal.is_dir(), "no journal in {}", journal.display());
    if with_list {
        std::fs::remove_dir_all(&journal).expect("remove the journal");
    }

    let second = r.agent(&["--kubernetes-default-image", JOB_IMAGE]);
    let (result, _, _) = r.run(json!({"job_id": "next-run", "commands": commands(&["echo next"])}));
    assert_eq!(result, "passed");
    r.assert_nothing_left();
    let log = second.log();
    for object in [
        "pods/semaphore-job-killed-run",
        "secrets/semaphore-job-killed-run-secret",
    ] {
        assert!(
            log.contains(&format!(
                "Deleted {object}, left by an earlier run of agent-under-test"
            )),
            "{object}: {log}"
        );
    }
    assert_eq!(log.contains("the Role grants no list"), !with_list, "{log}");
    // Nothing is recorded once the job's objects are deleted.
    assert!(
        !journal.join("kubernetes-agent-under-test.objects").exists(),
        "{log}"
    );
}

#[test]
fn a_killed_agent_s_next_run_deletes_its_leftovers_from_its_journal() {
    killed_agent_leftovers("k8s-journal", false);
}

#[test]
fn a_killed_agent_s_next_run_finds_its_leftovers_by_label_given_list() {
    killed_agent_leftovers("k8s-label", true);
}

/// Issue 27: `semaphore-agent debug` puts a person into the job's pod
/// through the agent's own exec bridge (no kubectl on the debug side),
/// typed into through a real terminal.
#[test]
fn a_kubernetes_job_is_debugged_inside_its_pod() {
    let Some(cluster) = RealCluster::find("a_kubernetes_job_is_debugged_inside_its_pod") else {
        return;
    };
    if !crate::support::terminal::available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the debug test needs tmux (CI=true)"
        );
        eprintln!("skipped: a_kubernetes_job_is_debugged_inside_its_pod needs tmux");
        return;
    }
    let r = Run::new(&cluster, "k8s-debug");
    let base = r.sandbox.path("debug-base");
    std::fs::create_dir_all(&base).unwrap();
    let base = base.display().to_string();
    let _agent = r.agent_with(
        &["--kubernetes-default-image", JOB_IMAGE],
        &[("SEMAPHORE_AGENT_TEST_DEBUG_DIR", &base)],
    );
    let id = r.hub.queue_job(json!({
        "job_id": "real-debug",
        "env_vars": [{"name": "DEBUG_SECRET", "value": b64("pod-secret-value")}],
        "commands": commands(&[
            "export DEBUG_VAR=in-the-pod",
            "echo \"job-host=$(hostname)\"",
            "for i in $(seq 1200); do [ -e /tmp/release ] && break; sleep 0.1; done",
        ]),
    }));
    assert!(
        r.hub.wait_until(JOB_WAIT, |h| h
            .events(&id)
            .iter()
            .any(|e| e["event"] == "cmd_started"
                && e["directive"].as_str().unwrap_or("").contains("seq 1200"))),
        "{}",
        r.hub.output(&id)
    );
    let output = r.hub.output(&id);
    let job_host = output
        .lines()
        .find_map(|l| l.strip_prefix("job-host="))
        .unwrap_or_else(|| panic!("no hostname in:\n{output}"))
        .to_string();
    assert_eq!(job_host, "semaphore-job-real-debug", "{output}");

    let debug = format!("'{}' debug", crate::support::agent_bin().display());
    let term = crate::support::terminal::Terminal::start(
        &r.sandbox,
        &debug,
        &[("SEMAPHORE_AGENT_TEST_DEBUG_DIR", &base)],
    );
    term.wait_for(
        "a shell in job real-debug of agent agent-under-test",
        JOB_WAIT,
    );
    term.type_line("echo \"V=$DEBUG_VAR S=$DEBUG_SECRET host=$(hostname)\"");
    term.wait_for(
        &format!("V=in-the-pod S=pod-secret-value host={job_host}"),
        Duration::from_secs(30),
    );
    term.type_line("exit 3");
    assert_eq!(
        term.exit_status(Duration::from_secs(30)),
        3,
        "{}",
        term.screen()
    );
    assert!(!r.hub.output(&id).contains("V="), "{}", r.hub.output(&id));
    r.hub.stop_job(&id);
    assert_eq!(
        r.hub.wait_for_result(&id, JOB_WAIT).as_deref(),
        Some("stopped")
    );
    r.assert_nothing_left();
}
