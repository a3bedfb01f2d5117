#!/usr/bin/env bash
# The long fuzz run (docs/fuzzing.md): every cargo-fuzz target under fuzz/ (or the ones named)
# for a fixed number of executions, one libFuzzer process at a time (single job), niced, then a
# table of executions, seconds and crashes per target.
#
#   scripts/fuzz.sh [-n RUNS] [-t SECONDS] [TARGET...]   RUNS defaults to 10000000
#
# -t caps each target's time (libFuzzer -max_total_time) for a box that cannot spare the CPU for
# RUNS executions; the table then shows how many it got.
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The build is
# `cargo +nightly fuzz build -s none --debug-assertions` (policy-core forbids unsafe code, so no
# sanitizer; debug assertions make an integer overflow a crash). The committed corpus
# fuzz/corpus/<target>/ is only read: what the fuzzer learns goes to a scratch corpus
# ($FUZZ_WORK, default fuzz/target/corpus-work/<target>), a crash to fuzz/artifacts/<target>/.
# A crash is minimized with `cargo +nightly fuzz tmin -s none --debug-assertions <target> <file>`,
# fixed with a test, and the minimized input committed under fuzz/corpus/<target>/, where
# policy-core/tests/fuzz_corpus.rs replays it in every `cargo test`.
#
# Environment: FUZZ_NICE (default 15), FUZZ_MAX_LEN (default 8192 bytes), FUZZ_WORK,
# FUZZ_REPORT (the table is also written there; default fuzz/target/fuzz-report.txt), FUZZ_COMMIT
# (the commit named in the report, for a run from an exported tree; default: git HEAD).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=10000000
max_time=0
usage() {
  sed -n '2,11p' "$0" >&2
  exit 64
}
while getopts n:t:h o; do
  case $o in
    n) runs=$OPTARG ;;
    t) max_time=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $runs =~ ^[0-9]+$ && $max_time =~ ^[0-9]+$ ]] || usage

nice_n=${FUZZ_NICE:-15}
max_len=${FUZZ_MAX_LEN:-8192}
work=${FUZZ_WORK:-$root/fuzz/target/corpus-work}
report=${FUZZ_REPORT:-$root/fuzz/target/fuzz-report.txt}
build_flags=(-s none --debug-assertions)

all=$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name = / { gsub(/"/, "", $3); print $3; bin = 0 }' fuzz/Cargo.toml)
if [ $# -gt 0 ]; then
  targets=("$@")
  for t in "${targets[@]}"; do
    grep -qx "$t" <<< "$all" || { echo "fuzz.sh: no target $t (targets: $(echo $all))" >&2; exit 64; }
  done
else
  mapfile -t targets <<< "$all"
fi

command -v cargo-fuzz > /dev/null || { echo "fuzz.sh: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2; exit 69; }
log() { printf '[fuzz %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

log "building the fuzz targets (nightly, niced $nice_n)"
(cd fuzz && nice -n "$nice_n" cargo +nightly fuzz build "${build_flags[@]}")

mkdir -p "$(dirname "$report")"
{
  echo "pppgate fuzz run $(date -u '+%Y-%m-%d %H:%M UTC'), commit ${FUZZ_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo "?")}"
  echo "machine: $(uname -n), $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(uname -r)"
  echo "toolchain: $(cargo +nightly --version), $(cargo fuzz --version 2>/dev/null || echo cargo-fuzz)"
  echo "libFuzzer: -runs=$runs -max_total_time=$max_time (0: none) -max_len=$max_len, single job, nice $nice_n, build ${build_flags[*]}"
  printf '%-18s %14s %9s %9s %8s  %s\n' target executions seconds exec/s crashes note
} > "$report.tmp"

failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  out=$(mktemp)
  log "$t: $runs executions"
  start=$(date +%s.%N)
  rc=0
  (cd fuzz && nice -n "$nice_n" cargo +nightly fuzz run "${build_flags[@]}" "$t" "$work/$t" "$root/fuzz/corpus/$t" -- \
    -runs="$runs" -max_total_time="$max_time" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) > "$out" 2>&1 || rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  execs=${execs:-0}
  crashes=0
  note=""
  if [ "$rc" -ne 0 ]; then
    crashes=1
    failed=1
    note="rc=$rc $(grep -o 'Test unit written to [^ ]*' "$out" | tail -1 | sed 's/Test unit written to //')"
    tail -40 "$out" >&2
  fi
  cp "$out" "$work/$t.log"
  rm -f "$out"
  rate=$(awk -v e="$execs" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? e / s : 0) }')
  printf '%-18s %14s %9.0f %9s %8s  %s\n' "$t" "$execs" "$secs" "$rate" "$crashes" "$note" | tee -a "$report.tmp" >&2
done
mv "$report.tmp" "$report"
echo
cat "$report"
exit "$failed"
