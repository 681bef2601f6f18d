//! A load generator for Envoy's ext_authz gRPC API (`envoy.service.auth.v3.Authorization/Check`),
//! used by `bench/run` to compare `meshauthz serve` with the no-op server (`noop-authz`) under the
//! same client settings.
//!
//! The request mix is the generated estate's named requests against `ns-0/svc-0` (hit the first
//! rule, match late, miss every rule, hit a mesh-wide DENY), sent round-robin, each shaped like
//! what Envoy's ext_authz filter sends with `encode_raw_headers: true` (peer principal, source and
//! destination addresses, raw header map with pseudo-headers, `context_extensions.workload`).
//!
//! Two modes, one per run:
//! - closed loop (default): `--streams` concurrent callers over `--connections` HTTP/2
//!   connections, each sending its next Check as soon as the previous answer arrives: the
//!   maximum throughput the client and server reach together;
//! - open loop (`--rate R`): Checks are started on a fixed schedule of R per second, whatever the
//!   answers do (tokio's timer fires every millisecond, so they leave in small bursts); latency
//!   is measured from the moment each Check is sent.
//!
//! Latency is per Check, start of the call to the decoded answer. With `--expect` every answer's
//! gRPC status is compared with the engine's verdict (OK for allow, PERMISSION_DENIED for deny);
//! with `--server-pid` the server's CPU time (user + system, from /proc) over the measured
//! interval is reported, per Check. Prints one JSON object.
//!
//! ```text
//! grpc-load --target 127.0.0.1:9191 [--policies 1000] [--connections 4] [--streams 64]
//!           [--duration 10] [--warmup 2] [--rate 2000] [--threads 2] [--expect]
//!           [--server-pid PID] [--label NAME]
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use authz_engine::RequestAttrs;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, HeaderMap, HeaderValue, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone)]
struct Args {
    target: String,
    policies: usize,
    connections: usize,
    streams: usize,
    duration: f64,
    warmup: f64,
    rate: Option<f64>,
    threads: usize,
    expect: bool,
    server_pid: Option<u32>,
    label: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        target: String::new(),
        policies: 1000,
        connections: 4,
        streams: 64,
        duration: 10.0,
        warmup: 2.0,
        rate: None,
        threads: 2,
        expect: false,
        server_pid: None,
        label: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--expect" {
            args.expect = true;
            continue;
        }
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow!("{flag} {value}: {e}");
        match flag.as_str() {
            "--target" => args.target = value,
            "--policies" => args.policies = value.parse().map_err(|e| bad(&e))?,
            "--connections" => args.connections = value.parse().map_err(|e| bad(&e))?,
            "--streams" => args.streams = value.parse().map_err(|e| bad(&e))?,
            "--duration" => args.duration = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => args.warmup = value.parse().map_err(|e| bad(&e))?,
            "--rate" => args.rate = Some(value.parse().map_err(|e| bad(&e))?),
            "--threads" => args.threads = value.parse().map_err(|e| bad(&e))?,
            "--server-pid" => args.server_pid = Some(value.parse().map_err(|e| bad(&e))?),
            "--label" => args.label = value,
            _ => bail!("unknown flag {flag}"),
        }
    }
    if args.target.is_empty() {
        bail!("--target HOST:PORT is required");
    }
    if args.connections == 0 || args.streams == 0 || args.threads == 0 {
        bail!("--connections, --streams and --threads must be at least 1");
    }
    Ok(args)
}

