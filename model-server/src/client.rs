//! A client for the server's endpoints, used by `veil-model-server query` (run with `ctr task exec`
//! inside a veil VM) and by tests.

use std::time::{Duration, Instant};

use crate::routes::{HEALTH_PATH, PREDICT_PATH};

/// How often [`wait_until_healthy`] asks again.
pub const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The longest a single health probe may take, so that one stuck connection cannot use up the wait.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A query to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No HTTP answer came back.
    #[error("cannot reach {url}: {source}; check that the server runs and the address is right")]
    Request {
        /// The URL asked.
        url: String,
        /// What ureq reported.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with a status other than 2xx.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
        /// The answer's body (a problem document for this server).
        body: String,
    },
    /// `/healthz` did not answer 200 in time.
    #[error("{url} did not answer 200 within {waited_secs:.1} s (last attempt: {last_attempt})")]
    NotHealthy {
        /// The health URL.
        url: String,
        /// How long it was polled.
        waited_secs: f64,
        /// What the last probe got.
        last_attempt: String,
    },
}

/// Posts `inputs` to `<base_url>/v1/predict` and returns the answer's JSON body.
pub fn query_prediction(
    base_url: &str,
    inputs: &[f32],
    timeout: Duration,
) -> Result<String, QueryError> {
    let url = endpoint(base_url, PREDICT_PATH);
    let body = serde_json::json!({ "inputs": inputs }).to_string();
    let answer = agent(timeout)
        .post(&url)
        .header("Content-Type", "application/json")
        .send(body.as_str());
    read_success(&url, answer)
}

/// Polls `<base_url>/healthz` every [`HEALTH_POLL_INTERVAL`] until it answers 2xx or `wait` is
/// over.
pub fn wait_until_healthy(base_url: &str, wait: Duration) -> Result<(), QueryError> {
    let url = endpoint(base_url, HEALTH_PATH);
    let started = Instant::now();
    let deadline = started + wait;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let probe_timeout = remaining.clamp(Duration::from_millis(1), HEALTH_PROBE_TIMEOUT);
        let last_attempt = match read_success(&url, agent(probe_timeout).get(&url).call()) {
            Ok(_) => return Ok(()),
            Err(error) => error.to_string(),
        };
        if Instant::now() + HEALTH_POLL_INTERVAL > deadline {
            return Err(QueryError::NotHealthy {
                url,
                waited_secs: started.elapsed().as_secs_f64(),
                last_attempt,
            });
        }
        std::thread::sleep(HEALTH_POLL_INTERVAL);
    }
}

fn endpoint(base_url: &str, path: &str) -> String {
    format!("{}{path}", base_url.trim_end_matches('/'))
}

fn agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build();
    ureq::Agent::new_with_config(config)
}

fn read_success(
    url: &str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String, QueryError> {
    let request_error = |source| QueryError::Request {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let mut response = answer.map_err(request_error)?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(request_error)?;
    if !status.is_success() {
        return Err(QueryError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            body,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_joins_with_or_without_a_trailing_slash() {
        assert_eq!(endpoint("http://a:1/", "/healthz"), "http://a:1/healthz");
        assert_eq!(endpoint("http://a:1", "/healthz"), "http://a:1/healthz");
    }

    #[test]
    fn waiting_for_a_closed_port_gives_up_with_the_last_error() {
        // Bind then drop: the port is (almost certainly) closed for the short wait below.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = wait_until_healthy(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(error, QueryError::NotHealthy { .. }), "{error}");
        assert!(error.to_string().contains("cannot reach"), "{error}");
    }
}
