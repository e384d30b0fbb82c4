#!/usr/bin/env bash
# Test packaging/install.sh and the systemd units without touching the
# machine: every install goes into a temporary DESTDIR.
#
# Usage: packaging/test-install.sh [BINARY]
#   BINARY defaults to a stand-in shell script (the installer only copies it);
#   when a real agent binary is given, the installed config is also loaded
#   by it (`start` against a port where nothing listens must fail on the
#   connection, not on the config).
#
# Checks: empty token refused with a clear error and nothing written; a full
# install lays out the files with the right modes; a second identical run
# changes nothing; --gpus writes the template unit and per-GPU configs; all
# installed units pass `systemd-analyze verify` with no output at all.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
INSTALL=$HERE/install.sh
WORK=$(mktemp -d /tmp/agent-install-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failed=0
pass() { echo "PASS install: $*"; }
fail() { echo "FAIL install: $*"; failed=1; }

BIN=${1:-}
if [ -z "$BIN" ]; then
    BIN=$WORK/agent
    printf '#!/bin/sh\necho stand-in\n' >"$BIN"
    chmod +x "$BIN"
fi

# --- 1. empty token ---------------------------------------------------------
# No token in the environment and nothing on stdin: Semaphore's prompt gets
# an empty answer, and the installer stops as Go's does, writing nothing.
D=$WORK/empty-token
rc=0
out=$(env -u SEMAPHORE_REGISTRATION_TOKEN "$INSTALL" --binary "$BIN" --endpoint org.semaphoreci.com \
    --destdir "$D" </dev/null 2>&1) || rc=$?
if [ $rc = 1 ] && [[ $out == *"Registration token cannot be empty."* ]] && [ ! -e "$D" ]; then
    pass "empty token refused (exit $rc): $(tr '\n' ' ' <<<"$out")"
else
    fail "empty token not refused cleanly (exit $rc, wrote: $(find "$D" 2>/dev/null | head -3)): $out"
fi
rc=0
out=$("$INSTALL" --binary "$BIN" --endpoint org.semaphoreci.com --token "" --destdir "$D" 2>&1) || rc=$?
[ $rc != 0 ] && [ ! -e "$D" ] && pass "--token '' refused" || fail "--token '' accepted: $out"
rc=0
out=$(SEMAPHORE_REGISTRATION_TOKEN=t SEMAPHORE_AGENT_SYSTEMD_RESTART=sometimes "$INSTALL" --binary "$BIN" \
    --endpoint e --user root --destdir "$D" 2>&1) || rc=$?
[ $rc != 0 ] && [[ $out == *"'sometimes'"* ]] && [ ! -e "$D" ] && pass "a bad SEMAPHORE_AGENT_SYSTEMD_RESTART is named and refused" ||
    fail "bad restart value: exit $rc: $out"

# --- 2. a full single-agent install, with this agent's extras ---------------
D=$WORK/single
HOOK=$WORK/pre-job.sh
printf 'echo pre-job hook ran\n' >"$HOOK"
install_single() {
    SEMAPHORE_REGISTRATION_TOKEN='s3cr"et$' SEMAPHORE_AGENT_SHUTDOWN_HOOK=/opt/semaphore/agent/hooks/shutdown \
        "$INSTALL" --binary "$BIN" --prefix /opt/semaphore/agent \
        --endpoint org.semaphoreci.com --name gpu-box-0001 --user root \
        --env-var 'GREETING=hello world' --interruption-grace-period 600 \
        --disconnect-after-idle-timeout 300 --pre-job-hook "$HOOK" --notify --destdir "$D"
}
if out=$(install_single 2>&1); then
    pass "single install ran"
else
    fail "single install failed: $out"
fi
A=$D/opt/semaphore/agent
check_mode() { # PATH MODE
    if [ -e "$1" ] && [ "$(stat -c %a "$1")" = "$2" ]; then
        pass "${1#"$D"} mode $2"
    else
        fail "${1#"$D"} missing or mode $(stat -c %a "$1" 2>/dev/null) != $2"
    fi
}
check_mode "$A/agent" 755
check_mode "$A/config.yaml" 600
check_mode "$A/hooks/pre-job.sh" 755
check_mode "$D/etc/systemd/system/semaphore-agent.service" 644
cmp -s "$BIN" "$A/agent" && pass "binary copied as <dir>/agent" || fail "binary differs"

# The config: Go's keys in Go's order, then ours; values round-trip exactly.
if python3 - "$A/config.yaml" <<'EOF'; then
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]).read())
go = ["endpoint", "token", "no-https", "shutdown-hook-path", "disconnect-after-job",
      "disconnect-after-idle-timeout", "env-vars", "files", "fail-on-missing-files"]
