//! The `kubernetes-*` settings, validated into `kubernetes::KubernetesConfig`.
//!
//! Owns judging those keys (regexes compile, labels are `key=value` that
//! Kubernetes accepts, the start timeout is whole seconds, default 300) and
//! reading the namespace from `KUBERNETES_NAMESPACE`. Checked whether or not
//! `--kubernetes-executor` is set, as the Go agent refuses to start on a bad
//! one either way (it panics on a bad regex; we name it).

use std::time::Duration;

use super::{boolean, list, seconds, text, ConfigError, Key};
use crate::config::RawConfig;
use crate::kubernetes::{
    parse_label, KubernetesConfig, DEFAULT_NAMESPACE, DEFAULT_POD_START_TIMEOUT,
};

/// `Some` when `kubernetes-executor` is on.
pub(super) fn kubernetes_config(
    raw: &RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<KubernetesConfig>, ConfigError> {
    let mut allowed_images = Vec::new();
    if let Some((items, origin)) = list(raw, Key::KubernetesAllowedImages) {
        for value in items {
            if let Err(e) = regex_lite::Regex::new(&value) {
                return Err(ConfigError::InvalidKubernetesImageRegex {
                    value,
                    origin: origin.clone(),
                    message: e.to_string(),
                });
            }
            allowed_images.push(value);
        }
    }
    let mut labels = Vec::new();
    if let Some((items, origin)) = list(raw, Key::KubernetesLabels) {
        for entry in items {
            match parse_label(&entry) {
                Ok(label) => labels.push(label),
                Err(reason) => {
                    return Err(ConfigError::InvalidKubernetesLabel {
                        entry,
                        origin: origin.clone(),
                        reason,
                    })
                }
            }
        }
    }
    let timeout = match text(raw, Key::KubernetesPodStartTimeout)? {
        Some(_) => seconds(raw, Key::KubernetesPodStartTimeout)?,
        None => DEFAULT_POD_START_TIMEOUT,
    };
    if !boolean(raw, Key::KubernetesExecutor)? {
        return Ok(None);
    }
    Ok(Some(KubernetesConfig {
        namespace: env("KUBERNETES_NAMESPACE")
            .filter(|ns| !ns.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        pod_spec: text(raw, Key::KubernetesPodSpec)?.map(|(s, _)| s),
        allowed_images,
        default_image: text(raw, Key::KubernetesDefaultImage)?.map(|(s, _)| s),
        labels,
        pod_start_timeout: Duration::from_secs(timeout),
        agent_name: String::new(),
    }))
}
