//! Tests; `unwrap` is fine here (the workspace has no clippy.toml `allow-unwrap-in-tests` yet).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::model::{CheckStatus, CheckType};
use crate::one_or_many::OneOrMany;
use crate::registration::{CheckDefinition, ConnectDefinition};

fn defaults() -> Defaults {
    Defaults {
        datacenter: "dc1".to_owned(),
        node: "node-1".to_owned(),
    }
}

/// A port allocator over 21000–21255, like the agent's.
fn ports() -> impl FnMut() -> Option<u16> {
    let mut next = 21000u16;
    move || {
        let p = next;
        next += 1;
        (p <= 21255).then_some(p)
    }
}

fn validate(reg: &ServiceRegistration) -> Result<Vec<ValidatedService>, ValidationErrors> {
    validate_service(reg, &defaults(), &mut ports())
}

fn reg(value: serde_json::Value) -> ServiceRegistration {
    serde_json::from_value(value).unwrap()
}

/// The field paths of the errors, in order.
fn fields(reg_json: serde_json::Value) -> Vec<String> {
    let err = validate(&reg(reg_json)).unwrap_err();
    err.0.into_iter().map(|e| e.field).collect()
}

fn d(text: &str) -> GoDuration {
    GoDuration::parse(text).unwrap()
}

use crate::duration::GoDuration;

fn issue_client() -> ServiceRegistration {
    reg(json!({
        "name": "client",
        "port": 8080,
        "connect": {"sidecar_service": {"proxy": {"upstreams": [
            {"destination_name": "echo", "local_bind_port": 9191}
        ]}}}
    }))
}

fn issue_echo() -> ServiceRegistration {
    reg(json!({
        "name": "echo",
        "port": 9090,
        "check": {"tcp": "127.0.0.1:9090", "interval": "1s", "timeout": "500ms"},
        "connect": {"sidecar_service": {}}
    }))
}

