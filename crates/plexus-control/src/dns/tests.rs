//! Tests of the packet path: answers built from a real catalog over the embedded store, and
//! arbitrary bytes that must never panic it.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use plexus_api::{Catalog, CheckStatus};
use proptest::prelude::*;

use super::*;
use crate::catalog::tests::fixtures::{check, node, proxy, registration, service};

async fn dns_with_catalog(dir: &std::path::Path) -> Dns {
    let catalog = Arc::new(crate::catalog::tests::fixtures::catalog(dir));
    let mut web1 = service("web-1", "web", &["v1"]);
    web1.port = 8081;
    let mut web2 = service("web-2", "web", &["v2"]);
    web2.address = "10.0.0.9".to_owned();
    web2.port = 8082;
    let mut sick = service("web-3", "web", &[]);
    sick.address = "10.0.0.66".to_owned();
    let mut side = proxy("web-1-sidecar", "web");
    side.port = 21000;
    catalog
        .register(registration(
            "n1",
            vec![web1, web2, sick, side],
            vec![
                check("c1", "web-1", CheckStatus::Passing),
                check("c2", "web-2", CheckStatus::Warning),
                check("c3", "web-3", CheckStatus::Critical),
            ],
        ))
        .await
        .unwrap();
    let mut v6 = node("n6");
    v6.address = "fd00::6".to_owned();
    catalog
        .register(plexus_api::Registration {
            node: v6,
            services: Vec::new(),
            checks: Vec::new(),
        })
        .await
        .unwrap();
    settled(&catalog).await;
    let config = DnsConfig::try_from(DnsSettings {
        service_ttl: Duration::from_secs(7),
        ..DnsSettings::default()
    })
    .unwrap();
    Dns::new(catalog, config)
}

/// Waits until the catalog index has applied every write so far: DNS reads the index as it is
/// (stale reads), and a registration only starts the index without waiting for its own write.
async fn settled(catalog: &crate::catalog::StoreCatalog) {
    catalog.nodes().await.unwrap();
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(4242, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.to_vec().unwrap()
}

async fn ask(dns: &Dns, name: &str, qtype: RecordType) -> Message {
    match dns.respond(&query(name, qtype), Transport::Tcp).await {
        Reply::Send(bytes) => Message::from_vec(&bytes).unwrap(),
        other => panic!("no answer: {other:?}"),
    }
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

#[tokio::test]
async fn service_names_answer_healthy_instances() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_with_catalog(dir.path()).await;

    let all = ask(&dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(all.metadata.response_code, ResponseCode::NoError);
    assert!(all.metadata.authoritative);
    assert_eq!(
        addresses(&all),
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "10.0.0.9".parse().unwrap()
        ],
        "critical web-3 is left out, warning web-2 is in"
    );
    assert!(all.answers.iter().all(|r| r.ttl == 7));

    let tagged = ask(&dns, "v2.web.service.dc1.consul.", RecordType::A).await;
    assert_eq!(
        addresses(&tagged),
        vec!["10.0.0.9".parse::<IpAddr>().unwrap()]
    );
    let rfc = ask(&dns, "_web._v1.service.consul.", RecordType::A).await;
    assert_eq!(addresses(&rfc), vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);

    let srv = ask(&dns, "_web._tcp.service.consul.", RecordType::SRV).await;
    let mut targets: Vec<(u16, String)> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (8081, "n1.node.dc1.consul.".to_owned()),
            (8082, "0a000009.addr.dc1.consul.".to_owned()),
        ]
    );
    assert_eq!(srv.additionals.len(), 2, "{:?}", srv.additionals);

    let connect = ask(&dns, "web.connect.consul.", RecordType::SRV).await;
    let ports: Vec<u16> = connect
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect();
    assert_eq!(ports, vec![21000]);
}

