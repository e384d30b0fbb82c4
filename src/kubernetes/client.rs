//! A small Kubernetes REST client: the six calls the executor makes
//! (GET a ConfigMap, POST a Secret, POST/GET/DELETE a Pod, DELETE a
//! Secret), JSON in and out, over ureq + rustls.
//!
//! Owns finding the cluster and the credentials the way client-go does for
//! the Go agent: in a pod, the service account (token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount`, the API at
//! `KUBERNETES_SERVICE_HOST`:`KUBERNETES_SERVICE_PORT`), the token read
//! again before each call so a rotated token is picked up; elsewhere the
//! kubeconfig (`KUBECONFIG`, else `~/.kube/config`) with its current
//! context's server, CA, and bearer token or client certificate. It must
//! not log a token or put one into an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::url_encode;

/// The service account directory inside a pod.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The bound on every call, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of an answer read, whatever the server sends.
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

/// What went wrong talking to Kubernetes. Each variant names the call and
/// the object; `Display` reads as one sentence for the job log.
#[derive(Debug)]
pub enum KubeError {
    /// Neither a service account nor a usable kubeconfig.
    NoConfig { message: String },
    /// A kubeconfig or service account file is unreadable or malformed.
    BadConfig { path: PathBuf, message: String },
    /// No HTTP answer (connect, TLS, timeout).
    Transport {
        call: String,
        object: String,
        message: String,
    },
    /// The API answered with an error status; `message` is the API's own
    /// message (from its `Status` object) or an excerpt of the body.
    Status {
        call: String,
        object: String,
        status: u16,
        message: String,
    },
    /// A 2xx answer that is not the JSON expected.
    BadAnswer {
        call: String,
        object: String,
        message: String,
    },
}

impl KubeError {
    /// The HTTP status, for an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            KubeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for KubeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeError::NoConfig { message } => {
                write!(f, "no Kubernetes configuration found: {message}")
            }
            KubeError::BadConfig { path, message } => {
                write!(
                    f,
                    "invalid Kubernetes configuration {}: {message}",
                    path.display()
                )
            }
            KubeError::Transport {
                call,
                object,
                message,
            } => write!(f, "{call} {object} failed: {message}"),
            KubeError::Status {
                call,
                object,
                status,
                message,
            } => write!(f, "{call} {object} failed: HTTP {status}: {message}"),
            KubeError::BadAnswer {
                call,
                object,
                message,
            } => write!(f, "{call} {object} failed: unexpected answer: {message}"),
        }
    }
}

impl std::error::Error for KubeError {}

/// Why a credential (token, certificate, key) cannot be read: the part of
/// a [`KubeError::BadConfig`] message (or an exec failure) after the
/// field's name.
#[derive(Debug)]
pub(super) enum CredentialError {
    /// The service account's token file cannot be read.
    ReadToken {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A kubeconfig `*-data` value is not base64.
    DecodeBase64 { message: String },
    /// A file a kubeconfig names cannot be read.
    ReadFile {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A PEM bundle does not parse.
    ParsePem { message: String },
    /// A PEM bundle parses but holds no certificate.
    NoCertificate,
}

impl std::fmt::Display for CredentialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialError::ReadToken { path, error } => {
                write!(f, "cannot read the token {}: {error}", path.display())
            }
            CredentialError::DecodeBase64 { message } => {
                write!(f, "not valid base64: {message}")
            }
            CredentialError::ReadFile { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            CredentialError::ParsePem { message } => f.write_str(message),
            CredentialError::NoCertificate => f.write_str("no PEM certificate found"),
        }
    }
}

impl std::error::Error for CredentialError {}

/// How calls are authenticated.
#[derive(Clone)]
enum Auth {
    /// A token file read before every call (service account tokens rotate).
    TokenFile(PathBuf),
    Token(String),
    /// A client certificate (in the TLS config) or nothing.
    None,
}

/// The TLS material of a client, kept for connections ureq does not make
/// (the exec WebSocket, `exec.rs`, Unix only).
#[derive(Clone, Default)]
#[cfg_attr(not(unix), allow(dead_code))]
pub(super) struct TlsMaterial {
    /// DER certificates to trust; `None` trusts the system's roots.
    pub roots: Option<Vec<Vec<u8>>>,
    /// A client certificate chain (DER) and its key (DER).
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    pub insecure: bool,
}

