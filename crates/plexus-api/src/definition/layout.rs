//! Consul's one-line HCL forms, laid out the way HCL 2 (and so hcl-rs) requires.
//!
//! Consul reads its files with HCL 1, where `check { tcp = "x"  interval = "1s" }` and
//! `connect { sidecar_service {} }` are fine on one line; HCL 2 allows at most one attribute and no
//! nested block in a one-line block. Definitions copied from Consul's documentation use the first
//! form, so before parsing, [`relayout`] breaks such lines: after a block's `{`, before a block's
//! `}`, and before an attribute or block that follows a value on the same line. Strings, comments
//! and heredocs are copied untouched; object and list literals are left as written.
//!
//! Only newlines are inserted, so the returned line map turns a parser's line number back into the
//! line the user wrote.

/// What an open bracket began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// A block body (`name {`): one item per line.
    Block,
    /// An object literal, list or parenthesised expression: left alone.
    Expr,
}

/// The last significant token, as far as layout cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Start of a line, or nothing yet.
    LineStart,
    /// An identifier or a string: could be a block's name or label, or the end of a value.
    Word,
    /// A number, `]`, `)` or `}`: ends a value.
    ValueEnd,
    /// An operator, `=`, `,`, `(`, `[`, …: a value continues.
    Other,
}

/// Returns the text with one-line blocks broken up, and for each line of the result (index 0 is
/// line 1) the line of `text` it came from.
pub(crate) fn relayout(text: &str) -> (String, Vec<usize>) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut lines = vec![1usize];
    let mut line = 1usize;
    let mut stack: Vec<Open> = Vec::new();
    let mut last = Last::LineStart;
    let mut i = 0;

    let break_line = |out: &mut String, lines: &mut Vec<usize>, line: usize| {
        out.push('\n');
        lines.push(line);
    };

    while i < chars.len() {
        let c = chars[i];
        let in_block = stack.last().is_none_or(|o| *o == Open::Block);
        match c {
            '\n' => {
                out.push('\n');
                line += 1;
                lines.push(line);
                last = Last::LineStart;
                i += 1;
            }
            ' ' | '\t' | '\r' => {
                out.push(c);
                i += 1;
            }
            '"' => {
                let end = string_end(&chars, i);
                for &ch in &chars[i..end] {
                    out.push(ch);
                    if ch == '\n' {
                        line += 1;
                        lines.push(line);
                    }
                }
                last = Last::Word;
                i = end;
            }
            '#' => i = copy_to_line_end(&chars, i, &mut out),
            '/' if chars.get(i + 1) == Some(&'/') => i = copy_to_line_end(&chars, i, &mut out),
            '/' if chars.get(i + 1) == Some(&'*') => {
                let mut j = i + 2;
                while j < chars.len() && !(chars[j] == '*' && chars.get(j + 1) == Some(&'/')) {
                    j += 1;
                }
                let end = (j + 2).min(chars.len());
                for &ch in &chars[i..end] {
                    out.push(ch);
                    if ch == '\n' {
                        line += 1;
                        lines.push(line);
                    }
                }
                i = end;
            }
            '<' if chars.get(i + 1) == Some(&'<') && heredoc_marker(&chars, i).is_some() => {
                let end = heredoc_end(&chars, i);
                for &ch in &chars[i..end] {
                    out.push(ch);
                    if ch == '\n' {
                        line += 1;
                        lines.push(line);
                    }
                }
                last = Last::ValueEnd;
                i = end;
            }
            '{' => {
                let block = in_block && last == Last::Word;
                out.push('{');
                i += 1;
                stack.push(if block { Open::Block } else { Open::Expr });
                last = Last::Other;
                if block && !rest_of_line_is_blank(&chars, i) {
                    break_line(&mut out, &mut lines, line);
                    last = Last::LineStart;
                }
            }
            '}' => {
                let closes_block = stack.pop() == Some(Open::Block);
                if closes_block && last != Last::LineStart {
                    break_line(&mut out, &mut lines, line);
                }
                out.push('}');
                last = Last::ValueEnd;
                i += 1;
            }
            '[' | '(' => {
                stack.push(Open::Expr);
                out.push(c);
                last = Last::Other;
                i += 1;
            }
            ']' | ')' => {
                stack.pop();
                out.push(c);
                last = Last::ValueEnd;
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                let starts_item = matches!(
                    next_significant(&chars, i),
                    Some(('=', false)) | Some(('{', _))
                );
                if in_block && starts_item && matches!(last, Last::Word | Last::ValueEnd) {
                    break_line(&mut out, &mut lines, line);
                }
                out.extend(&chars[start..i]);
                last = Last::Word;
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    out.push(chars[i]);
                    i += 1;
                }
                last = Last::ValueEnd;
            }
            _ => {
                out.push(c);
                last = Last::Other;
                i += 1;
            }
        }
    }
    (out, lines)
}

