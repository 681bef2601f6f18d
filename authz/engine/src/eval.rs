//! `PolicyList`: Cedar policies evaluated together, with Cedar's own evaluator, and combined
//! as Cedar's authorizer combines the policies of a set: a policy is satisfied, not satisfied,
//! or errors (and is then skipped and reported); the caller decides with forbid overriding
//! permit.
//!
//! State owned: the policies of one list (immutable, built per snapshot).
//!
//! Why not a Cedar `PolicySet`: a set keeps each policy in five linked hash maps, ~1 KB per
//! policy, and the engine puts a policy into every index set it can reach, in every policy
//! class: ~45,000 entries at 10,000 policies, ~45 MiB. A list holds the policy itself (~80
//! bytes, its syntax tree shared). One evaluator per decision serves every list the decision
//! reads, where the authorizer made one per set.

use cedar_policy_core::ast::{
    self, ActionConstraint, Effect, Literal, PrincipalConstraint, ResourceConstraint, ValueKind,
};
use cedar_policy_core::evaluator::Evaluator;

#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyList {
    policies: Vec<Listed>,
}

#[derive(Debug, Clone)]
struct Listed {
    policy: ast::Policy,
    /// Its scope constrains nothing (`permit (principal, action, resource)`), so its condition
    /// alone decides: the scope's `true`s need not be assembled into an expression per request.
    unscoped: bool,
}

/// What the lists of one decision gave: the satisfied policies by effect, and every error.
#[derive(Debug, Default)]
pub(crate) struct Tally<'l> {
    pub permits: Vec<&'l str>,
    pub forbids: Vec<&'l str>,
    pub errors: Vec<String>,
}

impl PolicyList {
    /// The list of `policies`, each id once (the first kept: a policy reached through two
    /// index keys is one policy).
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a cedar_policy::Policy>) -> PolicyList {
        let mut seen = std::collections::HashSet::new();
        let policies = policies
            .into_iter()
            .map(AsRef::<ast::Policy>::as_ref)
            .filter(|p| seen.insert(p.id().clone()))
            .map(|p| Listed {
                unscoped: p.principal_constraint() == PrincipalConstraint::any()
                    && *p.action_constraint() == ActionConstraint::any()
                    && p.resource_constraint() == ResourceConstraint::any(),
                policy: p.clone(),
            })
            .collect();
        PolicyList { policies }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The ids of the policies, in list order.
    #[cfg(test)]
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|l| l.policy.id().as_ref())
    }

    /// Evaluates every policy of the list for the evaluator's request into `tally`.
    pub fn evaluate<'l>(&'l self, evaluator: &Evaluator<'_>, tally: &mut Tally<'l>) {
        for listed in &self.policies {
            let policy = &listed.policy;
            let satisfied = if listed.unscoped {
                match policy.non_scope_constraints() {
                    None => Ok(true),
                    Some(condition) => evaluator
                        .interpret(condition, policy.env())
                        .map_err(|e| e.to_string())
                        .and_then(|v| match v.value {
                            ValueKind::Lit(Literal::Bool(b)) => Ok(b),
                            _ => Err("the condition is not a boolean".to_string()),
                        }),
                }
            } else {
                evaluator.evaluate(policy).map_err(|e| e.to_string())
            };
            match satisfied {
                Ok(true) => match policy.effect() {
                    Effect::Permit => tally.permits.push(policy.id().as_ref()),
                    Effect::Forbid => tally.forbids.push(policy.id().as_ref()),
                },
                Ok(false) => {}
                // Worded as Cedar's authorizer reports it.
                Err(e) => tally.errors.push(format!(
                    "error while evaluating policy `{}`: {e}",
                    policy.id()
                )),
            }
        }
    }
}