#[tokio::test]
async fn nodes_apex_and_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_with_catalog(dir.path()).await;

    let n1 = ask(&dns, "N1.node.consul.", RecordType::A).await;
    assert_eq!(addresses(&n1), vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    let n6 = ask(&dns, "n6.node.dc1.consul.", RecordType::AAAA).await;
    assert_eq!(addresses(&n6), vec!["fd00::6".parse::<IpAddr>().unwrap()]);
    let nodata = ask(&dns, "n6.node.consul.", RecordType::A).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);

    for name in [
        "nope.service.consul.",
        "web.service.dc9.consul.",
        "x.y.z.consul.",
        "ghost.node.consul.",
    ] {
        let answer = ask(&dns, name, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert_eq!(
            answer.authorities[0].record_type(),
            RecordType::SOA,
            "{name}"
        );
    }
    let soa = ask(&dns, "consul.", RecordType::SOA).await;
    assert_eq!(soa.answers[0].record_type(), RecordType::SOA);

    let outside = ask(&dns, "example.com.", RecordType::A).await;
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
    let any = ask(&dns, "web.service.consul.", RecordType::ANY).await;
    assert_eq!(addresses(&any).len(), 2);
}

#[tokio::test]
async fn udp_answers_are_truncated_to_the_client_size() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(crate::catalog::tests::fixtures::catalog(dir.path()));
    let services = (0..60)
        .map(|i| {
            let mut s = service(&format!("big-{i}"), "big", &[]);
            s.address = format!("10.1.0.{i}");
            s
        })
        .collect();
    catalog
        .register(registration("n1", services, Vec::new()))
        .await
        .unwrap();
    settled(&catalog).await;
    let dns = Dns::new(
        catalog,
        DnsConfig::try_from(DnsSettings::default()).unwrap(),
    );
    let packet = query("big.service.consul.", RecordType::A);
    let Reply::Send(udp) = dns.respond(&packet, Transport::Udp).await else {
        panic!("no UDP answer")
    };
    assert!(udp.len() <= 512);
    let udp = Message::from_vec(&udp).unwrap();
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    let Reply::Send(tcp) = dns.respond(&packet, Transport::Tcp).await else {
        panic!("no TCP answer")
    };
    let tcp = Message::from_vec(&tcp).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);

    // With EDNS the client's larger size is honoured.
    let mut message = Message::from_vec(&packet).unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    message.set_edns(edns);
    let Reply::Send(big) = dns
        .respond(&message.to_vec().unwrap(), Transport::Udp)
        .await
    else {
        panic!("no EDNS answer")
    };
    let big = Message::from_vec(&big).unwrap();
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 60);
}

