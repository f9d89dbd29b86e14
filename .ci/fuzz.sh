#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets of fuzz/ (see fuzz/README.md).
#
#   .ci/fuzz.sh                       # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=300 .ci/fuzz.sh converge owner_machine
#
# Steps: install cargo-fuzz and the nightly toolchain if missing; build all targets; replay the
# committed seeds (fuzz/seeds/<target>/) and regression inputs (fuzz/regressions/<target>/); then
# fuzz each target for FUZZ_SECONDS with the dictionary fuzz/frames.dict, starting from the seeds
# and the local corpus fuzz/corpus/<target>/ (created if missing; gitignored). Exits non-zero if
# any replay or fuzzing run crashes; crashing inputs land in fuzz/artifacts/<target>/.
#
# Regression inputs of bugs that are still open crash on purpose. While fuzzing (and while
# replaying seeds, which are a starting corpus, not tests) MEMSYNC_FUZZ_SKIP_KNOWN=1 makes the
# harnesses stop such inputs early, so the run can find other bugs; export it yourself to also
# replay the regressions that way.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export PATH="$HOME/.cargo/bin:$PATH"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
# libFuzzer's per-input timeout and memory limit: a slow or huge input is a finding too.
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-30}"
FUZZ_RSS_MB="${FUZZ_RSS_MB:-4096}"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi

echo "== building fuzz targets"
cargo +nightly fuzz build
# cargo fuzz builds under fuzz/target unless CARGO_TARGET_DIR says otherwise.
bin_dir="${CARGO_TARGET_DIR:-fuzz/target}/x86_64-unknown-linux-gnu/release"

if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=()

# Runs a target binary on each file given (no fuzzing); libFuzzer exits non-zero on a crash.
replay() {
  local t=$1
  shift
  (($#)) || return 0
  "$bin_dir/$t" -rss_limit_mb="$FUZZ_RSS_MB" -timeout="$FUZZ_TIMEOUT" "$@" >"fuzz/replay-$t.log" 2>&1
}

for t in "${targets[@]}"; do
  seeds=()
  regressions=()
  [[ -d fuzz/seeds/$t ]] && mapfile -t seeds < <(find "fuzz/seeds/$t" -type f | sort)
  [[ -d fuzz/regressions/$t ]] && mapfile -t regressions < <(find "fuzz/regressions/$t" -type f | sort)
  echo "== $t: replaying ${#seeds[@]} seeds and ${#regressions[@]} regression inputs"
  if ! MEMSYNC_FUZZ_SKIP_KNOWN=1 replay "$t" "${seeds[@]}"; then
    echo "FAIL: a seed of $t crashes:"
    tail -n 40 "fuzz/replay-$t.log"
    failed+=("$t (seeds)")
  fi
  # One run per regression input, so that every crashing one is reported.
  for r in "${regressions[@]}"; do
    if ! replay "$t" "$r"; then
      echo "FAIL: regression input $r crashes:"
      grep -E -A 2 "panicked at" "fuzz/replay-$t.log" | head -n 6 || true
      failed+=("$r")
    fi
  done
  rm -f "fuzz/replay-$t.log"
done

for t in "${targets[@]}"; do
  echo "== $t: fuzzing for ${FUZZ_SECONDS}s"
  mkdir -p "fuzz/corpus/$t"
  seed_dir=()
  [[ -d fuzz/seeds/$t ]] && seed_dir=("fuzz/seeds/$t")
  # New inputs go to the first directory (the local corpus); the seeds are only read.
  if ! MEMSYNC_FUZZ_SKIP_KNOWN=1 cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "${seed_dir[@]}" -- \
    -max_total_time="$FUZZ_SECONDS" -dict=fuzz/frames.dict -timeout="$FUZZ_TIMEOUT" \
    -rss_limit_mb="$FUZZ_RSS_MB" -print_final_stats=1 2>&1 | tee "fuzz/run-$t.log" |
    grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|^Done|stat::number_of_executed_units|stat::average_exec_per_sec|panicked|ERROR|SUMMARY|Test unit written"; then
    :
  fi
  if grep -qE "SUMMARY: libFuzzer|ERROR: libFuzzer|panicked at" "fuzz/run-$t.log" ||
    ! grep -q "^Done" "fuzz/run-$t.log"; then
    echo "FAIL: fuzzing $t crashed; input in fuzz/artifacts/$t/:"
    grep -A 6 "panicked at" "fuzz/run-$t.log" | head -n 20 || true
    failed+=("$t (fuzzing)")
  fi
  rm -f "fuzz/run-$t.log"
done

if ((${#failed[@]})); then
  echo "fuzz: ${#failed[@]} failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed (replay, then ${FUZZ_SECONDS}s of fuzzing each)"
