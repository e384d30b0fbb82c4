//! `semaphore-agent start --kubernetes-executor` on a REAL single-node
//! Kubernetes (`.ci/k8s-cluster.sh up`: etcd, kube-apiserver with RBAC and
//! NodeRestriction, controller-manager, scheduler, containerd, kubelet on
//! 127.0.0.1; tests/support/cluster.rs), against the fake control plane
//! (tests/support/hub.rs). The agent holds a real ServiceAccount token
//! bound to exactly the Role of packaging/kubernetes/ (the Helm charts':
//! `create` only on pods/exec, so the WebSocket exec is refused and the
//! agent's SPDY/3.1 exec runs the job), with no kubectl anywhere on its
//! PATH, so the API's validation, defaulting, admission and RBAC, the
//! kubelet and a real exec all take part. CI runs them on the oldest and
//! the newest Kubernetes the project supports (`K8S_VERSION`). Each test has a namespace of its
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
use crate::support::kube::path_without_kubectl;
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
    /// no kubectl on its PATH (the exec is the agent's own).
    fn agent(&self, extra: &[&str]) -> Agent {
        self.agent_with(extra, &[])
    }

    /// [`Run::agent`] with `more` variables in its environment.
    fn agent_with(&self, extra: &[&str], more: &[(&str, &str)]) -> Agent {
        let path = path_without_kubectl();
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

/// The agent's log says the exec was SPDY/3.1 after the WebSocket was
/// refused for the missing `get` verb, and that no kubectl was needed.
fn assert_spdy_exec(log: &str, pod: &str) {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("Exec into pod {pod} over ")))
        .unwrap_or_else(|| panic!("no exec line for {pod}: {log}"));
    assert!(
        line.contains(&format!(
            "Exec into pod {pod} over SPDY/3.1: the WebSocket exec was refused: HTTP 403: "
        )) && line.contains("cannot get resource \"pods/exec\"")
            && line
                .contains("(the Role lacks `get` on pods/exec; a WebSocket exec is an HTTP GET)"),
        "{line}"
    );
    assert!(!log.contains("falling back to kubectl"), "{log}");
}

