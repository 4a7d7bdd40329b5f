//! Edge: the strict checks every request passes before anything else in the stack sees it.
//!
//! A proxy that reads a request differently from the app behind it can be used to smuggle
//! requests past it or to forge who is calling. So requests that HTTP parsers may read in more
//! than one way are refused here with 400 and an `x-plexus-error` naming the cause, and never
//! forwarded ([`check`]):
//!
//! - HTTP/1.1 without exactly one `Host` (HTTP/1.0: more than one);
//! - HTTP/2 with a `host` that differs from `:authority`, or more than one `host`;
//! - a `Transfer-Encoding` other than exactly `chunked` (hyper already refuses one whose final
//!   coding is not `chunked`; `gzip, chunked` and a repeated `chunked` reach this layer);
//! - a control character (or `DEL`) in the path, raw or percent-encoded (`%00`, `%0a`, …).
//!
//! Identity headers are the sidecars' alone: `x-plexus-*` and `x-forwarded-client-cert` set by
//! a client are removed ([`strip_identity`]), so the app never sees one it did not get from the
//! mesh. Responses are not touched: `x-plexus-error` on a response is the sidecar's own.

use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, Version};
use tower::{Layer, Service};
use tracing::debug;

use super::stack::{AnswerFuture, HttpService, fail};
use super::{Body, HttpError, Reason};

/// Why the edge refused a request (each one an `x-plexus-error` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An HTTP/1.1 request without a `Host`.
    MissingHost,
    /// More than one `Host`.
    DuplicateHost,
    /// An HTTP/2 `host` that is not the request's `:authority`.
    HostMismatch,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    TransferEncoding,
    /// A control character in the path, raw or percent-encoded.
    ControlInPath,
}

impl Refusal {
    /// The `x-plexus-error` value and `reason` metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::MissingHost => "missing_host",
            Refusal::DuplicateHost => "duplicate_host",
            Refusal::HostMismatch => "host_mismatch",
            Refusal::TransferEncoding => "bad_transfer_encoding",
            Refusal::ControlInPath => "control_character_in_path",
        }
    }
}

/// The prefix of the headers only sidecars set.
const IDENTITY_PREFIX: &str = "x-plexus-";
/// The client certificate header of Envoy and other proxies: an identity claim.
const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// Whether `request` may be forwarded at all; the first reason it may not.
pub(crate) fn check<B>(request: &Request<B>) -> Result<(), Refusal> {
    let headers = request.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::DuplicateHost);
    }
    match request.version() {
        Version::HTTP_11 if host.is_none() => return Err(Refusal::MissingHost),
        Version::HTTP_2 => {
            if let (Some(host), Some(authority)) = (host, request.uri().authority())
                && !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            {
                return Err(Refusal::HostMismatch);
            }
        }
        _ => {}
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
        let only_chunked = codings.next().is_some_and(|coding| {
            coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        }) && codings.next().is_none();
        if !only_chunked {
            return Err(Refusal::TransferEncoding);
        }
    }
    if has_control(request.uri().path().as_bytes()) {
        return Err(Refusal::ControlInPath);
    }
    Ok(())
}

/// True when `path` holds a control character or `DEL`, raw or as a `%XX` escape.
fn has_control(path: &[u8]) -> bool {
    fn control(byte: u8) -> bool {
        byte < 0x20 || byte == 0x7f
    }
    fn hex(byte: u8) -> Option<u8> {
        (byte as char)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    path.iter().enumerate().any(|(i, &byte)| {
        control(byte)
            || (byte == b'%'
                && matches!(
                    (path.get(i + 1).copied().and_then(hex), path.get(i + 2).copied().and_then(hex)),
                    (Some(high), Some(low)) if control(high << 4 | low)
                ))
    })
}

/// Removes the identity headers a client set (`x-plexus-*`, `x-forwarded-client-cert`).
pub(crate) fn strip_identity(headers: &mut HeaderMap) {
    let forged = |name: &HeaderName| {
        name.as_str().starts_with(IDENTITY_PREFIX) || name.as_str() == FORWARDED_CLIENT_CERT
    };
    // Nothing to collect in the usual case.
    if !headers.keys().any(forged) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| forged(name))
        .cloned()
        .collect();
    for name in names {
        debug!(header = %name, "removed a client-set identity header");
        headers.remove(name);
    }
}

/// Adds [`Edge`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EdgeLayer;

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner }
    }
}

/// Refuses what [`check`] refuses (400), strips client-set identity headers from the rest.
#[derive(Debug, Clone)]
pub(crate) struct Edge<S> {
    inner: S,
}

