#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn leaf(&self, days: (i64, i64)) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn roots(&self) -> Roots {
        Roots::from_pem(&self.cert.pem(), "test CA").unwrap()
    }
}

async fn start(tls: TlsServer) -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let router = Router::new()
        .route(
            "/who",
            get(|ext: axum::Extension<PeerCertificates>| async move {
                format!("client certificates: {}", ext.0.0.len())
            }),
        )
        .route("/open", get(|| async { "open" }));
    tokio::spawn(serve(listener, tls, router, stop.clone()));
    (addr, stop)
}

fn client(roots: &Roots, identity: Option<&Identity>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(roots, identity, None).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn verified_clients_are_served_and_others_told_why() {
    let ca = Ca::new("plexus test");
    let server = ca.leaf((-1, 30));
    let identity = Identity::from_pem(&server.cert, &server.key, "server").unwrap();
    let config = server_config(&identity, &ClientAuth::Optional(ca.roots())).unwrap();
    let (addr, stop) = start(TlsServer::new(config).require_client_cert(&["/open"])).await;
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());

    let client_leaf = ca.leaf((-1, 30));
    let client_identity =
        Identity::from_pem(&client_leaf.cert, &client_leaf.key, "client").unwrap();
    let with_cert = client(&ca.roots(), Some(&client_identity));
    let answer = with_cert.get(url("/who")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "client certificates: 1");

    let without = client(&ca.roots(), None);
    let answer = without.get(url("/who")).send().await.unwrap();
    assert_eq!(answer.status(), 403);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["message"], CLIENT_CERT_REQUIRED);
    // Exempt paths are served without a certificate.
    let answer = without.get(url("/open")).send().await.unwrap();
    assert_eq!(answer.status(), 200);

    // A certificate from another CA fails the handshake.
    let rogue = Ca::new("rogue").leaf((-1, 30));
    let rogue_identity = Identity::from_pem(&rogue.cert, &rogue.key, "rogue").unwrap();
    let error = client(&ca.roots(), Some(&rogue_identity))
        .get(url("/who"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");

    // A client trusting another CA refuses the server.
    let error = client(&Ca::new("other").roots(), None)
        .get(url("/open"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{error:?}").contains("UnknownIssuer"), "{error:?}");
    stop.cancel();
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_by_clients() {
    let ca = Ca::new("plexus test");
    let expired = ca.leaf((-30, -1));
    let identity = Identity::from_pem(&expired.cert, &expired.key, "server").unwrap();
    let config = server_config(&identity, &ClientAuth::None).unwrap();
    let (addr, stop) = start(TlsServer::new(config)).await;
    let error = client(&ca.roots(), None)
        .get(format!("https://localhost:{}/open", addr.port()))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{error:?}").contains("Expired"), "{error:?}");
    stop.cancel();
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_gets_a_clear_400() {
    let ca = Ca::new("plexus test");
    let leaf = ca.leaf((-1, 30));
    let identity = Identity::from_pem(&leaf.cert, &leaf.key, "server").unwrap();
    let config = server_config(&identity, &ClientAuth::None).unwrap();
    let (addr, stop) = start(TlsServer::new(config)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /open HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains(PLAINTEXT_ANSWER), "{answer}");
    // The listener still serves TLS afterwards.
    let answer = client(&ca.roots(), None)
        .get(format!("https://localhost:{}/open", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    stop.cancel();
}

#[test]
fn bad_material_is_named() {
    let ca = Ca::new("plexus test");
    let a = ca.leaf((-1, 30));
    let b = ca.leaf((-1, 30));
    let error = Identity::from_pem(&a.cert, &b.key, "a.pem").unwrap_err();
    assert!(
        error.to_string().contains("a.pem: the key does not match"),
        "{error}"
    );
    let error = Identity::from_pem("", &a.key, "empty.pem").unwrap_err();
    assert_eq!(
        error.to_string(),
        "empty.pem: no PEM CERTIFICATE block found"
    );
    let error = Identity::from_pem(&a.cert, "not a key", "k.pem").unwrap_err();
    assert!(
        error.to_string().starts_with("k.pem: no PEM private key"),
        "{error}"
    );
    let error = Roots::from_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
    assert_eq!(error.to_string(), "cannot read CA file /nonexistent/ca.pem");
    // The key never shows in Debug.
    let identity = Identity::from_pem(&a.cert, &a.key, "a").unwrap();
    let shown = format!("{identity:?}");
    assert!(
        !shown.contains("PRIVATE") && shown.contains("redacted"),
        "{shown}"
    );
}
