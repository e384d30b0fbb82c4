#!/usr/bin/env bash
# Cross-build semaphore-agent.exe for x86_64-pc-windows-gnu on Debian.
#
# Same route as build-static.sh: the rustup toolchain on our machines has no
# Windows target and cannot download one, so we use Debian's own Rust
# (rustc-web/cargo-web) with its std source and rebuild std for the target
# with -Z build-std (RUSTC_BOOTSTRAP=1 lets the stable compiler take -Z).
# mingw-w64's gcc links, and its import libraries stand for the DLLs.
#
# Usage: packaging/build-windows.sh [--clippy]
#   Prints the absolute path of the .exe on the last line of stdout.
#   --clippy also runs clippy for the Windows target with Debian's
#   rust-web-clippy, -D warnings: the library, the binary and the unit
#   tests (the integration tests drive bash and Unix signals; they are
#   linted for Linux only).
#   CARGO_TARGET_DIR defaults to <repo>/target/windows so the normal build
#   is left alone. Installs missing Debian packages (needs root + apt).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRIPLE=x86_64-pc-windows-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/windows}
RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo
MINGW_GCC=/usr/bin/x86_64-w64-mingw32-gcc
MAX_BYTES=$((6 * 1024 * 1024))
CLIPPY=0
[ "${1:-}" = "--clippy" ] && CLIPPY=1

log() { echo "build-windows: $*" >&2; }
die() { echo "build-windows: FAIL: $*" >&2; exit 1; }

# --- 1. toolchain -----------------------------------------------------------
# Debian package -> a file it installs that we need.
declare -A NEED=(
    [rustc-web]=$RUSTC
    [cargo-web]=$CARGO
    [rust-web-src]=/usr/lib/rustlib/src/rust/library/std/Cargo.toml
    [libstd-rust-web-dev]=/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib
    [gcc-mingw-w64-x86-64]=$MINGW_GCC
    [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
)
[ $CLIPPY = 1 ] && NEED[rust-web-clippy]=/usr/bin/cargo-clippy
# shellcheck source=packaging/debian-rust.sh
source "$ROOT/packaging/debian-rust.sh"
debian_rust_install_needed
debian_rust_check_std_source
log "toolchain: $($RUSTC -V), $($MINGW_GCC --version | head -1)"

# --- 2. build ---------------------------------------------------------------
# Clear anything from the caller's environment that would pick rustup's
# compiler or add flags meant for the host build. Debian's cargo-clippy is
# called by its path: `cargo clippy` would find rustup's in $CARGO_HOME/bin.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTUP_TOOLCHAIN RUSTC_WRAPPER \
    CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET
cargo_env=(
    env PATH="/usr/bin:/bin:$PATH" RUSTC=$RUSTC RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
    CARGO_TARGET_DIR="$TARGET_DIR"
    CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=$MINGW_GCC
    CC_x86_64_pc_windows_gnu=$MINGW_GCC
    AR_x86_64_pc_windows_gnu=/usr/bin/x86_64-w64-mingw32-ar
)
start=$(date +%s)
(
    cd "$ROOT"
    "${cargo_env[@]}" $CARGO build --release --locked \
        -Z build-std=std,panic_abort \
        --target $TRIPLE --bin semaphore-agent >&2
)
EXE=$TARGET_DIR/$TRIPLE/release/semaphore-agent.exe
[ -f "$EXE" ] || die "cargo succeeded but $EXE is missing"
size=$(stat -c %s "$EXE")
log "built in $(($(date +%s) - start))s: $EXE ($size bytes)"
[ "$size" -lt $MAX_BYTES ] || die "$EXE is $size bytes, over the $MAX_BYTES budget"
file "$EXE" 2>/dev/null | grep -q "PE32+ executable" ||
    [ "$(head -c 2 "$EXE")" = "MZ" ] || die "$EXE is not a Windows executable"

if [ $CLIPPY = 1 ]; then
    log "clippy for $TRIPLE"
    (
        cd "$ROOT"
        clippy=("${cargo_env[@]}" CARGO=$CARGO /usr/bin/cargo-clippy clippy --locked
            -Z build-std=std,panic_abort --target $TRIPLE)
        "${clippy[@]}" --lib --bins -- -D warnings >&2
        "${clippy[@]}" --lib --profile test -- -D warnings >&2
    )
fi
echo "$EXE"
