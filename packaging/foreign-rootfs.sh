#!/usr/bin/env bash
# A Debian bookworm root filesystem for another architecture (arm64 on an
# x86_64 host), made without running any of its programs: no binfmt_misc,
# no qemu, no registry. The same packages as packaging/base-rootfs.sh's
# debootstrap --variant=minbase (Priority: required, apt; usr-is-merged,
# as debootstrap picks it over usrmerge and its perl) plus what the
# agent's image ships (ca-certificates, curl, procps), resolved by apt for
# that architecture and unpacked with dpkg-deb (packaging/fetch-debs.sh
# downloads them). No maintainer script runs; what they would do that the
# image relies on is done here from the host, and nothing more:
#   - merged /usr (bin, sbin, lib are links into usr/, as debootstrap makes
#     them on bookworm);
#   - dpkg's database: /var/lib/dpkg/status ("install ok installed" for each
#     package, from its control file), info/<pkg>.list and .md5sums, so
#     `dpkg -s`, `dpkg -L` and `dpkg --audit` answer as on any Debian;
#   - /etc/passwd and /etc/group from base-passwd's masters, /etc/shadow and
#     /etc/gshadow by the host's pwconv/grpconv (-R: they only edit files);
#   - /bin/sh -> dash, the awk (mawk) and which alternatives, /etc/shells;
#   - /etc/profile, nsswitch.conf, PAM's common-* (the unix profile, as
#     pam-auth-update writes it: runuser and su need them), localtime (UTC)
#     and the other files the postinst scripts create;
#   - Debian's Mozilla CA bundle in /etc/ssl/certs (ca-certificates.crt, the
#     .pem links and their hash links), as update-ca-certificates writes it:
#     never this machine's own CAs.
# The dynamic loader finds the libraries in the multiarch directories
# without an ld.so.cache.
#
# Usage: packaging/foreign-rootfs.sh DEB_ARCH
#   DEB_ARCH: Debian's word (arm64). Prints the rootfs tarball's path on the
#   last line. Cached in $SEMAPHORE_CI_IMAGES (default
#   /var/tmp/semaphore-ci-images): the tarball under a name carrying this
#   script's hash, the .debs in debs-DEB_ARCH/ (a rerun downloads nothing).
#   Needs root (file owners) and apt's mirror.
set -euo pipefail

ARCH=${1:?usage: foreign-rootfs.sh DEB_ARCH}
[[ $ARCH =~ ^[a-z0-9]+$ ]] || { echo "foreign-rootfs: '$ARCH' is not a Debian architecture word" >&2; exit 1; }
CACHE=${SEMAPHORE_CI_IMAGES:-/var/tmp/semaphore-ci-images}
HERE=$(cd "$(dirname "$0")" && pwd)
hash=$(cat "$HERE/foreign-rootfs.sh" "$HERE/fetch-debs.sh" | sha256sum | cut -c1-12)
OUT=$CACHE/bookworm-agent-base-$ARCH-$hash.tar
DEBS=$CACHE/debs-$ARCH
log() { echo "foreign-rootfs: $*" >&2; }

if [ -s "$OUT" ]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "needs root (the tree's files belong to root and to uid 1000)"; exit 1; }
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v pwconv >/dev/null || need+=(passwd)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/rootfs-$ARCH.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

# --- the package set, resolved by apt for ARCH ------------------------------------
# fetch-debs.sh keeps apt's lists for ARCH in $DEBS/.apt; one small package
# makes sure they are there.
"$HERE/fetch-debs.sh" "$ARCH" "$DEBS" base-files >/dev/null
A=$DEBS/.apt
APT=(apt-get -q -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=$A/status"
    -o "Dir::Cache=$A/cache" -o "APT::Architecture=$ARCH" -o "APT::Architectures::=$ARCH")
