#!/usr/bin/env bash
# Runs every OpenTrail test: formatting, lints, Rust unit/integration tests (including the SIGKILL
# crash test), and the end-to-end suite that drives a real `opentrail serve` with the real AWS CLI
# v1 and boto3. Installs what it needs (a Python venv from PyPI) on a fresh Debian machine with Rust.
#
#   CARGO_TARGET_DIR   reused between runs (default: $HOME/.cache/opentrail-target)
#   OPENTRAIL_VENV     the Python venv (default: $HOME/.cache/opentrail-venv)
#   OPENTRAIL_TOOLS    where test servers are installed (default: $HOME/.cache/opentrail-tools);
#                      s3s-fs 0.14.1, the S3-compatible server the delivery tests write to
#   nats-server and openssl come from Debian's packages (installed when missing)
#   CHROMIUM           the browser the console tests drive (default: /usr/bin/chromium, from
#                      Debian's package, installed when missing); playwright-core from npm is
#                      installed into tests/console/node_modules by `npm ci`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opentrail-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "python venv (AWS CLI v1, boto3, pytest)"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
    else
        echo "python3 with the venv module is required" >&2
        exit 1
    fi
fi
venv="$(bash scripts/setup-venv.sh | tail -n 1)"

step "s3s-fs 0.14.1 (S3-compatible test server)"
tools="${OPENTRAIL_TOOLS:-$HOME/.cache/opentrail-tools}"
if ! "$tools/bin/s3s-fs" --version 2>/dev/null | grep -q '0\.14\.1'; then
    cargo install s3s-fs@0.14.1 --features binary --locked --root "$tools"
fi
export OPENTRAIL_S3S_FS="$tools/bin/s3s-fs"

step "nats-server and openssl (alerts tests: NATS JetStream, the SMTP server's certificate)"
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] || ! command -v openssl >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server openssl >/dev/null
    else
        echo "nats-server and openssl are required for the alerts tests" >&2
        exit 1
    fi
fi

step "Chromium and playwright-core (console tests)"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "Chromium is required for the console tests (set CHROMIUM to its path)" >&2
        exit 1
    fi
fi
if ! command -v npm >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "Node.js and npm are required for the console tests" >&2
        exit 1
    fi
fi
(cd tests/console && npm ci --silent --no-audit --no-fund)

step "cargo fmt --check"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, integration, crash)"
cargo test --workspace --locked

step "end-to-end: AWS CLI v1, boto3 and the console in Chromium against opentrail serve"
cargo build -p opentrail --locked
OPENTRAIL_BIN="$CARGO_TARGET_DIR/debug/opentrail" "$venv/bin/python" -m pytest tests/py -q -p no:cacheprovider

step "all tests passed"
