//! Consul writes config entries in HCL 1 style, where an object inside a list or another object
//! may be written as a block (`Match { HTTP { PathPrefix = "/x" } }`). HCL 2 (hcl-rs) only allows
//! that at body level, so [`blocks_to_attributes`] rewrites every label-less block opener
//! `Name {` (at the start of a line, or after `{`, `[` or `,`) into `Name = {`, which means the
//! same thing for a config entry. Strings and comments are left alone.

/// Rewrites `Name {` block openers into `Name = {` attributes.
pub fn blocks_to_attributes(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 32);
    let mut i = 0;
    // Whether an identifier here would start an element (line start, or after `{ [ ,`).
    let mut at_start = true;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
            out.extend(&chars[start..i]);
            at_start = false;
            continue;
        }
        if c == '#' || (c == '/' && chars.get(i + 1) == Some(&'/')) {
            while i < chars.len() && chars[i] != '\n' {
                out.push(chars[i]);
                i += 1;
            }
            continue;
        }
        if at_start && (c.is_alphabetic() || c == '_') {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '-')) {
                i += 1;
            }
            let mut j = i;
            while j < chars.len() && matches!(chars[j], ' ' | '\t') {
                j += 1;
            }
            out.extend(&chars[start..i]);
            if chars.get(j) == Some(&'{') {
                out.push_str(" =");
            }
            at_start = false;
            continue;
        }
        match c {
            '\n' | '{' | '[' | ',' => at_start = true,
            ' ' | '\t' | '\r' => {}
            _ => at_start = false,
        }
        out.push(c);
        i += 1;
    }
    out
}
