#!/usr/bin/env python3
"""Write inputs and onnxruntime outputs of a CLIP model folder (Immich layout) for a parity
check of another runtime (edgeclip's tract-based Rust code):

    /work/pyenv/bin/python models/parity.py MODEL_DIR OUT_DIR
    e.g. models/parity.py models/clip-shapes tests/data/parity/clip-shapes

OUT_DIR/parity.json:
  {"dim": D, "image_input": "image_input.f32", "image_input_shape": [2,3,S,S],
   "image_output": "image_output.f32", "text_input": "text_input.i64", "text_input_shape": [3,77],
   "text_output": "text_output.f32", "texts": [...], ...}
All arrays are raw little-endian, row-major. The image input is two generated pictures run
through open_clip's preprocessing with the model's preprocess_cfg.json (S: its size); the text input is open_clip.tokenize(texts) (padding 0).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes as S  # noqa: E402

TEXTS = [
    "a red circle",
    "a small blue square on the left",
    "a photo of a yellow star and a purple triangle on a white background",
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    import onnxruntime as ort
    import open_clip

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    ctx = cfg["text_cfg"].get("context_length", 77)
    pp_path = os.path.join(model_dir, "visual", "preprocess_cfg.json")
    with open(pp_path) as f:
        pp = json.load(f)
    # The model's own preprocessing (size, mean, std, resize) as open_clip applies it: 224 and
    # OpenAI's mean for most towers, 256 and zero mean for MobileCLIP.
    transform = open_clip.image_transform(
        pp["size"], is_train=False, mean=pp["mean"], std=pp["std"],
        resize_mode=pp.get("resize_mode", "shortest"), interpolation=pp.get("interpolation", "bicubic"),
        fill_color=pp.get("fill_color", 0))

    # two generated pictures through open_clip's preprocessing
    imgs = []
    for seed, force in [((7, 1), [{"colour": "red", "shape": "circle"}]),
                        ((7, 2), [{"colour": "blue", "shape": "square"}, {"colour": "yellow", "shape": "star"}])]:
        rng = np.random.default_rng(seed)
        scene = S.sample_scene(rng, n_shapes=len(force), force=force, short_range=(240, 320))
        img = S.render_scene(scene, rng)
        imgs.append(transform(img).numpy())
    image = np.stack(imgs).astype(np.float32)
    text = open_clip.tokenize(TEXTS, context_length=ctx).numpy().astype(np.int64)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    vis = ort.InferenceSession(os.path.join(model_dir, "visual", "model.onnx"), so, providers=["CPUExecutionProvider"])
    txt = ort.InferenceSession(os.path.join(model_dir, "textual", "model.onnx"), so, providers=["CPUExecutionProvider"])
    image_out = vis.run(None, {vis.get_inputs()[0].name: image})[0].astype(np.float32)
    text_out = txt.run(None, {txt.get_inputs()[0].name: text})[0].astype(np.float32)
    dim = int(image_out.shape[1])
    assert text_out.shape == (len(TEXTS), dim)
    assert np.allclose(np.linalg.norm(image_out, axis=1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(text_out, axis=1), 1, atol=1e-4)

    os.makedirs(out_dir, exist_ok=True)
    image.astype("<f4").tofile(os.path.join(out_dir, "image_input.f32"))
    image_out.astype("<f4").tofile(os.path.join(out_dir, "image_output.f32"))
    text.astype("<i8").tofile(os.path.join(out_dir, "text_input.i64"))
    text_out.astype("<f4").tofile(os.path.join(out_dir, "text_output.f32"))
    meta = {
        "dim": dim,
        "image_input": "image_input.f32", "image_input_shape": list(image.shape),
        "image_output": "image_output.f32", "image_output_shape": list(image_out.shape),
        "text_input": "text_input.i64", "text_input_shape": list(text.shape),
        "text_output": "text_output.f32", "text_output_shape": list(text_out.shape),
        "texts": TEXTS,
        "onnx_inputs": {"visual": vis.get_inputs()[0].name, "textual": txt.get_inputs()[0].name},
        "onnx_outputs": {"visual": vis.get_outputs()[0].name, "textual": txt.get_outputs()[0].name},
        "text_image_cosine": (text_out @ image_out.T).round(6).tolist(),
        "produced_by": f"onnxruntime {ort.__version__}, models/parity.py",
    }
    with open(os.path.join(out_dir, "parity.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {out_dir}: dim {dim}, text x image cosine {meta['text_image_cosine']}")


if __name__ == "__main__":
    main()
