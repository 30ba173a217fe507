"""Model folders in exactly Immich's export layout, one per CLIP family Immich ships, with
RANDOM weights and shrunk sizes: fixtures for edgeclip's device (image tower) and cloud (text
tower), plus reference outputs computed with Immich's own pipeline (immich_pipeline.py) and
onnxruntime.

    python models/export_immich.py                      # all families -> tests/data/families/
    python models/export_immich.py --only vit,siglip    # some of them
    python models/export_immich.py --full --out models/full/families   # real sizes (not committed)

What it writes, per family, under OUT/<family>/ (as Immich's exporter,
`immich_model_exporter/exporters/onnx/models/openclip.py` and `mclip.py`, writes it):

    config.json                  open_clip's model config for the model name (json.dump, compact),
                                 the sizes shrunk; for M-CLIP the config of its open_clip image
                                 model (ViT-B-32), which is what Immich's exporter leaves there
    visual/model.onnx            input "image" float32 [1,3,S,S] -> "embedding" float32 [1,D]
    visual/preprocess_cfg.json   open_clip.get_model_preprocess_cfg(model) for the pretrained tag
    textual/model.onnx           "text" int32 [1,L] -> "embedding" [1,D]
                                 (M-CLIP: "input_ids" + "attention_mask" int32 [1,77])
    textual/tokenizer.json, tokenizer_config.json (save_pretrained), special_tokens_map.json,
                                 and the sentencepiece model where the tokenizer has one
    reference.json               Immich-pipeline inputs and onnxruntime outputs (see below)

Export exactly as Immich's exporter: `model.forward` replaced by `encode_image(x, normalize=True)`
/ `encode_text(t, normalize=True)` (M-CLIP: transformer -> masked mean -> LinearTransformation ->
normalize), `torch.onnx.export` with the TorchScript exporter (dynamo=False; what Immich's torch
versions used), opset 19, default constant folding, NO dynamic axes, traced with batch 1
(`torch.randn(1,3,S,S)`, `torch.ones(1,L,dtype=int32)`), `mha` fast path disabled.

What is real and what is made up:
  real:  the graph structure of each family (open_clip's CLIP / CustomTextCLIP classes, timm's
         trunks, transformers' XLM-RoBERTa and M2M100 encoders, the same pooling, projections,
         activations, masks), input/output names, dtypes and fixed shapes, opset, the folder
         layout, config.json keys, preprocess_cfg (open_clip's pretrained config for the tag),
         the CLIP BPE tokenizer (open_clip's bundled OpenAI vocabulary, 49,408 entries: real ids),
         the kind and structure of every other tokenizer (built by transformers' own classes and
         converters from a sentencepiece model, with the settings open_clip / Immich use).
  made up: all weights (random, seeded), the widths/depths/image sizes of the shrunk models,
         the vocabularies of the SentencePiece tokenizers (trained here on a tiny generated
         multilingual corpus: ids are NOT the real ones), and MobileCLIP's reparameterisation
         (Immich's exporter does not reparameterise; FEASIBILITY.md asks for it).
  M-CLIP: its image tower is the `vit` fixture's file, byte for byte (Immich exports M-CLIP's
         image tower from open_clip ViT-B-32 openai), its config.json is the vit fixture's, and
         its LinearTransformation is fitted (least squares, M-CLIP's teacher learning on the last
         layer) so that English captions land near the vit text tower's vectors for them.

reference.json: the environment, the family's I/O facts, for every picture (pictures/) the size
after the resize, a summary of the preprocessed tensor and the embedding, for every text the
cleaned text, the exact token ids (and attention mask) fed to the tower and the embedding.
`check_families.py` recomputes all of it from the committed files.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import struct
import sys
import tempfile
import time
import warnings
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import immich_pipeline as ip  # noqa: E402

OPSET = 19
FAMILIES = ["vit", "rn", "siglip", "siglip2", "mclip", "nllb", "mobileclip", "mobileclip2"]

# Immich model name each fixture stands for (one of Immich's names, or the open_clip name)
IMMICH_NAME = {
    "vit": "ViT-B-32__openai",
    "rn": "RN50__openai",
    "siglip": "ViT-B-16-SigLIP__webli",
    "siglip2": "ViT-B-16-SigLIP2__webli",
    "mclip": "XLM-Roberta-Large-Vit-B-32",
    "nllb": "nllb-clip-base-siglip__v1",
    "mobileclip": "MobileCLIP-S1__datacompdr",
    "mobileclip2": "MobileCLIP2-S4__dfndr2b",
}
# open_clip model name and pretrained tag (preprocessing, QuickGELU) of each fixture
OPEN_CLIP = {
    "vit": ("ViT-B-32", "openai"),
    "rn": ("RN50", "openai"),
    "siglip": ("ViT-B-16-SigLIP", "webli"),
    "siglip2": ("ViT-B-16-SigLIP2", "webli"),
    "mclip": ("ViT-B-32", "openai"),
    "nllb": ("nllb-clip-base-siglip", "v1"),
    "mobileclip": ("MobileCLIP-S1", "datacompdr"),
    "mobileclip2": ("MobileCLIP2-S4", "dfndr2b"),
}

# shrunk configurations (None: open_clip's real one is used with --full)
SMALL_CFG = {
    "vit": {"embed_dim": 32,
            "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32, "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2}},
    "rn": {"embed_dim": 64,
           "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 4, "patch_size": None},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2}},
}
# timm trunk shrink (keyword arguments of the timm model function; same blocks, fewer/narrower)
TIMM_SMALL = {
    "siglip": {"embed_dim": 48, "depth": 2, "num_heads": 2},
    "siglip2": {"embed_dim": 40, "depth": 2, "num_heads": 2},
    "nllb": {"embed_dim": 36, "depth": 2, "num_heads": 2},
    "mobileclip": {"layers": (1, 1, 1, 1), "embed_dims": (8, 16, 32, 64)},
    "mobileclip2": {"layers": (1, 1, 1, 1, 1), "embed_dims": (8, 16, 32, 32, 64)},
}
TEXT_SMALL = {"width": 32, "heads": 2, "layers": 2}
CLIP_TEXT_SMALL = {"width": 8, "heads": 2, "layers": 2}
EMBED_SMALL = {"siglip": 48, "siglip2": 40, "nllb": 36, "mobileclip": 24, "mobileclip2": 56}
SPM_VOCAB = {"siglip": 500, "siglip2": 700, "mclip": 600, "nllb": 600}

# ----------------------------------------------------------------------------- inputs

TEXTS_EN = [
    ("a photo of a dog", None),
    ("red car in the driveway", None),
    ("  Two   people\ton the BEACH, at sunset!  ", None),
    ("don\u2019t worry & be happy \u2014 caf\u00e9 \ufb01ne", None),
    ("a photo of " + " and ".join(["a red car", "a green tree", "a blue house", "two people",
                                   "a child playing with a ball"] * 6), None),
    ("", None),
]
TEXTS_MULTI = [
    ("ein Hund am Strand bei Sonnenuntergang", "de"),
    ("\u6d77\u6ee9\u4e0a\u7684\u72d7", "zh-CN"),
    ("une voiture rouge dans la rue", "fr"),
]
TEXTS_NLLB_EXTRA = [("a photo of a dog", "en"), ("um cachorro na praia", "pt-BR"), ("a photo of a dog", "xx-YY")]


def texts_for(family):
    if family == "nllb":
        return TEXTS_EN + TEXTS_MULTI + TEXTS_NLLB_EXTRA
    if family in ("mclip", "siglip2"):
        return TEXTS_EN + TEXTS_MULTI
    return TEXTS_EN


WORDS = {
    "en": "a photo of the dog cat red car in driveway beach sunset at mountain snow with two people "
          "child playing ball green tree house blue sky night city street bicycle birthday cake on "
          "table flower garden and white black yellow picture small large happy worry be fine cafe".split(),
    "de": "ein Foto von dem Hund Katze rotes Auto in der Einfahrt Strand bei Sonnenuntergang am Berg "
          "Schnee mit zwei Menschen Kind spielt Ball grüner Baum Haus blauer Himmel Nacht Stadt "
          "Straße Fahrrad Geburtstagskuchen auf Tisch Blume Garten und weiß schwarz".split(),
    "fr": "une photo du chien chat voiture rouge dans la rue allée plage coucher de soleil montagne "
          "neige avec deux personnes enfant jouant balle arbre vert maison ciel bleu nuit ville "
          "vélo gâteau anniversaire sur table fleur jardin et blanc noir".split(),
    "pt": "um cachorro na praia carro vermelho foto de uma casa azul árvore verde".split(),
    "zh": list("一张狗的照片猫红色汽车在车道上海滩日落山雪两个人孩子玩球绿树房子蓝天夜晚城市街道自行车生日蛋糕桌子花园和白黑"),
}


def english_words(n=3000):
    """Real English words: the first `n` whole-word entries of the CLIP BPE vocabulary bundled
    with open_clip (its merges are ordered by frequency), letters only."""
    import gzip

    from open_clip.tokenizer import default_bpe

    words = []
    for line in gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:]:
        w = line.replace(" ", "")
        if w.endswith("</w>") and w[:-4].isalpha() and w[:-4].isascii() and len(w) > 6:
            words.append(w[:-4])
            if len(words) == n:
                break
    return words


def corpus(english_only=False, lower=False, n=6000, seed=0):
    rng = random.Random(seed)
    langs = ["en", "en+"] if english_only else ["en", "en+", "en+", "de", "fr", "pt", "zh"]
    extra = english_words()
    lines = []
    for _ in range(n):
        lang = rng.choice(langs)
        k = rng.randint(2, 12)
        if lang == "zh":
            line = "".join(rng.choice(WORDS[lang]) for _ in range(k))
        elif lang == "en+":
            line = " ".join(rng.choice(extra if rng.random() < 0.7 else WORDS["en"]) for _ in range(k))
        else:
            line = " ".join(rng.choice(WORDS[lang]) for _ in range(k))
            if rng.random() < 0.3:
                line = line.capitalize() + rng.choice([".", "!", ",", "?"])
        lines.append(line.lower() if lower else line)
    return lines


# ----------------------------------------------------------------------------- pictures

def _png16(path, arr):
    """Minimal 16-bit RGB PNG writer (PIL cannot write 16-bit RGB)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def _scene(w, h, seed):
    """A colourful asymmetric picture: gradients, a disc, a bar and noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin((x + 2 * y) / 7.0)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.ellipse([w * 0.1, h * 0.15, w * 0.45, h * 0.55], fill=(230, 30, 40))
    d.rectangle([w * 0.6, h * 0.6, w * 0.95, h * 0.75], fill=(20, 20, 200))
    d.polygon([(w * 0.5, h * 0.05), (w * 0.9, h * 0.4), (w * 0.55, h * 0.45)], fill=(250, 220, 0))
    return im


def make_pictures(out_dir):
    """The pictures every reference uses; written once, committed (tests/data/families/pictures)."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    made = []

    def keep(name, note):
        made.append({"file": name, "note": note})

    for s in ("IMG_0001.jpg", "IMG_0002.jpg"):
        shutil.copyfile(os.path.join(HERE, "samples", s), os.path.join(out_dir, "sample_" + s))
        keep("sample_" + s, "models/samples/" + s + " (a clip-shapes demo picture, baseline JPEG)")
    im = _scene(1, 97, 1)
    im.save(os.path.join(out_dir, "thin_1x97.png"))
    keep("thin_1x97.png", "1 px wide, 97 px tall RGB PNG: resized to S x int(97*S)")
    im = _scene(97, 1, 2)
    im.save(os.path.join(out_dir, "thin_97x1.png"))
    keep("thin_97x1.png", "97 px wide, 1 px tall RGB PNG")
    im = _scene(331, 223, 3)
    im.save(os.path.join(out_dir, "prime_331x223.png"))
    keep("prime_331x223.png", "both sides prime, RGB PNG")
    im = _scene(211, 307, 4)
    im.save(os.path.join(out_dir, "prime_211x307.jpg"), quality=90)
    keep("prime_211x307.jpg", "both sides prime, portrait, baseline JPEG q90 (4:2:0)")
    im = _scene(160, 96, 5)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    im.save(os.path.join(out_dir, "exif_rot6_160x96.jpg"), quality=92, exif=exif.tobytes())
    keep("exif_rot6_160x96.jpg", "stored 160x96 with EXIF Orientation 6: displayed 96x160 (references apply it)")
    arr = np.asarray(_scene(120, 90, 6)).astype(np.uint16) * 257
    arr = arr + np.random.default_rng(6).integers(0, 200, arr.shape).astype(np.uint16)
    arr = np.minimum(arr, 65535)
    _png16(os.path.join(out_dir, "rgb16_120x90.png"), arr)
    keep("rgb16_120x90.png", "16-bit RGB PNG (low bytes noisy): PIL keeps the high byte of each sample")
    im = _scene(101, 67, 7).convert("CMYK")
    im.save(os.path.join(out_dir, "cmyk_101x67.jpg"), quality=92)
    keep("cmyk_101x67.jpg", "CMYK JPEG (PIL writes Adobe-inverted CMYK); PIL's CMYK->RGB conversion")
    im = _scene(89, 131, 8).convert("RGBA")
    a = np.asarray(im).copy()
    a[: 131 // 2, :, 3] = 0          # top half fully transparent, colours kept under it
    a[131 // 2:, : 89 // 2, 3] = 128
    Image.fromarray(a, "RGBA").save(os.path.join(out_dir, "rgba_89x131.png"))
    keep("rgba_89x131.png", "RGBA PNG, transparent top half: Immich drops alpha (convert('RGB'), no compositing)")
    with open(os.path.join(out_dir, "index.json"), "w", encoding="utf-8") as f:
        json.dump(made, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return made


# ----------------------------------------------------------------------------- tokenizers

def _clean_tokenizer_config(cfg):
    for k in ("is_local", "local_files_only", "vocab_file", "name_or_path"):
        cfg.pop(k, None)
    return cfg


def _special_tokens_map(tok):
    """special_tokens_map.json as transformers 4.x's save_pretrained writes it (Immich's
    exports carry one; transformers 5 no longer writes the file)."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        v = getattr(tok, key, None)
        if v is not None:
            out[key] = str(v)
    extra = getattr(tok, "extra_special_tokens", None) or getattr(tok, "additional_special_tokens", None)
    if isinstance(extra, (list, tuple)) and extra:
        out["additional_special_tokens"] = [str(t) for t in extra]
    return out


def _write_json(path, obj, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def write_clip_tokenizer(textual_dir):
    """The real CLIP tokenizer (CLIPTokenizerFast from open_clip's bundled vocabulary), via
    clip_export.write_tokenizer, plus special_tokens_map.json."""
    import clip_export
    from transformers import CLIPTokenizerFast

    clip_export.write_tokenizer(textual_dir, 77)
    # special tokens as the saved tokenizer has them
    tok = CLIPTokenizerFast(tokenizer_file=os.path.join(textual_dir, "tokenizer.json"),
                            pad_token="<|endoftext|>")
    _write_json(os.path.join(textual_dir, "special_tokens_map.json"), _special_tokens_map(tok))


def _train_spm(prefix, lines, **kw):
    import sentencepiece as spm

    path = prefix + ".txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=path, model_prefix=prefix, character_coverage=1.0,
                                   minloglevel=2, num_threads=1, hard_vocab_limit=False,
                                   shuffle_input_sentence=False, **kw)
    # the model records where it was trained from (a temporary path): blank it, so the
    # committed file is the same on every run
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    with open(prefix + ".model", "rb") as f:
        m.ParseFromString(f.read())
    del m.trainer_spec.input[:]
    m.trainer_spec.model_prefix = "spm"
    with open(prefix + ".model", "wb") as f:
        f.write(m.SerializeToString())
    return prefix + ".model"


def _nllb_mask_last(path):
    """NLLB's real vocabulary: the pieces (fairseq offset), then the FLORES-200 codes, then
    <mask> as the very last id (256001.. codes, 256203 <mask> in nllb-200). transformers 5's
    conversion puts <mask> before the codes: move it behind them, renumbering the codes."""
    tj = ip.read_json(path)
    added = tj["added_tokens"]
    mask = next(a for a in added if a["content"] == "<mask>")
    later = sorted((a for a in added if a["id"] > mask["id"]), key=lambda a: a["id"])
    old = {a["content"]: a["id"] for a in added}
    first = mask["id"]
    for i, a in enumerate(later):
        a["id"] = first + i
    mask["id"] = first + len(later)
    if mask["content"] in tj["model"]["vocab"]:
        raise AssertionError("<mask> is a model piece")
    new = {a["content"]: a["id"] for a in added}
    tj["added_tokens"] = sorted(added, key=lambda a: a["id"])
    for v in tj["post_processor"]["special_tokens"].values():
        v["ids"] = [new.get(t, i) for t, i in zip(v["tokens"], v["ids"])]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    assert old["zul_Latn"] == new["<mask>"]


def write_spm_tokenizer(family, textual_dir, vocab_size):
    """Train a tiny sentencepiece model shaped like the real one, turn it into the HF fast
    tokenizer with the class and settings the real folder was made with, save_pretrained.

      siglip : T5TokenizerFast(extra_ids=0, legacy=False), pad = eos = "</s>" (id 1)  -- what
               open_clip's SigLipTokenizer made timm/ViT-B-16-SigLIP's tokenizer with; Unigram,
               nmt_nfkc Precompiled normalizer, Metaspace, post-processor "$A </s>".
      siglip2: GemmaTokenizerFast(add_bos_token=False, add_eos_token=True, padding_side=right),
               pad "<pad>" (id 0), eos "<eos>" (id 1); BPE with byte fallback, no dummy prefix,
               normalizer Replace(" " -> "▁"), post-processor "$A <eos>".
      mclip  : XLMRobertaTokenizerFast (M-CLIP/XLM-Roberta-Large-Vit-B-32 uses xlm-roberta-large's):
               Unigram, <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>, "<s> $A </s>".
      nllb   : NllbTokenizerFast (facebook/nllb-200-distilled-600M): sentencepiece BPE,
               <s>=0 <pad>=1 </s>=2 <unk>=3, the 202 FLORES-200 codes as special tokens after the
               pieces, then <mask>; src_lang eng_Latn: "eng_Latn $A </s>".
    """
    from transformers import GemmaTokenizerFast, NllbTokenizerFast, T5TokenizerFast, XLMRobertaTokenizerFast

    os.makedirs(textual_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "spm")
        if family == "siglip":
            # c4-en: English, unigram, pad 0 / eos 1 / unk 2, no bos
            model = _train_spm(prefix, corpus(english_only=True, lower=True), vocab_size=vocab_size,
                               model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
            fname, cls, kw = "spiece.model", T5TokenizerFast, dict(extra_ids=0, legacy=False)
        elif family == "siglip2":
            # gemma: BPE, byte fallback, digits split, no dummy prefix, no normalisation
            model = _train_spm(prefix, corpus(), vocab_size=vocab_size, model_type="bpe",
                               pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
                               eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                               user_defined_symbols=["<mask>"], byte_fallback=True, split_digits=True,
                               allow_whitespace_only_pieces=True, add_dummy_prefix=False,
                               remove_extra_whitespaces=False, normalization_rule_name="identity")
            fname, cls = "tokenizer.model", GemmaTokenizerFast
            kw = dict(padding_side="right", add_bos_token=False, add_eos_token=True, legacy=False,
                      pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
                      mask_token="<mask>", extra_special_tokens=[])
        elif family == "mclip":
            # fairseq-style sentencepiece: <unk>=0 <s>=1 </s>=2 (the converter re-maps)
            model = _train_spm(prefix, corpus(), vocab_size=vocab_size, model_type="unigram",
                               unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
            fname, cls, kw = "sentencepiece.bpe.model", XLMRobertaTokenizerFast, dict(extra_special_tokens=[])
        elif family == "nllb":
            from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

            model = _train_spm(prefix, corpus(), vocab_size=vocab_size, model_type="bpe",
                               unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
            fname, cls = "sentencepiece.bpe.model", NllbTokenizerFast
            kw = dict(extra_special_tokens=list(FAIRSEQ_LANGUAGE_CODES), src_lang="eng_Latn")
        else:
            raise ValueError(family)
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        shutil.copyfile(model, os.path.join(src, fname))
        tok = cls.from_pretrained(src, **kw)
        if family == "siglip":  # as open_clip's SigLipTokenizer
            tok.pad_token_id = 1
            tok.eos_token_id = 1
        elif family == "siglip2":
            tok.pad_token_id = 0
            tok.eos_token_id = 1
        save = os.path.join(tmp, "saved")
        tok.save_pretrained(save)
        if family == "nllb":
            _nllb_mask_last(os.path.join(save, "tokenizer.json"))
        for name in sorted(os.listdir(save)):
            p = os.path.join(save, name)
            if name == "tokenizer_config.json":
                cfg = _clean_tokenizer_config(ip.read_json(p))
                _write_json(os.path.join(textual_dir, name), cfg)
            elif name == "tokenizer.json":
                _write_json(os.path.join(textual_dir, name), ip.read_json(p), compact=True)
            else:
                shutil.copyfile(p, os.path.join(textual_dir, name))
        # the sentencepiece model, as transformers 4.x's save_pretrained also writes it
        shutil.copyfile(model, os.path.join(textual_dir, fname))
        _write_json(os.path.join(textual_dir, "special_tokens_map.json"), _special_tokens_map(tok))
    return len(tok)


# ----------------------------------------------------------------------------- models

@contextlib.contextmanager
def patched_builders(timm_kwargs=None, hf_config=None):
    """Shrink timm trunks (extra keyword arguments to the timm model function) and give
    open_clip's HFTextEncoder a local transformers config instead of a hub download."""
    import open_clip.hf_model as hfm
    import open_clip.timm_model as tm

    orig_create = tm.timm.create_model
    orig_autocfg = hfm.AutoConfig.from_pretrained

    def create_model(name, *a, **kw):
        kw.update(timm_kwargs or {})
        return orig_create(name, *a, **kw)

    def from_pretrained(name, *a, **kw):
        assert hf_config is not None, name
        return hf_config

    tm.timm.create_model = create_model
    hfm.AutoConfig.from_pretrained = staticmethod(from_pretrained)
    try:
        yield
    finally:
        tm.timm.create_model = orig_create
        hfm.AutoConfig.from_pretrained = orig_autocfg


def preprocess_cfg_for(name, tag, model):
    """What create_model(name, pretrained=tag) sets: the tag's mean/std/interpolation/
    resize_mode over open_clip's defaults, size = the image tower's image_size."""
    from dataclasses import asdict

    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = asdict(PreprocessCfg())
    cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(name, tag))
    cfg["size"] = model.visual.image_size
    return cfg


def open_clip_config(family, full, vocab_size=None):
    """config.json content (open_clip's model config, shrunk unless full)."""
    import copy

    import open_clip

    name, _ = OPEN_CLIP[family]
    real = copy.deepcopy(open_clip.get_model_config(name))
    if full:
        return real
    if family in SMALL_CFG:
        return copy.deepcopy(SMALL_CFG[family])
    cfg = real
    cfg["embed_dim"] = EMBED_SMALL[family]
    if family in ("siglip", "siglip2"):
        cfg["text_cfg"].update(TEXT_SMALL, vocab_size=vocab_size)
    elif family in ("mobileclip", "mobileclip2"):
        cfg["text_cfg"].update(CLIP_TEXT_SMALL)
    return cfg


def build_openclip(family, cfg, full, hf_config=None):
    import copy

    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP, set_model_preprocess_cfg

    name, tag = OPEN_CLIP[family]
    c = copy.deepcopy(cfg)
    quick_gelu = bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
    custom = c.pop("custom_text", False) or "hf_model_name" in c["text_cfg"]
    if "timm_model_name" in c["vision_cfg"]:
        c["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in c["text_cfg"]:
        c["text_cfg"]["hf_model_pretrained"] = False
    timm_kwargs = None if full else TIMM_SMALL.get(family)
    with patched_builders(timm_kwargs, hf_config):
        cls = CustomTextCLIP if custom else CLIP
        model = cls(**c, quick_gelu=quick_gelu)
    set_model_preprocess_cfg(model, preprocess_cfg_for(name, tag, model))
    return model.eval()


def reparameterize(model):
    from timm.utils.model import reparameterize_model

    model.visual.trunk = reparameterize_model(model.visual.trunk)
    return model


def export_image(model, size, path):
    """Immich's _export_image_encoder."""
    import torch

    def encode_image(image):
        return model.encode_image(image, normalize=True)

    model.forward = encode_image
    args = (torch.randn(1, 3, size, size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, input_names=["image"], output_names=["embedding"],
                          opset_version=OPSET, dynamo=False)


def export_text(model, context_length, path):
    """Immich's _export_text_encoder (open_clip models)."""
    import torch

    def encode_text(text):
        return model.encode_text(text, normalize=True)

    model.forward = encode_text
    args = (torch.ones(1, context_length, dtype=torch.int32),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, input_names=["text"], output_names=["embedding"],
                          opset_version=OPSET, dynamo=False)


def _torch_module():
    import torch

    class MultilingualCLIP(torch.nn.Module):
        """The two parts of multilingual_clip's MultilingualCLIP that Immich's export keeps:
        `transformer` (XLM-RoBERTa) and `LinearTransformation`, with Immich's forward."""

        def __init__(self, transformer, in_dim, out_dim):
            super().__init__()
            self.transformer = transformer
            self.LinearTransformation = torch.nn.Linear(in_dim, out_dim)

        def features(self, input_ids, attention_mask):
            embs = self.transformer(input_ids, attention_mask)[0]
            return (embs * attention_mask.unsqueeze(2)).sum(dim=1) / attention_mask.sum(dim=1)[:, None]

        def forward(self, input_ids, attention_mask):
            embs = self.features(input_ids, attention_mask)
            embs = self.LinearTransformation(embs)
            return torch.nn.functional.normalize(embs, dim=-1)

    return MultilingualCLIP


def build_mclip_text(vocab, out_dim, full):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    if full:  # xlm-roberta-large
        cfg = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    else:
        cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=514, type_vocab_size=1,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    transformer = XLMRobertaModel(cfg)
    return _torch_module()(transformer, cfg.hidden_size, out_dim).eval()


def export_mclip_text(model, path):
    """Immich's mclip._export_text_encoder."""
    import torch

    args = (torch.ones(1, 77, dtype=torch.int32), torch.ones(1, 77, dtype=torch.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=OPSET, dynamo=False)


def nllb_hf_config(vocab, full):
    from transformers import M2M100Config

    if full:  # facebook/nllb-200-distilled-600M
        return M2M100Config(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12,
                            encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                            decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
                            activation_function="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                            decoder_start_token_id=2)
    return M2M100Config(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=1024, scale_embedding=True,
                        activation_function="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2)


# ----------------------------------------------------------------------------- reference

def environment():
    import importlib.metadata as md

    pk = ["torch", "open_clip_torch", "timm", "transformers", "tokenizers", "sentencepiece", "onnx",
          "onnxruntime", "pillow", "numpy"]
    return {"python": platform.python_version(), **{p: md.version(p) for p in pk}}


def onnx_facts(path):
    import onnx

    m = onnx.load(path)

    def io_(vs):
        out = []
        for v in vs:
            t = v.type.tensor_type
            dtype = {"FLOAT": "float32", "DOUBLE": "float64"}.get(onnx.TensorProto.DataType.Name(t.elem_type),
                                                                onnx.TensorProto.DataType.Name(t.elem_type).lower())
            out.append({"name": v.name, "dtype": dtype,
                        "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]})
        return out

    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"inputs": io_(m.graph.input), "outputs": io_(m.graph.output),
            "opset": [{"domain": o.domain, "version": o.version} for o in m.opset_import],
            "op_types": dict(sorted(ops.items()))}


def rounded(v):
    return [round(float(x), 8) for x in np.asarray(v).ravel()]


def compute_reference(folder, family, pictures_dir, pictures):
    """Immich's pipeline + onnxruntime on the written files."""
    kind = "mclip" if family == "mclip" else ("nllb" if family == "nllb" else "openclip")
    pcfg = ip.read_json(os.path.join(folder, "visual", "preprocess_cfg.json"))
    vis = ip.session(os.path.join(folder, "visual", "model.onnx"))
    txt = ip.session(os.path.join(folder, "textual", "model.onnx"))
    tp = ip.TextPipeline(folder, kind)
    pics = []
    for p in pictures:
        im = ip.load_picture(os.path.join(pictures_dir, p["file"]))
        x, resized = ip.preprocess(im, pcfg)
        emb = vis.run(None, {"image": x})[0][0]
        pics.append({"file": p["file"], "decoded_size": [im.width, im.height], "resized": resized,
                     "tensor": ip.tensor_summary(x), "embedding": rounded(emb)})
    texts = []
    for text, lang in texts_for(family):
        feeds = tp.inputs(text, lang)
        emb = txt.run(None, feeds)[0][0]
        e = {"text": text, "language": lang, "model_text": tp.model_text(text, lang)}
        if kind == "mclip":
            e["input_ids"] = feeds["input_ids"][0].tolist()
            e["attention_mask"] = feeds["attention_mask"][0].tolist()
        else:
            e["input_ids"] = feeds["text"][0].tolist()
        enc = tp.tokenizer.encode(e["model_text"])
        used = sum(enc.attention_mask)
        e["length"] = used  # tokens before the padding
        e["tokens"] = enc.tokens[:used]
        e["embedding"] = rounded(emb)
        texts.append(e)
    return pcfg, tp, pics, texts


# how each text tower pools, and so how its input must be built
POOLING = {
    "vit": "argmax: the first end-of-text (49407, the largest id) under a causal mask; positions after it never "
           "reach the output, so any padding gives the same vector and the row may be cut after it",
    "rn": "argmax under a causal mask, as vit",
    "mobileclip": "argmax (first 49407) WITHOUT a causal mask: every position, padding included, changes the vector; "
                  "pad to 77 with 49407 exactly (open_clip pads with 0, which gives another vector)",
    "mobileclip2": "argmax WITHOUT a causal mask, as mobileclip",
    "siglip": "last position (index 63) without a causal mask: the vector depends on the padding; pad to 64 with </s> (1)",
    "siglip2": "last position (index 63) without a causal mask: pad to 64 with <pad> (0)",
    "nllb": "first position (cls_pooler: the eng_Latn token the post-processor puts first) of the M2M100 encoder; "
            "the graph masks positions equal to the pad id 1 itself",
    "mclip": "mean over positions where attention_mask is 1, then LinearTransformation; the mask must be 0 on padding",
}


def padding_check(folder, family, tp, texts):
    """The first text with its padding replaced by another id (0, or 1 where the pad id is 0):
    how much the vector moves (1.0: padding-insensitive)."""
    sess = ip.session(os.path.join(folder, "textual", "model.onnx"))
    t = texts[0]
    key = "input_ids" if family == "mclip" else "text"
    ids = np.array([t["input_ids"]], dtype=np.int32)
    other = 0 if tp.pad_id != 0 else 1
    ids[0, t["length"]:] = other
    feeds = {key: ids}
    if family == "mclip":
        feeds["attention_mask"] = np.array([t["attention_mask"]], dtype=np.int32)
    emb = sess.run(None, feeds)[0][0]
    return {"text": t["text"], "other_pad_id": other, "cosine_to_reference": round(ip.cosine(emb, t["embedding"]), 6)}


def write_reference(folder, family, pictures_dir, pictures, fixture_notes, full):
    pcfg, tp, pics, texts = compute_reference(folder, family, pictures_dir, pictures)
    cfg = ip.read_json(os.path.join(folder, "config.json"))
    ref = {
        "family": family,
        "stands_for": IMMICH_NAME[family],
        "open_clip": {"model": OPEN_CLIP[family][0], "pretrained": OPEN_CLIP[family][1]},
        "random_weights": True,
        "full_size": full,
        "environment": environment(),
        "visual": onnx_facts(os.path.join(folder, "visual", "model.onnx")),
        "textual": onnx_facts(os.path.join(folder, "textual", "model.onnx")),
        "embed_dim": cfg["embed_dim"],
        "preprocess_cfg": pcfg,
        "text": {
            "kind": {"mclip": "mclip", "nllb": "nllb"}.get(family, "openclip"),
            "context_length": tp.context_length,
            "pad_token": tp.pad_token,
            "pad_id": tp.pad_id,
            "canonicalize": tp.canonicalize,
            "vocab_size": tp.tokenizer.get_vocab_size(),
            "pooling": POOLING[family],
            "padding_check": padding_check(folder, family, tp, texts),
        },
        "pipeline": "immich_pipeline.py: Immich's decode (EXIF transposed first), resize/crop, normalise; "
                    "clean_text, NLLB code prefix, tokenizers with padding to context_length and truncation",
        "fixture": fixture_notes,
        "pictures_dir": os.path.relpath(pictures_dir, folder),
        "pictures": pics,
        "texts": texts,
    }
    with open(os.path.join(folder, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return ref


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def dir_size(path):
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, fs in os.walk(path) for n in fs)


# ----------------------------------------------------------------------------- families

def check_torch_vs_onnx(folder, family, torch_image, torch_text, pictures_dir, pictures):
    """The exported files compute what the torch model computes (Immich's inputs)."""
    import torch

    kind = "mclip" if family == "mclip" else ("nllb" if family == "nllb" else "openclip")
    pcfg = ip.read_json(os.path.join(folder, "visual", "preprocess_cfg.json"))
    vis = ip.session(os.path.join(folder, "visual", "model.onnx"))
    txt = ip.session(os.path.join(folder, "textual", "model.onnx"))
    tp = ip.TextPipeline(folder, kind)
    worst = 1.0
    with torch.no_grad():
        for p in pictures[:3]:
            x, _ = ip.preprocess(ip.load_picture(os.path.join(pictures_dir, p["file"])), pcfg)
            a = vis.run(None, {"image": x})[0]
            b = torch_image(torch.from_numpy(x)).numpy()
            worst = min(worst, ip.cosine(a, b))
        for text, lang in texts_for(family):
            feeds = tp.inputs(text, lang)
            a = txt.run(None, feeds)[0]
            b = torch_text({k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
            worst = min(worst, ip.cosine(a, b))
    assert worst > 0.99999, (family, worst)
    return worst


def export_family(family, out_root, pictures_dir, pictures, full, seed):
    import torch

    torch.manual_seed(seed)
    torch.backends.mha.set_fastpath_enabled(False)
    folder = os.path.join(out_root, family)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "visual"))
    os.makedirs(os.path.join(folder, "textual"))
    textual = os.path.join(folder, "textual")
    notes = {}
    t0 = time.time()

    if family == "mclip":
        vit_dir = os.path.join(out_root, "vit")
        assert os.path.exists(os.path.join(vit_dir, "visual", "model.onnx")), "export vit first"
        # Immich: mclip.to_onnx -> openclip.to_onnx(ViT-B-32 openai) writes visual/ and config.json
        for rel in ("config.json", "visual/model.onnx", "visual/preprocess_cfg.json"):
            shutil.copyfile(os.path.join(vit_dir, rel), os.path.join(folder, rel))
        vocab = write_spm_tokenizer("mclip", textual, SPM_VOCAB["mclip"])
        cfg = ip.read_json(os.path.join(folder, "config.json"))
        model = build_mclip_text(vocab, cfg["embed_dim"], full)
        fit = fit_mclip_projection(model, folder, vit_dir)
        export_mclip_text(model, os.path.join(textual, "model.onnx"))
        notes.update(fit)
        notes["image_tower"] = "byte-identical to ../vit/visual/model.onnx (sha256 %s)" % sha256(
            os.path.join(folder, "visual", "model.onnx"))
        notes["text_transformer"] = {k: getattr(model.transformer.config, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "pad_token_id")}
        check = check_torch_vs_onnx(
            folder, family, lambda x: None, lambda f: model(f["input_ids"], f["attention_mask"]),
            pictures_dir, [])
    else:
        name, tag = OPEN_CLIP[family]
        hf_config = None
        vocab = None
        if family in ("vit", "rn", "mobileclip", "mobileclip2"):
            write_clip_tokenizer(textual)
        elif family in ("siglip", "siglip2"):
            vocab = write_spm_tokenizer(family, textual, SPM_VOCAB[family])
        elif family == "nllb":
            vocab = write_spm_tokenizer("nllb", textual, SPM_VOCAB["nllb"])
            hf_config = nllb_hf_config(vocab, full)
            notes["text_transformer"] = {k: getattr(hf_config, k) for k in (
                "vocab_size", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                "max_position_embeddings", "pad_token_id", "scale_embedding")}
        cfg = open_clip_config(family, full, vocab)
        model = build_openclip(family, cfg, full, hf_config)
        if family in ("mobileclip", "mobileclip2"):
            model = reparameterize(model)
            notes["reparameterized"] = "timm.utils.model.reparameterize_model on the image trunk before export"
        if not full and family in TIMM_SMALL:
            notes["timm_trunk_kwargs"] = {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in TIMM_SMALL[family].items()}
        for p in model.parameters():
            p.requires_grad_(False)
        # Immich: save_config(get_model_preprocess_cfg(model)), save_config(get_model_config(name))
        from open_clip import get_model_preprocess_cfg

        pcfg = get_model_preprocess_cfg(model)
        with open(os.path.join(folder, "visual", "preprocess_cfg.json"), "w") as f:
            json.dump(pcfg, f)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
        size = pcfg["size"][0] if isinstance(pcfg["size"], (list, tuple)) else pcfg["size"]
        ctx = cfg["text_cfg"].get("context_length", 77)
        export_image(model, size, os.path.join(folder, "visual", "model.onnx"))
        export_text(model, ctx, os.path.join(textual, "model.onnx"))
        check = check_torch_vs_onnx(
            folder, family, lambda x: model.encode_image(x, normalize=True),
            lambda f: model.encode_text(f["text"], normalize=True), pictures_dir, pictures)

    notes["torch_vs_onnxruntime_min_cosine"] = round(check, 9)
    notes["export_seconds"] = round(time.time() - t0, 1)
    ref = write_reference(folder, family, pictures_dir, pictures, notes, full)
    if family == "mclip":
        vit_ref = ip.read_json(os.path.join(out_root, "vit", "reference.json"))
        for a, b in zip(ref["pictures"], vit_ref["pictures"]):
            assert a["embedding"] == b["embedding"], "mclip image tower must equal vit's"
    return folder


def fit_mclip_projection(model, folder, vit_dir, n=800):
    """M-CLIP was trained by teacher learning: the student (XLM-R + linear layer) regresses the
    CLIP text tower's vectors of English captions (and their translations). Here: fit the
    LinearTransformation by least squares on the random XLM-R's mean-pooled features so that
    English captions map near the vit fixture's text vectors. Returns a note with the fit."""
    import torch

    rng = random.Random(7)
    caps = [" ".join(rng.choice(WORDS["en"]) for _ in range(rng.randint(2, 10))) for _ in range(n)]
    caps += [t for t, lang in TEXTS_EN if t.strip()]
    teacher = ip.session(os.path.join(vit_dir, "textual", "model.onnx"))
    tp_t = ip.TextPipeline(vit_dir, "openclip")
    tp_s = ip.TextPipeline(folder, "mclip")
    T = np.stack([teacher.run(None, tp_t.inputs(c))[0][0] for c in caps])
    with torch.no_grad():
        feats = []
        for c in caps:
            f = tp_s.inputs(c)
            feats.append(model.features(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))[0].numpy())
    F = np.concatenate([np.stack(feats), np.ones((len(caps), 1), np.float32)], 1)
    # ridge: the random encoder's pooled features are nearly collinear; an unregularised fit
    # gives huge weights that turn float rounding differences into visible output differences
    F64, T64 = F.astype(np.float64), T.astype(np.float64)
    G = F64.T @ F64
    lam = 1e-3 * np.trace(G) / G.shape[0]
    W = np.linalg.solve(G + lam * np.eye(G.shape[0]), F64.T @ T64)
    with torch.no_grad():
        model.LinearTransformation.weight.copy_(torch.from_numpy(W[:-1].T.astype(np.float32)))
        model.LinearTransformation.bias.copy_(torch.from_numpy(W[-1].astype(np.float32)))
    P = F @ W
    cos = (P * T).sum(1) / (np.linalg.norm(P, axis=1) * np.linalg.norm(T, axis=1))
    return {"linear_transformation": "ridge least squares to the vit fixture's text vectors on %d generated English "
                                     "captions (teacher learning, last layer only)" % len(caps),
            "fit_mean_cosine_to_vit_text": round(float(cos.mean()), 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "families"))
    ap.add_argument("--only", default=None, help="comma-separated families (default: all; with --full all "
                    "but mclip, whose XLM-R large text tower needs external data: ask for it explicitly)")
    ap.add_argument("--full", action="store_true", help="real-size configurations (not committed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    pictures_dir = os.path.join(args.out, "pictures")
    pictures = make_pictures(pictures_dir)
    only = args.only.split(",") if args.only else [f for f in FAMILIES if not (args.full and f == "mclip")]
    for family in [f for f in FAMILIES if f in only]:
        t = time.time()
        folder = export_family(family, args.out, pictures_dir, pictures, args.full, args.seed + FAMILIES.index(family))
        print(f"{family:12s} {dir_size(folder) / 1e6:7.2f} MB  {time.time() - t:6.1f} s  {folder}", flush=True)
    print(f"total {dir_size(args.out) / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
