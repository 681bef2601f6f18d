//! Cedar policies parsed into a syntax tree shared between policies.
//!
//! State owned: a table of Cedar expression nodes ([`AstInterner`]), each held once, which the
//! policies parsed through it point into.
//!
//! The policies of an estate repeat the same pieces (`context has http`, `context.http.method
//! == "GET"`, a namespace pattern): parsed one by one, each policy carries its own copy of
//! every node plus its text, ~4.9 KB per policy, 89 MiB for the 19,050 Cedar policies of the
//! 10,000-policy benchmark estate. Parsed through the table, equal subtrees are one node and
//! no text is kept: ~0.9 KB per policy. A node compares and hashes by content (Cedar's own
//! `Eq`/`Hash`, which ignore source locations), and a rebuilt condition is checked equal to
//! the parsed one before it is used, so what is evaluated is exactly what was parsed. The
//! policy is handed to `cedar-policy` through its (doc-hidden) `From<ast::Policy>`; the
//! workspace pins `cedar-policy-core` to the version `cedar-policy` uses, so both agree on the
//! syntax tree.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy_core::ast::{self, Expr, ExprKind};
use cedar_policy_core::expr_builder::ExprBuilder as _;

/// Shares the nodes of the policies parsed through it (see the module header).
#[derive(Debug, Default)]
pub struct AstInterner {
    nodes: HashSet<Arc<Expr>>,
    /// Table size after the last prune: pruning again waits until it has doubled.
    pruned_at: usize,
}

impl AstInterner {
    /// Parses one policy as `cedar_policy::Policy::parse` does, keeping neither its text nor
    /// source locations, with the nodes of its condition shared through the table.
    pub fn parse(&mut self, id: &str, text: &str) -> Result<cedar_policy::Policy, String> {
        let parsed =
            cedar_policy_core::parser::parse_policy(Some(ast::PolicyID::from_string(id)), text)
                .map_err(|e| e.to_string())?;
        let shared = match parsed.non_scope_constraints() {
            Some(condition) if parsed.annotations().next().is_none() => {
                let rebuilt = self.rebuild(condition);
                // Cedar's equality ignores source locations only: a difference is a bug here,
                // and the parsed policy is used as it is.
                if rebuilt == *condition {
                    ast::StaticPolicy::new(
                        parsed.id().clone(),
                        None,
                        ast::Annotations::new(),
                        parsed.effect(),
                        parsed.principal_constraint().clone(),
                        parsed.action_constraint().clone(),
                        parsed.resource_constraint().clone(),
                        Some(rebuilt),
                    )
                    .ok()
                } else {
                    None
                }
            }
            _ => None,
        };
        Ok(cedar_policy::Policy::from(ast::Policy::from(
            shared.unwrap_or(parsed),
        )))
    }

    /// Drops the nodes no policy points to any more (once the table has doubled since the
    /// last prune, so that a long-running compile cache does not keep every node it ever
    /// made, and a small change does not walk the table).
    pub fn prune(&mut self) {
        if self.nodes.len() < 2 * self.pruned_at.max(1024) {
            return;
        }
        // A node held by the table alone may be the only holder of its children: repeat
        // until nothing more goes.
        loop {
            let before = self.nodes.len();
            self.nodes.retain(|n| Arc::strong_count(n) > 1);
            if self.nodes.len() == before {
                break;
            }
        }
        self.pruned_at = self.nodes.len();
    }

    /// How many distinct nodes the table holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `e` from the table (added when new).
    fn intern(&mut self, e: &Expr) -> Arc<Expr> {
        let node = self.rebuild(e);
        if let Some(shared) = self.nodes.get(&node) {
            return shared.clone();
        }
        let node = Arc::new(node);
        self.nodes.insert(node.clone());
        node
    }

