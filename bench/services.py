#!/usr/bin/env python3
"""The service benchmarks of bench/run (issue 6), written as JSON for bench/render.py.

0. memory: `meshauthz serve` holding the 10,000-policy estate against the same server holding none.
1. ext_authz gRPC: `meshauthz serve` (release, the 1,000-policy estate) against the no-op server
   `noop-authz`, with the same load generator settings (`grpc-load`): a closed-loop maximum-
   throughput phase and an open-loop fixed-rate phase, two rounds, servers alternating.
2. Envoy under wrk: one upstream Envoy answering 200 from a direct_response route, and a sidecar
   Envoy in front of it in four configurations (no authz; Envoy RBAC equivalent to the policies
   of the benchmarked workload; ext_authz to `meshauthz serve`; the native module), two rounds
   interleaved, each run checked for non-2xx answers, each configuration first checked to allow
   the allowed mix and deny the denied one.

usage: services.py OUT_DIR RESULT_JSON [--quick]
Needs: target/release/{meshauthz,estate,grpc-load,noop-authz,libmeshauthz_filter.so}, $ENVOY,
wrk on PATH. Every process it starts is stopped by pid before it returns.
"""
import json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request

out_dir, result_file = sys.argv[1], sys.argv[2]
quick = "--quick" in sys.argv[3:]
root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
release = os.path.join(root, "target", "release")
envoy_bin = os.environ["ENVOY"]
POLICIES = 1000
GRPC_SECONDS = 3 if quick else 10
WRK_SECONDS = 3 if quick else 10
ROUNDS = 1 if quick else 2
OPEN_RATE = 2000
GRPC_CLIENT = ["--connections", "4", "--streams", "64", "--threads", "2",
               "--warmup", "1" if quick else "2"]
WRK_THREADS, WRK_CONNECTIONS = 1, 16
ENVOY_CONCURRENCY = 1

procs = []


def log(msg):
    print("services: " + msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(cmd, name, env=None):
    err = open(os.path.join(out_dir, name + ".log"), "w")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=out_dir)
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in procs:
        procs.remove(p)


def first_line(p, what):
    line = p.stdout.readline()
    if not line:
        raise SystemExit("%s did not start (see %s/*.log)" % (what, out_dir))
    return line.strip()


def grpc_load(target, pid, label, extra):
    cmd = [os.path.join(release, "grpc-load"), "--target", target, "--policies", str(POLICIES),
           "--duration", str(GRPC_SECONDS), "--server-pid", str(pid), "--label", label] + GRPC_CLIENT + extra
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    log("%-32s %-6s %8.0f Checks/s  p50 %6.0f µs  p99 %6.0f µs  server CPU %5.1f µs/Check  errors %d mismatches %s"
        % (label, r["mode"], r["rps"], r["p50_us"], r["p99_us"], r["server_cpu_us_per_check"] or 0,
           r["errors"], r["mismatches"]))
    return r


def start_meshauthz(est, name, env=None):
    p = start([os.path.join(release, "meshauthz"), "serve", "--policies", os.path.join(est, "policies.yaml"),
               "--mesh", os.path.join(est, "mesh.yaml"), "--grpc-addr", "127.0.0.1:0",
               "--admin-addr", "127.0.0.1:0"], name, env)
    line = first_line(p, "meshauthz serve")
    m = re.search(r"grpc=(\S+) admin=(\S+)", line)
    if not m:
        raise SystemExit("unexpected meshauthz output: " + line)
    return p, m.group(1), m.group(2)


def grpc_phase(est):
    noop = start([os.path.join(release, "noop-authz"), "127.0.0.1:0"], "noop")
    noop_addr = first_line(noop, "noop-authz").split("grpc=")[1]
    mesh, mesh_addr, _ = start_meshauthz(est, "meshauthz-grpc")
    quiet_env = dict(os.environ, RUST_LOG="info,meshauthz::decision=warn")
    mesh_quiet, quiet_addr, _ = start_meshauthz(est, "meshauthz-grpc-nolog", quiet_env)
    servers = [("noop", noop, noop_addr, []), ("meshauthz", mesh, mesh_addr, ["--expect"]),
               ("meshauthz-nolog", mesh_quiet, quiet_addr, ["--expect"])]
    runs = []
    for rnd in range(ROUNDS):
        order = servers if rnd % 2 == 0 else list(reversed(servers))
        for name, p, addr, extra in order:
            runs.append(dict(grpc_load(addr, p.pid, name, extra), round=rnd, server=name))
        for name, p, addr, extra in order:
            if name == "meshauthz-nolog":
                continue
            runs.append(dict(grpc_load(addr, p.pid, name, extra + ["--rate", str(OPEN_RATE)]),
                             round=rnd, server=name))
    for p in (noop, mesh, mesh_quiet):
        stop(p)
    return runs


# ---------------------------------------------------------------- Envoy

