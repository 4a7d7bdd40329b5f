//! go-sockaddr templates, the subset Consul's address settings use: `bind_addr = "{{
//! GetPrivateIP }}"`, `{{ GetInterfaceIP "eth0" }}`, `{{ GetAllInterfaces | include "network"
//! "10.0.0.0/8" | attr "address" }}`.
//!
//! A template is text with `{{ … }}` actions (`{{-`/`-}}` trim spaces); an action is a
//! pipeline: a source, then filters, then optionally a terminal, joined by `|`.
//!
//! | kind | functions |
//! | --- | --- |
//! | sources of addresses | `GetAllInterfaces`, `GetDefaultInterfaces`, `GetPrivateInterfaces`, `GetPublicInterfaces` |
//! | sources of text | `GetPrivateIP`, `GetPrivateIPs`, `GetPublicIP`, `GetPublicIPs`, `GetInterfaceIP "re"`, `GetInterfaceIPs "re"` |
//! | filters | `include`/`exclude` by `"name"` (regex), `"network"` (CIDR), `"type"` (`IPv4`, `IPv6`, `IP`), `"flag"` (`up`, `down`, `loopback`, `forwardable`, `private`, `public`, `global unicast`, `link-local unicast`); `sort "k,…"` (`address`, `name`, `type`, `size`, `default`, `private`; `-` reverses); `limit N`; `offset N` |
//! | terminals | `attr "address"` (or `name`, `network`, `size`, `type`) of the first address; `join "address" " "` over all |
//!
//! Semantics follow go-sockaddr: `GetPrivateIP` is the first private (RFC 6890), forwardable
//! IPv4 address of an interface that is up, the interface with the default route first;
//! `GetInterfaceIP` is the first forwardable address of the interfaces whose name matches the
//! regex (IPv4 first, then larger networks). Evaluation is pure over an [`IfAddr`] list, so it
//! is tested without a network; [`system_interfaces`] reads the machine's.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address of one network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub name: String,
    /// The address.
    pub addr: IpAddr,
    /// Network prefix length.
    pub prefix_len: u8,
    /// The interface is up.
    pub up: bool,
    /// The interface holds the default route.
    pub default_route: bool,
}

impl IfAddr {
    fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }

    /// RFC 6890 private-use blocks (10/8, 172.16/12, 192.168/16, 100.64/10 shared, fc00::/7).
    fn is_private(&self) -> bool {
        match self.addr {
            IpAddr::V4(v4) => {
                v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
            }
            IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
        }
    }

    /// Not in a block RFC 6890 marks as not forwardable (loopback, link-local, unspecified,
    /// "this network", multicast).
    fn is_forwardable(&self) -> bool {
        match self.addr {
            IpAddr::V4(v4) => {
                !(v4.is_loopback()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.octets()[0] == 0
                    || v4.is_multicast()
                    || v4.is_broadcast())
            }
            IpAddr::V6(v6) => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (v6.segments()[0] & 0xffc0) == 0xfe80)
            }
        }
    }

    fn is_link_local(&self) -> bool {
        match self.addr {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        }
    }

    fn network(&self) -> (IpAddr, u8) {
        (mask(self.addr, self.prefix_len), self.prefix_len)
    }

    fn attr(&self, name: &str) -> Result<String, TemplateError> {
        Ok(match name {
            "address" => self.addr.to_string(),
            "name" => self.name.clone(),
            "network" => {
                let (net, len) = self.network();
                format!("{net}/{len}")
            }
            "size" => self.prefix_len.to_string(),
            "type" => match self.addr {
                IpAddr::V4(_) => "IPv4".to_owned(),
                IpAddr::V6(_) => "IPv6".to_owned(),
            },
            other => {
                return Err(TemplateError::new(format!(
                    "unknown attribute {other:?} (expected address, name, network, size or type)"
                )));
            }
        })
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// A template that does not parse or evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    message: String,
}