#[test]
fn issue_example_expands_into_four_services() {
    let mut next = ports();
    let mut all = validate_service(&issue_client(), &defaults(), &mut next).unwrap();
    all.extend(validate_service(&issue_echo(), &defaults(), &mut next).unwrap());
    let summary: Vec<_> = all
        .iter()
        .map(|v| {
            (
                v.service.kind,
                v.service.id.as_str(),
                v.service.service.as_str(),
                v.service.port,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (ServiceKind::Typical, "client", "client", 8080),
            (
                ServiceKind::ConnectProxy,
                "client-sidecar-proxy",
                "client-sidecar-proxy",
                21000
            ),
            (ServiceKind::Typical, "echo", "echo", 9090),
            (
                ServiceKind::ConnectProxy,
                "echo-sidecar-proxy",
                "echo-sidecar-proxy",
                21001
            ),
        ]
    );

    let client_proxy = all[1].service.proxy.as_ref().unwrap();
    assert_eq!(client_proxy.destination_service_name, "client");
    assert_eq!(client_proxy.destination_service_id, "client");
    assert_eq!(client_proxy.local_service_address, "127.0.0.1");
    assert_eq!(client_proxy.local_service_port, 8080);
    assert_eq!(
        client_proxy.upstreams,
        vec![AgentUpstream {
            destination_type: "service".to_owned(),
            destination_name: "echo".to_owned(),
            datacenter: String::new(),
            local_bind_address: "127.0.0.1".to_owned(),
            local_bind_port: 9191,
            config: None,
        }]
    );
    assert_eq!(
        all[3].service.proxy.as_ref().unwrap().local_service_port,
        9090
    );
    assert!(all.iter().all(|v| v.service.datacenter == "dc1"));

    // The echo check.
    let check = &all[2].checks[0];
    assert_eq!(check.check_id, "service:echo");
    assert_eq!(check.name, "Service 'echo' check");
    assert_eq!(check.node, "node-1");
    assert_eq!(check.status, CheckStatus::Critical);
    assert_eq!(check.check_type, Some(CheckType::Tcp));
    assert_eq!(
        (check.interval.as_str(), check.timeout.as_str()),
        ("1s", "500ms")
    );
    assert_eq!(check.definition.tcp, "127.0.0.1:9090");
    assert_eq!(check.definition.timeout, Some(d("500ms")));
    assert_eq!(
        (check.service_id.as_str(), check.service_name.as_str()),
        ("echo", "echo")
    );
    assert_eq!(
        (
            check.output.as_str(),
            check.create_index,
            check.modify_index
        ),
        ("", 0, 0)
    );

    // Each sidecar gets one alias check mirroring its parent.
    for (sidecar, parent) in [(&all[1], "client"), (&all[3], "echo")] {
        assert_eq!(sidecar.checks.len(), 1);
        let alias = &sidecar.checks[0];
        assert_eq!(alias.check_id, format!("service:{parent}-sidecar-proxy"));
        assert_eq!(alias.name, format!("Connect Sidecar Aliasing {parent}"));
        assert_eq!(alias.check_type, Some(CheckType::Alias));
        assert_eq!(alias.definition.alias_service, parent);
        assert_eq!(alias.status, CheckStatus::Critical);
        assert_eq!(alias.service_id, sidecar.service.id);
    }
}

#[test]
fn plain_service_defaults() {
    let out = validate(&reg(json!({"name": "web"}))).unwrap();
    assert_eq!(out.len(), 1);
    let s = &out[0].service;
    assert_eq!(
        (s.id.as_str(), s.service.as_str(), s.port),
        ("web", "web", 0)
    );
    assert_eq!(s.kind, ServiceKind::Typical);
    assert_eq!(
        s.weights,
        Weights {
            passing: 1,
            warning: 1
        }
    );
    assert_eq!(
        (s.address.as_str(), s.proxy.is_none(), s.connect.is_none()),
        ("", true, true)
    );
    assert!(out[0].checks.is_empty());
}

#[test]
fn copies_what_was_written() {
    let out = validate(&reg(json!({
        "ID": "web-1", "Name": "web", "Tags": ["a"], "Address": "10.0.0.1", "Port": 80,
        "Meta": {"version": "2"}, "Weights": {"Passing": 3, "Warning": 0},
        "EnableTagOverride": true, "TaggedAddresses": {"lan": {"address": "10.0.0.1", "port": 80}},
        "Connect": {"Native": true}
    })))
    .unwrap();
    let s = &out[0].service;
    assert_eq!(s.id, "web-1");
    assert_eq!(s.tags, vec!["a"]);
    assert_eq!(s.address, "10.0.0.1");
    assert_eq!(s.meta.get("version").map(String::as_str), Some("2"));
    assert_eq!(
        s.weights,
        Weights {
            passing: 3,
            warning: 0
        }
    );
    assert!(s.enable_tag_override);
    assert!(s.tagged_addresses.is_some());
    assert_eq!(s.connect, Some(json!({"Native": true})));
}

#[test]
fn bad_ports_are_named() {
    for (port, ok) in [
        (1, true),
        (65535, true),
        (0, false),
        (-1, false),
        (65536, false),
        (70000, false),
    ] {
        let got = validate(&reg(json!({"name": "web", "port": port})));
        assert_eq!(got.is_ok(), ok, "port {port}");
        if let Err(e) = got {
            assert_eq!(
                e.0,
                vec![FieldError {
                    field: "port".into(),
                    message: format!("port {port} is outside 1–65535")
                }]
            );
        }
    }
}

#[test]
fn names_and_ids() {
    assert_eq!(fields(json!({"port": 80})), ["name"]);
    assert_eq!(fields(json!({"name": "", "port": 80})), ["name"]);
    for bad in ["a/b", "a b", "a\tb", "a\u{7}b"] {
        assert_eq!(fields(json!({"name": bad})), ["name"], "{bad:?}");
        assert_eq!(fields(json!({"name": "ok", "id": bad})), ["id"], "{bad:?}");
    }
    // An empty id means "use the name", as in Consul.
    assert_eq!(
        validate(&reg(json!({"name": "web", "id": ""}))).unwrap()[0]
            .service
            .id,
        "web"
    );
    let err = validate(&reg(json!({"name": "a b"}))).unwrap_err();
    assert_eq!(err.0[0].message, "name \"a b\" must not contain whitespace");
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = validate(&reg(json!({
        "name": "bad name",
        "port": 70000,
        "kind": "api-gateway",
        "meta": {"": "x"},
        "checks": [{"tcp": "nope", "interval": "1s"}, {"http": "http://x", "ttl": "1s"}],
        "connect": {"sidecar_service": {"port": 0, "proxy": {"upstreams": [{"local_bind_port": 99999}]}}}
    })))
    .unwrap_err();
    let got: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        got,
        [
            "name",
            "port",
            "kind",
            "meta",
            "checks[0].tcp",
            "checks[1]",
            "connect.sidecar_service.port",
            "connect.sidecar_service.proxy.upstreams[0].destination_name",
            "connect.sidecar_service.proxy.upstreams[0].local_bind_port",
        ]
    );
    let text = err.to_string();
    assert!(text.starts_with("name: name \"bad name\" must not contain whitespace; port: port 70000 is outside 1–65535; "), "{text}");
}

