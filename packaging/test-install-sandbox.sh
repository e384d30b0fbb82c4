#!/usr/bin/env bash
# install.sh from the release archive, run the ways Semaphore's users run it,
# inside throwaway root filesystems (chroot in a private mount namespace):
# nothing on this machine changes. Each root is the Debian bookworm base of
# packaging/base-rootfs.sh with a `semaphore` user (uid 1000).
#
# Usage: packaging/test-install-sandbox.sh ARCHIVE BASE_TAR DEV_HUB
#   ARCHIVE   agent_Linux_x86_64.tar.gz (packaging/release.sh), or
#             agent_Linux_arm64.tar.gz with an arm64 BASE_TAR: the same
#             checks in an arm64 root, every program in it (install.sh's
#             bash, its tools, the agent and its jobs) run by
#             qemu-aarch64-static through binfmt_misc (test-lib.sh's
#             binfmt_aarch64; without it, a SKIP line says why)
#   BASE_TAR  the rootfs tarball (packaging/base-rootfs.sh, or
#             packaging/foreign-rootfs.sh arm64)
#   DEV_HUB   the dev-hub example binary (cargo build --example dev-hub)
#
# Checks:
#  1. the AWS stack's install step (agent-aws-stack's ansible role): unpack
#     into /opt/semaphore/agent, a shutdown hook in hooks/, install.sh with
#     only environment variables (START=false, DUMMY token and
#     organization, RESTART_SEC=300), the toolbox from an HTTP URL on
#     127.0.0.1; the files Go's installer writes, config 0600, the toolbox
#     in ~semaphore/.toolbox sourced once from ~/.bash_profile, and the unit
#     passes systemd-analyze verify;
#  2. a second run leaves the tree byte for byte the same (and mtimes);
#  3. the toolbox refused: a bad SEMAPHORE_TOOLBOX_SHA256, a 404, a missing
#     file (each names what failed, and nothing is written);
#  4. the interactive path (Docs' `sudo ./install.sh`): the prompts answered
#     through a PTY, toolbox from a local path with its sha256, write the
#     same files as 1;
#  5. the stack's boot-time edits of config.yaml (yq in start-agent.sh,
#     here a PyYAML round trip) leave a file the agent loads; the agent
#     started with the unit's ExecStart, as the unit's user, registers with
#     the dev hub, matches the health check's `ps aux | grep "/opt/semaphore/
#     agent/agent start"`, and runs a job whose `checkout` comes from
#     ~/.bash_profile (the toolbox's stand-in libcheckout);
#  6. the service manager's calls (stand-ins for systemctl and launchctl);
#  7. the toolbox install.sh picks for the host's `uname -m` (Semaphore's
#     self-hosted-linux-arm.tar on aarch64), fetched through a stand-in for
#     curl that sends GitHub's release URLs to the web server on 127.0.0.1.
set -euo pipefail

