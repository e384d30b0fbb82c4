#!/usr/bin/env bash
# Validate the Kubernetes manifests in this directory against the real
# OpenAPI schemas (PyPI package kubernetes-validate, strict mode: unknown
# fields are errors) for the oldest and newest Kubernetes it ships, then
# check the properties the agent relies on, and prove the validator rejects
# a broken manifest.
#
# Usage: packaging/kubernetes/validate.sh
#   Installs kubernetes-validate into a throwaway venv (needs python3 and
#   PyPI); KUBERNETES_VALIDATE=/path/to/kubernetes-validate skips that.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=1.37.0 # of the kubernetes-validate package
WORK=$(mktemp -d /tmp/agent-k8s-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failed=0
pass() { echo "PASS k8s: $*"; }
fail() { echo "FAIL k8s: $*"; failed=1; }

KV=${KUBERNETES_VALIDATE:-}
if [ -z "$KV" ]; then
    if ! python3 -m venv "$WORK/venv" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$WORK/venv"
    fi
    "$WORK/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$VERSION"
    KV=$WORK/venv/bin/kubernetes-validate
    PY=$WORK/venv/bin/python
else
    PY=$(head -1 "$KV" | sed 's/^#!//')
fi

# kubernetes-validate reports a resource by metadata.name and fails on a
# manifest that only has generateName (job-template.yaml); validate a copy
# with a name added next to it, which the schema allows.
mkdir -p "$WORK/m"
for f in "$HERE"/*.yaml; do
    sed 's/^\(  *\)generateName: \(.*\)$/\1generateName: \2\n\1name: \2example/' "$f" >"$WORK/m/$(basename "$f")"
done

schemas=$(ls "$(dirname "$("$PY" -c 'import kubernetes_validate, sys; sys.stdout.write(kubernetes_validate.__file__)')")/kubernetes-json-schema" |
    sed -n 's/^v\([0-9.]*\)-local-strict$/\1/p' | sort -V)
oldest=$(head -1 <<<"$schemas")
newest=$(tail -1 <<<"$schemas")
for k in $oldest $newest; do
    for f in "$WORK"/m/*.yaml; do
        if out=$("$KV" --strict --kubernetes-version "$k" "$f" 2>&1); then
            pass "$(basename "$f") valid against Kubernetes $k (strict)"
        else
            fail "$(basename "$f") against Kubernetes $k: $out"
        fi
    done
done

# The validator must catch a real mistake: an unknown field and a string
# where an integer belongs.
sed -e 's/^  replicas: 2$/  replicas: two/' -e 's/^      containers:$/      containerz: []\n      containers:/' \
    "$WORK/m/deployment.yaml" >"$WORK/broken.yaml"
if "$KV" --strict --kubernetes-version "$newest" "$WORK/broken.yaml" >"$WORK/broken.out" 2>&1; then
    fail "validator accepted a broken deployment"
else
    pass "validator rejects a broken deployment ($(grep -c . "$WORK/broken.out") lines of errors)"
fi

# What the agent relies on, read from the manifests themselves.
cat >"$WORK/props.py" <<'EOF'
import sys, os, yaml

d = sys.argv[1]
def load(name):
    with open(os.path.join(d, name)) as f:
        return yaml.safe_load(f)

def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}

def common(kind, spec):
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    env = env_of(c)
    assert env["SEMAPHORE_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "semaphore-agent", "key": "token"}, f"{kind}: token not from the Secret"
    assert env["SEMAPHORE_AGENT_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", f"{kind}: name not from the pod name"
    grace = int(env["SEMAPHORE_AGENT_INTERRUPTION_GRACE_PERIOD"]["value"])
    tgps = pod["terminationGracePeriodSeconds"]
    assert tgps >= grace + 30, f"{kind}: terminationGracePeriodSeconds {tgps} < grace period {grace} + 30"
    assert "lifecycle" not in c, f"{kind}: must not have a preStop/lifecycle hook (SIGTERM -> interrupted_at)"
    port = int(env["SEMAPHORE_AGENT_HEALTH_ADDRESS"]["value"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz", f"{kind}: {probe} does not ask /healthz"
        assert ports.get(get["port"], get["port"]) == port, f"{kind}: {probe} port is not the health address's {port}"
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 600, f"{kind}: liveness gives up before the agent's own 10-minute sync limit"
    # The image's default CMD reads a mounted config file (the Helm
    # chart's way); these manifests configure by env, as the controller.
    assert c.get("command") == ["/opt/semaphore/agent", "start"], f"{kind}: command {c.get('command')}"
    return pod, c, env

dep = load("deployment.yaml")
assert dep["kind"] == "Deployment"
common("Deployment", dep["spec"])

job = load("job-template.yaml")
assert job["kind"] == "Job"
assert job["spec"]["backoffLimit"] == 0, "Job: backoffLimit must be 0"
pod, c, env = common("Job", job["spec"])
assert pod["restartPolicy"] == "Never", "Job: restartPolicy must be Never"
args = c["args"]
assert "--disconnect-after-job" in args, "Job: no --disconnect-after-job"
i = args.index("--job-id")
assert args[i + 1] == "$(SEMAPHORE_JOB_ID)" and "SEMAPHORE_JOB_ID" in env, "Job: --job-id not from SEMAPHORE_JOB_ID"
print("token from Secret, name from pod name, grace < terminationGracePeriodSeconds, no preStop, probes on /healthz; Job: backoffLimit 0, Never, --disconnect-after-job --job-id")

# The Kubernetes executor: the Role grants what the executor calls, bound
# to the ServiceAccount the one-shot Job runs as.
with open(os.path.join(d, "kubernetes-executor.yaml")) as f:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(f)}
grants = {(r, v) for rule in docs["Role"]["rules"] for r in rule["resources"] for v in rule["verbs"]}
needed = {("configmaps", "get"), ("secrets", "create"), ("secrets", "delete"), ("pods", "create"),
          ("pods", "get"), ("pods", "delete"), ("pods/exec", "create")}
assert needed <= grants, f"Role misses {needed - grants}"
sa = docs["ServiceAccount"]["metadata"]["name"]
binding = docs["RoleBinding"]
assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"], "RoleBinding: wrong Role"
assert {"kind": "ServiceAccount", "name": sa} in binding["subjects"], "RoleBinding: wrong subject"
pod, c, env = common("executor Job", docs["Job"]["spec"])
assert pod["serviceAccountName"] == sa, "executor Job: not run as the bound ServiceAccount"
assert "--kubernetes-executor" in c["args"], "executor Job: no --kubernetes-executor"
assert env["KUBERNETES_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", "executor Job: namespace not its own"
print("kubernetes executor: Role grants configmaps get, secrets create/delete, pods create/get/delete, pods/exec create (the Helm charts' Role: SPDY exec needs no get) to the Job's ServiceAccount")
EOF
if out=$("$PY" "$WORK/props.py" "$HERE" 2>&1); then
    pass "$out"
else
    fail "manifest properties: $out"
fi

[ $failed = 0 ] || { echo "FAIL k8s: some checks failed"; exit 1; }
echo "PASS k8s: all checks"
