//! The log server's side of the exchange: one `POST <url>?start_from=<n>`
//! with the log token in a header, and the [`TokenRefresher`] that gets a
//! new token on a 401. It must not decide when to send or retry (the plan
//! does) and must never write the token to the agent's log.

use std::time::Duration;

use super::PushOptions;

/// Why a new log token could not be had: the refresher's own error (the
/// control-plane client's, naming the URL), kept whole rather than turned
/// into text, since this layer cannot name that client's type. Its
/// message goes to the agent's log and must not contain a token.
pub type RefreshError = Box<dyn std::error::Error + Send + Sync>;

/// Gets a new log token when the log server answers 401. The control-plane
/// client implements it with `POST /refresh`.
pub trait TokenRefresher: Send {
    fn refresh(&mut self) -> Result<String, RefreshError>;
}

/// A closure with a plain message for an error (tests use them).
impl<F> TokenRefresher for F
where
    F: FnMut() -> Result<String, String> + Send,
{
    fn refresh(&mut self) -> Result<String, RefreshError> {
        self().map_err(Into::into)
    }
}

/// The HTTP client of one job's flusher: the agent's TLS and proxy rules
/// (`crate::net`), statuses as answers rather than errors, the connect
/// bound from the options.
pub(super) fn agent(url: &str, options: &PushOptions) -> ureq::Agent {
    crate::net::new_agent(
        crate::net::http_config(url)
            .http_status_as_error(false)
            .user_agent(options.user_agent.as_str())
            .timeout_connect(Some(options.request_timeout.min(Duration::from_secs(10))))
            .build(),
    )
}

/// One `POST <url>?start_from=<n>`; the status code, or the transport error.
pub(super) fn post_batch(
    agent: &ureq::Agent,
    url: &str,
    user_agent: &str,
    start_from: u64,
    token: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<u16, ureq::Error> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}start_from={start_from}");
    let response = agent
        .post(&full)
        .header("Content-Type", "text/plain")
        .header("Authorization", format!("Bearer {token}"))
        .header("User-Agent", user_agent)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .send(body)?;
    let status = response.status().as_u16();
    // Read the answer so the connection goes back to the pool; its content
    // does not matter.
    let _ = response
        .into_body()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec();
    Ok(status)
}
