#!/usr/bin/env bash
# Build a fully static musl binary of semaphore-agent, for x86_64 (the
# default) or aarch64 (--arch arm64, cross-compiled on an x86_64 host).
#
# Why this route: the rustup toolchain on our machines has no musl target and
# cannot download one, so we use Debian's own Rust (rustc-web/cargo-web, a
# stable compiler new enough for the crate) with its std source, and rebuild
# std for <arch>-unknown-linux-musl with -Z build-std. rustc then links
# "self-contained" (it passes crt objects and -lc/-lunwind itself, with
# -nostartfiles -nodefaultlibs), so we hand it one directory (LINK_DIR) with
# musl's crt objects and libc.a, gcc's crtbegin/crtend, and a libunwind.a.
# Without that directory gcc would silently find glibc's libc.a instead; the
# checks at the end catch that.
#
# aarch64: the same recipe with Debian's arm64 musl, musl-dev and
# libunwind-14-dev packages unpacked (not installed: packaging/fetch-debs.sh
# downloads them into $SEMAPHORE_ARM64_DEBS, default $CARGO_TARGET_DIR/
# aarch64-debs) and gcc-aarch64-linux-gnu as C compiler and linker, its C
# headers replaced by musl's. The result is `statically linked` (not PIE).
#
# Usage: packaging/build-static.sh [--arch x86_64|arm64] [--no-check]
#   Prints the path of the binary on the last line of stdout.
#   CARGO_TARGET_DIR defaults to <repo>/target/musl so the normal build is
#   left alone. Installs missing Debian packages (needs root + apt).
#   The checks (check-static.sh) run the binary: an aarch64 one through
#   qemu-aarch64-static (binfmt_misc need not be mounted).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCH=x86_64
CHECK=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-check) CHECK=0 ;;
        --arch) ARCH=${2:?--arch needs x86_64 or arm64}; shift ;;
        *) echo "build-static: unknown argument '$1' (usage: build-static.sh [--arch x86_64|arm64] [--no-check])" >&2; exit 2 ;;
    esac
    shift
done
case "$ARCH" in
    x86_64 | amd64) ARCH=x86_64 ;;
    arm64 | aarch64) ARCH=aarch64 ;;
    *) echo "build-static: unknown --arch '$ARCH' (x86_64 or arm64)" >&2; exit 2 ;;
esac
TRIPLE=$ARCH-unknown-linux-musl
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/musl}
LINK_DIR=$TARGET_DIR/musl-link-$ARCH
RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo

log() { echo "build-static: $*" >&2; }
die() { echo "build-static: FAIL: $*" >&2; exit 1; }

