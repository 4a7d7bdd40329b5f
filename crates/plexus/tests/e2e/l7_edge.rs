//! Strict HTTP edges through real `plexus proxy` processes: requests that parsers may read in
//! more than one way (two or no `Host`, an HTTP/2 `host` that is not `:authority`, a
//! `Transfer-Encoding` other than `chunked`, control characters in the path) are refused with
//! 400 at the client's sidecar and never reach the app; identity headers a client sets are
//! removed before the app sees the request; and the inbound listener of an HTTP service refuses
//! raw TCP peers.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use plexus_test::upstream::HttpStub;

use crate::l7::raw;
use crate::l7_floods::frames;
use crate::l7_protocols::Mesh;

#[tokio::test]
async fn ambiguous_http1_requests_get_400_and_never_reach_the_app() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = Mesh::start("web", web.addr.port(), Some("http")).await;
    // (case, request, the x-plexus-error expected; None: hyper refuses it before the stack).
    let cases: [(&str, &[u8], Option<&str>); 10] = [
        (
            "two hosts",
            b"GET / HTTP/1.1\r\nHost: web\r\nHost: admin\r\n\r\n",
            Some("duplicate_host"),
        ),
        ("no host", b"GET / HTTP/1.1\r\n\r\n", Some("missing_host")),
        (
            "gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            Some("bad_transfer_encoding"),
        ),
        (
            "chunked twice",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some("bad_transfer_encoding"),
        ),
        (
            "gzip alone",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            None,
        ),
        (
            "encoded NUL",
            b"GET /a%00b HTTP/1.1\r\nHost: web\r\n\r\n",
            Some("control_character_in_path"),
        ),
        (
            "encoded LF",
            b"GET /a%0a HTTP/1.1\r\nHost: web\r\n\r\n",
            Some("control_character_in_path"),
        ),
        (
            "encoded CR LF",
            b"GET /a%0D%0AX-Injected:%201 HTTP/1.1\r\nHost: web\r\n\r\n",
            Some("control_character_in_path"),
        ),
        ("raw NUL", b"GET /a\0b HTTP/1.1\r\nHost: web\r\n\r\n", None),
        ("raw SOH", b"GET /a\x01b HTTP/1.1\r\nHost: web\r\n\r\n", None),
    ];
    let mut failures = Vec::new();
    for (name, request, reason) in cases {
        let (answer, closed) = raw(mesh.upstream, request).await;
        let named = reason.is_none_or(|reason| {
            answer
                .to_ascii_lowercase()
                .contains(&format!("x-plexus-error: {reason}\r\n"))
        });
        if !answer.starts_with("HTTP/1.1 400") || !named || !closed {
            failures.push(format!("{name}: closed={closed} {answer:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(web.requests(), 0, "nothing reached the app");

    // A percent-encoded control character in the query is data, not a path: it passes.
    let (answer, _) = raw(
        mesh.upstream,
        b"GET /ok?text=a%0ab HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(web.last_path(), "/ok?text=a%0ab");
}

#[tokio::test]
async fn identity_headers_set_by_the_client_never_reach_the_app() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = Mesh::start("web", web.addr.port(), Some("http")).await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/who", mesh.upstream))
        .header("x-plexus-source", "admin")
        .header(
            "X-Plexus-Identity",
            "spiffe://evil/ns/default/dc/dc1/svc/admin",
        )
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://evil;URI=spiffe://admin",
        )
        .header("x-keep", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = web.last_headers();
    let forged: Vec<_> = seen
        .iter()
        .filter(|(name, _)| name.starts_with("x-plexus-") || name == "x-forwarded-client-cert")
        .collect();
    assert!(forged.is_empty(), "the app saw {forged:?}");
    assert!(
        seen.iter()
            .any(|(name, value)| name == "x-keep" && value == "1"),
        "other headers pass: {seen:?}"
    );
}

/// The first answer to `stream`: the first byte of its response HEADERS block (an HPACK
/// static-table index: 0x88 is `:status 200`, 0x8c `:status 400`), or `None` for a reset.
async fn answer_to(read: &mut (impl tokio::io::AsyncRead + Unpin), stream: u32) -> Option<u8> {
    loop {
        let mut head = [0u8; 9];
        read.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        read.read_exact(&mut payload).await.unwrap();
        if id != stream {
            continue;
        }
        match head[3] {
            frames::HEADERS => return payload.first().copied(),
            frames::RST_STREAM => return None,
            _ => {}
        }
    }
}

#[tokio::test]
async fn an_http2_host_that_is_not_the_authority_is_refused() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = Mesh::start("web", web.addr.port(), Some("http")).await;
    // `GET /` with `:authority: web` and a literal `host` (without indexing, new name).
    let with_host = |host: &[u8]| {
        let mut block = frames::GET_ROOT.to_vec();
        block.extend([0x00, 0x04]);
        block.extend_from_slice(b"host");
        block.push(u8::try_from(host.len()).unwrap());
        block.extend_from_slice(host);
        block
    };
    let mut stream = tokio::net::TcpStream::connect(mesh.upstream).await.unwrap();
    let flags = frames::END_STREAM | frames::END_HEADERS;
    let mut bytes = frames::preface();
    bytes.extend(frames::frame(
        frames::HEADERS,
        flags,
        1,
        &with_host(b"admin"),
    ));
    stream.write_all(&bytes).await.unwrap();
    let refused = tokio::time::timeout(plexus_test::DEADLINE, answer_to(&mut stream, 1))
        .await
        .unwrap();
    assert_eq!(refused, Some(0x8c), "a mismatched host gets 400");
    assert_eq!(web.requests(), 0, "it never reached the app");

    // The same request with a matching host (any case) goes through.
    let matching = frames::frame(frames::HEADERS, flags, 3, &with_host(b"WEB"));
    stream.write_all(&matching).await.unwrap();
    let passed = tokio::time::timeout(plexus_test::DEADLINE, answer_to(&mut stream, 3))
        .await
        .unwrap();
    assert_eq!(passed, Some(0x88), "a matching host is served");
    assert_eq!(web.requests(), 1);
}

/// Sends `request` on an mTLS connection to `inbound` with a leaf of `client` offering `alpn`
/// (empty: none); returns every byte the sidecar sent until it closed the connection.
async fn raw_tcp_peer(mesh: &Mesh, alpn: &[u8], request: &[u8]) -> Vec<u8> {
    let issued = mesh.dev.client.agent_connect_leaf("client").await.unwrap();
    let leaf =
        plexus_test::pki::Issued::from_pem(&issued.cert_pem, &issued.private_key_pem).unwrap();
    let mut stream = plexus_test::pki::connect_with_alpn(mesh.inbound, &leaf, alpn)
        .await
        .unwrap();
    // The sidecar may close before it has read everything: a failed write is an answer too.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(plexus_test::DEADLINE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the sidecar closes the connection");
    answer
}

#[tokio::test]
async fn raw_tcp_peers_of_an_http_service_are_refused_at_its_inbound() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = Mesh::start("web", web.addr.port(), Some("http")).await;
    let request = b"GET /raw HTTP/1.1\r\nHost: web\r\nX-Plexus-Source: admin\r\n\r\n";
    // A peer that understands verdicts is told why; an older one, or one without ALPN, gets a
    // bare close.
    let told = raw_tcp_peer(&mesh, b"plexus-tcp/2", request).await;
    let told = String::from_utf8_lossy(&told);
    assert!(
        told.contains("protocol mismatch") && !told.contains("HTTP/1.1"),
        "{told:?}"
    );
    for alpn in [&b"plexus-tcp/1"[..], b""] {
        let bare = raw_tcp_peer(&mesh, alpn, request).await;
        assert!(bare.is_empty(), "{:?}", String::from_utf8_lossy(&bare));
    }
    assert_eq!(web.requests(), 0, "no raw bytes reached the app");

    // HTTP between the sidecars still works.
    let response = reqwest::get(format!("http://{}/", mesh.upstream))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(web.requests(), 1);
}
