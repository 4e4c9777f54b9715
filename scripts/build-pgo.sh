#!/usr/bin/env bash
# Builds the release sidecar with profile-guided optimisation (PGO): an
# instrumented build serves a training load — every provider adapter,
# stream and non-stream, the OpenAI and Anthropic ingresses, embeddings,
# a budget, refusals — and the release build is then laid out and inlined
# by what that load ran. What it buys, measured: tests/LOADBENCH.md, "PGO".
#
#   scripts/build-pgo.sh            # → $CARGO_TARGET_DIR/pgo/sluice-sidecar
#
# Needs an llvm-profdata that reads the raw profiles of rustc's LLVM
# (`rustc -vV`): `rustup component add llvm-tools`, or a distribution's
# LLVM as new (Debian bookworm: `apt-get install llvm-19` reads rustc
# 1.95's); set LLVM_PROFDATA to choose one. Three release builds (the
# training drivers, instrumented, optimised): ≈15 minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
work=$target/pgo
mkdir -p "$work"

profdata=${LLVM_PROFDATA:-}
if [[ -z $profdata ]]; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  for candidate in "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
    $(ls -d /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | sort -V -r) \
    "$(command -v llvm-profdata || true)"; do
    if [[ -n $candidate && -x $candidate ]]; then profdata=$candidate; break; fi
  done
fi
if [[ -z $profdata ]]; then
  echo "build-pgo: no llvm-profdata; rustup component add llvm-tools, or set LLVM_PROFDATA" >&2
  exit 1
fi

echo "build-pgo: training drivers (loadbench, mock-provider)" >&2
CARGO_TARGET_DIR=$target cargo build --release --locked -p sluice-tests --bin loadbench --bin mock-provider
drivers=$target/release

echo "build-pgo: instrumented sidecar" >&2
raw=$work/raw
RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=$target/pgo-generate \
  cargo build --release --locked -p sluice-sidecar --bin sluice-sidecar
# Build scripts ran instrumented too: only the training's profiles count.
rm -rf "$raw"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts a process in the background, its output in $work/NAME.out, its
# input the caller's (`<&0`: without it a background job reads /dev/null).
start() {
  local name=$1; shift
  "$@" <&0 >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
}
# The address a started process printed first.
address() {
  local addr
  for _ in $(seq 200); do
    addr=$(grep -o -m1 '127\.0\.0\.1:[0-9]*' "$work/$1.out" 2>/dev/null || true)
    if [[ -n $addr ]]; then echo "$addr"; return; fi
    sleep 0.05
  done
  echo "build-pgo: $1 did not start: $(cat "$work/$1.err")" >&2
  exit 1
}

# The canned fast upstream exits when its stdin closes: hold it open (the
# fifo opened read-write first, so that opening it to read does not wait).
fifo=$work/upstream.stdin
rm -f "$fifo"; mkfifo "$fifo"
exec 9<>"$fifo"
start upstream "$drivers/loadbench" upstream --listen 127.0.0.1:0 <"$fifo"
upstream=$(address upstream)
# One mock provider of each wire format, and a route to each.
declare -A type=([openai]=openai [azure]=azure-openai [anthropic]=anthropic [gemini]=gemini [bedrock]=bedrock)
declare -A model=([openai]=gpt-4o-mini [azure]=gpt4o [anthropic]=claude-sonnet-4-5 [gemini]=gemini-2.5-flash [bedrock]=anthropic.claude-3-haiku)
kinds=(openai azure anthropic gemini bedrock)

sed "s|UPSTREAM|$upstream|" scripts/bench-route.yaml >"$work/training.yaml"
cat >>"$work/training.yaml" <<YAML
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: governed, labels: {team: pgo}}
spec:
  model: governed
  targets: [{providerRef: {name: bench-upstream}, model: bench-model}]
---
apiVersion: sluice.dev/v1alpha1
kind: Budget
metadata: {name: pgo}
spec:
  routeSelector: {matchLabels: {team: pgo}}
  window: day
  limits: {costUSD: "100000.00"}
  rateLimits: {requestsPerMinute: 10000000, tokensPerMinute: 1000000000}
