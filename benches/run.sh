#!/usr/bin/env bash
# Benchmarks the embedding example against the peers in ../shared/peers and
# prints the tables: one command from a fresh clone, as root on Debian.
#
#   bash benches/run.sh
#
# It installs what it lacks (hyperfine and binutils from apt; Go and
# gorilla/mux through the peers' build.sh), builds our example in the
# release and size profiles, the shim, the load generator and the peers,
# then runs `loadgen suite`: every server started afresh for each
# measurement, one after another in interleaved rounds, on sockets in a
# temporary folder of its own. Every server is stopped at the end, even when
# the run is cut short. The suite itself takes about two minutes.
#
# Knobs (environment): ROUNDS (3), DURATION seconds per round (3), THREADS
# (2), IDLE counts (1000,10000), EXEC_RUNS per client (300), CNIBENCH_DIR for
# build caches (/tmp/cniserver-bench), CNIBENCH_SHARED for the shared folder
# (../shared beside the repository).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${CNIBENCH_SHARED:-$ROOT/../shared}"
WORK="${CNIBENCH_DIR:-/tmp/cniserver-bench}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-3}"
THREADS="${THREADS:-2}"
IDLE="${IDLE:-1000,10000}"
EXEC_RUNS="${EXEC_RUNS:-300}"
# The suite is bounded well inside ten minutes; this only catches a hang.
SUITE_TIMEOUT="${SUITE_TIMEOUT:-540}"

say() { echo "== $*" >&2; }

case "$WORK" in
"$ROOT" | "$ROOT"/*)
    echo "CNIBENCH_DIR must be outside the repository ($ROOT)" >&2
    exit 2
    ;;
esac
if [ ! -f "$SHARED/peers/build.sh" ]; then
    echo "cannot find the peers: $SHARED/peers/build.sh (set CNIBENCH_SHARED)" >&2
    exit 2
fi
command -v cargo >/dev/null || {
    echo "cargo is needed (https://rustup.rs)" >&2
    exit 2
}

# Tools from apt: hyperfine for the exec timing, strip for the sizes.
missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v strip >/dev/null || missing+=(binutils)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    }
fi

# Our binaries, built outside the repository so that a concurrent build in
# target/ neither blocks nor disturbs this one.
export CARGO_TARGET_DIR="$WORK/target"
BIN="$WORK/bin"
mkdir -p "$BIN"
cd "$ROOT"
say "building the example (release, size), the shim and the load generator"
cargo build --locked --release --example embed --bin cniserver-shim
cargo build --locked --profile size --example embed
LOADGEN="$(cargo bench --locked --no-run --bench loadgen --message-format=json |
    sed -n 's/.*"executable":"\([^"]*loadgen[^"]*\)".*/\1/p' | tail -n 1)"
[ -x "$LOADGEN" ] || {
    echo "cannot find the loadgen executable" >&2
    exit 1
}

# Stripped copies, so that every size in the table is measured alike.
install -m 0755 "$CARGO_TARGET_DIR/release/examples/embed" "$BIN/embed-release"
install -m 0755 "$CARGO_TARGET_DIR/size/examples/embed" "$BIN/embed-size"
install -m 0755 "$CARGO_TARGET_DIR/release/cniserver-shim" "$BIN/cniserver-shim"
strip "$BIN/embed-release" "$BIN/embed-size" "$BIN/cniserver-shim"

say "building the peers"
PEERS_BIN="$WORK/peers-bin" CARGO_TARGET_DIR="$WORK/peers-target" \
    bash "$SHARED/peers/build.sh" >&2
PEERS="$WORK/peers-bin"

# Sockets, logs and scratch files of this run only.
RUN="$(mktemp -d "${TMPDIR:-/tmp}/cniserver-bench-run.XXXXXX")"
chmod 0700 "$RUN"
cleanup() {
    # The suite stops every server it starts; should it die first, stop
    # what it left by the process IDs it recorded.
    local pid_file
    for pid_file in "$RUN"/*.pid; do
        [ -f "$pid_file" ] || continue
        kill -TERM "$(cat "$pid_file")" 2>/dev/null || true
    done
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

OUT="$WORK/last-run.md"
{
    echo "## Benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
        "Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at start."
    echo "Tools: $(rustc --version), $(go version 2>/dev/null | cut -d' ' -f3), $(hyperfine --version)."
    echo "Command: \`bash benches/run.sh\` (ROUNDS=$ROUNDS DURATION=$DURATION THREADS=$THREADS)."
    echo
} | tee "$OUT"

say "measuring (about two minutes)"
timeout --signal=INT "$SUITE_TIMEOUT" "$LOADGEN" suite \
    --ours "embed-release=$BIN/embed-release" \
    --ours "embed-size=$BIN/embed-size" \
    --peer "rust-mio-floor=$PEERS/rust-mio-floor" \
    --peer "rust-hyper=$PEERS/rust-hyper" \
    --peer "go-nethttp=$PEERS/go-nethttp" \
    --shim "cniserver-shim=$BIN/cniserver-shim" \
    --client "rust-oneshot-client=$PEERS/rust-oneshot-client" \
    --client "go-client=$PEERS/go-client" \
    --rounds "$ROUNDS" --duration "$DURATION" --threads "$THREADS" \
    --idle "$IDLE" --exec-runs "$EXEC_RUNS" --workdir "$RUN" | tee -a "$OUT"

say "the tables are also in $OUT"
