#!/usr/bin/env bash
# Builds the Debian packages of edgeclip-device for arm64 and armhf with dpkg-deb from a
# staged tree (no debhelper, no cargo-deb: nothing to install, a second per package).
#
#   bash cross/package.sh [aarch64|armv7|all] [--profile dist|release|PROFILE] [--no-build]
#
# Default: all targets, profile dist; the binary is built first (cross/build.sh) unless
# --no-build, which packages the one already built for that profile. Writes
# $CARGO_TARGET_DIR (default target/)/debian/edgeclip-device_<version>_<arch>.deb.
#
# Contents: /usr/bin/edgeclip-device (stripped), /etc/edgeclip/device.toml (conffile),
# /usr/share/edgeclip/models/clip-shapes/{config.json,SHA256SUMS,visual/},
# /usr/lib/systemd/system/edgeclip-device.service, /usr/share/doc/edgeclip-device/;
# postinst makes the system user "edgeclip" and enables the service. Sources: cross/debian/.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

which=all profile=dist build=1
while [ $# -gt 0 ]; do
  case "$1" in
    aarch64 | armv7 | all) which="$1" ;;
    --profile) profile="${2:?--profile needs a value}"; shift ;;
    --profile=*) profile="${1#--profile=}" ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see: bash cross/package.sh --help)" ;;
  esac
  shift
done
read -r -a targets <<<"$(targets_of "$which")"

# The model shipped with the device: the image half of the bundled small CLIP.
MODEL_SRC="${EDGECLIP_PACKAGE_MODEL:-$REPO_DIR/models/clip-shapes}"
MODEL_NAME="$(basename "$MODEL_SRC")"
DEB_DIR="$TARGET_DIR/debian"
VERSION="$(awk -F'"' '/^\[workspace.package\]/{w=1} w && /^version *=/{print $2; exit}' Cargo.toml)"
[ -n "$VERSION" ] || die "no [workspace.package] version in Cargo.toml"
# Reproducible archives: file times clamped to the last commit's time.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

if [ "$build" = 1 ]; then
  bash "$CROSS_DIR/build.sh" "$which" --profile "$profile" --device-only
else
  ensure_cross_tools "${targets[@]}"
fi

step "model files ($MODEL_SRC): config.json, SHA256SUMS, visual/ checked against SHA256SUMS"
if ! [ -f "$MODEL_SRC/config.json" ] || ! [ -f "$MODEL_SRC/SHA256SUMS" ] || ! [ -d "$MODEL_SRC/visual" ]; then
  die "$MODEL_SRC needs config.json, SHA256SUMS and visual/"
fi
mapfile -t model_files < <(cd "$MODEL_SRC" && { echo config.json; find visual -type f | LC_ALL=C sort; })
# Every shipped file must be listed in SHA256SUMS and match it (the textual/ files it also
# lists stay with the cloud; the file ships unchanged since it is part of the model id).
for f in "${model_files[@]}"; do
  want="$(awk -v f="$f" '$2 == f || $2 == "*" f {print $1}' "$MODEL_SRC/SHA256SUMS")"
  [ -n "$want" ] || die "$MODEL_SRC/$f is not listed in SHA256SUMS"
  [ "$(sha256sum <"$MODEL_SRC/$f" | cut -d' ' -f1)" = "$want" ] || die "$MODEL_SRC/$f does not match SHA256SUMS"
done

mkdir -p "$DEB_DIR"
for t in "${targets[@]}"; do
  arch="$(deb_arch_of "$t")" prefix="$(gnu_prefix_of "$t")"
  bin="$(bin_dir_of "$t" "$profile")/edgeclip-device"
  [ -x "$bin" ] || die "$bin is missing: run bash cross/build.sh $t --profile $profile"
  step "edgeclip-device_${VERSION}_$arch.deb from $bin"
  stage="$DEB_DIR/stage-$arch"
  rm -rf "$stage"
  install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc/edgeclip" \
    "$stage/usr/lib/systemd/system" "$stage/usr/share/doc/edgeclip-device" \
    "$stage/usr/share/edgeclip/models/$MODEL_NAME"

  install -m 0755 "$bin" "$stage/usr/bin/edgeclip-device"
  # dist binaries are stripped already; release ones (CI) are stripped here.
  "$prefix-strip" --strip-all "$stage/usr/bin/edgeclip-device"
  install -m 0640 "$CROSS_DIR/debian/device.toml" "$stage/etc/edgeclip/device.toml"
  install -m 0644 "$CROSS_DIR/debian/edgeclip-device.service" "$stage/usr/lib/systemd/system/"
  install -m 0644 "$CROSS_DIR/debian/copyright" "$CROSS_DIR/debian/README.Debian" "$stage/usr/share/doc/edgeclip-device/"
  for f in SHA256SUMS "${model_files[@]}"; do
    install -D -m 0644 "$MODEL_SRC/$f" "$stage/usr/share/edgeclip/models/$MODEL_NAME/$f"
  done
  install -m 0755 "$CROSS_DIR/debian/postinst" "$CROSS_DIR/debian/prerm" "$CROSS_DIR/debian/postrm" "$stage/DEBIAN/"
  echo /etc/edgeclip/device.toml >"$stage/DEBIAN/conffiles"

  # Depends from the binary itself: the newest glibc symbol version it uses, and libgcc_s
  # (unwinding) when it links it.
  glibc="$("$prefix-objdump" -T "$stage/usr/bin/edgeclip-device" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
  depends="libc6 (>= $glibc)"
  if "$prefix-readelf" -d "$stage/usr/bin/edgeclip-device" | grep -q 'NEEDED.*libgcc_s\.so\.1'; then
    depends="$depends, libgcc-s1"
  fi
  size_kib="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
  sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size_kib/" \
    -e "s/@DEPENDS@/$depends/" "$CROSS_DIR/debian/control.in" >"$stage/DEBIAN/control"
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum >DEBIAN/md5sums)
  chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

  deb="$DEB_DIR/edgeclip-device_${VERSION}_$arch.deb"
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
  printf '  %s  %s bytes (installed %s KiB; Depends: %s)\n' "$deb" "$(stat -c %s "$deb")" "$size_kib" "$depends"
done