ARCHIVE=${1:?usage: $0 ARCHIVE BASE_TAR DEV_HUB}
BASE_TAR=${2:?usage: $0 ARCHIVE BASE_TAR DEV_HUB}
DEV_HUB=${3:?usage: $0 ARCHIVE BASE_TAR DEV_HUB}
[ "$(id -u)" = 0 ] || { echo "SKIP sandbox: needs root (chroot, mount namespaces)"; [ "${CI:-}" != true ] || exit 1; exit 0; }
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test-lib.sh
. "$HERE/test-lib.sh"
WORK=$(mktemp -d /var/tmp/agent-install-sandbox.XXXXXX)
HTTP_PID=""
HUB_PID=""
cleanup() {
    binfmt_aarch64_down
    [ -z "$HUB_PID" ] || kill "$HUB_PID" 2>/dev/null || true
    [ -z "$HTTP_PID" ] || kill "$HTTP_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    # Every mount was made in a private namespace that is gone by now, so
    # this removes plain files only.
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
failed=0
A=/opt/semaphore/agent
# The archive's architecture decides the root's and the toolbox it must pick.
tar -C "$WORK" -xzf "$ARCHIVE" agent
AGENT_FILE=$(file -b "$WORK/agent")
FOREIGN=""
WANT_TB=self-hosted-linux.tar
LABEL=sandbox
if [[ $AGENT_FILE == *"ARM aarch64"* ]]; then
    WANT_TB=self-hosted-linux-arm.tar
    LABEL=sandbox-arm64
    if [ "$(uname -m)" != aarch64 ]; then
        FOREIGN=arm64
        if ! binfmt_aarch64 "$WORK/agent"; then
            echo "SKIP $LABEL: aarch64 programs cannot run here: $BINFMT_WHY"
            exit 0
        fi
        echo "$LABEL: binfmt_misc hands aarch64 programs to $BINFMT_INTERP"
    fi
fi
pass() { echo "PASS $LABEL: $*"; }
fail() { echo "FAIL $LABEL: $*"; failed=1; }

# --- the toolbox tarball: the real layout, stand-in programs ------------------
TB=$WORK/toolbox-src
mkdir -p "$TB/toolbox"
for b in cache artifact test-results spc; do
    printf '#!/bin/sh\n# A stand-in for the toolbox'"'"'s %s CLI (test only).\necho "stand-in %s $*"\n' "$b" "$b" >"$TB/toolbox/$b"
    chmod 755 "$TB/toolbox/$b"
done
cat >"$TB/toolbox/libcheckout" <<'EOF'
# A stand-in for the toolbox's libcheckout (test only): defines `checkout`
# from the job's SEMAPHORE_GIT_* variables, and leaves a mark.
checkout() {
    mkdir -p "$HOME/$SEMAPHORE_GIT_DIR" &&
        echo "stand-in checkout of $SEMAPHORE_GIT_URL at $SEMAPHORE_GIT_SHA ($SEMAPHORE_GIT_BRANCH)" \
            >"$HOME/$SEMAPHORE_GIT_DIR/.checked-out" &&
        cd "$HOME/$SEMAPHORE_GIT_DIR"
}
EOF
printf '# A stand-in for the toolbox'"'"'s libchecksum (test only).\nchecksum() { sha256sum "$1" | cut -c1-32; }\n' >"$TB/toolbox/libchecksum"
printf '#!/bin/sh\n# A stand-in for the toolbox'"'"'s retry (test only).\nexec "$@"\n' >"$TB/toolbox/retry"
chmod 755 "$TB/toolbox/retry"
printf 'source ~/.toolbox/libcheckout\nsource ~/.toolbox/libchecksum\n' >"$TB/toolbox/toolbox"
# Like the real install-toolbox: link the CLIs into /usr/local/bin (going
# on when that fails), then source the toolbox and append the profile line.
cat >"$TB/toolbox/install-toolbox" <<'EOF'
#!/usr/bin/env bash
# A stand-in for the toolbox's install-toolbox (test only).
env >/tmp/install-toolbox.env
for b in cache artifact test-results retry; do
    ln -sf ~/.toolbox/$b /usr/local/bin/$b 2>/dev/null && echo "$b installed" || echo "Error installing $b at /usr/local/bin/$b"
done
source ~/.toolbox/toolbox && echo 'source ~/.toolbox/toolbox' >> ~/.bash_profile
EOF
chmod 755 "$TB/toolbox/install-toolbox"
tar -C "$TB" -cf "$WORK/self-hosted-linux.tar" toolbox
TB_SHA=$(sha256sum "$WORK/self-hosted-linux.tar" | cut -d' ' -f1)
# The arm one differs by a file, so which one was installed shows.
cp -a "$TB" "$WORK/toolbox-arm"
echo arm >"$WORK/toolbox-arm/toolbox/.stand-in-arch"
tar -C "$WORK/toolbox-arm" -cf "$WORK/self-hosted-linux-arm.tar" toolbox

# A web server on 127.0.0.1 for the tarball (and a 404 for anything else).
mkdir -p "$WORK/www/releases"
cp "$WORK/self-hosted-linux.tar" "$WORK/self-hosted-linux-arm.tar" "$WORK/www/releases/"
# Created here: the background child opens it, perhaps after the first poll.
: >"$WORK/http.log"
python3 -m http.server 0 --bind 127.0.0.1 --directory "$WORK/www" >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
PORT=""
for _ in $(seq 1 50); do
    PORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$WORK/http.log" | head -1)
    [ -z "$PORT" ] || break
    sleep 0.1
done
[ -n "$PORT" ] || { fail "python http.server did not start: $(cat "$WORK/http.log")"; exit 1; }
TB_URL=http://127.0.0.1:$PORT/releases/self-hosted-linux.tar

# --- sandbox roots --------------------------------------------------------------
# new_root NAME: the base with a semaphore user, and the archive unpacked
# the way the AWS stack's ansible role does it (owner semaphore, 0755).
new_root() {
    local r=$WORK/$1
    mkdir -p "$r"
    tar -C "$r" -xf "$BASE_TAR"
    chroot "$r" useradd --create-home --uid 1000 --shell /bin/bash semaphore
    mkdir -p "$r$A/hooks"
    tar -C "$r$A" -xzf "$ARCHIVE"
    printf '#!/bin/bash\n# A stand-in for the stack'"'"'s terminate-instance.sh (test only).\necho shutdown\n' >"$r$A/hooks/shutdown"
    chmod 0755 "$r$A" "$r$A/hooks" "$r$A/hooks/shutdown"
    chown -R 1000:1000 "$r$A"
    echo "$r"
}
# in_root ROOT CMD...: CMD in ROOT as root, /dev and /proc mounted in a
# private mount namespace (gone when CMD ends), the network shared.
in_root() {
    local r=$1
    shift
    unshare --mount --propagation private --pid --fork bash -c '
        r=$1; shift
        mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" && exec chroot "$r" "$@"' _ "$r" "$@"
}
# snapshot ROOT [mtimes]: what install.sh may touch, as text: paths,
# modes, owners, sizes, link targets, contents (and mtimes if asked).
snapshot() {
    local r=$1 fmt='%p %m %U:%G %s %l\n'
    [ "${2:-}" != mtimes ] || fmt='%p %m %U:%G %s %T@ %l\n'
    (
        cd "$r"
        find ./opt ./etc/systemd ./home/semaphore ./usr/local/bin -printf "$fmt" | sort
        find ./opt ./etc/systemd ./home/semaphore ./usr/local/bin -type f -exec sha256sum {} + | sort -k2
    )
}
AWS_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C
    SEMAPHORE_AGENT_INSTALLATION_USER=semaphore
    SEMAPHORE_AGENT_SHUTDOWN_HOOK=$A/hooks/shutdown
    SEMAPHORE_TOOLBOX_VERSION=v1.23.4
    SEMAPHORE_AGENT_START=false
    SEMAPHORE_REGISTRATION_TOKEN=DUMMY
    SEMAPHORE_ORGANIZATION=DUMMY
    SEMAPHORE_AGENT_SYSTEMD_RESTART_SEC=300)

