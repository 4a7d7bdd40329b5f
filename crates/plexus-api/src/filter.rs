//! Consul's filter expression language (`?filter=`) over the JSON rows an endpoint answers with.
//!
//! ```text
//! expr     := or
//! or       := and ("or" and)*
//! and      := unary ("and" unary)*
//! unary    := "not" unary | "(" expr ")" | match
//! match    := selector ("==" | "!=") value
//!           | selector ["not"] ("contains" | "matches") value
//!           | selector "is" ["not"] "empty"
//!           | value ["not"] "in" selector
//! selector := Name("." Name)*            e.g. Service.Meta.env, Checks.Status
//! value    := "double quoted" | `raw` | bare-word
//! ```
//!
//! A selector names fields by their JSON names, as Consul's do. Through an array of objects
//! (`Checks.Status`) it reaches every element's field, and a match holds when any of them
//! matches (`!=`, `not …`: when none does). `in`/`contains` look in an array's elements, a
//! map's keys, or a string's text; `matches` is a regular expression; `is empty` holds for a
//! missing field, null, `""`, `[]` and `{}`. Values compare with the field's type: `5` equals
//! the number 5, `true` the boolean. An endpoint checks each selector's first name against the
//! fields its rows have ([`Filter::check_fields`]), so a misspelt selector is a 400 naming its
//! position, not an empty answer.

use std::fmt;

use regex::Regex;
use serde_json::Value;

/// Longest expression accepted.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting of `not` and parentheses accepted.
const MAX_DEPTH: usize = 64;

/// What is wrong with an expression, and where (1-based column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// 1-based character column.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for FilterError {}

/// A parsed expression.
#[derive(Debug, Clone)]
pub struct Filter {
    expr: Expr,
    /// Each selector with the column it starts at (for [`Filter::check_fields`]).
    selectors: Vec<(Vec<String>, usize)>,
}

#[derive(Debug, Clone)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match(Match),
}

#[derive(Debug, Clone)]
struct Match {
    selector: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    NotEqual(String),
    Contains(String),
    Matches(Box<Regex>),
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Equal,
    NotEqual,
    Open,
    Close,
}

impl Token {
    fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w == word)
    }

    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("{w:?}"),
            Token::Quoted(q) => format!("the string {q:?}"),
            Token::Equal => "\"==\"".to_owned(),
            Token::NotEqual => "\"!=\"".to_owned(),
            Token::Open => "\"(\"".to_owned(),
            Token::Close => "\")\"".to_owned(),
        }
    }
}

const KEYWORDS: &[&str] = &[
    "and", "or", "not", "in", "contains", "matches", "is", "empty",
];

fn error(column: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        column,
        message: message.into(),
    }
}