#[test]
fn connect_proxy_kind() {
    assert_eq!(
        fields(json!({"name": "p", "kind": "connect-proxy"})),
        ["proxy.destination_service_name", "port"]
    );
    let out = validate(&reg(json!({
        "name": "web-proxy", "kind": "connect-proxy", "port": 21000,
        "proxy": {"destination_service_name": "web", "local_service_port": 8080,
                  "upstreams": {"destination_name": "db", "local_bind_port": 5432}}
    })))
    .unwrap();
    let proxy = out[0].service.proxy.as_ref().unwrap();
    assert_eq!(out[0].service.kind, ServiceKind::ConnectProxy);
    assert_eq!(
        (
            proxy.destination_service_name.as_str(),
            proxy.local_service_port
        ),
        ("web", 8080)
    );
    assert_eq!(proxy.upstreams[0].destination_name, "db");
    // `proxy` on a plain service is an error.
    assert_eq!(fields(json!({"name": "web", "proxy": {}})), ["proxy"]);
}

#[test]
fn sidecar_overrides() {
    let out = validate(&reg(json!({
        "name": "web", "id": "web-1", "port": 8080, "tags": ["t"], "address": "10.0.0.2",
        "connect": {"sidecar_service": {
            "id": "side", "name": "side-name", "port": 20000, "tags": [], "address": "10.0.0.3",
            "proxy": {"local_service_address": "10.0.0.2", "local_service_port": 8081}
        }}
    })))
    .unwrap();
    let s = &out[1].service;
    assert_eq!(
        (s.id.as_str(), s.service.as_str(), s.port),
        ("side", "side-name", 20000)
    );
    assert!(s.tags.is_empty());
    assert_eq!(s.address, "10.0.0.3");
    let proxy = s.proxy.as_ref().unwrap();
    assert_eq!(proxy.destination_service_id, "web-1");
    assert_eq!(proxy.local_service_address, "10.0.0.2");
    assert_eq!(proxy.local_service_port, 8081);
    assert_eq!(out[1].checks[0].check_id, "service:side");
    assert_eq!(out[1].checks[0].name, "Connect Sidecar Aliasing web-1");

    // Defaults derived from the parent: id, tags, meta, address.
    let out = validate(&reg(json!({
        "name": "web", "id": "web-1", "port": 8080, "tags": ["t"], "meta": {"k": "v"}, "address": "10.0.0.2",
        "connect": {"sidecar_service": {}}
    })))
    .unwrap();
    let s = &out[1].service;
    assert_eq!(
        (s.id.as_str(), s.service.as_str()),
        ("web-1-sidecar-proxy", "web-sidecar-proxy")
    );
    assert_eq!(
        (s.tags.clone(), s.address.as_str()),
        (vec!["t".to_owned()], "10.0.0.2")
    );
    assert_eq!(s.meta, out[0].service.meta);
    assert_eq!(s.kind, ServiceKind::ConnectProxy);
}

