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
//! cluster, [`delete_leftovers`] removes what an earlier run of the same
//! agent name left, where the RBAC lets it list. It must not log a token.

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
    fn agent_names_become_label_values() {
        assert_eq!(agent_label_value("agent-under-test"), "agent-under-test");
        assert_eq!(agent_label_value("my agent/1"), "my-agent-1");
        assert_eq!(agent_label_value("-x-"), "x");
        assert_eq!(agent_label_value(&"a".repeat(100)).len(), 63);
    }
}
