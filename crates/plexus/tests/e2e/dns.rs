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
async fn dig(server: SocketAddr, args: &[&str]) -> String {
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
async fn short(server: SocketAddr, args: &[&str]) -> Vec<String> {
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
