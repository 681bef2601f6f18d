//! A small Cedar expression builder that simplifies as it goes (`true && x` is `x`), so the
//! emitted policies read like hand-written ones. Rendering is deterministic.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    True,
    False,
    /// A complete Cedar expression that needs no parentheses when combined (a comparison or a
    /// method call is wrapped by the caller).
    Atom(String),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
}

impl Expr {
    pub fn atom(s: impl Into<String>) -> Expr {
        Expr::Atom(s.into())
    }

    pub fn and(items: impl IntoIterator<Item = Expr>) -> Expr {
        let mut out = Vec::new();
        for e in items {
            match e {
                Expr::True => {}
                Expr::False => return Expr::False,
                Expr::And(inner) => {
                    for i in inner {
                        if !out.contains(&i) {
                            out.push(i)
                        }
                    }
                }
                e => {
                    if !out.contains(&e) {
                        out.push(e)
                    }
                }
            }
        }
        match out.len() {
            0 => Expr::True,
            1 => out.pop().unwrap_or(Expr::True),
            _ => Expr::And(out),
        }
    }

    pub fn or(items: impl IntoIterator<Item = Expr>) -> Expr {
        let mut out: Vec<Expr> = Vec::new();
        for e in items {
            match e {
                Expr::False => {}
                Expr::True => return Expr::True,
                Expr::Or(inner) => out.extend(inner),
                e => {
                    if !out.contains(&e) {
                        out.push(e)
                    }
                }
            }
        }
        match out.len() {
            0 => Expr::False,
            1 => out.pop().unwrap_or(Expr::False),
            _ => Expr::Or(out),
        }
    }

    #[allow(clippy::should_implement_trait, reason = "a builder, not an operator")]
    pub fn not(e: Expr) -> Expr {
        match e {
            Expr::True => Expr::False,
            Expr::False => Expr::True,
            Expr::Not(inner) => *inner,
            e => Expr::Not(Box::new(e)),
        }
    }

    /// Renders on one line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s
    }

    /// Renders a top-level conjunction one conjunct per line (indented), for readable policies.
    pub fn render_lines(&self, indent: &str) -> String {
        match self {
            Expr::And(items) => {
                let mut out = String::new();
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" &&\n");
                        out.push_str(indent);
                    }
                    e.write(&mut out, 2);
                }
                out
            }
            e => e.render(),
        }
    }

    /// Precedence: 0 top, 1 inside `||`, 2 inside `&&`, 3 inside `!`.
    fn write(&self, out: &mut String, ctx: u8) {
        match self {
            Expr::True => out.push_str("true"),
            Expr::False => out.push_str("false"),
            Expr::Atom(a) => {
                if ctx >= 3 {
                    let _ = write!(out, "({a})");
                } else {
                    out.push_str(a)
                }
            }
            Expr::And(items) => {
                let paren = ctx >= 3;
                if paren {
                    out.push('(');
                }
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" && ");
                    }
                    e.write(out, 2);
                }
                if paren {
                    out.push(')');
                }
            }
            Expr::Or(items) => {
                let paren = ctx >= 2;
                if paren {
                    out.push('(');
                }
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" || ");
                    }
                    e.write(out, 1);
                }
                if paren {
                    out.push(')');
                }
            }
            Expr::Not(e) => {
                out.push('!');
                e.write(out, 3);
            }
        }
    }
}

/// A Cedar string literal.
pub fn string_lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    escape_into(s, &mut out, false);
    out.push('"');
    out
}

/// One piece of a `like` pattern.
#[derive(Debug, Clone, Copy)]
pub enum Pat<'a> {
    Lit(&'a str),
    Any,
}

/// A Cedar `like` pattern literal: `*` is the wildcard, literal stars are escaped.
pub fn like_lit(parts: &[Pat<'_>]) -> String {
    let mut out = String::from("\"");
    for p in parts {
        match p {
            Pat::Lit(s) => escape_into(s, &mut out, true),
            Pat::Any => out.push('*'),
        }
    }
    out.push('"');
    out
}

fn escape_into(s: &str, out: &mut String, in_pattern: bool) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '*' if in_pattern => out.push_str("\\*"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simplifies_and_parenthesizes() {
        let a = Expr::atom("a == 1");
        let b = Expr::atom("b == 2");
        assert_eq!(Expr::and([Expr::True, a.clone()]), a);
        assert_eq!(Expr::or([Expr::False, Expr::True]), Expr::True);
        let e = Expr::and([Expr::or([a.clone(), b.clone()]), Expr::not(a.clone())]);
        assert_eq!(e.render(), "(a == 1 || b == 2) && !(a == 1)");
    }

    #[test]
    fn escapes_literals() {
        assert_eq!(string_lit("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(like_lit(&[Pat::Lit("a*b"), Pat::Any]), "\"a\\*b*\"");
        assert_eq!(string_lit("\u{0}"), "\"\\u{0}\"");
    }
}