/// Splits an expression into tokens with their 1-based columns.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push((Token::Open, column));
                i += 1;
            }
            ')' => {
                tokens.push((Token::Close, column));
                i += 1;
            }
            '=' | '!' => {
                if chars.get(i + 1) != Some(&'=') {
                    return Err(error(column, format!("expected \"{c}=\"")));
                }
                tokens.push((
                    if c == '=' {
                        Token::Equal
                    } else {
                        Token::NotEqual
                    },
                    column,
                ));
                i += 2;
            }
            '"' | '`' => {
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(error(column, "unterminated string")),
                        Some(&end) if end == c => break,
                        Some('\\') if c == '"' => {
                            match chars.get(j + 1) {
                                Some(&next @ ('"' | '\\')) => value.push(next),
                                Some('n') => value.push('\n'),
                                Some('t') => value.push('\t'),
                                _ => {
                                    return Err(error(j + 1, "unknown escape in a string"));
                                }
                            }
                            j += 2;
                            continue;
                        }
                        Some(&other) => value.push(other),
                    }
                    j += 1;
                }
                tokens.push((Token::Quoted(value), column));
                i = j + 1;
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | '"' | '`' | '=' | '!')
                {
                    i += 1;
                }
                tokens.push((Token::Word(chars[start..i].iter().collect()), column));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    end: usize,
    selectors: Vec<(Vec<String>, usize)>,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.at + ahead).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(_, c)| *c)
    }

    fn next(&mut self) -> Option<(Token, usize)> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn unexpected(&self, expected: &str) -> FilterError {
        match self.peek() {
            Some(token) => error(
                self.column(),
                format!("expected {expected}, found {}", token.describe()),
            ),
            None => error(self.end, format!("expected {expected}, found the end")),
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.and(depth)?;
        while self.peek().is_some_and(|t| t.is_word("or")) {
            self.at += 1;
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.unary(depth)?;
        while self.peek().is_some_and(|t| t.is_word("and")) {
            self.at += 1;
            let right = self.unary(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth > MAX_DEPTH {
            return Err(error(self.column(), "nested too deeply"));
        }
        match self.peek() {
            Some(t) if t.is_word("not") => {
                self.at += 1;
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.or(depth + 1)?;
                match self.next() {
                    Some((Token::Close, _)) => Ok(inner),
                    _ => {
                        self.at -= 1;
                        Err(self.unexpected("\")\" or a boolean operator"))
                    }
                }
            }
            _ => self.matching(),
        }
    }

    /// A value: quoted, or a bare word that is not a keyword.
    fn value(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Some(Token::Quoted(v)) => {
                let v = v.clone();
                self.at += 1;
                Ok(v)
            }
            Some(Token::Word(w)) if !KEYWORDS.contains(&w.as_str()) => {
                let w = w.clone();
                self.at += 1;
                Ok(w)
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    fn selector(&mut self) -> Result<Vec<String>, FilterError> {
        let column = self.column();
        match self.peek() {
            Some(Token::Word(w)) if !KEYWORDS.contains(&w.as_str()) => {
                let parts: Vec<String> = w.split('.').map(str::to_owned).collect();
                let valid = parts.iter().all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'))
                });
                if !valid {
                    return Err(error(
                        column,
                        format!("{w:?} is not a selector (Name.Name…)"),
                    ));
                }
                self.at += 1;
                self.selectors.push((parts.clone(), column));
                Ok(parts)
            }
            _ => Err(self.unexpected("a selector")),
        }
    }

    fn matching(&mut self) -> Result<Expr, FilterError> {
        // `value in selector` / `value not in selector`
        let value_first = matches!(self.peek(), Some(Token::Quoted(_)))
            || self.peek_at(1).is_some_and(|t| t.is_word("in"))
            || (self.peek_at(1).is_some_and(|t| t.is_word("not"))
                && self.peek_at(2).is_some_and(|t| t.is_word("in")));
        if value_first {
            let value = self.value()?;
            let negated = self.peek().is_some_and(|t| t.is_word("not"));
            if negated {
                self.at += 1;
            }
            if !self.peek().is_some_and(|t| t.is_word("in")) {
                return Err(self.unexpected("\"in\" or \"not in\""));
            }
            self.at += 1;
            let selector = self.selector()?;
            let m = Expr::Match(Match {
                selector,
                op: Op::Contains(value),
            });
            return Ok(if negated { Expr::Not(Box::new(m)) } else { m });
        }
        let selector = self.selector()?;
        let column = self.column();
        let (op, negated) = match self.next() {
            Some((Token::Equal, _)) => (Op::Equal(self.value()?), false),
            Some((Token::NotEqual, _)) => (Op::NotEqual(self.value()?), false),
            Some((Token::Word(w), _)) if w == "contains" => (Op::Contains(self.value()?), false),
            Some((Token::Word(w), _)) if w == "matches" => (self.regex()?, false),
            Some((Token::Word(w), _)) if w == "not" => match self.next() {
                Some((Token::Word(w), _)) if w == "contains" => (Op::Contains(self.value()?), true),
                Some((Token::Word(w), _)) if w == "matches" => (self.regex()?, true),
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected("\"contains\" or \"matches\" after \"not\""));
                }
            },
            Some((Token::Word(w), _)) if w == "is" => {
                let negated = self.peek().is_some_and(|t| t.is_word("not"));
                if negated {
                    self.at += 1;
                }
                if !self.peek().is_some_and(|t| t.is_word("empty")) {
                    return Err(self.unexpected("\"empty\""));
                }
                self.at += 1;
                (Op::Empty, negated)
            }
            _ => {
                self.at -= 1;
                let _ = column;
                return Err(self.unexpected(
                    "an operator (==, !=, contains, not contains, matches, not matches, is empty, is not empty)",
                ));
            }
        };
        let m = Expr::Match(Match { selector, op });
        Ok(if negated { Expr::Not(Box::new(m)) } else { m })
    }

    fn regex(&mut self) -> Result<Op, FilterError> {
        let column = self.column();
        let pattern = self.value()?;
        Regex::new(&pattern)
            .map(|r| Op::Matches(Box::new(r)))
            .map_err(|e| error(column, format!("invalid regular expression: {e}")))
    }
}

impl Filter {
    /// Parses an expression; an empty one is refused (leave `?filter=` out instead).
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.chars().count() > MAX_FILTER_LEN {
            return Err(error(
                MAX_FILTER_LEN,
                format!("longer than {MAX_FILTER_LEN} characters"),
            ));
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            at: 0,
            end: text.chars().count() + 1,
            selectors: Vec::new(),
        };
        if parser.tokens.is_empty() {
            return Err(error(1, "empty expression"));
        }
        let expr = parser.or(0)?;
        if parser.peek().is_some() {
            return Err(parser.unexpected("\"and\", \"or\" or the end"));
        }
        Ok(Self {
            expr,
            selectors: parser.selectors,
        })
    }

    /// Checks that each selector starts with one of `fields` (the rows' top-level JSON names).
    pub fn check_fields(&self, fields: &[&str]) -> Result<(), FilterError> {
        for (selector, column) in &self.selectors {
            let first = selector.first().map(String::as_str).unwrap_or_default();
            if !fields.contains(&first) {
                return Err(error(
                    *column,
                    format!(
                        "unknown selector {:?}: fields here are {}",
                        selector.join("."),
                        fields.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `row` (a row of the answer, as JSON) matches.
    pub fn matches(&self, row: &Value) -> bool {
        eval(&self.expr, row)
    }
}

fn eval(expr: &Expr, row: &Value) -> bool {
    match expr {
        Expr::And(a, b) => eval(a, row) && eval(b, row),
        Expr::Or(a, b) => eval(a, row) || eval(b, row),
        Expr::Not(inner) => !eval(inner, row),
        Expr::Match(m) => {
            let mut found = Vec::new();
            resolve(row, &m.selector, &mut found);
            match &m.op {
                Op::Equal(v) => found.iter().any(|f| equals(f, v)),
                Op::NotEqual(v) => !found.iter().any(|f| equals(f, v)),
                Op::Contains(v) => found.iter().any(|f| contains(f, v)),
                Op::Matches(re) => found
                    .iter()
                    .any(|f| scalar_text(f).is_some_and(|t| re.is_match(&t))),
                Op::Empty => found.iter().all(|f| is_empty(f)),
            }
        }
    }
}

/// The values `path` reaches from `value`; through arrays of objects, every element's.
fn resolve<'a>(value: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Value::Object(map) => {
            if let Some(next) = map.get(first) {
                resolve(next, rest, out);
            }
        }
        Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_object()) {
                resolve(item, path, out);
            }
        }
        _ => {}
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn equals(field: &Value, value: &str) -> bool {
    match field {
        Value::String(s) => s == value,
        Value::Number(n) => match (n.as_f64(), value.parse::<f64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => false,
        },
        Value::Bool(b) => value.parse::<bool>().is_ok_and(|v| v == *b),
        Value::Null => value.is_empty(),
        _ => false,
    }
}

fn contains(field: &Value, value: &str) -> bool {
    match field {
        Value::Array(items) => items.iter().any(|i| equals(i, value)),
        Value::Object(map) => map.contains_key(value),
        Value::String(s) => s.contains(value),
        _ => false,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The top-level JSON field names of `T`'s rows: those its default value serializes, plus
/// `extra` (fields left out when empty).
pub fn fields_of<T: serde::Serialize + Default>(extra: &[&'static str]) -> Vec<String> {
    let mut fields: Vec<String> = match serde_json::to_value(T::default()) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    fields.extend(extra.iter().map(|s| (*s).to_owned()));
    fields.sort();
    fields.dedup();
    fields
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn row() -> Value {
        json!({
            "Node": {"Node": "n1", "Meta": {"rack": "r1", "env": "prod"}},
            "Service": {"Service": "web", "Port": 8080, "Tags": ["v1", "canary"],
                        "Meta": {"version": "1.2"}, "EnableTagOverride": false},
            "Checks": [{"Status": "passing", "Name": "a"}, {"Status": "critical", "Name": "b"}],
            "Empty": "",
        })
    }

    fn holds(expr: &str) -> bool {
        Filter::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .matches(&row())
    }

    #[test]
    fn operators_match_as_consul_s_do() {
        for (expr, expected) in [
            ("Service.Service == web", true),
            ("Service.Service == \"web\"", true),
            ("Service.Service != web", false),
            ("Service.Port == 8080", true),
            ("Service.Port == `8080`", true),
            ("Service.EnableTagOverride == false", true),
            ("v1 in Service.Tags", true),
            ("\"v2\" in Service.Tags", false),
            ("\"v2\" not in Service.Tags", true),
            ("Service.Tags contains canary", true),
            ("Service.Tags not contains canary", false),
            ("rack in Node.Meta", true),
            ("Node.Meta.env == prod", true),
            ("Node.Meta.missing == prod", false),
            ("Node.Meta.missing is empty", true),
            ("Empty is empty", true),
            ("Service.Tags is not empty", true),
            ("Service.Service matches \"^w.b$\"", true),
            ("Service.Service not matches \"^x\"", true),
            ("Checks.Status == critical", true),
            ("Checks.Status != critical", false),
            ("Checks.Status == warning", false),
            ("Service.Service == web and Node.Node == n2", false),
            (
                "Service.Service == web and Node.Node == n2 or Node.Meta.rack == r1",
                true,
            ),
            (
                "Service.Service == x or Service.Service == web and Node.Node == n1",
                true,
            ),
            ("not (Service.Service == web)", false),
            ("not Service.Service == x and (Node.Node == n1)", true),
        ] {
            assert_eq!(holds(expr), expected, "{expr}");
        }
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        for (expr, column, needle) in [
            ("", 1, "empty"),
            ("Service.Service = web", 17, "\"==\""),
            ("Service.Service ==", 19, "a value"),
            ("Service.Service == web and", 27, "a selector"),
            ("(Service.Service == web", 24, "\")\""),
            ("Service.Service == web)", 23, "the end"),
            ("Service.Service like web", 17, "an operator"),
            ("Service.Service == \"web", 20, "unterminated"),
            ("Service.Service matches \"[\"", 25, "regular expression"),
            ("Service..Name == x", 1, "not a selector"),
            ("x is full", 6, "\"empty\""),
        ] {
            let e = Filter::parse(expr).expect_err(expr);
            assert_eq!(e.column, column, "{expr}: {e}");
            assert!(e.message.contains(needle), "{expr}: {e}");
        }
        let f = Filter::parse("Service.Service == web and Nod.Node == n1").unwrap();
        let e = f.check_fields(&["Node", "Service", "Checks"]).unwrap_err();
        assert_eq!(e.column, 28);
        assert!(e.message.contains("\"Nod.Node\""), "{e}");
    }

    proptest! {
        #[test]
        fn any_text_parses_or_says_where(text in ".{0,80}") {
            if let Err(e) = Filter::parse(&text) {
                prop_assert!(e.column >= 1 && e.column <= text.chars().count() + 1);
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn any_expression_of_the_language_evaluates(
            text in "(not |\\(|\\)| and | or |Service\\.(Service|Tags|Meta\\.[a-z])|Checks\\.Status|[a-z]{1,3}|\"[a-z]*\"| == | != | in | contains | is empty| matches ){1,12}"
        ) {
            if let Ok(f) = Filter::parse(&text) {
                let _ = f.matches(&row());
                let _ = f.check_fields(&["Service", "Checks"]);
            }
        }
    }
}
