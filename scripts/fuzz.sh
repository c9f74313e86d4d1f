#!/usr/bin/env bash
# Fuzzing campaigns with cargo-fuzz (libFuzzer): every target of fuzz/
# (the parsers of outside input) and the crash-symbolizer probe's
# (probes-wasm/crash-symbolizer/fuzz), MINUTES each, two at a time.
#
#   scripts/fuzz.sh [MINUTES] [TARGET...]
#
# MINUTES defaults to 10. TARGETs are names from fuzz/Cargo.toml (frame,
# spool_file, ...) or crash-symbolizer's (notes, analyze, also written
# crash-symbolizer/notes); none means all. Each target keeps its corpus in
# fuzz/corpus/NAME (crash-symbolizer's in its own fuzz/corpus/NAME),
# started from its seeds on the first run; its log is fuzz/logs/NAME.log;
# what crashes goes to fuzz/artifacts/NAME/ (crash-symbolizer's to its
# fuzz/artifacts/NAME/). Exits non-zero if any run failed or wrote an
# artifact (crash, leak, timeout, out of memory).
#
# Environment: FUZZ_PARALLEL (runs at once, default 2), FUZZ_NICE (nice
# level of builds and runs, default 19), CARGO_BUILD_JOBS (default 1: the
# build shares the machine), FUZZ_RSS_MB (default 2048), FUZZ_SECONDS
# (seconds per target instead of MINUTES, for a quick smoke run).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir=$root/fuzz
cs_dir=$root/probes-wasm/crash-symbolizer/fuzz
logs=$fuzz_dir/logs
cs_targets=(notes analyze)

minutes=10
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    minutes=$1
    shift
fi
if [[ $minutes -lt 1 ]]; then
    echo "MINUTES must be at least 1" >&2
    exit 2
fi
seconds=${FUZZ_SECONDS:-$((minutes * 60))}
parallel=${FUZZ_PARALLEL:-2}
nice_level=${FUZZ_NICE:-19}
rss_mb=${FUZZ_RSS_MB:-2048}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

# Every target of fuzz/, from its manifest.
own_targets=()
while read -r t; do
    own_targets+=("$t")
done < <(awk '/^\[\[bin\]\]/{b=1; next} b && /^name = /{gsub(/"/, "", $3); print $3; b=0}' "$fuzz_dir/Cargo.toml")

# What to run: "own:NAME" or "cs:NAME".
runs=()
if [[ $# -eq 0 ]]; then
    for t in "${own_targets[@]}"; do runs+=("own:$t"); done
    for t in "${cs_targets[@]}"; do runs+=("cs:$t"); done
else
    for arg in "$@"; do
        name=${arg#crash-symbolizer/}
        if [[ $arg != "$name" ]] || [[ " ${cs_targets[*]} " == *" $name "* && " ${own_targets[*]} " != *" $name "* ]]; then
            if [[ " ${cs_targets[*]} " != *" $name "* ]]; then
                echo "unknown crash-symbolizer target: $arg (${cs_targets[*]})" >&2
                exit 2
            fi
            runs+=("cs:$name")
        elif [[ " ${own_targets[*]} " == *" $name "* ]]; then
            runs+=("own:$name")
        else
            echo "unknown target: $arg (${own_targets[*]} ${cs_targets[*]})" >&2
            exit 2
        fi
    done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    nice -n "$nice_level" cargo install cargo-fuzz --locked
fi

mkdir -p "$logs"
need_own=0
need_cs=0
for r in "${runs[@]}"; do
    case $r in
        own:*) need_own=1 ;;
        cs:*) need_cs=1 ;;
    esac
done
build_start=$(date +%s)
if [[ $need_own -eq 1 ]]; then
    echo "== building fuzz/ targets (CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS)"
    (cd "$fuzz_dir" && nice -n "$nice_level" cargo +nightly fuzz build)
fi
if [[ $need_cs -eq 1 ]]; then
    echo "== building crash-symbolizer targets"
    (cd "$cs_dir" && nice -n "$nice_level" cargo +nightly fuzz build)
fi
echo "== built in $(($(date +%s) - build_start)) s"

# Artifacts newer than this marker were written by this campaign.
marker=$(mktemp "${TMPDIR:-/tmp}/fuzz-campaign.XXXXXX")
trap 'rm -f "$marker"' EXIT

label() {
    case $1 in
        own:*) echo "${1#own:}" ;;
        cs:*) echo "crash-symbolizer/${1#cs:}" ;;
    esac
}