impl<S: HttpService> Service<Request<Body>> for Edge<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        match check(&request) {
            Ok(()) => {
                strip_identity(request.headers_mut());
                self.inner.call(request)
            }
            Err(refusal) => {
                debug!(reason = refusal.label(), "refused a request at the edge");
                fail(HttpError::new(Reason::Refused(refusal)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(uri).version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn http1(uri: &str, headers: &[(&str, &str)]) -> Result<(), Refusal> {
        check(&request(Version::HTTP_11, uri, headers))
    }

    #[test]
    fn http1_needs_exactly_one_host() {
        assert_eq!(http1("/", &[("host", "web")]), Ok(()));
        assert_eq!(http1("/", &[]), Err(Refusal::MissingHost));
        assert_eq!(
            http1("/", &[("host", "web"), ("host", "evil")]),
            Err(Refusal::DuplicateHost)
        );
        assert_eq!(
            http1("http://web/", &[("host", "web"), ("host", "web")]),
            Err(Refusal::DuplicateHost)
        );
        // HTTP/1.0 may omit it, but not repeat it.
        assert_eq!(check(&request(Version::HTTP_10, "/", &[])), Ok(()));
        assert_eq!(
            check(&request(
                Version::HTTP_10,
                "/",
                &[("host", "a"), ("host", "b")]
            )),
            Err(Refusal::DuplicateHost)
        );
    }

    #[test]
    fn an_http2_host_must_match_the_authority() {
        let h2 =
            |uri: &str, headers: &[(&str, &str)]| check(&request(Version::HTTP_2, uri, headers));
        assert_eq!(h2("http://web/", &[]), Ok(()));
        assert_eq!(h2("http://web:80/", &[("host", "WEB:80")]), Ok(()));
        assert_eq!(h2("/", &[("host", "web")]), Ok(()));
        assert_eq!(
            h2("http://web/", &[("host", "admin")]),
            Err(Refusal::HostMismatch)
        );
        assert_eq!(
            h2("http://web/", &[("host", "web"), ("host", "web")]),
            Err(Refusal::DuplicateHost)
        );
    }

    #[test]
    fn transfer_encoding_is_exactly_chunked_or_absent() {
        let te = |value: &str| http1("/", &[("host", "web"), ("transfer-encoding", value)]);
        assert_eq!(te("chunked"), Ok(()));
        assert_eq!(te(" Chunked "), Ok(()));
        for bad in [
            "gzip, chunked",
            "chunked, chunked",
            "gzip",
            "identity",
            "",
            "chunked;x",
        ] {
            assert_eq!(te(bad), Err(Refusal::TransferEncoding), "{bad:?}");
        }
        assert_eq!(
            http1(
                "/",
                &[
                    ("host", "web"),
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked")
                ]
            ),
            Err(Refusal::TransferEncoding)
        );
    }

    #[test]
    fn control_characters_in_the_path_are_refused_raw_or_encoded() {
        for bad in ["/a%00b", "/a%0a", "/%0D%0Ax", "/%1f", "/%7F", "/%7f?x=1"] {
            assert_eq!(
                http1(bad, &[("host", "web")]),
                Err(Refusal::ControlInPath),
                "{bad}"
            );
        }
        // Raw bytes cannot even be put in a `Uri`; the byte scan covers them for the record.
        assert!(has_control(b"/a\0b"));
        assert!(has_control(b"/a\tb"));
        for good in [
            "/",
            "/a%20b",
            "/%25%30%30",
            "/%",
            "/%0",
            "/%zz",
            "/a?x=%0a",
            "/%C3%A9",
        ] {
            assert_eq!(http1(good, &[("host", "web")]), Ok(()), "{good}");
        }
    }

    #[test]
    fn client_set_identity_headers_are_removed_and_others_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-plexus-source", "admin"),
            ("X-Plexus-Identity", "spiffe://evil"),
            ("x-forwarded-client-cert", "By=spiffe://x"),
            ("x-plexusfoo", "1"),
            ("x-forwarded-for", "10.0.0.1"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        strip_identity(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-forwarded-for", "x-plexusfoo"]);
    }

    /// `path` percent-decoded the plain way (an escape that is not two hex digits stays as is).
    fn decoded(path: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(path.len());
        let mut i = 0;
        while i < path.len() {
            let escape = path.get(i + 1..i + 3).and_then(|hex| {
                std::str::from_utf8(hex)
                    .ok()
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            });
            match (path[i], escape) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        out
    }

    proptest! {
        /// The scan agrees with decoding first and then looking: a control character, raw or
        /// escaped, is found wherever it is, and nothing else is.
        #[test]
        fn the_scan_agrees_with_decoding(
            path in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'%'), Just(b'0'), Just(b'a'), Just(b'7')],
                0..64,
            )
        ) {
            let expected = decoded(&path).iter().any(|&b| b < 0x20 || b == 0x7f)
                || path.iter().any(|&b| b < 0x20 || b == 0x7f);
            prop_assert_eq!(has_control(&path), expected);
        }
    }
}