# --- 1. the AWS stack's install step ------------------------------------------
R=$(new_root aws)
if out=$(in_root "$R" "${AWS_ENV[@]}" SEMAPHORE_TOOLBOX_TARBALL="$TB_URL" $A/install.sh 2>&1); then
    pass "AWS stack install step ran (env only, toolbox from $TB_URL)"
else
    fail "AWS stack install step failed: $out"
fi
AWS_SNAPSHOT=$(snapshot "$R")
# The installed agent runs (under emulation in an arm64 root).
rc=0
out=$(in_root "$R" bash -c "uname -m; $A/agent version" 2>&1) || rc=$?
if [ $rc = 0 ] && [ "$(tail -1 <<<"$out")" = "$("$WORK/agent" version 2>&1)" ]; then
    pass "the installed agent runs on $(head -1 <<<"$out"): 'agent version' says $(tail -1 <<<"$out")"
else
    fail "the installed agent's version (exit $rc): $out"
fi
UNIT=$R/etc/systemd/system/semaphore-agent.service
expected_unit() {
    cat <<'EOF'
[Unit]
Description=Semaphore agent
After=network.target
StartLimitIntervalSec=0

[Service]
Type=simple
Restart=always
RestartSec=300
User=semaphore
WorkingDirectory=/opt/semaphore/agent
ExecStart=/opt/semaphore/agent/agent start --config-file /opt/semaphore/agent/config.yaml
Environment=SEMAPHORE_AGENT_LOG_FILE_PATH=/opt/semaphore/agent/agent.log
EOF
}
# Go's lines, in Go's order, come first; ours follow before [Install].
if [ "$(head -n 13 "$UNIT" 2>/dev/null)" = "$(expected_unit)" ] &&
    grep -qx 'Delegate=yes' "$UNIT" && tail -n 2 "$UNIT" | grep -qx 'WantedBy=multi-user.target'; then
    pass "unit: Go's semaphore-agent.service line for line (RestartSec=300), then KillMode/Delegate/TimeoutStopSec"
else
    fail "unit differs from Go's: $(diff <(expected_unit) <(head -n 13 "$UNIT" 2>&1) | head -8)"
fi
if python3 - "$R$A/config.yaml" <<'EOF'; then
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
want = {"endpoint": "DUMMY.semaphoreci.com", "token": "DUMMY", "no-https": False,
        "shutdown-hook-path": "/opt/semaphore/agent/hooks/shutdown",
        "disconnect-after-job": False, "disconnect-after-idle-timeout": 0,
        "env-vars": [], "files": [], "fail-on-missing-files": False}
