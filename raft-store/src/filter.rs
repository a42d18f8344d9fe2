//! Message filters of consumer subscriptions: tags (`*`, `a||b`) and RocketMQ's SQL92 subset
//! over user properties.
//!
//! The SQL92 dialect is RocketMQ's own (it adds `CONTAINS`, `STARTSWITH` and `ENDSWITH` and
//! has no functions, columns or subqueries), so it is parsed here rather than with a general
//! SQL parser whose grammar would accept far more than the broker can evaluate. Filters are
//! evaluated at apply time, so evaluation is a pure function of the expression and the message.
//!
//! Grammar (keywords case-insensitive):
//! ```text
//! expr      := and ("OR" and)*
//! and       := unary ("AND" unary)*
//! unary     := "NOT" unary | "(" expr ")" | TRUE | FALSE | predicate
//! predicate := ident op literal | ident [NOT] BETWEEN lit AND lit | ident [NOT] IN (lit, ...)
//!            | ident IS [NOT] NULL | ident [NOT] (CONTAINS | STARTSWITH | ENDSWITH) 'text'
//! op        := = | <> | != | < | <= | > | >=
//! ```
//! A predicate on a property the message does not have is false (`IS NULL` excepted), as in
//! RocketMQ. `TAGS` names the message's tag.

use std::collections::BTreeMap;

use crate::types::{Filter, NewMessage};

/// Longest filter expression accepted; RocketMQ has none, but an expression is evaluated for
/// every message a consumer is offered.
pub const EXPRESSION_LEN_MAX: usize = 4096;

impl Filter {
    /// Builds a tag filter from a subscription expression: `*` or empty means all.
    pub fn tags(expression: &str) -> Filter {
        let tags: Vec<String> = expression
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if tags.is_empty() || tags.iter().any(|t| t == "*") {
            Filter::All
        } else {
            Filter::Tags(tags)
        }
    }

    /// Builds a SQL92 filter, checking that the expression parses.
    pub fn sql(expression: &str) -> Result<Filter, String> {
        if expression.len() > EXPRESSION_LEN_MAX {
            return Err(format!(
                "is {} bytes long; the limit is {EXPRESSION_LEN_MAX}",
                expression.len()
            ));
        }
        parse(expression)?;
        Ok(Filter::Sql(expression.to_string()))
    }

    /// A reusable matcher (parses a SQL expression once).
    pub fn matcher(&self) -> Matcher<'_> {
        match self {
            Filter::All => Matcher::All,
            Filter::Tags(tags) => Matcher::Tags(tags),
            // An expression that no longer parses matches nothing rather than everything.
            Filter::Sql(e) => parse(e).map(Matcher::Sql).unwrap_or(Matcher::Nothing),
        }
    }
}

pub enum Matcher<'a> {
    All,
    Nothing,
    Tags(&'a [String]),
    Sql(Expr),
}

