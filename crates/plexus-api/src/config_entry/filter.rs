//! Subset filter expressions: the part of Consul's filter language subsets use.
//!
//! Grammar (clauses joined by `and`; values quoted or bare words):
//! `Service.Meta.<key> == "<v>"`, `Service.Meta.<key> != "<v>"`, `"<tag>" in Service.Tags`,
//! `"<tag>" not in Service.Tags`, `Service.Tags contains "<tag>"`. An empty expression matches
//! every instance.

use super::chain::FilterClause;

/// Parses a filter expression into clauses, or says what is wrong.
pub fn parse(expr: &str) -> Result<Vec<FilterClause>, String> {
    let tokens = tokenize(expr)?;
    let mut clauses = Vec::new();
    for (i, clause) in tokens.split(|t| t.is_and()).enumerate() {
        if clause.is_empty() {
            if tokens.is_empty() {
                break;
            }
            return Err(format!("clause {} is empty (dangling \"and\")", i + 1));
        }
        clauses.push(parse_clause(clause)?);
    }
    Ok(clauses)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(&'static str),
}

impl Token {
    fn is_and(&self) -> bool {
        matches!(self, Token::Word(w) if w == "and")
    }
    fn text(&self) -> &str {
        match self {
            Token::Word(w) | Token::Quoted(w) => w,
            Token::Op(o) => o,
        }
    }
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '`' {
            let end = chars[i + 1..]
                .iter()
                .position(|d| *d == c)
                .ok_or_else(|| "unterminated string".to_owned())?;
            out.push(Token::Quoted(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if c == '=' || c == '!' {
            if chars.get(i + 1) != Some(&'=') {
                return Err(format!("unexpected {c:?} (expected == or !=)"));
            }
            out.push(Token::Op(if c == '=' { "==" } else { "!=" }));
            i += 2;
        } else if c.is_alphanumeric() || "._-/:".contains(c) {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "._-/:".contains(chars[i])) {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

fn value(t: &Token) -> Option<String> {
    match t {
        Token::Quoted(s) | Token::Word(s) => Some(s.clone()),
        Token::Op(_) => None,
    }
}

fn parse_clause(t: &[Token]) -> Result<FilterClause, String> {
    let words: Vec<&str> = t.iter().map(Token::text).collect();
    let shown = words.join(" ");
    let meta_key = |w: &Token| match w {
        Token::Word(w) => w
            .strip_prefix("Service.Meta.")
            .filter(|k| !k.is_empty())
            .map(str::to_owned),
        _ => None,
    };
    match t {
        [lhs, Token::Op(op), rhs] => {
            let key = meta_key(lhs).ok_or_else(|| {
                format!("{shown:?}: the left side of {op} must be Service.Meta.<key>")
            })?;
            let value = value(rhs).ok_or_else(|| format!("{shown:?}: missing value"))?;
            Ok(if *op == "==" {
                FilterClause::MetaEquals { key, value }
            } else {
                FilterClause::MetaNotEquals { key, value }
            })
        }
        [tag, Token::Word(kw), Token::Word(field)] if kw == "in" && field == "Service.Tags" => {
            Ok(FilterClause::HasTag {
                tag: value(tag).unwrap_or_default(),
            })
        }
        [tag, Token::Word(not), Token::Word(kw), Token::Word(field)]
            if not == "not" && kw == "in" && field == "Service.Tags" =>
        {
            Ok(FilterClause::LacksTag {
                tag: value(tag).unwrap_or_default(),
            })
        }
        [Token::Word(field), Token::Word(kw), tag]
            if kw == "contains" && field == "Service.Tags" =>
        {
            Ok(FilterClause::HasTag {
                tag: value(tag).unwrap_or_default(),
            })
        }
        _ => Err(format!(
            "unsupported clause {shown:?} (expected Service.Meta.<key> == \"v\", Service.Meta.<key> != \"v\", \"tag\" in Service.Tags, \"tag\" not in Service.Tags)"
        )),
    }
}
