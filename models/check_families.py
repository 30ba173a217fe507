"""Check the committed family fixtures (tests/data/families/) against their reference.json:
re-runs Immich's pipeline (immich_pipeline.py) and onnxruntime on the committed files.

    python models/check_families.py [DIR] [--only vit,siglip]

Per family it checks:
  - the ONNX inputs/outputs (names, dtypes, fixed shapes) and opset are the recorded ones;
  - every text: the cleaned text (with the NLLB language code), the token ids and, for M-CLIP,
    the attention mask are identical to the recorded ones;
  - every picture: size after the resize identical; the preprocessed tensor's sums (relative
    1e-5) and sampled values (1e-4) as recorded; its sha256 is reported when it differs (PIL
    versions may differ in the last bit);
  - every embedding: cosine >= 0.9999 with the recorded one (max abs difference reported);
  - M-CLIP's image tower is byte-identical to the vit fixture's and gives its embeddings.
Ends with "N passed, N failed"; exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import immich_pipeline as ip  # noqa: E402

MIN_COSINE = 0.9999


def onnx_io(path):
    import onnx

    m = onnx.load(path)

    def io_(vs):
        out = []
        for v in vs:
            t = v.type.tensor_type
            name = onnx.TensorProto.DataType.Name(t.elem_type)
            out.append({"name": v.name, "dtype": {"FLOAT": "float32"}.get(name, name.lower()),
                        "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]})
        return out

    return io_(m.graph.input), io_(m.graph.output), [{"domain": o.domain, "version": o.version} for o in m.opset_import]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_family(folder, results):
    ref = ip.read_json(os.path.join(folder, "reference.json"))
    fam = ref["family"]

    def ok(cond, what):
        results.append((fam, what, bool(cond)))
        if not cond:
            print(f"FAIL {fam}: {what}")

    for tower in ("visual", "textual"):
        ins, outs, opset = onnx_io(os.path.join(folder, tower, "model.onnx"))
        ok(ins == ref[tower]["inputs"] and outs == ref[tower]["outputs"] and opset == ref[tower]["opset"],
           f"{tower} inputs/outputs/opset {ins} {outs}")

    pcfg = ip.read_json(os.path.join(folder, "visual", "preprocess_cfg.json"))
    ok(pcfg == ref["preprocess_cfg"], "preprocess_cfg.json")
    vis = ip.session(os.path.join(folder, "visual", "model.onnx"))
    pics_dir = os.path.normpath(os.path.join(folder, ref["pictures_dir"]))
    worst = 1.0
    for p in ref["pictures"]:
        im = ip.load_picture(os.path.join(pics_dir, p["file"]))
        x, resized = ip.preprocess(im, pcfg)
        s = ip.tensor_summary(x)
        r = p["tensor"]
        ok(resized == p["resized"], f"{p['file']} resized to {resized}")
        close = (abs(s["sum"] - r["sum"]) <= 1e-5 * max(1.0, abs(r["abs_sum"]))
                 and abs(s["abs_sum"] - r["abs_sum"]) <= 1e-5 * max(1.0, r["abs_sum"])
                 and all(a[0] == b[0] and abs(a[1] - b[1]) <= 1e-4 for a, b in zip(s["values"], r["values"])))
        ok(close, f"{p['file']} preprocessed tensor")
        if s["sha256_f32le"] != r["sha256_f32le"]:
            print(f"note {fam}: {p['file']} tensor sha256 differs (values agree: {close})")
        emb = vis.run(None, {"image": x})[0][0]
        c = ip.cosine(emb, p["embedding"])
        worst = min(worst, c)
        ok(c >= MIN_COSINE, f"{p['file']} image embedding cosine {c:.7f}")

    txt = ip.session(os.path.join(folder, "textual", "model.onnx"))
    tp = ip.TextPipeline(folder, ref["text"]["kind"])
    ok(tp.pad_id == ref["text"]["pad_id"] and tp.context_length == ref["text"]["context_length"],
       f"pad id {tp.pad_id}, context length {tp.context_length}")
    for t in ref["texts"]:
        feeds = tp.inputs(t["text"], t["language"])
        ok(tp.model_text(t["text"], t["language"]) == t["model_text"], f"cleaned text {t['model_text']!r}")
        if ref["text"]["kind"] == "mclip":
            ok(feeds["input_ids"][0].tolist() == t["input_ids"], f"input_ids of {t['text'][:30]!r}")
            ok(feeds["attention_mask"][0].tolist() == t["attention_mask"], f"attention_mask of {t['text'][:30]!r}")
        else:
            ok(feeds["text"][0].tolist() == t["input_ids"], f"token ids of {t['text'][:30]!r}")
        emb = txt.run(None, feeds)[0][0]
        c = ip.cosine(emb, t["embedding"])
        worst = min(worst, c)
        ok(c >= MIN_COSINE, f"text embedding of {t['text'][:30]!r} cosine {c:.7f}")

    if fam == "mclip":
        vit = os.path.join(os.path.dirname(folder), "vit")
        ok(sha256(os.path.join(folder, "visual", "model.onnx")) == sha256(os.path.join(vit, "visual", "model.onnx")),
           "image tower byte-identical to vit's")
        vref = ip.read_json(os.path.join(vit, "reference.json"))
        ok(all(a["embedding"] == b["embedding"] for a, b in zip(ref["pictures"], vref["pictures"])),
           "image embeddings equal vit's")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=os.path.join(os.path.dirname(HERE), "tests", "data", "families"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    results = []
    for name in sorted(os.listdir(args.dir)):
        folder = os.path.join(args.dir, name)
        if not os.path.isfile(os.path.join(folder, "reference.json")):
            continue
        if args.only and name not in args.only.split(","):
            continue
        worst = check_family(folder, results)
        n = sum(1 for r in results if r[0] == name)
        bad = sum(1 for r in results if r[0] == name and not r[2])
        print(f"{name:12s} {n - bad:3d}/{n} checks, lowest embedding cosine {worst:.8f}")
    failed = sum(1 for r in results if not r[2])
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