#[tokio::test]
async fn malformed_packets_get_formerr_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_with_catalog(dir.path()).await;
    assert_eq!(dns.respond(&[1, 2, 3], Transport::Udp).await, Reply::Drop);
    // A header announcing a question that is not there.
    let header = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let Reply::Send(bytes) = dns.respond(&header, Transport::Udp).await else {
        panic!("FORMERR expected")
    };
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.metadata.id, 0x1234);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // A name whose compression pointer points at itself.
    let mut looped = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let Reply::Send(bytes) = dns.respond(&looped, Transport::Udp).await else {
        panic!("FORMERR expected")
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // A response is never answered (no reflection).
    let mut response = Message::from_vec(&query("web.service.consul.", RecordType::A)).unwrap();
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        dns.respond(&response.to_vec().unwrap(), Transport::Udp)
            .await,
        Reply::Drop
    );
    // Two questions: FORMERR.
    let mut two = Message::from_vec(&query("web.service.consul.", RecordType::A)).unwrap();
    two.add_query(Query::query(
        Name::from_ascii("n1.node.consul.").unwrap(),
        RecordType::A,
    ));
    let Reply::Send(bytes) = dns.respond(&two.to_vec().unwrap(), Transport::Udp).await else {
        panic!("FORMERR expected")
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn bad_settings_are_refused_naming_the_flag() {
    let error = DnsConfig::try_from(DnsSettings {
        domain: "bad..domain".to_owned(),
        ..DnsSettings::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("--dns-domain"), "{error}");
    let error = DnsConfig::try_from(DnsSettings {
        domain: ".".to_owned(),
        ..DnsSettings::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("empty"), "{error}");
    let error = DnsConfig::try_from(DnsSettings {
        node_ttl: Duration::from_secs(u64::from(u32::MAX) + 1),
        ..DnsSettings::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("--dns-node-ttl"), "{error}");
}

/// One catalog and runtime for every property case (opening a store per case would dominate).
fn shared() -> &'static (tokio::runtime::Runtime, Dns, tempfile::TempDir) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, Dns, tempfile::TempDir)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dns = runtime.block_on(dns_with_catalog(dir.path()));
        (runtime, dns, dir)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and valid queries with arbitrary bytes spliced in, never panic the packet
    /// path; whatever comes back is a DNS response with the packet's id, within the UDP size.
    #[test]
    fn arbitrary_bytes_never_panic(
        noise in proptest::collection::vec(any::<u8>(), 0..700),
        at in 0usize..64,
        udp in any::<bool>(),
    ) {
        let (runtime, dns, _) = shared();
        let transport = if udp { Transport::Udp } else { Transport::Tcp };
        let mut spliced = query("web.service.consul.", RecordType::SRV);
        let at = at.min(spliced.len());
        spliced.splice(at..at, noise.iter().copied());
        for packet in [&noise, &spliced] {
            if let Reply::Send(bytes) = runtime.block_on(dns.respond(packet, transport)) {
                let reply = Message::from_vec(&bytes).unwrap();
                prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
                prop_assert_eq!(&reply.metadata.id.to_be_bytes()[..], &packet[..2]);
                if udp {
                    prop_assert!(bytes.len() <= usize::from(MAX_UDP_PAYLOAD));
                }
            }
        }
    }
}

/// Every query resolves as a token with these rules (default deny), or as no token at all.
struct Fixed(Option<plexus_api::acl::Rules>);

#[async_trait::async_trait]
impl plexus_runtime::acl::Resolve for Fixed {
    async fn resolve(
        &self,
        _token: Option<&plexus_api::acl::SecretId>,
    ) -> Result<plexus_api::acl::Authorizer, plexus_runtime::acl::ResolveError> {
        match &self.0 {
            Some(rules) => Ok(plexus_api::acl::Authorizer::from_rules(
                "dns-default",
                [rules],
                plexus_api::acl::DefaultPolicy::Deny,
            )),
            None => Err(plexus_runtime::acl::ResolveError::NotFound),
        }
    }
}

#[tokio::test]
async fn answers_only_what_the_token_may_read() {
    use plexus_api::acl::{Access, Resource, Rules};
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_with_catalog(dir.path()).await;
    let mut db = service("db-1", "db", &[]);
    db.address = "10.0.0.20".to_owned();
    dns.catalog
        .register(registration("n2", vec![db], Vec::new()))
        .await
        .unwrap();
    let mut web_on_n2 = service("web-9", "web", &[]);
    web_on_n2.address = "10.0.0.99".to_owned();
    dns.catalog
        .register(registration("n3", vec![web_on_n2], Vec::new()))
        .await
        .unwrap();
    settled(&dns.catalog).await;
    let open = ask(&dns, "web.service.consul.", RecordType::A).await;
    assert!(addresses(&open).contains(&"10.0.0.99".parse().unwrap()));

    let rules = Rules::default()
        .with(Resource::Service, "web", false, Access::Read)
        .with(Resource::Service, "db", false, Access::Read)
        .with(Resource::Node, "n1", false, Access::Read);
    let dns = dns.with_acl(plexus_runtime::acl::Resolver(Arc::new(Fixed(Some(rules)))));
    let web = ask(&dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(web.metadata.response_code, ResponseCode::NoError);
    let ips = addresses(&web);
    assert!(
        !ips.is_empty() && !ips.contains(&"10.0.0.99".parse().unwrap()),
        "{ips:?}"
    );
    // db may be read but its only instance is on n2, which may not: nothing is left.
    for name in [
        "db.service.consul.",
        "nope.service.consul.",
        "n2.node.consul.",
        "n6.node.consul.",
    ] {
        let answer = ask(&dns, name, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(answer.answers.is_empty(), "{name}");
        assert_eq!(answer.authorities.len(), 1, "{name}: the SOA");
    }
    let n1 = ask(&dns, "n1.node.consul.", RecordType::A).await;
    assert_eq!(n1.metadata.response_code, ResponseCode::NoError);
    assert_eq!(n1.answers.len(), 1);

    let service_only = Rules::default().with(Resource::Service, "db", false, Access::Read);
    let dns = dns.with_acl(plexus_runtime::acl::Resolver(Arc::new(Fixed(Some(
        service_only,
    )))));
    let web = ask(&dns, "web.service.consul.", RecordType::SRV).await;
    assert_eq!(web.metadata.response_code, ResponseCode::NXDomain);

    let gone = dns.with_acl(plexus_runtime::acl::Resolver(Arc::new(Fixed(None))));
    let web = ask(&gone, "web.service.consul.", RecordType::A).await;
    assert_eq!(web.metadata.response_code, ResponseCode::ServFail);
}
