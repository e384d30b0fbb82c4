#!/usr/bin/env bash
# Installs semaphore-agent the way Semaphore's own installer does, from the
# release archive: unpack agent_Linux_x86_64.tar.gz (agent_Linux_arm64.tar.gz
# on an aarch64 host) into a directory (the docs use /opt/semaphore/agent)
# and run `sudo ./install.sh` there.
#
# It takes Semaphore's installer inputs, from the environment, and asks for
# the required ones that are missing:
#   SEMAPHORE_ENDPOINT, or SEMAPHORE_ORGANIZATION (endpoint <org>.semaphoreci.com)
#   SEMAPHORE_REGISTRATION_TOKEN
#   SEMAPHORE_AGENT_INSTALLATION_USER     (asked for; default: logname)
#   SEMAPHORE_TOOLBOX_VERSION             (default: the latest release)
#   SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB  (false)
#   SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT (0)
#   SEMAPHORE_AGENT_SHUTDOWN_HOOK         (a path, written into config.yaml)
#   SEMAPHORE_AGENT_START                 (false: write everything, start nothing)
#   SEMAPHORE_AGENT_SYSTEMD_RESTART       (always)
#   SEMAPHORE_AGENT_SYSTEMD_RESTART_SEC   (60)
# and writes what that installer writes: <dir>/config.yaml, the
# semaphore-agent systemd unit (a launchd daemon on macOS), the toolbox in
# ~<user>/.toolbox sourced from ~/.bash_profile.
#
# Where it differs, on purpose:
#   - a toolbox that cannot be fetched fails the install, naming the URL and
#     the HTTP status (nothing is written then);
#   - SEMAPHORE_TOOLBOX_TARBALL=<path or URL> installs the toolbox from there
#     (hosts without internet), checked against SEMAPHORE_TOOLBOX_SHA256
#     when that is set;
#   - config.yaml is mode 0600 (it holds the token);
#   - a second run with the same inputs changes nothing (files are only
#     rewritten when their content changes; the profile line is there once);
#   - the unit also has KillMode=mixed, Delegate=yes and a stop timeout
#     above the interruption grace period (see packaging/README.md).
# Options add what only this agent has; run with --help.
usage() {
    cat <<'EOF'
Usage: install.sh [options]        (every option is optional)
  --endpoint HOST        instead of SEMAPHORE_ENDPOINT / SEMAPHORE_ORGANIZATION
  --token TOKEN          instead of SEMAPHORE_REGISTRATION_TOKEN
  --user USER            instead of SEMAPHORE_AGENT_INSTALLATION_USER
  --binary PATH          install this agent binary as <dir>/agent
                         (default: the `agent` beside this script)
  --prefix DIR           install into DIR (default: this script's directory)
  --name NAME            agent name, 8-80 characters [SEMAPHORE_AGENT_NAME];
                         with --gpus each instance gets NAME-gpu<i>
  --env-var NAME=VALUE   export into every job (repeatable)
  --disconnect-after-job
  --disconnect-after-idle-timeout N
  --interruption-grace-period N  seconds a job may go on after SIGTERM
                                 [SEMAPHORE_AGENT_INTERRUPTION_GRACE_PERIOD]
  --no-https             plain HTTP to the endpoint (testing only)
  --pre-job-hook FILE    copy FILE to <dir>/hooks/pre-job.sh and use it
  --post-job-hook FILE   copy FILE to <dir>/hooks/post-job.sh and use it
  --shutdown-hook FILE   copy FILE to <dir>/hooks/shutdown.sh and use it
  --gpus LIST            one agent per GPU: indexes (0,1,3) or "all"
                         (nvidia-smi -L); installs semaphore-agent@.service,
                         each instance with `gpus: "<i>"` in its own config
                         and its own agent log (<dir>/gpu<i>/agent.log)
  --notify               Type=notify with WatchdogSec=15min (READY=1 once
                         registered, WATCHDOG=1 on every sync)
  --enable               also `systemctl enable` the unit(s)
  --no-toolbox           install no toolbox [SEMAPHORE_AGENT_INSTALL_TOOLBOX=false]
  --service-manager M    systemd, launchd or none (default: from uname)
  --destdir DIR          stage everything under DIR [DESTDIR]: runs as any
                         user, starts nothing, installs no toolbox
  --no-start             same as SEMAPHORE_AGENT_START=false
  -h, --help
EOF
}
set -euo pipefail

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "$*"; }

