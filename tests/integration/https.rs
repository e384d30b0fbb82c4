//! `semaphore-agent start` over HTTPS (no `--no-https`): the fake hub behind
//! a TLS-terminating front on 127.0.0.1 (tests/support/tls.rs), certificates
//! made at test time. Covers trusting a private CA through SSL_CERT_FILE,
//! refusing an untrusted or misnamed certificate with a clear error, and the
//! HTTPS_PROXY / NO_PROXY choice with a recording CONNECT proxy.

use std::time::Duration;

use serde_json::json;

use crate::support::agent::Agent;
use crate::support::hub::Hub;
use crate::support::tls::{self_signed, ConnectProxy, TestCa, TlsFront};
use crate::support::{is_state, wait, Sandbox, WAIT};

/// Registers, syncs, runs one job (logs go to the hub over plain HTTP) and
/// shuts down cleanly.
fn assert_full_round(hub: &Hub, agent: &mut Agent) {
    assert!(
        hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")),
        "never synced"
    );
    let id = hub.queue_job(json!({"commands": [{"directive": "echo over-tls"}]}));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(hub.output(&id).contains("over-tls"));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    assert_eq!(hub.disconnects(), 1);
}

#[test]
fn a_private_ca_from_ssl_cert_file_is_trusted() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let ca = TestCa::new("agent test CA");
    let front = TlsFront::start(ca.issue(&["127.0.0.1", "localhost"]), hub.port());
    // The job's logs go through the front too, so the log pusher must
    // trust the same CA.
    hub.set_log_base(&format!("https://127.0.0.1:{}", front.port()));
    let ca_file = ca.write_pem(&sandbox.path("ca.pem"));
    let ca_file = ca_file.to_string_lossy();
    let mut agent = Agent::start(
        &sandbox,
        &front.endpoint(),
        &[],
        &[("SSL_CERT_FILE", &ca_file)],
    );
    assert_full_round(&hub, &mut agent);
    let handshakes = front.handshakes();
    assert!(!handshakes.is_empty());
    assert!(handshakes.iter().all(Result::is_ok), "{handshakes:?}");
    let log = agent.log();
    assert!(
        log.contains("Registering Agent at https://127.0.0.1:"),
        "{log}"
    );
    assert!(
        log.contains("Logs will be pushed to https://127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("Pushing logs"), "a push failed: {log}");
}

#[test]
fn localhost_works_as_the_endpoint_name_too() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let ca = TestCa::new("agent test CA");
    let front = TlsFront::start(ca.issue(&["localhost"]), hub.port());
    let ca_file = ca.write_pem(&sandbox.path("ca.pem"));
    let endpoint = format!("localhost:{}", front.port());
    let mut agent = Agent::start(
        &sandbox,
        &endpoint,
        &[],
        &[("SSL_CERT_FILE", &ca_file.to_string_lossy())],
    );
    assert_full_round(&hub, &mut agent);
}

/// Registration never gets through; the agent gives up after its retries
/// with an error that says it is about the certificate.
fn assert_refused(hub: &Hub, front: &TlsFront, agent: &mut Agent, why: &[&str]) {
    let code = agent.wait_exit(WAIT);
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    assert!(hub.requests().is_empty(), "a request got through");
    let log = agent.log();
    assert!(log.contains("Failed to register agent"), "{log}");
    assert!(log.contains("[Register] attempt [29] failed"), "{log}");
    let last = log
        .lines()
        .rfind(|l| l.contains("Failed to register agent"))
        .unwrap_or_default();
    assert!(last.contains("certificate"), "{last}");
    for word in why {
        assert!(last.contains(word), "no '{word}' in: {last}");
    }
    // The server side saw the client abort every handshake. Its thread may
    // record the last one just after the agent exited, so wait for it.
    let handshakes = wait::value(
        Duration::from_secs(5),
        || front.handshakes(),
        |h| h.len() >= 30,
    );
    assert_eq!(handshakes.len(), 30, "{handshakes:?}");
    assert!(handshakes.iter().all(Result::is_err), "{handshakes:?}");
}

