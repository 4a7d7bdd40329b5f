//! `plexus server` against a production-like etcd: TLS with client certificates, etcd
//! authentication, start-up refusals that say what to fix (wrong CA, wrong password, a user
//! without permission on the prefix), two Plexus clusters sharing one etcd under different
//! prefixes, and a foreign writer outside the prefix that must not delay blocking queries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use plexus_api::ServiceRegistration;
use plexus_api::client::QueryOptions;
use plexus_test::{EtcdCluster, Process, Server};

use crate::bin;

/// `plexus server --store etcd` plus `args`, with the test run's management token; waits for `listening` (or returns the process to
/// watch it fail).
fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut all: Vec<String> = [
        "server",
        "--store",
        "etcd",
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
        "--node",
        name,
    ]
    .map(str::to_owned)
    .to_vec();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let mut env = env.to_vec();
    env.extend(plexus_test::server::server_env());
    Process::spawn(&format!("server:{name}"), bin(), &all, &env).unwrap()
}

/// Waits for a server that must refuse to start: it exits non-zero saying `message`, at once
/// (with `retried`: after some retries, for a refusal the client may first see as a closed
/// connection, as a TLS 1.3 client does when the server rejects its certificate).
async fn refuses(mut server: Process, message: &str, retried: bool) -> String {
    let status = server.wait_exit().await.unwrap();
    let output = server.output();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(message),
        "expected {message:?} in:\n{output}"
    );
    let retries = output.matches("cannot reach etcd; retrying").count();
    assert!(
        retries == 0 || retried,
        "a refusal was retried {retries} times:\n{output}"
    );
    output
}

async fn kv_round_trip(server: &Server, key: &str) {
    assert!(
        server
            .client
            .kv_put(key, b"v".to_vec(), 0, None)
            .await
            .unwrap()
    );
    let got = server
        .client
        .kv_get(key, QueryOptions::default())
        .await
        .unwrap();
    assert!(got.value.is_some(), "{key} not read back");
}

#[tokio::test]
async fn server_over_etcd_with_tls_and_client_certificates_and_refusals_naming_the_cause() {
    let cluster = EtcdCluster::start_tls(1).await.unwrap();
    let tls = cluster.tls().unwrap().clone();
    let endpoints = cluster.endpoints_arg();
    let [ca, cert, key, other] = [&tls.ca, &tls.client_cert, &tls.client_key, &tls.other_ca]
        .map(|p| p.display().to_string());
    let server = Server::start(
        bin(),
        "tls",
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-cacert",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
        ],
    )
    .await
    .unwrap();
    kv_round_trip(&server, "over/tls").await;
    let output = server.process.as_ref().unwrap().output();
    assert!(output.contains("connected to etcd"), "{output}");
    assert!(output.contains("tls=true"), "{output}");

    // A CA that did not sign the members' certificates.
    let wrong_ca = spawn(
        "wrong-ca",
        &[
            "--etcd-endpoints",
            &endpoints,
            "--etcd-cacert",
            &other,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
        ],
        &[],
    );
    refuses(wrong_ca, "TLS handshake with etcd", false).await;
    // No client certificate: the members require one.
    let no_cert = spawn(
        "no-cert",
        &["--etcd-endpoints", &endpoints, "--etcd-cacert", &ca],
        &[],
    );
    refuses(no_cert, "TLS handshake with etcd", true).await;
}