/// A client for one cluster and namespace.
pub struct Client {
    /// `https://host:port`, without a trailing slash.
    server: String,
    namespace: String,
    auth: Auth,
    agent: ureq::Agent,
    tls: TlsMaterial,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Finds the cluster from the agent's environment: in-cluster when
    /// `KUBERNETES_SERVICE_HOST` is set and the service account token
    /// exists, else the kubeconfig.
    pub fn discover(namespace: &str) -> Result<Client, KubeError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let dir = service_account_dir();
        if let (Some(host), true) = (env("KUBERNETES_SERVICE_HOST"), dir.join("token").is_file()) {
            let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            return Client::in_cluster(&dir, &host, &port, namespace);
        }
        let path = match env("KUBECONFIG") {
            // client-go merges a list; the first file that exists is
            // where a single-cluster setup keeps its context.
            Some(list) => std::env::split_paths(&list)
                .find(|p| p.is_file())
                .ok_or_else(|| KubeError::NoConfig {
                    message: format!("no file of KUBECONFIG={list} exists"),
                })?,
            None => {
                let home = env("HOME").ok_or_else(|| KubeError::NoConfig {
                    message: "not in a pod (KUBERNETES_SERVICE_HOST unset) and HOME unset"
                        .to_string(),
                })?;
                let path = Path::new(&home).join(".kube").join("config");
                if !path.is_file() {
                    return Err(KubeError::NoConfig {
                        message: format!(
                            "not in a pod (KUBERNETES_SERVICE_HOST unset or no service \
                             account token) and {} does not exist",
                            path.display()
                        ),
                    });
                }
                path
            }
        };
        Client::from_kubeconfig(&path, namespace)
    }

    /// The client of a pod's service account in `dir`.
    pub fn in_cluster(
        dir: &Path,
        host: &str,
        port: &str,
        namespace: &str,
    ) -> Result<Client, KubeError> {
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|e| KubeError::BadConfig {
            path: ca_path.clone(),
            message: e.to_string(),
        })?;
        let roots = pem_certs(&ca).map_err(|e| KubeError::BadConfig {
            path: ca_path,
            message: e.to_string(),
        })?;
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let server = format!("https://{host}:{port}");
        let material = TlsMaterial {
            roots: Some(roots.iter().map(|c| c.der().to_vec()).collect()),
            client: None,
            insecure: false,
        };
        let tls = tls_config(Some(roots), None, false);
        Ok(Client::new(
            server,
            namespace,
            Auth::TokenFile(dir.join("token")),
            tls,
            material,
        ))
    }

    /// The client of the kubeconfig at `path` (its current context).
    pub fn from_kubeconfig(path: &Path, namespace: &str) -> Result<Client, KubeError> {
        let bad = |message: String| KubeError::BadConfig {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let config: KubeConfig = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let context_name = config.current_context.as_deref().unwrap_or("");
        let context = config
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .map(|c| &c.context)
            .ok_or_else(|| bad(format!("current-context '{context_name}' not found")))?;
        let cluster = config
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .map(|c| &c.cluster)
            .ok_or_else(|| bad(format!("cluster '{}' not found", context.cluster)))?;
        let user = match &context.user {
            Some(name) => config
                .users
                .iter()
                .find(|u| &u.name == name)
                .map(|u| u.user.clone())
                .ok_or_else(|| bad(format!("user '{name}' not found")))?,
            None => KubeUser::default(),
        };
        let server = cluster.server.trim_end_matches('/').to_string();
        if !server.starts_with("https://") && !server.starts_with("http://") {
            return Err(bad(format!("server '{server}' is not an http(s) URL")));
        }
        let data_or_file = |data: &Option<String>, file: &Option<String>, what: &str| {
            read_data_or_file(base, data, file).map_err(|e| bad(format!("{what}: {e}")))
        };
        let roots = data_or_file(
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
            "certificate-authority",
        )?
        .map(|pem| pem_certs(&pem).map_err(|e| bad(format!("certificate-authority: {e}"))))
        .transpose()?;
        let cert = data_or_file(
            &user.client_certificate_data,
            &user.client_certificate,
            "client-certificate",
        )?;
        let key = data_or_file(&user.client_key_data, &user.client_key, "client-key")?;
        let mut material = TlsMaterial {
            roots: roots
                .as_ref()
                .map(|certs| certs.iter().map(|c| c.der().to_vec()).collect()),
            client: None,
            insecure: cluster.insecure_skip_tls_verify,
        };
        let client_cert = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain =
                    pem_certs(&cert).map_err(|e| bad(format!("client-certificate: {e}")))?;
                let key = ureq::tls::PrivateKey::from_pem(&key)
                    .map_err(|e| bad(format!("client-key: {e}")))?
                    .to_owned();
                material.client = Some((
                    chain.iter().map(|c| c.der().to_vec()).collect(),
                    key.der().to_vec(),
                ));
                Some(ureq::tls::ClientCert::new_with_certs(&chain, key))
            }
            (None, None) => None,
            _ => {
                return Err(bad(
                    "a client certificate needs both client-certificate and client-key".into(),
                ))
            }
        };
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(bad(
                "user credentials from 'exec' or 'auth-provider' plugins are not supported; \
                 use a token or a client certificate"
                    .into(),
            ));
        }
        let auth = match (&user.token, &user.token_file) {
            (Some(token), _) => Auth::Token(token.clone()),
            (None, Some(file)) => Auth::TokenFile(base.join(file)),
            (None, None) => Auth::None,
        };
        let tls = tls_config(roots, client_cert, cluster.insecure_skip_tls_verify);
        Ok(Client::new(server, namespace, auth, tls, material))
    }

    fn new(
        server: String,
        namespace: &str,
        auth: Auth,
        tls: ureq::tls::TlsConfig,
        material: TlsMaterial,
    ) -> Client {
        let agent = crate::net::new_agent(
            crate::net::http_config(&server)
                .tls_config(tls)
                .http_status_as_error(false)
                .user_agent(format!("semaphore-agent/{}", crate::VERSION))
                .timeout_global(Some(CALL_TIMEOUT))
                .build(),
        );
        Client {
            server,
            namespace: namespace.to_string(),
            auth,
            agent,
            tls: material,
        }
    }

    /// `https://host:port` of the API.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(super) fn server(&self) -> &str {
        &self.server
    }

    #[cfg_attr(not(unix), allow(dead_code))]
    pub(super) fn tls_material(&self) -> &TlsMaterial {
        &self.tls
    }

    /// The `Authorization` header's value, read now (a token file rotates);
    /// `Ok(None)` for a client certificate.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(super) fn bearer(&self) -> Result<Option<String>, CredentialError> {
        match &self.auth {
            Auth::Token(token) => Ok(Some(format!("Bearer {token}"))),
            Auth::TokenFile(path) => std::fs::read_to_string(path)
                .map(|t| Some(format!("Bearer {}", t.trim())))
                .map_err(|error| CredentialError::ReadToken {
                    path: path.clone(),
                    error,
                }),
            Auth::None => Ok(None),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn url(&self, resource: &str, name: Option<&str>) -> String {
        let mut url = format!(
            "{}/api/v1/namespaces/{}/{resource}",
            self.server, self.namespace
        );
        match name {
            Some(query) if query.starts_with('?') => url.push_str(query),
            Some(name) => {
                url.push('/');
                url.push_str(name);
            }
            None => {}
        }
        url
    }

    /// `GET configmaps/<name>`.
    pub fn get_config_map(&self, name: &str) -> Result<Value, KubeError> {
        self.call("GET", "configmaps", Some(name), None)
    }

    /// `GET pods/<name>`.
    pub fn get_pod(&self, name: &str) -> Result<Value, KubeError> {
        self.call("GET", "pods", Some(name), None)
    }

    /// `POST <resource>` of `object` (`secrets`, `pods`).
    pub fn create(&self, resource: &str, object: &Value) -> Result<Value, KubeError> {
        self.call("POST", resource, None, Some(object))
    }

    /// `GET <resource>?labelSelector=<selector>` (needs `list`).
    pub fn list(&self, resource: &str, selector: &str) -> Result<Value, KubeError> {
        let query = format!("?labelSelector={}", url_encode(selector));
        self.call("GET", resource, Some(&query), None)
    }

    /// `DELETE <resource>/<name>`.
    pub fn delete(&self, resource: &str, name: &str) -> Result<(), KubeError> {
        self.call("DELETE", resource, Some(name), None).map(|_| ())
    }

    fn call(
        &self,
        method: &str,
        resource: &str,
        name: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, KubeError> {
        let kind = resource.trim_end_matches('s');
        let object_name = name
            .map(str::to_string)
            .or_else(|| body.and_then(|b| b["metadata"]["name"].as_str().map(str::to_string)))
            .unwrap_or_default();
        let listing = name.is_some_and(|n| n.starts_with('?'));
        let call = match method {
            "GET" if listing => "listing",
            "GET" => "getting",
            "POST" => "creating",
            _ => "deleting",
        };
        let object = if listing {
            format!("{resource} in namespace '{}'", self.namespace)
        } else {
            format!("{kind} '{object_name}' in namespace '{}'", self.namespace)
        };
        let err_transport = |message: String| KubeError::Transport {
            call: call.to_string(),
            object: object.clone(),
            message,
        };
        let url = self.url(resource, name);
        let auth = match &self.auth {
            Auth::Token(token) => Some(token.clone()),
            Auth::TokenFile(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        err_transport(format!("cannot read the token {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            Auth::None => None,
        };
        let bearer = auth.map(|t| format!("Bearer {t}"));
        let sent = match (method, body) {
            ("POST", Some(body)) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json");
                if let Some(b) = &bearer {
                    req = req.header("Authorization", b);
                }
                req.send(body.to_string())
            }
            ("DELETE", _) => {
                let mut req = self.agent.delete(&url).header("Accept", "application/json");
                if let Some(b) = &bearer {
                    req = req.header("Authorization", b);
                }
                req.call()
            }
            _ => {
                let mut req = self.agent.get(&url).header("Accept", "application/json");
                if let Some(b) = &bearer {
                    req = req.header("Authorization", b);
                }
                req.call()
            }
        };
        let mut response = sent.map_err(|e| err_transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| err_transport(format!("reading the answer: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(KubeError::Status {
                call: call.to_string(),
                object,
                status,
                message: api_message(&text),
            });
        }
        serde_json::from_str(&text).map_err(|e| KubeError::BadAnswer {
            call: call.to_string(),
            object,
            message: e.to_string(),
        })
    }
}

/// The API's explanation of an error: its `Status` object's `message`, or
/// the start of the body.
fn api_message(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        if let Some(message) = value["message"].as_str() {
            return message.to_string();
        }
    }
    let excerpt: String = body.trim().chars().take(200).collect();
    if excerpt.is_empty() {
        "(empty answer)".to_string()
    } else {
        excerpt
    }
}

/// The service account directory; test builds let tests point it
/// elsewhere with `SEMAPHORE_AGENT_TEST_SERVICE_ACCOUNT_DIR`.
pub(super) fn service_account_dir() -> PathBuf {
    crate::test_knobs::path("SERVICE_ACCOUNT_DIR")
        .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR))
}