assert c == want, c
assert list(c) == list(want), list(c)
EOF
    pass "config.yaml: exactly Go's keys and values"
else
    fail "config.yaml content: $(cat "$R$A/config.yaml")"
fi
[ "$(stat -c '%a %u' "$R$A/config.yaml")" = "600 1000" ] && pass "config.yaml is 0600, owned by semaphore" ||
    fail "config.yaml mode/owner $(stat -c '%a %u' "$R$A/config.yaml")"
H=$R/home/semaphore
if [ -f "$H/.toolbox/libcheckout" ] && [ -f "$H/.toolbox/install-toolbox" ] &&
    [ "$(stat -c %u "$H/.toolbox/libcheckout")" = 1000 ] &&
    [ "$(grep -cxF 'source ~/.toolbox/toolbox' "$H/.bash_profile")" = 1 ] &&
    [ "$(stat -c %u "$H/.bash_profile")" = 1000 ]; then
    pass "toolbox in ~semaphore/.toolbox (owned by it), 'source ~/.toolbox/toolbox' once in .bash_profile"
else
    fail "toolbox: $(ls -la "$H" "$H/.toolbox" 2>&1 | head -20) profile: $(cat "$H/.bash_profile" 2>&1)"
fi
if [ -f "$R/tmp/install-toolbox.env" ] && ! grep -q 'SEMAPHORE_\|DUMMY' "$R/tmp/install-toolbox.env" &&
    grep -qx 'HOME=/home/semaphore' "$R/tmp/install-toolbox.env" && grep -qx 'USER=semaphore' "$R/tmp/install-toolbox.env"; then
    pass "install-toolbox ran as semaphore with a clean environment (no SEMAPHORE_* variable, no token)"
else
    fail "install-toolbox's environment: $(cat "$R/tmp/install-toolbox.env" 2>&1 | tr '\n' ' ')"
fi
grep -q 'GET /releases/self-hosted-linux.tar HTTP/1.1" 200' "$WORK/http.log" &&
    pass "the toolbox was downloaded from 127.0.0.1" || fail "no toolbox download in the server log"
# systemd-analyze verify inside the root (needs the distribution's units for
# sysinit.target; ExecStart resolves in the root). Any output is a finding.
sysunits=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$d/sysinit.target" ]; then sysunits=$d; break; fi
done
if [ -z "$sysunits" ] || ! command -v systemd-analyze >/dev/null; then
    fail "no systemd-analyze or distribution units on this machine"
else
    mkdir -p "$WORK/verify/usr/lib/systemd" "$WORK/verify/etc/systemd/system" "$WORK/verify$A"
    cp -a "$sysunits" "$WORK/verify/usr/lib/systemd/system"
    cp "$UNIT" "$WORK/verify/etc/systemd/system/"
    cp "$R$A/agent" "$WORK/verify$A/agent"
    v=$(systemd-analyze verify --root="$WORK/verify" semaphore-agent.service 2>&1) || true
    [ -z "$v" ] && pass "systemd-analyze verify semaphore-agent.service: no findings" || fail "systemd-analyze verify: $v"
fi

# --- 2. a second run changes nothing -------------------------------------------
before=$(snapshot "$R" mtimes)
out=$(in_root "$R" "${AWS_ENV[@]}" SEMAPHORE_TOOLBOX_TARBALL="$TB_URL" $A/install.sh 2>&1) || fail "second run failed: $out"
after=$(snapshot "$R" mtimes)
if [ "$before" = "$after" ]; then
    pass "second run: /opt, /etc/systemd, ~semaphore and /usr/local/bin byte for byte the same (mtimes too)"
else
    fail "second run changed: $(diff <(echo "$before") <(echo "$after") | head -10)"
fi

# --- 3. the toolbox refused -----------------------------------------------------
refused() { # WHAT WANT_MESSAGE ENV...: install.sh must fail saying WANT_MESSAGE, writing nothing
    local what=$1 want=$2 rc=0 out before
    shift 2
    before=$(snapshot "$R" mtimes)
    out=$(in_root "$R" "${AWS_ENV[@]}" SEMAPHORE_REGISTRATION_TOKEN=other "$@" $A/install.sh 2>&1) || rc=$?
    if [ $rc != 0 ] && [[ $out == *"$want"* ]] && [ "$before" = "$(snapshot "$R" mtimes)" ]; then
        pass "$what refused (exit $rc, nothing written): $(grep error <<<"$out" | cut -c1-200)"
    else
        fail "$what: exit $rc, changed: $([ "$before" = "$(snapshot "$R" mtimes)" ] && echo no || echo yes): $out"
    fi
}
refused "a bad SEMAPHORE_TOOLBOX_SHA256" "has sha256 $TB_SHA, but SEMAPHORE_TOOLBOX_SHA256 is $(printf '0%.0s' $(seq 64))" \
    SEMAPHORE_TOOLBOX_TARBALL="$TB_URL" SEMAPHORE_TOOLBOX_SHA256="$(printf '0%.0s' $(seq 64))"
