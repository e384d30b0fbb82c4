# Sourced by build-static.sh and build-windows.sh: the toolchain step they
# share. Both build with Debian's own Rust (rustc-web/cargo-web) and rebuild
# std for their target with -Z build-std, so both need the same check that
# std's source matches the compiler exactly.
#
# The caller defines log, die, RUSTC, and an associative array NEED of
# Debian package -> a file it installs that the build needs.

# Installs the packages of NEED whose file is missing (needs root + apt),
# then fails if any file is still missing.
debian_rust_install_needed() {
    local pkg missing=()
    for pkg in "${!NEED[@]}"; do
        [ -e "${NEED[$pkg]}" ] || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    for pkg in "${!NEED[@]}"; do
        [ -e "${NEED[$pkg]}" ] || die "package $pkg installed but ${NEED[$pkg]} is missing"
    done
}

# build-std needs std's source of exactly the compiler's version.
debian_rust_check_std_source() {
    local rustc_ver src_ver
    rustc_ver=$($RUSTC -V | awk '{print $2}')
    src_ver=$(dpkg-query -W -f='${Version}' rust-web-src 2>/dev/null || true)
    case "$src_ver" in
        "$rustc_ver"*) ;;
        *) die "rust-web-src $src_ver does not match $RUSTC $rustc_ver" ;;
    esac
}
