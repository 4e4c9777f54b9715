#!/usr/bin/env bash
# Regenerates sidecar/symbol-order.txt: the functions the request path
# runs, hottest first, which sidecar/build.rs hands to the linker so that
# release builds place them side by side (see sidecar/README.md, "Code
# layout"). Run it after changes to the request path; names it lists that
# a build no longer has are ignored, so a stale file only orders less.
#
#   scripts/symbol-order.sh            # needs valgrind and python3
#
# Builds the release sidecar twice: once to profile, once to check the new
# order took (printed: code lines and pages the requests ran). The sidecar
# is built on its own, with the README's and the Dockerfile's command:
# built together with another package, cargo unifies the dependencies'
# features differently, the crates' build hashes differ and so do the
# symbol names (the file would name functions that build does not have).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
out=${OUT:-/tmp/sluice-symbol-order}
build() {
  cargo build --release -p sluice-tests --bin loadbench
  cargo build --release -p sluice-sidecar --bin sluice-sidecar
}
profile() {
  rm -rf "$out" && mkdir -p "$out"
  OUT=$out DUMP_INSTR=yes scripts/profile-sidecar.sh sidecar callgrind 500 300 >/dev/null
  ls -t "$out"/sidecar.callgrind.*.1 | head -1
}
build
python3 scripts/symbol_order.py "$(profile)" "$CARGO_TARGET_DIR/release/sluice-sidecar" sidecar/symbol-order.txt
echo "written: sidecar/symbol-order.txt (before it took effect)"
build
python3 scripts/symbol_order.py "$(profile)" "$CARGO_TARGET_DIR/release/sluice-sidecar" "$out/check.txt"
echo "after relinking with it (the lines and pages above should now be fewer pages)"
