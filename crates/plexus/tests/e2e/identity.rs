//! Zero trust between sidecars: the CA's API, mTLS through two real sidecars, and every attack
//! on the inbound port and on the CA refused with a log line and a metric, the processes staying
//! up. One test drives the real `openssl s_client` against a sidecar.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use plexus_test::pki::{self, LeafSpec, Pki};
use plexus_test::{Dev, Sidecar, TcpEcho, eventually, free_port};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{client_echo_hcl_with_sidecar_ports, dev, http, write_file};

/// Sends one line through `addr`; the reply line, or `None` when the connection was closed.
pub async fn try_round_trip(addr: SocketAddr, line: &str) -> Option<String> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await.ok()?;
    let mut reply = String::new();
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(read).read_line(&mut reply),
    )
    .await
    .ok()?
    .ok()?;
    (n > 0).then(|| reply.trim_end().to_owned())
}

/// A dev server with `client → echo` and both sidecars ready; returns what the tests need.
pub struct Mesh {
    pub dev: Dev,
    pub echo: TcpEcho,
    pub client: Sidecar,
    pub echo_sidecar: Sidecar,
    pub upstream: SocketAddr,
    pub inbound: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mesh {
    pub async fn start(dev_args: &[&str], echo_sidecar_args: &[&str]) -> Mesh {
        let echo = TcpEcho::start().await.unwrap();
        let upstream_port = free_port();
        let (dir, file) = write_file(
            "mesh.hcl",
            &client_echo_hcl_with_sidecar_ports(echo.port(), upstream_port),
        );
        let mut args = vec!["--config-file", file.to_str().unwrap()];
        args.extend_from_slice(dev_args);
        let dev = dev(&args).await;
        let client = dev.sidecar("client").await.unwrap();
        let echo_sidecar = dev.sidecar_with("echo", echo_sidecar_args).await.unwrap();
        let inbound = echo_sidecar.process.listening("inbound").await.unwrap();
        eventually!(echo_sidecar.is_ready().await);
        eventually!(
            client.is_ready().await
                && client.endpoints("echo").await.map(|e| e.len()).unwrap_or(0) == 1
        );
        Mesh {
            dev,
            echo,
            client,
            echo_sidecar,
            upstream: ([127, 0, 0, 1], upstream_port).into(),
            inbound: ([127, 0, 0, 1], inbound.port()).into(),
            _dir: dir,
        }
    }

    pub async fn trust_domain(&self) -> String {
        let (_, roots, _) = http(
            "GET",
            &format!("http://{}/v1/connect/ca/roots", self.dev.addr()),
            None,
        )
        .await;
        roots["TrustDomain"].as_str().unwrap().to_owned()
    }

    pub async fn spiffe(&self, service: &str) -> String {
        plexus_api::connect::service_spiffe_id(&self.trust_domain().await, "dc1", service)
    }

    /// A leaf (and key) for `service` from the mesh's own CA, via the Consul-compatible endpoint.
    pub async fn our_leaf(&self, service: &str) -> pki::Issued {
        let issued = self.dev.client.agent_connect_leaf(service).await.unwrap();
        pki::Issued::from_pem(&issued.cert_pem, &issued.private_key_pem).unwrap()
    }

    /// The echo sidecar's refusal counter for `reason`.
    pub async fn refusals(&self, reason: &str) -> f64 {
        let series =
            format!("plexus_proxy_tls_refusals_total{{direction=\"inbound\",reason=\"{reason}\"}}");
        self.echo_sidecar.metric(&series).await.unwrap()
    }

    /// The mesh still works: a line through both sidecars comes back.
    pub async fn still_serves(&self) {
        assert_eq!(
            try_round_trip(self.upstream, "still here").await.as_deref(),
            Some("still here")
        );
    }
}

#[tokio::test]
async fn echo_through_two_mtls_sidecars_and_the_ca_api() {
    let mesh = Mesh::start(&[], &[]).await;
    assert_eq!(
        try_round_trip(mesh.upstream, "hello").await.as_deref(),
        Some("hello")
    );
    assert_eq!(mesh.echo.connections(), 1);
    let base = format!("http://{}", mesh.dev.addr());

    // Consul's shape.
    let (status, roots, headers) = http("GET", &format!("{base}/v1/connect/ca/roots"), None).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-consul-index"));
    let td = roots["TrustDomain"].as_str().unwrap();
    assert!(td.ends_with(".plexus"), "{td}");
    assert_eq!(roots["Roots"].as_array().unwrap().len(), 1);
    assert_eq!(roots["Roots"][0]["ID"], roots["ActiveRootID"]);
    assert_eq!(roots["Roots"][0]["Active"], true);
    assert!(
        roots["Roots"][0]["RootCert"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // Consul's agent alias and the PEM bundle.
    let (status, alias, _) = http("GET", &format!("{base}/v1/agent/connect/ca/roots"), None).await;
    assert_eq!(
        (status, &alias["ActiveRootID"]),
        (200, &roots["ActiveRootID"])
    );
    let bundle = reqwest::get(format!("{base}/v1/connect/ca/roots?pem=true"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(bundle, roots["Roots"][0]["RootCert"].as_str().unwrap());

    // Both sidecars hold a leaf for their own service; the data path really is TLS: the echo
    // sidecar counted an authorized decision from `client`.
    let allowed = "plexus_proxy_intention_decisions_total{source=\"client\",destination=\"echo\",result=\"allow\"}";
    assert_eq!(mesh.echo_sidecar.metric(allowed).await.unwrap(), 1.0);
    mesh.client
        .process
        .wait_for_line(&format!(
            "spiffe_id=spiffe://{td}/ns/default/dc/dc1/svc/client"
        ))
        .await
        .unwrap();
    mesh.echo_sidecar
        .process
        .wait_for_line(&format!(
            "spiffe_id=spiffe://{td}/ns/default/dc/dc1/svc/echo"
        ))
        .await
        .unwrap();

    // Consul-compatible leaf endpoint; unknown services are 404.
    let (status, leaf, _) = http(
        "GET",
        &format!("{base}/v1/agent/connect/ca/leaf/echo"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        leaf["ServiceURI"],
        format!("spiffe://{td}/ns/default/dc/dc1/svc/echo")
    );
    assert!(
        leaf["PrivateKeyPEM"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    let (status, body, _) = http(
        "GET",
        &format!("{base}/v1/agent/connect/ca/leaf/nope"),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // Configuration: read, bad values refused with the field named, nothing changed.
    let (status, config, _) =
        http("GET", &format!("{base}/v1/connect/ca/configuration"), None).await;
    assert_eq!(status, 200);
    assert_eq!(config["Config"]["LeafCertTTL"], "72h");
    for (body, field) in [
        (
            json!({"Config": {"LeafCertTTL": "10s"}}),
            "Config.LeafCertTTL",
        ),
        (
            json!({"Config": {"LeafCertTTL": "forever"}}),
            "Config.LeafCertTTL",
        ),
        (
            json!({"Config": {"PrivateKey": "-----BEGIN EC PRIVATE KEY-----"}}),
            "Config.PrivateKey",
        ),
        (json!({"Provider": "vault"}), "Provider"),
    ] {
        let (status, error, _) = http(
            "PUT",
            &format!("{base}/v1/connect/ca/configuration"),
            Some(body.to_string().into_bytes()),
        )
        .await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (_, after, _) = http("GET", &format!("{base}/v1/connect/ca/configuration"), None).await;
    assert_eq!(after["Config"]["LeafCertTTL"], "72h");

    // The CLI.
    let (code, out, err) = mesh.dev.cli(&["connect", "ca", "roots"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(td) && out.contains("yes"), "{out}");

    // No private key of the CA anywhere a client or an operator can see.
    let (_, roots_text, _) = http("GET", &format!("{base}/v1/connect/ca/roots"), None).await;
    for text in [
        roots_text.to_string(),
        config.to_string(),
        out,
        mesh.dev.process.output(),
        mesh.client.process.output(),
        mesh.echo_sidecar.process.output(),
    ] {
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key leaked:\n{text}"
        );
    }
}

#[tokio::test]
async fn inbound_refuses_every_forged_certificate_and_plaintext() {
    let mesh = Mesh::start(&[], &[]).await;
    let web = mesh.spiffe("client").await;
    let rogue = Pki::new("rogue").unwrap();

    let cases: Vec<(&str, pki::Issued)> = vec![
        (
            "untrusted_chain",
            rogue.leaf(&LeafSpec::service(&web)).unwrap(),
        ),
        (
            "expired",
            rogue
                .leaf(&LeafSpec {
                    not_before: -7200,
                    not_after: -3600,
                    ..LeafSpec::service(&web)
                })
                .unwrap(),
        ),
        (
            "uri_san_count",
            rogue
                .leaf(&LeafSpec {
                    uris: vec![web.clone(), mesh.spiffe("db").await],
                    ..LeafSpec::service(&web)
                })
                .unwrap(),
        ),
        (
            "ca_certificate",
            rogue
                .leaf(&LeafSpec {
                    is_ca: true,
                    ..LeafSpec::service(&web)
                })
                .unwrap(),
        ),
        (
            "foreign_trust_domain",
            rogue
                .leaf(&LeafSpec::service(
                    "spiffe://other.plexus/ns/default/dc/dc1/svc/client",
                ))
                .unwrap(),
        ),
    ];
    for (reason, leaf) in &cases {
        let before = mesh.refusals(reason).await;
        let result = pki::connect(mesh.inbound, Some(leaf)).await;
        assert!(result.is_err(), "{reason}: a forged certificate got in");
        eventually!(mesh.refusals(reason).await == before + 1.0);
        mesh.echo_sidecar
            .process
            .wait_for_line(&format!("reason=\"{reason}\""))
            .await
            .unwrap();
    }
    // No certificate at all.
    assert!(pki::connect(mesh.inbound, None).await.is_err());
    eventually!(mesh.refusals("no_client_certificate").await == 1.0);

    // Plaintext.
    let mut plain = TcpStream::connect(mesh.inbound).await.unwrap();
    plain.write_all(b"hello\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("hello"),
        "plaintext reached the app"
    );
    eventually!(mesh.refusals("not_tls").await == 1.0);
    mesh.echo_sidecar
        .process
        .wait_for_line("reason=\"not_tls\"")
        .await
        .unwrap();

    // A genuine leaf of this mesh gets through, and nothing above reached the app.
    let genuine = mesh.our_leaf("client").await;
    pki::connect(mesh.inbound, Some(&genuine)).await.unwrap();
    assert_eq!(mesh.echo.connections(), 1);
    mesh.still_serves().await;
}

#[tokio::test]
async fn outbound_refuses_an_upstream_with_another_services_identity() {
    // The catalog says `echo` is behind this port; what answers there holds a genuine leaf of
    // this mesh, but for `db`.
    let impostor_port = free_port();
    let upstream_port = free_port();
    // The client's sidecar gets a free port too: the agent's default range (21000-) is the same
    // in every `plexus dev`, and tests run side by side.
    let client_sidecar_port = free_port();
    let hcl = format!(
        r#"
services {{
  name = "client"
  port = 8080
  connect {{ sidecar_service {{ port = {client_sidecar_port}
    proxy {{ upstreams {{ destination_name = "echo"
    local_bind_port = {upstream_port} }} }} }} }}
}}
services {{
  name = "echo"
  port = 9
  connect {{ sidecar_service {{ port = {impostor_port} }} }}
}}
services {{
  name = "db"
  port = 10
}}
"#
    );
    let (_dir, file) = write_file("mesh.hcl", &hcl);
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let issued = dev.client.agent_connect_leaf("db").await.unwrap();
    let leaf = pki::Issued::from_pem(&issued.cert_pem, &issued.private_key_pem).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Pki::server_config(&leaf).unwrap());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", impostor_port))
        .await
        .unwrap();
    let impostor = tokio::spawn(async move {
        let mut served = 0usize;
        while let Ok((socket, _)) = listener.accept().await {
            if let Ok(mut stream) = acceptor.accept(socket).await {
                served += 1;
                let _ = stream.write_all(b"impostor\n").await;
            }
            if served > 100 {
                break;
            }
        }
    });
    let client = dev.sidecar("client").await.unwrap();
    eventually!(
        client.is_ready().await
            && client.endpoints("echo").await.map(|e| e.len()).unwrap_or(0) == 1
    );
    let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
    assert_eq!(
        try_round_trip(upstream, "hello").await,
        None,
        "the impostor was trusted"
    );
    let series =
        "plexus_proxy_tls_refusals_total{direction=\"outbound\",reason=\"wrong_identity\"}";
    eventually!(client.metric(series).await.unwrap() >= 1.0);
    client
        .process
        .wait_for_line("reason=\"wrong_identity\"")
        .await
        .unwrap();
    assert!(client.is_ready().await, "the sidecar stays up");
    impostor.abort();
}

#[tokio::test]
async fn openssl_s_client_shows_what_the_inbound_port_demands() {
    let openssl = std::path::Path::new("/usr/bin/openssl");
    assert!(
        openssl.exists(),
        "openssl is missing: run scripts/setup-test-env.sh"
    );
    let mesh = Mesh::start(&[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let leaf = mesh.our_leaf("client").await;
    let (_, roots, _) = http(
        "GET",
        &format!("http://{}/v1/connect/ca/roots", mesh.dev.addr()),
        None,
    )
    .await;
    let files = [
        ("cert.pem", leaf.cert_pem.clone()),
        ("key.pem", leaf.key_pem.clone()),
        (
            "root.pem",
            roots["Roots"][0]["RootCert"].as_str().unwrap().to_owned(),
        ),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = |name: &str| dir.path().join(name).display().to_string();
    let target = mesh.inbound.to_string();

    // TLS 1.3 with a certificate of this mesh: verified both ways, and the echo answers.
    let mut child = tokio::process::Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &target,
            "-tls1_3",
            "-alpn",
            "plexus-tcp/1",
        ])
        .args([
            "-cert",
            &path("cert.pem"),
            "-key",
            &path("key.pem"),
            "-CAfile",
            &path("root.pem"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin.write_all(b"through openssl\n").await.unwrap();
    let mut transcript = String::new();
    let echoed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            transcript.push_str(&line);
            transcript.push('\n');
            if line == "through openssl" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    drop(stdin);
    let _ = child.kill().await;
    assert!(echoed, "no echo through openssl:\n{transcript}");
    assert!(transcript.contains("TLSv1.3"), "{transcript}");
    assert!(transcript.contains("Verification: OK"), "{transcript}");
    assert!(
        transcript.contains("ALPN protocol: plexus-tcp/1"),
        "{transcript}"
    );

    // Without a client certificate: the server demands one. Stdin stays open so that s_client
    // waits for the server's answer (the alert) instead of closing first.
    let mut child = tokio::process::Command::new(openssl)
        .args(["s_client", "-connect", &target, "-tls1_3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take(); // wait_with_output would close it
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("s_client ends when the server refuses")
        .unwrap();
    drop(stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("certificate required"), "{text}");
    eventually!(mesh.refusals("no_client_certificate").await == 1.0);

    // TLS 1.0 and 1.1 (and 1.2) offered: refused before any certificate is looked at.
    for version in ["-tls1", "-tls1_1", "-tls1_2"] {
        let out = tokio::process::Command::new(openssl)
            .args([
                "s_client",
                "-connect",
                &target,
                version,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ])
            .args(["-cert", &path("cert.pem"), "-key", &path("key.pem")])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // No session: rustls answers a pre-1.3 ClientHello with a handshake-failure alert.
        assert!(
            text.contains("Cipher is (NONE)") && text.contains("alert"),
            "{version}: {text}"
        );
    }
    eventually!(mesh.refusals("protocol_version").await >= 3.0);
    mesh.echo_sidecar
        .process
        .wait_for_line("reason=\"protocol_version\"")
        .await
        .unwrap();
    mesh.still_serves().await;
}

#[tokio::test]
async fn the_ca_refuses_foreign_identities_long_lifetimes_and_floods() {
    let mesh = Mesh::start(&[], &[]).await;
    let base = format!("http://{}", mesh.dev.addr());
    let sign = |body: serde_json::Value| {
        let url = format!("{base}/v1/connect/ca/sign");
        async move { http("POST", &url, Some(body.to_string().into_bytes())).await }
    };
    let (echo_csr, _) = pki::csr(&[&mesh.spiffe("echo").await]).unwrap();
    let (client_csr, _) = pki::csr(&[&mesh.spiffe("client").await]).unwrap();
    let as_ca = pki::csr_asking_for_ca(&[&mesh.spiffe("client").await]).unwrap();
    let (two, _) = pki::csr(&[&mesh.spiffe("client").await, &mesh.spiffe("echo").await]).unwrap();

    // The client's sidecar may have the client's identity, for up to the leaf TTL.
    let (status, leaf, _) =
        sign(json!({"ProxyID": "client-sidecar-proxy", "CSR": client_csr, "TTL": "1h"})).await;
    assert_eq!(status, 200, "{leaf}");
    assert_eq!(leaf["PrivateKeyPEM"], "");

    let cases = [
        (
            json!({"ProxyID": "client-sidecar-proxy", "CSR": echo_csr}),
            403,
            "not_entitled",
        ),
        (
            json!({"ProxyID": "client-sidecar-proxy", "CSR": client_csr, "TTL": "87600h"}),
            400,
            "ttl_too_long",
        ),
        (
            json!({"ProxyID": "client-sidecar-proxy", "CSR": as_ca}),
            400,
            "wants_ca",
        ),
        (
            json!({"ProxyID": "client-sidecar-proxy", "CSR": two}),
            400,
            "several_identities",
        ),
        (
            json!({"ProxyID": "client-sidecar-proxy", "CSR": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
            400,
            "",
        ),
        (json!({"ProxyID": "nobody", "CSR": client_csr}), 404, ""),
        (json!({"ProxyID": "client-sidecar-proxy"}), 400, ""),
    ];
    for (body, want, reason) in cases {
        let (status, error, _) = sign(body.clone()).await;
        assert_eq!(status, want, "{body}: {error}");
        assert!(error["error"]["message"].as_str().is_some(), "{error}");
        if !reason.is_empty() {
            mesh.dev
                .process
                .wait_for_line(&format!("reason=\"{reason}\""))
                .await
                .unwrap();
        }
    }

    // A flood from one caller: 429 with Retry-After once its bucket is empty.
    let mut limited = 0;
    for _ in 0..30 {
        let (status, _, headers) =
            sign(json!({"ProxyID": "echo-sidecar-proxy", "CSR": echo_csr})).await;
        if status == 429 {
            assert!(headers.contains_key("retry-after"));
            limited += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(limited > 0, "no request of the flood was limited");
    mesh.dev
        .process
        .wait_for_line("signing request rate limited")
        .await
        .unwrap();

    // Every refusal counted by reason.
    let metrics = reqwest::get(format!("{base}/v1/connect/ca/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "plexus_ca_sign_refusals_total{reason=\"not_entitled\"} 1".to_owned(),
        "plexus_ca_sign_refusals_total{reason=\"ttl_too_long\"} 1".to_owned(),
        "plexus_ca_sign_refusals_total{reason=\"several_identities\"} 1".to_owned(),
        "plexus_ca_sign_refusals_total{reason=\"not_found\"} 1".to_owned(),
        format!("plexus_ca_sign_refusals_total{{reason=\"rate_limited\"}} {limited}"),
    ] {
        assert!(metrics.contains(&series), "missing {series} in\n{metrics}");
    }

    // The control plane is up, its root unchanged, and the mesh still serves.
    let (status, roots, _) = http("GET", &format!("{base}/v1/connect/ca/roots"), None).await;
    assert_eq!(status, 200);
    assert_eq!(roots["Roots"].as_array().unwrap().len(), 1);
    mesh.still_serves().await;
}

#[test]
fn dev_refuses_a_leaf_ttl_out_of_bounds_before_binding() {
    for ttl in ["10s", "87601h"] {
        let (code, _, err) = plexus_test::mesh::run_cli(
            crate::bin(),
            &[
                "dev",
                "--http-addr",
                "127.0.0.1:0",
                "--connect-leaf-ttl",
                ttl,
            ],
            &[],
        )
        .unwrap();
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains("--connect-leaf-ttl must be between 1m and 8760h"),
            "{err}"
        );
    }
    let (code, _, err) = plexus_test::mesh::run_cli(
        crate::bin(),
        &["dev", "--default-intention-policy", "maybe"],
        &[],
    )
    .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("default intention policy must be \"allow\" or \"deny\""),
        "{err}"
    );
}
