//! Best-effort: on which line of an HCL or JSON text is the key at a field path?
//!
//! The decoders do not keep positions past parsing (hcl-rs not at all, serde_json only for the
//! token it failed on), so errors found later (validation, hcl-rs shape errors) are placed by
//! scanning the text for keys. The scanner knows strings, comments, heredocs and nesting, nothing
//! more; when a path cannot be followed to the end the line of its deepest key found is returned.

/// One step of a field path: `services`, `[1]`, `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// An object key or block name.
    Key(String),
    /// A position in a list (or among repeated blocks).
    Index(usize),
}

/// Splits `services[1].checks[0].tcp` into segments.
pub(crate) fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key.to_owned()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Seg::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// Renders segments back as `services[1].port`.
pub(crate) fn render_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[derive(Debug)]
enum Tok {
    Key {
        name: String,
        line: usize,
        depth: usize,
    },
    Open {
        line: usize,
        depth: usize,
        list: bool,
    },
    Close {
        depth: usize,
    },
}

/// The 1-based line of the key `path` leads to, or of the deepest key on the way.
pub(crate) fn line_of(text: &str, path: &[Seg]) -> Option<usize> {
    let toks = tokenize(text);
    let mut range = 0..toks.len();
    let mut line = None;
    let mut i = 0;
    while let Some(seg) = path.get(i) {
        let Seg::Key(key) = seg else { break };
        let found = keys_at_top(&toks, range.clone(), key);
        let Some(&first) = found.first() else { break };
        let (t, consumed) = match path.get(i + 1) {
            // Repeated HCL blocks: the n-th occurrence of the key.
            Some(Seg::Index(n)) if found.len() > 1 => match found.get(*n) {
                Some(&t) => (t, 2),
                None => break,
            },
            _ => (first, 1),
        };
        if let Tok::Key { line: l, .. } = toks[t] {
            line = Some(l);
        }
        range = value_range(&toks, t);
        i += consumed;
        if consumed == 1
            && let Some(Seg::Index(n)) = path.get(i)
        {
            // A single key holding a list (`"services": [...]`), or a block written once.
            match list_element(&toks, range.clone(), *n) {
                Some((elem, l)) => {
                    range = elem;
                    line = Some(l);
                }
                None if *n == 0 => {}
                None => break,
            }
            i += 1;
        }
    }
    line
}

/// Same key modulo case and underscores: `local_bind_port` ~ `LocalBindPort`.
fn same_key(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    norm(a) == norm(b)
}

/// Tokens of keys named `key` at the shallowest key depth within `range`.
fn keys_at_top(toks: &[Tok], range: std::ops::Range<usize>, key: &str) -> Vec<usize> {
    let depth_of = |t: &Tok| match t {
        Tok::Key { depth, .. } => Some(*depth),
        _ => None,
    };
    let Some(top) = toks[range.clone()].iter().filter_map(depth_of).min() else {
        return Vec::new();
    };
    range
        .filter(|&j| matches!(&toks[j], Tok::Key { name, depth, .. } if *depth == top && same_key(name, key)))
        .collect()
}

/// The tokens after key `t` up to its next sibling or the end of its container.
fn value_range(toks: &[Tok], t: usize) -> std::ops::Range<usize> {
    let Tok::Key { depth: d, .. } = toks[t] else {
        return t..t;
    };
    let end = toks[t + 1..]
        .iter()
        .position(|tok| match tok {
            Tok::Key { depth, .. } => *depth <= d,
            Tok::Close { depth } => *depth < d,
            Tok::Open { .. } => false,
        })
        .map_or(toks.len(), |p| t + 1 + p);
    t + 1..end
}

/// The `n`-th element of a list value starting at `range.start`, and the line it opens on.
fn list_element(
    toks: &[Tok],
    range: std::ops::Range<usize>,
    n: usize,
) -> Option<(std::ops::Range<usize>, usize)> {
    let Some(Tok::Open {
        depth: d,
        list: true,
        ..
    }) = toks.get(range.start)
    else {
        return None;
    };
    let inner = d + 1;
    let start = (range.start + 1..range.end)
        .filter(|&j| matches!(toks[j], Tok::Open { depth, .. } if depth == inner))
        .nth(n)?;
    let Tok::Open { line, .. } = toks[start] else {
        return None;
    };
    let end = (start + 1..range.end)
        .find(|&j| matches!(toks[j], Tok::Close { depth } if depth == inner))
        .map_or(range.end, |j| j + 1);
    Some((start..end, line))
}

