#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each one for a while.
#
#   fuzz/run.sh [-j JOBS] [MINUTES] [TARGET...]
#
# MINUTES per target (default 10); JOBS fuzzing processes per target
# (default 1; more uses libFuzzer's fork mode). TARGETs default to all of
# fuzz/fuzz_targets/. Each target's corpus grows in fuzz/corpus/<target>/
# (seeded from the committed fuzz/seeds/<target>/); crashes land in
# fuzz/artifacts/<target>/ and the libFuzzer output in
# fuzz/artifacts/<target>.log. Exits non-zero if any target crashed (or
# leaked, or timed out, or ran out of memory) or the build failed.
#
# Environment:
#   CARGO_TARGET_DIR  build directory (default fuzz/target)
#   SANITIZER         address (default), none, ...: cargo fuzz --sanitizer
#   FUZZ_ARGS         extra libFuzzer flags, e.g. "-max_len=65536"
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

jobs=1
minutes=
targets=()
while (($#)); do
    case "$1" in
    -j) jobs="${2:?-j needs a number}"; shift 2 ;;
    -j*) jobs="${1#-j}"; shift ;;
    -h | --help) usage ;;
    *)
        if [[ -z "$minutes" && "$1" =~ ^[0-9]+$ ]]; then
            minutes="$1"
        else
            targets+=("$1")
        fi
        shift
        ;;
    esac
done
minutes="${minutes:-10}"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: -j wants a positive number" >&2; exit 2; }

fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$fuzz_dir")"
target_dir="${CARGO_TARGET_DIR:-$fuzz_dir/target}"
sanitizer="${SANITIZER:-address}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
if ((${#targets[@]} == 0)); then
    for f in "$fuzz_dir"/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

echo "== building the fuzz targets (sanitizer: $sanitizer, target dir: $target_dir)"
(
    cd "$repo"
    cargo +nightly fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"
)

# Reads the last status line libFuzzer printed: "#RUNS ... cov: C ft: F
# corp: N/..." (normal mode) or "#RUNS: cov: C ft: F corp: N ..." (fork).
last_stat() {
    local log="$1" field="$2"
    grep -aE '^#[0-9]+' "$log" | grep -a " $field: " | tail -n 1 |
        sed -E "s/.* $field: ([0-9]+).*/\1/"
}

failed=0
summary=()
for t in "${targets[@]}"; do
    bin="$target_dir/$triple/release/$t"
    corpus="$fuzz_dir/corpus/$t"
    seeds="$fuzz_dir/seeds/$t"
    artifacts="$fuzz_dir/artifacts/$t"
    log="$fuzz_dir/artifacts/$t.log"
    mkdir -p "$corpus" "$artifacts" "$seeds"
    before="$(ls -1 "$artifacts")"

    args=(
        "-artifact_prefix=$artifacts/"
        "-max_total_time=$((minutes * 60))"
        -timeout=10
        -print_final_stats=1
    )
    if ((jobs > 1)); then
        args+=("-fork=$jobs")
    fi
    # shellcheck disable=SC2206 # FUZZ_ARGS is split on purpose
    args+=(${FUZZ_ARGS:-})

    echo "== $t: $minutes min, $jobs job(s)"
    set +e
    "$bin" "${args[@]}" "$corpus" "$seeds" >"$log" 2>&1
    status=$?
    set -e

    runs="$(grep -a 'stat::number_of_executed_units' "$log" | tail -n 1 | awk '{print $2}')"
    [[ -n "$runs" ]] || runs="$(grep -aE '^#[0-9]+' "$log" | tail -n 1 | sed -E 's/^#([0-9]+).*/\1/')"
    cov="$(last_stat "$log" cov)"
    ft="$(last_stat "$log" ft)"
    corp="$(last_stat "$log" corp)"
    new="$(comm -13 <(echo "$before") <(ls -1 "$artifacts") | sed "s|^|$artifacts/|")"
    if ((status != 0)) || [[ -n "$new" ]]; then
        failed=1
        result="CRASH (exit $status)"
        [[ -n "$new" ]] || new="(no artifact; see $log)"
    else
        result="ok"
    fi
    line="$(printf '%-14s runs: %-10s cov: %-6s ft: %-6s corpus: %-6s %s' \
        "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result")"
    echo "$line"
    summary+=("$line")
    if [[ "$result" != ok ]]; then
        while read -r artifact; do
            summary+=("    $artifact")
            echo "    $artifact"
            [[ -f "$artifact" ]] && summary+=("    minimize: cargo +nightly fuzz tmin --sanitizer $sanitizer --target-dir $target_dir $t $artifact")
        done <<<"$new"
        grep -aE "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY" "$log" |
            head -n 5 | sed 's/^/    /'
    fi
done

echo
echo "== summary ($minutes min per target, $jobs job(s))"
printf '%s\n' "${summary[@]}"
exit "$failed"
