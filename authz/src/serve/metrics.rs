//! Prometheus metrics of `meshauthz serve`, served as text on the admin port's `/metrics`.
//!
//! State owned: the registry and a handle on every metric. Labels are bounded: verdicts, known
//! workloads (`<unresolved>` for anything else), `jwksUri`s named by policy, policy actions and
//! gRPC codes; never paths, principals or other client-supplied values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The workload label of a request whose workload could not be chosen.
pub const UNRESOLVED: &str = "<unresolved>";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub verdict: &'static str,
    pub workload: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    pub uri: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
    pub grpc_code: &'static str,
}

/// Decision latency buckets: 1 µs to 100 ms.
const LATENCY_BUCKETS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 1e-1,
];

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub decision_duration: Histogram,
    pub reloads: Counter,
    pub reload_errors: Counter,
    pub generation: Gauge,
    pub jwks_fetches: Family<JwksLabels, Counter>,
    pub unresolved_workloads: Counter,
    pub dry_run_matches: Family<ActionLabels, Counter>,
    pub audit_matches: Counter,
    pub internal_errors: Counter,
    pub grpc_handled: Family<GrpcLabels, Counter>,
    pub kube_watch_errors: Family<ResourceLabels, Counter>,
    pub kube_stale_seconds: Gauge,
    pub kube_invalid_objects: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        // Counters get the `_total` suffix from the registry.
        registry.register(
            "meshauthz_decisions",
            "Authorization decisions by verdict and destination workload",
            decisions.clone(),
        );
        let decision_duration = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "meshauthz_decision_duration_seconds",
            "Time to answer one Check, from receipt of the request to the response",
            decision_duration.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "meshauthz_reloads",
            "Policy reloads applied after the startup load",
            reloads.clone(),
        );
        let reload_errors = Counter::default();
        registry.register(
            "meshauthz_reload_errors",
            "Policy changes not applied because a resource was invalid (the last good snapshot kept serving)",
            reload_errors.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "meshauthz_snapshot_generation",
            "Generation of the policy snapshot being served",
            generation.clone(),
        );
        let jwks_fetches = Family::<JwksLabels, Counter>::default();
        registry.register(
            "meshauthz_jwks_fetches",
            "jwksUri fetches by URI and result (success, failure)",
            jwks_fetches.clone(),
        );
        let unresolved_workloads = Counter::default();
        registry.register(
            "meshauthz_unresolved_workloads",
            "Checks denied because the destination workload was unknown or ambiguous",
            unresolved_workloads.clone(),
        );
        let dry_run_matches = Family::<ActionLabels, Counter>::default();
        registry.register(
            "meshauthz_dry_run_matches",
            "Dry-run rules that matched (they never change the verdict), by action",
            dry_run_matches.clone(),
        );
        let audit_matches = Counter::default();
        registry.register(
            "meshauthz_audit_matches",
            "AUDIT rules that matched",
            audit_matches.clone(),
        );
        let internal_errors = Counter::default();
        registry.register(
            "meshauthz_internal_errors",
            "Checks denied because evaluation panicked (a meshauthz bug)",
            internal_errors.clone(),
        );
        let grpc_handled = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by gRPC status code of the call",
            grpc_handled.clone(),
        );
        let kube_watch_errors = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "meshauthz_kubernetes_watch_errors",
            "Kubernetes list/watch failures by watch (each is retried with backoff)",
            kube_watch_errors.clone(),
        );
        let kube_stale_seconds = Gauge::default();
        registry.register(
            "meshauthz_kubernetes_stale_seconds",
            "Seconds the longest-failing Kubernetes watch has been failing (0: all healthy); the last snapshot serves meanwhile",
            kube_stale_seconds.clone(),
        );
        let kube_invalid_objects = Gauge::default();
        registry.register(
            "meshauthz_kubernetes_invalid_objects",
            "Policy objects in the cluster that failed validation (each enforced by its fail-closed stand-in)",
            kube_invalid_objects.clone(),
        );
        Metrics {
            registry,
            kube_watch_errors,
            kube_stale_seconds,
            kube_invalid_objects,
            decisions,
            decision_duration,
            reloads,
            reload_errors,
            generation,
            jwks_fetches,
            unresolved_workloads,
            dry_run_matches,
            audit_matches,
            internal_errors,
            grpc_handled,
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# error encoding metrics\n");
        }
        out
    }

    /// The `Content-Type` of [`Metrics::render`].
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new();
        m.decisions
            .get_or_create(&DecisionLabels {
                verdict: "ALLOW",
                workload: "foo/bar".into(),
            })
            .inc();
        m.decision_duration.observe(3e-6);
        m.unresolved_workloads.inc();
        let text = m.render();
        assert!(
            text.contains(r#"meshauthz_decisions_total{verdict="ALLOW",workload="foo/bar"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("meshauthz_decision_duration_seconds_bucket{le=\"5e-06\"} 1"),
            "{text}"
        );
        assert!(text.contains("meshauthz_unresolved_workloads_total 1"));
        assert!(text.contains("meshauthz_reload_errors_total 0"));
        assert!(text.contains("meshauthz_snapshot_generation 0"));
    }
}