assert list(c)[:len(go)] == go, f"key order {list(c)}"
want = {
    "endpoint": "org.semaphoreci.com", "token": 's3cr"et$', "name": "gpu-box-0001",
    "no-https": False, "shutdown-hook-path": "/opt/semaphore/agent/hooks/shutdown",
    "disconnect-after-job": False,
    "disconnect-after-idle-timeout": 300, "interruption-grace-period": 600,
    "pre-job-hook-path": "/opt/semaphore/agent/hooks/pre-job.sh",
    "env-vars": ["GREETING=hello world"], "files": [], "fail-on-missing-files": False,
}
assert c == want, f"config differs: {c}"
EOF
    pass "config.yaml: Go's keys in Go's order, then name/grace/hook, values exact"
else
    fail "config.yaml content"
fi
unit=$D/etc/systemd/system/semaphore-agent.service
grep -qx 'ExecStart=/opt/semaphore/agent/agent start --config-file /opt/semaphore/agent/config.yaml' "$unit" &&
    grep -qx 'Environment=SEMAPHORE_AGENT_LOG_FILE_PATH=/opt/semaphore/agent/agent.log' "$unit" &&
    grep -qx 'Restart=always' "$unit" && grep -qx 'RestartSec=60' "$unit" && grep -qx 'User=root' "$unit" &&
    grep -qx 'TimeoutStopSec=660' "$unit" && grep -qx 'Delegate=yes' "$unit" && grep -qx 'KillMode=mixed' "$unit" &&
    pass "unit: Go's ExecStart/Environment/Restart/User, TimeoutStopSec = grace + 60, Delegate, KillMode=mixed" ||
    fail "unit content: $(grep -E '^(ExecStart|Restart|User|TimeoutStopSec)=' "$unit" | tr '\n' ' ')"
grep -qx 'Type=notify' "$unit" && grep -qx 'WatchdogSec=15min' "$unit" &&
    pass "unit: --notify gives Type=notify with WatchdogSec=15min" ||
    fail "unit notify settings: $(grep -E '^(Type|WatchdogSec)=' "$unit" | tr '\n' ' ')"

# --- 3. idempotence ---------------------------------------------------------
snapshot() { (cd "$D" && find . -printf '%p %m %s %T@ %l\n' | sort && find . -type f -exec md5sum {} + | sort); }
before=$(snapshot)
out=$(install_single 2>&1) || fail "second install failed: $out"
after=$(snapshot)
if [ "$before" = "$after" ] && ! grep -q '^Wrote ' <<<"$out"; then
    pass "second identical run changed nothing (contents, modes, mtimes)"
else
    fail "second run changed the tree: $(diff <(echo "$before") <(echo "$after") | head -5)"
fi

# --- 4. one agent per GPU ---------------------------------------------------
D=$WORK/gpus
if out=$(SEMAPHORE_REGISTRATION_TOKEN=t "$INSTALL" --binary "$BIN" --prefix /opt/semaphore/agent \
    --endpoint org.semaphoreci.com \
    --name gpu-box-0001 --user root --gpus 0,1,3 --env-var 'HF_HOME=/data/hf 100%' --destdir "$D" 2>&1); then
    pass "--gpus 0,1,3 install ran"
else
    fail "--gpus install failed: $out"
fi
A=$D/opt/semaphore/agent
tunit=$D/etc/systemd/system/semaphore-agent@.service
for g in 0 1 3; do
    grep -qx "name: \"gpu-box-0001-gpu$g\"" "$A/gpu$g/config.yaml" 2>/dev/null &&
        pass "gpu$g/config.yaml has its own name" || fail "gpu$g/config.yaml name"
    grep -qx "gpus: \"$g\"" "$A/gpu$g/config.yaml" 2>/dev/null &&
        pass "gpu$g/config.yaml has gpus: \"$g\"" || fail "gpu$g/config.yaml gpus: $(grep gpus "$A/gpu$g/config.yaml")"
    [ -f "$A/gpu$g/agent.log" ] && pass "gpu$g has its own agent log" || fail "no $A/gpu$g/agent.log"
done
[ ! -e "$A/gpu2" ] && [ ! -e "$D/etc/systemd/system/semaphore-agent.service" ] &&
    pass "no gpu2, no single-agent unit" || fail "unexpected files for --gpus"
grep -qx 'ExecStart=/opt/semaphore/agent/agent start --config-file /opt/semaphore/agent/gpu%i/config.yaml --env-vars "HF_HOME=/data/hf 100%%"' "$tunit" &&
    pass "template unit: per-instance config (its gpus), extra vars via --env-vars" ||
    fail "template ExecStart: $(grep ^ExecStart "$tunit")"
grep -qx 'Environment=SEMAPHORE_AGENT_LOG_FILE_PATH=/opt/semaphore/agent/gpu%i/agent.log' "$tunit" &&
    ! grep -q CUDA_VISIBLE_DEVICES "$tunit" &&
    pass "template unit: an agent log per instance, no CUDA_VISIBLE_DEVICES line" ||
    fail "template unit: $(grep -E 'LOG_FILE|CUDA' "$tunit")"

