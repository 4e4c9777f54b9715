#!/usr/bin/env bash
# How long a gateway holds each request, from its own syscalls: the time
# from the `recvfrom` that brought a request in to the `writev` that sent it
# upstream (the request path), and from the `recvfrom` that brought the
# upstream's answer to the `writev` that answered the client (the response
# path). Both are the gateway's own work plus its thread's scheduling, free
# of the load generator's and the upstream's noise, which is what the
# end-to-end latency rows of `loadbench` are drowned in at low rates.
#
#   scripts/gateway-gaps.sh PORT [RATE] [SECS]
#
# PORT is a gateway already listening (the sidecar on a route of
# `scripts/bench-route.yaml`, or `loadbench proxy`) in front of
# `loadbench upstream`; RATE (req/s, default 200) and SECS (default 3) are
# the open-loop load `loadbench drive` sends it. Needs `perf` (its `trace`
# subcommand) and permission to trace the gateway; `perf trace` adds a few
# microseconds to every syscall, so compare gateways measured the same way,
# alternated, never with figures taken without it.
set -euo pipefail
port=$1
rate=${2:-200}
secs=${3:-3}
bin=${CARGO_TARGET_DIR:-target}/release
pid=$(ss -ltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
[ -n "$pid" ] || { echo "nothing listens on port $port" >&2; exit 2; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout "$((${secs%.*} + 3))" perf trace -p "$pid" -e recvfrom,writev -o "$out" 2>/dev/null &
tracer=$!
sleep 0.5
"$bin/loadbench" drive --target "127.0.0.1:$port" --rate "$rate" --secs "$secs" >/dev/null
wait "$tracer" || true
python3 - "$out" "$port" <<'PY'
import re, sys

path, port = sys.argv[1], sys.argv[2]
# `loadbench drive` warms up with a closed loop for its first 0.5 s.
WARM_MS = 700.0
last, paths = {}, {"request": [], "response": []}
line_re = re.compile(r"\s*([\d.]+) \(\s*([\d.]+) ms\): (\S+) (\w+)\(fd: \d+.*= (-?\d+)")
for line in open(path):
    m = line_re.match(line)
    if not m or float(m[1]) < WARM_MS:
        continue
    t, took, thread, call, ret = float(m[1]), float(m[2]), m[3], m[4], int(m[5])
    if call == "recvfrom" and ret > 0:
        # The upstream's answer (≈400 bytes) is larger than the request (≈220).
        last[thread] = ("response" if ret > 300 else "request", t + took)
    elif call == "writev" and thread in last:
        kind, since = last.pop(thread)
        paths[kind].append((t - since) * 1000)

def q(v, p):
    return sorted(v)[min(len(v) - 1, int(len(v) * p))] if v else float("nan")

print(f"port {port}: " + "; ".join(
    f"{k} path n={len(v)} p50={q(v, .5):.0f} p90={q(v, .9):.0f} p99={q(v, .99):.0f} µs" for k, v in paths.items()))
PY