#[test]
fn the_executor_role_is_exactly_the_helm_charts_one() {
    // renderedtext/helm-charts charts/agent and charts/controller: this
    // and nothing more (pods/exec: `create` only).
    assert_eq!(
        role_rules(),
        [
            "configmaps:get",
            "pods/exec:create",
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
    // The exec was the agent's own SPDY, not kubectl (there is none).
    assert_spdy_exec(&log, "semaphore-job-real-ok");
    assert_spdy_exec(&log, "semaphore-job-real-fail");
    r.hub.shutdown("requested");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn sidecars_are_reachable_by_name_in_a_real_pod() {
    let Some(cluster) = RealCluster::find("sidecars_are_reachable_by_name") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-sidecar");
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
    assert_spdy_exec(&agent.log(), "semaphore-job-real-sidecar");
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

/// Stops job `id` once its output has `text`; it must end `stopped`.
fn stop_once_printed(r: &Run, id: &str, text: &str) {
    assert!(
        r.hub.wait_until(JOB_WAIT, |h| h.output(id).contains(text)),
        "{:#?}",
        r.hub.events(id)
    );
    r.hub.stop_job(id);
    assert_eq!(
        r.hub.wait_for_result(id, JOB_WAIT).as_deref(),
        Some("stopped")
    );
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
    stop_once_printed(&r, &id, "started");
    assert!(!r.hub.output(&id).contains("never"));
    r.assert_nothing_left();
}

/// `--job-stop-grace-period` reaches the job's processes in its pod: a
/// stopped job trapping TERM that needs 2 s to checkpoint gets its
/// `checkpointed` into the job log (SIGTERM through the agent's own exec).
#[test]
fn a_stop_grace_period_lets_a_job_in_a_real_pod_checkpoint() {
    let Some(cluster) = RealCluster::find("a_stop_grace_period_lets_a_job") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-grace");
    let agent = r.agent(&[
        "--kubernetes-default-image",
        JOB_IMAGE,
        "--job-stop-grace-period",
        "5",
    ]);
    let id = r.hub.queue_job(json!({
        "job_id": "real-grace",
        "commands": commands(&[
            crate::support::CHECKPOINTING_JOB,
        ]),
    }));
    stop_once_printed(&r, &id, "training");
    assert!(
        r.hub.output(&id).contains("checkpointed"),
        "the checkpoint's output is not in the job log:\n{}\nagent log:\n{}",
        r.hub.output(&id),
        agent.log()
    );
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

/// The scratch image (packaging/Dockerfile.scratch's tree, no kubectl)
/// with this build's binary as its agent, imported into the node once per
/// test run.
fn agent_image(cluster: &RealCluster) -> &'static str {
    static IMPORTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const IMAGE: &str = "docker.io/local/semaphore-agent:test";
    IMPORTED.get_or_init(|| cluster.import_agent_image(IMAGE, &crate::support::agent_bin()));
    IMAGE
}

/// The agent type of the controller-shaped Jobs.
const AGENT_TYPE: &str = "s1-test";

/// The Job renderedtext/agent-k8s-controller's job scheduler creates for
/// a Semaphore job (`buildJob`): named `semaphore-agent-<job id>`, its
/// three labels on the Job and the pod, parallelism and completions 1, no
/// retries, a day's deadline, restartPolicy Never, the controller's
/// ServiceAccount, 300 s of grace, container `semaphore-agent` running
/// `/opt/semaphore/agent start` with the controller's args (`--endpoint
/// --job-id --kubernetes-labels semaphoreci.com/agent-type=T
/// --kubernetes-executor --disconnect-after-job` + the agent type's
/// startup parameters) and its four env vars. What this machine adds, as
/// a test environment: `hostNetwork` and KUBERNETES_SERVICE_HOST/PORT (no
/// kube-proxy: the agent reaches the hub and the API on 127.0.0.1), the
/// test builds' sync knobs, and `--no-https` and the job image as startup
/// parameters.
fn controller_job(image: &str, hub_port: u16, job_id: &str) -> Value {
    let args = [
        "--endpoint",
        &format!("127.0.0.1:{hub_port}"),
        "--job-id",
        job_id,
        "--kubernetes-labels",
        &format!("semaphoreci.com/agent-type={AGENT_TYPE}"),
        "--kubernetes-executor",
        "--disconnect-after-job",
        // The agent type's startup parameters.
        "--no-https",
        "--kubernetes-default-image",
        JOB_IMAGE,
    ];
    let labels = json!({
        "semaphoreci.com/resource-type": "semaphore-job",
        "semaphoreci.com/agent-type": AGENT_TYPE,
        "semaphoreci.com/job-id": job_id,
    });
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": format!("semaphore-agent-{job_id}"), "labels": labels},
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 0,
            "activeDeadlineSeconds": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": crate::support::cluster::SERVICE_ACCOUNT,
                    "terminationGracePeriodSeconds": 300,
                    "hostNetwork": true,
                    "containers": [{
                        "name": "semaphore-agent",
                        "image": image,
                        "command": ["/opt/semaphore/agent", "start"],
                        "args": args,
                        "env": [
                            field("KUBERNETES_NAMESPACE", "metadata.namespace"),
                            field("SEMAPHORE_AGENT_NAME", "metadata.name"),
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
fn five_controller_jobs_at_once_run_on_the_scratch_image_and_leave_nothing() {
    let Some(cluster) = RealCluster::find("five_controller_jobs_at_once") else {
        return;
    };
    let r = Run::new(&cluster, "k8s-controller");
    let image = agent_image(&cluster);
    let ids: Vec<String> = (1..=5).map(|i| format!("ctrl-job-{i}")).collect();
    for id in &ids {
        r.hub.queue_job(json!({
            "job_id": id,
            "commands": commands(&[
                "echo in $(hostname) as $(whoami)",
                "test ! -e /opt/semaphore/agent",
                "seq 1 20000 | tail -1",
            ]),
        }));
    }
    let mut manifest = format!("{}\n", registration_secret());
    for id in &ids {
        manifest.push_str(&format!("{}\n", controller_job(image, r.hub.port(), id)));
    }
    cluster.kubectl_in(&["apply", "-n", &r.ns.name, "-f", "-"], Some(&manifest));
    let agent_log = |id: &str| {
        cluster
            .try_kubectl(
                &[
                    "logs",
                    "-n",
                    &r.ns.name,
                    &format!("job/semaphore-agent-{id}"),
                ],
                None,
            )
            .unwrap_or_else(|e| e)
    };
    for id in &ids {
        let result = r.hub.wait_for_result(id, JOB_WAIT);
        let events = r.hub.events(id);
        assert_eq!(
            result.as_deref(),
            Some("passed"),
            "{id}: {events:#?}\n{}",
            agent_log(id)
        );
        let steps = steps(&events);
        // The commands ran in the job pod (no agent binary there), not in
        // the agent's.
        assert_eq!(
            step(&steps, "echo in $(hostname) as $(whoami)").1,
            format!("in semaphore-job-{id} as root\n")
        );
        assert_eq!(step(&steps, "seq 1 20000 | tail -1").1, "20000\n");
    }
    // Each Job completes (the agent disconnected and exited 0); then the
    // controller deletes it (background propagation), and nothing of the
    // job is left: not the Job, its pod, the job's pod or secrets.
    for id in &ids {
        let job = format!("job/semaphore-agent-{id}");
        let completed = crate::support::wait::until(JOB_WAIT, || {
            cluster
                .get_json(&r.ns.name, &job)
                .is_some_and(|j| j["status"]["succeeded"] == 1)
        });
        let log = agent_log(id);
        assert!(
            completed,
            "{:#?}\n{log}",
            cluster.get_json(&r.ns.name, &job)
        );
        // The hub hands its queued jobs to whichever agent asks first, so
        // this Job's agent may have run another of the five jobs: find the
        // job pod it exec'd into, then check that exec was SPDY.
        let pod = log
            .lines()
            .find_map(|l| l.split("Exec into pod ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{id}: no exec line in its agent's log:\n{log}"));
        assert!(
            ids.iter().any(|i| pod == format!("semaphore-job-{i}")),
            "{id}: exec into an unknown pod {pod}:\n{log}"
        );
        assert_spdy_exec(&log, &pod);
        assert!(
            !log.contains(crate::support::hub::REGISTRATION_TOKEN),
            "{log}"
        );
        cluster.kubectl(&[
            "delete",
            "-n",
            &r.ns.name,
            &job,
            "--cascade=background",
            "--wait=false",
        ]);
    }
    assert!(r.hub.disconnects() >= 5);
    let gone = crate::support::wait::until(GONE_WAIT, || {
        cluster
            .try_kubectl(&["get", "jobs", "-n", &r.ns.name, "-o", "name"], None)
            .is_ok_and(|out| out.trim().is_empty())
            && r.ns.objects() == ["secret/s1-test-token"]
    });
    assert!(gone, "left: {:?}", r.ns.objects());
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
        controller_job(image, r.hub.port(), job_id)
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
    assert!(
        agent_pod.starts_with(&format!("semaphore-agent-{job_id}-")),
        "{owners}"
    );
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