DIST=$(uname)
ARCH=$(uname -m)
AGENT_INSTALLATION_DIRECTORY=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

ENDPOINT=${SEMAPHORE_ENDPOINT:-}
ORGANIZATION=${SEMAPHORE_ORGANIZATION:-}
TOKEN=${SEMAPHORE_REGISTRATION_TOKEN:-}
# No program this script runs (curl, tar, the toolbox's installer) needs it.
unset SEMAPHORE_REGISTRATION_TOKEN
AGENT_USER=${SEMAPHORE_AGENT_INSTALLATION_USER:-}
TOOLBOX_VERSION=${SEMAPHORE_TOOLBOX_VERSION:-}
TOOLBOX_TARBALL=${SEMAPHORE_TOOLBOX_TARBALL:-}
TOOLBOX_SHA256=${SEMAPHORE_TOOLBOX_SHA256:-}
INSTALL_TOOLBOX=${SEMAPHORE_AGENT_INSTALL_TOOLBOX:-true}
DISCONNECT_AFTER_JOB=${SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB:-false}
IDLE_TIMEOUT=${SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT:-0}
SHUTDOWN_HOOK=${SEMAPHORE_AGENT_SHUTDOWN_HOOK:-}
START=${SEMAPHORE_AGENT_START:-true}
RESTART=${SEMAPHORE_AGENT_SYSTEMD_RESTART:-always}
RESTART_SEC=${SEMAPHORE_AGENT_SYSTEMD_RESTART_SEC:-60}
NAME=${SEMAPHORE_AGENT_NAME:-}
GRACE=${SEMAPHORE_AGENT_INTERRUPTION_GRACE_PERIOD:-0}
DESTDIR=${DESTDIR:-}
BINARY=""
PREFIX=$AGENT_INSTALLATION_DIRECTORY
NO_HTTPS=false
NOTIFY=false
ENABLE=false
GPUS=""
ENV_VARS=()
# Hook files to copy, one variable each (macOS's bash 3.2 has no
# associative arrays): HOOK_SRC_pre_job, HOOK_SRC_post_job, HOOK_SRC_shutdown.
HOOK_SRC_pre_job=""
HOOK_SRC_post_job=""
HOOK_SRC_shutdown=""
HOOKS="pre-job post-job shutdown"
hook_src() { local v=HOOK_SRC_${1//-/_}; echo "${!v}"; }
case "$DIST" in
    Linux) SERVICE_MANAGER=systemd ;;
    Darwin) SERVICE_MANAGER=launchd ;;
    *) SERVICE_MANAGER=none ;;
esac

need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --endpoint) need_arg "$@"; ENDPOINT=$2; shift ;;
        --token) need_arg "$@"; TOKEN=$2; [ -n "$TOKEN" ] || die "Registration token cannot be empty."; shift ;;
        --user) need_arg "$@"; AGENT_USER=$2; shift ;;
        --binary) need_arg "$@"; BINARY=$2; shift ;;
        --prefix) need_arg "$@"; PREFIX=$2; shift ;;
        --name) need_arg "$@"; NAME=$2; shift ;;
        --env-var) need_arg "$@"; ENV_VARS+=("$2"); shift ;;
        --disconnect-after-job) DISCONNECT_AFTER_JOB=true ;;
        --disconnect-after-idle-timeout) need_arg "$@"; IDLE_TIMEOUT=$2; shift ;;
        --interruption-grace-period) need_arg "$@"; GRACE=$2; shift ;;
        --no-https) NO_HTTPS=true ;;
        --pre-job-hook) need_arg "$@"; HOOK_SRC_pre_job=$2; shift ;;
        --post-job-hook) need_arg "$@"; HOOK_SRC_post_job=$2; shift ;;
        --shutdown-hook) need_arg "$@"; HOOK_SRC_shutdown=$2; shift ;;
        --gpus) need_arg "$@"; GPUS=$2; shift ;;
        --notify) NOTIFY=true ;;
        --enable) ENABLE=true ;;
        --no-toolbox) INSTALL_TOOLBOX=false ;;
        --service-manager) need_arg "$@"; SERVICE_MANAGER=$2; shift ;;
        --destdir) need_arg "$@"; DESTDIR=$2; shift ;;
        --no-start) START=false ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