logfile() {
    case $1 in
        own:*) echo "$logs/${1#own:}.log" ;;
        cs:*) echo "$logs/crash-symbolizer-${1#cs:}.log" ;;
    esac
}

artifact_dir() {
    case $1 in
        own:*) echo "$fuzz_dir/artifacts/${1#own:}" ;;
        cs:*) echo "$cs_dir/artifacts/${1#cs:}" ;;
    esac
}

# One run: corpus first (new inputs are written there), then the seeds.
run_one() {
    local r=$1 dir name corpus seeds
    case $r in
        own:*)
            dir=$fuzz_dir
            name=${r#own:}
            seeds=$fuzz_dir/seeds/$name
            ;;
        cs:*)
            dir=$cs_dir
            name=${r#cs:}
            seeds=$cs_dir/seeds
            ;;
    esac
    corpus=$dir/corpus/$name
    if [[ ! -d $corpus ]]; then
        mkdir -p "$corpus"
        if [[ -d $seeds ]]; then
            cp -- "$seeds"/* "$corpus"/ 2>/dev/null || true
        fi
    fi
    local art
    art=$(artifact_dir "$r")
    mkdir -p "$art"
    local extra=()
    if [[ -d $seeds ]]; then
        extra+=("$seeds")
    fi
    (
        cd "$dir"
        nice -n "$nice_level" cargo +nightly fuzz run "$name" "$corpus" "${extra[@]}" -- \
            -max_total_time="$seconds" \
            -rss_limit_mb="$rss_mb" \
            -artifact_prefix="$art/" \
            -print_final_stats=1
    ) >"$(logfile "$r")" 2>&1
}

declare -A status
declare -A pid_of
echo "== running ${#runs[@]} target(s), $seconds s each, $parallel at a time; logs in ${logs#"$root"/}/"
pending=("${runs[@]}")
running=0
while [[ ${#pending[@]} -gt 0 || $running -gt 0 ]]; do
    while [[ ${#pending[@]} -gt 0 && $running -lt $parallel ]]; do
        r=${pending[0]}
        pending=("${pending[@]:1}")
        run_one "$r" &
        pid_of[$!]=$r
        running=$((running + 1))
        echo "   started $(label "$r") (pid $!)"
    done
    # Wait for any run to end, then reap every one that has.
    wait -n || true
    for pid in "${!pid_of[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" || rc=$?
            r=${pid_of[$pid]}
            status[$r]=$rc
            unset "pid_of[$pid]"
            running=$((running - 1))
            echo "   finished $(label "$r"): exit $rc"
        fi
    done
done

echo
printf '%-28s %5s %12s %8s  %s\n' target exit execs cov artifacts
failed=0
repro=()
for r in "${runs[@]}"; do
    log=$(logfile "$r")
    # The last status line: `#1234567	pulse  cov: 2345 ft: ...` or
    # `#1234567	DONE   cov: ...`.
    stat=$(grep -aE '^#[0-9]+[[:space:]].*cov: [0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$stat")
    cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$stat")
    art=$(artifact_dir "$r")
    found=$(find "$art" -type f -newer "$marker" 2>/dev/null | sort)
    rc=${status[$r]:-?}
    what=none
    if [[ -n $found ]]; then
        what=$(sed "s|^$root/||" <<<"$found" | tr '\n' ' ')
        failed=1
    fi
    if [[ -n $found || $rc != 0 ]]; then
        failed=1
        case $r in
            own:*) dir=fuzz ;;
            cs:*) dir=probes-wasm/crash-symbolizer/fuzz ;;
        esac
        first=${found%%$'\n'*}
        repro+=("  $(label "$r"): see ${log#"$root"/}; cd $dir && cargo +nightly fuzz run ${r#*:} ${first#"$root/$dir/"}")
    fi
    printf '%-28s %5s %12s %8s  %s\n' "$(label "$r")" "$rc" "${execs:--}" "${cov:--}" "$what"
done
if [[ $failed -ne 0 ]]; then
    echo
    echo "failed or crashed (the run command with an artifact runs that input once):"
    printf '%s\n' "${repro[@]}"
    exit 1
fi
