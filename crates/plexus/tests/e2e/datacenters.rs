//! Several datacenters (issue 20): servers federated with `--retry-join-wan`,
//! `/v1/catalog/datacenters`, and `?dc=` reads forwarded to the datacenter they name. Both
//! datacenters' servers enforce ACLs (default deny) and were given the same management token
//! (tokens are per datacenter; nothing replicates them).

use plexus_test::{Process, eventually, free_port};
use serde_json::{Value, json};

use crate::acl::call;
use crate::bin;

/// A `plexus server` of datacenter `dc` on `127.0.0.1:port`, with the run's management token.
struct DcServer {
    process: Process,
    addr: String,
    _data: tempfile::TempDir,
}

impl DcServer {
    async fn start(dc: &str, port: u16, extra: &[&str]) -> DcServer {
        let data = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "server",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--dns-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--node",
            &format!("server-{dc}"),
            "--datacenter",
            dc,
            "--data-dir",
            data.path().to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = Process::spawn(
            &format!("server:{dc}"),
            bin(),
            &args,
            &plexus_test::server::server_env(),
        )
        .unwrap();
        let addr = process.listening("http").await.unwrap().to_string();
        DcServer {
            process,
            addr,
            _data: data,
        }
    }

    /// `method path` with `token` (`None`: no token).
    async fn call_as(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        call(&format!("http://{}{path}", self.addr), method, token, body).await
    }

    /// `method path` with the management token.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.call_as(
            method,
            path,
            Some(plexus_test::server::management_token()),
            body,
        )
        .await
    }

    async fn datacenters(&self) -> Value {
        self.call("GET", "/v1/catalog/datacenters", None).await.1
    }
}

