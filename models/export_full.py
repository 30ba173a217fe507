#!/usr/bin/env python3
"""Export an open_clip model in the Immich layout. By default ViT-B-32 with random initial
weights (no pretrained weights can be downloaded here), to check edgeclip's loading and speed
on a model of real size; with --pretrained, a real model for edgeclip:

    /work/pyenv/bin/python models/export_full.py [OUT_DIR]      # default models/full/ViT-B-32
    /work/pyenv/bin/python models/export_full.py --model MobileCLIP-S1 [--skip-parity]
    /work/pyenv/bin/python models/export_full.py OUT_DIR --model ViT-B-32 --pretrained CHECKPOINT

(--model: any open_clip architecture; MobileCLIP models are reparameterised first, as their
inference form requires. --pretrained: real weights, as open_clip's `create_model` takes them:
a local checkpoint file, or a pretrained tag where open_clip can download it. The text tower
is written with a dynamic sequence axis where the architecture allows it, which lets the cloud
run each query only up to its end-of-text token; see models/README.md.)

Writes config.json (open_clip's own ViT-B-32 model config), visual/model.onnx (~350 MB),
textual/model.onnx (~250 MB), visual/preprocess_cfg.json, textual/tokenizer.json,
textual/tokenizer_config.json, SHA256SUMS, then runs parity.py into OUT_DIR/parity/.
models/full/ is git-ignored. A real model exported by Immich (e.g. ViT-B-32__openai) has the
same layout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_export as E  # noqa: E402
import shapes as S  # noqa: E402

def main():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--pretrained", default=None,
                        help="weights: a checkpoint file or an open_clip pretrained tag (default: random)")
    args = parser.parse_args()
    MODEL = args.model
    out = args.out or os.path.join(HERE, "full", MODEL)
    import torch
    import open_clip

    torch.set_num_threads(2)
    torch.manual_seed(0)
    t0 = time.time()
    cfg = open_clip.get_model_config(MODEL)
    model = open_clip.create_model(MODEL, pretrained=args.pretrained)
    model.eval()
    if MODEL.startswith("MobileCLIP"):
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model)
    os.makedirs(out, exist_ok=True)
    E.write_json(os.path.join(out, "config.json"), cfg)
    E.export_towers(model, out, context_length=cfg["text_cfg"].get("context_length", 77),
                    image_size=cfg["vision_cfg"].get("image_size", 224))
    pp = dict(S.PREPROCESS_CFG)
    mcfg = open_clip.get_model_preprocess_cfg(model)
    pp.update(size=mcfg["size"] if isinstance(mcfg["size"], int) else mcfg["size"][0],
              mode=mcfg["mode"], mean=list(mcfg["mean"]), std=list(mcfg["std"]),
              interpolation=mcfg["interpolation"], resize_mode=mcfg["resize_mode"],
              fill_color=mcfg["fill_color"])
    E.write_json(os.path.join(out, "visual", "preprocess_cfg.json"), pp)
    E.write_tokenizer(os.path.join(out, "textual"))
    E.write_sha256sums(out)
    print(f"exported {MODEL} to {out} in {time.time() - t0:.0f}s:")
    for root, _, files in os.walk(out):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"  {os.path.relpath(p, out)}  {os.path.getsize(p)} bytes")
    if not args.skip_parity:
        subprocess.run([sys.executable, os.path.join(HERE, "parity.py"), out, os.path.join(out, "parity")], check=True)


if __name__ == "__main__":
    main()