#[test]
fn sidecar_needs_a_parent_port() {
    assert_eq!(
        fields(json!({"name": "web", "connect": {"sidecar_service": {}}})),
        ["port"]
    );
    // …unless the proxy says where the app listens.
    let out = validate(&reg(json!({"name": "web", "connect": {"sidecar_service": {"proxy": {"local_service_port": 9000}}}}))).unwrap();
    assert_eq!(
        out[1].service.proxy.as_ref().unwrap().local_service_port,
        9000
    );
}

#[test]
fn sidecar_port_allocation() {
    let mut calls = 0;
    let mut none = || {
        calls += 1;
        None
    };
    let err = validate_service(&issue_echo(), &defaults(), &mut none).unwrap_err();
    assert_eq!(err.0[0].field, "connect.sidecar_service.port");
    assert_eq!(calls, 1);

    // Not called when the port is given, nor when the registration is invalid anyway.
    let mut calls = 0;
    let mut count = || {
        calls += 1;
        Some(21000)
    };
    let mut given = issue_echo();
    if let Some(sc) = given
        .connect
        .as_mut()
        .and_then(|c| c.sidecar_service.as_mut())
    {
        sc.port = Some(21500);
    }
    assert_eq!(
        validate_service(&given, &defaults(), &mut count).unwrap()[1]
            .service
            .port,
        21500
    );
    let mut bad = issue_echo();
    bad.name = "a/b".into();
    assert!(validate_service(&bad, &defaults(), &mut count).is_err());
    assert_eq!(calls, 0);
}

#[test]
fn sidecar_checks_replace_the_alias_check() {
    let out = validate(&reg(json!({
        "name": "web", "port": 80,
        "connect": {"sidecar_service": {"checks": [{"tcp": "127.0.0.1:21000", "interval": "10s"}, {"ttl": "30s"}]}}
    })))
    .unwrap();
    let ids: Vec<_> = out[1].checks.iter().map(|c| c.check_id.as_str()).collect();
    assert_eq!(
        ids,
        ["service:web-sidecar-proxy:1", "service:web-sidecar-proxy:2"]
    );
    assert_eq!(out[1].checks[0].name, "Service 'web-sidecar-proxy' check");
}

#[test]
fn default_check_ids_count_check_then_checks() {
    let out = validate(&reg(json!({
        "name": "web", "port": 80,
        "check": {"ttl": "30s"},
        "checks": [{"tcp": "localhost:80", "interval": "5s"}, {"check_id": "mine", "alias_service": "db"}]
    })))
    .unwrap();
    let ids: Vec<_> = out[0].checks.iter().map(|c| c.check_id.as_str()).collect();
    assert_eq!(ids, ["service:web:1", "service:web:2", "mine"]);

    let one = validate(&reg(json!({"name": "web", "checks": [{"ttl": "30s"}]}))).unwrap();
    assert_eq!(one[0].checks[0].check_id, "service:web");

    assert_eq!(
        fields(
            json!({"name": "web", "checks": [{"id": "x", "ttl": "1s"}, {"id": "x", "ttl": "1s"}]})
        ),
        ["checks[1].check_id"]
    );
}

