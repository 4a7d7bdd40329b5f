#![allow(clippy::unwrap_used)]

use super::*;

fn addr(name: &str, addr: &str, prefix_len: u8, default_route: bool) -> IfAddr {
    IfAddr {
        name: name.to_owned(),
        addr: addr.parse().unwrap(),
        prefix_len,
        up: true,
        default_route,
    }
}

fn machine() -> Vec<IfAddr> {
    vec![
        addr("lo", "127.0.0.1", 8, false),
        addr("lo", "::1", 128, false),
        addr("docker0", "172.17.0.1", 16, false),
        addr("eth0", "fe80::1", 64, true),
        addr("eth0", "10.1.2.3", 24, true),
        addr("eth1", "203.0.113.7", 24, false),
        addr("eth1", "2001:db8::7", 64, false),
    ]
}

fn eval(text: &str) -> Result<String, TemplateError> {
    render(text, &machine())
}

#[test]
fn consul_documentation_examples() {
    assert_eq!(eval("{{ GetPrivateIP }}").unwrap(), "10.1.2.3");
    assert_eq!(eval("{{GetInterfaceIP \"eth0\"}}").unwrap(), "10.1.2.3");
    assert_eq!(
        eval("{{ GetInterfaceIP \"eth1\" }}").unwrap(),
        "203.0.113.7"
    );
    assert_eq!(
        eval(r#"{{ GetAllInterfaces | include "network" "10.0.0.0/8" | attr "address" }}"#)
            .unwrap(),
        "10.1.2.3"
    );
    assert_eq!(eval("{{ GetPublicIP }}").unwrap(), "203.0.113.7");
    assert_eq!(eval("{{ GetPrivateIPs }}").unwrap(), "10.1.2.3 172.17.0.1");
    assert_eq!(
        eval(r#"{{ GetAllInterfaces | include "name" "^lo$" | include "type" "IPv4" | attr "address" }}"#)
            .unwrap(),
        "127.0.0.1"
    );
    assert_eq!(
        eval(r#"{{ GetAllInterfaces | include "flag" "forwardable" | sort "-address" | limit 2 | join "address" "," }}"#)
            .unwrap(),
        "2001:db8::7,203.0.113.7"
    );
    assert_eq!(eval("bind {{- \" \" -}} x").unwrap(), "bind x");
    assert_eq!(eval("no template").unwrap(), "no template");
    // Loopback is not forwardable: GetInterfaceIP "lo" finds nothing, as in go-sockaddr.
    assert_eq!(eval("{{ GetInterfaceIP \"^lo$\" }}").unwrap(), "");
    assert_eq!(
        eval(r#"{{ GetAllInterfaces | include "network" "10.0.0.0/8" | attr "network" }}"#)
            .unwrap(),
        "10.1.2.0/24"
    );
}

#[test]
fn mistakes_are_named() {
    for (text, needle) in [
        ("{{ GetPrivateIp }}", "unknown function \"GetPrivateIp\""),
        ("{{ GetPrivateIP", "unclosed action"),
        (
            "{{ GetInterfaceIP }}",
            "GetInterfaceIP takes 1 argument(s), not 0",
        ),
        (
            "{{ GetInterfaceIP eth0 }}",
            "argument 1 must be a quoted string",
        ),
        (
            r#"{{ GetAllInterfaces | include "network" "10.0.0.0/33" }}"#,
            "not a CIDR block",
        ),
        (
            r#"{{ GetAllInterfaces | include "colour" "red" }}"#,
            "unknown selector",
        ),
        (
            r#"{{ GetAllInterfaces | attr "mtu" }}"#,
            "unknown attribute",
        ),
        (
            r#"{{ include "type" "IPv4" }}"#,
            "needs a list of addresses",
        ),
        (r#"{{ GetAllInterfaces | GetPrivateIP }}"#, "cannot follow"),
        (
            r#"{{ GetAllInterfaces | limit x }}"#,
            "limit takes a number",
        ),
        ("{{ \"unterminated }}", "unterminated string"),
    ] {
        let error = eval(text).unwrap_err().to_string();
        assert!(error.contains(needle), "{text}: {error}");
    }
}

#[test]
fn private_ips_prefer_the_default_route_and_skip_down_and_loopback() {
    let mut list = machine();
    list.push(IfAddr {
        up: false,
        ..addr("eth2", "192.168.9.9", 24, false)
    });
    let chosen: Vec<String> = private_ips(&list)
        .iter()
        .map(|a| a.addr.to_string())
        .collect();
    assert_eq!(chosen, ["10.1.2.3", "172.17.0.1"]);
    let no_default: Vec<IfAddr> = list
        .into_iter()
        .map(|a| IfAddr {
            default_route: false,
            ..a
        })
        .collect();
    assert_eq!(private_ips(&no_default).len(), 2);
}