fn tokenize(text: &str) -> Vec<Tok> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let (mut i, mut line, mut depth) = (0, 1, 0usize);
    // After a string or identifier: is it followed by `=`/`:`/`{` on the same line (a key)?
    let is_key_at = |mut j: usize| {
        while j < chars.len() && (chars[j] == ' ' || chars[j] == '\t') {
            j += 1;
        }
        match chars.get(j) {
            Some('=') => chars.get(j + 1) != Some(&'='),
            Some(':' | '{') => true,
            _ => false,
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '"' => {
                let start_line = line;
                let mut s = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if let Some(&ch) = chars.get(i) {
                        if ch == '\n' {
                            line += 1;
                        }
                        s.push(ch);
                    }
                    i += 1;
                }
                i += 1;
                if is_key_at(i) {
                    toks.push(Tok::Key {
                        name: s,
                        line: start_line,
                        depth,
                    });
                }
            }
            '#' => i = skip_line(&chars, i),
            '/' if chars.get(i + 1) == Some(&'/') => i = skip_line(&chars, i),
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
            }
            '<' if chars.get(i + 1) == Some(&'<') => {
                // Heredoc: `<<EOF` / `<<-EOF` … a line holding only `EOF`.
                let mut j = i + 2;
                if chars.get(j) == Some(&'-') {
                    j += 1;
                }
                let marker: String = chars[j..]
                    .iter()
                    .take_while(|ch| ch.is_alphanumeric() || **ch == '_')
                    .collect();
                i = j + marker.chars().count();
                if !marker.is_empty() {
                    loop {
                        i = skip_line(&chars, i);
                        if i >= chars.len() {
                            break;
                        }
                        line += 1;
                        i += 1;
                        let rest: String =
                            chars[i..].iter().take_while(|ch| **ch != '\n').collect();
                        if rest.trim() == marker {
                            i += rest.chars().count();
                            break;
                        }
                    }
                }
            }
            '{' | '[' => {
                toks.push(Tok::Open {
                    line,
                    depth,
                    list: c == '[',
                });
                depth += 1;
                i += 1;
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                toks.push(Tok::Close { depth });
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                let labelled = !is_key_at(i) && is_labelled_block(&chars, i);
                if labelled || is_key_at(i) {
                    toks.push(Tok::Key {
                        name: chars[start..i].iter().collect(),
                        line,
                        depth,
                    });
                }
                if labelled {
                    // The labels are not keys: the block's body belongs to this one.
                    while i < chars.len() && chars[i] != '{' {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    toks
}

/// After an identifier: labels (`"web"`, `web`) then `{` on the same line, as in `service "web" {`.
fn is_labelled_block(chars: &[char], mut i: usize) -> bool {
    let mut labels = 0;
    loop {
        while matches!(chars.get(i), Some(' ' | '\t')) {
            i += 1;
        }
        match chars.get(i) {
            Some('{') => return labels > 0,
            Some('"') => {
                i += 1;
                while i < chars.len() && chars[i] != '"' && chars[i] != '\n' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                if chars.get(i) != Some(&'"') {
                    return false;
                }
                i += 1;
            }
            Some(c) if c.is_alphabetic() || *c == '_' => {
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
            }
            _ => return false,
        }
        labels += 1;
    }
}

/// The index of the newline ending the line at `i` (or the end).
fn skip_line(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i] != '\n' {
        i += 1;
    }
    i
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HCL: &str = r#"# two services
services {
  name = "client"
  port = 8080
  connect {
    sidecar_service {
      proxy {
        upstreams {
          destination_name = "echo"
          local_bind_port  = 9191
        }
        upstreams {
          destination_name = "db" // a comment { with a brace
          local_bind_port  = 5432
        }
      }
    }
  }
}
services {
  name = "echo"
  port = 9090
  check {
    tcp      = "127.0.0.1:9090"
    interval = "1s"
  }
}
"#;

    const JSON: &str = r#"{
  "services": [
    {
      "Name": "client",
      "connect": {"sidecar_service": {"proxy": {"upstreams": [
        {"destination_name": "echo", "local_bind_port": 9191},
        {"destination_name": "db",
         "local_bind_port": 5432}
      ]}}}
    },
    {
      "name": "echo",
      "port": 9090
    }
  ]
}"#;

    fn line(text: &str, path: &str) -> Option<usize> {
        line_of(text, &parse_path(path))
    }

    #[test]
    fn paths_round_trip() {
        for p in ["services[1].port", "service.checks[0].tcp", "a.b[2][3].c"] {
            assert_eq!(render_path(&parse_path(p)), p);
        }
    }

    #[test]
    fn finds_keys_in_hcl() {
        assert_eq!(line(HCL, "services[0].port"), Some(4));
        assert_eq!(line(HCL, "services[1].port"), Some(22));
        assert_eq!(line(HCL, "services[1].check.interval"), Some(25));
        assert_eq!(
            line(
                HCL,
                "services[0].connect.sidecar_service.proxy.upstreams[1].local_bind_port"
            ),
            Some(14)
        );
        // Missing key: the deepest found.
        assert_eq!(line(HCL, "services[1].check.timeout"), Some(23));
        assert_eq!(
            line(HCL, "services[0].connect.sidecar_service.port"),
            Some(6)
        );
        assert_eq!(line(HCL, "nothing"), None);
    }

    #[test]
    fn finds_keys_in_json_case_insensitively() {
        assert_eq!(line(JSON, "services[0].name"), Some(4));
        assert_eq!(line(JSON, "services[1].port"), Some(13));
        assert_eq!(
            line(
                JSON,
                "services[0].connect.sidecar_service.proxy.upstreams[1].local_bind_port"
            ),
            Some(8)
        );
        assert_eq!(
            line(
                JSON,
                "services[0].connect.sidecar_service.proxy.upstreams[0].local_bind_port"
            ),
            Some(6)
        );
    }

    #[test]
    fn single_block_with_index_zero() {
        let text = "service {\n  name = \"web\"\n  checks {\n    ttl = \"1s\"\n  }\n}\n";
        assert_eq!(line(text, "service.checks[0].ttl"), Some(4));
        assert_eq!(line(text, "service.checks[1].ttl"), Some(3));
    }

    #[test]
    fn heredocs_and_strings_are_skipped() {
        let text = "services {\n  name = <<EOF\nport = 1 {\nEOF\n  meta = { \"a\" = \"}\" }\n  port = 80\n}\n";
        assert_eq!(line(text, "services[0].port"), Some(6));
    }
}
