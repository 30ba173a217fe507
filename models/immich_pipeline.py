"""Immich's CLIP inference pipeline, reproduced in Python (own code, written from reading
Immich's machine-learning service: `immich_ml/models/clip/visual.py`, `textual.py`,
`transforms.py`, `constants.py`). Used by `export_immich.py` to write reference.json and by
`check_families.py` to check the committed fixtures.

Image side (OpenClipVisualEncoder):
  decode: PIL `Image.open`, `load()`, `convert("RGB")` when the mode is not RGB (alpha is
          dropped, not composited; CMYK and 16-bit go through PIL's own conversions).
          Immich's ML service does NOT apply EXIF orientation: it receives the preview that
          Immich's server already rotated. `load_picture(..., exif=True)` applies
          `ImageOps.exif_transpose` first, which is what a whole Immich install amounts to.
  resize: preprocess_cfg["resize_mode"]
          "shortest": the short side to S with `int(long / short * S)` for the long side
                      (note: int() of the float ratio times S, not open_clip's rounding), PIL
                      resample = preprocess_cfg["interpolation"]; then crop
                      left = int(w / 2 - S / 2), top = int(h / 2 - S / 2), size S x S.
          "squash":   `image.resize((S, S))`, aspect ratio not kept.
  normalise: float32 / 255, then `x * (1/std) - mean/std` (Immich's order of operations),
          HWC -> CHW, batch 1: input "image" float32 [1, 3, S, S].
Text side (OpenClipTextualEncoder / MClipTextualEncoder):
  clean:  " ".join(text.split()); if config.json text_cfg.tokenizer_kwargs.clean ==
          "canonicalize": remove `string.punctuation` characters and lower-case (after the
          whitespace collapse, so "a , b" keeps two spaces).
  NLLB:   the model name starts with "nllb": text = FLORES-200 code + text, no space between
          (Weblate code -> FLORES via WEBLATE_TO_FLORES200; unknown -> strip the country ->
          default eng_Latn).
  tokenize: tokenizers.Tokenizer.from_file(tokenizer.json) with
          enable_padding(length=context_length, pad_token=tokenizer_config["pad_token"],
          pad_id=token_to_id(pad_token)) and enable_truncation(max_length=context_length);
          context_length = config.json text_cfg.context_length, default 77.
  inputs: open_clip towers {"text": int32 [1, context_length]}; M-CLIP
          {"input_ids": int32 [1, 77], "attention_mask": int32 [1, 77]}.
"""
from __future__ import annotations

import hashlib
import json
import os
import string

import numpy as np
from PIL import Image, ImageOps

# Immich's WEBLATE_TO_FLORES200 (the part the fixtures use, plus the common ones)
WEBLATE_TO_FLORES200 = {
    "af": "afr_Latn", "ar": "arb_Arab", "de": "deu_Latn", "en": "eng_Latn", "es": "spa_Latn",
    "fr": "fra_Latn", "it": "ita_Latn", "ja": "jpn_Hira", "ko": "kor_Hang", "nl": "nld_Latn",
    "pl": "pol_Latn", "pt": "por_Latn", "ru": "rus_Cyrl", "uk": "ukr_Cyrl", "zh-CN": "zho_Hans",
    "zh-Hans": "zho_Hans", "zh-TW": "zho_Hant",
}

_PUNCTUATION_TRANS = str.maketrans("", "", string.punctuation)
_RESAMPLING = {r.name.lower(): r for r in Image.Resampling}


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- image side