impl TemplateError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Whether `text` holds a template action.
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

/// Evaluates the template `text` over `interfaces`.
pub fn render(text: &str, interfaces: &[IfAddr]) -> Result<String, TemplateError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let mut literal = &rest[..start];
        let mut action = &rest[start + 2..];
        if let Some(trimmed) = action.strip_prefix('-') {
            literal = literal.trim_end();
            action = trimmed;
        }
        out.push_str(literal);
        let end = action
            .find("}}")
            .ok_or_else(|| TemplateError::new("unclosed action: `{{` without `}}`"))?;
        let mut body = &action[..end];
        rest = &action[end + 2..];
        if let Some(trimmed) = body.strip_suffix('-') {
            body = trimmed;
            rest = rest.trim_start();
        }
        out.push_str(&pipeline(body, interfaces)?);
    }
    if rest.contains("}}") {
        return Err(TemplateError::new("`}}` without `{{`"));
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(i64),
    Pipe,
}

fn tokenize(body: &str) -> Result<Vec<Token>, TemplateError> {
    let chars: Vec<char> = body.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '|' => {
                tokens.push(Token::Pipe);
                i += 1;
            }
            '"' => {
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(TemplateError::new("unterminated string")),
                        Some('"') => break,
                        Some('\\') => {
                            let escaped = chars
                                .get(i + 1)
                                .ok_or_else(|| TemplateError::new("unterminated string"))?;
                            text.push(match escaped {
                                'n' => '\n',
                                't' => '\t',
                                other => *other,
                            });
                            i += 2;
                        }
                        Some(other) => {
                            text.push(*other);
                            i += 1;
                        }
                    }
                }
                i += 1;
                tokens.push(Token::Text(text));
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '`')
                    .ok_or_else(|| TemplateError::new("unterminated raw string"))?;
                tokens.push(Token::Text(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(char::is_ascii_digit) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let number = text
                    .parse()
                    .map_err(|_| TemplateError::new(format!("{text:?} is not a number")))?;
                tokens.push(Token::Number(number));
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
            other => {
                return Err(TemplateError::new(format!(
                    "unexpected {other:?} in a template action"
                )));
            }
        }
    }
    Ok(tokens)
}

/// What flows through a pipeline.
enum Value {
    Addrs(Vec<IfAddr>),
    Text(String),
}

fn pipeline(body: &str, interfaces: &[IfAddr]) -> Result<String, TemplateError> {
    let tokens = tokenize(body)?;
    let stages: Vec<&[Token]> = tokens.split(|t| *t == Token::Pipe).collect();
    let mut value: Option<Value> = None;
    for stage in stages {
        if let ([Token::Text(text)], None) = (stage, &value) {
            value = Some(Value::Text(text.clone()));
            continue;
        }
        let Some((Token::Word(name), args)) = stage.split_first() else {
            return Err(TemplateError::new(
                "each stage of a pipeline starts with a function name",
            ));
        };
        value = Some(call(name, args, value, interfaces)?);
    }
    match value {
        Some(Value::Text(text)) => Ok(text),
        Some(Value::Addrs(addrs)) => Ok(addrs
            .iter()
            .map(|a| a.addr.to_string())
            .collect::<Vec<_>>()
            .join(" ")),
        None => Err(TemplateError::new("empty template action")),
    }
}

fn text_arg(args: &[Token], index: usize, function: &str) -> Result<String, TemplateError> {
    match args.get(index) {
        Some(Token::Text(text)) => Ok(text.clone()),
        _ => Err(TemplateError::new(format!(
            "{function}: argument {} must be a quoted string",
            index + 1
        ))),
    }
}

fn arity(args: &[Token], expected: usize, function: &str) -> Result<(), TemplateError> {
    if args.len() == expected {
        Ok(())
    } else {
        Err(TemplateError::new(format!(
            "{function} takes {expected} argument(s), not {}",
            args.len()
        )))
    }
}