refused "a 404 toolbox URL" "cannot download the toolbox from http://127.0.0.1:$PORT/releases/nope.tar: HTTP status 404" \
    SEMAPHORE_TOOLBOX_TARBALL="http://127.0.0.1:$PORT/releases/nope.tar"
refused "a missing toolbox file" "SEMAPHORE_TOOLBOX_TARBALL: no such file /nope.tar" SEMAPHORE_TOOLBOX_TARBALL=/nope.tar
tar -C "$TB/toolbox" -cf "$R/tmp/not-a-toolbox.tar" libcheckout
refused "a tarball that is no toolbox" "has no toolbox/install-toolbox" SEMAPHORE_TOOLBOX_TARBALL=/tmp/not-a-toolbox.tar

# Semaphore's own refusals, word for word, writing nothing.
before=$(snapshot "$R" mtimes)
rc=0
out=$(in_root "$R" "${AWS_ENV[@]}" SEMAPHORE_AGENT_INSTALLATION_USER=no-such-user $A/install.sh 2>&1) || rc=$?
[ $rc = 1 ] && [ "$(tail -1 <<<"$out")" = "User no-such-user does not exist. Exiting..." ] && [ "$before" = "$(snapshot "$R" mtimes)" ] &&
    pass "an unknown user: 'User no-such-user does not exist. Exiting...' (exit 1, nothing written)" || fail "unknown user: exit $rc: $out"
rc=0
out=$(in_root "$R" "${AWS_ENV[@]}" setpriv --reuid=1000 --regid=1000 --clear-groups $A/install.sh 2>&1) || rc=$?
[ $rc = 1 ] && [ "$out" = "Please run with sudo." ] && [ "$before" = "$(snapshot "$R" mtimes)" ] &&
    pass "not root: 'Please run with sudo.' (exit 1, nothing written)" || fail "not root: exit $rc: $out"

# --- 4. the interactive path ------------------------------------------------------
R2=$(new_root interactive)
cp "$WORK/self-hosted-linux.tar" "$R2/tmp/self-hosted-linux.tar"
cat >"$WORK/answer-prompts.py" <<'EOF'
# Runs argv[1:] on a PTY and answers install.sh's prompts; exits with its
# status. Fails if a prompt is not the expected one (bounded waits).
import os, pty, re, select, sys, time
answers = [("Enter organization: ", "DUMMY"), ("Enter registration token: ", "DUMMY"),
           (re.compile(r"Enter user \[[^\]]*\]: "), "semaphore")]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
seen, buf, deadline = [], b"", time.time() + 120
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 1)
    if not r:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    buf += chunk
    text = buf.decode(errors="replace")
    if answers:
        want, answer = answers[0]
        hit = text.endswith(want) if isinstance(want, str) else want.search(text.splitlines()[-1] if text.splitlines() else "")
        if hit:
            seen.append(text.splitlines()[-1])
            os.write(fd, (answer + "\r").encode())
            answers.pop(0)
            buf = b""
            sys.stdout.write(text)
