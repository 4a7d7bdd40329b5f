//! TLS for the control plane: the CLI, agents and sidecars over verified HTTPS, client
//! certificates under `--verify-incoming`, `auto_encrypt`, and each failure told clearly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use plexus_test::mesh::run_cli;
use plexus_test::pki::{LeafSpec, Pki};
use plexus_test::{Process, Server, eventually};
use rcgen::{CertificateParams, KeyPair, SanType};

use crate::{bin, dev};

/// A directory of PEM files for one test.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }
}

/// The built-in CA's roots, read over the plain HTTP listener.
async fn roots_pem(http: SocketAddr) -> String {
    reqwest::get(format!("http://{http}/v1/connect/ca/roots?pem=true"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A client certificate from the built-in CA, obtained as an agent would (auto-encrypt), over
/// the plain HTTP listener.
async fn client_cert(http: SocketAddr, node: &str) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let uri = format!("spiffe://x.invalid/agent/client/dc/dc1/id/{node}");
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (status, body, _) = crate::http(
        "POST",
        &format!("http://{http}/v1/internal/auto-encrypt/sign"),
        Some(
            serde_json::json!({"Node": node, "CSR": csr})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        body["IssuedCert"]["CertPEM"].as_str().unwrap().to_owned(),
        key.serialize_pem(),
    )
}

fn cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    run_cli(bin(), args, envs).unwrap()
}

/// The CLI and an agent work over HTTPS with verification: the server's certificate is checked
/// against the CA file, and the server requires (and checks) client certificates.
#[tokio::test]
async fn cli_and_agent_work_over_verified_https() {
    let dev = dev(&[
        "--https-addr",
        "127.0.0.1:0",
        "--verify-incoming",
        "--auto-encrypt-allow-tls",
    ])
    .await;
    let https = dev.process.listening("https").await.unwrap();
    let files = Files::new();
    let ca = files.write("ca.pem", &roots_pem(dev.http).await);
    let (cert, key) = client_cert(dev.http, "cli").await;
    let cert = files.write("client.pem", &cert);
    let key = files.write("client-key.pem", &key);
    let url = format!("https://127.0.0.1:{}", https.port());
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );

    // Flags.
    let tls = ["--ca-file", ca, "--client-cert", cert, "--client-key", key];
    let mut put = vec!["kv", "put", "tls/flag", "one", "--http-addr", &url];
    put.extend(tls);
    let (code, _, err) = cli(&put, &[]);
    assert_eq!(code, 0, "{err}");
    // Plexus's environment variables, with `https://` in the address.
    let plexus_env = [
        ("PLEXUS_HTTP_ADDR", url.as_str()),
        ("PLEXUS_CACERT", ca),
        ("PLEXUS_CLIENT_CERT", cert),
        ("PLEXUS_CLIENT_KEY", key),
    ];
    let (code, out, err) = cli(&["kv", "get", "tls/flag"], &plexus_env);
    assert_eq!((code, out.trim()), (0, "one"), "{err}");
    // Consul's spellings, with a bare address made https by CONSUL_HTTP_SSL and the server
    // checked against its Consul-style name.
    let bare = format!("127.0.0.1:{}", https.port());
    let consul_env = [
        ("CONSUL_HTTP_ADDR", bare.as_str()),
        ("CONSUL_HTTP_SSL", "true"),
        ("CONSUL_CACERT", ca),
        ("CONSUL_CLIENT_CERT", cert),
        ("CONSUL_CLIENT_KEY", key),
        ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
    ];
    let (code, out, err) = cli(&["kv", "get", "tls/flag"], &consul_env);
    assert_eq!((code, out.trim()), (0, "one"), "{err}");

    // An agent registers through the HTTPS API with its certificate.
    let (defs, def) =
        crate::write_file("web.hcl", "service {\n  name = \"web\"\n  port = 8080\n}\n");
    let agent = Process::spawn(
        "agent:tls",
        bin(),
        &[
            "agent",
            "--server",
            &url,
            "--ca-file",
            ca,
            "--cert-file",
            cert,
            "--key-file",
            key,
            "--http-addr",
            "127.0.0.1:0",
            "--node",
            "n-tls",
            "--lease-ttl",
            "5s",
            "--config-file",
            def.to_str().unwrap(),
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    let agent_http = agent.listening("http").await.unwrap();
    eventually!(
        dev.client
            .catalog_service("web", Default::default())
            .await
            .is_ok_and(|s| s.value.iter().any(|i| i.node == "n-tls"))
    );
    // Requests the agent passes on to the server go over the same TLS.
    let (code, out, err) = cli(
        &[
            "kv",
            "get",
            "tls/flag",
            "--http-addr",
            &agent_http.to_string(),
        ],
        &[],
    );
    assert_eq!((code, out.trim()), (0, "one"), "{err}");
    drop(defs);
}

/// Each misconfiguration fails at once with a message saying what is wrong.
#[tokio::test]
async fn tls_failures_are_fast_and_clear() {
    let dev = dev(&[
        "--https-addr",
        "127.0.0.1:0",
        "--verify-incoming",
        "--auto-encrypt-allow-tls",
    ])
    .await;
    let https = dev.process.listening("https").await.unwrap();
    let url = format!("https://127.0.0.1:{}", https.port());
    let files = Files::new();
    let ca = files.write("ca.pem", &roots_pem(dev.http).await);
    let rogue = Pki::new("rogue").unwrap();
    let rogue_ca = files.write("rogue.pem", &rogue.root_pem());
    let ca = ca.to_str().unwrap();
    let failing = |args: &[&str], needle: &str| {
        let mut all = vec!["kv", "get", "x"];
        all.extend(args);
        let (code, out, err) = cli(&all, &[]);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    // A CA that did not sign the server's certificate.
    failing(
        &["--http-addr", &url, "--ca-file", rogue_ca.to_str().unwrap()],
        "the server's certificate is not signed by the CA in --ca-file",
    );
    // No client certificate under --verify-incoming.
    failing(
        &["--http-addr", &url, "--ca-file", ca],
        "requires a client certificate signed by its CA",
    );
    // Plaintext HTTP to the HTTPS port.
    failing(
        &["--http-addr", &format!("http://127.0.0.1:{}", https.port())],
        "Client sent an HTTP request to an HTTPS server",
    );
    // TLS to the plain-HTTP port.
    failing(
        &[
            "--http-addr",
            &format!("https://{}", dev.http),
            "--ca-file",
            ca,
        ],
        "did not answer in TLS",
    );
    // https:// without a CA file; a CA file that is not there.
    failing(&["--http-addr", &url], "HTTPS needs a CA file");
    failing(
        &["--http-addr", &url, "--ca-file", "/nonexistent/ca.pem"],
        "cannot read CA file /nonexistent/ca.pem",
    );
    // A client certificate from another CA: the handshake is refused.
    let forged = rogue.leaf(&LeafSpec::localhost()).unwrap();
    let (cert, key) = (
        files.write("forged.pem", &forged.cert_pem),
        files.write("forged-key.pem", &forged.key_pem),
    );
    failing(
        &[
            "--http-addr",
            &url,
            "--ca-file",
            ca,
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ],
        "the server refused our client certificate",
    );

    // An expired server certificate (from files).
    let expired = rogue
        .leaf(&LeafSpec {
            not_before: -7200,
            not_after: -3600,
            ..LeafSpec::localhost()
        })
        .unwrap();
    let expired_dev = crate::dev(&[
        "--https-addr",
        "127.0.0.1:0",
        "--cert-file",
        files
            .write("expired.pem", &expired.cert_pem)
            .to_str()
            .unwrap(),
        "--key-file",
        files
            .write("expired-key.pem", &expired.key_pem)
            .to_str()
            .unwrap(),
    ])
    .await;
    let expired_https = expired_dev.process.listening("https").await.unwrap();
    failing(
        &[
            "--http-addr",
            &format!("https://localhost:{}", expired_https.port()),
            "--ca-file",
            rogue_ca.to_str().unwrap(),
        ],
        "the server's certificate has expired",
    );
    // An agent fails fast too: a wrong CA, no client certificate.
    for (extra, needle) in [
        (
            vec!["--ca-file", rogue_ca.to_str().unwrap()],
            "not signed by the CA in --ca-file",
        ),
        (vec!["--ca-file", ca], "requires a client certificate"),
    ] {
        let mut args = vec![
            "agent",
            "--server",
            &url,
            "--http-addr",
            "127.0.0.1:0",
            "--node",
            "n-bad",
        ];
        args.extend(extra);
        let (code, _, err) = cli(&args, &[]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // Bad auto-encrypt requests: 400 naming the field, or 403 for another identity.
    let sign = format!("http://{}/v1/internal/auto-encrypt/sign", dev.http);
    for (body, status, field) in [
        (serde_json::json!({"Node": 5, "CSR": "x"}), 400, "Node"),
        (
            serde_json::json!({"Node": "n1", "CSR": "not a CSR"}),
            400,
            "CSR",
        ),
        (serde_json::json!({"Node": "n 1", "CSR": "x"}), 400, "Node"),
        (
            serde_json::json!({"Node": "n1", "CSR": "x", "Extra": 1}),
            400,
            "Extra",
        ),
    ] {
        let (got, answer, _) =
            crate::http("POST", &sign, Some(body.to_string().into_bytes())).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://x/agent/client/dc/dc1/id/other"
            .try_into()
            .unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let body = serde_json::json!({"Node": "n1", "CSR": csr}).to_string();
    let (got, answer, _) = crate::http("POST", &sign, Some(body.into_bytes())).await;
    assert_eq!(got, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may only have"),
        "{answer}"
    );
    // The server is still up and serving.
    assert!(dev.client.kv_get("x", Default::default()).await.is_ok());
}

/// Bad TLS flags exit 64 before anything is bound, naming the flag.
#[tokio::test]
async fn bad_tls_flags_are_refused_before_binding() {
    let files = Files::new();
    let not_pem = files.write("not.pem", "hello");
    let data = files.path("data");
    let cases: [(&[&str], &str); 6] = [
        (&["--https-only"], "--https-only needs an HTTPS listener"),
        (
            &["--verify-incoming"],
            "--verify-incoming needs an HTTPS listener",
        ),
        (
            &[
                "--https-addr",
                "127.0.0.1:0",
                "--cert-file",
                not_pem.to_str().unwrap(),
            ],
            "--cert-file needs --key-file",
        ),
        (
            &[
                "--https-addr",
                "127.0.0.1:0",
                "--cert-file",
                not_pem.to_str().unwrap(),
                "--key-file",
                not_pem.to_str().unwrap(),
            ],
            "no PEM CERTIFICATE block found",
        ),
        (
            &["--https-addr", "127.0.0.1:0", "--tls-san", "not a name"],
            "--tls-san \"not a name\" is neither an IP address nor a DNS name",
        ),
        (
            &["--ca-key-file", not_pem.to_str().unwrap()],
            "at least 32 bytes",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["server", "--http-addr", "127.0.0.1:0", "--data-dir", &data];
        all.extend(args);
        let (code, _, err) = cli(&all, &[]);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("listening"),
            "{args:?} bound a listener: {err}"
        );
    }
    // The agent: TLS to the servers needs a CA.
    let (code, _, err) = cli(
        &[
            "agent",
            "--server",
            "https://127.0.0.1:1",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("needs --ca-file"), "{err}");
}

/// An agent that holds only the CA bundle obtains its certificate from a server
/// (`auto_encrypt`), then talks to the `--verify-incoming` server with it, serves its own
/// HTTPS API with it, and a sidecar reaches its agent over TLS.
#[tokio::test]
async fn an_auto_encrypt_agent_obtains_its_certificate_and_uses_it() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        bin(),
        "s-ae",
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--https-addr",
            "127.0.0.1:0",
            "--verify-incoming",
            "--auto-encrypt-allow-tls",
            "--default-intention-policy",
            "allow",
        ],
    )
    .await
    .unwrap();
    let process = server.process.as_ref().unwrap();
    let https = process.listening("https").await.unwrap();
    let files = Files::new();
    let ca = files.write("ca.pem", &roots_pem(server.http).await);
    let ca = ca.to_str().unwrap();
    let (defs, def) = crate::write_file(
        "web.hcl",
        &format!(
            "service {{\n  name = \"web\"\n  port = {}\n  connect {{\n    sidecar_service {{\n      port = {}\n    }}\n  }}\n}}\n",
            plexus_test::free_port(),
            plexus_test::free_port()
        ),
    );
    let agent = Process::spawn(
        "agent:auto-encrypt",
        bin(),
        &[
            "agent",
            "--server",
            &format!("127.0.0.1:{}", https.port()),
            "--verify-outgoing",
            "--tls-server-name",
            "server.dc1.consul",
            "--ca-file",
            ca,
            "--auto-encrypt",
            "--https-addr",
            "127.0.0.1:0",
            "--https-only",
            "--verify-incoming",
            "--node",
            "n-ae",
            "--address",
            "127.0.0.1",
            "--lease-ttl",
            "5s",
            "--config-file",
            def.to_str().unwrap(),
        ]
        .map(str::to_owned),
        // The server enforces ACLs: the agent's own token authorizes its certificate
        // (node:write on n-ae) and its registrations.
        &[("PLEXUS_HTTP_TOKEN", plexus_test::server::management_token())],
    )
    .unwrap();
    agent
        .wait_for_line("obtained the agent certificate")
        .await
        .unwrap();
    let agent_https = agent.listening("https").await.unwrap();
    assert!(
        !agent.output().contains("listener=\"http\""),
        "https-only agent opened HTTP"
    );
    // Its registration reached the server, which accepts only verified client certificates.
    eventually!(
        server
            .client
            .catalog_service("web", Default::default())
            .await
            .is_ok_and(|s| s.value.iter().any(|i| i.node == "n-ae"))
    );
    // The agent's HTTPS API presents the auto-encrypt certificate (it names 127.0.0.1) and
    // requires client certificates too.
    let (cert, key) = client_cert(server.http, "operator").await;
    let (cert, key) = (
        files.write("op.pem", &cert),
        files.write("op-key.pem", &key),
    );
    let agent_url = format!("https://127.0.0.1:{}", agent_https.port());
    let tls = [
        ("PLEXUS_CACERT", ca),
        ("PLEXUS_CLIENT_CERT", cert.to_str().unwrap()),
        ("PLEXUS_CLIENT_KEY", key.to_str().unwrap()),
        ("PLEXUS_HTTP_ADDR", agent_url.as_str()),
        ("PLEXUS_HTTP_TOKEN", plexus_test::server::management_token()),
    ];
    let (code, out, err) = cli(&["services", "list"], &tls);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web"), "{out}");
    // A sidecar reaches its agent over TLS.
    let sidecar = Process::spawn(
        "proxy:web",
        bin(),
        &[
            "proxy",
            "--sidecar-for",
            "web",
            "--admin-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned),
        &tls,
    )
    .unwrap();
    let admin = sidecar.listening("admin").await.unwrap();
    eventually!(
        reqwest::get(format!("http://{admin}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    );
    drop(defs);
}

/// A server that does not allow auto_encrypt says so, and the agent exits with that message.
#[tokio::test]
async fn auto_encrypt_refused_by_the_server_stops_the_agent_with_the_reason() {
    let dev = dev(&["--https-addr", "127.0.0.1:0"]).await;
    let https = dev.process.listening("https").await.unwrap();
    let files = Files::new();
    let ca = files.write("ca.pem", &roots_pem(dev.http).await);
    let (code, _, err) = cli(
        &[
            "agent",
            "--server",
            &format!("https://127.0.0.1:{}", https.port()),
            "--ca-file",
            ca.to_str().unwrap(),
            "--auto-encrypt",
            "--http-addr",
            "127.0.0.1:0",
            "--node",
            "n-refused",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not sign agent certificates"), "{err}");
    let (status, body, _) = crate::http(
        "POST",
        &format!("http://{}/v1/internal/auto-encrypt/sign", dev.http),
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(dev.client.kv_get("x", Default::default()).await.is_ok());
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn store_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .expect("a store file")
}

/// Data directories are created 0700 and the store file 0600 (server and dev's default
/// temporary directory); a looser store file is tightened.
#[tokio::test]
async fn data_directories_and_files_are_private() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("new/data");
    let mut server = Server::start(bin(), "s-modes", &["--data-dir", dir.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&root.path().join("new")), 0o700);
    let file = store_file(&dir);
    assert_eq!(mode(&file), 0o600);
    server.kill9().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    server.restart().await.unwrap();
    assert_eq!(mode(&file), 0o600);

    // dev without --data-dir: a fresh temporary directory, named in the log.
    let dev = Process::spawn(
        "dev:temp",
        bin(),
        &[
            "dev",
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
            "--node",
            "t",
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    dev.listening("http").await.unwrap();
    let line = dev.wait_for_line("using embedded store").await.unwrap();
    let temp = line
        .split("data_dir=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let temp = Path::new(temp);
    assert_eq!(mode(temp), 0o700, "{}", temp.display());
    assert_eq!(mode(&store_file(temp)), 0o600);
}

/// With a key-encryption key the CA's private key never reaches the store file in plaintext;
/// starting without it, or with another, stops with a message saying so.
#[tokio::test]
async fn the_ca_key_is_wrapped_with_the_key_encryption_key() {
    let files = Files::new();
    let kek = files.write("kek", "7Jq1x0mVQbq0O0m5WcU0i0o2ZP8dG3k1lS0xjv8Yc0E=\n");
    let other = files.write("other", "ThisIsAnotherKeyOfMoreThan32Bytes-really\n");
    let plain_dir = tempfile::tempdir().unwrap();
    let wrapped_dir = tempfile::tempdir().unwrap();
    let contains_key = |dir: &Path| {
        let bytes = std::fs::read(store_file(dir)).unwrap();
        bytes.windows(11).any(|w| w == b"PRIVATE KEY")
    };
    {
        let _plain = Server::start(
            bin(),
            "s-plain",
            &["--data-dir", plain_dir.path().to_str().unwrap()],
        )
        .await
        .unwrap();
        let wrapped = Server::start(
            bin(),
            "s-wrapped",
            &[
                "--data-dir",
                wrapped_dir.path().to_str().unwrap(),
                "--ca-key-file",
                kek.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
        // The CA signs with the wrapped key.
        wrapped
            .client
            .connect_ca_roots(Default::default())
            .await
            .unwrap();
    }
    assert!(contains_key(plain_dir.path()), "the check cannot see a key");
    assert!(
        !contains_key(wrapped_dir.path()),
        "a plaintext CA key in the store"
    );

    let dir = wrapped_dir.path().to_str().unwrap();
    for (extra, envs, needle) in [
        (vec![], vec![], "start with --ca-key-file or PLEXUS_CA_KEY"),
        (
            vec!["--ca-key-file", other.to_str().unwrap()],
            vec![],
            "is not the one the CA's private keys were wrapped with",
        ),
    ] {
        let mut args = vec!["server", "--http-addr", "127.0.0.1:0", "--data-dir", dir];
        args.extend(extra);
        let (code, _, err) = cli(&args, &envs);
        assert_ne!(code, 0, "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("7Jq1x0mVQbq0"), "the key in an error: {err}");
    }
    // The key from the environment works as well as the file.
    let secret = std::fs::read_to_string(&kek).unwrap();
    let server = Process::spawn(
        "server:env-kek",
        bin(),
        &[
            "server",
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
            "--data-dir",
            dir,
            "--node",
            "e",
        ]
        .map(str::to_owned),
        &[("PLEXUS_CA_KEY", secret.trim())],
    )
    .unwrap();
    server.wait_for_line("connect CA ready").await.unwrap();
    assert!(!server.output().contains("7Jq1x0mVQbq0"));
}

/// `--https-only` opens no plain-HTTP listener at all; the HTTPS one serves.
#[tokio::test]
async fn https_only_opens_no_plain_http_listener() {
    let data = tempfile::tempdir().unwrap();
    let server = Process::spawn(
        "server:https-only",
        bin(),
        &[
            "server",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--dns-addr",
            "127.0.0.1:0",
            "--https-addr",
            "127.0.0.1:0",
            "--https-only",
            "--node",
            "s-only",
        ]
        .map(str::to_owned),
        &plexus_test::server::server_env(),
    )
    .unwrap();
    let https = server.listening("https").await.unwrap();
    server.wait_for_line("connect CA ready").await.unwrap();
    assert!(
        !server.output().contains("listener=\"http\""),
        "{}",
        server.output()
    );
    // The CA's roots over TLS, trusting the server's own certificate chain as the CA file.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let pem = client
        .get(format!(
            "https://127.0.0.1:{}/v1/connect/ca/roots?pem=true",
            https.port()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let files = Files::new();
    let ca = files.write("ca.pem", &pem);
    let (code, out, err) = cli(
        &[
            "catalog",
            "nodes",
            "--http-addr",
            &format!("https://localhost:{}", https.port()),
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &[("PLEXUS_HTTP_TOKEN", plexus_test::server::management_token())],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("s-only"), "{out}");
}
