//! HTTP checks: `Method` (default GET) with headers and body to the URL; 2xx passing, 429
//! warning, anything else critical. Plain `http://` only: `https://` reports critical for now.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use plexus_api::{CheckStatus, HealthCheckDefinition};

use super::Outcome;
use crate::service::MAX_OUTPUT_BYTES;
use plexus_runtime::ErrorChain;

/// The status an HTTP response code maps to (Consul's rule).
pub(crate) fn status_for(code: StatusCode) -> CheckStatus {
    if code.is_success() {
        CheckStatus::Passing
    } else if code == StatusCode::TOO_MANY_REQUESTS {
        CheckStatus::Warning
    } else {
        CheckStatus::Critical
    }
}

/// One HTTP check's request, ready to send every interval.
pub(crate) struct HttpProbe {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    method: Result<Method, String>,
    headers: Result<HeaderMap, String>,
    body: Bytes,
}

impl HttpProbe {
    pub(crate) fn new(def: &HealthCheckDefinition, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        // No idle connections kept: every run dials, as a fresh client would (Consul does too).
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let method_text = if def.method.is_empty() {
            "GET"
        } else {
            def.method.as_str()
        };
        let method = Method::from_bytes(method_text.as_bytes())
            .map_err(|_| format!("invalid HTTP method {method_text:?}"));
        Self {
            client,
            url: def.http.clone(),
            method,
            headers: headers(def),
            body: Bytes::from(def.body.clone()),
        }
    }

    pub(crate) fn target(&self) -> String {
        let method = self.method.as_ref().map_or("GET", Method::as_str);
        format!("HTTP {method} {}", self.url)
    }

    pub(crate) async fn probe(&self) -> Outcome {
        let target = self.target();
        if self.url.starts_with("https://") {
            return Outcome::critical(format!("{target}: https checks not supported yet"));
        }
        let request = match self.request() {
            Ok(request) => request,
            Err(problem) => return Outcome::critical(format!("{target}: {problem}")),
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(error) => return Outcome::critical(format!("{target}: {}", ErrorChain(&error))),
        };
        let code = response.status();
        let body = read_prefix(response.into_body(), MAX_OUTPUT_BYTES).await;
        Outcome::new(status_for(code), format!("{target}: {code} Output: {body}"))
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, String> {
        let method = self.method.clone()?;
        let headers = self.headers.clone()?;
        let mut request = Request::builder()
            .method(method)
            .uri(self.url.as_str())
            .header(http::header::USER_AGENT, "Consul Health Check")
            .header(http::header::ACCEPT, "text/plain, text/*, */*")
            .body(Full::new(self.body.clone()))
            .map_err(|e| format!("invalid request: {e}"))?;
        for name in headers.keys() {
            request.headers_mut().remove(name);
        }
        for (name, value) in &headers {
            request.headers_mut().append(name, value.clone());
        }
        Ok(request)
    }
}

/// The check's `Header` map as HTTP headers (user values replace the defaults).
fn headers(def: &HealthCheckDefinition) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, values) in &def.header {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        for value in values {
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header {name:?}"))?;
            map.append(header.clone(), value);
        }
    }
    Ok(map)
}

/// The first `limit` bytes of a body, lossily decoded; the rest is not read.
async fn read_prefix(mut body: hyper::body::Incoming, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    buf.truncate(limit);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn consul_status_rule() {
        assert_eq!(status_for(StatusCode::OK), CheckStatus::Passing);
        assert_eq!(status_for(StatusCode::NO_CONTENT), CheckStatus::Passing);
        assert_eq!(
            status_for(StatusCode::TOO_MANY_REQUESTS),
            CheckStatus::Warning
        );
        for code in [301, 400, 404, 500, 503] {
            let code = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_for(code), CheckStatus::Critical, "{code}");
        }
    }

    #[test]
    fn user_headers_replace_defaults_and_bad_ones_are_reported() {
        let mut def = HealthCheckDefinition {
            http: "http://127.0.0.1:1/health".into(),
            method: "POST".into(),
            body: "{}".into(),
            ..HealthCheckDefinition::default()
        };
        def.header
            .insert("User-Agent".into(), vec!["probe/1".into()]);
        def.header
            .insert("X-A".into(), vec!["1".into(), "2".into()]);
        let probe = HttpProbe::new(&def, Duration::from_secs(1));
        let request = probe.request().unwrap();
        assert_eq!(request.method(), Method::POST);
        let agents: Vec<_> = request.headers().get_all("user-agent").iter().collect();
        assert_eq!(agents, ["probe/1"]);
        assert!(request.headers().contains_key("accept"));
        assert_eq!(request.headers().get_all("x-a").iter().count(), 2);

        def.header.insert("bad header".into(), vec!["x".into()]);
        let probe = HttpProbe::new(&def, Duration::from_secs(1));
        assert!(probe.request().unwrap_err().contains("bad header"));
    }
}