#[tokio::test]
async fn server_over_etcd_with_authentication_and_refusals_naming_the_cause() {
    let mut cluster = EtcdCluster::start(1).await.unwrap();
    cluster.enable_auth("root-secret-1").await.unwrap();
    cluster
        .add_user("plexus", "plexus-secret-2", Some("mesh/"))
        .await
        .unwrap();
    cluster
        .add_user("stranger", "stranger-secret-3", Some("elsewhere/"))
        .await
        .unwrap();
    let endpoints = cluster.endpoints_arg();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "plexus-secret-2\n").unwrap();
    let password_file = password_file.display().to_string();

    let server = Server::start(
        bin(),
        "auth",
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            "mesh/",
            "--etcd-username",
            "plexus",
            "--etcd-password-file",
            &password_file,
        ],
    )
    .await
    .unwrap();
    kv_round_trip(&server, "with/auth").await;
    let registration = ServiceRegistration {
        name: "web".to_owned(),
        port: Some(8080),
        ..Default::default()
    };
    server.client.register_service(&registration).await.unwrap();
    let services = server
        .client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    assert!(services.value.contains_key("web"));
    let output = server.process.as_ref().unwrap().output();
    assert!(output.contains("user=plexus"), "{output}");
    assert!(!output.contains("plexus-secret-2"), "password in the log");

    // The password from the environment works too.
    let from_env = spawn(
        "env",
        &[
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            "mesh/",
            "--etcd-username",
            "plexus",
        ],
        &[("PLEXUS_ETCD_PASSWORD", "plexus-secret-2")],
    );
    from_env.listening("http").await.unwrap();
    drop(from_env);

    let wrong_password = spawn(
        "wrong-password",
        &[
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            "mesh/",
            "--etcd-username",
            "plexus",
        ],
        &[("PLEXUS_ETCD_PASSWORD", "not-the-password")],
    );
    let output = refuses(
        wrong_password,
        "etcd refused user \"plexus\": wrong user name or password",
        false,
    )
    .await;
    assert!(!output.contains("not-the-password"), "password in the log");

    let stranger = spawn(
        "stranger",
        &[
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            "mesh/",
            "--etcd-username",
            "stranger",
        ],
        &[("PLEXUS_ETCD_PASSWORD", "stranger-secret-3")],
    );
    refuses(
        stranger,
        "etcd user \"stranger\" may not read keys under prefix \"mesh/\"",
        false,
    )
    .await;

    let anonymous = spawn(
        "anonymous",
        &["--etcd-endpoints", &endpoints, "--etcd-prefix", "mesh/"],
        &[],
    );
    refuses(anonymous, "etcd requires authentication", false).await;

    // A user name without any password is a configuration error before anything else.
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &[
            "server",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-username",
            "plexus",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--etcd-username needs a password"), "{err}");
}

#[tokio::test]
async fn two_clusters_under_different_prefixes_share_one_etcd_without_seeing_each_other() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    let endpoints = cluster.endpoints_arg();
    let start = async |name: &str, prefix: &str| {
        Server::start(
            bin(),
            name,
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--etcd-prefix",
                prefix,
            ],
        )
        .await
        .unwrap()
    };
    let blue = start("blue-server", "blue/").await;
    let green = start("green-server", "green/").await;
    for (server, service) in [(&blue, "blue-web"), (&green, "green-web")] {
        let registration = ServiceRegistration {
            name: service.to_owned(),
            port: Some(8080),
            ..Default::default()
        };
        server.client.register_service(&registration).await.unwrap();
        assert!(
            server
                .client
                .kv_put(&format!("{service}/config"), b"x".to_vec(), 0, None)
                .await
                .unwrap()
        );
    }
    for (server, own, other) in [(&blue, "blue", "green"), (&green, "green", "blue")] {
        let services = server
            .client
            .catalog_services(QueryOptions::default())
            .await
            .unwrap()
            .value;
        assert!(services.contains_key(&format!("{own}-web")), "{services:?}");
        assert!(
            !services.contains_key(&format!("{other}-web")),
            "{services:?}"
        );
        let nodes = server
            .client
            .catalog_nodes(QueryOptions::default())
            .await
            .unwrap()
            .value;
        let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, [format!("{own}-server")], "{names:?}");
        let theirs = server
            .client
            .kv_get(&format!("{other}-web/config"), QueryOptions::default())
            .await
            .unwrap();
        assert!(theirs.value.is_none(), "{own} sees {other}'s KV");
    }
    // Underneath, each cluster's keys are under its own prefix.
    let admin = cluster.admin().await.unwrap();
    for prefix in ["blue/", "green/"] {
        let count = admin
            .clone()
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await
            .unwrap()
            .count();
        assert!(count > 0, "nothing under {prefix}");
    }
}

