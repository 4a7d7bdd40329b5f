//! `POST /api/event`: event over HTTP, wire-compatible with Mercury's Event API.
//!
//! - **Body**: an envelope as MsgPack (standard or compact form; any content type but JSON) or,
//!   with `Content-Type: application/json`, as a JSON object with the standard keys.
//! - **Reply**: always an envelope, in the caller's form: MsgPack standard or compact as the
//!   request was, JSON when the request was JSON or `Accept: application/json`; the HTTP status is
//!   the reply's status. Errors are envelopes too (status ≥ 400, body the reason): 400 bad input,
//!   401 token, 403 private route, 404 unknown route, 408 timeout, 500, 503. A body that is not an
//!   envelope at all is answered in the compact form, as Mercury does.
//! - **Headers**: `X-Timeout` or Mercury's `x-ttl` (ms, 1 to 600000; `X-Timeout` wins; default
//!   10000), `X-Async: true` (fire and forget: 202 `{type: async, delivered: true, time}`),
//!   `traceparent` (W3C: its trace id becomes the event's `trace_id` and its parent id the
//!   `span_id` when the envelope has none; the reply carries a `traceparent` with the event's trace
//!   id), `X-Plexus-Token` or `Authorization: Bearer` when the node requires a token.

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmpv::Value;

use super::{Actuator, DEFAULT_TIMEOUT};
use crate::envelope::{EventEnvelope, Format};
use crate::platform::Fault;

/// The form a reply is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Json,
    MsgPack(Format),
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_json(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

fn respond(form: Form, reply: &EventEnvelope, traceparent: Option<String>) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match form {
        Form::Json => (status, axum::Json(reply.to_json())).into_response(),
        Form::MsgPack(format) => (
            status,
            [(header::CONTENT_TYPE, "application/msgpack")],
            reply.to_bytes_as(format),
        )
            .into_response(),
    };
    if let Some(value) = traceparent.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

fn fail(form: Form, status: u16, message: impl Into<String>) -> Response {
    respond(form, &EventEnvelope::error(status, message), None)
}

/// `00-<trace id>-<parent id>-<flags>` → (trace id, parent id).
fn parse_traceparent(text: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = text.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, parent, flags]
            if hex(version, 2) && hex(trace, 32) && hex(parent, 16) && hex(flags, 2) =>
        {
            Some((trace.to_ascii_lowercase(), parent.to_ascii_lowercase()))
        }
        _ => None,
    }
}

/// A `traceparent` for the reply: the event's trace id (when it is one) and a new span id.
fn reply_traceparent(trace_id: Option<&str>) -> Option<String> {
    let trace = trace_id.filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))?;
    let span = &crate::envelope::new_id()[..16];
    Some(format!("00-{}-{span}-01", trace.to_ascii_lowercase()))
}

fn timeout(headers: &HeaderMap) -> Result<Duration, (String, String)> {
    for name in ["X-Timeout", "x-ttl"] {
        if let Some(text) = header_text(headers, name) {
            return match text.trim().parse::<u64>() {
                Ok(ms) if (1..=600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
                _ => Err((
                    name.to_owned(),
                    format!("invalid {name} {text:?}: expected milliseconds from 1 to 600000"),
                )),
            };
        }
    }
    Ok(DEFAULT_TIMEOUT)
}

fn token(headers: &HeaderMap) -> Option<&str> {
    header_text(headers, "x-plexus-token")
        .or_else(|| header_text(headers, "x-consul-token"))
        .or_else(|| header_text(headers, "authorization").and_then(|v| v.strip_prefix("Bearer ")))
}

/// `POST /api/event`.
pub async fn post_event(State(a): State<Actuator>, headers: HeaderMap, body: Bytes) -> Response {
    let json_in = is_json(header_text(&headers, "content-type"));
    let json_out = json_in || is_json(header_text(&headers, "accept"));
    let unknown = if json_out {
        Form::Json
    } else {
        Form::MsgPack(Format::Compact)
    };
    // An HTTP caller sends as the node's (or app's) own app.
    if let Err(refusal) = a.auth.check(token(&headers), a.platform.app()).await {
        return fail(unknown, refusal.status, refusal.message);
    }
    if body.is_empty() {
        return fail(unknown, 400, "empty body: expected an event envelope");
    }
    let decoded = if json_in {
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| format!("body is not JSON: {e}"))
            .and_then(|json| {
                EventEnvelope::from_json(&json)
                    .map(|e| (e, Format::Standard))
                    .map_err(|e| format!("body is not an event envelope: {e}"))
            })
    } else {
        EventEnvelope::decode(&body).map_err(|e| format!("body is not an event envelope: {e}"))
    };
    let (mut event, format) = match decoded {
        Ok(decoded) => decoded,
        Err(reason) => return fail(unknown, 400, reason),
    };
    let form = if json_out {
        Form::Json
    } else {
        Form::MsgPack(format)
    };
    let timeout = match timeout(&headers) {
        Ok(t) => t,
        Err((_, reason)) => return fail(form, 400, reason),
    };
    let asynchronous = match header_text(&headers, "x-async").map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return fail(
                form,
                400,
                format!("invalid X-Async {other:?}: expected true or false"),
            );
        }
    };
    let Some(to) = event.to.clone() else {
        return fail(form, 400, "the envelope has no destination (to)");
    };
    if let Some((trace, parent)) = header_text(&headers, "traceparent").and_then(parse_traceparent)
    {
        if event.trace_id.is_none() {
            event.trace_id = Some(trace);
        }
        if event.span_id.is_none() {
            event.span_id = Some(parent);
        }
    }
    if event.trace_id.is_some() && event.trace_path.is_none() {
        event.trace_path = Some("POST /api/event".into());
    }
    let traceparent = reply_traceparent(event.trace_id.as_deref());
    let (trace_id, cid) = (event.trace_id.clone(), event.cid.clone());
    let mut reply = if asynchronous {
        let route = to.split('@').next().unwrap_or_default().to_owned();
        if a.platform.is_public(&route) == Some(false) {
            Fault::new(403, format!("route {route} is private")).into_envelope()
        } else {
            match a.platform.send(event).await {
                Ok(()) => EventEnvelope {
                    status: 202,
                    body: Value::Map(vec![
                        (Value::from("type"), Value::from("async")),
                        (Value::from("delivered"), Value::from(true)),
                        (
                            Value::from("time"),
                            Value::from(plexus_api::actuator::timestamp(SystemTime::now())),
                        ),
                    ]),
                    ..EventEnvelope::default()
                },
                Err(fault) => fault.into_envelope(),
            }
        }
    } else {
        a.platform.request_external(event, timeout).await
    };
    if reply.trace_id.is_none() {
        reply.trace_id = trace_id;
    }
    if reply.cid.is_none() {
        reply.cid = cid;
    }
    respond(form, &reply, traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_checked() {
        assert_eq!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some((
                "0af7651916cd43dd8448eb211c80319c".into(),
                "b7ad6b7169203331".into()
            ))
        );
        for bad in [
            "",
            "00-xyz-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let out = reply_traceparent(Some("0af7651916cd43dd8448eb211c80319c")).unwrap_or_default();
        assert!(out.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && out.ends_with("-01"));
        assert_eq!(reply_traceparent(Some("not-hex")), None);
    }
}
