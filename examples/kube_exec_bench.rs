//! Kubernetes exec benchmark (not a test): the throughput of 10 MB of job
//! output from a pod through the agent's SPDY/3.1 exec
//! (`kubernetes::SpdyExec`, what runs under the Helm charts' Role), its
//! exec WebSocket (`kubernetes::ExecSocket`, `v5.channel.k8s.io`) and
//! `kubectl exec` (the baseline), in the same run, on the same pod,
//! against the real single-node cluster of `.ci/k8s-cluster.sh up`
//! (everything on 127.0.0.1).
//!
//! Run with `bash .ci/k8s-cluster.sh up && cargo run --release --example
//! kube_exec_bench`. It creates a pod `exec-bench` of the cluster's job
//! image in the namespace `default`, runs `head -c 10485760 /dev/zero | tr
//! '\0' x` in it three times each way (no TTY, so all move the same
//! bytes), prints the median MB/s of each and the ratios to kubectl, and
//! deletes the pod.

#[cfg(unix)]
fn main() {
    if let Err(e) = bench::run() {
        eprintln!("kube_exec_bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(unix))]
fn main() {
    eprintln!("kube_exec_bench: Unix only");
}

#[cfg(unix)]
mod bench {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use semaphore_agent::kubernetes::{Client, Event, ExecSocket, ExecStream, SpdyExec};

    const BYTES: usize = 10 * 1024 * 1024;
    const POD: &str = "exec-bench";
    const ROUNDS: usize = 3;

    struct Cluster {
        kubectl: PathBuf,
        kubeconfig: PathBuf,
    }

    impl Cluster {
        fn find() -> Result<Cluster, String> {
            let home =
                std::env::var("K8S_HOME").unwrap_or_else(|_| "/var/tmp/semaphore-ci-k8s".into());
            let path = Path::new(&home).join("run/env");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "no cluster ({}: {e}); run `bash .ci/k8s-cluster.sh up`",
                    path.display()
                )
            })?;
            let get = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("{key} missing in {}", path.display()))
            };
            Ok(Cluster {
                kubectl: get("KUBECTL")?,
                kubeconfig: get("KUBECONFIG")?,
            })
        }

        fn kubectl(&self) -> Command {
            let mut cmd = Command::new(&self.kubectl);
            cmd.arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["-n", "default"]);
            cmd
        }

        fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
            use std::io::Write;
            let mut child = self
                .kubectl()
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            if let Some(text) = stdin {
                child
                    .stdin
                    .take()
                    .ok_or("no stdin")?
                    .write_all(text.as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            drop(child.stdin.take());
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "kubectl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    }

    fn command() -> Vec<String> {
        ["sh", "-c", "head -c 10485760 /dev/zero | tr '\\0' x"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Bytes of stdout and seconds, through the agent's WebSocket or SPDY.
    fn agent_exec(client: &Client, spdy: bool) -> Result<(usize, f64), String> {
        let started = Instant::now();
        let mut session: Box<dyn ExecStream> = if spdy {
            Box::new(
                SpdyExec::open(client, POD, "main", &command(), false)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            Box::new(
                ExecSocket::open(client, POD, "main", &command(), false)
                    .map_err(|e| e.to_string())?,
            )
        };
        let mut bytes = 0;
        let deadline = started + Duration::from_secs(300);
        loop {
            if Instant::now() > deadline {
                return Err("the exec did not end within 300 s".into());
            }
            match session.next_event().map_err(|e| e.to_string())? {
                Event::Output(data) => bytes += data.len(),
                Event::Exited(Ok(0)) => {}
                Event::Exited(other) => return Err(format!("the command ended with {other:?}")),
                Event::Idle => {}
                Event::Closed => break,
            }
        }
        Ok((bytes, started.elapsed().as_secs_f64()))
    }

    /// Bytes of stdout and seconds, through `kubectl exec`.
    fn kubectl(cluster: &Cluster) -> Result<(usize, f64), String> {
        use std::io::Read;
        let started = Instant::now();
        let mut child = cluster
            .kubectl()
            .args(["exec", "-i=false", POD, "-c", "main", "--"])
            .args(command())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0;
        loop {
            let n = stdout.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            bytes += n;
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("kubectl exec: {status}"));
        }
        Ok((bytes, started.elapsed().as_secs_f64()))
    }

    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    pub fn run() -> Result<(), String> {
        let cluster = Cluster::find()?;
        let _ = cluster.run(
            &["delete", "pod", POD, "--ignore-not-found", "--wait=true"],
            None,
        );
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{POD}"}},"spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"main","image":"docker.io/local/job:1","imagePullPolicy":"IfNotPresent","command":["sleep","infinity"]}}]}}}}"#
        );
        cluster.run(&["apply", "-f", "-"], Some(&pod))?;
        let result = (|| {
            cluster.run(
                &[
                    "wait",
                    "--for=condition=Ready",
                    &format!("pod/{POD}"),
                    "--timeout=120s",
                ],
                None,
            )?;
            let client = Client::from_kubeconfig(&cluster.kubeconfig, "default")
                .map_err(|e| e.to_string())?;
            let mut spdy = Vec::new();
            let mut ws = Vec::new();
            let mut kc = Vec::new();
            for round in 0..ROUNDS {
                // Alternated, so a machine that slows down mid-run hits all.
                for (name, rates, use_spdy) in
                    [("SPDY", &mut spdy, true), ("WebSocket", &mut ws, false)]
                {
                    let (bytes, secs) = agent_exec(&client, use_spdy)?;
                    if bytes != BYTES {
                        return Err(format!("{name} round {round}: {bytes} bytes, not {BYTES}"));
                    }
                    rates.push(bytes as f64 / secs / 1e6);
                }
                let (bytes, secs) = kubectl(&cluster)?;
                if bytes != BYTES {
                    return Err(format!("kubectl round {round}: {bytes} bytes, not {BYTES}"));
                }
                kc.push(bytes as f64 / secs / 1e6);
            }
            let (spdy, ws, kc) = (median(spdy), median(ws), median(kc));
            println!("10 MiB of output from a pod, median of {ROUNDS} rounds each:");
            println!("  agent SPDY/3.1 exec  : {spdy:8.1} MB/s");
            println!("  agent exec WebSocket : {ws:8.1} MB/s");
            println!("  kubectl exec (base)  : {kc:8.1} MB/s");
            println!("  ratio SPDY / kubectl: {:.2}", spdy / kc);
            println!("  ratio WebSocket / kubectl: {:.2}", ws / kc);
            Ok(())
        })();
        let _ = cluster.run(
            &["delete", "pod", POD, "--ignore-not-found", "--wait=false"],
            None,
        );
        result
    }
}
