#!/usr/bin/env python3
"""Make the committed pictures and fixtures that edgeclip's tests and demo use:

    /work/pyenv/bin/python models/make_fixtures.py          # all of them (~1 min)
    /work/pyenv/bin/python models/make_fixtures.py shapes preprocess samples tokenizer

  tests/data/shapes/            16 small generated pictures (JPEG 320x240) + labels.json
  tests/data/preprocess/        3 pictures (JPEG, RGBA PNG, JPEG with EXIF Orientation=6), each
                                with its open_clip-preprocessed tensor NAME.f32 + index.json
  models/samples/               240 demo scenes IMG_0001.jpg.. + labels.json (every colour+shape
                                pair in >= 7 pictures)
  tests/data/tokenizer_parity.json  open_clip.tokenize vs tokenizer.json (Python `tokenizers`)
  tests/data/text-towers/       two tiny random text towers (width 4, 49,408 tokens) for the
                                cloud's load paths: fixed.onnx, fixed at 77 tokens as other
                                exporters write it, and looks-ahead.onnx, with a dynamic
                                sequence axis but no causal mask, so cutting a text changes it

Everything is deterministic (fixed seeds).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter

import numpy as np
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import shapes as S  # noqa: E402
import clip_export as E  # noqa: E402

SEED = 20240601


def write_jpeg(path, img, quality):
    img.save(path, "JPEG", quality=quality)


# ---------------------------------------------------------------------------------------------
# tests/data/shapes

SHAPE_FIXTURES = [
    # name, background, [(colour, shape, size, position), ...]
    ("red_circle", "white", [("red", "circle", "large", "centre")]),
    ("blue_square", "yellow", [("blue", "square", "large", "centre")]),
    ("green_triangle", "white", [("green", "triangle", "large", "centre")]),
    ("yellow_star", "blue", [("yellow", "star", "large", "centre")]),
    ("orange_circle", "black", [("orange", "circle", "large", "centre")]),
    ("purple_square", "white", [("purple", "square", "large", "centre")]),
    ("white_triangle", "black", [("white", "triangle", "large", "centre")]),
    ("black_star", "yellow", [("black", "star", "large", "centre")]),
    ("red_square", "white", [("red", "square", "large", "centre")]),
    ("blue_circle", "white", [("blue", "circle", "large", "centre")]),
    ("small_red_circle_left", "green", [("red", "circle", "small", "left")]),
    ("large_blue_star_right", "white", [("blue", "star", "large", "right")]),
    ("green_square_top", "purple", [("green", "square", "large", "top")]),
    ("yellow_triangle_bottom", "black", [("yellow", "triangle", "large", "bottom")]),
    ("red_circle_left_blue_square_right", "white",
     [("red", "circle", "large", "left"), ("blue", "square", "large", "right")]),
    ("yellow_star_top_purple_triangle_bottom", "green",
     [("yellow", "star", "large", "top"), ("purple", "triangle", "large", "bottom")]),
]


def fixed_scene(rng, background, shapes, width, height):
    placed = []
    for colour, shape, size, position in shapes:
        lo, hi = S.SIZE_FRAC[size]
        fx, fy = S.POS_XY[position]
        placed.append({"colour": colour, "shape": shape, "size": size, "position": position,
                       "d": (lo + hi) / 2, "fx": fx, "fy": fy, "rot": 0.0})
    return {"width": width, "height": height, "background": background, "shapes": placed}


def make_shapes_fixtures():
    out = os.path.join(ROOT, "tests", "data", "shapes")
    os.makedirs(out, exist_ok=True)
    labels = {}
    for i, (name, bg, shapes) in enumerate(SHAPE_FIXTURES):
        rng = np.random.default_rng((SEED, 1, i))
        scene = fixed_scene(rng, bg, shapes, 320, 240)
        img = S.render_scene(scene, rng, noise=(1.0, 2.0), blur=(0.0, 0.3))
        fname = f"{name}.jpg"
        write_jpeg(os.path.join(out, fname), img, 90)
        labels[fname] = S.scene_label(scene)
    E.write_json(os.path.join(out, "labels.json"), labels)
    print(f"tests/data/shapes: {len(labels)} pictures, {E.dir_size(out)} bytes")


# ---------------------------------------------------------------------------------------------
# tests/data/preprocess

def open_clip_reference(img: Image.Image) -> np.ndarray:
    """The reference pipeline: EXIF transpose, convert to RGB (alpha dropped, not composited),
    then open_clip's own eval preprocess. Returns float32 [3,224,224]."""
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    t = S.clip_transform()(img)
    return t.numpy().astype(np.float32)


