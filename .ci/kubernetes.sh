#!/usr/bin/env bash
# Installs kubernetes-validate (PyPI) into target/kubernetes-validate/ for
# tests/integration/kubernetes.rs, which validates every object the agent sends to the
# fake Kubernetes API against the real OpenAPI schemas. The test finds it
# there (or through KUBERNETES_VALIDATE / PATH); with CI=true it fails
# without it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/kubernetes-validate
if [ -x "$VENV/bin/kubernetes-validate" ]; then
    exit 0
fi
if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || {
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    }
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
"$VENV/bin/kubernetes-validate" --version
