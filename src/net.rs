//! The agent's HTTP clients' shared rules: TLS roots, proxy choice,
//! redirects, and what a transport error means.
//!
//! Every client of the agent (the control plane in `api`, the log server in
//! `logs`, the Kubernetes API) builds its ureq agent from here so they all
//! trust the same roots and pick proxies the same way. It must not know any
//! endpoint or wire format.

use std::time::Duration;

/// Builds the HTTP agent used for every call to `url`'s host: certificate
/// verification always on (system roots, else bundled Mozilla roots), the
/// proxy chosen from the environment the way Go's net/http does, and
/// `timeout` for connecting and for each answer. The log pusher builds its
/// client from [`http_config`], so it follows the same TLS and proxy rules.
pub fn http_agent(url: &str, timeout: Duration) -> ureq::Agent {
    let config = http_config(url)
        .http_status_as_error(false)
        .user_agent(format!("SemaphoreAgent/{}", crate::VERSION))
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(timeout))
        .timeout_send_body(Some(timeout))
        // A bound on the whole call, so a server trickling bytes cannot hold
        // the sync loop forever.
        .timeout_global(Some(timeout * 2))
        .build();
    new_agent(config)
}

/// The ureq agent for `config`, with [`LiteralFirst`] as its resolver.
/// Every HTTP client of the agent is made here.
pub fn new_agent(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        LiteralFirst::default(),
    )
}

/// ureq's resolver, except for an endpoint that is an IP address: that is
/// its own answer. With a timeout set (every call of the agent has one),
/// ureq's resolver looks each name up on a new thread so it can give up on
/// it; for `127.0.0.1:8000` that is a thread spawned (and waited for) per
/// request, on the start path before `/register` and again at every sync.
#[derive(Debug, Default)]
pub struct LiteralFirst {
    names: ureq::unversioned::resolver::DefaultResolver,
}

impl ureq::unversioned::resolver::Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        match literal_address(uri) {
            Some(addr) if config.ip_family().keep_wanted([addr].into_iter()).count() == 1 => {
                let mut found = self.empty();
                found.push(addr);
                Ok(found)
            }
            _ => self.names.resolve(uri, config, timeout),
        }
    }
}

/// The socket address of a URI whose host is an IP address (`[v6]` in
/// brackets), with the scheme's port when it names none; `None` for a name.
fn literal_address(uri: &ureq::http::Uri) -> Option<std::net::SocketAddr> {
    let authority = uri.authority()?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: std::net::IpAddr = host.parse().ok()?;
    let port = authority.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    Some(std::net::SocketAddr::new(ip, port))
}

/// The settings every HTTP client of the agent shares, whoever it talks
/// to at `url` (the control plane, the log server): certificate checks
/// against the system roots (SSL_CERT_FILE / SSL_CERT_DIR when set) else
/// the bundled Mozilla roots, and the proxy picked by [`proxy_for`]. Without
/// this, ureq's defaults would ignore SSL_CERT_FILE and proxy loopback.
pub fn http_config(url: &str) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    let mut builder = ureq::Agent::config_builder();
    // Reading the system's roots takes tens of milliseconds; plain http
    // (`--no-https`) never needs them.
    if url.starts_with("https://") {
        builder = builder.tls_config(tls_config());
    }
    builder
        .proxy(proxy_for(url, &|name| std::env::var(name).ok()))
        // A redirect is answered as the error it is: following one would
        // turn a POST into a GET and drop the Authorization header, and the
        // resulting 401 would blame the token instead of the endpoint.
        .max_redirects(0)
}

/// The TLS settings, built once per process: reading the system's roots
/// costs tens of milliseconds, and every job's log pusher needs them too.
pub(crate) fn tls_config() -> ureq::tls::TlsConfig {
    static CONFIG: std::sync::OnceLock<ureq::tls::TlsConfig> = std::sync::OnceLock::new();
    CONFIG.get_or_init(load_tls_config).clone()
}

fn load_tls_config() -> ureq::tls::TlsConfig {
    let native = rustls_native_certs::load_native_certs();
    let roots: Vec<ureq::tls::Certificate<'static>> = native
        .certs
        .iter()
        .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    let root_certs = if roots.is_empty() {
        log::debug!("No system root certificates found; using the bundled Mozilla roots");
        ureq::tls::RootCerts::WebPki
    } else {
        ureq::tls::RootCerts::new_with_certs(&roots)
    };
    ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(root_certs)
        .build()
}

/// Picks the proxy for `url` like Go's `http.ProxyFromEnvironment`:
/// `HTTPS_PROXY` for https, `HTTP_PROXY` for http (upper case first), none
/// for loopback hosts or hosts matched by `NO_PROXY`. ureq's own
/// `Proxy::try_from_env` would also use `ALL_PROXY`, use `HTTP_PROXY` for
/// https, and match `NO_PROXY` entries without their subdomains.
fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<ureq::Proxy> {
    let (scheme, rest) = url.split_once("://")?;
    let names: &[&str] = match scheme {
        "https" => &["HTTPS_PROXY", "https_proxy"],
        "http" => &["HTTP_PROXY", "http_proxy"],
        _ => return None,
    };
    let proxy = names
        .iter()
        .find_map(|n| env(n).filter(|v| !v.is_empty()))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = split_host_port(authority);
    let default_port = if scheme == "https" { "443" } else { "80" };
    let port = port.unwrap_or(default_port);
    if is_loopback(&host) {
        return None;
    }
    let no_proxy = env("NO_PROXY")
        .or_else(|| env("no_proxy"))
        .unwrap_or_default();
    if no_proxy_matches(&no_proxy, &host, port) {
        return None;
    }
    match ureq::Proxy::new(&proxy) {
        Ok(p) => Some(p),
        Err(e) => {
            // The proxy URL may hold credentials: say which variable, not its value.
            log::warn!(
                "Ignoring the proxy from {}: not a valid proxy URL ({e})",
                names[0]
            );
            None
        }
    }
}

