//! Loops `decide` on one request of the generated estate, for a profiler:
//! `cargo run --release -p meshauthz-bench --example profile_decide -- 1000 hit 2000000`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "profiling tool")]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(1000, |a| a.parse().unwrap());
    let which = args.get(2).map_or("hit", String::as_str);
    let rounds: usize = args.get(3).map_or(1_000_000, |a| a.parse().unwrap());
    let estate = meshauthz_bench::generate(n, 7);
    let compiled = meshauthz_bench::compile(&estate).unwrap();
    let snapshot = authz_engine::Snapshot::build(compiled, 1).unwrap();
    // The named requests of the estate, and `anon-first`: the first plaintext request the
    // Envoy runs send.
    let anonymous = meshauthz_bench::anonymous_allowed(&estate);
    let req = match which {
        "anon-first" => &anonymous.first().unwrap().1,
        _ => {
            &estate
                .requests
                .iter()
                .find(|(name, _)| *name == which)
                .unwrap()
                .1
        }
    };
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(authz_engine::decide(&snapshot, req));
    }
    let d = authz_engine::decide(&snapshot, req);
    println!(
        "{which} at {n}: {:?} per decision, {:?} {:?}",
        t.elapsed() / rounds as u32,
        d.verdict,
        d.reason
    );
}
