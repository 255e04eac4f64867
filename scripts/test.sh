#!/usr/bin/env bash
# Runs every test. Installs what the tests need when missing (the reference
# Prometheus 3.5.3 + promtool into .cache/), builds the orrery binary the
# end-to-end tests start, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prometheus.sh
cargo build --locked --bin orrery
cargo test --locked --workspace --all-targets "$@"
