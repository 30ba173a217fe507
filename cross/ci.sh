#!/usr/bin/env bash
# The ARM part of CI, called by .ci/run after the x86 build and tests:
#
#   bash cross/ci.sh
#
# 1. builds edgeclip-device for aarch64 (release) and runs the device crate's tests under
#    qemu-aarch64;
# 2. builds edgeclip-device for armv7 (profile $CROSS_ARMV7_PROFILE, default "arm-ci":
#    release at opt-level 1, a lighter build; see .cargo/config.toml);
# 3. makes the arm64 and armhf Debian packages and checks their --info and --contents;
# 4. smoke test, loopback only: Mosquitto on a free port, the x86 edgeclip-cloud, and the
#    ARM devices *as installed from the packages* (binary, /etc/edgeclip/device.toml, model
#    folder) under qemu index tests/data/shapes beside an x86 edgeclip-device; `edgeclip
#    search --json` must give the same ranking on ARM as on x86, and "a red circle" a picture
#    with a red circle (labels.json) in the top 3; the devices stop cleanly on SIGTERM;
# 5. prints the footprint of what was built (cross/footprint.sh).
#
# Uses the x86 edgeclip, edgeclip-cloud and edgeclip-device of $X86_BIN_DIR (default:
# <target dir>/release, where .ci/run's `cargo build --release --workspace` puts them),
# building them if missing.
# Every wait is bounded. The shipped binaries use profile dist (cross/build.sh); CI tests
# release builds of the same code, since dist builds (fat LTO) would not fit CI's time.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

A64=aarch64-unknown-linux-gnu
V7=armv7-unknown-linux-gnueabihf
V7_PROFILE="${CROSS_ARMV7_PROFILE:-arm-ci}"
X86_BIN_DIR="${X86_BIN_DIR:-$TARGET_DIR/release}"
PICTURES="$REPO_DIR/tests/data/shapes"
# Bounds of the smoke test's waits, in seconds (qemu runs ARM code ~5-20x slower).
INDEX_WAIT_S=300
SEARCH_TIMEOUT_S=60
STOP_WAIT_S=30

step "cross tools and Mosquitto (installed only where missing)"
ensure_cross_tools aarch64 armv7
ensure_smoke_tools

step "aarch64: edgeclip-device and its tests (release)"
# --all-targets: the binary is built with the same dependency features as the tests (their
# dev-dependencies change some), so `cargo test` below compiles nothing again.
ncargo build --locked --release --target "$A64" -p edgeclip-device --all-targets

step "aarch64: device crate tests under qemu-aarch64"
ncargo test --locked --release --target "$A64" -p edgeclip-device -- --test-threads=2

step "armv7: edgeclip-device ($V7_PROFILE)"
ncargo build --locked --profile "$V7_PROFILE" --target "$V7" -p edgeclip-device --bin edgeclip-device

step "Debian packages"
bash cross/package.sh aarch64 --profile release --no-build
bash cross/package.sh armv7 --profile "$V7_PROFILE" --no-build
VERSION="$(awk -F'"' '/^\[workspace.package\]/{w=1} w && /^version *=/{print $2; exit}' Cargo.toml)"

