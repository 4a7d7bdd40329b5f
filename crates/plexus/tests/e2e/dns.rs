//! The DNS interface, queried by `dig` (BIND's, Debian `dnsutils`) and by dnspython (a resolver
//! library nobody here wrote, in `.tools/venv`), both installed by `scripts/setup-test-env.sh`.

use std::net::SocketAddr;
use std::path::PathBuf;

use plexus_test::{Dev, eventually};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{bin, dev, http};

fn dig_bin() -> PathBuf {
    let path = PathBuf::from("/usr/bin/dig");
    assert!(
        path.exists(),
        "dig is missing: run scripts/setup-test-env.sh (installs Debian's dnsutils)"
    );
    path
}

/// Runs `dig @server -p port ARGS +time=2 +tries=1` and returns its stdout.
pub(crate) async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new(dig_bin())
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .unwrap();
    // One space between fields, so expectations read like dig's output without its tabs.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `dig +short` lines, sorted.
pub(crate) async fn short(server: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut args = args.to_vec();
    args.push("+short");
    let mut lines: Vec<String> = dig(server, &args)
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Registers an instance with a TTL check in `status`.
async fn register(dev: &Dev, id: &str, name: &str, address: &str, tags: &[&str], status: &str) {
    let body = json!({
        "ID": id, "Name": name, "Address": address, "Port": 8000, "Tags": tags,
        "Check": {"CheckID": format!("{id}-ttl"), "TTL": "10m", "Status": status},
    });
    let (code, body, _) = http(
        "PUT",
        &format!("http://{}/v1/agent/service/register", dev.http),
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
}

async fn set_status(dev: &Dev, check: &str, status: &str) {
    let verb = match status {
        "passing" => "pass",
        "warning" => "warn",
        _ => "fail",
    };
    let (code, body, _) = http(
        "PUT",
        &format!("http://{}/v1/agent/check/{verb}/{check}", dev.http),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn dig_resolves_services_tags_srv_nodes_and_sidecars() {
    let dev = dev(&["--dns-service-ttl", "15s", "--dns-node-ttl", "5s"]).await;
    register(&dev, "web-1", "web", "127.0.0.11", &["v1"], "passing").await;
    register(&dev, "web-2", "web", "127.0.0.12", &["v2"], "warning").await;
    register(&dev, "web-3", "web", "127.0.0.13", &["v2"], "critical").await;
    let sidecar = json!({
        "Kind": "connect-proxy", "ID": "web-1-sidecar-proxy", "Name": "web-sidecar-proxy",
        "Address": "127.0.0.21", "Port": 21500,
        "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web-1"},
    });
    let (code, body, _) = http(
        "PUT",
        &format!("http://{}/v1/agent/service/register", dev.http),
        Some(serde_json::to_vec(&sidecar).unwrap()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let dns = dev.dns;

    eventually!(short(dns, &["web.service.consul"]).await == ["127.0.0.11", "127.0.0.12"]);
    assert_eq!(short(dns, &["v2.web.service.consul"]).await, ["127.0.0.12"]);
    assert_eq!(short(dns, &["web.service.dc1.consul"]).await.len(), 2);
    assert_eq!(
        short(dns, &["_web._v1.service.consul", "SRV"]).await,
        ["1 1 8000 7f00000b.addr.dc1.consul."]
    );
    // SRV with the targets' addresses in the additional section, and the configured TTLs.
    let srv = dig(
        dns,
        &[
            "_web._tcp.service.consul",
            "SRV",
            "+noall",
            "+answer",
            "+additional",
        ],
    )
    .await;
    assert!(
        srv.contains("_web._tcp.service.consul. 15 IN SRV 1 1 8000 7f00000b.addr.dc1.consul."),
        "{srv}"
    );
    assert!(
        srv.contains("7f00000c.addr.dc1.consul. 15 IN A 127.0.0.12"),
        "{srv}"
    );
    assert_eq!(
        short(dns, &["7f00000c.addr.dc1.consul"]).await,
        ["127.0.0.12"]
    );
    assert_eq!(short(dns, &["web.connect.consul"]).await, ["127.0.0.21"]);
    assert_eq!(
        short(dns, &["web.connect.consul", "SRV"]).await,
        ["1 1 21500 7f000015.addr.dc1.consul."]
    );
    let node = dig(dns, &["test-node.node.consul", "+noall", "+answer"]).await;
    assert!(
        node.contains("test-node.node.consul. 5 IN A 127.0.0.1"),
        "{node}"
    );

    // Unknown names: NXDOMAIN with the SOA; another datacenter too (no federation).
    for name in [
        "nope.service.consul",
        "web.service.dc2.consul",
        "a.b.consul",
    ] {
        let out = dig(dns, &[name]).await;
        assert!(out.contains("status: NXDOMAIN"), "{name}: {out}");
        assert!(
            out.contains("consul. 0 IN SOA ns.consul. hostmaster.consul."),
            "{name}: {out}"
        );
    }
    // A name outside the domain without recursors: REFUSED.
    assert!(dig(dns, &["example.com"]).await.contains("status: REFUSED"));

    // Live: an instance that turns critical leaves the answer, and comes back.
    set_status(&dev, "web-1-ttl", "critical").await;
    eventually!(short(dns, &["web.service.consul"]).await == ["127.0.0.12"]);
    set_status(&dev, "web-1-ttl", "passing").await;
    eventually!(short(dns, &["web.service.consul"]).await.len() == 2);
}

#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_dig_retries_over_tcp() {
    let dev = dev(&["--dns-domain", "mesh.internal"]).await;
    for i in 0..40 {
        register(
            &dev,
            &format!("big-{i}"),
            "big",
            &format!("127.0.1.{i}"),
            &[],
            "passing",
        )
        .await;
    }
    let dns = dev.dns;
    eventually!(
        short(dns, &["big.service.mesh.internal", "+tcp"])
            .await
            .len()
            == 40
    );
    // UDP without EDNS: 512 bytes; dig told to keep the truncated answer shows the TC flag.
    let truncated = dig(dns, &["big.service.mesh.internal", "+noedns", "+ignore"]).await;
    assert!(truncated.contains(" tc"), "{truncated}");
    assert!(truncated.contains("ANSWER: 0"), "{truncated}");
    // Without +ignore dig retries over TCP and gets every record.
    let retried = dig(dns, &["big.service.mesh.internal", "+noedns"]).await;
    assert!(
        retried.contains("Truncated, retrying in TCP mode"),
        "{retried}"
    );
    assert!(retried.contains("ANSWER: 40"), "{retried}");
    // The old domain is not served.
    assert!(
        dig(dns, &["big.service.consul"])
            .await
            .contains("status: REFUSED")
    );
}

const DNSPYTHON: &str = r#"
import sys, dns.resolver, dns.rdatatype
server, port = sys.argv[1], int(sys.argv[2])
r = dns.resolver.Resolver(configure=False)
r.nameservers = [server]
r.port = port
a = sorted(x.address for x in r.resolve("api.service.consul", "A"))
assert a == ["127.0.0.31", "127.0.0.32"], a
srv = sorted((x.port, str(x.target)) for x in r.resolve("_api._tcp.service.consul", "SRV"))
assert srv == [(8000, "7f00001f.addr.dc1.consul."), (8000, "7f000020.addr.dc1.consul.")], srv
try:
    r.resolve("missing.service.consul", "A")
    raise SystemExit("NXDOMAIN expected")
except dns.resolver.NXDOMAIN:
    pass
tcp = sorted(x.address for x in r.resolve("api.service.consul", "A", tcp=True))
assert tcp == a, tcp
print("dnspython OK", a, srv)
"#;

#[tokio::test]
async fn dnspython_resolves_over_udp_and_tcp() {
    let python = crate::consul_client::python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let dev = dev(&[]).await;
    register(&dev, "api-1", "api", "127.0.0.31", &[], "passing").await;
    register(&dev, "api-2", "api", "127.0.0.32", &[], "passing").await;
    eventually!(short(dev.dns, &["api.service.consul"]).await.len() == 2);
    let out = tokio::process::Command::new(&python)
        .args([
            "-c",
            DNSPYTHON,
            &dev.dns.ip().to_string(),
            &dev.dns.port().to_string(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dnspython OK"), "{stdout}");
}

#[tokio::test]
async fn names_outside_the_domain_go_to_the_recursors() {
    // The recursor is another Plexus serving the domain `other`.
    let upstream = dev(&["--dns-domain", "other"]).await;
    register(&upstream, "far-1", "far", "127.0.0.41", &[], "passing").await;
    let dead = plexus_test::free_port();
    let recursors = [format!("127.0.0.1:{dead}"), upstream.dns.to_string()];
    let dev = dev(&[
        "--dns-recursor",
        &recursors[0],
        "--dns-recursor",
        &recursors[1],
    ])
    .await;
    eventually!(short(dev.dns, &["far.service.other", "+time=5"]).await == ["127.0.0.41"]);
    assert_eq!(
        short(dev.dns, &["far.service.other", "+tcp", "+time=5"]).await,
        ["127.0.0.41"]
    );
    let out = dig(dev.dns, &["nope.service.other", "+time=5"]).await;
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains(" ra"), "recursion available: {out}");
}

#[tokio::test]
async fn bad_packets_are_answered_or_dropped_and_the_server_stays_up() {
    let dev = dev(&[]).await;
    register(&dev, "ok-1", "ok", "127.0.0.51", &[], "passing").await;
    let dns = dev.dns;
    eventually!(short(dns, &["ok.service.consul"]).await == ["127.0.0.51"]);

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(dns).await.unwrap();
    let mut reply = vec![0u8; 65536];
    // A header with a question that is not there, a compression loop: FORMERR with the id.
    let mut looped = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    for (packet, id) in [
        (
            vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0],
            [0x12, 0x34],
        ),
        (looped, [0xab, 0xcd]),
    ] {
        udp.send(&packet).await.unwrap();
        let n = tokio::time::timeout(plexus_test::DEADLINE, udp.recv(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&reply[..2], &id);
        assert_eq!(reply[3] & 0x0f, 1, "FORMERR: {:?}", &reply[..n]);
    }
    // Garbage, a header-sized fragment and an oversized datagram: dropped or FORMERR, no crash.
    for packet in [vec![0xff; 5], vec![0u8; 11], vec![0x41; 9000]] {
        udp.send(&packet).await.unwrap();
    }
    // ANY is answered (with the addresses).
    assert_eq!(
        short(dns, &["ok.service.consul", "ANY"]).await,
        ["127.0.0.51"]
    );
    // TCP: a frame announcing 65,535 bytes is refused with a close; a truncated frame too.
    let mut tcp = tokio::net::TcpStream::connect(dns).await.unwrap();
    tcp.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(plexus_test::DEADLINE, tcp.read_to_end(&mut sink)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    // Still serving, over both transports.
    assert_eq!(short(dns, &["ok.service.consul"]).await, ["127.0.0.51"]);
    assert_eq!(
        short(dns, &["ok.service.consul", "+tcp"]).await,
        ["127.0.0.51"]
    );
    assert!(
        dev.client
            .agent_services()
            .await
            .unwrap()
            .contains_key("ok-1")
    );
}

#[test]
fn bad_dns_flags_exit_64_naming_the_flag_before_binding() {
    for (flags, needle) in [
        (&["--dns-domain", "a..b"][..], "--dns-domain"),
        (
            &["--dns-recursor", "resolver.example"][..],
            "--dns-recursor",
        ),
        (&["--dns-addr", "localhost"][..], "--dns-addr"),
    ] {
        let mut args = vec!["dev", "--http-addr", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let (code, _, err) = plexus_test::mesh::run_cli(bin(), &args, &[]).unwrap();
        assert_eq!(code, 64, "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &[
            "server",
            "--dns-service-ttl",
            "soon",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("dns-service-ttl"), "{err}");
}

#[tokio::test]
async fn plexus_server_answers_dns_too() {
    let data = tempfile::tempdir().unwrap();
    let server = plexus_test::Server::start(
        bin(),
        "dns-server",
        &[
            "--store",
            "embedded",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--dns-node-ttl",
            "30s",
        ],
    )
    .await
    .unwrap();
    // Servers enforce ACLs and DNS answers as the anonymous token here (no default token):
    // let it read nodes, as Consul's documentation has operators do for DNS.
    let management = Some(plexus_test::management_token());
    let url = |path: &str| format!("http://{}{path}", server.http);
    let (status, answer, _) = crate::acl::call(
        &url("/v1/acl/policy"),
        "PUT",
        management,
        Some(json!({"Name": "dns-nodes", "Rules": "node_prefix \"\" { policy = \"read\" }"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) = crate::acl::call(
        &url(&format!(
            "/v1/acl/token/{}",
            plexus_api::acl::ANONYMOUS_ACCESSOR_ID
        )),
        "PUT",
        management,
        Some(json!({"Policies": [{"Name": "dns-nodes"}]})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let out = dig(server.dns, &["dns-server.node.consul", "+noall", "+answer"]).await;
    assert!(
        out.contains("dns-server.node.consul. 30 IN A 127.0.0.1"),
        "{out}"
    );
    let tcp = dig(
        server.dns,
        &["dns-server.node.dc1.consul", "+tcp", "+short"],
    )
    .await;
    assert_eq!(tcp.trim(), "127.0.0.1");
}

/// DNS under ACLs (default deny): answered as the server's default token
/// (`--default-token-file`, Consul's `acl.tokens.default`), filtered as the HTTP API filters;
/// what the token may not read is NXDOMAIN. The same default token stands in for HTTP callers
/// without a token, on the server and on a remote agent (which also sends it on when it
/// forwards), while a caller's own token (header or `?token=`) still wins.
#[tokio::test]
async fn dns_and_tokenless_requests_answer_as_the_default_token() {
    use crate::acl::{AclServer, call};
    let dir = tempfile::tempdir().unwrap();
    let default = plexus_test::server::random_uuid();
    let token_file = dir.path().join("default-token");
    std::fs::write(&token_file, format!("{default}\n")).unwrap();
    let token_path = token_file.to_str().unwrap();

    // A default token file that cannot be read stops the server before it binds anything.
    let missing = dir.path().join("missing");
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &["server", "--default-token-file", missing.to_str().unwrap()],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--default-token-file"), "{err}");

    let server = AclServer::start(&["--default-token-file", token_path], &[]).await;
    let dns = server.process.listening("dns-udp").await.unwrap();
    for (id, name, address) in [("web-1", "web", "10.1.0.1"), ("db-1", "db", "10.1.0.2")] {
        server
            .admin(
                "PUT",
                "/v1/agent/service/register",
                Some(json!({"ID": id, "Name": name, "Address": address, "Port": 80})),
            )
            .await;
    }
    // The default token does not exist yet: DNS cannot say what it may see.
    let answer = dig(dns, &["web.service.consul", "A"]).await;
    assert!(answer.contains("status: SERVFAIL"), "{answer}");

    let policy = server
        .admin(
            "PUT",
            "/v1/acl/policy",
            Some(json!({"Name": "dns-default", "Rules":
                "service \"web\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }"})),
        )
        .await;
    server
        .token(json!({"SecretID": default, "Description": "default token",
                       "Policies": [{"Name": "dns-default"}]}))
        .await;
    eventually!(short(dns, &["web.service.consul", "A"]).await == ["10.1.0.1"]);
    let answer = dig(dns, &["db.service.consul", "A"]).await;
    assert!(
        answer.contains("status: NXDOMAIN"),
        "db is not readable: {answer}"
    );
    assert!(answer.contains("SOA"), "{answer}");
    assert_eq!(short(dns, &["acl-node.node.consul", "A"]).await.len(), 1);
    let srv = short(dns, &["_web._tcp.service.consul", "SRV"]).await;
    assert_eq!(srv, ["1 1 80 0a010001.addr.dc1.consul."], "{srv:?}");

    // HTTP without a token reads as the default token; an explicit token is its own.
    let names = |v: &serde_json::Value| {
        let mut n: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        n.sort();
        n
    };
    let (status, seen, _) = server.call("GET", "/v1/catalog/services", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(names(&seen), ["web"], "{seen}");
    let (_, seen, _) = server
        .call("GET", "/v1/catalog/services", Some("anonymous"), None)
        .await;
    assert_eq!(seen, json!({}), "{seen}");

    // A remote agent with the same default token.
    let (_, agent_token) = server
        .token(json!({"NodeIdentities": [{"NodeName": "edge", "Datacenter": "dc1"}]}))
        .await;
    let agent = plexus_test::Process::spawn(
        "agent:edge",
        bin(),
        &[
            "agent",
            "--server",
            &server.addr,
            "--node",
            "edge",
            "--http-addr",
            "127.0.0.1:0",
            "--default-token-file",
            token_path,
        ]
        .map(str::to_owned),
        &[("PLEXUS_HTTP_TOKEN", &agent_token)],
    )
    .unwrap();
    let agent_addr = agent.listening("http").await.unwrap().to_string();
    let url = |path: &str| format!("http://{agent_addr}{path}");
    // Served by the agent itself: node:read through the default token.
    let (status, answer, _) = call(&url("/v1/agent/self"), "GET", None, None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, _) = call(&url("/v1/agent/self"), "GET", Some("anonymous"), None).await;
    assert_eq!(status, 403);
    // Passed on to a server: the default token goes with it, unless the caller gave one.
    let (status, seen, _) = call(&url("/v1/catalog/services"), "GET", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(names(&seen), ["web"], "{seen}");
    let (_, seen, _) = call(
        &url("/v1/catalog/services?token=anonymous"),
        "GET",
        None,
        None,
    )
    .await;
    assert_eq!(seen, json!({}), "?token= wins over the default: {seen}");
    drop(agent);

    // Narrow the default token's policy: without node:read, web's instance disappears too.
    let id = policy["ID"].as_str().unwrap();
    server
        .admin(
            "PUT",
            &format!("/v1/acl/policy/{id}"),
            Some(json!({"Name": "dns-default", "Rules": "service \"web\" { policy = \"read\" }"})),
        )
        .await;
    eventually!(
        dig(dns, &["web.service.consul", "A"])
            .await
            .contains("status: NXDOMAIN")
    );
    let answer = dig(dns, &["acl-node.node.consul", "A"]).await;
    assert!(answer.contains("status: NXDOMAIN"), "{answer}");
    // Names outside the catalog are unaffected: the apex still has its SOA.
    let answer = dig(dns, &["consul", "SOA"]).await;
    assert!(answer.contains("status: NOERROR"), "{answer}");
    let secrets = [default.as_str(), agent_token.as_str()];
    for secret in secrets {
        assert!(
            !server.process.output().contains(secret),
            "a secret was logged"
        );
    }
}
