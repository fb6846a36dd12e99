#!/usr/bin/env bash
# vigil's entry point for people and CI: installs what a fresh machine lacks,
# builds one profile (release), and runs.
#
#   ./dev.sh demo    build, then run vigil's main job on its embedded default
#                    (vigil demo: embedded broker, live workload, real pipeline)
#   ./dev.sh test    build, then run the whole test suite
#   ./dev.sh bench   build, then measure what BENCHMARKS.md reports: vigil
#                    bench (check at 1M/10M records and 100k to 10M keys,
#                    and on kcat -J lines of five formats at 1M, with CPU
#                    per record and the parse floor; run through the
#                    embedded broker, latency), allocations per record,
#                    and the per-stage criterion benches (about 20 minutes)
#   ./dev.sh build   build only
#   ./dev.sh fuzz [SECONDS] [TARGET...]
#                    coverage-guided fuzzing of the decoders with AFL++
#                    (cargo afl): every target of fuzz/ (or those named) for
#                    SECONDS each (default 60), then a table of executions,
#                    corpus, crashes and hangs per target
#
# The Cargo target directory lives outside the clone
# ($CARGO_TARGET_DIR, default ~/.cache/vigil/target), so fresh clones and CI
# runs reuse the slow RocksDB and librdkafka builds.
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}"
VIGIL="$CARGO_TARGET_DIR/release/vigil"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# System packages the native dependencies need: libclang for RocksDB's
# bindgen, cmake and the curl/SSL/SASL headers for librdkafka.
BUILD_PACKAGES=(build-essential pkg-config clang libclang-dev cmake libssl-dev libsasl2-dev libcurl4-openssl-dev)

# Installs the Debian packages given (default: BUILD_PACKAGES) that are
# missing.
ensure_packages() {
  local wanted=("$@")
  [ ${#wanted[@]} -eq 0 ] && wanted=("${BUILD_PACKAGES[@]}")
  local missing=()
  if command -v dpkg-query >/dev/null 2>&1; then
    for p in "${wanted[@]}"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing system packages: ${missing[*]} (install their equivalents, then run again)"
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# tansu, an independent Kafka-compatible broker: the TLS and recovery tests run
# vigil against it as well as against librdkafka's mock cluster (see
# DEVELOPERS.md). Installed with cargo, in a target directory of its own.
TANSU_VERSION=0.6.0
ensure_tansu() {
  local tansu="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  if [ -x "$tansu" ] && "$tansu" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
    return 0
  fi
  say "installing tansu $TANSU_VERSION (the broker of the TLS and recovery tests; about 20 minutes the first time)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore \
    --target-dir "$HOME/.cache/tansu-target"
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is not installed: install Rust 1.95 or later (https://rustup.rs), then run again"
    exit 1
  fi
}

build() {
  ensure_packages
  ensure_rust
  if [ ! -x "$VIGIL" ]; then
    say "building vigil (release); the first build compiles RocksDB and librdkafka and takes about 15 minutes"
  fi
  cargo build --release --locked
}

# cargo-afl, which builds its own AFL++ (afl-fuzz and the runtime linked
# into the targets, of one version) the first time.
CARGO_AFL_VERSION=0.18.2
ensure_cargo_afl() {
  if cargo afl --version 2>/dev/null | grep -q "^cargo-afl $CARGO_AFL_VERSION "; then
    return 0
  fi
  say "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++; a few minutes)"
  cargo install cargo-afl --version "$CARGO_AFL_VERSION" --locked \
    --target-dir "$HOME/.cache/vigil/cargo-afl-target"
}

# The fuzz targets, one per decoder (fuzz/src/bin/).
FUZZ_TARGETS=(debezium maxwell canal cache kcat avro protobuf apicurio config ingest)
# AFL's memory limit per target process, in MB: an allocation past it
# aborts, which AFL counts as a crash.
FUZZ_MEMORY_MB=512

fuzz() {
  local seconds="${1:-60}"
  [ $# -gt 0 ] && shift
  case "$seconds" in
    '' | *[!0-9]*) say "fuzz: SECONDS must be a whole number, not $seconds"; exit 2 ;;
  esac
  local targets=("$@")
  [ ${#targets[@]} -eq 0 ] && targets=("${FUZZ_TARGETS[@]}")
  ensure_packages
  ensure_rust
  ensure_cargo_afl
  local target_dir="$HOME/.cache/vigil/fuzz-target"
  local work="$HOME/.cache/vigil/fuzz"
  if [ ! -d "$target_dir/release" ]; then
    say "building the fuzz targets instrumented; the first build compiles RocksDB and librdkafka again (15 to 30 minutes)"
  fi
  (cd fuzz && CARGO_TARGET_DIR="$target_dir" cargo afl build --release --locked)
  rm -rf "$work"
  mkdir -p "$work"
  "$target_dir/release/seeds" . "$work/seeds"
  for t in "${targets[@]}"; do
    if [ ! -x "$target_dir/release/$t" ]; then
      say "no fuzz target $t (targets: ${FUZZ_TARGETS[*]})"
      exit 2
    fi
    say "fuzzing $t for ${seconds}s"
    # One core, no screen UI; the machine's core_pattern and CPU governor
    # are left as they are.
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
      cargo afl fuzz -i "$work/seeds/$t" -o "$work/$t" -V "$seconds" \
      -m "$FUZZ_MEMORY_MB" -t 1000 -- "$target_dir/release/$t" >"$work/$t.log" 2>&1 || {
      tail -n 30 "$work/$t.log" >&2
      say "afl-fuzz failed on $t (log: $work/$t.log)"
      exit 1
    }
  done
  local found=0
  printf '%-10s %12s %9s %7s %8s %6s %8s\n' target execs execs/s corpus crashes hangs seconds
  for t in "${targets[@]}"; do
    local stats="$work/$t/default/fuzzer_stats"
    field() { sed -n "s/^$1 *: *//p" "$stats"; }
    printf '%-10s %12s %9s %7s %8s %6s %8s\n' "$t" "$(field execs_done)" \
      "$(field execs_per_sec)" "$(field corpus_count)" "$(field saved_crashes)" \
      "$(field saved_hangs)" "$(field run_time)"
    found=$((found + $(field saved_crashes) + $(field saved_hangs)))
  done
  if [ "$found" -gt 0 ]; then
    say "crashes or hangs found: inputs in $work/TARGET/default/crashes and hangs"
    exit 1
  fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  build)
    build
    ;;
  demo)
    build
    "$VIGIL" demo "$@"
    ;;
  test)
    build
    # promtool (Debian package prometheus) checks the metrics and tests the
    # alert rules.
    command -v promtool >/dev/null 2>&1 || ensure_packages prometheus
    # The TLS test puts stunnel in front of tansu with a CA made by openssl.
    ensure_packages stunnel4 openssl
    ensure_tansu
    if cargo nextest --version >/dev/null 2>&1; then
      cargo nextest run --release --locked --no-fail-fast "$@"
    else
      say "cargo-nextest not found: running the suite with cargo test"
      cargo test --release --locked --no-fail-fast "$@"
    fi
    ;;
  bench)
    build
    "$VIGIL" bench --check 1000000:100000 --check 1000000:1000000 \
      --check 10000000:1000000 --check 10000000:10000000 \
      --check-kcat 1000000:1000000 "$@"
    cargo test --release --locked --test allocations -- --nocapture
    cargo bench --locked --bench stages
    ;;
  fuzz)
    fuzz "$@"
    ;;
  *)
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