def hcm(filters, route_extra=None):
    vhost = {"name": "workload", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}
    if route_extra:
        vhost.update(route_extra)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_http",
        "normalize_path": False, "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "route_config": {"name": "inbound", "virtual_hosts": [vhost]},
        "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}


def cluster(name, port, http2=False):
    c = {"name": name, "type": "STATIC", "connect_timeout": "0.25s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
             "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    if http2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def bootstrap(admin_port, listeners, clusters):
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


def listener(port, chain):
    return {"name": "inbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [chain]}]}


def upstream_config(port, admin):
    direct = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    return bootstrap(admin, [listener(port, direct)], [])


def sidecar_configs(est, port, admin, upstream_port, authz_port):
    rbac = json.load(open(os.path.join(est, "rbac.json")))
    workload = rbac["workload"]
    up = cluster("upstream", upstream_port)
    ext_authz = {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "meshauthz"}, "timeout": "0.25s"},
        "failure_mode_allow": False, "status_on_error": {"code": 503},
        "include_peer_certificate": True, "include_tls_session": True, "encode_raw_headers": True}}
    per_vhost = {"typed_per_filter_config": {"envoy.filters.http.ext_authz": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "check_settings": {"context_extensions": {"workload": workload}}}}}
    native = {"name": "envoy.extensions.filters.http.dynamic_modules", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "meshauthz_filter", "do_not_close": True},
        "filter_name": "meshauthz",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps({
            "workload": workload, "policies": [os.path.join(est, "policies.yaml")],
            "mesh": os.path.join(est, "mesh.yaml")})}}}
    rbac_filters = [f for f in (rbac["deny"], rbac["allow"]) if f]
    return {
        "none": bootstrap(admin, [listener(port, hcm([]))], [up]),
        "rbac": bootstrap(admin, [listener(port, hcm(rbac_filters))], [up]),
        "ext_authz": bootstrap(admin, [listener(port, hcm([ext_authz], per_vhost))],
                               [up, cluster("meshauthz", authz_port, http2=True)]),
        "native": bootstrap(admin, [listener(port, hcm([native]))], [up]),
    }, rbac


def start_envoy(config, name, admin):
    path = os.path.join(out_dir, name + ".json")
    with open(path, "w") as f:
        json.dump(config, f)
    env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=release)
    p = start([envoy_bin, "-c", path, "--concurrency", str(ENVOY_CONCURRENCY), "--disable-hot-restart",
               "--log-level", "warn"], name, env)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            raise SystemExit("envoy %s exited (see %s/%s.log)" % (name, out_dir, name))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/ready" % admin, timeout=1) as r:
                if r.status == 200:
                    return p
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("envoy %s not ready" % name)


