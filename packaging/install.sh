#!/usr/bin/env bash
# Install semaphore-agent as a systemd service, in the layout of Semaphore's
# own installer: /opt/semaphore/agent/{semaphore-agent,config.yaml,hooks/}.
#
# Idempotent: running it again with the same options rewrites the same files
# (and restarts the service only if it is being started). Nothing outside
# DESTDIR is touched when DESTDIR is set, so it can be tested as a normal
# user-less dry run.
#
# Every option can also come from the environment (shown in brackets); the
# names follow Semaphore's installer where it has one.
usage() {
    cat <<'EOF'
Usage: install.sh [options]
  --binary PATH          the agent binary to install [SEMAPHORE_AGENT_BINARY]
                         (default: ./semaphore-agent next to this script)
  --endpoint HOST        e.g. myorg.semaphoreci.com [SEMAPHORE_ENDPOINT, or
                         SEMAPHORE_ORGANIZATION -> <org>.semaphoreci.com]
  --token TOKEN          registration token [SEMAPHORE_REGISTRATION_TOKEN]
  --name NAME            agent name, 8-80 characters [SEMAPHORE_AGENT_NAME];
                         with --gpus each instance gets NAME-gpu<i>
  --user USER            user the agent and its jobs run as
                         [SEMAPHORE_AGENT_INSTALLATION_USER] (default:
                         $SUDO_USER, else root)
  --env-var NAME=VALUE   export into every job (repeatable)
  --disconnect-after-job            one job, then exit (systemd restarts it)
  --disconnect-after-idle-timeout N  [SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT]
  --interruption-grace-period N     seconds a job may go on after SIGTERM
  --no-https             talk plain HTTP to the endpoint (testing only)
  --pre-job-hook FILE    copy FILE to hooks/pre-job.sh and use it
  --post-job-hook FILE   copy FILE to hooks/post-job.sh and use it
  --shutdown-hook FILE   copy FILE to hooks/shutdown.sh and use it
  --gpus LIST            one agent per GPU: comma-separated indexes (0,1,3)
                         or "all" (counted with nvidia-smi -L); installs
                         semaphore-agent@.service instead of the single unit
  --prefix DIR           install directory (default /opt/semaphore/agent)
  --systemd-dir DIR      unit directory (default /etc/systemd/system)
  --destdir DIR          stage everything under DIR [DESTDIR]; implies
                         --no-start and skips user checks and chown
  --no-start             install and enable nothing, start nothing
  -h, --help
EOF
}
set -euo pipefail

die() { echo "install.sh: error: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

here=$(cd "$(dirname "$0")" && pwd)
BINARY=${SEMAPHORE_AGENT_BINARY:-$here/semaphore-agent}
ENDPOINT=${SEMAPHORE_ENDPOINT:-}
if [ -z "$ENDPOINT" ] && [ -n "${SEMAPHORE_ORGANIZATION:-}" ]; then
    ENDPOINT=$SEMAPHORE_ORGANIZATION.semaphoreci.com
fi
TOKEN=${SEMAPHORE_REGISTRATION_TOKEN:-}
NAME=${SEMAPHORE_AGENT_NAME:-}
AGENT_USER=${SEMAPHORE_AGENT_INSTALLATION_USER:-${SUDO_USER:-root}}
IDLE_TIMEOUT=${SEMAPHORE_AGENT_DISCONNECT_AFTER_IDLE_TIMEOUT:-0}
DISCONNECT_AFTER_JOB=${SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB:-false}
GRACE=${SEMAPHORE_AGENT_INTERRUPTION_GRACE_PERIOD:-0}
NO_HTTPS=false
PREFIX=/opt/semaphore/agent
SYSTEMD_DIR=/etc/systemd/system
DESTDIR=${DESTDIR:-}
START=true
GPUS=""
ENV_VARS=()
declare -A HOOK_SRC=()

need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) need_arg "$@"; BINARY=$2; shift ;;
        --endpoint) need_arg "$@"; ENDPOINT=$2; shift ;;
        --token) need_arg "$@"; TOKEN=$2; shift ;;
        --name) need_arg "$@"; NAME=$2; shift ;;
        --user) need_arg "$@"; AGENT_USER=$2; shift ;;
        --env-var) need_arg "$@"; ENV_VARS+=("$2"); shift ;;
        --disconnect-after-job) DISCONNECT_AFTER_JOB=true ;;
        --disconnect-after-idle-timeout) need_arg "$@"; IDLE_TIMEOUT=$2; shift ;;
        --interruption-grace-period) need_arg "$@"; GRACE=$2; shift ;;
        --no-https) NO_HTTPS=true ;;
        --pre-job-hook) need_arg "$@"; HOOK_SRC[pre-job]=$2; shift ;;
        --post-job-hook) need_arg "$@"; HOOK_SRC[post-job]=$2; shift ;;
        --shutdown-hook) need_arg "$@"; HOOK_SRC[shutdown]=$2; shift ;;
        --gpus) need_arg "$@"; GPUS=$2; shift ;;
        --prefix) need_arg "$@"; PREFIX=$2; shift ;;
        --systemd-dir) need_arg "$@"; SYSTEMD_DIR=$2; shift ;;
        --destdir) need_arg "$@"; DESTDIR=$2; shift ;;
        --no-start) START=false ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

