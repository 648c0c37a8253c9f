#!/usr/bin/env bash
# Runs the benchmark suite side by side with its peers and prints the tables:
#
#   scripts/bench.sh          quick mode (lookups on 300k stored events; under 10 minutes)
#   scripts/bench.sh full     full mode (lookups on 1M and 10M stored events; 85 minutes on 2 cores, ~40 GB of disk)
#
# Installs what the peers need on a fresh Debian machine: PostgreSQL's server and pigz (Debian's
# packages), the Python venv with the AWS CLI (scripts/setup-venv.sh) plus DuckDB from PyPI, and
# s3s-fs (as scripts/test.sh does).
# Output goes to the terminal and to bench-<mode>.md in the current directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-quick}"
case "$mode" in
    quick) lookup_events=300000; ingest_events=100000; validate_mb=300; recovery_events=300000 ;;
    full) lookup_events=1000000,10000000; ingest_events=200000; validate_mb=1000; recovery_events=2000000 ;;
    *) echo "usage: scripts/bench.sh [quick|full]" >&2; exit 2 ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opentrail-target}"
step() { printf '\n== %s\n' "$*" >&2; }

apt_install() {
    if command -v apt-get >/dev/null 2>&1; then
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
    else
        echo "cannot install $* (no apt-get); the bench runs without them" >&2
    fi
}

step "peers: PostgreSQL, gzip, pigz, the AWS CLI, DuckDB, s3s-fs"
command -v initdb >/dev/null 2>&1 || [ -x /usr/lib/postgresql/15/bin/initdb ] || apt_install postgresql
command -v pigz >/dev/null 2>&1 || apt_install pigz
if ! command -v initdb >/dev/null 2>&1; then
    pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$pgbin" ] && export PATH="$pgbin:$PATH"
fi
venv="$(bash scripts/setup-venv.sh | tail -n 1)"
"$venv/bin/python" -c 'import duckdb' 2>/dev/null || "$venv/bin/pip" install -q 'duckdb==2.0.0' >&2
tools="${OPENTRAIL_TOOLS:-$HOME/.cache/opentrail-tools}"
if ! "$tools/bin/s3s-fs" --version 2>/dev/null | grep -q '0\.14\.1'; then
    cargo install s3s-fs@0.14.1 --features binary --locked --root "$tools" >&2
fi
export OPENTRAIL_S3S_FS="$tools/bin/s3s-fs" OPENTRAIL_AWS="$venv/bin/aws" OPENTRAIL_PYTHON="$venv/bin/python"

step "build"
cargo build --release -p opentrail-bench -p opentrail --locked >&2
bench="$CARGO_TARGET_DIR/release/opentrail-bench"

out="bench-$mode.md"
{
    echo "# OpenTrail benchmarks ($mode mode, $(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -srm)"
    "$bench" --suite ingest-lookup --ingest-events "$ingest_events" --lookup-events "$lookup_events"
    "$bench" --suite delivery
    "$bench" --suite validate --validate-mb "$validate_mb"
    "$bench" --suite auth
    "$bench" --suite recovery --recovery-events "$recovery_events"
    "$bench" --suite rules
    "$bench" --suite streams
} 2>&1 | tee "$out"
echo "tables written to $out" >&2
