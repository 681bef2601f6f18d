//! `EnforcedIndex`: the enforced Cedar policies of one policy class (DENY forbids, ALLOW
//! permits, undelegable CUSTOM forbids, Istio's default permit), split by what each can match
//! ([`Reach`]), so that a decision evaluates only the policies its request can reach. Leaving out
//! a policy whose condition cannot hold for the request changes no decision: Cedar combines the
//! others the same way (a forbid that matches still wins, the matching permits are the same).
//!
//! State owned: the class's enforced policy lists, built once per snapshot, never changed.
//!
//! A request is evaluated against at most two sets:
//! 1. the policies not indexed by path, of its protocol and for its destination port;
//! 2. HTTP only: the policies indexed under its path key (first two segments), which include
//!    those indexed under its first segment; or, when its key has no set, those under its
//!    first segment.
//!
//! A policy is listed in every set it can reach (a [`PolicyList`] entry, its syntax tree shared).
//! Sets with the same policies are one set, shared between the classes of a snapshot build
//! ([`SetInterner`]): the classes of a namespace reach many of the same namespace-wide and
//! mesh-wide policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cedar_policy::Policy;
use policy_compiler::compile::{path_first_segment, path_index_key, Form, PathKey, Reach};

use crate::attrs::Protocol;
use crate::eval::PolicyList;

#[derive(Debug, Clone, Default)]
pub(crate) struct EnforcedIndex {
    http: ByPort,
    tcp: ByPort,
    /// Path key -> the policies indexed under it and under its first segment.
    by_path_key: HashMap<String, Arc<PolicyList>>,
    /// First segment -> the policies indexed under it, for a path whose key has no set.
    by_first_segment: HashMap<String, Arc<PolicyList>>,
}

/// Policies not indexed by path, by destination port.
#[derive(Debug, Clone, Default)]
struct ByPort {
    /// A port some policy is limited to -> that port's policies and the port-agnostic ones.
    by_port: HashMap<u16, Arc<PolicyList>>,
    /// The port-agnostic policies: what any other port can reach.
    other: Arc<PolicyList>,
}

/// The policy sets built so far in one snapshot build, by their policies (the addresses of the
/// compiled policies, which live as long as the build).
#[derive(Debug, Default)]
pub(crate) struct SetInterner {
    sets: HashMap<Vec<usize>, Arc<PolicyList>>,
}

impl SetInterner {
    /// The set of `policies` (each once), shared with every other class that has the same.
    fn set_of(&mut self, policies: &[&Policy]) -> Arc<PolicyList> {
        let mut key: Vec<usize> = policies
            .iter()
            .map(|p| std::ptr::from_ref::<Policy>(p) as usize)
            .collect();
        key.sort_unstable();
        key.dedup();
        if let Some(set) = self.sets.get(&key) {
            return set.clone();
        }
        let set = Arc::new(PolicyList::new(policies.iter().copied()));
        self.sets.insert(key, set.clone());
        set
    }
}

impl EnforcedIndex {
    pub fn build<'a>(
        policies: impl IntoIterator<Item = (&'a Policy, &'a Reach)>,
        interner: &mut SetInterner,
    ) -> EnforcedIndex {
        let mut http: Vec<(&Policy, Option<&[u16]>)> = Vec::new();
        let mut tcp: Vec<(&Policy, Option<&[u16]>)> = Vec::new();
        let mut keyed: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
        let mut under: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
        for (policy, reach) in policies {
            match (&reach.paths, reach.form) {
                // Path keys are read from the normalized path, which only HTTP requests have.
                (Some(keys), Form::Http) => {
                    for key in keys {
                        match key {
                            PathKey::Key(k) => keyed.entry(k).or_default().push(policy),
                            PathKey::Under(s) => under.entry(s).or_default().push(policy),
                        }
                    }
                }
                _ => {
                    let ports = reach.ports.as_deref();
                    if reach.form != Form::Tcp {
                        http.push((policy, ports));
                    }
                    if reach.form != Form::Http {
                        tcp.push((policy, ports));
                    }
                }
            }
        }
        let mut by_path_key = HashMap::new();
        for (key, list) in &keyed {
            let inherited = under.get(path_first_segment(key)).into_iter().flatten();
            let members: Vec<&Policy> = list.iter().chain(inherited).copied().collect();
            by_path_key.insert(key.to_string(), interner.set_of(&members));
        }
        let mut by_first_segment = HashMap::new();
        for (segment, list) in &under {
            by_first_segment.insert(segment.to_string(), interner.set_of(list));
        }
        EnforcedIndex {
            http: ByPort::build(&http, interner),
            tcp: ByPort::build(&tcp, interner),
            by_path_key,
            by_first_segment,
        }
    }

    /// The non-empty sets a request can reach: of its protocol and port, and (HTTP) of its
    /// normalized path.
    pub fn sets_for<'s>(
        &'s self,
        protocol: Protocol,
        port: u16,
        normalized_path: Option<&str>,
    ) -> impl Iterator<Item = &'s PolicyList> {
        let by_port = match protocol {
            Protocol::Http => &self.http,
            Protocol::Tcp => &self.tcp,
        };
        let unindexed = by_port.by_port.get(&port).unwrap_or(&by_port.other);
        let by_path = normalized_path.and_then(|path| {
            self.by_path_key
                .get(path_index_key(path))
                .or_else(|| self.by_first_segment.get(path_first_segment(path)))
        });
        std::iter::once(&**unindexed)
            .chain(by_path.map(|set| &**set))
            .filter(|set| !set.is_empty())
    }
}