def load_picture(path: str, exif: bool = True) -> Image.Image:
    """Immich's decode_pil (open, load, convert to RGB unless RGB), after EXIF transposition
    when `exif` (see the module docstring)."""
    im = Image.open(path)
    im.load()
    if exif:
        im = ImageOps.exif_transpose(im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def resize_shortest(im: Image.Image, size: int, resample) -> Image.Image:
    if im.width < im.height:
        return im.resize((size, int((im.height / im.width) * size)), resample=resample)
    return im.resize((int((im.width / im.height) * size), size), resample=resample)


def crop_center(im: Image.Image, size: int) -> Image.Image:
    left = int((im.size[0] / 2) - (size / 2))
    upper = int((im.size[1] / 2) - (size / 2))
    return im.crop((left, upper, left + size, upper + size))


def preprocess(im: Image.Image, cfg: dict):
    """Returns (tensor [1,3,S,S] float32, size after the resize and before the crop)."""
    size = cfg["size"][0] if isinstance(cfg["size"], list) else cfg["size"]
    resample = _RESAMPLING[cfg["interpolation"].lower()]
    mode = cfg.get("resize_mode", "shortest")
    if mode == "squash":
        im = im.resize((size, size), resample=resample)
        resized = [size, size]
    elif mode == "shortest":
        im = resize_shortest(im, size, resample)
        resized = [im.width, im.height]
        im = crop_center(im, size)
    else:
        raise ValueError(mode)
    x = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.float32) / 255.0
    mean = np.array(cfg["mean"], dtype=np.float32)
    std = np.array(cfg["std"], dtype=np.float32)
    x *= 1.0 / std
    x -= mean / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), resized


def tensor_summary(x: np.ndarray) -> dict:
    """A few numbers that pin a preprocessed tensor down without storing it: sums, sha256 of
    the raw float32 bytes (exact only where the resize is bit-identical to PIL's), and values
    at fixed positions [channel, y, x]."""
    x = x.astype(np.float32)
    _, c, h, w = x.shape
    pos = [[0, 0, 0], [1, h // 2, w // 2], [2, h - 1, w - 1], [0, h // 3, 2 * w // 3],
           [1, 2 * h // 3, w // 4], [2, 0, w - 1], [0, h - 1, 0]]
    return {
        "shape": list(x.shape),
        "sum": float(x.sum(dtype=np.float64)),
        "abs_sum": float(np.abs(x).sum(dtype=np.float64)),
        "sha256_f32le": hashlib.sha256(x.astype("<f4").tobytes()).hexdigest(),
        "values": [[p, round(float(x[0, p[0], p[1], p[2]]), 6)] for p in pos],
    }


# ----------------------------------------------------------------------------- text side

def clean_text(text: str, canonicalize: bool = False) -> str:
    text = " ".join(text.split())
    if canonicalize:
        text = text.translate(_PUNCTUATION_TRANS).lower()
    return text


def flores_code(language):
    code = WEBLATE_TO_FLORES200.get(language)
    if code is None:
        code = WEBLATE_TO_FLORES200.get(language.split("-")[0], "eng_Latn")
    return code


class TextPipeline:
    """OpenClipTextualEncoder / MClipTextualEncoder for one model folder."""

    def __init__(self, model_dir: str, kind: str):
        from tokenizers import Tokenizer

        self.kind = kind  # "openclip", "nllb" or "mclip"
        cfg = read_json(os.path.join(model_dir, "config.json"))
        text_cfg = cfg["text_cfg"]
        self.context_length = text_cfg.get("context_length", 77)
        tk = text_cfg.get("tokenizer_kwargs")
        self.canonicalize = tk is not None and tk.get("clean") == "canonicalize"
        tcfg = read_json(os.path.join(model_dir, "textual", "tokenizer_config.json"))
        self.pad_token = tcfg["pad_token"]
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "textual", "tokenizer.json"))
        self.pad_id = self.tokenizer.token_to_id(self.pad_token)
        self.tokenizer.enable_padding(length=self.context_length, pad_token=self.pad_token, pad_id=self.pad_id)
        self.tokenizer.enable_truncation(max_length=self.context_length)

    def model_text(self, text: str, language=None) -> str:
        text = clean_text(text, canonicalize=self.canonicalize)
        if self.kind == "nllb" and language is not None:
            text = f"{flores_code(language)}{text}"
        return text

    def inputs(self, text: str, language=None):
        enc = self.tokenizer.encode(self.model_text(text, language))
        if self.kind == "mclip":
            return {"input_ids": np.array([enc.ids], dtype=np.int32),
                    "attention_mask": np.array([enc.attention_mask], dtype=np.int32)}
        return {"text": np.array([enc.ids], dtype=np.int32)}


def session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def cosine(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