# --- who runs this, and the inputs Semaphore's installer asks for ----------
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    echo "Please run with sudo."
    exit 1
fi

if [ -z "$ENDPOINT" ]; then
    if [ -z "$ORGANIZATION" ]; then
        read -r -p "Enter organization: " ORGANIZATION || true
        if [ -z "$ORGANIZATION" ]; then
            echo "Organization cannot be empty."
            exit 1
        fi
    fi
    ENDPOINT="$ORGANIZATION.semaphoreci.com"
fi

if [ -z "$TOKEN" ]; then
    read -r -p "Enter registration token: " TOKEN || true
    if [ -z "$TOKEN" ]; then
        echo "Registration token cannot be empty."
        exit 1
    fi
fi

if [ -z "$AGENT_USER" ]; then
    # logname fails without a login session (a container, cron): fall back
    # to the sudo caller, then root, rather than stopping here.
    LOGGED_IN_USER=$(logname 2>/dev/null) || LOGGED_IN_USER=${SUDO_USER:-root}
    read -r -p "Enter user [$LOGGED_IN_USER]: " AGENT_USER || true
    AGENT_USER=${AGENT_USER:-$LOGGED_IN_USER}
fi

if [ -z "$DESTDIR" ] && ! id "$AGENT_USER" >/dev/null 2>&1; then
    echo "User $AGENT_USER does not exist. Exiting..."
    exit 1
fi

# --- check everything else before writing anything --------------------------
case "$DISCONNECT_AFTER_JOB" in true | false) ;; *) die "SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB must be true or false, got '$DISCONNECT_AFTER_JOB'" ;; esac
case "$IDLE_TIMEOUT" in '' | *[!0-9]*) die "SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT must be a whole number of seconds, got '$IDLE_TIMEOUT'" ;; esac
case "$GRACE" in '' | *[!0-9]*) die "the interruption grace period must be a whole number of seconds, got '$GRACE'" ;; esac
case "$START" in true | false) ;; *) die "SEMAPHORE_AGENT_START must be true or false, got '$START'" ;; esac
case "$INSTALL_TOOLBOX" in true | false) ;; *) die "SEMAPHORE_AGENT_INSTALL_TOOLBOX must be true or false, got '$INSTALL_TOOLBOX'" ;; esac
case "$RESTART" in
    no | always | on-success | on-failure | on-abnormal | on-abort | on-watchdog) ;;
    *) die "SEMAPHORE_AGENT_SYSTEMD_RESTART must be one of no, always, on-success, on-failure, on-abnormal, on-abort, on-watchdog; got '$RESTART'" ;;