/// Splits `host:port` / `[v6]:port`; the host comes back lower case without brackets.
fn split_host_port(authority: &str) -> (String, Option<&str>) {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host.to_ascii_lowercase(), after.strip_prefix(':'));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_ascii_lowercase(), Some(port)),
        _ => (authority.to_ascii_lowercase(), None),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Go's NO_PROXY rules: `*` matches all; `example.com` and `.example.com`
/// match the host and its subdomains; an entry may carry a port; an IP
/// matches exactly and a CIDR matches the addresses inside it.
fn no_proxy_matches(no_proxy: &str, host: &str, port: &str) -> bool {
    let host_ip = host.parse::<std::net::IpAddr>().ok();
    no_proxy
        .split(',')
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                return match (
                    host_ip,
                    net.parse::<std::net::IpAddr>(),
                    bits.parse::<u32>(),
                ) {
                    (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            let (entry_host, entry_port) = split_host_port(&entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            if let Some(ip) = host_ip {
                return entry_host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|e| e == ip);
            }
            let bare = entry_host.trim_start_matches("*.").trim_start_matches('.');
            host == bare || host.ends_with(&format!(".{bare}"))
        })
}

fn in_cidr(ip: std::net::IpAddr, net: std::net::IpAddr, bits: u32) -> bool {
    use std::net::IpAddr;
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What a transport error means. Certificate problems get a hint on what
/// to do, because "invalid peer certificate: UnknownIssuer" alone does not
/// tell an operator that a private CA needs SSL_CERT_FILE.
pub fn describe_transport(e: &ureq::Error) -> String {
    use rustls::CertificateError as C;
    let tls = match e {
        ureq::Error::Rustls(inner) => Some(inner),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    let Some(tls) = tls else {
        return e.to_string();
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                "the server's TLS certificate is not trusted: if it is issued by a private CA \
                 (or a TLS-inspecting proxy), point SSL_CERT_FILE at a PEM file with that CA"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's TLS certificate is not valid for the host in --endpoint"
            }
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => {
                "the server's TLS certificate is expired or not yet valid: check it and this \
                 machine's clock"
            }
            _ => "the server's TLS certificate was rejected",
        },
        _ => "TLS failed",
    };
    format!("{hint} ({tls})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_is_chosen_like_go() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let https_only = env(&[("HTTPS_PROXY", "http://proxy:3128")]);
        assert!(proxy_for("https://s.semaphoreci.com/api", &https_only).is_some());
        assert!(proxy_for("http://s.semaphoreci.com/api", &https_only).is_none());
        assert!(proxy_for("https://127.0.0.1:8000/api", &https_only).is_none());
        assert!(proxy_for("https://localhost/api", &https_only).is_none());

        let with_no_proxy = env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "semaphoreci.com,10.0.0.0/8"),
        ]);
        assert!(proxy_for("https://org.semaphoreci.com/api", &with_no_proxy).is_none());
        assert!(proxy_for("https://semaphoreci.com/api", &with_no_proxy).is_none());
        assert!(proxy_for("https://10.1.2.3:443/api", &with_no_proxy).is_none());
        assert!(proxy_for("https://example.com/api", &with_no_proxy).is_some());

        let ported = env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "example.com:8443"),
        ]);
        assert!(proxy_for("https://example.com:8443/x", &ported).is_none());
        assert!(proxy_for("https://example.com/x", &ported).is_some());
    }

    #[test]
    fn ip_endpoints_are_their_own_address() {
        let addr = |uri: &str| literal_address(&uri.parse().expect("a valid URI"));
        assert_eq!(
            addr("http://127.0.0.1:8000/api/v1"),
            Some("127.0.0.1:8000".parse().expect("an address"))
        );
        assert_eq!(
            addr("https://10.1.2.3/x"),
            Some("10.1.2.3:443".parse().expect("an address"))
        );
        assert_eq!(
            addr("http://[::1]/x"),
            Some("[::1]:80".parse().expect("an address"))
        );
        assert_eq!(addr("https://s.semaphoreci.com/api"), None);
        assert_eq!(addr("http://localhost:8000/"), None);
        // A dotted name that is not an address is looked up.
        assert_eq!(addr("http://1.2.3.4.example.com/"), None);
    }

    #[test]
    fn literal_resolver_answers_without_a_lookup_and_names_still_resolve() {
        use ureq::unversioned::resolver::Resolver;
        use ureq::unversioned::transport::NextTimeout;
        let config = ureq::config::Config::default();
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from_secs(5),
            reason: ureq::Timeout::Resolve,
            per_read: None,
            per_write: None,
        };
        let resolver = LiteralFirst::default();
        let uri = "http://127.0.0.1:8000/x".parse().expect("a valid URI");
        let found = resolver
            .resolve(&uri, &config, timeout)
            .expect("an IP address resolves");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0], "127.0.0.1:8000".parse().expect("an address"));
        let uri = "http://localhost:8000/x".parse().expect("a valid URI");
        let found = resolver
            .resolve(&uri, &config, timeout)
            .expect("localhost resolves through the system");
        assert!(found
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8000));
    }
}
