#!/usr/bin/env bash
# Runs every test. Installs what the tests need when missing (the reference
# Prometheus 3.5.3 + promtool into .cache/, Prometheus 3.5.3's PromQL test scripts into
# .cache/promql-testdata/, moto's S3 server into .cache/moto/ for the object-storage
# tests, Debian's chromium for the UI test),
# builds the orrery binary the end-to-end tests start, then runs the whole
# workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prometheus.sh
bash scripts/install-s3-server.sh
if ! bash scripts/install-promql-testdata.sh; then
  # The conformance runner then falls back to ../shared/promql-testdata when it exists
  # (and says so), or fails naming the command to run.
  echo "test.sh: could not fetch Prometheus's PromQL test scripts into .cache/promql-testdata" >&2
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: installing Debian's chromium for the UI test" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2
fi
# One build for the binary and every test target: `--workspace --all-targets` resolves
# dependency features exactly as the `cargo test` below does, so nothing is compiled
# twice (`cargo build --bin orrery` alone unified features differently and rebuilt
# tokio/hyper/tonic/... and every crate of ours: +5.5 min on 2 cores).
cargo build --locked --workspace --all-targets
cargo test --locked --workspace --all-targets --no-fail-fast "$@"