esac
[[ $RESTART_SEC =~ ^[0-9]+(ms|s|min|h)?$ ]] || die "SEMAPHORE_AGENT_SYSTEMD_RESTART_SEC must be a number of seconds (or 500ms, 5min, ...), got '$RESTART_SEC'"
case "$SERVICE_MANAGER" in systemd | launchd | none) ;; *) die "--service-manager must be systemd, launchd or none, got '$SERVICE_MANAGER'" ;; esac
if [ -n "$NAME" ] && { [ ${#NAME} -lt 8 ] || [ ${#NAME} -gt 80 ]; }; then
    die "the agent name must be 8 to 80 characters long, got ${#NAME}"
fi
# ${a[@]+"${a[@]}"}: an empty array under set -u, in bash 3.2 too.
for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do
    case "$kv" in [A-Za-z_]*=*) ;; *) die "--env-var wants NAME=VALUE, got '${kv%%=*}=...'" ;; esac
done
for hook in $HOOKS; do
    src=$(hook_src "$hook")
    [ -z "$src" ] || [ -f "$src" ] || die "--$hook-hook: no such file $src"
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, got '$PREFIX'" ;; esac
# The unit's ExecStart and the plist take the path as is.
case "$PREFIX" in *[[:space:]%\$\\\"\'\;]*) die "the install directory '$PREFIX' holds a space or one of % \$ \\ \" ' ;: move the archive elsewhere" ;; esac
[ -z "$TOOLBOX_SHA256" ] || [[ $TOOLBOX_SHA256 =~ ^[0-9a-fA-F]{64}$ ]] ||
    die "SEMAPHORE_TOOLBOX_SHA256 must be 64 hex digits, got '$TOOLBOX_SHA256'"

if [ "$GPUS" = all ]; then
    command -v nvidia-smi >/dev/null || die "--gpus all needs nvidia-smi; list the indexes instead (--gpus 0,1)"
    count=$(nvidia-smi -L | grep -c '^GPU ' || true)
    [ "$count" -gt 0 ] || die "nvidia-smi -L lists no GPU"
    GPUS=$(seq -s, 0 $((count - 1)))
fi
GPU_LIST=()
if [ -n "$GPUS" ]; then
    IFS=, read -r -a GPU_LIST <<<"$GPUS"
    for g in "${GPU_LIST[@]}"; do
        case "$g" in '' | *[!0-9]*) die "--gpus wants indexes like 0,1,2 or 'all', got '$GPUS'" ;; esac
    done
    [ "$SERVICE_MANAGER" = systemd ] || die "--gpus needs systemd"
fi

if [ -n "$DESTDIR" ]; then
    START=false
    INSTALL_TOOLBOX=false
    DESTDIR=$(mkdir -p "$DESTDIR" && cd "$DESTDIR" && pwd)
fi
ROOT_DIR=$DESTDIR$PREFIX
AGENT_CONFIG_PATH=$PREFIX/config.yaml

if [ -z "$BINARY" ]; then
    BINARY=$AGENT_INSTALLATION_DIRECTORY/agent
    archive=agent_Linux_x86_64.tar.gz
    [[ $ARCH != aarch64 && $ARCH != arm64 ]] || archive=agent_Linux_arm64.tar.gz
    [ -f "$BINARY" ] || die "no agent binary at $BINARY: unpack $archive there (or pass --binary PATH)"
else
    [ -f "$BINARY" ] || die "--binary: no such file $BINARY"
fi

# --- helpers ------------------------------------------------------------------
mode_of() { stat -c %a "$1" 2>/dev/null || stat -f %Lp "$1"; }
sha256_of() { if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi; }

# write_if_changed DEST MODE: stdin -> DEST, touching DEST only when its
# content or mode differs, so a second run leaves it (and its mtime) alone.
write_if_changed() {
    local dest=$1 mode=$2 tmp
    # Staged outside DEST's directory, mode 0600 from mktemp (it may hold
    # the token), so an unchanged file leaves the directory untouched too.
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest" && [ "$(mode_of "$dest")" = "$mode" ]; then
        say "Unchanged: $dest"
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" "$tmp" "$dest.new"
    mv -f "$dest.new" "$dest"
    rm -f "$tmp"
    say "Wrote $dest"
}

own() { if [ -z "$DESTDIR" ]; then chown "$AGENT_USER:$AGENT_GROUP" "$@"; fi; }
AGENT_GROUP=$AGENT_USER
if [ -z "$DESTDIR" ]; then AGENT_GROUP=$(id -gn "$AGENT_USER"); fi

# YAML double-quoted scalar: backslash and double quote escaped.
yq() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
# XML text: & < > escaped.
xq() { local s=${1//&/&amp;}; s=${s//</&lt;}; s=${s//>/&gt;}; printf '%s' "$s"; }

user_home() {
    if command -v getent >/dev/null; then
        getent passwd "$AGENT_USER" | cut -d: -f6
    else
        bash -c "echo ~$AGENT_USER"
    fi
}

toolbox_url() {
    local os tarball
    os=$(tr '[:upper:]' '[:lower:]' <<<"$DIST")
    tarball=self-hosted-$os.tar
    if [[ $ARCH =~ arm || $ARCH == aarch64 ]]; then tarball=self-hosted-$os-arm.tar; fi
    if [ -z "$TOOLBOX_VERSION" ]; then
        echo "https://github.com/semaphoreci/toolbox/releases/latest/download/$tarball"
    else
        echo "https://github.com/semaphoreci/toolbox/releases/download/$TOOLBOX_VERSION/$tarball"
    fi
}

# fetch_toolbox DEST: the tarball from SEMAPHORE_TOOLBOX_TARBALL or the
# release URL into DEST, checked; sets TOOLBOX_SOURCE. Fails naming the
# source (and the HTTP status) instead of going on without a toolbox.
fetch_toolbox() {
    local dest=$1 code err
    TOOLBOX_SOURCE=${TOOLBOX_TARBALL:-$(toolbox_url)}
    case "$TOOLBOX_SOURCE" in
        http://* | https://*)
            command -v curl >/dev/null || die "curl is needed to download the toolbox from $TOOLBOX_SOURCE (or set SEMAPHORE_TOOLBOX_TARBALL to a local file)"
            say "Downloading toolbox from $TOOLBOX_SOURCE..."
            err=$(mktemp)
            code=$(curl -sS -L --retry 2 -o "$dest" -w '%{http_code}' "$TOOLBOX_SOURCE" 2>"$err") || {
                local msg
                msg=$(tr '\n' ' ' <"$err")
                rm -f "$err"
                die "cannot download the toolbox from $TOOLBOX_SOURCE: ${msg:-curl failed} (set SEMAPHORE_TOOLBOX_TARBALL to a local copy, or SEMAPHORE_AGENT_INSTALL_TOOLBOX=false)"
            }
            rm -f "$err"
            [ "$code" = 200 ] || die "cannot download the toolbox from $TOOLBOX_SOURCE: HTTP status $code"
            ;;
        *)
            local path=${TOOLBOX_SOURCE#file://}
            [ -f "$path" ] || die "SEMAPHORE_TOOLBOX_TARBALL: no such file $path"
            say "Using toolbox tarball $path..."
            cp "$path" "$dest"
            ;;
    esac
    TOOLBOX_TARBALL_SHA256=$(sha256_of "$dest")
    if [ -n "$TOOLBOX_SHA256" ] && [ "$TOOLBOX_TARBALL_SHA256" != "$(tr '[:upper:]' '[:lower:]' <<<"$TOOLBOX_SHA256")" ]; then
        die "the toolbox from $TOOLBOX_SOURCE has sha256 $TOOLBOX_TARBALL_SHA256, but SEMAPHORE_TOOLBOX_SHA256 is $TOOLBOX_SHA256"
    fi
    local listing
    listing=$(tar -tf "$dest" 2>/dev/null) || die "the toolbox from $TOOLBOX_SOURCE is not a tar archive"
    grep -qx 'toolbox/install-toolbox' <<<"$listing" && grep -qx 'toolbox/toolbox' <<<"$listing" ||
        die "the toolbox from $TOOLBOX_SOURCE has no toolbox/install-toolbox and toolbox/toolbox: not a self-hosted toolbox tarball"
    if grep -qvE '^toolbox(/|$)' <<<"$listing" || grep -qE '(^|/)\.\.(/|$)' <<<"$listing"; then
        die "the toolbox from $TOOLBOX_SOURCE holds paths outside toolbox/"
    fi
}

# as_user CMD...: run CMD as the agent's user with its own HOME and a
# clean environment (nothing of ours, the token least of all).
as_user() {
    local env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$USER_HOME"
        USER="$AGENT_USER" LOGNAME="$AGENT_USER" SHELL=/bin/bash LANG="${LANG:-C.UTF-8}")
    if command -v runuser >/dev/null; then
        runuser -u "$AGENT_USER" -- "${env[@]}" "$@"
    else
        sudo -u "$AGENT_USER" -H "${env[@]}" "$@"
    fi
}

# The profile line, exactly once: the toolbox's own install-toolbox appends
# it too, on every run.
PROFILE_LINE='source ~/.toolbox/toolbox'
ensure_profile_line() {
    local profile=$USER_HOME/.bash_profile mode=644
    [ ! -f "$profile" ] || mode=$(mode_of "$profile")
    {
        [ ! -f "$profile" ] || awk -v line="$PROFILE_LINE" '$0 != line || !seen++' "$profile"
        [ -f "$profile" ] && grep -qxF "$PROFILE_LINE" "$profile" || echo "$PROFILE_LINE"
    } | write_if_changed "$profile" "$mode" || true
    own "$profile"
}

install_toolbox() {
    local tar=$1 dir marker staging
    USER_HOME=$(user_home)
    [ -n "$USER_HOME" ] && [ -d "$USER_HOME" ] || die "user $AGENT_USER has no home directory ('$USER_HOME'): the toolbox goes into ~/.toolbox"
    dir=$USER_HOME/.toolbox
    marker=$dir/.tarball-sha256
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$TOOLBOX_TARBALL_SHA256" ]; then
        say "Toolbox from $TOOLBOX_SOURCE (sha256 $TOOLBOX_TARBALL_SHA256) is already installed at $dir."
    else
        if [ -d "$dir" ]; then
            say "Toolbox was already installed at $dir. Overriding it..."
            rm -rf "$dir"
        fi
        staging=$(mktemp -d "$USER_HOME/.toolbox-new.XXXXXX")
        tar -xf "$tar" -C "$staging"
        mv "$staging/toolbox" "$dir"
        rmdir "$staging"
        echo "$TOOLBOX_TARBALL_SHA256" >"$dir/.tarball-sha256"
        chown -R "$AGENT_USER:$AGENT_GROUP" "$dir"
        say "Installing toolbox..."
        local rc=0
        as_user bash "$dir/install-toolbox" || rc=$?
        [ $rc = 0 ] || die "the toolbox's install-toolbox failed (exit $rc) as $AGENT_USER"
    fi
    ensure_profile_line
}

config_yaml() { # NAME [GPU]: config.yaml, Go's keys first, then ours when asked for
    local name=$1 gpu=${2:-} kv hook shutdown=$SHUTDOWN_HOOK
    [ -z "$HOOK_SRC_shutdown" ] || shutdown=$PREFIX/hooks/shutdown.sh
    echo "endpoint: $(yq "$ENDPOINT")"
    echo "token: $(yq "$TOKEN")"
    echo "no-https: $NO_HTTPS"
    echo "shutdown-hook-path: $(yq "$shutdown")"
    echo "disconnect-after-job: $DISCONNECT_AFTER_JOB"
    echo "disconnect-after-idle-timeout: $IDLE_TIMEOUT"
    if [ ${#ENV_VARS[@]} -eq 0 ] || [ ${#GPU_LIST[@]} -gt 0 ]; then
        # With --gpus the variables ride on the unit's --env-vars flags,
        # which win over this list.
        echo "env-vars: []"
    else
        echo "env-vars:"
        for kv in "${ENV_VARS[@]}"; do echo "  - $(yq "$kv")"; done
    fi
    echo "files: []"
    echo "fail-on-missing-files: false"
    [ -z "$name" ] || echo "name: $(yq "$name")"
    [ "$GRACE" = 0 ] || echo "interruption-grace-period: $GRACE"
    # The agent gives this GPU's jobs CUDA_VISIBLE_DEVICES and
    # NVIDIA_VISIBLE_DEVICES, a compose job's main container a device
    # request, and checks the GPU's health.
    [ -z "$gpu" ] || echo "gpus: \"$gpu\""
    for hook in pre-job post-job; do
        [ -z "$(hook_src "$hook")" ] || echo "$hook-hook-path: $(yq "$PREFIX/hooks/$hook.sh")"
    done
}

systemd_quote() { local s=${1//%/%%}; s=${s//\$/\$\$}; s=${s//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

# unit_text TEMPLATE: Go's unit line for line, then what this agent adds.
# TEMPLATE=true gives semaphore-agent@.service (instance %i = GPU %i).
unit_text() {
    local template=$1 dir=$PREFIX config=$AGENT_CONFIG_PATH extra="" kv timeout=$((GRACE + 60))
    local description="Semaphore agent"
    [ $timeout -ge 360 ] || timeout=360
    if [ "$template" = true ]; then
        description="Semaphore agent for GPU %i"
        dir=$PREFIX/gpu%i
        config=$dir/config.yaml
        for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do extra+=" --env-vars $(systemd_quote "$kv")"; done
    fi
    cat <<EOF
[Unit]
Description=$description
After=network.target
StartLimitIntervalSec=0

[Service]
Type=$([ "$NOTIFY" = true ] && echo notify || echo simple)
Restart=$RESTART
RestartSec=$RESTART_SEC
User=$AGENT_USER
WorkingDirectory=$dir
ExecStart=$PREFIX/agent start --config-file $config$extra
Environment=SEMAPHORE_AGENT_LOG_FILE_PATH=$dir/agent.log
EOF
    cat <<EOF
# Added by semaphore-agent's install.sh: on stop, SIGTERM goes to the agent
# only, so a running job gets interruption-grace-period; the agent runs
# each job in a cgroup of its own below the unit's (killed whole at its end).
KillMode=mixed
Delegate=yes
TimeoutStopSec=$timeout
EOF
    if [ "$NOTIFY" = true ]; then
        cat <<'EOF'
# READY=1 once registered (the agent bounds registration itself), WATCHDOG=1
# on every sync; an agent that neither syncs nor exits is restarted.
TimeoutStartSec=infinity
WatchdogSec=15min
NotifyAccess=main
EOF
    fi
    cat <<'EOF'

[Install]
WantedBy=multi-user.target
EOF
}

plist_text() {
    cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>com.semaphoreci.agent</string>
  <key>ProgramArguments</key>
  <array>
    <string>$(xq "$PREFIX/agent")</string>
    <string>start</string>
    <string>--config-file</string>
    <string>$(xq "$AGENT_CONFIG_PATH")</string>
  </array>
  <key>EnvironmentVariables</key>
  <dict>
    <key>SEMAPHORE_AGENT_LOG_FILE_PATH</key>
    <string>$(xq "$PREFIX/agent.log")</string>
    <key>PATH</key>
    <string>/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin</string>
  </dict>
  <key>RunAtLoad</key>
  <false/>
  <key>KeepAlive</key>
  <dict>
    <key>Crashed</key>
    <true/>
  </dict>
  <key>UserName</key>
  <string>$(xq "$AGENT_USER")</string>
  <key>WorkingDirectory</key>
  <string>$(xq "$PREFIX")</string>
</dict>
</plist>
EOF
}

# --- the toolbox (fetched and checked before anything is written) ----------
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ "$INSTALL_TOOLBOX" = true ]; then
    fetch_toolbox "$TMP/toolbox.tar"
fi

# --- the agent ----------------------------------------------------------------
mkdir -p "$ROOT_DIR"
if [ "$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")" != "$ROOT_DIR/agent" ]; then
    if [ -f "$ROOT_DIR/agent" ] && cmp -s "$BINARY" "$ROOT_DIR/agent"; then
        say "Unchanged: $ROOT_DIR/agent"
    else
        # Replaced by rename, so a running agent keeps its old file.
        install -m 0755 "$BINARY" "$ROOT_DIR/agent.new"
        mv -f "$ROOT_DIR/agent.new" "$ROOT_DIR/agent"
        say "Wrote $ROOT_DIR/agent"
    fi
fi

if [ "$INSTALL_TOOLBOX" = true ]; then
    install_toolbox "$TMP/toolbox.tar"
else
    say "Not installing the toolbox."
fi

for hook in $HOOKS; do
    src=$(hook_src "$hook")
    [ -n "$src" ] || continue
    mkdir -p "$ROOT_DIR/hooks"
    write_if_changed "$ROOT_DIR/hooks/$hook.sh" 755 <"$src" || true
done
if [ -n "$SHUTDOWN_HOOK" ] && [ ! -f "$DESTDIR$SHUTDOWN_HOOK" ]; then
    echo "install.sh: warning: the shutdown hook $SHUTDOWN_HOOK does not exist (yet)" >&2
fi

# The agent, as its user, appends to agent.log beside the binary; the
# directory may be root's (the docs' mkdir), so the file is made for it.
agent_log() { # DIR
    if [ ! -e "$1/agent.log" ]; then
        install -m 0640 /dev/null "$1/agent.log"
        own "$1/agent.log"
    fi
}

# The config holds the token: readable by the agent's user only.
configs=()
if [ ${#GPU_LIST[@]} -eq 0 ]; then
    say "Creating agent config file at $ROOT_DIR/config.yaml..."
    config_yaml "$NAME" | write_if_changed "$ROOT_DIR/config.yaml" 600 || true
    own "$ROOT_DIR/config.yaml"
    agent_log "$ROOT_DIR"
    configs=("$AGENT_CONFIG_PATH")
else
    for g in "${GPU_LIST[@]}"; do
        mkdir -p "$ROOT_DIR/gpu$g"
        own "$ROOT_DIR/gpu$g"
        config_yaml "${NAME:+$NAME-gpu$g}" "$g" | write_if_changed "$ROOT_DIR/gpu$g/config.yaml" 600 || true
        own "$ROOT_DIR/gpu$g/config.yaml"
        agent_log "$ROOT_DIR/gpu$g"
        configs+=("$PREFIX/gpu$g/config.yaml")
    done
fi

# --- the service ----------------------------------------------------------------
systemd_running() { [ -z "$DESTDIR" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }
create_systemd_service() {
    local unit_dir=$DESTDIR/etc/systemd/system unit units=() existed=false
    mkdir -p "$unit_dir"
    if [ ${#GPU_LIST[@]} -eq 0 ]; then
        unit=semaphore-agent.service
        units=(semaphore-agent)
    else
        unit=semaphore-agent@.service
        for g in "${GPU_LIST[@]}"; do units+=("semaphore-agent@$g"); done
    fi
    say "Creating $unit_dir/$unit..."
    if [ -f "$unit_dir/$unit" ]; then
        existed=true
        say "systemd service already exists at $unit_dir/$unit. Overriding it..."
    fi
    unit_text "$([ ${#GPU_LIST[@]} -gt 0 ] && echo true || echo false)" |
        write_if_changed "$unit_dir/$unit" 644 || true
    if ! systemd_running; then
        say "systemd is not running here (or this is a staged install): not starting; later run: systemctl daemon-reload && systemctl start ${units[*]}"
        return 0
    fi
    systemctl daemon-reload
    [ "$ENABLE" = false ] || systemctl enable "${units[@]}"
    if [ "$START" = false ]; then
        if [ $existed = true ]; then say "Not restarting agent."; else say "Not starting agent."; fi
    elif [ $existed = true ]; then
        say "Restarting semaphore-agent service..."
        systemctl restart "${units[@]}"
    else
        say "Starting semaphore-agent service..."
        systemctl start "${units[@]}"
    fi
}

create_launchd_daemon() {
    local dir=$DESTDIR/Library/LaunchDaemons path existed=false
    path=$dir/com.semaphoreci.agent.plist
    mkdir -p "$dir"
    say "Creating $path..."
    if [ -f "$path" ]; then
        existed=true
        say "launchd daemon already exists at $path. Overriding it..."
    fi
    plist_text | write_if_changed "$path" 644 || true
    if [ "$START" = false ] || [ -n "$DESTDIR" ]; then
        say "Not starting com.semaphoreci.agent."
        return 0
    fi
    if [ $existed = true ]; then
        say "Bootout com.semaphoreci.agent..."
        launchctl bootout system "$path" || true
    fi
    say "Bootstrap com.semaphoreci.agent..."
    launchctl bootstrap system "$path"
    say "Kickstart com.semaphoreci.agent..."
    launchctl kickstart -k system/com.semaphoreci.agent
}

case "$SERVICE_MANAGER" in
    systemd) create_systemd_service ;;
    launchd) create_launchd_daemon ;;
    none) say "$DIST: no service manager used. You can still start the agent with '$PREFIX/agent start --config-file ${configs[0]}'." ;;
esac

say "Done."