    /// `e` without source locations, its subtrees taken from the table. The node itself is
    /// not added: a policy's whole condition and the elements of sets, records and
    /// extension calls are held by value, where a shared node cannot go.
    fn rebuild(&mut self, e: &Expr) -> Expr {
        let kind = match e.expr_kind() {
            ExprKind::If {
                test_expr,
                then_expr,
                else_expr,
            } => ExprKind::If {
                test_expr: self.intern(test_expr),
                then_expr: self.intern(then_expr),
                else_expr: self.intern(else_expr),
            },
            ExprKind::And { left, right } => ExprKind::And {
                left: self.intern(left),
                right: self.intern(right),
            },
            ExprKind::Or { left, right } => ExprKind::Or {
                left: self.intern(left),
                right: self.intern(right),
            },
            ExprKind::UnaryApp { op, arg } => ExprKind::UnaryApp {
                op: *op,
                arg: self.intern(arg),
            },
            ExprKind::BinaryApp { op, arg1, arg2 } => ExprKind::BinaryApp {
                op: *op,
                arg1: self.intern(arg1),
                arg2: self.intern(arg2),
            },
            ExprKind::ExtensionFunctionApp { fn_name, args } => ExprKind::ExtensionFunctionApp {
                fn_name: fn_name.clone(),
                args: Arc::new(args.iter().map(|a| self.rebuild(a)).collect()),
            },
            ExprKind::GetAttr { expr, attr } => ExprKind::GetAttr {
                expr: self.intern(expr),
                attr: attr.clone(),
            },
            ExprKind::HasAttr { expr, attr } => ExprKind::HasAttr {
                expr: self.intern(expr),
                attr: attr.clone(),
            },
            ExprKind::ExtHasAttr { expr, attrs } => ExprKind::ExtHasAttr {
                expr: self.intern(expr),
                attrs: attrs.clone(),
            },
            ExprKind::Like { expr, pattern } => ExprKind::Like {
                expr: self.intern(expr),
                pattern: pattern.clone(),
            },
            ExprKind::Is { expr, entity_type } => ExprKind::Is {
                expr: self.intern(expr),
                entity_type: entity_type.clone(),
            },
            ExprKind::Set(items) => {
                ExprKind::Set(Arc::new(items.iter().map(|a| self.rebuild(a)).collect()))
            }
            ExprKind::Record(fields) => ExprKind::Record(Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), self.rebuild(v)))
                    .collect(),
            )),
            // Leaves (literals, variables, slots, unknowns), and whatever a later Cedar adds:
            // copied as they are, still correct, only not shared.
            other => other.clone(),
        };
        ast::ExprBuilder::new().with_expr_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    const A: &str = r#"permit (principal, action, resource) when { context has http && context.http.method == "GET" && context.http.path like "/api/*" };"#;
    const B: &str = r#"forbid (principal, action, resource) when { context has http && context.http.method == "GET" && [1, 2].contains(context.destination.port) && {a: ip("10.0.0.1")}.a.isInRange(ip("10.0.0.0/8")) && !(context.sni is Mesh::Peer) && (if context has jwt then context.jwt has iss else false) };"#;

    /// Parsed through the table, a policy is the policy Cedar parses (same id, effect, scope
    /// and condition), shares its common subtrees with the other policies, and keeps no text.
    #[test]
    fn shared_policies_equal_the_parsed_ones() {
        let mut interner = AstInterner::default();
        let a = interner.parse("a", A).unwrap();
        let b = interner.parse("b", B).unwrap();
        for (ours, id, text) in [(&a, "a", A), (&b, "b", B)] {
            let cedar =
                cedar_policy::Policy::parse(Some(cedar_policy::PolicyId::new(id)), text).unwrap();
            let (ours, cedar): (&ast::Policy, &ast::Policy) = (ours.as_ref(), cedar.as_ref());
            assert_eq!(ours.id(), cedar.id());
            assert_eq!(ours.effect(), cedar.effect());
            assert_eq!(ours.condition(), cedar.condition());
            assert_eq!(ours.non_scope_constraints(), cedar.non_scope_constraints());
        }
        // `context has http && context.http.method == "GET"` is one node of both.
        let left = |p: &cedar_policy::Policy| -> Arc<Expr> {
            let condition = AsRef::<ast::Policy>::as_ref(p)
                .non_scope_constraints()
                .unwrap()
                .clone();
            let mut e = Arc::new(condition);
            while let ExprKind::And { left, .. } = e.clone().expr_kind() {
                if let ExprKind::HasAttr { .. } = left.expr_kind() {
                    return e;
                }
                e = left.clone();
            }
            panic!("no `context has http && ...` in {e}")
        };
        assert!(Arc::ptr_eq(&left(&a), &left(&b)));
        // No text kept: the policy prints from its syntax tree.
        assert!(a.to_string().starts_with("permit("), "{a}");
    }

    /// Errors are Cedar's; pruning drops the nodes of policies that are gone, and only those.
    #[test]
    fn errors_and_pruning() {
        let mut interner = AstInterner::default();
        assert!(interner
            .parse(
                "x",
                "permit (principal, action, resource) when { context. };"
            )
            .is_err());
        let kept = interner.parse("a", A).unwrap();
        let mut gone = Vec::new();
        for i in 0..3000 {
            let text =
                format!(r#"permit (principal, action, resource) when {{ context.n == {i} }};"#);
            gone.push(interner.parse("n", &text).unwrap());
        }
        let full = interner.len();
        drop(gone);
        interner.prune();
        assert!(interner.len() < full / 4, "{} of {full}", interner.len());
        let len = interner.len();
        let again = interner.parse("a", A).unwrap();
        assert_eq!(
            AsRef::<ast::Policy>::as_ref(&kept).condition(),
            AsRef::<ast::Policy>::as_ref(&again).condition()
        );
        // Re-parsing a kept policy adds nothing: its nodes were not pruned.
        assert_eq!(interner.len(), len);
        assert!(!interner.is_empty());
    }
}
