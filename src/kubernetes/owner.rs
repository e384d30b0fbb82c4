//! Who owns a job's objects, so that nothing is left when the agent dies.
//!
//! Owns the agent label every job pod and secret carries
//! ([`AGENT_LABEL`]: the agent's name) and, for an agent that runs in a
//! pod itself, the ownerReference to that pod: Kubernetes' garbage
//! collector then deletes the job's pod and secrets when the agent's pod
//! goes, however the agent ended (SIGKILL, OOM, node loss). The agent's pod
//! is read from its own bound service account token (its `kubernetes.io`
//! claims name the pod and its uid), so no `get` or `list` is needed and a
//! name that merely looks like a pod's cannot point elsewhere. Outside a
//! cluster, the [`Journal`] names what a run made and has not deleted yet,
//! so the next run of the same agent name deletes what a killed one left,
//! and [`delete_leftovers`] removes the rest labelled with the name, where
//! the RBAC lets it list. It must not log a token.

use std::path::PathBuf;

use base64::Engine;
use serde_json::{json, Value};

use super::client::{service_account_dir, Client, KubeError};

/// The label naming the agent on every object it creates for a job.
pub const AGENT_LABEL: &str = "semaphoreci.com/agent";

/// The agent's own pod, from its service account token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPod {
    pub name: String,
    pub uid: String,
    pub namespace: String,
}

impl OwnerPod {
    /// The agent's pod when it runs in one (`KUBERNETES_SERVICE_HOST` and
    /// a bound token with a pod claim), else `None`.
    pub fn discover() -> Option<OwnerPod> {
        std::env::var_os("KUBERNETES_SERVICE_HOST")?;
        let token = std::fs::read_to_string(service_account_dir().join("token")).ok()?;
        OwnerPod::from_token(token.trim())
    }

    /// The pod claim of a bound service account token (a JWT).
    pub fn from_token(token: &str) -> Option<OwnerPod> {
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: Value = serde_json::from_slice(&bytes).ok()?;
        let k8s = &claims["kubernetes.io"];
        let pod = &k8s["pod"];
        Some(OwnerPod {
            name: pod["name"].as_str()?.to_string(),
            uid: pod["uid"].as_str()?.to_string(),
            namespace: k8s["namespace"].as_str()?.to_string(),
        })
    }

    /// The ownerReference of a job object in the pod's namespace. Not
    /// `blockOwnerDeletion`: that needs rights on the pod's finalizers.
    pub fn reference(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.name,
            "uid": self.uid,
        })
    }
}

/// The agent's name as a label value: at most 63 letters, digits, `-`,
/// `_`, `.`, starting and ending with an alphanumeric (others become `-`).
pub fn agent_label_value(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Deletes the pods and secrets labelled with `agent` (an earlier run of
/// this agent that died before cleaning up); the count deleted. Needs
/// `list`, which the executor's Role does not grant: a 403 is the caller's
/// to report.
pub fn delete_leftovers(client: &Client, agent: &str) -> Result<usize, KubeError> {
    let selector = format!("{AGENT_LABEL}={}", agent_label_value(agent));
    let mut deleted = 0;
    for resource in ["pods", "secrets"] {
        let list = client.list(resource, &selector)?;
        for item in list["items"].as_array().into_iter().flatten() {
            let Some(name) = item["metadata"]["name"].as_str() else {
                continue;
            };
            match client.delete(resource, name) {
                Ok(()) => {
                    log::info!("Deleted {resource}/{name}, left by an earlier run of {agent}");
                    deleted += 1;
                }
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

/// The job objects an agent has made and not yet deleted, in a file of
/// its own under `$HOME/.cache/semaphore-agent/`: the next run of the same
/// agent name deletes what a killed run left, by name, with no `list`
/// (which the executor's Role lacks). Only `pods` and `secrets` named
/// `semaphore-job-...` are ever read back, so a planted file cannot make
/// the agent delete anything else.
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// The journal of `agent`, or `None` without a HOME.
    pub fn for_agent(agent: &str) -> Option<Journal> {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
        let label = agent_label_value(agent);
        if label.is_empty() {
            return None;
        }
        let dir = PathBuf::from(home).join(".cache").join("semaphore-agent");
        Some(Journal {
            path: dir.join(format!("kubernetes-{label}.objects")),
        })
    }

    /// The `(resource, name)` pairs recorded; unreadable or foreign lines
    /// are skipped.
    pub fn read(&self) -> Vec<(String, String)> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(resource, name)| {
                matches!(*resource, "pods" | "secrets") && is_job_object_name(name)
            })
            .map(|(r, n)| (r.to_string(), n.to_string()))
            .collect()
    }

    /// Records exactly `entries` (none: the file goes).
    pub fn write(&self, entries: &[(&str, &str)]) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = String::new();
        for (resource, name) in entries {
            text.push_str(&format!("{resource} {name}\n"));
        }
        let mut file = crate::private_tmp::create_private(&self.path, 0o600)?;
        std::io::Write::write_all(&mut file, text.as_bytes())
    }
}

/// `semaphore-job-` and a DNS name, as the executor names job objects.
fn is_job_object_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.starts_with("semaphore-job-")
        && name.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_pod_comes_from_the_token_s_claims() {
        let claims = json!({
            "aud": ["https://kubernetes.default.svc"],
            "kubernetes.io": {
                "namespace": "ci",
                "pod": {"name": "agent-7x", "uid": "0b6f-11"},
                "serviceaccount": {"name": "agent", "uid": "aa"},
            },
            "sub": "system:serviceaccount:ci:agent",
        });
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes())
        );
        let owner = OwnerPod::from_token(&token).expect("owner");
        assert_eq!(
            owner,
            OwnerPod {
                name: "agent-7x".into(),
                uid: "0b6f-11".into(),
                namespace: "ci".into()
            }
        );
        assert_eq!(owner.reference()["uid"], "0b6f-11");
        // A legacy token without a pod claim, or garbage: no owner.
        let legacy = format!("x.{}.y", b64(br#"{"sub":"system:serviceaccount:ci:a"}"#));
        assert_eq!(OwnerPod::from_token(&legacy), None);
        assert_eq!(OwnerPod::from_token("not a jwt"), None);
        assert_eq!(OwnerPod::from_token("a.!!!.b"), None);
    }

    #[test]
    fn the_journal_reads_back_only_job_objects() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal {
            path: dir.path().join("sub").join("j.objects"),
        };
        assert!(journal.read().is_empty());
        journal
            .write(&[
                ("pods", "semaphore-job-1"),
                ("secrets", "semaphore-job-1-secret"),
            ])
            .unwrap();
        assert_eq!(
            journal.read(),
            [
                ("pods".to_string(), "semaphore-job-1".to_string()),
                ("secrets".to_string(), "semaphore-job-1-secret".to_string())
            ]
        );
        // Planted lines for other objects or kinds are not read back.
        std::fs::write(
            &journal.path,
            "pods kube-apiserver\nconfigmaps semaphore-job-x\nsecrets semaphore-job-2/exec\npods semaphore-job-3\n",
        )
        .unwrap();
        assert_eq!(
            journal.read(),
            [("pods".to_string(), "semaphore-job-3".to_string())]
        );
        journal.write(&[]).unwrap();
        assert!(!journal.path.exists());
    }

    #[test]
    fn agent_names_become_label_values() {
        assert_eq!(agent_label_value("agent-under-test"), "agent-under-test");
        assert_eq!(agent_label_value("my agent/1"), "my-agent-1");
        assert_eq!(agent_label_value("-x-"), "x");
        assert_eq!(agent_label_value(&"a".repeat(100)).len(), 63);
    }
}
