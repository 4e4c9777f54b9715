#!/usr/bin/env bash
# Instructions (callgrind) or heap allocations (dhat) per request of the
# release sidecar, or of the loadbench bare proxy, in front of loadbench's
# canned upstream. Sequential requests on one keep-alive connection; the
# counters are zeroed after a warm-up, so start-up is not counted.
#
#   scripts/profile-sidecar.sh [sidecar|proxy] [callgrind|dhat] [NONSTREAM] [STREAM]
#
# Binaries from $CARGO_TARGET_DIR/release (default target/release): build
# them with
#   cargo build --release -p sluice-tests --bin loadbench -p sluice-sidecar --bin sluice-sidecar
# Output files go to $OUT (default /tmp/sluice-profile).
set -euo pipefail
what=${1:-sidecar}
tool=${2:-callgrind}
nonstream=${3:-2000}
stream=${4:-1000}
bin=${CARGO_TARGET_DIR:-target}/release
out=${OUT:-/tmp/sluice-profile}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The upstream exits when its stdin closes: hold it open with a fifo.
fifo=$out/upstream.stdin
rm -f "$fifo"; mkfifo "$fifo"
"$bin/loadbench" upstream --listen 127.0.0.1:0 <"$fifo" >"$out/upstream.out" &
pids+=($!)
exec 9>"$fifo"
for _ in $(seq 100); do grep -q listening "$out/upstream.out" 2>/dev/null && break; sleep 0.05; done
upstream=$(sed -n 's/^listening //p' "$out/upstream.out")

port=$((20000 + RANDOM % 20000))
case $tool in
  # DUMP_INSTR=yes: costs per instruction address; scripts/code-lines.py
  # counts the code lines the requests ran (tests/LOADBENCH.md).
  callgrind) vg=(valgrind --tool=callgrind --callgrind-out-file="$out/$what.callgrind.%p" --dump-instr="${DUMP_INSTR:-no}") ;;
  dhat) vg=(valgrind --tool=dhat --dhat-out-file="$out/$what.dhat.json") ;;
  *) echo "tool: callgrind or dhat" >&2; exit 2 ;;
esac
case $what in
  sidecar)
    sed "s|UPSTREAM|$upstream|" "$here/bench-route.yaml" >"$out/sidecar.yaml"
    RUST_LOG=info "${vg[@]}" "$bin/sluice-sidecar" --config "$out/sidecar.yaml" \
      --listen 127.0.0.1:$port --admin 127.0.0.1:$((port + 1)) 2>"$out/$what.stderr" &
    ;;
  proxy)
    "${vg[@]}" "$bin/loadbench" proxy --listen 127.0.0.1:$port --upstream "$upstream" \
      <"$fifo" >/dev/null 2>"$out/$what.stderr" &
    ;;
esac
pids+=($!)
vpid=$!
python3 "$here/profile_driver.py" "$port" "$nonstream" "$stream" "$tool" "$vpid" "$out" "$what"