fn tls_config(
    roots: Option<Vec<ureq::tls::Certificate<'static>>>,
    client_cert: Option<ureq::tls::ClientCert>,
    insecure: bool,
) -> ureq::tls::TlsConfig {
    let roots = match roots {
        Some(certs) => ureq::tls::RootCerts::new_with_certs(&certs),
        // No CA in the kubeconfig: the roots every other call trusts.
        None => crate::net::tls_config().root_certs().clone(),
    };
    ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(roots)
        .client_cert(client_cert)
        .disable_verification(insecure)
        .build()
}

/// Every certificate in a PEM bundle; an error when there is none.
fn pem_certs(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, CredentialError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let ureq::tls::PemItem::Certificate(cert) =
            item.map_err(|e| CredentialError::ParsePem {
                message: e.to_string(),
            })?
        {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(CredentialError::NoCertificate);
    }
    Ok(certs)
}

/// A kubeconfig value given inline (`*-data`, base64 of PEM) or as a file
/// (relative to the kubeconfig's directory).
fn read_data_or_file(
    base: &Path,
    data: &Option<String>,
    file: &Option<String>,
) -> Result<Option<Vec<u8>>, CredentialError> {
    if let Some(data) = data {
        return crate::request::decode_base64(data).map(Some).map_err(|e| {
            CredentialError::DecodeBase64 {
                message: e.to_string(),
            }
        });
    }
    if let Some(file) = file {
        let path = base.join(file);
        return std::fs::read(&path)
            .map(Some)
            .map_err(|error| CredentialError::ReadFile { path, error });
    }
    Ok(None)
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct KubeConfig {
    current_context: Option<String>,
    contexts: Vec<Named<KubeContext>>,
    clusters: Vec<NamedCluster>,
    users: Vec<NamedUser>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Named<T> {
    name: String,
    context: T,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct KubeContext {
    cluster: String,
    user: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NamedCluster {
    name: String,
    cluster: KubeCluster,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NamedUser {
    name: String,
    user: KubeUser,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default, rename_all = "kebab-case")]
struct KubeUser {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
}

/// A client of the API server at `server` with a bearer token, from a
/// kubeconfig in a temporary dir (kept alive by the returned guard): the
/// exec tests' (WebSocket and SPDY) one way to reach their fake endpoints.
#[cfg(all(test, unix))]
pub(crate) fn test_client(server: &str) -> (tempfile::TempDir, Client) {
    test_client_trusting(server, None)
}

/// [`test_client`] trusting the CA `ca_pem` (an `https://` server's).
#[cfg(all(test, unix))]
pub(crate) fn test_client_trusting(
    server: &str,
    ca_pem: Option<&str>,
) -> (tempfile::TempDir, Client) {
    use base64::Engine as _;
    let ca = ca_pem.map_or(String::new(), |pem| {
        format!(
            ", certificate-authority-data: '{}'",
            base64::engine::general_purpose::STANDARD.encode(pem)
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    std::fs::write(
        &path,
        format!(
            "current-context: c\ncontexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
                 clusters: [{{name: k, cluster: {{server: '{server}'{ca}}}}}]\n\
                 users: [{{name: u, user: {{token: t0k3n}}}}]\n"
        ),
    )
    .unwrap();
    let client = Client::from_kubeconfig(&path, "ns").unwrap();
    (dir, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_carry_the_status_message() {
        let body = r#"{"kind":"Status","status":"Failure","message":"pods \"x\" already exists","code":409}"#;
        assert_eq!(api_message(body), "pods \"x\" already exists");
        assert_eq!(api_message(""), "(empty answer)");
        assert_eq!(api_message("oops"), "oops");
        let err = KubeError::Status {
            call: "creating".into(),
            object: "pod 'x' in namespace 'ns'".into(),
            status: 409,
            message: "already exists".into(),
        };
        assert_eq!(
            err.to_string(),
            "creating pod 'x' in namespace 'ns' failed: HTTP 409: already exists"
        );
    }

    #[test]
    fn a_kubeconfig_without_its_context_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\ncurrent-context: nope\ncontexts: []\nclusters: []\nusers: []\n",
        )
        .unwrap();
        let err = Client::from_kubeconfig(&path, "default").unwrap_err();
        assert!(err.to_string().contains("'nope'"), "{err}");
        std::fs::write(
            &path,
            "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n\
             clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {exec: {command: aws}}}]\n",
        )
        .unwrap();
        let err = Client::from_kubeconfig(&path, "default").unwrap_err();
        assert!(err.to_string().contains("exec"), "{err}");
        std::fs::write(
            &path,
            "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n\
             clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1', certificate-authority-data: '!!'}}]\n\
             users: [{name: u, user: {token: t}}]\n",
        )
        .unwrap();
        let err = Client::from_kubeconfig(&path, "default").unwrap_err();
        assert!(err.to_string().contains("certificate-authority"), "{err}");
    }

    #[test]
    fn a_kubeconfig_with_a_client_certificate_builds_a_client() {
        use base64::Engine;
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["agent".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let config = |user: String| {
            format!(
                "current-context: c\ncontexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
                 clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:6443/', \
                 certificate-authority-data: '{}'}}}}]\nusers: [{{name: u, user: {user}}}]\n",
                b64(&cert.pem())
            )
        };
        std::fs::write(
            &path,
            config(format!(
                "{{client-certificate-data: '{}', client-key: key.pem}}",
                b64(&cert.pem())
            )),
        )
        .unwrap();
        let client = Client::from_kubeconfig(&path, "ns").unwrap();
        assert_eq!(client.server, "https://127.0.0.1:6443");
        assert_eq!(
            client.url("pods", Some("p")),
            "https://127.0.0.1:6443/api/v1/namespaces/ns/pods/p"
        );
        std::fs::write(
            &path,
            config(format!(
                "{{client-certificate-data: '{}'}}",
                b64(&cert.pem())
            )),
        )
        .unwrap();
        let err = Client::from_kubeconfig(&path, "ns").unwrap_err();
        assert!(err.to_string().contains("client-key"), "{err}");
    }
}