impl Matcher<'_> {
    pub fn matches(&self, m: &NewMessage) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Nothing => false,
            Matcher::Tags(tags) => m.tag.as_ref().is_some_and(|t| tags.contains(t)),
            Matcher::Sql(e) => e.eval(&m.properties, m.tag.as_deref()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TextOp {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Const(bool),
    Compare(String, Op, Lit),
    Between(String, Lit, Lit),
    In(String, Vec<Lit>),
    IsNull(String),
    Text(String, TextOp, String),
}

impl Expr {
    fn eval(&self, props: &BTreeMap<String, String>, tag: Option<&str>) -> bool {
        let get = |name: &str| -> Option<&str> {
            if name.eq_ignore_ascii_case("TAGS") {
                tag
            } else {
                props.get(name).map(String::as_str)
            }
        };
        match self {
            Expr::Or(a, b) => a.eval(props, tag) || b.eval(props, tag),
            Expr::And(a, b) => a.eval(props, tag) && b.eval(props, tag),
            Expr::Not(e) => !e.eval(props, tag),
            Expr::Const(b) => *b,
            Expr::Compare(name, op, lit) => get(name).is_some_and(|v| compare(v, *op, lit)),
            Expr::Between(name, lo, hi) => {
                get(name).is_some_and(|v| compare(v, Op::Ge, lo) && compare(v, Op::Le, hi))
            }
            Expr::In(name, lits) => {
                get(name).is_some_and(|v| lits.iter().any(|l| compare(v, Op::Eq, l)))
            }
            Expr::IsNull(name) => get(name).is_none(),
            Expr::Text(name, op, needle) => get(name).is_some_and(|v| match op {
                TextOp::Contains => v.contains(needle.as_str()),
                TextOp::StartsWith => v.starts_with(needle.as_str()),
                TextOp::EndsWith => v.ends_with(needle.as_str()),
            }),
        }
    }
}

/// Compares a property value with a literal: numerically for number literals (a value that
/// is not a number never matches), as text for strings, as a boolean for TRUE/FALSE.
fn compare(value: &str, op: Op, lit: &Lit) -> bool {
    let ord = match lit {
        Lit::Num(n) => match value.trim().parse::<f64>() {
            Ok(v) => v.partial_cmp(n),
            Err(_) => None,
        },
        Lit::Str(s) => Some(value.cmp(s.as_str())),
        Lit::Bool(b) => match value.to_ascii_lowercase().as_str() {
            "true" => Some(true.cmp(b)),
            "false" => Some(false.cmp(b)),
            _ => None,
        },
    };
    let Some(ord) = ord else { return false };
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => ord == Equal,
        Op::Ne => ord != Equal,
        Op::Lt => ord == Less,
        Op::Le => ord != Greater,
        Op::Gt => ord == Greater,
        Op::Ge => ord != Less,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(Op),
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                // SQL strings: '' inside a string is one quote.
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            text.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            text.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(text));
            }
            '=' => {
                out.push(Tok::Op(Op::Eq));
                i += 1
            }
            '<' | '>' | '!' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('<', Some('=')) => (Op::Le, 2),
                    ('<', Some('>')) => (Op::Ne, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('>', _) => (Op::Gt, 1),
                    ('!', Some('=')) => (Op::Ne, 2),
                    _ => return Err(format!("unexpected {c:?} at position {i}")),
                };
                out.push(Tok::Op(op));
                i += len;
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit() || matches!(chars[i], '.' | 'e' | 'E'))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text
                    .parse::<f64>()
                    .map_err(|_| format!("{text:?} is not a number"))?;
                out.push(Tok::Num(n));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '-'))
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected {other:?} at position {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

fn parse(s: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    if p.toks.is_empty() {
        return Err("is empty".into());
    }
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!(
            "unexpected {:?} after the expression",
            p.toks[p.pos]
        ));
    }
    Ok(e)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if let Some(Tok::Ident(w)) = self.peek()
            && w.eq_ignore_ascii_case(kw)
        {
            self.pos += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), String> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {what}, found {:?}", self.peek()))
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.keyword("OR") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.keyword("AND") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(e);
        }
        if self.keyword("TRUE") {
            return Ok(Expr::Const(true));
        }
        if self.keyword("FALSE") {
            return Ok(Expr::Const(false));
        }
        self.predicate()
    }

    fn literal(&mut self) -> Result<Lit, String> {
        let lit = match self.peek() {
            Some(Tok::Str(s)) => Lit::Str(s.clone()),
            Some(Tok::Num(n)) => Lit::Num(*n),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("TRUE") => Lit::Bool(true),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("FALSE") => Lit::Bool(false),
            other => return Err(format!("expected a literal, found {other:?}")),
        };
        self.pos += 1;
        Ok(lit)
    }

    fn predicate(&mut self) -> Result<Expr, String> {
        let name = match self.peek() {
            Some(Tok::Ident(w)) => w.clone(),
            other => return Err(format!("expected a property name, found {other:?}")),
        };
        self.pos += 1;
        if let Some(Tok::Op(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            return Ok(Expr::Compare(name, op, self.literal()?));
        }
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            if !self.keyword("NULL") {
                return Err("expected NULL after IS".into());
            }
            let e = Expr::IsNull(name);
            return Ok(if negated { Expr::Not(Box::new(e)) } else { e });
        }
        let negated = self.keyword("NOT");
        let e = if self.keyword("BETWEEN") {
            let lo = self.literal()?;
            if !self.keyword("AND") {
                return Err("expected AND in BETWEEN".into());
            }
            Expr::Between(name, lo, self.literal()?)
        } else if self.keyword("IN") {
            self.expect(Tok::LParen, "'(' after IN")?;
            let mut lits = vec![self.literal()?];
            while self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                lits.push(self.literal()?);
            }
            self.expect(Tok::RParen, "')' closing IN")?;
            Expr::In(name, lits)
        } else {
            let op = if self.keyword("CONTAINS") {
                TextOp::Contains
            } else if self.keyword("STARTSWITH") {
                TextOp::StartsWith
            } else if self.keyword("ENDSWITH") {
                TextOp::EndsWith
            } else {
                return Err(format!(
                    "expected a comparison after {name:?}, found {:?}",
                    self.peek()
                ));
            };
            match self.literal()? {
                Lit::Str(s) => Expr::Text(name, op, s),
                other => return Err(format!("{op:?} needs a string, found {other:?}")),
            }
        };
        // `a NOT IN (...)` is true only when `a` exists and is none of the values.
        Ok(if negated {
            let exists = Expr::Not(Box::new(Expr::IsNull(expr_name(&e).to_string())));
            Expr::And(Box::new(exists), Box::new(Expr::Not(Box::new(e))))
        } else {
            e
        })
    }
}