# --- 4b. macOS: the launchd daemon as Go writes it ----------------------------
D=$WORK/launchd
if out=$(SEMAPHORE_REGISTRATION_TOKEN=t SEMAPHORE_AGENT_INSTALLATION_USER=semaphore "$INSTALL" --binary "$BIN" \
    --prefix /opt/semaphore/agent --endpoint org.semaphoreci.com --service-manager launchd --destdir "$D" 2>&1) &&
    python3 - "$D/Library/LaunchDaemons/com.semaphoreci.agent.plist" <<'EOF'; then
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
want = {
    "Label": "com.semaphoreci.agent",
    "ProgramArguments": ["/opt/semaphore/agent/agent", "start", "--config-file",
                         "/opt/semaphore/agent/config.yaml"],
    "EnvironmentVariables": {"SEMAPHORE_AGENT_LOG_FILE_PATH": "/opt/semaphore/agent/agent.log",
                             "PATH": "/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin"},
    "RunAtLoad": False, "KeepAlive": {"Crashed": True},
    "UserName": "semaphore", "WorkingDirectory": "/opt/semaphore/agent",
}
assert p == want, p
EOF
    pass "launchd: com.semaphoreci.agent.plist parses (plistlib) to Go's daemon"
else
    fail "launchd plist: $out"
fi

# --- 5. systemd-analyze verify ----------------------------------------------
if ! command -v systemd-analyze >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }
fi
# verify --root needs the distribution's own units (sysinit.target ...) in
# the root; it resolves ExecStart inside the root, so a missing binary fails.
sysunits=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$d/sysinit.target" ]; then sysunits=$d; break; fi
done
[ -n "$sysunits" ] || fail "no systemd unit directory with sysinit.target on this machine"
verify() { # ROOT UNIT...
    local root=$1 out
    shift
    mkdir -p "$root/usr/lib/systemd"
    [ -e "$root/usr/lib/systemd/system" ] || cp -a "$sysunits" "$root/usr/lib/systemd/system"
    # Any output is a finding (a bad value is only a warning, exit 0).
    out=$(systemd-analyze verify --root="$root" "$@" 2>&1) || true
    if [ -z "$out" ]; then pass "systemd-analyze verify $*"; else fail "systemd-analyze verify $*: $out"; fi
}
verify "$WORK/single" semaphore-agent.service
verify "$WORK/gpus" semaphore-agent@0.service semaphore-agent@3.service
# ...and verify does catch a broken unit.
sed -i 's/^Restart=always/Restart=sometimes/' "$WORK/single/etc/systemd/system/semaphore-agent.service"
if systemd-analyze verify --root="$WORK/single" semaphore-agent.service 2>&1 | grep -q 'restart specifier'; then
    pass "systemd-analyze verify reports a deliberately broken unit"
else
    fail "systemd-analyze verify missed a broken unit"
fi

# --- 6. the real agent accepts the installed config -------------------------
# A config error makes the agent exit 2 naming the config file, before any
# connection; pointed at a closed loopback port, a good config gets past
# that and fails (or retries) on registration instead.
agent_start() { # CONFIG
    timeout 3 env -i PATH=/usr/bin:/bin HOME="$WORK" SEMAPHORE_AGENT_LOG_FILE_PATH="$WORK/agent.log" \
        "$BIN" start --config-file "$1" 2>&1
}
if "$BIN" --help 2>&1 | grep -q start; then
    cfg=$WORK/single/opt/semaphore/agent/config.yaml
    sed -i -e 's/^endpoint: .*/endpoint: "127.0.0.1:9"/' -e 's/^no-https: .*/no-https: true/' "$cfg"
    rc=0
    out=$(agent_start "$cfg") || rc=$?
    if [ $rc = 2 ] || grep -q 'in config file' <<<"$out"; then
        fail "agent rejected the installed config (exit $rc): $(tail -3 <<<"$out")"
    elif grep -q 's3cr' <<<"$out$(cat "$WORK/agent.log" 2>/dev/null)"; then
        fail "the token appears in the agent's output"
    else
        pass "agent accepted the installed config (exit $rc: $(tail -1 <<<"$out" | cut -c1-100))"
    fi
    # ...and the same check does see a bad key.
    echo "no-such-key: 1" >>"$cfg"
    rc=0
    out=$(agent_start "$cfg") || rc=$?
    [ $rc = 2 ] && pass "agent rejects the config with an unknown key (exit 2)" ||
        fail "agent accepted an unknown config key (exit $rc)"
fi

[ $failed = 0 ] || { echo "FAIL install: some checks failed"; exit 1; }
echo "PASS install: all checks"