impl ByPort {
    fn build(policies: &[(&Policy, Option<&[u16]>)], interner: &mut SetInterner) -> ByPort {
        let mut other = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        for (policy, limited_to) in policies {
            match limited_to {
                None => other.push(*policy),
                Some(list) => ports.extend(list.iter().copied()),
            }
        }
        ports.sort_unstable();
        ports.dedup();
        let mut by_port = HashMap::new();
        for port in ports {
            let members: Vec<&Policy> = policies
                .iter()
                .filter(|(_, limited_to)| limited_to.is_none_or(|list| list.contains(&port)))
                .map(|(policy, _)| *policy)
                .collect();
            by_port.insert(port, interner.set_of(&members));
        }
        ByPort {
            by_port,
            other: interner.set_of(&other),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use cedar_policy::PolicyId;

    fn policy(id: &str) -> Policy {
        Policy::parse(
            Some(PolicyId::new(id)),
            "permit (principal, action, resource);",
        )
        .unwrap()
    }

    fn reach(form: Form, ports: Option<&[u16]>, paths: Option<&[PathKey]>) -> Reach {
        Reach {
            form,
            ports: ports.map(<[u16]>::to_vec),
            paths: paths.map(<[PathKey]>::to_vec),
        }
    }

    fn key(k: &str) -> PathKey {
        PathKey::Key(k.to_string())
    }

    fn under(s: &str) -> PathKey {
        PathKey::Under(s.to_string())
    }

    /// Which policies each request reaches: every policy that can match it, and no other.
    #[test]
    fn requests_reach_the_policies_that_can_match_them() {
        let table: Vec<(&str, Reach)> = vec![
            ("any", reach(Form::Any, None, None)),
            ("http", reach(Form::Http, None, None)),
            ("tcp", reach(Form::Tcp, None, None)),
            ("tcp-8080", reach(Form::Tcp, Some(&[8080]), None)),
            ("any-15000", reach(Form::Any, Some(&[15000, 15001]), None)),
            ("no-port", reach(Form::Any, Some(&[]), None)),
            ("api-v1", reach(Form::Http, None, Some(&[key("/api/v1")]))),
            (
                "api",
                reach(Form::Http, Some(&[8080]), Some(&[under("/api")])),
            ),
            (
                "both",
                reach(Form::Http, None, Some(&[key("/api/v1"), under("/api")])),
            ),
            ("health", reach(Form::Http, None, Some(&[key("/health")]))),
            // Path keys on a form other than HTTP are not trusted: unindexed.
            ("odd", reach(Form::Any, None, Some(&[key("/x/y")]))),
        ];
        let policies: Vec<(Policy, Reach)> = table
            .iter()
            .map(|(id, r)| (policy(id), r.clone()))
            .collect();
        let index = EnforcedIndex::build(
            policies.iter().map(|(p, r)| (p, r)),
            &mut SetInterner::default(),
        );
        let reached = |protocol, port, path: Option<&str>| -> Vec<String> {
            let mut ids: Vec<String> = index
                .sets_for(protocol, port, path)
                .flat_map(|s| s.ids().map(ToString::to_string))
                .collect();
            ids.sort();
            ids
        };
        let cases: Vec<(Protocol, u16, Option<&str>, Vec<&str>)> = vec![
            (
                Protocol::Http,
                80,
                Some("/api/v1/items"),
                vec!["any", "api", "api-v1", "both", "http", "odd"],
            ),
            (
                Protocol::Http,
                80,
                Some("/api/v2"),
                vec!["any", "api", "both", "http", "odd"],
            ),
            (
                Protocol::Http,
                80,
                Some("/health"),
                vec!["any", "health", "http", "odd"],
            ),
            (
                Protocol::Http,
                80,
                Some("/other"),
                vec!["any", "http", "odd"],
            ),
            (
                Protocol::Http,
                15001,
                Some("/"),
                vec!["any", "any-15000", "http", "odd"],
            ),
            (
                Protocol::Tcp,
                8080,
                None,
                vec!["any", "odd", "tcp", "tcp-8080"],
            ),
            (
                Protocol::Tcp,
                15000,
                None,
                vec!["any", "any-15000", "odd", "tcp"],
            ),
            (Protocol::Tcp, 9, None, vec!["any", "odd", "tcp"]),
        ];
        for (protocol, port, path, want) in cases {
            assert_eq!(
                reached(protocol, port, path),
                want,
                "{protocol:?} port {port} path {path:?}"
            );
        }
    }

    #[test]
    fn empty_sets_are_not_evaluated() {
        let only_tcp = [(policy("t"), reach(Form::Tcp, None, None))];
        let index = EnforcedIndex::build(
            only_tcp.iter().map(|(p, r)| (p, r)),
            &mut SetInterner::default(),
        );
        assert_eq!(index.sets_for(Protocol::Http, 80, Some("/")).count(), 0);
        assert_eq!(index.sets_for(Protocol::Tcp, 80, None).count(), 1);
    }
}
