"""Synthetic "shapes" scenes for edgeclip's small CLIP: scene sampling, rendering,
captions, ground-truth matching and the open_clip preprocessing path.

Shared by make_clip_shapes.py (training data, held-out evaluation) and
make_fixtures.py (demo samples, Rust test fixtures).

A scene is one or two shapes (circle, square, triangle, star) in one of eight colours,
small or large, at left/right/top/bottom/centre, on a plain background of another colour.
Positions and sizes are defined relative to the *central square* of the picture (the part
that open_clip's preprocessing keeps: resize the shortest side to 224, centre crop 224x224),
so a caption describes what the model actually sees.

Everything is driven by numpy Generators created from explicit seeds: the same seed gives
the same picture on every run.
"""
from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ---------------------------------------------------------------------------------------------
# Vocabulary of the world

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black"]
RGB = {
    "red": (210, 35, 35),
    "green": (45, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (240, 215, 40),
    "orange": (245, 130, 20),
    "purple": (130, 55, 170),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
KINDS = ["circle", "square", "triangle", "star"]
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "centre"]

# Canonical query phrases (used by evaluation and fixtures) come first in each list.
POS_PHRASES = {
    "left": ["on the left", "on the left side", "at the left"],
    "right": ["on the right", "on the right side", "at the right"],
    "top": ["at the top", "on the top", "at the top of the picture"],
    "bottom": ["at the bottom", "on the bottom", "at the bottom of the picture"],
    "centre": ["in the centre", "in the center", "in the middle"],
}
SIZE_WORDS = {"small": ["small", "little"], "large": ["large", "big"]}
PREFIXES = ["a photo of ", "a picture of ", "an image of ", "a photo showing "]

# Shape centre (fraction of the central square) for each position.
POS_XY = {
    "left": (0.24, 0.5),
    "right": (0.76, 0.5),
    "top": (0.5, 0.24),
    "bottom": (0.5, 0.76),
    "centre": (0.5, 0.5),
}
# Sampling weights of the positions (centre is boosted: two-shape scenes reject it more often).
POS_WEIGHTS = [0.18, 0.18, 0.18, 0.18, 0.28]
# Shape "diameter" as a fraction of the central square side (224 px after preprocessing):
# small 0.18..0.23 -> 40..52 px, large 0.36..0.44 -> 81..99 px.
SIZE_FRAC = {"small": (0.18, 0.23), "large": (0.36, 0.44)}

ASPECTS = [(4, 3), (3, 2), (16, 9), (5, 4), (1, 1), (3, 4), (2, 3), (9, 16)]

IMAGE_SIZE = 224
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS_CFG = {
    "size": IMAGE_SIZE,
    "mode": "RGB",
    "mean": list(MEAN),
    "std": list(STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------
# Scene sampling

def _fits(shapes) -> bool:
    """True if the shapes' bounding circles are apart and inside the central square."""
    for s in shapes:
        r = s["d"] / 2 * 1.05
        if s["fx"] - r < 0.015 or s["fx"] + r > 0.985 or s["fy"] - r < 0.015 or s["fy"] + r > 0.985:
            return False
    if len(shapes) == 2:
        a, b = shapes
        dist = math.hypot(a["fx"] - b["fx"], a["fy"] - b["fy"])
        if dist < (a["d"] + b["d"]) / 2 * 1.05 + 0.03:
            return False
    return True


def _place(rng: np.random.Generator, spec: dict) -> dict:
    lo, hi = SIZE_FRAC[spec["size"]]
    d = float(rng.uniform(lo, hi))
    px, py = POS_XY[spec["position"]]
    # jitter: along the position's own axis a bit more, never enough to change its meaning
    fx = px + float(rng.uniform(-0.04, 0.04))
    fy = py + float(rng.uniform(-0.04, 0.04))
    r = d / 2 * 1.05
    fx = min(max(fx, 0.02 + r), 0.98 - r)
    fy = min(max(fy, 0.02 + r), 0.98 - r)
    out = dict(spec)
    out.update(d=d, fx=fx, fy=fy, rot=float(rng.uniform(-15, 15)))
    return out


def sample_scene(rng: np.random.Generator, n_shapes: Optional[int] = None,
                 force: Optional[list] = None, p_two: float = 0.55,
                 short_range=(240, 640), aspects=ASPECTS) -> dict:
    """Random scene. `force` = list of partial shape specs (dicts with any of colour/shape/
    size/position) that the scene must contain, in order."""
    force = force or []
    if n_shapes is None:
        n_shapes = max(len(force), 2 if rng.random() < p_two else 1)
    for _ in range(1000):
        shapes = []
        for i in range(n_shapes):
            want = force[i] if i < len(force) else {}
            spec = {
                "colour": want.get("colour", COLOURS[rng.integers(len(COLOURS))]),
                "shape": want.get("shape", KINDS[rng.integers(len(KINDS))]),
                "size": want.get("size", SIZES[rng.integers(2)]),
                "position": want.get("position", POSITIONS[rng.choice(len(POSITIONS), p=POS_WEIGHTS)]),
            }
            shapes.append(spec)
        if n_shapes == 2:
            a, b = shapes
            if (a["colour"], a["shape"]) == (b["colour"], b["shape"]):
                continue
            if a["position"] == b["position"]:
                continue
        placed = [_place(rng, s) for s in shapes]
        if not _fits(placed):
            continue
        used = {s["colour"] for s in shapes}
        bg_choices = [c for c in COLOURS if c not in used]
        bg = bg_choices[rng.integers(len(bg_choices))]
        aw, ah = aspects[rng.integers(len(aspects))]
        short = int(rng.integers(short_range[0], short_range[1] + 1))
        if aw >= ah:
            h, w = short, int(round(short * aw / ah))
        else:
            w, h = short, int(round(short * ah / aw))
        return {"width": w, "height": h, "background": bg, "shapes": placed}
    raise RuntimeError(f"could not place shapes {force}")


def scene_label(scene: dict) -> dict:
    """Ground truth as stored in labels.json files (no rendering parameters)."""
    return {
        "background": scene["background"],
        "shapes": [{k: s[k] for k in ("colour", "shape", "size", "position")} for s in scene["shapes"]],
    }


# ---------------------------------------------------------------------------------------------
# Rendering

def _jitter_colour(rng, rgb, amount=1.0):
    scale = rng.uniform(1 - 0.13 * amount, 1 + 0.07 * amount)
    c = np.array(rgb, dtype=np.float32) * scale + rng.uniform(-8, 8, 3) * amount
    return np.clip(c, 0, 255)


def _shape_points(kind: str, cx: float, cy: float, d: float, rot_deg: float):
    rot = math.radians(rot_deg)

    def rp(x, y):
        return (cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot))

    r = d / 2
    if kind == "square":
        h = r * 0.86
        return [rp(-h, -h), rp(h, -h), rp(h, h), rp(-h, h)]
    if kind == "triangle":
        # equilateral, pointing up; centroid at the centre, slightly enlarged to look balanced
        R = r * 1.08
        return [rp(R * math.cos(math.radians(a)), R * math.sin(math.radians(a)) + r * 0.08)
                for a in (-90, 30, 150)]
    if kind == "star":
        pts = []
        for i in range(10):
            a = math.radians(-90 + 36 * i)
            rr = r * 1.05 if i % 2 == 0 else r * 0.47
            pts.append(rp(rr * math.cos(a), rr * math.sin(a)))
        return pts
    raise ValueError(kind)


def _shape_mask(kind: str, d_px: float, rot: float, sub_x: float, sub_y: float, ss: int = 4):
    """Anti-aliased alpha mask: drawn at `ss`x and box-downsampled. Returns (mask, size)."""
    size = int(math.ceil(d_px * 1.25)) + 4
    big = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(big)
    cx = (size / 2 + sub_x) * ss
    cy = (size / 2 + sub_y) * ss
    D = d_px * ss
    if kind == "circle":
        draw.ellipse([cx - D / 2, cy - D / 2, cx + D / 2, cy + D / 2], fill=255)
    else:
        draw.polygon(_shape_points(kind, cx, cy, D, rot), fill=255)
    return big.resize((size, size), Image.BOX), size


def render_scene(scene: dict, rng: np.random.Generator, noise=(1.5, 5.0), blur=(0.0, 0.7)) -> Image.Image:
    """Clean-ish RGB rendering with colour jitter, gentle lighting gradient, blur and noise."""
    w, h = scene["width"], scene["height"]
    S = min(w, h)
    ox, oy = (w - S) / 2, (h - S) / 2
    bg = _jitter_colour(rng, RGB[scene["background"]])
    # plain background with a gentle lighting gradient (+-6 %)
    gx, gy = rng.uniform(-0.06, 0.06, 2)
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    light = 1 + gx * xs + gy * ys
    arr = (light[:, :, None] * bg[None, None, :]).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    for s in scene["shapes"]:
        d_px = s["d"] * S
        cx = ox + s["fx"] * S
        cy = oy + s["fy"] * S
        x0, y0 = int(math.floor(cx)), int(math.floor(cy))
        mask, size = _shape_mask(s["shape"], d_px, s["rot"], cx - x0, cy - y0)
        col = tuple(int(v) for v in _jitter_colour(rng, RGB[s["colour"]]))
        img.paste(col, (x0 - size // 2, y0 - size // 2, x0 - size // 2 + size, y0 - size // 2 + size), mask)
    b = float(rng.uniform(*blur))
    if b > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(b))
    sigma = float(rng.uniform(*noise))
    if sigma > 0:
        a = np.asarray(img, dtype=np.float32)
        a = a + rng.standard_normal(a.shape, dtype=np.float32) * sigma
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img


def to_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def make_picture(seed, n_shapes=None, force=None, short_range=(240, 640), quality=(45, 95),
                 noise=(1.5, 5.0), p_two=0.55, aspects=ASPECTS):
    """One complete picture: (scene, jpeg_bytes). Deterministic in `seed` (int or tuple)."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, n_shapes=n_shapes, force=force, short_range=short_range,
                         p_two=p_two, aspects=aspects)
    img = render_scene(scene, rng, noise=noise)
    q = int(rng.integers(quality[0], quality[1] + 1))
    return scene, to_jpeg(img, q)


# ---------------------------------------------------------------------------------------------
# open_clip preprocessing

_TRANSFORM = None


def clip_transform():
    """open_clip's own eval transform (Resize shortest side 224 bicubic, CenterCrop 224,
    convert RGB, ToTensor, Normalize)."""
    global _TRANSFORM
    if _TRANSFORM is None:
        import open_clip
        _TRANSFORM = open_clip.image_transform(
            IMAGE_SIZE, is_train=False, mean=MEAN, std=STD,
            resize_mode="shortest", interpolation="bicubic", fill_color=0)
    return _TRANSFORM


def preprocess_uint8(img: Image.Image) -> np.ndarray:
    """open_clip's preprocessing up to (not including) ToTensor/Normalize: uint8 [224,224,3].
    normalize_uint8() of this equals open_clip's full preprocess exactly (same float ops)."""
    t = clip_transform()
    x = img
    for tr in t.transforms:
        name = type(tr).__name__
        if name in ("MaybeToTensor", "ToTensor", "Normalize"):
            continue
        x = tr(x)
    a = np.asarray(x.convert("RGB"), dtype=np.uint8)
    assert a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3), a.shape
    return a


def preprocess_jpeg_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return preprocess_uint8(im)


def normalize_uint8(a: np.ndarray) -> np.ndarray:
    """uint8 [..., 224, 224, 3] -> float32 [..., 3, 224, 224] normalised like ToTensor+Normalize."""
    x = a.astype(np.float32) / 255.0
    x = np.moveaxis(x, -1, -3)
    mean = np.array(MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.array(STD, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# Structured labels, captions and matching

NO_SHAPE = -9   # image slot without a shape
NO_REQ = -2     # caption slot without a requirement
ANY = -1        # wildcard field


def encode_label(label: dict) -> tuple[np.ndarray, int]:
    """label -> (int array [2,4] of colour, shape, size, position indices, background index)."""
    arr = np.full((2, 4), NO_SHAPE, dtype=np.int16)
    for i, s in enumerate(label["shapes"]):
        arr[i] = (COLOURS.index(s["colour"]), KINDS.index(s["shape"]),
                  SIZES.index(s["size"]), POSITIONS.index(s["position"]))
    return arr, COLOURS.index(label["background"])


def flip_label_arrays(shapes: np.ndarray) -> np.ndarray:
    """Horizontal flip: swap left and right."""
    out = shapes.copy()
    L, R = POSITIONS.index("left"), POSITIONS.index("right")
    p = out[:, :, 3]
    left, right = p == L, p == R
    p[left] = R
    p[right] = L
    return out


def _np_phrase(rng, spec, with_size, with_pos, drop_article=False):
    words = []
    if with_size:
        words.append(SIZE_WORDS[spec["size"]][rng.integers(2)])
    if spec.get("colour") is not None:
        words.append(spec["colour"])
    words.append(spec["shape"] if spec.get("shape") is not None else "shape")
    text = " ".join(words)
    if not drop_article:
        text = f"{article(text)} {text}"
    if with_pos:
        phrases = POS_PHRASES[spec["position"]]
        text += " " + phrases[rng.integers(len(phrases))]
    return text


def make_caption(rng: np.random.Generator, shapes: np.ndarray, bg: int, pos_p: float = 0.45):
    """Random caption of varied detail for an image given as label arrays (possibly flipped);
    a shape's position is named with probability `pos_p`.
    Returns (text, req [2,4] int16, bg_req int)."""
    present = [i for i in range(2) if shapes[i, 0] != NO_SHAPE]
    specs = [{"colour": COLOURS[shapes[i, 0]], "shape": KINDS[shapes[i, 1]],
              "size": SIZES[shapes[i, 2]], "position": POSITIONS[shapes[i, 3]]} for i in present]
    req = np.full((2, 4), NO_REQ, dtype=np.int16)
    order = list(range(len(specs)))
    rng.shuffle(order)
    if len(specs) == 2 and rng.random() < 0.55:
        mention = order
    else:
        mention = order[:1]
    kind_only = colour_only = False
    if len(mention) == 1 and rng.random() < 0.07:
        kind_only = rng.random() < 0.5
        colour_only = not kind_only
    phrases = []
    for slot, i in enumerate(mention):
        spec = dict(specs[i])
        with_size = rng.random() < 0.35
        with_pos = rng.random() < pos_p
        if kind_only:
            spec["colour"] = None
        if colour_only:
            spec["shape"] = None
        drop_article = slot == 0 and rng.random() < 0.08
        phrases.append(_np_phrase(rng, spec, with_size, with_pos, drop_article))
        req[slot] = (
            ANY if spec["colour"] is None else COLOURS.index(spec["colour"]),
            ANY if spec["shape"] is None else KINDS.index(spec["shape"]),
            SIZES.index(spec["size"]) if with_size else ANY,
            POSITIONS.index(spec["position"]) if with_pos else ANY,
        )
    if len(phrases) == 2:
        joiner = [" and ", " and ", " with ", " next to "][rng.integers(4)]
        text = phrases[0] + joiner + phrases[1]
    else:
        text = phrases[0]
    bg_req = ANY
    if rng.random() < 0.3:
        bg_req = int(bg)
        if rng.random() < 0.75:
            text = f"{text} on {article(COLOURS[bg])} {COLOURS[bg]} background"
        else:
            text = f"{article(COLOURS[bg])} {COLOURS[bg]} background with {text}"
    if rng.random() < 0.25:
        text = PREFIXES[rng.integers(len(PREFIXES))] + text
    return text, req, bg_req


def match_matrix(req: np.ndarray, bg_req: np.ndarray, shapes: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """M[c, i] = caption c is true of image i ("contains" semantics).
    req [C,2,4], bg_req [C], shapes [I,2,4], bg [I]."""
    r = req[:, None, :, None, :]       # C,1,2(req slot),1,4
    s = shapes[None, :, None, :, :]    # 1,I,1,2(img slot),4
    field_ok = (r == ANY) | (r == s)
    sat = field_ok.all(-1) & (s[..., 0] != NO_SHAPE)      # C,I,2,2
    absent = (req[:, :, 0] == NO_REQ)[:, None, :]        # C,1,2
    sat = sat | absent[..., None]
    ok = (sat[:, :, 0, 0] & sat[:, :, 1, 1]) | (sat[:, :, 0, 1] & sat[:, :, 1, 0])
    bg_ok = (bg_req[:, None] == ANY) | (bg_req[:, None] == bg[None, :])
    return ok & bg_ok


def label_has(label: dict, colour=None, shape=None, size=None, position=None) -> bool:
    for s in label["shapes"]:
        if ((colour is None or s["colour"] == colour) and (shape is None or s["shape"] == shape)
                and (size is None or s["size"] == size) and (position is None or s["position"] == position)):
            return True
    return False


def query_text(colour, shape, position=None) -> str:
    t = f"{article(colour)} {colour} {shape}"
    if position is not None:
        t += " " + POS_PHRASES[position][0]
    return t