def make_preprocess_fixtures():
    out = os.path.join(ROOT, "tests", "data", "preprocess")
    os.makedirs(out, exist_ok=True)
    entries = []

    # 1. 300x200 JPEG (landscape 3:2): resize 224 high -> 336x224, crop 56 px each side
    rng = np.random.default_rng((SEED, 2, 1))
    scene = fixed_scene(rng, "blue", [("yellow", "star", "large", "left"), ("red", "circle", "small", "right")], 300, 200)
    img = S.render_scene(scene, rng, noise=(2.0, 2.0))
    write_jpeg(os.path.join(out, "landscape_300x200.jpg"), img, 90)
    entries.append(("landscape_300x200.jpg", "landscape_300x200", None))

    # 2. 180x260 PNG with alpha (upscaled: 224x323 -> crop rows 50..273)
    rng = np.random.default_rng((SEED, 2, 2))
    scene = fixed_scene(rng, "green", [("purple", "square", "large", "centre")], 180, 260)
    rgb = S.render_scene(scene, rng, noise=(2.0, 2.0))
    yy, xx = np.mgrid[0:260, 0:180]
    alpha = np.full((260, 180), 255, np.uint8)
    alpha[:, :30] = (xx[:, :30] * 255 // 30).astype(np.uint8)  # left fade-in
    alpha[200:, 150:] = 0                                       # transparent corner
    rgba = np.dstack([np.asarray(rgb), alpha])
    Image.fromarray(rgba, "RGBA").save(os.path.join(out, "alpha_180x260.png"))
    entries.append(("alpha_180x260.png", "alpha_180x260", None))

    # 3. JPEG stored 320x240 with EXIF Orientation=6 (display: rotate 90 deg clockwise -> 240x320)
    rng = np.random.default_rng((SEED, 2, 3))
    scene = fixed_scene(rng, "white", [("red", "triangle", "large", "top"), ("black", "circle", "small", "bottom")], 240, 320)
    upright = S.render_scene(scene, rng, noise=(2.0, 2.0))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 90 deg counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(os.path.join(out, "exif_rotated_320x240.jpg"), "JPEG", quality=90, exif=exif.tobytes())
    entries.append(("exif_rotated_320x240.jpg", "exif_rotated_320x240", 6))

    index = {
        "reference": ("PIL.Image.open -> PIL.ImageOps.exif_transpose -> convert('RGB') if not RGB "
                      "(alpha dropped, not composited) -> open_clip.image_transform(224, is_train=False): "
                      "Resize(224, bicubic, antialias; shortest side to 224, other side int(224*long/short)) -> "
                      "CenterCrop(224) (offset round((side-224)/2)) -> ToTensor -> Normalize(mean, std)"),
        "mean": list(S.MEAN), "std": list(S.STD),
        "tensor_layout": "float32 little-endian, [3,224,224], channel-major (CHW), RGB",
        "pictures": [],
    }
    for fname, stem, orient in entries:
        with Image.open(os.path.join(out, fname)) as im:
            im.load()
            stored_size = list(im.size)
            mode = im.mode
            orientation = im.getexif().get(0x0112, 1)
            t = open_clip_reference(im)
            # note how far open_clip's raw path (no exif transpose, RGBA resized premultiplied) is
            raw = S.clip_transform()(im).numpy()
        assert t.shape == (3, 224, 224)
        t.astype("<f4").tofile(os.path.join(out, f"{stem}.f32"))
        e = {"file": fname, "tensor": f"{stem}.f32", "shape": [3, 224, 224],
             "stored_size": stored_size, "mode": mode, "exif_orientation": orientation}
        with Image.open(os.path.join(out, fname)) as im:
            e["display_size"] = list(ImageOps.exif_transpose(im).size)
        if mode == "RGBA":
            e["note"] = ("open_clip on the raw RGBA image resizes with premultiplied alpha and drops alpha only "
                         f"after the resize (max abs diff to this reference {float(np.abs(raw - t).max()):.3f}); "
                         "the reference drops alpha first, as Immich does")
        if orientation != 1:
            e["note"] = "tensor is of the upright (EXIF-transposed) picture"
        index["pictures"].append(e)
    E.write_json(os.path.join(out, "index.json"), index)
    print(f"tests/data/preprocess: {len(entries)} pictures, {E.dir_size(out)} bytes")


# ---------------------------------------------------------------------------------------------
# models/samples

def make_samples(n=240):
    out = os.path.join(HERE, "samples")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith(".jpg"):
            os.remove(os.path.join(out, f))
    pairs = [(c, k) for c in S.COLOURS for k in S.KINDS]
    order = np.random.default_rng((SEED, 3)).permutation(n)
    labels = {}
    aspects = [(4, 3), (3, 2), (1, 1), (3, 4), (2, 3), (16, 9)]
    for j in range(n):
        i = int(order[j])
        c, k = pairs[i % len(pairs)]
        rng = np.random.default_rng((SEED, 4, j))
        scene = S.sample_scene(rng, force=[{"colour": c, "shape": k}], short_range=(240, 330), aspects=aspects)
        img = S.render_scene(scene, rng, noise=(0.8, 2.0))
        fname = f"IMG_{j + 1:04d}.jpg"
        write_jpeg(os.path.join(out, fname), img, 85)
        labels[fname] = S.scene_label(scene)
    E.write_json(os.path.join(out, "labels.json"), labels)
    cnt = Counter((s["colour"], s["shape"]) for l in labels.values() for s in l["shapes"])
    print(f"models/samples: {n} pictures, {E.dir_size(out)} bytes, per colour+shape pair "
          f"min {min(cnt[p] for p in pairs)} max {max(cnt.values())}")


# ---------------------------------------------------------------------------------------------
# tests/data/tokenizer_parity.json

ENGLISH = [
    "dog playing in the snow", "sunset over the beach", "birthday cake with candles", "my cat sleeping on the sofa",
    "mountains with snow", "a red car parked on the street", "kids at the playground", "wedding photos",
    "christmas tree", "fireworks at night", "a plate of spaghetti", "people hiking in the forest",
    "old town square in the rain", "a boat on a lake", "flowers in the garden", "selfie with friends",
    "the eiffel tower", "receipt from the supermarket", "screenshot of a text message", "a black and white photo",
    "baby's first steps", "skiing holiday", "lunch at the office", "a horse in a field", "city skyline at dusk",
    "document with a signature", "family dinner", "surfing big waves", "coffee and croissant", "rainbow over the hills",
    "bicycle leaning against a wall", "graduation ceremony", "autumn leaves", "a bridge over a river",
    "lights in the city at night", "halloween costumes", "soccer match", "a portrait of my grandmother",
    "picnic in the park", "the view from the airplane window", "whiteboard with notes", "a yellow taxi",
    "cherry blossoms", "frozen waterfall", "camping tent under the stars", "street food market",
    "concert crowd", "puppy with a ball", "snowman", "the northern lights",
]
PUNCT = [
    "hello, world!", "what's this?", "rock'n'roll", "don't stop", "It's my dog's toy", "they're here; we'll go",
    "I'd say I'm fine, you've seen", "(parentheses) [brackets] {braces}", "a/b\\c", "e-mail", "...", "!!!",
    "#hashtag @mention", "50% off", "C++ code", "x=y+z", "semi;colon:colon", "question??", "quote \"this\"",
    "under_score", "tilde~caret^", "a.b.c", "it's-a-me", "'single quotes'", "dash — em dash – en dash",
]
DIGITS = ["2023 holiday", "3.14159", "1,000,000", "route 66", "007", "IMG_0042.jpg", "12:30 pm", "10x zoom",
          "phone 555-1234", "year 1999", "4k video", "b2b"]
ACCENTS = ["café", "naïve", "Müller", "São Paulo", "crème brûlée", "Ångström", "façade", "piñata", "Zürich",
           "Łódź", "straße", "jalapeño", "smörgåsbord", "Ærø", "cafe\u0301 (decomposed accent)", "Dvořák", "İstanbul"]
CJK = ["東京タワー", "北京", "강아지", "日本の桜", "猫", "我的狗", "ラーメン", "서울의 밤", "中文 and English", "富士山の写真"]
EMOJI = ["🙂", "dog 🐶", "❤️ love", "🇫🇷 flag", "👍🏽", "family 👨‍👩‍👧", "🎂🎉", "sun ☀ rain ☔", "pizza🍕party",
         "★ star symbol"]
SPACES = ["a   red    circle", "  leading spaces", "trailing   ", "tab\tseparated", "new\nline", "a\u00a0non-breaking space",
          "  many   spaces   everywhere  ", "\ttabs\tand\nnewlines\r\n"]
CASE = ["A RED CIRCLE", "iPhone Photo", "McDonald's", "NASA launch", "CamelCaseWords", "ÉCOLE", "MiXeD cAsE"]
KNOWN_DIFF = [
    ("html_entity", "fish &amp; chips"), ("html_entity", "&lt;b&gt;bold&lt;/b&gt;"), ("html_entity", "it&#39;s"),
    ("html_entity", "a &amp;amp; b"), ("html_entity", "caf&eacute;"),
    ("ftfy_mojibake", "cafÃ©"), ("ftfy_mojibake", "Ã¼ber cool"), ("ftfy_mojibake", "â€œquotedâ€\x9d"),
    ("ftfy_curly_quotes", "don’t stop"), ("ftfy_curly_quotes", "“hello”"),
    ("ftfy_ligature", "ﬁsh and ﬂowers"), ("ftfy_fullwidth", "ＡＢＣ１２３"),
    ("special_token_text", "<|endoftext|>"), ("special_token_text", "a <|startoftext|> b"),
    ("special_token_text", "<end_of_text>"), ("special_token_text", "cat <start_of_text> dog"),
    # Python's str.lower() applies the Greek final-sigma rule (word-final Σ -> ς);
    # the tokenizers Lowercase normalizer maps every Σ to σ
    ("lowercase_final_sigma", "ΣΟΦΟΣ (greek)"),
]


def long_texts():
    rng = np.random.default_rng((SEED, 5))
    words = "the quick brown fox jumps over a lazy dog near river bank under bright summer sky".split()
    out = [" ".join(words[rng.integers(len(words))] for _ in range(n)) for n in (76, 80, 120, 200)]
    out.append("a red circle " * 30)
    out.append(", ".join(["punctuation"] * 50))
    out.append("x" * 500)
    out.append("🙂" * 60)
    return out


def tokenizer_corpus():
    cases = []
    rng = np.random.default_rng((SEED, 6))
    for c in S.COLOURS:
        for k in S.KINDS:
            cases.append(("shapes_query", S.query_text(c, k)))
    for p in S.POSITIONS:
        cases.append(("shapes_query", S.query_text("red", "circle", p)))
    for _ in range(40):
        sc = S.sample_scene(rng)
        sh, bg = S.encode_label(S.scene_label(sc))
        cases.append(("shapes_caption", S.make_caption(rng, sh, bg)[0]))
    cases += [("english", t) for t in ENGLISH]
    cases += [("punctuation", t) for t in PUNCT]
    cases += [("digits", t) for t in DIGITS]
    cases += [("accents", t) for t in ACCENTS]
    cases += [("cjk", t) for t in CJK]
    cases += [("emoji", t) for t in EMOJI]
    cases += [("whitespace", t) for t in SPACES]
    cases += [("case", t) for t in CASE]
    cases += [("long", t) for t in long_texts()]
    cases += [("empty", ""), ("empty", "   ")]
    cases += KNOWN_DIFF
    return cases


RULE = ("ids = open_clip.tokenize(text)[0]: open_clip cleans the text (ftfy.fix_text, html.unescape twice, strip, "
        "collapse whitespace, lowercase), BPE-encodes it, builds [49406 (SOT)] + tokens + [49407 (EOT)] and, if that is "
        "longer than 77, keeps the first 77 and overwrites the last with EOT, i.e. [SOT] + tokens[:75] + [EOT]; the "
        "rest is padded with 0. hf_ids = tokenizers.Tokenizer.from_file('textual/tokenizer.json').encode(text).ids "
        "(which is [SOT] + tokens + [EOT], no truncation/padding configured in the file), rebuilt the same way: "
        "[SOT] + ids[1:-1][:75] + [EOT], padded with 0 to 77. Padding with 0 or with 49407 gives identical "
        "embeddings (the text tower pools at the first argmax = first EOT under a causal mask).")


def make_tokenizer_parity():
    import open_clip
    from tokenizers import Tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        E.write_tokenizer(tmp)
        tok = Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
    out_cases = []
    diff = Counter()
    total = Counter()
    for cat, text in tokenizer_corpus():
        ids = open_clip.tokenize(text)[0].tolist()
        enc = tok.encode(text).ids
        row = [enc[0]] + enc[1:-1][:75] + [enc[-1]]
        hf = row + [0] * (77 - len(row))
        same = ids == hf
        total[cat] += 1
        if not same:
            diff[cat] += 1
        out_cases.append({"text": text, "category": cat, "ids": ids, "hf_ids": hf, "same": same})
    known = {c for c, _ in KNOWN_DIFF}
    summary = {
        "cases": len(out_cases),
        "differ": sum(diff.values()),
        "differ_by_category": dict(sorted(diff.items())),
        "cases_by_category": dict(sorted(total.items())),
        "unexpected_differences": [c["text"] for c in out_cases if not c["same"] and c["category"] not in known],
        "known_categories_that_matched": [c["text"] for c in out_cases if c["same"] and c["category"] in known],
    }
    path = os.path.join(ROOT, "tests", "data", "tokenizer_parity.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f'"rule": {json.dumps(RULE, ensure_ascii=False)},\n')
        f.write(f'"summary": {json.dumps(summary, ensure_ascii=False)},\n')
        f.write('"cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in out_cases))
        f.write("\n]\n}\n")
    json.load(open(path, encoding="utf-8"))  # well-formed
    print(f"tests/data/tokenizer_parity.json: {len(out_cases)} cases, {summary['differ']} differ: "
          f"{summary['differ_by_category']}; unexpected: {summary['unexpected_differences']}; "
          f"known-category cases that matched anyway: {summary['known_categories_that_matched']}")
    return summary


def make_text_tower_fixtures():
    import open_clip
    import torch

    out = os.path.join(ROOT, "tests", "data", "text-towers")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    model = open_clip.CLIP(embed_dim=4, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 4, "heads": 1, "layers": 2}).eval()
    text = E.sample_text()
    E.export_text(model, os.path.join(out, "fixed.onnx"), text, any_length=False)
    # the same weights without the causal mask: every position sees the padding after it
    model.attn_mask.zero_()
    E.export_text(model, os.path.join(out, "looks-ahead.onnx"), text, any_length=True, check=False)
    for name in ("fixed.onnx", "looks-ahead.onnx"):
        print(f"tests/data/text-towers/{name}: {os.path.getsize(os.path.join(out, name))} bytes")


def main():
    what = sys.argv[1:] or ["shapes", "preprocess", "samples", "tokenizer", "text-towers"]
    if "shapes" in what:
        make_shapes_fixtures()
    if "preprocess" in what:
        make_preprocess_fixtures()
    if "samples" in what:
        make_samples()
    if "tokenizer" in what:
        make_tokenizer_parity()
    if "text-towers" in what:
        make_text_tower_fixtures()


if __name__ == "__main__":
    main()