/// An evaluator for one Cedar request over `entities`.
pub(crate) fn evaluator<'e>(
    request: &cedar_policy::Request,
    entities: &'e cedar_policy::Entities,
) -> Evaluator<'e> {
    Evaluator::new(
        AsRef::<ast::Request>::as_ref(request).clone(),
        entities.as_ref(),
        cedar_policy_core::extensions::Extensions::all_available(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use cedar_policy::{Authorizer, Context, Entities, EntityUid, Policy, PolicyId, PolicySet};
    use std::str::FromStr;

    /// Whatever the policies, a list reports what Cedar's authorizer reports for the same
    /// policies in a set: the satisfied permits and forbids, and one error per policy that
    /// errors (with the authorizer's wording).
    #[test]
    fn a_list_evaluates_as_cedar_authorizes() {
        let texts = [
            ("p-true", "permit (principal, action, resource);"),
            (
                "p-cond",
                r#"permit (principal, action, resource) when { context.n == 1 };"#,
            ),
            (
                "p-false",
                r#"permit (principal, action, resource) when { context.n == 2 };"#,
            ),
            (
                "f-cond",
                r#"forbid (principal, action, resource) when { context.s like "a*" };"#,
            ),
            (
                "f-false",
                r#"forbid (principal, action, resource) unless { context has s };"#,
            ),
            (
                "p-error",
                r#"permit (principal, action, resource) when { context.missing == 1 };"#,
            ),
            (
                "f-error",
                r#"forbid (principal, action, resource) when { context.n.x == 1 };"#,
            ),
            (
                "p-scoped",
                r#"permit (principal == P::"a", action, resource);"#,
            ),
            (
                "p-scoped-no",
                r#"permit (principal == P::"b", action, resource);"#,
            ),
            (
                "f-or",
                r#"forbid (principal, action, resource) when { context.n == 1 && (context has s || context.n == 1) };"#,
            ),
        ];
        let policies: Vec<Policy> = texts
            .iter()
            .map(|(id, t)| Policy::parse(Some(PolicyId::new(*id)), *t).unwrap())
            .collect();
        let context = Context::from_json_str(r#"{"n": 1, "s": "abc"}"#, None).unwrap();
        let request = cedar_policy::Request::new(
            EntityUid::from_str(r#"P::"a""#).unwrap(),
            EntityUid::from_str(r#"A::"x""#).unwrap(),
            EntityUid::from_str(r#"R::"r""#).unwrap(),
            context,
            None,
        )
        .unwrap();
        let entities = Entities::empty();

        let list = PolicyList::new(policies.iter().chain(&policies));
        assert_eq!(list.ids().count(), texts.len(), "each policy once");
        let mut tally = Tally::default();
        list.evaluate(&evaluator(&request, &entities), &mut tally);

        let set = PolicySet::from_policies(policies.clone()).unwrap();
        let response = Authorizer::new().is_authorized(&request, &set, &entities);
        let mut satisfied: Vec<&str> = tally
            .permits
            .iter()
            .chain(&tally.forbids)
            .copied()
            .collect();
        satisfied.sort_unstable();
        // The authorizer's reasons are the forbids when one is satisfied, else the permits.
        let mut forbids = tally.forbids.clone();
        forbids.sort_unstable();
        assert_eq!(forbids, ["f-cond", "f-or"]);
        assert_eq!(sorted(response.diagnostics().reason()), forbids);
        let mut permits = tally.permits.clone();
        permits.sort_unstable();
        assert_eq!(permits, ["p-cond", "p-scoped", "p-true"]);
        let mut errors = tally.errors.clone();
        errors.sort();
        assert_eq!(errors, sorted(response.diagnostics().errors()));
        assert_eq!(errors.len(), 2);
        assert_eq!(satisfied.len(), 5);

        // Without the forbids, the authorizer's reasons are the very permits of the list.
        let permits_only: Vec<Policy> = policies
            .iter()
            .filter(|p| p.effect() == cedar_policy::Effect::Permit)
            .cloned()
            .collect();
        let set = PolicySet::from_policies(permits_only).unwrap();
        let response = Authorizer::new().is_authorized(&request, &set, &entities);
        assert_eq!(sorted(response.diagnostics().reason()), permits);
    }

    fn sorted<T: ToString>(items: impl Iterator<Item = T>) -> Vec<String> {
        let mut out: Vec<String> = items.map(|i| i.to_string()).collect();
        out.sort();
        out
    }
}