fn call(
    name: &str,
    args: &[Token],
    input: Option<Value>,
    interfaces: &[IfAddr],
) -> Result<Value, TemplateError> {
    let addrs = |input: Option<Value>| match input {
        Some(Value::Addrs(addrs)) => Ok(addrs),
        _ => Err(TemplateError::new(format!(
            "{name} needs a list of addresses before it (e.g. GetAllInterfaces | {name} …)"
        ))),
    };
    let source = |input: &Option<Value>| {
        if input.is_some() {
            Err(TemplateError::new(format!(
                "{name} starts a pipeline; it cannot follow `|`"
            )))
        } else {
            Ok(())
        }
    };
    let first_address =
        |list: Vec<IfAddr>| list.first().map(|a| a.addr.to_string()).unwrap_or_default();
    let all_addresses = |list: Vec<IfAddr>| {
        list.iter()
            .map(|a| a.addr.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    match name {
        "GetAllInterfaces"
        | "GetDefaultInterfaces"
        | "GetPrivateInterfaces"
        | "GetPublicInterfaces" => {
            source(&input)?;
            arity(args, 0, name)?;
            Ok(Value::Addrs(match name {
                "GetAllInterfaces" => interfaces.to_vec(),
                "GetDefaultInterfaces" => default_interfaces(interfaces),
                "GetPrivateInterfaces" => private_interfaces(interfaces),
                _ => public_interfaces(interfaces),
            }))
        }
        "GetPrivateIP" | "GetPrivateIPs" | "GetPublicIP" | "GetPublicIPs" => {
            source(&input)?;
            arity(args, 0, name)?;
            let list = if name.starts_with("GetPrivate") {
                private_ips(interfaces)
            } else {
                public_interfaces(interfaces)
                    .into_iter()
                    .filter(|a| a.addr.is_ipv4())
                    .collect()
            };
            Ok(Value::Text(if name.ends_with('s') {
                all_addresses(list)
            } else {
                first_address(list)
            }))
        }
        "GetInterfaceIP" | "GetInterfaceIPs" => {
            source(&input)?;
            arity(args, 1, name)?;
            let list = interface_ips(interfaces, &text_arg(args, 0, name)?)?;
            Ok(Value::Text(if name.ends_with('s') {
                all_addresses(list)
            } else {
                first_address(list)
            }))
        }
        "include" | "exclude" => {
            arity(args, 2, name)?;
            let selector = text_arg(args, 0, name)?;
            let param = text_arg(args, 1, name)?;
            let matcher = Matcher::new(&selector, &param)?;
            let keep = name == "include";
            Ok(Value::Addrs(
                addrs(input)?
                    .into_iter()
                    .filter(|a| matcher.matches(a) == keep)
                    .collect(),
            ))
        }
        "sort" => {
            arity(args, 1, name)?;
            let mut list = addrs(input)?;
            sort_by(&mut list, &text_arg(args, 0, name)?)?;
            Ok(Value::Addrs(list))
        }
        "limit" | "offset" => {
            arity(args, 1, name)?;
            let Some(Token::Number(n)) = args.first() else {
                return Err(TemplateError::new(format!("{name} takes a number")));
            };
            let n = usize::try_from(*n)
                .map_err(|_| TemplateError::new(format!("{name} takes a number ≥ 0")))?;
            let list = addrs(input)?;
            Ok(Value::Addrs(if name == "limit" {
                list.into_iter().take(n).collect()
            } else {
                list.into_iter().skip(n).collect()
            }))
        }
        "attr" => {
            arity(args, 1, name)?;
            let attribute = text_arg(args, 0, name)?;
            match addrs(input)?.first() {
                Some(first) => first.attr(&attribute).map(Value::Text),
                None => Ok(Value::Text(String::new())),
            }
        }
        "join" => {
            arity(args, 2, name)?;
            let attribute = text_arg(args, 0, name)?;
            let separator = text_arg(args, 1, name)?;
            let parts = addrs(input)?
                .iter()
                .map(|a| a.attr(&attribute))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::Text(parts.join(&separator)))
        }
        other => Err(TemplateError::new(format!(
            "unknown function {other:?} (supported: GetAllInterfaces, GetDefaultInterfaces, GetPrivateInterfaces, GetPublicInterfaces, GetPrivateIP(s), GetPublicIP(s), GetInterfaceIP(s), include, exclude, sort, limit, offset, attr, join)"
        ))),
    }
}

enum Matcher {
    Name(regex::Regex),
    Network(IpAddr, u8),
    Type(Option<bool>),
    Flag(String),
}

impl Matcher {
    fn new(selector: &str, param: &str) -> Result<Self, TemplateError> {
        match selector {
            "name" => regex::Regex::new(param).map(Matcher::Name).map_err(|e| {
                TemplateError::new(format!("name {param:?} is not a valid regex: {e}"))
            }),
            "network" => {
                let (addr, len) = param.split_once('/').unwrap_or((param, ""));
                let addr: IpAddr = addr.parse().map_err(|_| {
                    TemplateError::new(format!("network {param:?} is not a CIDR block"))
                })?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let len = if len.is_empty() {
                    max
                } else {
                    len.parse::<u8>()
                        .ok()
                        .filter(|l| *l <= max)
                        .ok_or_else(|| {
                            TemplateError::new(format!("network {param:?} is not a CIDR block"))
                        })?
                };
                Ok(Matcher::Network(mask(addr, len), len))
            }
            "type" => match param.to_ascii_lowercase().as_str() {
                "ipv4" => Ok(Matcher::Type(Some(true))),
                "ipv6" => Ok(Matcher::Type(Some(false))),
                "ip" => Ok(Matcher::Type(None)),
                _ => Err(TemplateError::new(format!(
                    "type {param:?}: expected IPv4, IPv6 or IP"
                ))),
            },
            "flag" | "flags" => {
                const FLAGS: [&str; 8] = [
                    "up",
                    "down",
                    "loopback",
                    "forwardable",
                    "private",
                    "public",
                    "global unicast",
                    "link-local unicast",
                ];
                if FLAGS.contains(&param) {
                    Ok(Matcher::Flag(param.to_owned()))
                } else {
                    Err(TemplateError::new(format!(
                        "flag {param:?}: expected one of {}",
                        FLAGS.join(", ")
                    )))
                }
            }
            other => Err(TemplateError::new(format!(
                "unknown selector {other:?} (expected name, network, type or flag)"
            ))),
        }
    }

    fn matches(&self, a: &IfAddr) -> bool {
        match self {
            Matcher::Name(re) => re.is_match(&a.name),
            Matcher::Network(net, len) => {
                a.addr.is_ipv4() == net.is_ipv4() && mask(a.addr, *len) == *net
            }
            Matcher::Type(None) => true,
            Matcher::Type(Some(v4)) => a.addr.is_ipv4() == *v4,
            Matcher::Flag(flag) => match flag.as_str() {
                "up" => a.up,
                "down" => !a.up,
                "loopback" => a.is_loopback(),
                "forwardable" => a.is_forwardable(),
                "private" => a.is_private(),
                "public" => a.is_forwardable() && !a.is_private(),
                "global unicast" => a.is_forwardable(),
                _ => a.is_link_local(),
            },
        }
    }
}

fn sort_by(list: &mut [IfAddr], keys: &str) -> Result<(), TemplateError> {
    let mut order: Vec<(String, bool)> = Vec::new();
    for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let (key, reverse) = match key.strip_prefix('-') {
            Some(key) => (key, true),
            None => (key.strip_prefix('+').unwrap_or(key), false),
        };
        if !["address", "name", "type", "size", "default", "private"].contains(&key) {
            return Err(TemplateError::new(format!(
                "sort key {key:?}: expected address, name, type, size, default or private"
            )));
        }
        order.push((key.to_owned(), reverse));
    }
    list.sort_by(|a, b| {
        for (key, reverse) in &order {
            let ordering = compare(a, b, key);
            let ordering = if *reverse {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        Ordering::Equal
    });
    Ok(())
}

fn compare(a: &IfAddr, b: &IfAddr, key: &str) -> Ordering {
    match key {
        "address" => a.addr.cmp(&b.addr),
        "name" => a.name.cmp(&b.name),
        // IPv4 first.
        "type" => b.addr.is_ipv4().cmp(&a.addr.is_ipv4()),
        // Larger networks (shorter prefixes) first.
        "size" => a.prefix_len.cmp(&b.prefix_len),
        "default" => b.default_route.cmp(&a.default_route),
        "private" => b.is_private().cmp(&a.is_private()),
        _ => Ordering::Equal,
    }
}

fn default_interfaces(interfaces: &[IfAddr]) -> Vec<IfAddr> {
    interfaces
        .iter()
        .filter(|a| a.default_route)
        .cloned()
        .collect()
}

/// Up, forwardable, private addresses; the default-route interface first, then IPv4 first.
pub fn private_interfaces(interfaces: &[IfAddr]) -> Vec<IfAddr> {
    let mut list: Vec<IfAddr> = interfaces
        .iter()
        .filter(|a| a.up && a.is_forwardable() && a.is_private())
        .cloned()
        .collect();
    list.sort_by(|a, b| compare(a, b, "default").then(compare(a, b, "type")));
    list
}

/// The private IPv4 addresses `GetPrivateIP(s)` chooses from, best first (Consul's default
/// bind address is the first; it refuses to choose between several).
pub fn private_ips(interfaces: &[IfAddr]) -> Vec<IfAddr> {
    private_interfaces(interfaces)
        .into_iter()
        .filter(|a| a.addr.is_ipv4())
        .collect()
}

fn public_interfaces(interfaces: &[IfAddr]) -> Vec<IfAddr> {
    let mut list: Vec<IfAddr> = interfaces
        .iter()
        .filter(|a| a.up && a.is_forwardable() && !a.is_private())
        .cloned()
        .collect();
    list.sort_by(|a, b| compare(a, b, "default").then(compare(a, b, "type")));
    list
}

fn interface_ips(interfaces: &[IfAddr], name: &str) -> Result<Vec<IfAddr>, TemplateError> {
    let by_name = Matcher::new("name", name)?;
    let mut list: Vec<IfAddr> = interfaces
        .iter()
        .filter(|a| by_name.matches(a) && a.is_forwardable())
        .cloned()
        .collect();
    list.sort_by(|a, b| compare(a, b, "type").then(compare(a, b, "size")));
    Ok(list)
}

/// The machine's interface addresses (interfaces listed by the OS are taken as up; the default
/// route's interfaces from `/proc/net/route` and `/proc/net/ipv6_route`).
pub fn system_interfaces() -> std::io::Result<Vec<IfAddr>> {
    let defaults = default_route_interfaces();
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|iface| {
            let prefix_len = match &iface.addr {
                if_addrs::IfAddr::V4(v4) => v4.prefixlen,
                if_addrs::IfAddr::V6(v6) => v6.prefixlen,
            };
            IfAddr {
                default_route: defaults.contains(&iface.name),
                up: true,
                addr: iface.ip(),
                prefix_len,
                name: iface.name,
            }
        })
        .collect())
}

fn default_route_interfaces() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000") {
                names.extend(fields.first().map(|s| (*s).to_owned()));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() == Some(&"00000000000000000000000000000000")
                && fields.get(1) == Some(&"00")
                && let Some(name) = fields.get(9)
                && *name != "lo"
            {
                names.push((*name).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests;
