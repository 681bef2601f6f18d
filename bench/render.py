#!/usr/bin/env python3
"""Renders BENCHMARKS.md (and bench/decide.svg) from the outputs bench/run collects."""
import json, os, platform, re, subprocess, sys

estate_file, criterion_file = sys.argv[1], sys.argv[2]
estates = [json.loads(l) for l in open(estate_file) if l.strip()]
UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
times = {}
for line in open(criterion_file, encoding="utf-8"):
    m = re.match(r"^(\S+)\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
    if m:
        times[m.group(1)] = float(m.group(2)) * UNITS[m.group(3)]

def cpu():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()

def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"

sizes = [10, 1000, 10000]
print("# Benchmarks\n")
print("Produced by `bench/run`. Machine: %s, %d cores; %s. Every ratio compares two figures from"
      " this same run.\n" % (cpu(), os.cpu_count() or 0, version(["rustc", "--version"])))
print("## Decision latency (criterion median), engine vs naive Cedar\n")
print("The naive baseline is the same Cedar policies in one PolicySet (with the global form of"
      " Istio's default rule), evaluated directly; the benchmark checks both decide alike.\n")
print("| policies | request | meshauthz | naive | naive / meshauthz |")
print("|---|---|---|---|---|")
for n in sizes:
    for req in ["hit", "late", "miss", "deny"]:
        ours = times.get("decide/%d/%s" % (n, req))
        naive = times.get("naive/%d/%s" % (n, req))
        if ours is None:
            continue
        ratio = "%.0fx" % (naive / ours) if naive else "-"
        naive_s = "%.1f µs" % naive if naive else "-"
        print("| %d | %s | %.2f µs | %s | %s |" % (n, req, ours, naive_s, ratio))
small = times.get("decide/10/hit")
big = times.get("decide/10000/hit")
if small and big:
    print("\nmeshauthz at 10,000 policies / at 10 policies: **%.2fx** (target <= 1.5x)." % (big / small))
print("\n## Build and memory\n")
print("| policies | load | compile | snapshot build | classes | resident memory |")
print("|---|---|---|---|---|---|")
for e in estates:
    print("| %d | %.0f ms | %.0f ms | %.0f ms | %d | %.0f MiB |" % (
        e["policies"], e["load_ms"], e["compile_ms"], e["snapshot_build_ms"], e["classes"], e["rss_mib"]))
cold, cached = times.get("jwt/cold"), times.get("jwt/cached")
if cold and cached:
    print("\n## JWT (a request with an RS256 token, one policy requiring it)\n")
    print("| verification | decision |\n|---|---|")
    print("| cold (signature checked every time) | %.2f µs |" % cold)
    print("| cached (verified-token cache hit) | %.2f µs |" % cached)
    print("\nCold / cached: **%.1fx**." % (cold / cached))
print("\n![decision latency](bench/decide.svg)\n")
print("Not measured yet (issue 6): ext_authz throughput vs a no-op server, Envoy with no authz /"
      " RBAC / ext_authz / native filter under wrk, one-policy incremental update.")

# A small log-log chart: latency vs policy count, ours and naive.
W, H, L, B = 560, 320, 70, 40
pts = {"meshauthz": [(n, times.get("decide/%d/hit" % n)) for n in sizes],
       "naive": [(n, times.get("naive/%d/hit" % n)) for n in sizes]}
import math
ys = [v for s in pts.values() for _, v in s if v]
lo, hi = math.log10(min(ys)) - 0.2, math.log10(max(ys)) + 0.2
def x(n): return L + (math.log10(n) - 1) / 3 * (W - L - 20)
def y(v): return H - B - (math.log10(v) - lo) / (hi - lo) * (H - B - 20)
svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
       '<rect width="100%" height="100%" fill="white"/>',
       '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - 20, H - B),
       '<line x1="%d" y1="20" x2="%d" y2="%d" stroke="black"/>' % (L, L, H - B)]
for n in sizes:
    svg.append('<text x="%.0f" y="%d" text-anchor="middle">%d</text>' % (x(n), H - B + 16, n))
for e in range(int(math.floor(lo)), int(math.ceil(hi)) + 1):
    v = 10 ** e
    if lo <= e <= hi:
        svg.append('<text x="%d" y="%.0f" text-anchor="end">%s µs</text>' % (L - 6, y(v) + 4, ("%g" % v)))
for name, color in [("meshauthz", "#1f77b4"), ("naive", "#d62728")]:
    p = [(x(n), y(v)) for n, v in pts[name] if v]
    svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (color, " ".join("%.1f,%.1f" % q for q in p)))
    if p:
        svg.append('<text x="%.0f" y="%.0f" fill="%s">%s</text>' % (p[-1][0] - 60, p[-1][1] - 8, color, name))
svg.append('<text x="%d" y="%d" text-anchor="middle">policies (log)</text>' % ((W + L) // 2, H - 6))
svg.append("</svg>")
with open("bench/decide.svg", "w") as f:
    f.write("\n".join(svg))
