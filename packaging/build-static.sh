#!/usr/bin/env bash
# Build a fully static x86_64 musl binary of semaphore-agent.
#
# Why this route: the rustup toolchain on our machines has no musl target and
# cannot download one, so we use Debian's own Rust (rustc-web/cargo-web, a
# stable compiler new enough for the crate) with its std source, and rebuild
# std for x86_64-unknown-linux-musl with -Z build-std. rustc then links
# "self-contained" (it passes crt objects and -lc/-lunwind itself, with
# -nostartfiles -nodefaultlibs), so we hand it one directory (LINK_DIR) with
# musl's crt objects and libc.a, gcc's crtbegin/crtend, and a libunwind.a.
# Without that directory gcc would silently find glibc's libc.a instead; the
# checks at the end catch that.
#
# Usage: packaging/build-static.sh [--no-check]
#   Prints the path of the binary on the last line of stdout.
#   CARGO_TARGET_DIR defaults to <repo>/target/musl so the normal build is
#   left alone. Installs missing Debian packages (needs root + apt).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRIPLE=x86_64-unknown-linux-musl
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/musl}
LINK_DIR=$TARGET_DIR/musl-link
MUSL_LIB=/usr/lib/x86_64-linux-musl
RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo
CHECK=1
[ "${1:-}" = "--no-check" ] && CHECK=0

log() { echo "build-static: $*" >&2; }
die() { echo "build-static: FAIL: $*" >&2; exit 1; }

# --- 1. toolchain -----------------------------------------------------------
# Debian package -> a file it installs that we need.
declare -A NEED=(
    [rustc-web]=$RUSTC
    [cargo-web]=$CARGO
    [rust-web-src]=/usr/lib/rustlib/src/rust/library/std/Cargo.toml
    [libstd-rust-web-dev]=/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib
    [musl]=$MUSL_LIB/libc.so
    [musl-dev]=$MUSL_LIB/libc.a
    [musl-tools]=/usr/bin/musl-gcc
    [libunwind-14-dev]=/usr/lib/llvm-14/lib/libunwind.a
    [gcc]=/usr/bin/gcc
    [binutils]=/usr/bin/ar
    [file]=/usr/bin/file
    [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
)
# shellcheck source=packaging/debian-rust.sh
source "$ROOT/packaging/debian-rust.sh"
debian_rust_install_needed
debian_rust_check_std_source
log "toolchain: $($RUSTC -V)"

# --- 2. the link directory --------------------------------------------------
rm -rf "$LINK_DIR"
mkdir -p "$LINK_DIR"
for f in crt1.o rcrt1.o Scrt1.o crti.o crtn.o libc.a; do
    cp "$MUSL_LIB/$f" "$LINK_DIR/"
done
gcc_dir=$(dirname "$(gcc -print-file-name=crtbeginS.o)")
for f in crtbegin.o crtbeginS.o crtbeginT.o crtend.o crtendS.o; do
    cp "$gcc_dir/$f" "$LINK_DIR/"
done
# Debian's LLVM libunwind.a was compiled against glibc with
# _FORTIFY_SOURCE, so its debug printing calls __fprintf_chk, which musl
# lacks. A one-function shim forwarding to vfprintf makes it link.
cat >"$LINK_DIR/fprintf_chk.c" <<'EOF'
#include <stdarg.h>
#include <stdio.h>
int __fprintf_chk(FILE *f, int flag, const char *fmt, ...)
{
    va_list ap;
    int n;
    (void)flag;
    va_start(ap, fmt);
    n = vfprintf(f, fmt, ap);
    va_end(ap);
    return n;
}
EOF
musl-gcc -O2 -fPIC -c "$LINK_DIR/fprintf_chk.c" -o "$LINK_DIR/fprintf_chk.o"
cp /usr/lib/llvm-14/lib/libunwind.a "$LINK_DIR/libunwind.a"
ar rs "$LINK_DIR/libunwind.a" "$LINK_DIR/fprintf_chk.o"

# --- 3. build ---------------------------------------------------------------
# Clear anything from the caller's environment that would pick rustup's
# compiler or add flags meant for the host build.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTUP_TOOLCHAIN RUSTC_WRAPPER \
    CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET
start=$(date +%s)
(
    cd "$ROOT"
    env RUSTC=$RUSTC RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_DIR="$TARGET_DIR" \
        CC_x86_64_unknown_linux_musl=musl-gcc \
        AR_x86_64_unknown_linux_musl=ar \
        RUSTFLAGS="-L native=$LINK_DIR -C target-feature=+crt-static" \
        $CARGO build --release --locked \
        -Z build-std=std,panic_abort \
        --target $TRIPLE --bin semaphore-agent >&2
)
BIN=$TARGET_DIR/$TRIPLE/release/semaphore-agent
log "built in $(($(date +%s) - start))s: $BIN ($(stat -c %s "$BIN") bytes)"

if [ $CHECK = 1 ]; then
    "$ROOT/packaging/check-static.sh" "$BIN" >&2
fi
echo "$BIN"