# --- validate everything before writing anything ---------------------------
[ -n "$TOKEN" ] || die "the registration token is empty: pass --token or set SEMAPHORE_REGISTRATION_TOKEN (refusing to write a config the agent cannot register with)"
[ -n "$ENDPOINT" ] || die "the endpoint is empty: pass --endpoint or set SEMAPHORE_ENDPOINT (or SEMAPHORE_ORGANIZATION)"
[ -f "$BINARY" ] || die "agent binary not found at $BINARY (pass --binary)"
case "$IDLE_TIMEOUT" in '' | *[!0-9]*) die "--disconnect-after-idle-timeout must be a whole number of seconds, got '$IDLE_TIMEOUT'" ;; esac
case "$GRACE" in '' | *[!0-9]*) die "--interruption-grace-period must be a whole number of seconds, got '$GRACE'" ;; esac
case "$DISCONNECT_AFTER_JOB" in true | false) ;; *) die "SEMAPHORE_AGENT_DISCONNECT_AFTER_JOB must be true or false" ;; esac
if [ -n "$NAME" ] && { [ ${#NAME} -lt 8 ] || [ ${#NAME} -gt 80 ]; }; then
    die "--name must be 8 to 80 characters long, got ${#NAME}"
fi
for kv in "${ENV_VARS[@]}"; do
    case "$kv" in [A-Za-z_]*=*) ;; *) die "--env-var wants NAME=VALUE, got '${kv%%=*}=...'" ;; esac
done
for hook in "${!HOOK_SRC[@]}"; do
    [ -f "${HOOK_SRC[$hook]}" ] || die "--$hook-hook: no such file ${HOOK_SRC[$hook]}"
done
case "$PREFIX" in /*) ;; *) die "--prefix must be absolute" ;; esac
case "$SYSTEMD_DIR" in /*) ;; *) die "--systemd-dir must be absolute" ;; esac

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
fi

if [ -n "$DESTDIR" ]; then
    START=false
    DESTDIR=$(mkdir -p "$DESTDIR" && cd "$DESTDIR" && pwd)
else
    [ "$(id -u)" = 0 ] || die "run as root (or stage with --destdir)"
    id "$AGENT_USER" >/dev/null 2>&1 || die "user $AGENT_USER does not exist (pass --user)"
fi
ROOT_DIR=$DESTDIR$PREFIX
UNIT_DIR=$DESTDIR$SYSTEMD_DIR

# --- files ------------------------------------------------------------------
# YAML double-quoted scalar: escape backslash and double quote.
yq() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

# write_if_changed DEST MODE: stdin -> DEST, only touching DEST when the
# content or mode differs, so a re-run leaves timestamps alone.
write_if_changed() {
    local dest=$1 mode=$2 tmp
    # Staged outside DEST's directory (mode 0600 from mktemp, it may hold
    # the token) so an unchanged file leaves the directory untouched too.
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest" && [ "$(stat -c %a "$dest")" = "$mode" ]; then
        say "unchanged $dest"
    else
        install -m "$mode" "$tmp" "$dest.new"
        mv -f "$dest.new" "$dest"
        say "wrote $dest"
    fi
    rm -f "$tmp"
}

own() { if [ -z "$DESTDIR" ]; then chown "$AGENT_USER:" "$@"; fi; }

# config_yaml NAME: the agent's config file on stdout.
config_yaml() {
    local name=$1 kv hook
    echo "# Written by packaging/install.sh; keys are the agent's flag names."
    echo "endpoint: $(yq "$ENDPOINT")"
    echo "token: $(yq "$TOKEN")"
    [ -z "$name" ] || echo "name: $(yq "$name")"
    echo "no-https: $NO_HTTPS"
    echo "disconnect-after-job: $DISCONNECT_AFTER_JOB"
    echo "disconnect-after-idle-timeout: $IDLE_TIMEOUT"
    echo "interruption-grace-period: $GRACE"
    for hook in pre-job post-job shutdown; do
        [ -z "${HOOK_SRC[$hook]:-}" ] || echo "$hook-hook-path: $(yq "$PREFIX/hooks/$hook.sh")"
    done
    if [ ${#GPU_LIST[@]} -gt 0 ]; then
        echo "# env-vars: on the unit's command line (--env-vars wins over this file)"
        echo "env-vars: []"
    elif [ ${#ENV_VARS[@]} -eq 0 ]; then
        echo "env-vars: []"
    else
        echo "env-vars:"
        for kv in "${ENV_VARS[@]}"; do echo "  - $(yq "$kv")"; done
    fi
    echo "files: []"
    echo "fail-on-missing-files: false"
}

# systemd_quote ARG: one ExecStart argument, quoted and with % and $ escaped.
systemd_quote() { local s=${1//%/%%}; s=${s//\$/\$\$}; s=${s//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

# unit_text SRC: the packaged unit with this install's paths, user and stop
# timeout (grace period + 60 s, at least the packaged 360 s).
unit_text() {
    local timeout=$((GRACE + 60)) extra="" kv
    [ $timeout -ge 360 ] || timeout=360
    # With --gpus the unit's own --env-vars flag wins over the file's list,
    # so the extra variables ride on the same command line.
    if [ ${#GPU_LIST[@]} -gt 0 ]; then
        for kv in "${ENV_VARS[@]}"; do extra+=" --env-vars $(systemd_quote "$kv")"; done
    fi
    sed -e "s|/opt/semaphore/agent|$PREFIX|g" \
        -e "s|^User=.*|User=$AGENT_USER|" \
        -e "s|^TimeoutStopSec=.*|TimeoutStopSec=$timeout|" \
        -e "/^ExecStart=/s|\$|${extra//|/\\|}|" "$1"
}

mkdir -p "$ROOT_DIR/hooks" "$UNIT_DIR"
own "$ROOT_DIR" "$ROOT_DIR/hooks"

# The binary: replace atomically so a running agent keeps its old inode.
if [ -f "$ROOT_DIR/semaphore-agent" ] && cmp -s "$BINARY" "$ROOT_DIR/semaphore-agent"; then
    say "unchanged $ROOT_DIR/semaphore-agent"
else
    install -m 0755 "$BINARY" "$ROOT_DIR/semaphore-agent.new"
    mv -f "$ROOT_DIR/semaphore-agent.new" "$ROOT_DIR/semaphore-agent"
    say "wrote $ROOT_DIR/semaphore-agent"
fi
# Units written for the Go agent call <dir>/agent: keep them working.
[ "$(readlink "$ROOT_DIR/agent" 2>/dev/null)" = semaphore-agent ] || ln -sfn semaphore-agent "$ROOT_DIR/agent"

for hook in "${!HOOK_SRC[@]}"; do
    write_if_changed "$ROOT_DIR/hooks/$hook.sh" 755 <"${HOOK_SRC[$hook]}"
done
write_if_changed "$ROOT_DIR/hooks/README" 644 <<EOF
Hooks run by the agent as 'bash <path>' (see config.yaml):
  pre-job.sh   before every job (its failure fails the job only with
               fail-on-pre-job-hook-error)
  post-job.sh  after every job; never changes the result
  shutdown.sh  when the agent stops; SEMAPHORE_AGENT_SHUTDOWN_REASON says why
Re-run install.sh with --pre-job-hook/--post-job-hook/--shutdown-hook FILE to
install one and point config.yaml at it.
EOF

units=()
if [ ${#GPU_LIST[@]} -eq 0 ]; then
    # The token is in the config: readable by the agent's user only.
    config_yaml "$NAME" | write_if_changed "$ROOT_DIR/config.yaml" 600
    own "$ROOT_DIR/config.yaml"
    unit_text "$here/systemd/semaphore-agent.service" |
        write_if_changed "$UNIT_DIR/semaphore-agent.service" 644
    units=(semaphore-agent.service)
else
    for g in "${GPU_LIST[@]}"; do
        mkdir -p "$ROOT_DIR/gpu$g"
        own "$ROOT_DIR/gpu$g"
        config_yaml "${NAME:+$NAME-gpu$g}" | write_if_changed "$ROOT_DIR/gpu$g/config.yaml" 600
        own "$ROOT_DIR/gpu$g/config.yaml"
        units+=("semaphore-agent@$g.service")
    done
    unit_text "$here/systemd/semaphore-agent@.service" |
        write_if_changed "$UNIT_DIR/semaphore-agent@.service" 644
fi

if [ "$START" = true ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable "${units[@]}"
    systemctl restart "${units[@]}"
    say "started ${units[*]}"
else
    say "not started; to start: systemctl daemon-reload && systemctl enable --now ${units[*]}"
fi
say "done: agent in $ROOT_DIR, units: ${units[*]}"
