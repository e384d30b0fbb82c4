#!/usr/bin/env bash
# CI: the real-cluster tests (tests/integration/kubernetes_cluster.rs) a
# second time, on the newest Kubernetes whose kubelet still runs on these
# cgroup v1 machines (.ci/k8s-cluster.sh's K8S_NEWEST), after `cargo test`
# ran them on the oldest. Its binaries are built once and cached in
# /var/tmp/semaphore-ci-k8s/kube/VERSION like the oldest's; the two clusters
# share the script's ports and run dir, so `up` takes the oldest's cluster
# down first, and this stage takes its own down (.ci/run's EXIT trap does
# too, whichever is up).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
export K8S_VERSION=newest
bash .ci/k8s-cluster.sh up
# CI=true: a missing cluster fails the tests instead of skipping them.
CI=true cargo test --locked --test integration kubernetes_cluster
version=$(sed -n "s/^K8S_VERSION=//p" "${K8S_HOME:-/var/tmp/semaphore-ci-k8s}/run/env")
bash .ci/k8s-cluster.sh down
echo "k8s-newest: the real-cluster tests passed on Kubernetes $version in $(($(date +%s) - start))s"