_, status = os.waitpid(pid, 0)
sys.stdout.write(buf.decode(errors="replace"))
print("\nPROMPTS: " + " | ".join(seen))
sys.exit(1 if answers else os.waitstatus_to_exitcode(status))
EOF
if out=$(python3 "$WORK/answer-prompts.py" unshare --mount --propagation private --pid --fork bash -c '
        r=$1; shift
        mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" && exec chroot "$r" "$@"' _ "$R2" \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C TERM=dumb \
    SEMAPHORE_AGENT_SHUTDOWN_HOOK=$A/hooks/shutdown SEMAPHORE_AGENT_START=false \
    SEMAPHORE_AGENT_SYSTEMD_RESTART_SEC=300 \
    SEMAPHORE_TOOLBOX_TARBALL=/tmp/self-hosted-linux.tar SEMAPHORE_TOOLBOX_SHA256="$TB_SHA" \
    $A/install.sh 2>&1); then
    pass "interactive install: $(grep '^PROMPTS' <<<"$out")"
else
    fail "interactive install: $out"
fi
rm -f "$R2/tmp/self-hosted-linux.tar"
if [ "$(snapshot "$R2")" = "$AWS_SNAPSHOT" ]; then
    pass "the answered prompts wrote the same files as the environment (paths, modes, owners, contents)"
else
    fail "interactive files differ: $(diff <(echo "$AWS_SNAPSHOT") <(snapshot "$R2") | head -10)"
fi

# --- 5. the stack's boot-time edits, then the unit's ExecStart against a hub ---
cat >"$WORK/job.yaml" <<EOF
env_vars:
  - name: SEMAPHORE_GIT_URL
    value: $(printf 'git@github.com:example/app.git' | base64)
  - name: SEMAPHORE_GIT_DIR
    value: $(printf 'app' | base64)
  - name: SEMAPHORE_GIT_SHA
    value: $(printf '0123456789abcdef' | base64)
  - name: SEMAPHORE_GIT_BRANCH
    value: $(printf 'main' | base64)
commands:
  - directive: checkout
  - directive: test "\$(type -t checkout)" = function && pwd && id -un
  - directive: cat .checked-out; sleep 3
EOF
start_dev_hub "$WORK/job.yaml" || fail "dev hub did not start: $(cat "$WORK/hub.log")"
# start-agent.sh's yq edits, as a YAML round trip; no-https because the
# dev hub speaks plain HTTP (the one change the stack does not make).
python3 - "$R$A/config.yaml" "$HUB" <<'EOF'
import sys, yaml
path, hub = sys.argv[1], sys.argv[2]
c = yaml.safe_load(open(path))
c["name"] = "i-0123456789abcdef0__" + "Ab3dEf6hIj9kL"
c["endpoint"] = hub
c["token"] = "dev"
c["disconnect-after-job"] = True
c["disconnect-after-idle-timeout"] = 120
c["upload-job-logs"] = "when-trimmed"
c["env-vars"] = c["env-vars"] + ["AWS_STACK=yes", "ANOTHER=value"]
c["no-https"] = True
yaml.safe_dump(c, open(path, "w"), default_flow_style=False)
EOF
chown 1000:1000 "$R$A/config.yaml"
EXEC=$(sed -n 's/^ExecStart=//p' "$UNIT")
WD=$(sed -n 's/^WorkingDirectory=//p' "$UNIT")
LOGF=$(sed -n 's/^Environment=SEMAPHORE_AGENT_LOG_FILE_PATH=//p' "$UNIT")
# As systemd would run it: the unit's user, its HOME, its directory, the
# unit's environment; ExecStart word-split as systemd splits a plain line.
# A script in the root runs it, so no wrapper's command line holds the
# pattern the health check looks for (only the agent's own may match).
cat >"$R/tmp/run-unit.sh" <<EOF
#!/bin/bash
cd "$WD" || exit 1
exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/semaphore USER=semaphore LOGNAME=semaphore \\
    SHELL=/bin/bash SEMAPHORE_AGENT_LOG_FILE_PATH="$LOGF" \\
    setpriv --reuid=1000 --regid=1000 --init-groups $EXEC
EOF
chmod 755 "$R/tmp/run-unit.sh"
in_root "$R" /tmp/run-unit.sh >"$WORK/agent.out" 2>&1 &
AGENT_PID=$!
matched=""
for _ in $(seq 1 600); do
    # The stack's health check, word for word.
    if procs=$(ps aux | grep "/opt/semaphore/agent/agent start" | grep -v grep) && [ -n "$procs" ]; then
        matched=$procs
        # ...and what it matched is the installed agent itself.
        pid=$(awk 'NR == 1 { print $2 }' <<<"$procs")
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
        # Under emulation every process is the emulator's, and the exec
        # chain to the agent (env, setpriv) is slow enough to be seen: wait
        # for the emulator to run the agent itself.
        [ -z "$FOREIGN" ] || [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == "$BINFMT_INTERP $A/agent start "* ]] || {
            sleep 0.1
            continue
        }
        break
    fi
    kill -0 $AGENT_PID 2>/dev/null || break
    sleep 0.1
done
# (Under emulation the process is the emulator's, running the agent.)
want_exe=$R$A/agent
[ -z "$FOREIGN" ] || want_exe=$BINFMT_INTERP
[ -n "$matched" ] && [ "$(wc -l <<<"$matched")" = 1 ] && [ "$exe" = "$want_exe" ] &&
    pass "health check's ps pattern matches the agent ($exe) only: $(head -1 <<<"$matched" | awk '{$1=$1};1' | cut -c1-160)" ||
    fail "the health check's pattern matched nothing (agent: $(tail -5 "$WORK/agent.out"))"