# --- 1. toolchain -----------------------------------------------------------
# Debian package -> a file it installs that we need.
declare -A NEED=(
    [rustc-web]=$RUSTC
    [cargo-web]=$CARGO
    [rust-web-src]=/usr/lib/rustlib/src/rust/library/std/Cargo.toml
    [libstd-rust-web-dev]=/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib
    [gcc]=/usr/bin/gcc
    [binutils]=/usr/bin/ar
    [file]=/usr/bin/file
    [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
)
if [ $ARCH = x86_64 ]; then
    MUSL_LIB=/usr/lib/x86_64-linux-musl
    NEED+=(
        [musl]=$MUSL_LIB/libc.so
        [musl-dev]=$MUSL_LIB/libc.a
        [musl-tools]=/usr/bin/musl-gcc
        [libunwind-14-dev]=/usr/lib/llvm-14/lib/libunwind.a
    )
    CC=musl-gcc
    AR=ar
    UNWIND=/usr/lib/llvm-14/lib/libunwind.a
else
    NEED+=(
        [gcc-aarch64-linux-gnu]=/usr/bin/aarch64-linux-gnu-gcc
        [binutils-aarch64-linux-gnu]=/usr/bin/aarch64-linux-gnu-ar
        [qemu-user-static]=/usr/bin/qemu-aarch64-static
    )
fi
# shellcheck source=packaging/debian-rust.sh
source "$ROOT/packaging/debian-rust.sh"
debian_rust_install_needed
debian_rust_check_std_source
log "toolchain: $($RUSTC -V)"
if [ $ARCH = aarch64 ]; then
    # The target's musl and libunwind, unpacked from Debian's arm64 packages.
    DEBS=${SEMAPHORE_ARM64_DEBS:-$TARGET_DIR/aarch64-debs}
    SYSROOT=$TARGET_DIR/aarch64-sysroot
    debs=$("$ROOT/packaging/fetch-debs.sh" arm64 "$DEBS" musl musl-dev libunwind-14-dev) ||
        die "cannot download Debian's arm64 musl, musl-dev and libunwind-14-dev"
    rm -rf "$SYSROOT"
    mkdir -p "$SYSROOT"
    for deb in $debs; do
        dpkg-deb -x "$deb" "$SYSROOT"
    done
    MUSL_LIB=$SYSROOT/usr/lib/aarch64-linux-musl
    UNWIND=$SYSROOT/usr/lib/llvm-14/lib/libunwind.a
    [ -f "$MUSL_LIB/libc.a" ] && [ -f "$UNWIND" ] || die "no $MUSL_LIB/libc.a or $UNWIND in the arm64 packages"
    CC=aarch64-linux-gnu-gcc
    AR=aarch64-linux-gnu-ar
    # C code (ring's) sees musl's headers and gcc's own, never glibc's.
    CFLAGS="-nostdinc -isystem $SYSROOT/usr/include/aarch64-linux-musl -isystem $($CC -print-file-name=include)"
fi

# --- 2. the link directory --------------------------------------------------
rm -rf "$LINK_DIR"
mkdir -p "$LINK_DIR"
for f in crt1.o rcrt1.o Scrt1.o crti.o crtn.o libc.a; do
    cp "$MUSL_LIB/$f" "$LINK_DIR/"
done
gcc_dir=$(dirname "$($CC -print-file-name=crtbeginS.o)")
for f in crtbegin.o crtbeginS.o crtbeginT.o crtend.o crtendS.o; do
    cp "$gcc_dir/$f" "$LINK_DIR/"
done
# Debian's LLVM libunwind.a was compiled against glibc with
# _FORTIFY_SOURCE, so its debug printing calls __fprintf_chk, which musl
# lacks. A one-function shim forwarding to vfprintf makes it link (no
# headers: the same source compiles for either architecture).
cat >"$LINK_DIR/fprintf_chk.c" <<'EOF'
typedef struct _IO_FILE FILE;
int vfprintf(FILE *f, const char *fmt, __builtin_va_list ap);
int __fprintf_chk(FILE *f, int flag, const char *fmt, ...)
{
    __builtin_va_list ap;
    int n;
    (void)flag;
    __builtin_va_start(ap, fmt);
    n = vfprintf(f, fmt, ap);
    __builtin_va_end(ap);
    return n;
}
EOF
$CC -O2 -fPIC -ffreestanding -c "$LINK_DIR/fprintf_chk.c" -o "$LINK_DIR/fprintf_chk.o"
cp "$UNWIND" "$LINK_DIR/libunwind.a"
$AR rs "$LINK_DIR/libunwind.a" "$LINK_DIR/fprintf_chk.o"

# --- 3. build ---------------------------------------------------------------
# Clear anything from the caller's environment that would pick rustup's
# compiler or add flags meant for the host build.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTUP_TOOLCHAIN RUSTC_WRAPPER \
    CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET
T=${TRIPLE//-/_}
TARGET_ENV=("CC_$T=$CC" "AR_$T=$AR")
if [ $ARCH = aarch64 ]; then
    # rustc's default linker for this target is `cc`, the host's.
    TARGET_ENV+=("CFLAGS_$T=$CFLAGS" "CARGO_TARGET_$(tr '[:lower:]' '[:upper:]' <<<"$T")_LINKER=$CC")
fi
start=$(date +%s)
(
    cd "$ROOT"
    env RUSTC=$RUSTC RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_DIR="$TARGET_DIR" \
        "${TARGET_ENV[@]}" \
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
