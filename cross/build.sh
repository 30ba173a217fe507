#!/usr/bin/env bash
# Builds edgeclip-device (and edgeclip-cloud, for ARM servers) for 64-bit and 32-bit ARM
# Linux on a plain Debian machine with Rust; installs the cross tools it needs first.
#
#   bash cross/build.sh [aarch64|armv7|all] [--profile dist|release|PROFILE] [--device-only]
#
# Default: all targets, profile dist (the shipped one: fat LTO, one codegen unit, stripped).
# The binaries land in $CARGO_TARGET_DIR (default target/)/<triple>/<profile>/.
# See cross/README.md.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

which=all profile=dist device_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    aarch64 | armv7 | all) which="$1" ;;
    --profile) profile="${2:?--profile needs a value}"; shift ;;
    --profile=*) profile="${1#--profile=}" ;;
    --device-only) device_only=1 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see: bash cross/build.sh --help)" ;;
  esac
  shift
done
read -r -a targets <<<"$(targets_of "$which")"

step "cross tools (installed only where missing)"
ensure_cross_tools "${targets[@]}"

for t in "${targets[@]}"; do
  triple="$(triple_of "$t")"
  # One cargo call per binary: the device's features are then resolved for the device
  # alone (building both in one call unifies their dependencies' features).
  step "edgeclip-device for $triple ($profile)"
  ncargo build --locked --profile "$profile" --target "$triple" -p edgeclip-device --bin edgeclip-device
  if [ "$device_only" = 0 ]; then
    step "edgeclip-cloud for $triple ($profile)"
    ncargo build --locked --profile "$profile" --target "$triple" -p edgeclip-cloud --bin edgeclip-cloud
  fi
done

step "built"
for t in "${targets[@]}"; do
  bins=(edgeclip-device); [ "$device_only" = 1 ] || bins+=(edgeclip-cloud)
  for b in "${bins[@]}"; do
    f="$(bin_dir_of "$t" "$profile")/$b"
    printf '  %-6s %10s bytes  %s\n' "$(deb_arch_of "$t")" "$(stat -c %s "$f")" "$f"
  done
done