#[test]
fn check_definition_is_filled() {
    let out = validate(&reg(json!({
        "name": "web", "port": 80,
        "check": {"name": "home", "http": "http://localhost/health", "interval": "10s",
                  "header": {"X": ["y"]}, "body": "{}", "status": "passing", "notes": "n",
                  "deregister_critical_service_after": "1m30s"}
    })))
    .unwrap();
    let c = &out[0].checks[0];
    assert_eq!(
        (c.name.as_str(), c.status, c.notes.as_str()),
        ("home", CheckStatus::Passing, "n")
    );
    assert_eq!((c.interval.as_str(), c.timeout.as_str()), ("10s", "10s"));
    let def = &c.definition;
    assert_eq!(
        (def.http.as_str(), def.method.as_str(), def.body.as_str()),
        ("http://localhost/health", "GET", "{}")
    );
    assert_eq!(def.header.get("X"), Some(&vec!["y".to_owned()]));
    assert_eq!(def.timeout, Some(GoDuration(Duration::from_secs(10))));
    assert_eq!(def.deregister_critical_service_after, Some(d("90s")));

    // TTL checks: no probe timeout invented, no interval shown.
    let ttl = validate(&reg(
        json!({"name": "web", "check": {"ttl": "30s", "status": "warning"}}),
    ))
    .unwrap();
    let c = &ttl[0].checks[0];
    assert_eq!(
        (
            c.check_type,
            c.status,
            c.interval.as_str(),
            c.timeout.as_str()
        ),
        (Some(CheckType::Ttl), CheckStatus::Warning, "", "")
    );
    assert_eq!(c.definition.ttl, Some(d("30s")));
}

#[test]
fn check_rules() {
    let cases: &[(serde_json::Value, &[&str])] = &[
        (json!({}), &["check"]),
        (
            json!({"tcp": "a:1", "http": "http://a", "interval": "1s"}),
            &["check"],
        ),
        (json!({"tcp": "a:1"}), &["check.interval"]),
        (json!({"tcp": "a:1", "interval": "0s"}), &["check.interval"]),
        (
            json!({"tcp": "a:1", "interval": "1s", "timeout": "0s"}),
            &["check.timeout"],
        ),
        (json!({"ttl": "0s"}), &["check.ttl"]),
        (json!({"tcp": "a", "interval": "1s"}), &["check.tcp"]),
        (json!({"tcp": "a:0", "interval": "1s"}), &["check.tcp"]),
        (json!({"tcp": "a:70000", "interval": "1s"}), &["check.tcp"]),
        (json!({"tcp": ":80", "interval": "1s"}), &["check.tcp"]),
        (json!({"tcp": "[::1]:80", "interval": "1s"}), &[]),
        (
            json!({"http": "localhost/health", "interval": "1s"}),
            &["check.http"],
        ),
        (
            json!({"http": "https://localhost/health", "interval": "1s"}),
            &[],
        ),
        (json!({"grpc": "localhost:9000", "interval": "1s"}), &[]),
        (
            json!({"grpc": "localhost:9000/my.Service", "interval": "1s"}),
            &[],
        ),
        (
            json!({"grpc": "localhost/my.Service", "interval": "1s"}),
            &["check.grpc"],
        ),
        (json!({"alias_service": "db"}), &[]),
        (
            json!({"ttl": "1s", "status": "maintenance"}),
            &["check.status"],
        ),
        (json!({"ttl": "1s", "status": "up"}), &["check.status"]),
    ];
    for (check, want) in cases {
        let got = match validate(&reg(json!({"name": "web", "check": check}))) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        };
        assert_eq!(got, *want, "{check}");
    }
    let err = validate(&reg(json!({"name": "web", "checks": [{"ttl": "1s"}, {}]}))).unwrap_err();
    assert_eq!(err.0[0].field, "checks[1]");
    assert_eq!(
        err.0[0].message,
        "a check needs exactly one of http, tcp, grpc, ttl, alias_service (none is set)"
    );
}

#[test]
fn upstream_rules() {
    let field = |i: usize, f: &str| format!("connect.sidecar_service.proxy.upstreams[{i}].{f}");
    let with = |ups: serde_json::Value| json!({"name": "web", "port": 80, "connect": {"sidecar_service": {"proxy": {"upstreams": ups}}}});
    assert_eq!(
        fields(with(
            json!([{"destination_type": "prepared_query", "destination_name": "q", "local_bind_port": 1}])
        )),
        [field(0, "destination_type")]
    );
    assert_eq!(
        fields(with(json!([{"destination_name": "db"}]))),
        [field(0, "local_bind_port")]
    );
    assert_eq!(
        fields(with(
            json!([{"destination_name": "db", "local_bind_port": 1, "local_bind_address": "localhost"}])
        )),
        [field(0, "local_bind_address")]
    );
    assert_eq!(
        fields(with(json!([
            {"destination_name": "a", "local_bind_port": 9000},
            {"destination_name": "b", "local_bind_port": 9000, "local_bind_address": "127.0.0.2"},
            {"destination_name": "c", "local_bind_port": 9000, "local_bind_address": "127.0.0.1"}
        ]))),
        [field(2, "local_bind_port")]
    );
}