/// The index just past the string starting at `i` (a `"`), templates included.
fn string_end(chars: &[char], i: usize) -> usize {
    let mut j = i + 1;
    let mut template_depth = 0usize;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 1,
            '$' | '%' if chars.get(j + 1) == Some(&'{') => {
                template_depth += 1;
                j += 1;
            }
            '{' if template_depth > 0 => template_depth += 1,
            '}' if template_depth > 0 => template_depth -= 1,
            '"' if template_depth == 0 => return j + 1,
            '\n' if template_depth == 0 => return j,
            _ => {}
        }
        j += 1;
    }
    chars.len()
}

/// Copies a line comment (up to, not including, the newline).
fn copy_to_line_end(chars: &[char], mut i: usize, out: &mut String) -> usize {
    while i < chars.len() && chars[i] != '\n' {
        out.push(chars[i]);
        i += 1;
    }
    i
}

/// The marker of a heredoc starting at `i` (`<<EOF` or `<<-EOF`).
fn heredoc_marker(chars: &[char], i: usize) -> Option<String> {
    let mut j = i + 2;
    if chars.get(j) == Some(&'-') {
        j += 1;
    }
    let marker: String = chars[j..]
        .iter()
        .take_while(|c| c.is_alphanumeric() || **c == '_')
        .collect();
    (!marker.is_empty()).then_some(marker)
}

/// The index of the newline ending the heredoc's closing marker line (or the end).
fn heredoc_end(chars: &[char], i: usize) -> usize {
    let Some(marker) = heredoc_marker(chars, i) else {
        return i + 2;
    };
    let mut j = i;
    loop {
        while j < chars.len() && chars[j] != '\n' {
            j += 1;
        }
        if j >= chars.len() {
            return j;
        }
        j += 1;
        let line: String = chars[j..].iter().take_while(|c| **c != '\n').collect();
        if line.trim() == marker {
            return j + line.chars().count();
        }
    }
}

/// The next non-blank character on the same line, and whether the one after it repeats it (`==`).
fn next_significant(chars: &[char], mut i: usize) -> Option<(char, bool)> {
    while matches!(chars.get(i), Some(' ' | '\t')) {
        i += 1;
    }
    let c = *chars.get(i)?;
    Some((c, chars.get(i + 1) == Some(&c)))
}

/// True when only blanks or a comment follow on this line.
fn rest_of_line_is_blank(chars: &[char], mut i: usize) -> bool {
    while matches!(chars.get(i), Some(' ' | '\t' | '\r')) {
        i += 1;
    }
    match chars.get(i) {
        None | Some('\n' | '#') => true,
        Some('/') => matches!(chars.get(i + 1), Some('/' | '*')),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::relayout;

    fn parses(text: &str) -> hcl::Body {
        let (laid, _) = relayout(text);
        hcl::parse(&laid).unwrap_or_else(|e| panic!("{e}\n--- laid out:\n{laid}"))
    }

    #[test]
    fn consul_one_line_blocks_parse() {
        let text = r#"services {
  name = "client"
  port = 8080
  connect { sidecar_service { proxy { upstreams { destination_name = "echo"  local_bind_port = 9191 } } } }
}
services {
  name = "echo"
  port = 9090
  check { tcp = "127.0.0.1:9090"  interval = "1s"  timeout = "500ms" }
  connect { sidecar_service {} }
}
"#;
        let body = parses(text);
        assert_eq!(body.blocks().count(), 2);
    }

    #[test]
    fn already_laid_out_text_is_unchanged() {
        let text = "service {\n  name = \"web\"\n  meta = { a = \"1\", b = \"2\" }\n  tags = [\"x\", \"y\"]\n}\n";
        assert_eq!(relayout(text).0, text);
        parses(text);
    }

    #[test]
    fn strings_comments_objects_and_heredocs_are_left_alone() {
        let text = "service { name = \"a { b = 1 }\"  # c { d = 2 }\n  meta = { x = \"1\", y = \"2\" }  port = 1\n  notes = <<EOF\nkeep { this = 1 }  as is\nEOF\n}\n";
        let (laid, _) = relayout(text);
        assert!(laid.contains("\"a { b = 1 }\""), "{laid}");
        assert!(laid.contains("# c { d = 2 }"), "{laid}");
        assert!(laid.contains("{ x = \"1\", y = \"2\" }"), "{laid}");
        assert!(laid.contains("keep { this = 1 }  as is\nEOF"), "{laid}");
        parses(text);
    }

    #[test]
    fn line_map_points_at_the_written_line() {
        let text = "service {\n  check { tcp = \"x\"  interval = \"1s\" }\n  port = 1\n}\n";
        let (laid, lines) = relayout(text);
        for (n, l) in laid.lines().enumerate() {
            let original = lines[n];
            let words: Vec<&str> = l.split_whitespace().collect();
            if let Some(first) = words.first() {
                let src = text.lines().nth(original - 1).unwrap();
                assert!(
                    src.contains(first),
                    "line {} {l:?} maps to {original} {src:?}",
                    n + 1
                );
            }
        }
        assert_eq!(lines.len(), laid.split('\n').count());
    }

    #[test]
    fn comparisons_are_not_split() {
        let (laid, _) = relayout("a = x == y\n");
        assert_eq!(laid, "a = x == y\n");
    }
}
