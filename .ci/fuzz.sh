#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, starting from
# the committed corpus, and fails if any target finds a crash (or a hang).
#
#   .ci/fuzz.sh [SECONDS]     seconds per target, 60 when not given
#
# The toolchain is stable, so RUSTC_BOOTSTRAP=1 lets cargo fuzz use the
# nightly-only sanitizer flags. New inputs go to a scratch folder, so the
# committed corpus is read but never changed; a crash is written to
# fuzz/artifacts/<target>/ and named in the output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]  (a positive number of seconds per target)" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    # Pinned: the version these targets were written and run with.
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# One build for all targets, so that the time limit is all fuzzing.
echo "== cargo fuzz build"
cargo fuzz build

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in $(cargo fuzz list); do
    # http_request needs inputs past 4 KiB to reach the reader's bound on
    # raw chunked bytes; libFuzzer stops at 4 KiB unless told.
    extra=()
    if [ "$target" = http_request ]; then
        extra=(-max_len=8192)
    fi

    mkdir -p "$scratch/$target" "corpus/$target"
    command=(cargo fuzz run "$target" "$scratch/$target" "corpus/$target" --
        "-max_total_time=$seconds" -timeout=10 "${extra[@]}")
    echo "== ${command[*]}"
    if "${command[@]}" >"$scratch/$target.log" 2>&1; then
        grep -E '^#[0-9]+.*DONE' "$scratch/$target.log" | tail -n 1 || true
    else
        # What went wrong (a panic's message or the sanitizer's report),
        # then cargo fuzz's summary: the input and how to replay it.
        grep -E -m 1 -A 4 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' \
            "$scratch/$target.log" | cut -c 1-2000 || true
        sed -n '/^Failing input:/,/^Minimize/p' "$scratch/$target.log"
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "== fuzzing found a crash in: ${failed[*]} (inputs under fuzz/artifacts/)"
    exit 1
fi
echo "== every fuzz target ran ${seconds}s without a crash"