#[test]
fn connect_conflicts_and_meta() {
    assert_eq!(
        fields(
            json!({"name": "web", "port": 80, "connect": {"native": true, "sidecar_service": {}}})
        ),
        ["connect"]
    );
    let long = "k".repeat(129);
    assert_eq!(
        fields(json!({"name": "web", "meta": {long: "v"}})),
        ["meta"]
    );
    assert!(validate(&reg(json!({"name": "web", "meta": {"k".repeat(128): "v"}}))).is_ok());
    assert_eq!(
        fields(json!({"name": "web", "weights": {"passing": 0}})),
        ["weights.passing"]
    );
}

#[test]
fn struct_literal_registration() {
    // Built in code rather than decoded: `OneOrMany` and nested definitions.
    let reg = ServiceRegistration {
        name: "api".into(),
        port: Some(443),
        checks: OneOrMany(vec![CheckDefinition {
            ttl: Some(d("5s")),
            ..Default::default()
        }]),
        connect: Some(ConnectDefinition {
            sidecar_service: Some(Default::default()),
            native: false,
        }),
        ..Default::default()
    };
    let out = validate(&reg).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].service.port, 21000);
}

#[test]
fn a_check_on_its_own_needs_a_name_and_one_kind() {
    let def: CheckDefinition =
        serde_json::from_value(json!({"Name": "mem", "TTL": "15s", "Notes": "n"})).unwrap();
    let node_check = validate_check(&def, None, "node-1").unwrap();
    assert_eq!(node_check.check_id, "mem", "the id defaults to the name");
    assert_eq!(node_check.check_type, Some(CheckType::Ttl));
    assert_eq!(node_check.status, CheckStatus::Critical);
    assert_eq!(
        (node_check.service_id.as_str(), node_check.notes.as_str()),
        ("", "n")
    );

    let web = AgentService {
        id: "web-1".into(),
        service: "web".into(),
        tags: vec!["v1".into()],
        ..AgentService::default()
    };
    let def: CheckDefinition = serde_json::from_value(
        json!({"ID": "web-http", "Name": "web", "HTTP": "http://127.0.0.1:1/", "Interval": "5s"}),
    )
    .unwrap();
    let on_web = validate_check(&def, Some(&web), "node-1").unwrap();
    assert_eq!(on_web.check_id, "web-http");
    assert_eq!(
        (on_web.service_id.as_str(), on_web.service_name.as_str()),
        ("web-1", "web")
    );

    let fields = |value: serde_json::Value| -> Vec<String> {
        let def: CheckDefinition = serde_json::from_value(value).unwrap();
        let errors = validate_check(&def, None, "node-1").unwrap_err();
        errors.0.into_iter().map(|e| e.field).collect()
    };
    assert_eq!(fields(json!({"TTL": "10s"})), ["name"]);
    assert_eq!(fields(json!({"Name": "x"})), ["check"]);
    assert_eq!(fields(json!({"Name": "x", "TCP": "h:1"})), ["interval"]);
    assert_eq!(
        fields(json!({"Name": "x", "TTL": "1s", "Status": "up"})),
        ["status"]
    );
}

#[test]
fn an_upstreams_datacenter_must_be_a_name() {
    let with_dc = |dc: &str| {
        json!({"name": "web", "port": 8080, "connect": {"sidecar_service": {"proxy": {
            "upstreams": [{"destination_name": "db", "datacenter": dc, "local_bind_port": 9000}]}}}})
    };
    assert!(validate(&reg(with_dc("dc2"))).is_ok());
    let bad = fields(with_dc("dc 2"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].ends_with("upstreams[0].datacenter"), "{bad:?}");
}
