#!/usr/bin/env bash
# What tests/integration/operations.rs needs on a fresh machine: python3 with the
# Prometheus project's Python client (PyPI prometheus-client), whose text
# parser reads the agent's /metrics. With CI=true that test fails without it.
set -euo pipefail

if python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "prometheus_client already installed"
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-pip >/dev/null
fi
SPEC='prometheus-client>=0.16,<1'
# Debian's python3 refuses pip outside a venv (PEP 668) unless told; older
# pips do not know the flag, so try without it first.
python3 -m pip install -q --disable-pip-version-check "$SPEC" ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "$SPEC"
python3 -c 'import prometheus_client; print("prometheus_client", prometheus_client.__file__)'