def status_of(port, req):
    r = urllib.request.Request("http://127.0.0.1:%d%s" % (port, req["path"]), method=req["method"],
                               headers={"Host": req["host"]}, data=b"" if req["method"] == "POST" else None)
    try:
        with urllib.request.urlopen(r, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def wrk_script(mix):
    lines = ["local reqs = {}", "local i = 0", "init = function(args)"]
    for n, r in enumerate(mix["allow"]):
        lines.append('  reqs[%d] = wrk.format(%s, %s, {Host = %s})'
                     % (n + 1, json.dumps(r["method"]), json.dumps(r["path"]), json.dumps(r["host"])))
    lines += ["end", "request = function()", "  i = i % #reqs + 1", "  return reqs[i]", "end"]
    path = os.path.join(out_dir, "mix.lua")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6}


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (USER_HZ = 100)."""
    try:
        fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100.0
    except (OSError, IndexError, ValueError):
        return None


def wrk(port, script, label, rnd, pids):
    cmd = ["wrk", "-t%d" % WRK_THREADS, "-c%d" % WRK_CONNECTIONS, "-d%ds" % WRK_SECONDS, "--latency",
           "-s", script, "http://127.0.0.1:%d/" % port]
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    after = {k: cpu_seconds(p) for k, p in pids.items()}
    pct = {}
    for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        pct[int(m.group(1))] = float(m.group(2)) * UNIT[m.group(3)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r = {"config": label, "round": rnd, "rps": float(rps.group(1)) if rps else 0.0,
         "requests": int(total.group(1)) if total else 0,
         "non2xx": int(non2xx.group(1)) if non2xx else 0,
         "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
         "p50_us": pct.get(50), "p90_us": pct.get(90), "p99_us": pct.get(99)}
    # CPU per request of the processes doing the proxying and authorizing (sidecar Envoy, and
    # meshauthz serve for ext_authz), which the shared 2 cores do not distort as much as req/s.
    for k in pids:
        if before[k] is not None and after[k] is not None and r["requests"]:
            r["cpu_us_per_request_" + k] = (after[k] - before[k]) * 1e6 / r["requests"]
    log("envoy %-10s round %d %8.0f req/s  p50 %6.0f µs  p99 %6.0f µs  non-2xx %d  socket errors %d  CPU µs/req %s"
        % (label, rnd, r["rps"], r["p50_us"] or 0, r["p99_us"] or 0, r["non2xx"], r["socket_errors"],
           {k[len("cpu_us_per_request_"):]: round(v, 1) for k, v in r.items() if k.startswith("cpu_us")}))
    return r


def envoy_phase(est):
    mix = json.load(open(os.path.join(est, "http-mix.json")))
    script = wrk_script(mix)
    up_port, up_admin = free_port(), free_port()
    upstream = start_envoy(upstream_config(up_port, up_admin), "envoy-upstream", up_admin)
    mesh, mesh_addr, _ = start_meshauthz(est, "meshauthz-envoy")
    port, admin = free_port(), free_port()
    configs, rbac = sidecar_configs(est, port, admin, up_port, int(mesh_addr.rsplit(":", 1)[1]))
    checks, runs = {}, []
    for rnd in range(ROUNDS):
        order = list(configs) if rnd % 2 == 0 else list(reversed(list(configs)))
        for label in order:
            p = start_envoy(configs[label], "envoy-" + label, admin)
            if label not in checks:
                got = {"allow": [status_of(port, r) for r in mix["allow"]],
                       "deny": [status_of(port, r) for r in mix["deny"]]}
                want_deny = 200 if label == "none" else 403
                ok = all(s == 200 for s in got["allow"]) and all(s == want_deny for s in got["deny"])
                checks[label] = {"statuses": got, "ok": ok}
                log("envoy %-10s check: allowed mix %s, denied mix %s" % (label, got["allow"], got["deny"]))
                if not ok:
                    stop(p)
                    raise SystemExit("envoy %s does not answer as the policies say: %s" % (label, got))
            # Warm-up (connections, caches), not recorded.
            subprocess.run(["wrk", "-t1", "-c%d" % WRK_CONNECTIONS, "-d1s", "-s", script,
                            "http://127.0.0.1:%d/" % port], check=True, capture_output=True)
            pids = {"envoy": p.pid}
            if label == "ext_authz":
                pids["meshauthz"] = mesh.pid
            runs.append(wrk(port, script, label, rnd, pids))
            stop(p)
    stop(mesh)
    stop(upstream)
    return {"runs": runs, "checks": checks, "mix": mix,
            "rbac": {k: rbac[k] for k in ("deny_rules", "allow_rules", "audit_skipped")}}


# ---------------------------------------------------------------- memory

def status_kib(pid):
    """VmRSS, RssAnon, RssFile and VmHWM of a process, in KiB."""
    out = {}
    for line in open("/proc/%d/status" % pid):
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


def memory_phase():
    """`meshauthz serve` holding the 10,000-policy estate, and the same server with no policy
    (the baseline: runtime, allocator and mapped code), both idle after loading."""
    est = os.path.join(out_dir, "estate-10000")
    subprocess.run([os.path.join(release, "estate"), "10000", "--write", est], check=True,
                   stdout=subprocess.DEVNULL)
    empty = os.path.join(out_dir, "empty.yaml")
    open(empty, "w").close()
    result = {}
    for name, args in (("empty", ["--policies", empty]),
                       ("10000", ["--policies", os.path.join(est, "policies.yaml"),
                                  "--mesh", os.path.join(est, "mesh.yaml")])):
        p = start([os.path.join(release, "meshauthz"), "serve"] + args +
                  ["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"], "memory-" + name)
        first_line(p, "meshauthz serve")  # printed once the first snapshot serves
        time.sleep(2)  # the allocator returns freed pages after a delay
        result[name] = status_kib(p.pid)
        stop(p)
        log("serve with %s policies: RSS %d KiB (anonymous %d KiB), peak %d KiB" % (
            name, result[name]["VmRSS"], result[name]["RssAnon"], result[name]["VmHWM"]))
    return result


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def main():
    est = os.path.join(out_dir, "estate")
    subprocess.run([os.path.join(release, "estate"), str(POLICIES), "--write", est], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        memory = memory_phase()
        grpc = grpc_phase(est)
        envoy = envoy_phase(est)
    finally:
        for p in list(procs):
            stop(p)
    envoy_version = subprocess.run([envoy_bin, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: [0-9a-f]+/([^/\s]+)/", envoy_version)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    result = {
        "quick": quick, "policies": POLICIES, "memory": memory,
        "grpc": {"runs": grpc, "seconds": GRPC_SECONDS, "rounds": ROUNDS, "open_rate": OPEN_RATE,
                 "client": " ".join(GRPC_CLIENT)},
        "envoy": dict(envoy, seconds=WRK_SECONDS, rounds=ROUNDS, wrk_threads=WRK_THREADS,
                      wrk_connections=WRK_CONNECTIONS, concurrency=ENVOY_CONCURRENCY),
        "versions": {"envoy": m.group(1) if m else envoy_version.strip()[:80],
                     "wrk": (wrk_version.stdout + wrk_version.stderr + "?").strip().split(" [")[0]},
    }
    with open(result_file, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
