//! The REAL single-node Kubernetes that `.ci/k8s-cluster.sh up` starts on
//! 127.0.0.1 (etcd, kube-apiserver with RBAC, controller-manager,
//! scheduler, containerd, kubelet): found through the env file the script
//! writes. The cluster is started once per run (by `.ci/run`, or by hand
//! on a laptop), and each test gets a namespace of its own with exactly the
//! ServiceAccount, Role and RoleBinding of
//! `packaging/kubernetes/kubernetes-executor.yaml` (the Role of Semaphore's
//! Helm charts, exactly) and a token for it.
//! Without the cluster a test skips with a reason; with CI=true it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::wait;

/// The ServiceAccount of packaging/kubernetes/kubernetes-executor.yaml.
pub const SERVICE_ACCOUNT: &str = "semaphore-agent-k8s-executor";

/// The job image `.ci/k8s-cluster.sh` imports: static bash + busybox.
pub const JOB_IMAGE: &str = "docker.io/local/job:1";

/// The running cluster's facts.
pub struct RealCluster {
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    pub ca: PathBuf,
    pub script: PathBuf,
    /// The cluster's Kubernetes version (`v1.34.4`).
    pub version: String,
}

/// The env file `.ci/k8s-cluster.sh up` writes.
fn env_file() -> PathBuf {
    let home = std::env::var_os("K8S_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/semaphore-ci-k8s"));
    home.join("run/env")
}