fn index(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn servers_federate_and_dc_reads_are_forwarded_under_the_other_datacenters_acls() {
    // dc1 is told of dc2 before dc2 runs: the join is retried until it answers.
    let dc2_port = free_port();
    let dc1 = DcServer::start(
        "dc1",
        0,
        &["--retry-join-wan", &format!("127.0.0.1:{dc2_port}")],
    )
    .await;
    assert_eq!(dc1.datacenters().await, json!(["dc1"]));
    let mut dc2 = DcServer::start("dc2", dc2_port, &[]).await;
    eventually!(dc1.datacenters().await == json!(["dc1", "dc2"]));
    // dc2 learned of dc1 from dc1's exchange, without a join of its own.
    eventually!(dc2.datacenters().await == json!(["dc2", "dc1"]));

    // Data only dc2 has.
    let (status, _, _) = dc2.call("PUT", "/v1/kv/where", Some(json!("dc2"))).await;
    assert_eq!(status, 200);
    let (status, _, _) = dc2
        .call(
            "PUT",
            "/v1/catalog/register",
            Some(json!({"Node": "ext-dc2", "Address": "10.9.9.9",
                "Service": {"Service": "billing", "Port": 9000}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = dc2
        .call(
            "PUT",
            "/v1/config",
            Some(json!({"Kind": "service-defaults", "Name": "billing", "Protocol": "http"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = dc2
        .call(
            "PUT",
            "/v1/connect/intentions/exact?source=web&destination=billing",
            Some(json!({"Action": "allow"})),
        )
        .await;
    assert_eq!(status, 200);

    // Read through dc1: the answer is dc2's, index and all.
    let (status, body, headers) = dc1.call("GET", "/v1/kv/where?dc=dc2&raw", None).await;
    assert_eq!((status, &body), (200, &json!("dc2")), "{body}");
    let (_, _, direct) = dc2.call("GET", "/v1/kv/where?raw", None).await;
    assert_eq!(index(&headers), index(&direct));
    assert!(index(&headers) > 0);
    let (status, _, _) = dc1.call("GET", "/v1/kv/where", None).await;
    assert_eq!(status, 404, "dc1 has no such key");
    let (status, body, _) = dc1.call("GET", "/v1/kv/where?dc=dc1", None).await;
    assert_eq!(status, 404, "its own dc is served locally: {body}");
    let (status, body, _) = dc1
        .call("GET", "/v1/catalog/service/billing?dc=dc2", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["Address"], "10.9.9.9", "{body}");
    assert_eq!(body[0]["Datacenter"], "dc2", "{body}");
    let (_, body, _) = dc1
        .call("GET", "/v1/health/service/billing?dc=dc2", None)
        .await;
    assert_eq!(body[0]["Service"]["Port"], 9000, "{body}");
    let (_, body, _) = dc1
        .call("GET", "/v1/config/service-defaults/billing?dc=dc2", None)
        .await;
    assert_eq!(body["Protocol"], "http", "{body}");
    let (_, body, _) = dc1.call("GET", "/v1/connect/intentions?dc=dc2", None).await;
    assert_eq!(body[0]["DestinationName"], "billing", "{body}");
    // A blocking query is relayed and waits there.
    let (_, _, headers) = dc1.call("GET", "/v1/catalog/services?dc=dc2", None).await;
    let (status, _, blocked) = dc1
        .call(
            "GET",
            &format!(
                "/v1/catalog/services?dc=dc2&index={}&wait=200ms",
                index(&headers)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(index(&blocked), index(&headers));

    // dc2 checks the token: none, or one only dc1 knows, is refused there.
    let (status, _, _) = dc1.call_as("GET", "/v1/kv/where?dc=dc2", None, None).await;
    assert_eq!(status, 403);
    let (status, token, _) = dc1
        .call(
            "PUT",
            "/v1/acl/token",
            Some(json!({"Policies": [], "ServiceIdentities": [{"ServiceName": "web"}]})),
        )
        .await;
    assert_eq!(status, 200);
    let secret = token["SecretID"].as_str().unwrap().to_owned();
    plexus_test::secrets::register(&secret);
    let (status, body, _) = dc1
        .call_as("GET", "/v1/catalog/services?dc=dc2", Some(&secret), None)
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = dc1
        .call_as("GET", "/v1/catalog/services", Some(&secret), None)
        .await;
    assert_eq!(status, 200, "the token is dc1's");

    // Bad input.
    let (status, body, _) = dc1.call("GET", "/v1/kv/where?dc=nowhere", None).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "no_path_to_datacenter");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("No path to datacenter \"nowhere\""),
        "{body}"
    );
    let (status, body, _) = dc1.call("GET", "/v1/kv/where?dc=a%2Fb", None).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("dc")),
        "{body}"
    );
    let exchange = "/v1/internal/wan/exchange";
    let (status, body, _) = dc1
        .call(
            "PUT",
            exchange,
            Some(json!({"Datacenter": "dc3", "Servers": ["ftp://x:1"]})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("Servers[0]")),
        "{body}"
    );
    let (status, body, _) = dc1
        .call(
            "PUT",
            exchange,
            Some(json!({"Datacenter": "dc1", "Servers": ["http://x:1"]})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("Datacenter")),
        "{body}"
    );
    let (status, _, _) = dc1
        .call_as(
            "PUT",
            exchange,
            Some(&secret),
            Some(json!({"Datacenter": "dc3", "Servers": ["http://x:1"]})),
        )
        .await;
    assert_eq!(status, 403, "the exchange needs operator:write");
    assert_eq!(
        dc1.datacenters().await,
        json!(["dc1", "dc2"]),
        "nothing refused was learned"
    );

    // dc2's server gone: dc2 stays listed, forwarding says which dc cannot be reached, dc1
    // serves its own.
    dc2.process.signal("KILL").unwrap();
    let (status, body, _) = dc1.call("GET", "/v1/kv/where?dc=dc2", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"dc2\""),
        "{body}"
    );
    assert_eq!(dc1.datacenters().await, json!(["dc1", "dc2"]));
    let (status, _, _) = dc1.call("GET", "/v1/catalog/services", None).await;
    assert_eq!(status, 200);
    let _ = dc2.process.wait_exit().await;
}

#[tokio::test]
async fn a_retry_join_wan_that_is_not_an_address_exits_64_naming_the_flag() {
    let data = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--retry-join-wan", "ftp://10.0.0.1:8500"),
        ("--retry-join-wan", "https://10.0.0.1:8501"),
    ] {
        let output = std::process::Command::new(bin())
            .args([
                "server",
                "--http-addr",
                "127.0.0.1:0",
                "--data-dir",
                data.path().to_str().unwrap(),
                flag,
                value,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("--retry-join-wan"), "{stderr}");
    }
}

/// `&str`s of `args`.
fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Splits a PEM bundle into its certificates.
fn certificates(bundle: &str) -> Vec<String> {
    pem::parse_many(bundle)
        .unwrap()
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::encode)
        .collect()
}

#[tokio::test]
async fn a_secondary_datacenter_signs_with_an_intermediate_of_the_primarys_root() {
    // dc2 starts first: until dc1 signed its intermediate it publishes no roots and signs
    // nothing (no sidecar starts with the trust domain it is about to leave).
    let dc1_port = free_port();
    let dc2 = DcServer::start(
        "dc2",
        0,
        &[
            "--primary-datacenter",
            "dc1",
            "--retry-join-wan",
            &format!("127.0.0.1:{dc1_port}"),
        ],
    )
    .await;
    let (status, body, _) = dc2.call("GET", "/v1/connect/ca/roots", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"dc1\""),
        "{body}"
    );
    let dc1 = DcServer::start("dc1", dc1_port, &[]).await;
    let (_, primary, _) = dc1.call("GET", "/v1/connect/ca/roots", None).await;
    let trust_domain = primary["TrustDomain"].as_str().unwrap().to_owned();
    eventually!(
        dc2.call("GET", "/v1/connect/ca/roots", None).await.1["TrustDomain"] == json!(trust_domain)
    );
    let (_, secondary, _) = dc2.call("GET", "/v1/connect/ca/roots", None).await;
    assert_eq!(
        secondary["Roots"][0]["ID"], primary["ActiveRootID"],
        "{secondary}"
    );
    assert_eq!(secondary["Roots"].as_array().unwrap().len(), 1);
    assert_ne!(
        secondary["ActiveRootID"], primary["ActiveRootID"],
        "dc2 signs with its own key"
    );

    // A leaf of a dc2 service: its own dc segment, verified by the primary's root alone.
    let (status, _, _) = dc2
        .call(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "billing", "Port": 9000})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, leaf, _) = dc2
        .call("GET", "/v1/agent/connect/ca/leaf/billing", None)
        .await;
    assert_eq!(status, 200, "{leaf}");
    assert_eq!(
        leaf["ServiceURI"],
        json!(format!(
            "spiffe://{trust_domain}/ns/default/dc/dc2/svc/billing"
        ))
    );
    let chain = certificates(leaf["CertPEM"].as_str().unwrap());
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let root = write(
        "root.pem",
        primary["Roots"][0]["RootCert"].as_str().unwrap(),
    );
    let inter = write("inter.pem", &chain[1]);
    let leaf_file = write("leaf.pem", &chain[0]);
    let verify = |untrusted: Option<&str>| {
        let mut command = std::process::Command::new("openssl");
        command.args(["verify", "-CAfile", &root]);
        if let Some(untrusted) = untrusted {
            command.args(["-untrusted", untrusted]);
        }
        command.arg(&leaf_file).output().unwrap()
    };
    let verified = verify(Some(&inter));
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(!verify(None).status.success(), "the intermediate is needed");

    // A rotation in dc1: dc2 publishes both roots and takes an intermediate of the new one.
    let (status, body, _) = dc1.call("POST", "/v1/connect/ca/rotate", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, rotated, _) = dc1.call("GET", "/v1/connect/ca/roots", None).await;
    let new_root = rotated["ActiveRootID"].clone();
    assert_ne!(new_root, primary["ActiveRootID"]);
    eventually!({
        let (_, roots, _) = dc2.call("GET", "/v1/connect/ca/roots", None).await;
        roots["Roots"].as_array().unwrap().len() == 2
            && roots["ActiveRootID"] != secondary["ActiveRootID"]
    });
    let (status, leaf, _) = dc2
        .call("GET", "/v1/agent/connect/ca/leaf/billing", None)
        .await;
    assert_eq!(status, 200, "{leaf}");
    let chain = certificates(leaf["CertPEM"].as_str().unwrap());
    let new_root_pem = rotated["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == new_root)
        .unwrap()["RootCert"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&root, new_root_pem).unwrap();
    std::fs::write(&inter, &chain[1]).unwrap();
    std::fs::write(&leaf_file, &chain[0]).unwrap();
    let verified = verify(Some(&inter));
    assert!(
        verified.status.success(),
        "a new dc2 leaf verifies with dc1's new root: {}",
        String::from_utf8_lossy(&verified.stderr)
    );

    // Bad input: a secondary cannot rotate, and only the primary signs intermediates.
    let (status, body, _) = dc2.call("POST", "/v1/connect/ca/rotate", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body, _) = dc2
        .call(
            "PUT",
            "/v1/internal/wan/ca/intermediate",
            Some(json!({"Datacenter": "dc3", "Csr": "x"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("Datacenter")),
        "{body}"
    );
    let (status, body, _) = dc1
        .call(
            "PUT",
            "/v1/internal/wan/ca/intermediate",
            Some(json!({"Datacenter": "dc3", "Csr": "not a csr"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("Csr")),
        "{body}"
    );
    let (status, _, _) = dc1
        .call_as(
            "PUT",
            "/v1/internal/wan/ca/intermediate",
            None,
            Some(json!({"Datacenter": "dc3", "Csr": "not a csr"})),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn servers_federate_over_https_verified_with_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let pki = plexus_test::pki::Pki::new("wan").unwrap();
    let leaf = pki
        .server_leaf(&["localhost"], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let (cert, key, ca) = (
        write("server.pem", &leaf.cert_pem),
        write("server-key.pem", &leaf.key_pem),
        write("ca.pem", &pki.root_pem()),
    );
    let tls = |ca: &str| {
        [
            "--https-addr",
            "127.0.0.1:0",
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--ca-file",
            ca,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args2 = tls(&ca);
    let dc2 = DcServer::start("dc2", 0, &refs(&args2)).await;
    let https2 = dc2.process.listening("https").await.unwrap();
    let (status, _, _) = dc2.call("PUT", "/v1/kv/where", Some(json!("dc2"))).await;
    assert_eq!(status, 200);
    let mut args1 = tls(&ca);
    args1.extend(["--retry-join-wan".to_owned(), format!("https://{https2}")]);
    let dc1 = DcServer::start("dc1", 0, &refs(&args1)).await;
    eventually!(dc1.datacenters().await == json!(["dc1", "dc2"]));
    let (status, body, _) = dc1.call("GET", "/v1/kv/where?dc=dc2&raw", None).await;
    assert_eq!((status, &body), (200, &json!("dc2")), "{body}");

    // A server that does not trust dc2's certificate never joins, and says why.
    let other = plexus_test::pki::Pki::new("other").unwrap();
    let other_ca = write("other-ca.pem", &other.root_pem());
    let mut args3 = tls(&other_ca);
    args3.extend(["--retry-join-wan".to_owned(), format!("https://{https2}")]);
    let dc3 = DcServer::start("dc3", 0, &refs(&args3)).await;
    dc3.process
        .wait_for_line("cannot exchange datacenters with a server")
        .await
        .unwrap();
    assert_eq!(dc3.datacenters().await, json!(["dc3"]));
}

/// A prepared query whose service has no instance here runs in its `Failover` datacenters in
/// order: an unknown one counts as tried, the first with instances passing the query answers
/// (`Datacenter`, `Failovers`); `NearestN` takes the other datacenters in list order; the
/// query's tags apply there too; with an instance here again, here answers. DNS
/// (`NAME.query.consul`, answered as the default token) follows the same failover, and answers
/// another datacenter's service names (`NAME.service.dc2.consul`) through it.
#[tokio::test]
async fn a_prepared_query_fails_over_to_the_next_datacenter_with_instances() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("default-token");
    std::fs::write(&token_file, plexus_test::server::management_token()).unwrap();
    let default = ["--default-token-file", token_file.to_str().unwrap()];
    let dc2_port = free_port();
    let join = format!("127.0.0.1:{dc2_port}");
    let dc1 = DcServer::start(
        "dc1",
        0,
        &[&["--retry-join-wan", &join][..], &default].concat(),
    )
    .await;
    let dc2 = DcServer::start("dc2", dc2_port, &default).await;
    let dns1: std::net::SocketAddr = dc1.process.listening("dns-udp").await.unwrap();
    eventually!(dc1.datacenters().await == json!(["dc1", "dc2"]));
    let register = |node: &str, address: &str| {
        json!({"Node": node, "Address": address,
            "Service": {"Service": "billing", "Port": 9000, "Tags": ["v1"]}})
    };
    let (status, _, _) = dc2
        .call(
            "PUT",
            "/v1/catalog/register",
            Some(register("ext-dc2", "10.9.9.9")),
        )
        .await;
    assert_eq!(status, 200);
    for (name, service) in [
        (
            "billing",
            json!({"Service": "billing", "Tags": ["v1"],
                "Failover": {"Datacenters": ["dc9", "dc2"]}}),
        ),
        (
            "near",
            json!({"Service": "billing", "Failover": {"NearestN": 1}}),
        ),
        (
            "v9",
            json!({"Service": "billing", "Tags": ["v9"], "Failover": {"NearestN": 1}}),
        ),
        ("stay", json!({"Service": "billing"})),
    ] {
        let (status, body, _) = dc1
            .call(
                "POST",
                "/v1/query",
                Some(json!({"Name": name, "Service": service, "DNS": {"TTL": "7s"}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let execute = async |name: &str| {
        let (status, body, _) = dc1
            .call("GET", &format!("/v1/query/{name}/execute"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let nodes: Vec<String> = body["Nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Node"]["Node"].as_str().unwrap().to_owned())
            .collect();
        (nodes, body["Datacenter"].clone(), body["Failovers"].clone())
    };
    assert_eq!(
        execute("billing").await,
        (vec!["ext-dc2".to_owned()], json!("dc2"), json!(2))
    );
    assert_eq!(
        execute("near").await,
        (vec!["ext-dc2".to_owned()], json!("dc2"), json!(1))
    );
    assert_eq!(execute("v9").await, (vec![], json!("dc1"), json!(1)));
    assert_eq!(execute("stay").await, (vec![], json!("dc1"), json!(0)));
    // Over DNS: dc2's address, its SRV target named in dc2, the query's TTL; no answer is
    // NXDOMAIN.
    let answer = crate::dns::dig(dns1, &["billing.query.consul", "A"]).await;
    assert!(
        answer.contains("billing.query.consul. 7 IN A 10.9.9.9"),
        "{answer}"
    );
    assert_eq!(
        crate::dns::short(dns1, &["billing.query.dc1.consul", "SRV"]).await,
        ["1 1 9000 ext-dc2.node.dc2.consul."]
    );
    let answer = crate::dns::dig(dns1, &["v9.query.consul", "A"]).await;
    assert!(answer.contains("status: NXDOMAIN"), "{answer}");
    let answer = crate::dns::dig(dns1, &["nosuch.query.consul", "A"]).await;
    assert!(answer.contains("status: NXDOMAIN"), "{answer}");
    // Another datacenter's services by name, read through it; its unknown ones, and unknown
    // datacenters, do not exist.
    assert_eq!(
        crate::dns::short(dns1, &["billing.service.dc2.consul", "A"]).await,
        ["10.9.9.9"]
    );
    assert_eq!(
        crate::dns::short(dns1, &["_billing._v1.service.dc2.consul", "SRV"]).await,
        ["1 1 9000 ext-dc2.node.dc2.consul."]
    );
    for name in [
        "nosuch.service.dc2.consul",
        "v2.billing.service.dc2.consul",
        "billing.service.dc9.consul",
    ] {
        let answer = crate::dns::dig(dns1, &[name, "A"]).await;
        assert!(answer.contains("status: NXDOMAIN"), "{name}: {answer}");
    }

    let (status, _, _) = dc1
        .call(
            "PUT",
            "/v1/catalog/register",
            Some(register("ext-dc1", "10.1.1.1")),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        execute("billing").await,
        (vec!["ext-dc1".to_owned()], json!("dc1"), json!(0))
    );
    // `?limit=`: at most that many; a bad one is a 400 naming it.
    let (status, body, _) = dc1
        .call("GET", "/v1/query/billing/execute?limit=0", None)
        .await;
    assert_eq!((status, body["Nodes"].clone()), (200, json!([])), "{body}");
    let (status, body, _) = dc1
        .call("GET", "/v1/query/billing/execute?limit=x", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("limit"), "{body}");
}