/// Another application hammers etcd outside Plexus's prefix while a sidecar-like client waits on
/// a blocking health query. The query wakes for our registration (not its 10-minute timeout),
/// the read behind it never fell back to its catch-up timeout and re-listed (the log would say
/// so at debug level), and a query on a service nobody touched stays asleep through all of it.
#[tokio::test]
async fn a_foreign_writer_outside_the_prefix_does_not_delay_blocking_queries() {
    let cluster = Arc::new(EtcdCluster::start(1).await.unwrap());
    let endpoints = cluster.endpoints_arg();
    let server = spawn(
        "foreign",
        &["--etcd-endpoints", &endpoints],
        &[("RUST_LOG", "info,plexus_control::catalog=debug")],
    );
    let http = server.listening("http").await.unwrap();
    let client = plexus_test::server::management_client(&http.to_string()).unwrap();
    let registration = |name: &str, id: &str| ServiceRegistration {
        name: name.to_owned(),
        id: Some(id.to_owned()),
        port: Some(8080),
        ..Default::default()
    };
    client
        .register_service(&registration("web", "web-1"))
        .await
        .unwrap();
    // On a node of its own: a registration on the server's node rewrites that node's record,
    // which every service on it may show.
    let registered = reqwest::Client::new()
        .put(format!("http://{http}/v1/internal/node/register"))
        .header("x-consul-token", plexus_test::management_token())
        .body(
            r#"{"Node": {"Node": "idle-node", "Address": "127.0.0.1"},
                "Services": [{"ID": "idle-1", "Service": "idle", "Port": 8080}]}"#,
        )
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());
    let web = client
        .health_service("web", false, QueryOptions::default())
        .await
        .unwrap();
    let idle = client
        .health_service("idle", false, QueryOptions::default())
        .await
        .unwrap();
    let wait = Duration::from_secs(600);
    let parked_web = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .health_service("web", false, QueryOptions::blocking(web.index, wait))
                .await
        }
    });
    let parked_idle = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .health_service("idle", false, QueryOptions::blocking(idle.index, wait))
                .await
        }
    });

    // The foreign writer: bounded in count and time, stops by itself.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (cluster, stop, written) = (
            Arc::clone(&cluster),
            Arc::clone(&stop),
            Arc::clone(&written),
        );
        async move {
            let admin = cluster.admin().await.unwrap();
            for i in 0..5_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                admin
                    .kv_client()
                    .put(format!("other-app/{}", i % 50), i.to_string(), None)
                    .await
                    .unwrap();
                written.store(i + 1, Ordering::Relaxed);
            }
        }
    });
    // Our write lands in the middle of the foreign traffic.
    plexus_test::eventually!(written.load(Ordering::Relaxed) >= 200);
    client
        .register_service(&registration("web", "web-2"))
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(30), parked_web)
        .await
        .expect("the blocking query woke for our write, not its 10-minute timeout")
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = woke.value.iter().map(|e| e.service.id.as_str()).collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    assert!(woke.index > web.index);
    // Reads right after foreign writes: each one current, none waiting for a re-list.
    for _ in 0..20 {
        let read = client
            .health_service("web", false, QueryOptions::default())
            .await
            .unwrap();
        assert_eq!(read.value.len(), 2);
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(written.load(Ordering::Relaxed) >= 200);
    assert!(
        !parked_idle.is_finished(),
        "a query on an untouched service woke for writes that were not its own"
    );
    let output = server.output();
    assert!(
        !output.contains("catalog index behind the store; re-listing"),
        "a read waited for events that never come:\n{output}"
    );
    parked_idle.abort();
}