# check_deb ARCH ELF_MACHINE: asserts the package's metadata and file list.
check_deb() {
  local arch="$1" machine="$2" deb="$TARGET_DIR/debian/edgeclip-device_${VERSION}_$1.deb"
  local info contents f
  info="$(dpkg-deb --info "$deb")"
  contents="$(dpkg-deb --contents "$deb")"
  for f in "Package: edgeclip-device" "Version: $VERSION" "Architecture: $arch" "Depends: libc6 (>= 2." \
    " postinst " " prerm " " postrm " " conffiles " " md5sums "; do
    grep -qF -- "$f" <<<"$info" || die "$deb: --info lacks '$f'"
  done
  [ "$(dpkg-deb --info "$deb" conffiles)" = /etc/edgeclip/device.toml ] || die "$deb: conffiles is not /etc/edgeclip/device.toml"
  for f in "-rwxr-xr-x root/root .* ./usr/bin/edgeclip-device$" \
    "-rw-r----- root/root .* ./etc/edgeclip/device.toml$" \
    "-rw-r--r-- root/root .* ./usr/lib/systemd/system/edgeclip-device.service$" \
    " ./usr/share/edgeclip/models/clip-shapes/config.json$" \
    " ./usr/share/edgeclip/models/clip-shapes/SHA256SUMS$" \
    " ./usr/share/edgeclip/models/clip-shapes/visual/model.onnx$" \
    " ./usr/share/edgeclip/models/clip-shapes/visual/preprocess_cfg.json$" \
    " ./usr/share/doc/edgeclip-device/copyright$"; do
    grep -qE -- "$f" <<<"$contents" || die "$deb: --contents lacks '$f'"
  done
  # The device install carries no text tower and no tokenizer.
  if grep -qE 'textual|tokenizer|quality\.json' <<<"$contents"; then die "$deb: holds cloud-side files"; fi
  # The right machine code, stripped.
  local x; x="$(mktemp -d)"
  dpkg-deb -x "$deb" "$x"
  readelf -h "$x/usr/bin/edgeclip-device" | grep -q "Machine: *$machine" || die "$deb: the binary is not $machine"
  if readelf -S "$x/usr/bin/edgeclip-device" | grep -q '\.symtab'; then die "$deb: the binary is not stripped"; fi
  for f in User=edgeclip StateDirectory=edgeclip Restart=on-failure ProtectSystem=strict ProtectHome=read-only \
    ReadWritePaths=/var/lib/edgeclip NoNewPrivileges=yes PrivateTmp=yes SystemCallFilter=~@privileged \
    MemoryHigh=75% TasksMax=256 LimitNOFILE=4096 "ExecStart=/usr/bin/edgeclip-device --config /etc/edgeclip/device.toml"; do
    grep -qxF -- "$f" "$x/usr/lib/systemd/system/edgeclip-device.service" || die "$deb: the unit lacks $f"
  done
  # Priority is lowered per encoder thread by the device, never for the whole service.
  if grep -qE '^(Nice|IOSchedulingClass|CPUSchedulingPolicy)=' "$x/usr/lib/systemd/system/edgeclip-device.service"; then
    die "$deb: the unit lowers the whole service's priority"
  fi
  grep -q '^state_dir = "/var/lib/edgeclip"$' "$x/etc/edgeclip/device.toml" || die "$deb: device.toml: state_dir"
  # systemd's own check of the unit, in the package's tree beside this machine's units: any
  # word from it (unknown key, key in the wrong section, missing binary) fails.
  local verified="unit not verified: no systemd-analyze here"
  if command -v systemd-analyze >/dev/null 2>&1; then
    cp -a /lib/systemd/system/. "$x/usr/lib/systemd/system/" 2>/dev/null || true
    cp "$CROSS_DIR/debian/edgeclip-device.service" "$x/usr/lib/systemd/system/"
    local said; said="$(systemd-analyze verify --root="$x" edgeclip-device.service 2>&1)" || die "$deb: systemd-analyze verify: $said"
    [ -z "$said" ] || die "$deb: systemd-analyze verify: $said"
    verified="unit verified, $(systemd-analyze security --offline=true --root="$x" edgeclip-device.service 2>/dev/null | grep -o 'exposure level.*' || echo 'exposure not rated')"
  fi
  rm -rf "$x"
  printf '  %s: info, contents, ELF %s, config checked; %s\n' "$(basename "$deb")" "$machine" "$verified"
}
step "Debian packages: dpkg-deb --info and --contents"
check_deb arm64 AArch64
check_deb armhf ARM