fn peer(ip: Option<std::net::IpAddr>, port: u32, principal: Option<&str>) -> Peer {
    Peer {
        address: ip.map(|ip| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_string(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: principal.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// The CheckRequest Envoy's HTTP ext_authz filter would send for `attrs`.
fn check_request(attrs: &RequestAttrs) -> CheckRequest {
    let mut headers = vec![
        (":authority".to_string(), attrs.host.clone()),
        (":path".to_string(), attrs.path.clone()),
        (":method".to_string(), attrs.method.clone()),
        (":scheme".to_string(), "http".to_string()),
    ];
    headers.extend(attrs.headers.iter().cloned());
    let http = HttpRequest {
        id: "1".into(),
        method: attrs.method.clone(),
        path: attrs.path.clone(),
        host: attrs.host.clone(),
        scheme: "http".into(),
        protocol: "HTTP/1.1".into(),
        header_map: Some(HeaderMap {
            headers: headers
                .into_iter()
                .map(|(key, value)| HeaderValue {
                    key,
                    raw_value: value.into_bytes(),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(
                attrs.source_ip,
                41000,
                attrs.source_principal.as_deref(),
            )),
            destination: Some(peer(
                attrs.destination_ip,
                u32::from(attrs.destination_port),
                None,
            )),
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: HashMap::from([("workload".to_string(), attrs.workload.clone())]),
            ..Default::default()
        }),
    }
}

/// One request of the mix: its name, the message, the gRPC code meshauthz should answer.
#[derive(Debug, Clone)]
struct Mixed {
    name: &'static str,
    request: CheckRequest,
    code: i32,
}

fn mix(policies: usize) -> Result<Vec<Mixed>> {
    let estate = meshauthz_bench::generate(policies, 7);
    let snapshot = authz_engine::Snapshot::build(
        meshauthz_bench::compile(&estate).map_err(|e| anyhow!("estate: {e}"))?,
        1,
    )
    .map_err(|e| anyhow!("snapshot: {e:?}"))?;
    Ok(estate
        .requests
        .iter()
        .map(|(name, attrs)| {
            let allow =
                authz_engine::decide(&snapshot, attrs).verdict == authz_engine::Verdict::Allow;
            Mixed {
                name,
                request: check_request(attrs),
                // OK, or PERMISSION_DENIED.
                code: if allow { 0 } else { 7 },
            }
        })
        .collect())
}

/// What one caller saw.
#[derive(Debug, Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    errors: u64,
    mismatches: HashMap<&'static str, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        for (k, v) in other.mismatches {
            *self.mismatches.entry(k).or_default() += v;
        }
    }
}

async fn call(
    client: &mut AuthorizationClient<Channel>,
    item: &Mixed,
    expect: bool,
    tally: &mut Tally,
    record: bool,
) {
    let started = Instant::now();
    let answer = client.check(item.request.clone()).await;
    let elapsed = started.elapsed();
    if !record {
        return;
    }
    match answer {
        Ok(response) => {
            tally
                .latencies_ns
                .push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
            let code = response
                .into_inner()
                .status
                .map(|s| s.code)
                .unwrap_or_default();
            if expect && code != item.code {
                *tally.mismatches.entry(item.name).or_default() += 1;
            }
        }
        Err(_) => tally.errors += 1,
    }
}

/// Closed loop: every stream sends its next Check when the previous one is answered.
async fn closed(
    channels: &[Channel],
    items: &[Mixed],
    args: &Args,
    until: Instant,
    record: bool,
) -> Result<Tally> {
    let mut tasks = Vec::new();
    for s in 0..args.streams {
        let mut client = AuthorizationClient::new(channels[s % channels.len()].clone());
        let items = items.to_vec();
        let expect = args.expect;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // Streams start at different points of the mix.
            let mut k = s;
            while Instant::now() < until {
                call(
                    &mut client,
                    &items[k % items.len()],
                    expect,
                    &mut tally,
                    record,
                )
                .await;
                k += 1;
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await.context("caller task")?);
    }
    Ok(total)
}

/// Open loop: a Check is started every 1/rate seconds, answered or not.
async fn open(
    channels: &[Channel],
    items: &[Mixed],
    args: &Args,
    rate: f64,
    seconds: f64,
    record: bool,
) -> Result<Tally> {
    let start = tokio::time::Instant::now();
    let count = (rate * seconds) as u64;
    let mut tasks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let mut client = AuthorizationClient::new(channels[i as usize % channels.len()].clone());
        let item = items[i as usize % items.len()].clone();
        let expect = args.expect;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            call(&mut client, &item, expect, &mut tally, record).await;
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await.context("caller task")?);
    }
    Ok(total)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)] as f64 / 1e3
}

async fn run(args: Args) -> Result<serde_json::Value> {
    let items = mix(args.policies)?;
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        let endpoint = Endpoint::from_shared(format!("http://{}", args.target))
            .context("target address")?
            .tcp_nodelay(true);
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("connect to {}", args.target))?,
        );
    }
    // Warm-up (not recorded): connections, server caches, allocator.
    if args.warmup > 0.0 {
        match args.rate {
            Some(rate) => {
                open(&channels, &items, &args, rate, args.warmup, false).await?;
            }
            None => {
                let until = Instant::now() + Duration::from_secs_f64(args.warmup);
                closed(&channels, &items, &args, until, false).await?;
            }
        }
    }
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let mut tally = match args.rate {
        Some(rate) => open(&channels, &items, &args, rate, args.duration, true).await?,
        None => {
            let until = started + Duration::from_secs_f64(args.duration);
            closed(&channels, &items, &args, until, true).await?
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(cpu_seconds);
    tally.latencies_ns.sort_unstable();
    let done = tally.latencies_ns.len() as f64;
    let server_cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(serde_json::json!({
        "label": args.label,
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "policies": args.policies,
        "connections": args.connections,
        "streams": args.streams,
        "seconds": elapsed,
        "requests": tally.latencies_ns.len(),
        "errors": tally.errors,
        "mismatches": tally.mismatches,
        "rps": done / elapsed,
        "p50_us": percentile(&tally.latencies_ns, 0.50),
        "p90_us": percentile(&tally.latencies_ns, 0.90),
        "p99_us": percentile(&tally.latencies_ns, 0.99),
        "max_us": percentile(&tally.latencies_ns, 1.0),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_check": server_cpu.map(|c| if done > 0.0 { c * 1e6 / done } else { 0.0 }),
    }))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = runtime.block_on(run(args))?;
    println!("{result}");
    Ok(())
}