impl RealCluster {
    /// The cluster, or None (after saying why) on a machine without one;
    /// with CI=true a missing cluster fails the test.
    pub fn find(test: &str) -> Option<RealCluster> {
        let path = env_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{test}: the Kubernetes cluster is required with CI=true, but {} is \
                     unreadable ({e}): run `.ci/k8s-cluster.sh up`",
                    path.display()
                );
                eprintln!(
                    "SKIPPED {test}: no Kubernetes cluster ({} missing; start one with \
                     `bash .ci/k8s-cluster.sh up`)",
                    path.display()
                );
                return None;
            }
        };
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("{key} missing in {}", path.display()))
        };
        let cluster = RealCluster {
            kubectl: get("KUBECTL"),
            kubeconfig: get("KUBECONFIG"),
            ca: get("K8S_CA"),
            version: text
                .lines()
                .find_map(|l| l.strip_prefix("K8S_VERSION="))
                .unwrap_or("unknown")
                .to_string(),
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/k8s-cluster.sh"),
        };
        eprintln!("{test}: on Kubernetes {}", cluster.version);
        Some(cluster)
    }

    /// kubectl as the cluster admin; panics with its stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_in(args, None)
    }

    /// kubectl with `stdin` fed to it.
    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        match self.try_kubectl(args, stdin) {
            Ok(out) => out,
            Err(err) => panic!("kubectl {args:?} failed: {err}"),
        }
    }

    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.kubectl.display()))?;
        if let Some(text) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl get -o json`, or None when the object is not there.
    pub fn get_json(&self, namespace: &str, what: &str) -> Option<Value> {
        let out = self
            .try_kubectl(&["get", "-n", namespace, what, "-o", "json"], None)
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    /// Names of the pods and secrets (but the ServiceAccount's own) in
    /// `namespace`, as `pod/x` and `secret/y`.
    pub fn job_objects(&self, namespace: &str) -> Vec<String> {
        let out = self.kubectl(&["get", "pods,secrets", "-n", namespace, "-o", "name"]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Waits until `namespace` has no pod and no secret.
    pub fn wait_until_empty(&self, namespace: &str, timeout: Duration) -> bool {
        wait::until(timeout, || self.job_objects(namespace).is_empty())
    }

    /// Imports an image `name` with `binary` at /opt/semaphore/agent.
    pub fn import_agent_image(&self, name: &str, binary: &Path) {
        let out = Command::new("bash")
            .arg(&self.script)
            .arg("agent-image")
            .arg(name)
            .arg(binary)
            .output()
            .expect("run k8s-cluster.sh agent-image");
        assert!(
            out.status.success(),
            "importing {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Imports `rootfs` into the node as image `name` (fully qualified).
    pub fn import_image(&self, name: &str, rootfs: &Path) {
        let out = Command::new("bash")
            .arg(&self.script)
            .arg("import")
            .arg(name)
            .arg(rootfs)
            .output()
            .expect("run k8s-cluster.sh import");
        assert!(
            out.status.success(),
            "importing {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A namespace of one test with the executor's ServiceAccount, Role and
/// RoleBinding from packaging/kubernetes/ (and nothing more), deleted when
/// dropped.
pub struct TestNamespace<'a> {
    pub cluster: &'a RealCluster,
    pub name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl<'a> TestNamespace<'a> {
    /// With the Role of packaging/kubernetes/ as it is.
    pub fn new(cluster: &'a RealCluster, prefix: &str) -> TestNamespace<'a> {
        TestNamespace::with_rbac(cluster, prefix, &rbac_objects())
    }

    fn with_rbac(cluster: &'a RealCluster, prefix: &str, rbac: &str) -> TestNamespace<'a> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        cluster.kubectl(&["create", "namespace", &name]);
        let ns = TestNamespace { cluster, name };
        cluster.kubectl_in(&["apply", "-n", &ns.name, "-f", "-"], Some(rbac));
        // The ServiceAccount admission needs the namespace's default
        // ServiceAccount, which the controller-manager makes.
        assert!(
            wait::until(Duration::from_secs(60), || cluster
                .try_kubectl(&["get", "serviceaccount", "default", "-n", &ns.name], None)
                .is_ok()),
            "no default ServiceAccount in {}",
            ns.name
        );
        ns
    }

    /// A kubeconfig in `dir` for the executor's ServiceAccount: a real
    /// token from the TokenRequest API, the cluster's CA.
    pub fn agent_kubeconfig(&self, dir: &Path) -> PathBuf {
        let token = self.token();
        let path = dir.join("agent.kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: sa\n\
                 clusters: [{{name: local, cluster: {{server: 'https://127.0.0.1:6443', \
                 certificate-authority: '{}'}}}}]\n\
                 contexts: [{{name: sa, context: {{cluster: local, user: sa, namespace: {}}}}}]\n\
                 users: [{{name: sa, user: {{token: '{token}'}}}}]\n",
                self.cluster.ca.display(),
                self.name
            ),
        )
        .expect("write the agent kubeconfig");
        path
    }

    pub fn token(&self) -> String {
        self.cluster
            .kubectl(&[
                "create",
                "token",
                SERVICE_ACCOUNT,
                "-n",
                &self.name,
                "--duration",
                "1h",
            ])
            .trim()
            .to_string()
    }

    pub fn objects(&self) -> Vec<String> {
        self.cluster.job_objects(&self.name)
    }

    pub fn wait_until_empty(&self, timeout: Duration) -> bool {
        self.cluster.wait_until_empty(&self.name, timeout)
    }

    /// Waits until only objects starting with one of `kept` are left.
    pub fn wait_until_empty_but(&self, timeout: Duration, kept: &[&str]) -> bool {
        wait::until(timeout, || {
            self.objects()
                .iter()
                .all(|o| kept.iter().any(|k| o.starts_with(k)))
        })
    }
}

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .try_kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// The ServiceAccount, Role and RoleBinding of
/// packaging/kubernetes/kubernetes-executor.yaml, as JSON lines for
/// `kubectl apply` (its Job template is left out).
pub fn rbac_objects() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kubernetes/kubernetes-executor.yaml");
    let text = std::fs::read_to_string(&path).expect("read kubernetes-executor.yaml");
    let mut out = String::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        if matches!(
            value["kind"].as_str(),
            Some("ServiceAccount" | "Role" | "RoleBinding")
        ) {
            out.push_str(&value.to_string());
            out.push('\n');
        }
    }
    out
}

/// The Role's rules in packaging/kubernetes/kubernetes-executor.yaml, as
/// sorted `resource:verb` pairs.
pub fn role_rules() -> Vec<String> {
    let mut pairs = Vec::new();
    for line in rbac_objects().lines() {
        let value: Value = serde_json::from_str(line).expect("json");
        if value["kind"] != "Role" {
            continue;
        }
        for rule in value["rules"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    pairs.push(format!(
                        "{}:{}",
                        resource.as_str().unwrap_or(""),
                        verb.as_str().unwrap_or("")
                    ));
                }
            }
        }
    }
    pairs.sort();
    pairs
}