YAML
for kind in "${kinds[@]}"; do
  args=(--kind "$kind" --any-key)
  extra=""
  key=PGO_KEY
  path=""
  models="{name: ${model[$kind]}, pricing: {inputPerMillion: \"1\", outputPerMillion: \"2\"}}"
  case $kind in
    bedrock) args+=(--region us-east-1); extra="bedrock: {region: us-east-1}"; key=PGO_AWS_PAIR ;;
    # The OpenAI mock serves embeddings too (the `embed` route).
    openai)
      path=/v1
      models+=", {name: text-embedding-3-small, capabilities: [embeddings], pricing: {inputPerMillion: \"0.02\", outputPerMillion: \"0\"}}"
      ;;
  esac
  start "$kind" "$drivers/mock-provider" "${args[@]}"
  addr=$(address "$kind")
  cat >>"$work/training.yaml" <<YAML
---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: $kind}
spec:
  type: ${type[$kind]}
  endpoint: http://$addr$path
  $extra
  credentials: {env: $key}
  models: [$models]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: $kind}
spec:
  model: $kind
  targets: [{providerRef: {name: $kind}, model: ${model[$kind]}}]
YAML
done
cat >>"$work/training.yaml" <<YAML
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: embed}
spec:
  model: embed
  targets: [{providerRef: {name: openai}, model: text-embedding-3-small}]
YAML

echo "build-pgo: training" >&2
port=$((20000 + RANDOM % 20000))
sidecar=127.0.0.1:$port
PGO_KEY=pgo-key PGO_AWS_PAIR=AKIDPGO:pgo-secret RUST_LOG=info \
  "$target/pgo-generate/release/sluice-sidecar" --config "$work/training.yaml" \
  --listen "$sidecar" --admin 127.0.0.1:$((port + 1)) 2>"$work/sidecar.log" &
sc=$!
pids+=($sc)
for _ in $(seq 200); do
  curl -sf "http://127.0.0.1:$((port + 1))/readyz" >/dev/null 2>&1 && break
  sleep 0.05
done
drive() { "$drivers/loadbench" drive --target "$sidecar" "$@" >&2; }
# The OpenAI-compatible pass-through most requests take, at the load and
# at the low rates the benchmark measures.
drive --secs 4
drive --secs 3 --rate 300
drive --secs 3 --rate 300 --stream
drive --secs 2 --model governed
drive --secs 1 --rate 200 --stream --model governed
for kind in "${kinds[@]}"; do
  drive --secs 1 --connections 8 --model "$kind"
  drive --secs 1 --rate 100 --stream --model "$kind"
done
# The other endpoints, and requests refused at the door.
post() { curl -s -o /dev/null -X POST "http://$sidecar$1" -H 'content-type: application/json' -d "$2"; }
for _ in $(seq 100); do
  post /v1/messages '{"model":"anthropic","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
  post /v1/messages '{"model":"bench","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
  post /v1/embeddings '{"model":"embed","input":"hello"}'
  post /v1/chat/completions '{"model":"nope","messages":[{"role":"user","content":"hi"}]}'
  post /v1/chat/completions '{"model":"bench","messages":'
  curl -s -o /dev/null "http://$sidecar/v1/models"
done
kill -TERM "$sc"
wait "$sc"
cleanup
pids=()
if ! compgen -G "$raw/*.profraw" >/dev/null; then
  echo "build-pgo: the training wrote no profile" >&2
  exit 1
fi
if ! "$profdata" merge -o "$work/merged.profdata" "$raw"; then
  echo "build-pgo: $profdata cannot read the profiles of rustc's LLVM ($(rustc -vV | sed -n 's/^LLVM version: //p')); rustup component add llvm-tools, or set LLVM_PROFDATA" >&2
  exit 1
fi
# Named by its content: cargo rebuilds when RUSTFLAGS change, not when a
# file they name does.
sum=$(sha256sum "$work/merged.profdata" | cut -c1-16)
rm -f "$work"/sidecar-*.profdata
mv "$work/merged.profdata" "$work/sidecar-$sum.profdata"

echo "build-pgo: optimised sidecar" >&2
RUSTFLAGS="-Cprofile-use=$work/sidecar-$sum.profdata" CARGO_TARGET_DIR=$target/pgo-use \
  cargo build --release --locked -p sluice-sidecar --bin sluice-sidecar
cp "$target/pgo-use/release/sluice-sidecar" "$work/sluice-sidecar"
echo "$work/sluice-sidecar"