#[test]
fn an_untrusted_self_signed_certificate_is_refused_clearly() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let front = TlsFront::start(self_signed(&["127.0.0.1", "localhost"]), hub.port());
    // No SSL_CERT_FILE: the system roots (or the bundled ones) apply.
    let mut agent = Agent::start(&sandbox, &front.endpoint(), &[], &[]);
    assert_refused(&hub, &front, &mut agent, &["not trusted", "SSL_CERT_FILE"]);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let ours = TestCa::new("trusted CA");
    let theirs = TestCa::new("some other CA");
    let front = TlsFront::start(theirs.issue(&["127.0.0.1"]), hub.port());
    let ca_file = ours.write_pem(&sandbox.path("ca.pem"));
    let mut agent = Agent::start(
        &sandbox,
        &front.endpoint(),
        &[],
        &[("SSL_CERT_FILE", &ca_file.to_string_lossy())],
    );
    assert_refused(&hub, &front, &mut agent, &["not trusted", "UnknownIssuer"]);
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let ca = TestCa::new("agent test CA");
    let front = TlsFront::start(ca.issue(&["not-this-host.example"]), hub.port());
    let ca_file = ca.write_pem(&sandbox.path("ca.pem"));
    let mut agent = Agent::start(
        &sandbox,
        &front.endpoint(),
        &[],
        &[("SSL_CERT_FILE", &ca_file.to_string_lossy())],
    );
    assert_refused(&hub, &front, &mut agent, &["not valid for the host"]);
}

#[test]
fn https_proxy_is_used_for_a_remote_host() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let ca = TestCa::new("agent test CA");
    // The proxy tunnels every CONNECT to the front, so this name needs no DNS;
    // the agent still checks the certificate against it.
    let front = TlsFront::start(ca.issue(&["hub.semaphore.test"]), hub.port());
    let proxy = ConnectProxy::start(front.port());
    let ca_file = ca.write_pem(&sandbox.path("ca.pem"));
    let endpoint = format!("hub.semaphore.test:{}", front.port());
    let mut agent = Agent::start(
        &sandbox,
        &endpoint,
        &[],
        &[
            ("SSL_CERT_FILE", &ca_file.to_string_lossy()),
            ("HTTPS_PROXY", &proxy.url()),
            ("NO_PROXY", "example.com,10.0.0.0/8"),
        ],
    );
    assert_full_round(&hub, &mut agent);
    let targets = proxy.targets();
    assert!(!targets.is_empty());
    assert!(
        targets.iter().all(|t| *t == endpoint),
        "{targets:?} (expected only CONNECT {endpoint})"
    );
}

#[test]
fn loopback_and_no_proxy_hosts_bypass_the_proxy() {
    let hub = Hub::start();
    let ca = TestCa::new("agent test CA");
    let front = TlsFront::start(ca.issue(&["127.0.0.1", "0.0.0.0"]), hub.port());
    let proxy = ConnectProxy::start(front.port());

    // 127.0.0.1: never proxied, like Go's ProxyFromEnvironment.
    let sandbox = Sandbox::new();
    let ca_file = ca.write_pem(&sandbox.path("ca.pem"));
    let mut agent = Agent::start(
        &sandbox,
        &front.endpoint(),
        &[],
        &[
            ("SSL_CERT_FILE", &ca_file.to_string_lossy()),
            ("HTTPS_PROXY", &proxy.url()),
        ],
    );
    assert_full_round(&hub, &mut agent);
    assert!(proxy.targets().is_empty(), "{:?}", proxy.targets());

    // 0.0.0.0 is not loopback (connecting to it reaches this host's
    // 127.0.0.1 on Linux), so only NO_PROXY keeps it off the proxy.
    let hub = Hub::start();
    let front = TlsFront::start(ca.issue(&["127.0.0.1", "0.0.0.0"]), hub.port());
    let sandbox = Sandbox::new();
    let ca_file = ca.write_pem(&sandbox.path("ca.pem"));
    let endpoint = format!("0.0.0.0:{}", front.port());
    let mut agent = Agent::start(
        &sandbox,
        &endpoint,
        &[],
        &[
            ("SSL_CERT_FILE", &ca_file.to_string_lossy()),
            ("https_proxy", &proxy.url()),
            ("no_proxy", "example.com, 0.0.0.0"),
        ],
    );
    assert_full_round(&hub, &mut agent);
    assert!(proxy.targets().is_empty(), "{:?}", proxy.targets());
}