required=$(apt-cache "${APT[@]:2}" dumpavail | awk '
    /^Package: / { p = $2 }
    /^Priority: required$/ { print p }' | sort -u)
[ -n "$required" ] || { log "no Priority: required package in apt's $ARCH lists ($A/lists)"; exit 1; }
# shellcheck disable=SC2086 # lists of words on purpose
pkgs=$("${APT[@]}" -s install --no-install-recommends $required apt usr-is-merged ca-certificates curl procps 2>"$work/apt.err" |
    awk '/^Inst / { print $2 }' | sort -u)
[ -n "$pkgs" ] || { log "apt resolved nothing: $(tail -5 "$work/apt.err")"; exit 1; }
# shellcheck disable=SC2086
mapfile -t debs < <("$HERE/fetch-debs.sh" "$ARCH" "$DEBS" $pkgs)
log "${#debs[@]} packages for $ARCH"

# --- unpacked, merged /usr ------------------------------------------------------------
R=$work/root
mkdir -p "$R/usr/bin" "$R/usr/sbin" "$R/usr/lib" "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates"
for d in bin sbin lib; do ln -s "usr/$d" "$R/$d"; done
: >"$R/var/lib/dpkg/status"
: >"$R/var/lib/dpkg/available"
echo 1 >"$R/var/lib/dpkg/info/format"
for deb in "${debs[@]}"; do
    pkg=$(dpkg-deb -f "$deb" Package)
    # dpkg names a Multi-Arch: same package's files pkg:arch.
    [ "$(dpkg-deb -f "$deb" Multi-Arch)" != same ] || pkg=$pkg:$ARCH
    # --keep-directory-symlink: ./bin/ in a package lands in usr/bin.
    dpkg-deb --fsys-tarfile "$deb" >"$work/data.tar"
    tar -x --keep-directory-symlink -C "$R" -f "$work/data.tar"
    tar -tf "$work/data.tar" | sed -e 's|^\./|/|' -e 's|^/$|/.|' -e 's|/$||' >"$R/var/lib/dpkg/info/$pkg.list"
    rm -rf "$work/control"
    dpkg-deb -e "$deb" "$work/control"
    for f in md5sums conffiles triggers shlibs symbols; do
        [ ! -f "$work/control/$f" ] || cp "$work/control/$f" "$R/var/lib/dpkg/info/$pkg.$f"
    done
    # The control file with the status line after Package, as dpkg keeps it.
    dpkg-deb -f "$deb" | awk '{ print } /^Package: / { print "Status: install ok installed" }' >>"$R/var/lib/dpkg/status"
    echo >>"$R/var/lib/dpkg/status"
done

# --- what the maintainer scripts would have done ---------------------------------------
cp "$R/usr/share/base-passwd/passwd.master" "$R/etc/passwd"
cp "$R/usr/share/base-passwd/group.master" "$R/etc/group"
chmod 0644 "$R/etc/passwd" "$R/etc/group"
pwconv -R "$R"
grpconv -R "$R"
rm -f "$R/etc/.pwd.lock" "$R/etc/passwd-" "$R/etc/group-" "$R/etc/shadow-" "$R/etc/gshadow-"
[ -e "$R/usr/bin/sh" ] || ln -s dash "$R/usr/bin/sh"
mkdir -p "$R/etc/alternatives"
alt() { # NAME TARGET
    ln -sfn "$2" "$R/etc/alternatives/$1"
    ln -sfn "/etc/alternatives/$1" "$R/usr/bin/$1"
}
alt awk /usr/bin/mawk
alt nawk /usr/bin/mawk
alt which /usr/bin/which.debianutils
printf '# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n/bin/rbash\n/usr/bin/rbash\n/bin/dash\n/usr/bin/dash\n' >"$R/etc/shells"
certs=$R/etc/ssl/certs
mkdir -p "$certs"
: >"$certs/ca-certificates.crt"
: >"$R/etc/ca-certificates.conf"
while IFS= read -r crt; do
    rel=${crt#"$R/usr/share/ca-certificates/"}
    echo "$rel" >>"$R/etc/ca-certificates.conf"
    name=$(basename "$crt" .crt)
    ln -s "/usr/share/ca-certificates/$rel" "$certs/$name.pem"
    # As update-ca-certificates: each certificate ends with a newline.
    sed -e '$a\' "$crt" >>"$certs/ca-certificates.crt"
done < <(find "$R/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort)
[ -s "$certs/ca-certificates.crt" ] || { log "no certificate in ca-certificates"; exit 1; }
# The hash links (relative, NAME.pem); openssl reads the links' targets, so
# it runs on a copy where the absolute targets resolve.
(cd "$certs" && for l in *.pem; do
    h=$(openssl x509 -hash -noout -in "$R$(readlink "$l")") || exit 1
    n=0
    while [ -e "$h.$n" ]; do n=$((n + 1)); done
    ln -s "$l" "$h.$n"
done)
# base-files, libc-bin, tzdata, passwd, libpam-*: the files their
# postinst scripts write on a first install.
install -m 0644 "$R/usr/share/base-files/profile" "$R/etc/profile"
install -m 0644 "$R/usr/share/base-files/motd" "$R/etc/motd"
install -m 0644 "$R/usr/share/base-files/dot.profile" "$R/root/.profile"
install -m 0644 "$R/usr/share/base-files/dot.bashrc" "$R/root/.bashrc"
install -m 0644 "$R/usr/share/libc-bin/nsswitch.conf" "$R/etc/nsswitch.conf"
ln -sfn debian "$R/etc/dpkg/origins/default"
echo '# UNCONFIGURED FSTAB FOR BASE SYSTEM' >"$R/etc/fstab"
ln -sfn /usr/share/zoneinfo/Etc/UTC "$R/etc/localtime"
echo Etc/UTC >"$R/etc/timezone"
mkdir -p "$R/etc/opt" "$R/etc/security" "$R/mnt" "$R/media" "$R/srv" "$R/var/opt" "$R/run/lock"
chmod 1777 "$R/run/lock"
for d in bin etc games include lib sbin share src; do mkdir -p "$R/usr/local/$d"; done
install -d -m 2775 -g 8 "$R/var/mail"
rm -rf "$R/var/run" "$R/var/lock"
ln -s /run "$R/var/run"
ln -s /run/lock "$R/var/lock"
: >"$R/etc/environment"
: >"$R/etc/subuid"
: >"$R/etc/subgid"
install -m 0600 /dev/null "$R/etc/security/opasswd"
# PAM's common-* files as pam-auth-update writes them on a first install
# with Debian's one default profile (unix): its -Initial lines in the
# templates, success=end jumping over the pam_deny that follows; a type
# the profile adds no primary module to gets pam_permit skipping it.
prof=$R/usr/share/pam-configs/unix
for t in auth account password session session-noninteractive; do
    T=${t%%-*}
    T=${T^}
    key=${t/session-noninteractive/session_nonint}
    lines=$(awk -v s="$T-Initial:" '$0 == s { on = 1; next } /^[A-Za-z-]+:/ { on = 0 }
        on { sub(/^[ \t]+/, ""); print }' "$prof" | sed "s/^/${t%%-*}\t/; s/success=end/success=1/")
    [ -n "$lines" ] || { log "no $T-Initial lines in $prof"; exit 1; }
    if [ "$(sed -n "s/^$T-Type: //p" "$prof")" = Primary ]; then
        prim=$lines add=""
    else
        prim="${t%%-*}"$'\t[default=1]\t\t\tpam_permit.so' add=$lines
    fi
    awk -v p="$prim" -v a="$add" -v k="$key" '
        $0 == "$" k "_primary" { if (p != "") print p; next }
        $0 == "$" k "_additional" { if (a != "") print a; next }
        { print }' "$R/usr/share/pam/common-$t" >"$R/etc/pam.d/common-$t"
done
echo "deb http://deb.debian.org/debian bookworm main" >"$R/etc/apt/sources.list"
echo "localhost" >"$R/etc/hostname"
rm -rf "$R/var/cache/apt/archives/"*.deb "$R/var/lib/apt/lists/"*

tar -C "$R" --numeric-owner -cf "$work/base.tar" .
mv "$work/base.tar" "$OUT"
log "built $OUT ($(du -m "$OUT" | cut -f1) MB, ${#debs[@]} packages) in $(($(date +%s) - start))s"
echo "$OUT"
