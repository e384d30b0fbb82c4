#!/usr/bin/env bash
# GPU smoke test (issue 30) for a machine that HAS an NVIDIA GPU: the real
# driver, the real engine with the NVIDIA Container Toolkit. CI has no GPU
# and proves the same with stand-ins (tests/integration/gpu_boxes.rs).
#
#   packaging/gpu-smoke.sh [AGENT_BINARY]
#
# Runs the agent with --gpus <one GPU> against the dev hub (examples/
# dev-hub.rs) and checks that
#   1. a host job sees only its GPU (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_
#      DEVICES, `nvidia-smi -L` with them),
#   2. a docker compose job with a CUDA base image (SMOKE_CUDA_IMAGE,
#      default nvidia/cuda:12.4.1-base-ubuntu22.04) runs `nvidia-smi -L` in
#      its main container and lists only that GPU,
#   3. the usage line shows non-zero GPU memory for a small allocation
#      (a CUDA context through the driver's libcuda.so.1 from python3).
# Where there is no GPU (nvidia-smi missing or failing) it says why and
# exits 0 without running anything; SMOKE_REQUIRE_GPU=1 makes that exit 1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${SMOKE_CUDA_IMAGE:-nvidia/cuda:12.4.1-base-ubuntu22.04}
skip() {
    echo "SKIP gpu-smoke: $*"
    [ "${SMOKE_REQUIRE_GPU:-0}" != 1 ] || exit 1
    exit 0
}
command -v nvidia-smi >/dev/null || skip "no nvidia-smi on PATH: this machine has no NVIDIA GPU driver"
LIST=$(nvidia-smi -L 2>&1) || skip "nvidia-smi -L failed: $LIST"
COUNT=$(grep -c '^GPU ' <<<"$LIST" || true)
[ "$COUNT" -gt 0 ] || skip "nvidia-smi -L lists no GPU"
# The last GPU: with several, that proves the others are hidden.
GPU=$((COUNT - 1))
UUID=$(nvidia-smi --query-gpu=index,uuid --format=csv,noheader | awk -F', ' -v g="$GPU" '$1 == g {print $2}')
echo "== GPU $GPU ($UUID) of $COUNT"

AGENT=${1:-}
if [ -z "$AGENT" ]; then
    (cd "$ROOT" && cargo build --release --quiet)
    AGENT=$ROOT/target/release/semaphore-agent
fi
(cd "$ROOT" && cargo build --release --quiet --example dev-hub)
HUB=$ROOT/target/release/examples/dev-hub

WORK=$(mktemp -d /tmp/gpu-smoke.XXXXXX)
failed=0
pass() { echo "PASS gpu-smoke: $*"; }
fail() { echo "FAIL gpu-smoke: $*"; failed=1; }
cleanup() {
    [ -z "${HUB_PID:-}" ] || kill "$HUB_PID" 2>/dev/null || true
    [ -z "${AGENT_PID:-}" ] || kill "$AGENT_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/host.yaml" <<EOF
commands:
  - directive: echo "CUDA=\$CUDA_VISIBLE_DEVICES NV=\$NVIDIA_VISIBLE_DEVICES" > $WORK/host-env.txt
  - directive: nvidia-smi -L > $WORK/host-smi.txt
  - directive: >-
      python3 -c 'import ctypes, time;
      cuda = ctypes.CDLL("libcuda.so.1"); assert cuda.cuInit(0) == 0;
      dev = ctypes.c_int(); ctx = ctypes.c_void_p(); p = ctypes.c_void_p();
      assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0;
      assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0;
      assert cuda.cuMemAlloc_v2(ctypes.byref(p), 64 << 20) == 0;
      time.sleep(6)'
EOF
cat >"$WORK/compose.yaml" <<EOF
executor: dockercompose
compose:
  containers:
    - name: main
      image: $IMAGE
    - name: sidecar
      image: $IMAGE
      command: sleep 300
commands:
  - directive: nvidia-smi -L
EOF
PORT=$((20000 + RANDOM % 20000))
"$HUB" --port "$PORT" --sync-every 500 "$WORK/host.yaml" "$WORK/compose.yaml" >"$WORK/hub.log" 2>&1 &
HUB_PID=$!
sleep 1
SEMAPHORE_AGENT_LOG_FILE_PATH=$WORK/agent_log "$AGENT" start --endpoint "127.0.0.1:$PORT" --no-https \
    --token dev --name gpu-smoke-agent --gpus "$GPU" >"$WORK/agent.out" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 600); do
    [ "$(grep -c 'Job finished\|job finished\|finished with' "$WORK/agent_log" 2>/dev/null || true)" -ge 2 ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 1
done

grep -qx "CUDA=$GPU NV=$GPU" "$WORK/host-env.txt" 2>/dev/null &&
    pass "host job: CUDA_VISIBLE_DEVICES=NVIDIA_VISIBLE_DEVICES=$GPU" ||
    fail "host job env: $(cat "$WORK/host-env.txt" 2>/dev/null)"
[ "$(grep -c '^GPU ' "$WORK/host-smi.txt" 2>/dev/null)" = 1 ] && grep -q "$UUID" "$WORK/host-smi.txt" &&
    pass "host job: nvidia-smi -L lists only GPU $GPU" ||
    fail "host job nvidia-smi -L: $(cat "$WORK/host-smi.txt" 2>/dev/null)"
grep 'Job used ' "$WORK/agent_log" | head -n 1 | grep -Eq 'peak GPU memory [1-9][0-9]*\.[0-9] MiB' &&
    pass "usage line: $(grep -o 'peak GPU memory [^,]*' "$WORK/agent_log" | head -n 1)" ||
    fail "usage line without GPU memory: $(grep 'Job used ' "$WORK/agent_log" | head -n 1)"
# The compose job's output reaches the hub's log; its GPU line is there.
if grep -q "$UUID" "$WORK/hub.log" && [ "$(grep -c 'GPU [0-9]*: .*(UUID: GPU-' "$WORK/hub.log")" = 1 ]; then
    pass "compose job: nvidia-smi -L in the main container lists only GPU $GPU"
else
    fail "compose job: $(grep -i 'gpu' "$WORK/hub.log" | tail -n 5)"
fi
[ $failed = 0 ] && echo "PASS gpu-smoke: all checks" || { tail -n 30 "$WORK/agent_log"; exit 1; }