rc=0
for _ in $(seq 1 600); do kill -0 $AGENT_PID 2>/dev/null || break; sleep 0.1; done
if kill -0 $AGENT_PID 2>/dev/null; then
    fail "the agent did not exit after its one job within 60 s"
    kill $AGENT_PID 2>/dev/null || true
fi
wait $AGENT_PID || rc=$?
kill -INT "$HUB_PID" 2>/dev/null || true
sleep 0.5
if [ $rc = 0 ] && grep -q '^\[hub\] register' "$WORK/hub.log" &&
    grep '^\[hub\] sync' "$WORK/hub.log" | grep -q '"job_result":"passed","state":"finished-job"'; then
    pass "the edited config loads; the agent registered, ran the job (passed) and exited 0"
else
    fail "agent exit $rc; hub: $(grep -E 'register|finished|job_result' "$WORK/hub.log" | tail -5); agent: $(tail -20 "$WORK/agent.out"; tail -20 "$R$LOGF")"
fi
if grep -q 'stand-in checkout of git@github.com:example/app.git at 0123456789abcdef (main)' "$H/app/.checked-out" 2>/dev/null &&
    [ "$(stat -c %u "$H/app/.checked-out")" = 1000 ]; then
    pass "the job, as semaphore, ran \`checkout\` from ~/.bash_profile (the stand-in libcheckout)"
else
    fail "no checkout mark in ~semaphore/app: $(ls -la "$H" 2>&1 | head)"
fi
name_sent=$(grep '^\[hub\] register' "$WORK/hub.log" | grep -o '"name":"[^"]*"' | head -1)
[[ $name_sent == *i-0123456789abcdef0__Ab3dEf6hIj9kL* ]] && pass "registered under the stack's name ($name_sent)" ||
    fail "registered name: $name_sent"
if [ -s "$R$LOGF" ] && ! grep -q DUMMY "$R$LOGF"; then
    pass "the agent logged to $LOGF ($(wc -l <"$R$LOGF") lines), no token in it"
else
    fail "agent log $LOGF: $(head -c 300 "$R$LOGF" 2>&1)"
fi

# --- 6. START / restart semantics with the service manager's calls ------------
# No systemd runs in a chroot, so stand-ins for systemctl and launchctl
# (labelled as such) record what install.sh asks of them.
R3=$(new_root services)
mkdir -p "$R3/run/systemd/system" "$R3/usr/local/sbin"
for tool in systemctl launchctl; do
    printf '#!/bin/sh
# A stand-in for %s (test only): records its arguments.
echo "%s $*" >>/tmp/service-calls
' \
        "$tool" "$tool" >"$R3/usr/local/sbin/$tool"
    chmod 755 "$R3/usr/local/sbin/$tool"
done
cp "$WORK/self-hosted-linux.tar" "$R3/tmp/tb.tar"
calls() { # ENV...: run install.sh, print the service calls it made
    rm -f "$R3/tmp/service-calls"
    in_root "$R3" env -i PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        SEMAPHORE_AGENT_INSTALLATION_USER=semaphore SEMAPHORE_REGISTRATION_TOKEN=t SEMAPHORE_ORGANIZATION=o \
        SEMAPHORE_TOOLBOX_TARBALL=/tmp/tb.tar "$@" $A/install.sh "${OPTS[@]}" >"$WORK/services.out" 2>&1 ||
        echo "install.sh failed: $(tail -3 "$WORK/services.out")"
    [ ! -f "$R3/tmp/service-calls" ] || tr '\n' ';' <"$R3/tmp/service-calls"
}
want_calls() { # WHAT WANT ENV...
    local what=$1 want=$2 got
    shift 2
    got=$(calls "$@")
    [ "$got" = "$want" ] && pass "$what: $got" || fail "$what: got '$got', want '$want'"
}
OPTS=()
want_calls "a new unit, START=false: nothing started" "systemctl daemon-reload;" SEMAPHORE_AGENT_START=false
rm -f "$R3/etc/systemd/system/semaphore-agent.service"
want_calls "a new unit: started" "systemctl daemon-reload;systemctl start semaphore-agent;"
want_calls "an existing unit: overwritten, reloaded, restarted" "systemctl daemon-reload;systemctl restart semaphore-agent;" \
    SEMAPHORE_AGENT_SYSTEMD_RESTART_SEC=5