fn expr_name(e: &Expr) -> &str {
    match e {
        Expr::Compare(n, ..)
        | Expr::Between(n, ..)
        | Expr::In(n, ..)
        | Expr::IsNull(n)
        | Expr::Text(n, ..) => n,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: Option<&str>, props: &[(&str, &str)]) -> NewMessage {
        NewMessage {
            message_id: "id".into(),
            tag: tag.map(str::to_string),
            keys: vec![],
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: bytes::Bytes::from_static(b"x"),
            born_timestamp_ms: 0,
            kind: crate::types::MessageKind::Normal,
            message_group: None,
            delivery_timestamp_ms: None,
        }
    }

    fn sql(e: &str, m: &NewMessage) -> bool {
        Filter::sql(e).expect("parses").matcher().matches(m)
    }

    #[test]
    fn tag_filters() {
        let a = msg(Some("a"), &[]);
        let none = msg(None, &[]);
        assert_eq!(Filter::tags("*"), Filter::All);
        assert_eq!(Filter::tags(""), Filter::All);
        assert!(Filter::tags("a || b").matcher().matches(&a));
        assert!(!Filter::tags("b").matcher().matches(&a));
        assert!(!Filter::tags("a").matcher().matches(&none));
        assert!(Filter::All.matcher().matches(&none));
    }

    #[test]
    fn sql_filters() {
        let m = msg(Some("t1"), &[("n", "7"), ("color", "red"), ("ok", "true")]);
        assert!(sql("n > 4 AND color = 'red'", &m));
        assert!(!sql("n > 7", &m));
        assert!(sql("n >= 7 and n <= 7.0", &m));
        assert!(sql("n BETWEEN 1 AND 10", &m));
        assert!(!sql("n NOT BETWEEN 1 AND 10", &m));
        assert!(sql("color IN ('blue', 'red')", &m));
        assert!(!sql("color NOT IN ('blue', 'red')", &m));
        assert!(
            !sql("missing NOT IN ('x')", &m),
            "absent property never matches"
        );
        assert!(sql("missing IS NULL AND color IS NOT NULL", &m));
        assert!(!sql("missing = 'x' OR missing <> 'x'", &m));
        assert!(sql(
            "color CONTAINS 'e' AND color STARTSWITH 're' AND color ENDSWITH 'd'",
            &m
        ));
        assert!(sql("NOT (color = 'blue') AND ok = TRUE", &m));
        assert!(sql("TAGS = 't1'", &m));
        assert!(!sql("color > 5", &m), "text is not a number");
        assert!(sql("(n < 0 OR n = 7) AND TRUE", &m));
    }

    #[test]
    fn bad_sql_is_refused_with_a_reason() {
        for bad in [
            "",
            "n >",
            "n = 'open",
            "(n = 1",
            "n == 1",
            "n IN ()",
            "n CONTAINS 5",
            "a = 1 b",
        ] {
            assert!(Filter::sql(bad).is_err(), "{bad:?} must not parse");
        }
    }
}
