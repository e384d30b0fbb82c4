//! `--secrets-file`: secrets in the shape `sem get secret <name> -o yaml`
//! prints (`metadata.name`, `data.env_vars[].name/value`,
//! `data.files[].path/content` with the content in base64), several in one
//! file as YAML documents (`---`) or as a list.
//!
//! Errors name the file, the secret and the field, never a value.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

/// One secret: env vars (plain values) and files (base64 content).
#[derive(Clone, Default)]
pub struct Secret {
    pub env_vars: Vec<(String, String)>,
    /// `(path, base64 content)`.
    pub files: Vec<(String, String)>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env_vars.iter().map(|(n, _)| n.as_str()).collect();
        let paths: Vec<&str> = self.files.iter().map(|(p, _)| p.as_str()).collect();
        f.debug_struct("Secret")
            .field("env_vars (values redacted)", &names)
            .field("files (content redacted)", &paths)
            .finish()
    }
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    data: Data,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct Data {
    #[serde(default)]
    env_vars: Option<Vec<EnvVar>>,
    #[serde(default)]
    files: Option<Vec<File>>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct File {
    path: String,
    #[serde(default)]
    content: String,
}

/// Reads every secret of `path` by name.
pub fn load(path: &Path) -> Result<BTreeMap<String, Secret>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secrets file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("secrets file {}: {e}", path.display()))
}

/// Parses secrets; the error never quotes a value.
pub fn parse(text: &str) -> Result<BTreeMap<String, Secret>, String> {
    let mut docs: Vec<Doc> = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(de).map_err(|e| {
            format!(
                "document {} is not valid YAML: {}",
                i + 1,
                location_only(&e)
            )
        })?;
        let items = match value {
            serde_yaml_ng::Value::Null => Vec::new(),
            serde_yaml_ng::Value::Sequence(items) => items,
            other => vec![other],
        };
        for item in items {
            let doc: Doc = serde_yaml_ng::from_value(item).map_err(|e| {
                format!(
                    "document {} is not a secret (metadata.name, data.env_vars, data.files): {}",
                    i + 1,
                    location_only(&e)
                )
            })?;
            docs.push(doc);
        }
    }
    let mut out = BTreeMap::new();
    for doc in docs {
        let name = doc.metadata.name;
        if name.is_empty() {
            return Err("a secret has no metadata.name".into());
        }
        let mut secret = Secret::default();
        for var in doc.data.env_vars.unwrap_or_default() {
            if !crate::request::is_identifier(&var.name) {
                return Err(format!(
                    "secret {name}: env var name {:?} is not a valid name",
                    var.name
                ));
            }
            secret.env_vars.push((var.name, var.value));
        }
        for file in doc.data.files.unwrap_or_default() {
            let content: String = file.content.split_whitespace().collect();
            if base64::engine::general_purpose::STANDARD
                .decode(content.as_bytes())
                .is_err()
            {
                return Err(format!(
                    "secret {name}: the content of file {} is not valid base64",
                    file.path
                ));
            }
            secret.files.push((file.path, content));
        }
        if out.insert(name.clone(), secret).is_some() {
            return Err(format!("secret {name} is given twice"));
        }
    }
    Ok(out)
}

/// serde's message without the value it may quote (`invalid type: string
/// "hunter2"`): only what kind of problem and where.
fn location_only(e: &serde_yaml_ng::Error) -> String {
    match e.location() {
        Some(l) => format!(
            "{} at line {} column {}",
            e.to_string().split(':').next().unwrap_or("error"),
            l.line(),
            l.column()
        ),
        None => e
            .to_string()
            .split(':')
            .next()
            .unwrap_or("error")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_lists_of_secrets() {
        let text = "apiVersion: v1beta\nkind: Secret\nmetadata:\n  name: aws\ndata:\n  env_vars:\n    - name: AWS_KEY\n      value: hunter2-hunter2\n  files:\n    - path: .aws/creds\n      content: aGVsbG8=\n---\n- metadata:\n    name: other\n  data:\n    env_vars: []\n";
        let s = parse(text).unwrap_or_default();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s["aws"].env_vars,
            vec![("AWS_KEY".to_string(), "hunter2-hunter2".to_string())]
        );
        assert_eq!(s["aws"].files[0].0, ".aws/creds");
        assert!(!format!("{:?}", s["aws"]).contains("hunter2"));
    }

    #[test]
    fn bad_secrets_files_never_quote_a_value() {
        for (text, part) in [
            ("metadata:\n  name: a\ndata:\n  env_vars:\n    - name: A\n      value: [hunter2]\n", "not a secret"),
            ("metadata: {}\n", "no metadata.name"),
            ("metadata:\n  name: a\ndata:\n  files:\n    - path: x\n      content: 'hunter2!!'\n", "not valid base64"),
            ("metadata:\n  name: a\n---\nmetadata:\n  name: a\n", "given twice"),
            ("metadata:\n  name: a\ndata:\n  env_vars:\n    - name: 'A B'\n      value: hunter2\n", "not a valid name"),
        ] {
            match parse(text) {
                Ok(_) => panic!("{text} parsed"),
                Err(e) => {
                    assert!(e.contains(part), "{e}");
                    assert!(!e.contains("hunter2"), "{e}");
                }
            }
        }
    }
}