step "x86 edgeclip, edgeclip-cloud and edgeclip-device (from $X86_BIN_DIR)"
if [ ! -x "$X86_BIN_DIR/edgeclip" ] || [ ! -x "$X86_BIN_DIR/edgeclip-cloud" ] || [ ! -x "$X86_BIN_DIR/edgeclip-device" ]; then
  X86_BIN_DIR="$TARGET_DIR/release"
  ncargo build --locked --release -p edgeclip --bin edgeclip
  ncargo build --locked --release -p edgeclip-cloud --bin edgeclip-cloud
  ncargo build --locked --release -p edgeclip-device --bin edgeclip-device
fi
EDGECLIP="$X86_BIN_DIR/edgeclip"

step "smoke test: Mosquitto, x86 cloud, aarch64 and armv7 devices from the packages under qemu, x86 device as reference"
work="$(mktemp -d)"
pids=()
# On exit: the logs if something failed, then every process started here is stopped.
cleanup() {
  local rc=$? p f
  if [ "$rc" != 0 ]; then
    for f in "$work"/*.log; do
      [ -f "$f" ] && { echo "---- $(basename "$f") (last 40 lines)"; tail -n 40 "$f"; }
    done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

port="$(free_port)"
url="mqtt://127.0.0.1:$port"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stdout\n' "$port" >"$work/mosquitto.conf"
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
"$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
wait_until 10 "Mosquitto on 127.0.0.1:$port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"

printf 'worker_id = "ci"\n[model]\ndir = "%s"\n[broker]\nurl = "%s"\n' "$REPO_DIR/models/clip-shapes" "$url" >"$work/cloud.toml"
NO_COLOR=1 "$X86_BIN_DIR/edgeclip-cloud" --config "$work/cloud.toml" >"$work/cloud.log" 2>&1 &
pids+=($!)

# start_device SHORT DEB_ARCH ID: the packaged binary, config and model, under qemu. Only
# what differs on this machine is overridden, through the environment.
declare -A device_pid
start_device() {
  local short="$1" arch="$2" id="$3" root="$work/root-$2"
  dpkg-deb -x "$TARGET_DIR/debian/edgeclip-device_${VERSION}_$arch.deb" "$root"
  # shellcheck disable=SC2046
  NO_COLOR=1 EDGECLIP_DEVICE_ID="$id" EDGECLIP_FOLDERS="$PICTURES" EDGECLIP_STATE_DIR="$work/state-$id" \
    EDGECLIP_MODEL__DIR="$root/usr/share/edgeclip/models/clip-shapes" EDGECLIP_BROKER__URL="$url" \
    $(qemu_of "$short") "$root/usr/bin/edgeclip-device" --config "$root/etc/edgeclip/device.toml" \
    >"$work/device-$id.log" 2>&1 &
  device_pid[$id]=$!
  pids+=($!)
}
# The reference: the x86 edgeclip-device on the same pictures, config and packaged model.
start_reference() {
  NO_COLOR=1 EDGECLIP_DEVICE_ID=ci-x86 EDGECLIP_FOLDERS="$PICTURES" EDGECLIP_STATE_DIR="$work/state-ci-x86" \
    EDGECLIP_MODEL__DIR="$work/root-arm64/usr/share/edgeclip/models/clip-shapes" EDGECLIP_BROKER__URL="$url" \
    "$X86_BIN_DIR/edgeclip-device" --config "$work/root-arm64/etc/edgeclip/device.toml" >"$work/device-ci-x86.log" 2>&1 &
  device_pid[ci-x86]=$!
  pids+=($!)
}
expected="$(find "$PICTURES" -maxdepth 1 -type f ! -name '*.json' | wc -l)"
status_done() { # ID: idle with every picture indexed
  "$EDGECLIP" status --json --broker "$url" --device "$1" --timeout 5 |
    jq -e --argjson n "$expected" '.state == "idle" and .indexed == $n' >/dev/null
}
search_json() { # ID TEXT: the device's JSON answer into $work/search-ID-TEXT.json
  "$EDGECLIP" search --json --broker "$url" --device "$1" --timeout "$SEARCH_TIMEOUT_S" -k 5 "$2" >"$work/search-$1-${2// /_}.json"
}

started=$(date +%s)
start_device aarch64 arm64 ci-aarch64
start_device armv7 armhf ci-armv7
start_reference
for id in ci-aarch64 ci-armv7 ci-x86; do
  wait_until "$INDEX_WAIT_S" "$id to index $expected pictures (status idle)" status_done "$id"
  echo "  $id: $expected pictures indexed after $(($(date +%s) - started)) s"
done
for text in "a red circle" "a yellow star"; do
  for id in ci-aarch64 ci-armv7 ci-x86; do search_json "$id" "$text"; done
done
# The ARM devices must rank exactly as the x86 one does (scores within 2e-3, the same order up
# to near-ties), and "a red circle" must bring a picture with a red circle (labels.json) into
# the top 3. Whether it is first is the model's quality (models/README.md, its bars), which
# the whole-system tests judge; here, ARM and x86 must agree.
python3 - "$PICTURES/labels.json" "$work" <<'EOF'
import json, os, sys
labels, work = json.load(open(sys.argv[1])), sys.argv[2]
def hits(dev, text):
    answer = json.load(open(os.path.join(work, f"search-{dev}-{text.replace(' ', '_')}.json")))
    h = answer.get("hits") or sys.exit(f"{dev}: no hits for {text!r}: {answer}")
    return [(os.path.basename(x["path"]), x["score"]) for x in h]
for text in ("a red circle", "a yellow star"):
    ref = hits("ci-x86", text)
    print(f"  {'ci-x86':10} {text!r}: " + ", ".join(f"{n} {s:.4f}" for n, s in ref))
    for dev in ("ci-aarch64", "ci-armv7"):
        got = hits(dev, text)
        print(f"  {dev:10} {text!r}: " + ", ".join(f"{n} {s:.4f}" for n, s in got))
        if len(got) != len(ref):
            sys.exit(f"{dev}: {len(got)} hits for {text!r}, x86 has {len(ref)}")
        for i, ((gn, gs), (rn, rs)) in enumerate(zip(got, ref)):
            if abs(gs - rs) > 2e-3:
                sys.exit(f"{dev}: hit {i + 1} for {text!r} scores {gs}, x86 {rs}")
            tie = any(n == gn and abs(rs - s) < 1e-4 for n, s in ref)
            if gn != rn and not tie:
                sys.exit(f"{dev}: hit {i + 1} for {text!r} is {gn}, x86 has {rn}: {got} vs {ref}")
red = [i for i, (n, _) in enumerate(hits("ci-x86", "a red circle")[:3])
       if any(s["colour"] == "red" and s["shape"] == "circle" for s in labels[n]["shapes"])]
if not red:
    sys.exit("no picture with a red circle among the top 3 for 'a red circle'")
print(f"  'a red circle': first picture with a red circle at #{red[0] + 1}; the ARM rankings equal x86's")
EOF

# A clean stop on SIGTERM, as systemd sends it.
for id in ci-aarch64 ci-armv7 ci-x86; do
  kill -TERM "${device_pid[$id]}"
  deadline=$(($(date +%s) + STOP_WAIT_S))
  while kill -0 "${device_pid[$id]}" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$id did not stop within ${STOP_WAIT_S}s of SIGTERM"
    sleep 0.5
  done
  wait "${device_pid[$id]}" || die "$id exited with status $? after SIGTERM"
  echo "  $id: stopped cleanly on SIGTERM"
done

step "footprint (CI's release builds; the shipped dist numbers: bash cross/footprint.sh)"
bash cross/footprint.sh --profile release --armv7-profile "$V7_PROFILE" --no-build

step "cross CI done in $(($(date +%s) - _cross_start)) s"
