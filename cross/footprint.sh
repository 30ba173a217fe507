#!/usr/bin/env bash
# Prints what the device install weighs next to a full-CLIP install, and writes it to
# $CARGO_TARGET_DIR (default target/)/footprint.json.
#
#   bash cross/footprint.sh [--profile dist|release|PROFILE] [--armv7-profile PROFILE] [--no-build]
#
# - stripped edgeclip-device (and edgeclip-cloud, where built) per ARM target;
# - device install = edgeclip-device + config.json + SHA256SUMS + visual/ (what the .deb
#   ships), full-CLIP install = the same + textual/ (text tower and tokenizer files) + the
#   code that runs them (the stripped edgeclip-cloud of the same target); in bytes and as
#   the fraction the split saves;
# - for models/clip-shapes and for ViT-B-32: models/full/ViT-B-32 if exported
#   (models/export_full.py), else an estimate from ViT-B-32's parameter counts, labelled so.
# Default profile dist (the shipped binaries); missing binaries are built (cross/build.sh)
# unless --no-build, which reports only what is there.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

profile=dist v7_profile="" build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?}"; shift ;;
    --armv7-profile) v7_profile="${2:?}"; shift ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see: bash cross/footprint.sh --help)" ;;
  esac
  shift
done
v7_profile="${v7_profile:-$profile}"
profile_of() { if [ "$1" = armv7 ]; then echo "$v7_profile"; else echo "$profile"; fi; }

if [ "$build" = 1 ]; then
  for t in aarch64 armv7; do
    d="$(bin_dir_of "$t" "$(profile_of "$t")")"
    if [ ! -x "$d/edgeclip-device" ] || [ ! -x "$d/edgeclip-cloud" ]; then
      bash "$CROSS_DIR/build.sh" "$t" --profile "$(profile_of "$t")"
    fi
  done
fi

# Stripped copies (dist binaries are stripped already; this makes other profiles comparable).
out="$TARGET_DIR/footprint"
mkdir -p "$out"
bins_json=""
for t in aarch64 armv7; do
  for b in edgeclip-device edgeclip-cloud; do
    src="$(bin_dir_of "$t" "$(profile_of "$t")")/$b"
    [ -x "$src" ] || continue
    "$(gnu_prefix_of "$t")-strip" --strip-all -o "$out/$b-$t" "$src"
    bins_json+="\"$b-$t\": {\"path\": \"$src\", \"profile\": \"$(profile_of "$t")\", \"bytes\": $(stat -c %s "$out/$b-$t")},"
  done
done

python3 - "$REPO_DIR" "$TARGET_DIR" "{${bins_json%,}}" <<'EOF'
import json, os, sys

repo, target_dir, bins = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
MB = 1e6

# ViT-B-32 as open_clip builds it (open_clip.create_model("ViT-B-32")): parameters of the
# image tower and of the text side (transformer, token and positional embeddings, ln_final,
# text_projection), counted with open_clip 2.x. fp32 ONNX files hold 4 bytes per parameter
# plus a small graph; the tokenizer files are the same CLIP BPE as clip-shapes'.
VIT_B_32_PARAMS = {"visual": 87_849_216, "textual": 63_428_096}


def files_of(model_dir):
    """Relative path -> size of the files of a model folder that either side reads."""
    sizes = {}
    for root, _, names in os.walk(model_dir):
        for n in names:
            p = os.path.join(root, n)
            rel = os.path.relpath(p, model_dir)
            if rel in ("config.json", "SHA256SUMS") or rel.startswith(("visual/", "textual/")):
                sizes[rel] = os.path.getsize(p)
    return sizes


