#!/usr/bin/env bash
# Coverage-guided fuzzing of the agent's parsers and stream transformers
# (the cargo-fuzz crate in fuzz/, libFuzzer): builds every target once, then
# runs each one for a bounded time from the committed seeds. A crash (a
# panic, a failed property, a sanitizer report) or a hang fails the run.
#
# By hand: bash .ci/fuzz.sh [seconds per target] [target ...]
# Findings land in fuzz/artifacts/<target>/; replay one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request framing chunker paths masker)
started=$SECONDS

# libfuzzer-sys compiles libFuzzer (C++): a fresh Debian machine with only
# the Rust toolchain may lack a C++ compiler.
if ! command -v c++ >/dev/null && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

# cargo-fuzz, pinned, built into the fuzz crate's own target dir (so it is
# cached with it and nothing lands in ~/.cargo/bin).
version=0.13.2
tools="$PWD/fuzz/target/tools/cargo-fuzz-$version"
if ! "$tools/bin/cargo-fuzz" --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $version"
  cargo install cargo-fuzz --version "$version" --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"

# libFuzzer needs unstable compiler flags (-Zsanitizer, sancov). Use a
# nightly toolchain if rustup has one; else the stable one with
# RUSTC_BOOTSTRAP=1. Never install a toolchain: CI must not depend on the
# rustup download server. FUZZ_STABLE=1 takes the stable path anyway.
if [ "${FUZZ_STABLE:-}" != 1 ] && cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
  toolchain="nightly ($(rustc +nightly --version))"
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  toolchain="$(rustc --version) with RUSTC_BOOTSTRAP=1"
fi
echo "== fuzz: ${#targets[@]} targets, ${seconds}s each, $toolchain"

(cd fuzz && cargo fmt --check)
# Build every target once (a bare `cargo fuzz build` builds them all); 16
# codegen units build in about half the time of cargo-fuzz's default of 1
# and run a little slower. `run` must get the same options, or it rebuilds.
opts=(--codegen-units 16)
"${fuzz[@]}" build "${opts[@]}"
echo "== fuzz build done after $((SECONDS - started))s"

logs="fuzz/target/logs"
mkdir -p "$logs"
failed=()
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  log="$logs/$target.log"
  # -timeout: one input taking 10 s is a hang; the outer timeout bounds the
  # whole run even if libFuzzer itself got stuck.
  if timeout --kill-after=10 $((seconds + 120)) "${fuzz[@]}" run "${opts[@]}" "$target" \
    "$corpus" "fuzz/corpus-seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status="FAILED (exit $?)"
    failed+=("$target")
  fi
  # The last status line: executions, coverage (edges), features, corpus.
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  echo "fuzz $target: $status; ${execs:-?} runs, ${rate:-?} exec/s, cov ${cov:-?} edges, ft ${ft:-?}, corpus ${corp:-?}"
  if [ "$status" != ok ]; then
    echo "---- last lines of $log"
    tail -n 60 "$log"
    ls -l "fuzz/artifacts/$target" 2>/dev/null || true
  fi
done
rm -rf fuzz/target/request-files # the job files the request target loads
echo "== fuzz took $((SECONDS - started))s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]}"
  exit 1
fi