grep -qx 'RestartSec=5' "$R3/etc/systemd/system/semaphore-agent.service" && pass "the existing unit was overwritten (RestartSec=5)" ||
    fail "unit not overwritten: $(grep RestartSec "$R3/etc/systemd/system/semaphore-agent.service")"
want_calls "an existing unit, START=false: reloaded, not restarted" "systemctl daemon-reload;" SEMAPHORE_AGENT_START=false
# A new toolbox replaces the old one whole, and the profile line stays
# single although the toolbox's install-toolbox appends it once more.
cp -a "$TB" "$WORK/toolbox-v2"
rm "$WORK/toolbox-v2/toolbox/spc"
echo "# v2" >>"$WORK/toolbox-v2/toolbox/libchecksum"
tar -C "$WORK/toolbox-v2" -cf "$R3/tmp/tb2.tar" toolbox
calls SEMAPHORE_AGENT_START=false SEMAPHORE_TOOLBOX_TARBALL=/tmp/tb2.tar >/dev/null
H3=$R3/home/semaphore
if grep -q '# v2' "$H3/.toolbox/libchecksum" && [ ! -e "$H3/.toolbox/spc" ] &&
    [ "$(cat "$H3/.toolbox/.tarball-sha256")" = "$(sha256sum "$R3/tmp/tb2.tar" | cut -d' ' -f1)" ] &&
    [ "$(grep -cxF 'source ~/.toolbox/toolbox' "$H3/.bash_profile")" = 1 ] && grep -q 'Overriding it' "$WORK/services.out"; then
    pass "a new toolbox replaces the old one whole; 'source ~/.toolbox/toolbox' still once in .bash_profile"
else
    fail "toolbox upgrade: $(ls "$H3/.toolbox"; cat "$H3/.bash_profile"; tail -5 "$WORK/services.out")"
fi

# --- 7. the toolbox for this host's architecture -------------------------------
# install.sh names the release tarball by `uname -m` (aarch64 under
# qemu-user in an arm64 root); the stand-in for curl sends GitHub's URL to
# the web server on 127.0.0.1 and records it. Nothing else is fetched.
cat >"$R3/usr/local/sbin/curl" <<EOF
#!/bin/bash
# A stand-in for curl (test only): GitHub's toolbox release URLs go to the
# web server on 127.0.0.1 (the same file name under /releases/), recorded.
args=()
for a in "\$@"; do
    case \$a in
    https://github.com/semaphoreci/toolbox/releases/*)
        echo "\$a" >>/tmp/curl-urls
        a=http://127.0.0.1:$PORT/releases/\${a##*/}
        ;;
    esac
    args+=("\$a")
done
exec /usr/bin/curl "\${args[@]}"
EOF
chmod 755 "$R3/usr/local/sbin/curl"
rm -f "$R3/tmp/curl-urls"
calls SEMAPHORE_AGENT_START=false SEMAPHORE_TOOLBOX_TARBALL= SEMAPHORE_TOOLBOX_VERSION=v1.23.4 >/dev/null
want_url=https://github.com/semaphoreci/toolbox/releases/download/v1.23.4/$WANT_TB
if [ "$(cat "$R3/tmp/curl-urls" 2>/dev/null)" = "$want_url" ] &&
    grep -q "GET /releases/$WANT_TB HTTP/1.1\" 200" "$WORK/http.log" &&
    [ "$(cat "$H3/.toolbox/.tarball-sha256")" = "$(sha256sum "$WORK/$WANT_TB" | cut -d' ' -f1)" ]; then
    pass "on $(in_root "$R3" uname -m) install.sh fetched $want_url (served from 127.0.0.1) and installed that toolbox"
else
    fail "the toolbox for $(in_root "$R3" uname -m): asked for '$(cat "$R3/tmp/curl-urls" 2>&1)', want $want_url; $(tail -3 "$WORK/services.out")"
fi
rm "$R3/usr/local/sbin/curl"

OPTS=(--service-manager launchd)
P=/Library/LaunchDaemons/com.semaphoreci.agent.plist
want_calls "launchd, a new daemon: bootstrap + kickstart" \
    "launchctl bootstrap system $P;launchctl kickstart -k system/com.semaphoreci.agent;"
want_calls "launchd, an existing daemon: bootout, bootstrap, kickstart" \
    "launchctl bootout system $P;launchctl bootstrap system $P;launchctl kickstart -k system/com.semaphoreci.agent;"
want_calls "launchd, START=false: nothing" "" SEMAPHORE_AGENT_START=false

[ $failed = 0 ] || { echo "FAIL $LABEL: some checks failed"; exit 1; }
echo "PASS $LABEL: all checks"
