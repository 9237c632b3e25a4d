#!/usr/bin/env bash
# Print the environment for a second, isolated local stack (its own ports and data folder),
# e.g. to run two test sessions side by side:  eval "$(stack/isolated-env.sh 2)"
# N in 1..9 shifts every port by N*100.
set -euo pipefail
n="${1:?usage: isolated-env.sh N}"
off=$((n * 100))
dir="${PAYSTREAM_ISOLATED_ROOT:-/tmp}/paystream-stack-$n"
cat <<ENV
export PAYSTREAM_STACK_DIR=$dir
export PAYSTREAM_KAFKA_PORT=$((19092 + off)) PAYSTREAM_KAFKA_CONTROLLER_PORT=$((19093 + off))
export PAYSTREAM_REGISTRY_PORT=$((18081 + off)) PAYSTREAM_PG_PORT=$((15432 + off))
export PAYSTREAM_STRIPE_MOCK_PORT=$((12111 + off)) PAYSTREAM_STRIPE_MOCK_HTTPS_PORT=$((12112 + off))
export PAYSTREAM_SIMGW_PORT=$((18090 + off)) PAYSTREAM_WEB_PORT=$((6066 + off)) PAYSTREAM_SINK_METRICS_PORT=$((6067 + off))
export PAYSTREAM_VAULT_SINK_METRICS_PORT=$((6070 + off)) PAYSTREAM_AUDIT_SINK_METRICS_PORT=$((6071 + off))
export PAYSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:$((19092 + off))
export PAYSTREAM_SCHEMA_REGISTRY_URL=http://127.0.0.1:$((18081 + off))/apis/ccompat/v7
export PAYSTREAM_POSTGRES_DSN=postgresql://postgres@127.0.0.1:$((15432 + off))/paystream
export PAYSTREAM_STRIPE_API_BASE=http://127.0.0.1:$((12111 + off))
export PAYSTREAM_SIMGW_URL=http://127.0.0.1:$((18090 + off))
ENV
