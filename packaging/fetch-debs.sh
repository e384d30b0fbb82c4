#!/usr/bin/env bash
# Download Debian packages of one architecture into a directory, without
# installing them and without changing the machine's apt setup: for an
# architecture dpkg does not know (arm64 on an amd64 host), apt reads its
# package lists into DIR/.apt with the host's sources, so no
# `dpkg --add-architecture` is needed. Packages already in DIR are not
# downloaded again (CI keeps DIR as its cache).
#
# Usage: packaging/fetch-debs.sh DEB_ARCH DIR PACKAGE...
#   DEB_ARCH: Debian's word (amd64, arm64). Prints the .deb paths, one a line.
set -euo pipefail

ARCH=${1:?usage: fetch-debs.sh DEB_ARCH DIR PACKAGE...}
DIR=${2:?usage: fetch-debs.sh DEB_ARCH DIR PACKAGE...}
shift 2
[ $# -gt 0 ] || { echo "fetch-debs: no packages named" >&2; exit 1; }
[[ $ARCH =~ ^[a-z0-9]+$ ]] || { echo "fetch-debs: '$ARCH' is not a Debian architecture word" >&2; exit 1; }

mkdir -p "$DIR"
# apt's download sandbox user must be able to write here.
chmod 0777 "$DIR"
have() { compgen -G "$DIR/${1}_*_${ARCH}.deb" >/dev/null || compgen -G "$DIR/${1}_*_all.deb" >/dev/null; }
missing=()
for p in "$@"; do
    have "$p" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    host=$(dpkg --print-architecture)
    if [ "$ARCH" = "$host" ] || dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
        APT=(apt-get -qq)
        update() { apt-get update -qq >&2; }
    else
        A=$DIR/.apt
        mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
        [ -f "$A/status" ] || : >"$A/status"
        APT=(apt-get -qq -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=$A/status"
            -o "Dir::Cache=$A/cache" -o "APT::Architecture=$ARCH" -o "APT::Architectures::=$ARCH")
        update() { "${APT[@]}" update >&2; }
        compgen -G "$A/lists/*_Packages*" >/dev/null || update
    fi
    if ! (cd "$DIR" && "${APT[@]}" download "${missing[@]}" >/dev/null 2>&1); then
        update
        (cd "$DIR" && "${APT[@]}" download "${missing[@]}" >&2)
    fi
    for p in "${missing[@]}"; do
        have "$p" || { echo "fetch-debs: apt-get download gave no $ARCH package $p in $DIR" >&2; exit 1; }
    done
fi
# One file a package (the newest name, should the cache hold two).
for p in "$@"; do
    { compgen -G "$DIR/${p}_*_${ARCH}.deb" || compgen -G "$DIR/${p}_*_all.deb"; } | sort -V | tail -1
done
