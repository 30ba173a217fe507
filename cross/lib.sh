# Shared helpers of the cross/ scripts (sourced, not run). See cross/README.md.
# shellcheck shell=bash

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CROSS_DIR/.." && pwd)"
# Cargo's target folder: CARGO_TARGET_DIR if set, else the workspace's target/.
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
# Cargo runs niced so that a build on a shared machine leaves room for the rest
# (CROSS_NICE=0 to disable).
CROSS_NICE="${CROSS_NICE:-15}"

# The Debian packages the ARM builds need: cross gcc (linker and C compiler for ring,
# aws-lc-sys, simsimd), the cross glibc, and qemu user-mode emulation for tests.
CROSS_APT_PACKAGES=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross
  libc6-dev-armhf-cross qemu-user-static binutils-aarch64-linux-gnu binutils-arm-linux-gnueabihf)

# Seconds are counted from the first script of a run (build.sh called by package.sh goes on).
export _cross_start=${_cross_start:-$(date +%s)}
step() { printf '\n==> [%4ss] %s\n' "$(($(date +%s) - _cross_start))" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
ncargo() { if [ "$CROSS_NICE" != 0 ]; then nice -n "$CROSS_NICE" cargo "$@"; else cargo "$@"; fi; }

# Short name (aarch64 | armv7) -> Rust target triple.
triple_of() {
  case "$1" in
    aarch64) echo aarch64-unknown-linux-gnu ;;
    armv7) echo armv7-unknown-linux-gnueabihf ;;
    *) die "unknown target '$1' (aarch64 or armv7)" ;;
  esac
}
# Short name -> Debian architecture.
deb_arch_of() { case "$1" in aarch64) echo arm64 ;; armv7) echo armhf ;; *) die "unknown target '$1'" ;; esac; }
# Short name -> GNU tool prefix (aarch64-linux-gnu-strip, ...).
gnu_prefix_of() { case "$1" in aarch64) echo aarch64-linux-gnu ;; armv7) echo arm-linux-gnueabihf ;; *) die "unknown target '$1'" ;; esac; }
# Short name -> qemu user-mode command (the same as the runner in .cargo/config.toml).
qemu_of() {
  case "$1" in
    aarch64) echo "qemu-aarch64-static -cpu cortex-a72 -L /usr/aarch64-linux-gnu" ;;
    armv7) echo "qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
    *) die "unknown target '$1'" ;;
  esac
}
# "aarch64 | armv7 | all" -> the list of short names.
targets_of() {
  case "${1:-all}" in
    all) echo aarch64 armv7 ;;
    aarch64 | armv7) echo "$1" ;;
    *) die "unknown target '$1' (aarch64, armv7 or all)" ;;
  esac
}
# Folder cargo writes a target's binaries for a profile into.
bin_dir_of() { # short-name profile
  local p="$2"; [ "$p" = dev ] && p=debug
  echo "$TARGET_DIR/$(triple_of "$1")/$p"
}

# Installs, only where missing, the Debian packages and Rust targets for the given short names.
ensure_cross_tools() {
  local missing=() p t
  for p in "${CROSS_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  local installed
  installed="$(rustup target list --installed)"
  for t in "$@"; do
    if ! grep -qx "$(triple_of "$t")" <<<"$installed"; then
      echo "adding Rust target $(triple_of "$t")"
      rustup target add "$(triple_of "$t")"
    fi
  done
}

# Installs Mosquitto (for the smoke tests) and jq if missing.
ensure_smoke_tools() {
  local missing=()
  [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# A TCP port free on 127.0.0.1 at the time of asking.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every half second until it succeeds;
# fails naming WHAT after SECONDS.
wait_until() {
  local secs="$1" what="$2"; shift 2
  local deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out after ${secs}s waiting for: $what" >&2; return 1; }
    sleep 0.5
  done
}
