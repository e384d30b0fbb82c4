# Sourced by .ci/run before `cargo test`: a Docker engine for the docker
# compose executor's tests (tests/integration/compose.rs). Uses a reachable engine if
# there is one; otherwise installs Debian's docker.io and docker-compose and
# starts dockerd in the background with a private data root and socket, and
# exports DOCKER_HOST for the tests. bash-static and busybox-static give the
# static binaries the tests build their images from (`docker import`, no
# registry needed); docker-registry and apache2-utils (htpasswd) give the
# private registry on 127.0.0.1 of the login test. The engine is left
# running: CI machines are thrown away.

semaphore_ci_docker() {
  local dir=/var/tmp/semaphore-ci-docker
  local sock="$dir/docker.sock"
  local pkgs=()
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || pkgs+=(docker-compose)
  [ -x /bin/bash-static ] || pkgs+=(bash-static)
  [ -x /bin/busybox ] || pkgs+=(busybox-static)
  command -v docker-registry >/dev/null 2>&1 || pkgs+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || pkgs+=(apache2-utils)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    echo "== installing ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  if docker info >/dev/null 2>&1; then
    echo "== using the reachable Docker engine"
    return 0
  fi
  mkdir -p "$dir"
  if [ ! -S "$sock" ] || ! DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; then
    echo "== starting dockerd (socket $sock)"
    nohup dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
      --host "unix://$sock" --storage-driver=vfs --iptables=false --bridge=none \
      >"$dir/dockerd.log" 2>&1 &
  fi
  export DOCKER_HOST="unix://$sock"
  local i
  for i in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
      echo "== dockerd is up"
      return 0
    fi
    sleep 1
  done
  echo "dockerd did not start in 60 s; its log:" >&2
  tail -n 50 "$dir/dockerd.log" >&2
  return 1
}

semaphore_ci_docker