def model_sets():
    shapes = os.path.join(repo, "models/clip-shapes")
    yield "clip-shapes", "measured", files_of(shapes)
    full = os.path.join(repo, "models/full/ViT-B-32")
    if os.path.isfile(os.path.join(full, "visual/model.onnx")) and os.path.isfile(os.path.join(full, "textual/model.onnx")):
        yield "ViT-B-32", "measured (models/full/ViT-B-32)", files_of(full)
    else:
        est = {k: v for k, v in files_of(shapes).items() if not k.endswith("model.onnx")}
        est["visual/model.onnx"] = 4 * VIT_B_32_PARAMS["visual"]
        est["textual/model.onnx"] = 4 * VIT_B_32_PARAMS["textual"]
        yield "ViT-B-32", "ESTIMATE: models/full/ViT-B-32 is absent (make it with models/export_full.py); fp32 towers from parameter counts", est


def total(sizes, pred):
    return sum(v for k, v in sizes.items() if pred(k))


report = {"binaries": bins, "models": {}}
print("Stripped binaries:")
for name, b in sorted(bins.items()):
    print(f"  {name:26} {b['bytes']:>12,} bytes  {b['bytes'] / MB:6.2f} MB  (profile {b['profile']})")
if not bins:
    print("  (none built: bash cross/build.sh)")

for model, how, sizes in model_sets():
    device_files = total(sizes, lambda k: not k.startswith("textual/"))
    text_files = total(sizes, lambda k: k.startswith("textual/"))
    tokenizer = total(sizes, lambda k: k.startswith("textual/") and "tokenizer" in k)
    entry = {"how": how, "files": sizes, "device_model_bytes": device_files,
             "full_model_bytes": device_files + text_files, "tokenizer_bytes": tokenizer,
             "model_fraction_saved": round(text_files / (device_files + text_files), 4), "installs": {}}
    print(f"\n{model} [{how}]")
    print(f"  model files, device (config.json, SHA256SUMS, visual/): {device_files:>13,} bytes")
    print(f"  model files, full CLIP (+ textual/, tokenizer {tokenizer:,}): {device_files + text_files:>13,} bytes"
          f"  -> device saves {entry['model_fraction_saved']:.1%}")
    for arch in ("aarch64", "armv7"):
        dev = bins.get(f"edgeclip-device-{arch}")
        cloud = bins.get(f"edgeclip-cloud-{arch}")
        if not dev:
            continue
        device_install = dev["bytes"] + device_files
        line = {"device_install_bytes": device_install}
        msg = f"  {arch:8} install: device {device_install:>13,} bytes"
        if cloud:
            full_install = dev["bytes"] + cloud["bytes"] + device_files + text_files
            line.update(full_install_bytes=full_install, fraction_saved=round(1 - device_install / full_install, 4))
            msg += f" | full CLIP {full_install:>13,} bytes | saved {line['fraction_saved']:.1%}"
        else:
            msg += " | full CLIP: edgeclip-cloud not built for this target (bash cross/build.sh)"
        entry["installs"][arch] = line
        print(msg)
    report["models"][model] = entry

debs = os.path.join(target_dir, "debian")
if os.path.isdir(debs):
    report["debs"] = {f: os.path.getsize(os.path.join(debs, f)) for f in sorted(os.listdir(debs)) if f.endswith(".deb")}
    if report["debs"]:
        print("\nDebian packages:")
        for f, s in report["debs"].items():
            print(f"  {f:40} {s:>12,} bytes")

goal = bins.get("edgeclip-device-aarch64")
if goal and goal["profile"] != "dist":
    print(f"\n(the <= 8 MiB goal is for the shipped profile dist; this is {goal['profile']})")
elif goal:
    ok = goal["bytes"] <= 8 * 1024 * 1024
    report["aarch64_device_within_8_MiB"] = ok
    print(f"\naarch64 edgeclip-device: {goal['bytes'] / 1024 / 1024:.2f} MiB, goal <= 8 MiB: {'met' if ok else 'NOT met'} (profile {goal['profile']})")
path = os.path.join(target_dir, "footprint.json")
with open(path, "w") as f:
    json.dump(report, f, indent=2)
print(f"written: {path}")
EOF
