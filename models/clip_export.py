"""Writing a CLIP model folder in the Immich export layout (shared by make_clip_shapes.py
and export_full.py):

    MODEL_DIR/config.json                 open_clip model config ({"embed_dim", "vision_cfg", "text_cfg"})
    MODEL_DIR/visual/model.onnx           image [N,3,224,224] f32 -> embedding [N,D] (L2-normalised)
    MODEL_DIR/visual/preprocess_cfg.json  open_clip preprocessing parameters
    MODEL_DIR/textual/model.onnx          text [N,L] int64, L <= 77 -> embedding [N,D] (L2-normalised);
                                          L is dynamic where `any_length_text` holds, else 77
    MODEL_DIR/textual/tokenizer.json      HF tokenizers file made from open_clip's BPE vocabulary
    MODEL_DIR/textual/tokenizer_config.json (+ special_tokens_map.json where transformers writes it)
    MODEL_DIR/SHA256SUMS                  sha256sum of every other file (relative paths)
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile

import torch

INPUT_IMAGE = "image"
INPUT_TEXT = "text"
OUTPUT = "embedding"
OPSET = 17


class ImageTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.encode_image(image, normalize=True)


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, text):
        return self.model.encode_text(text, normalize=True)


class TextTowerAnyLength(torch.nn.Module):
    """open_clip's `encode_text` for inputs of any length up to the context length, which the
    exporter records as a dynamic axis. Under the causal mask the pooled end-of-text position
    depends only on the positions before it, so a text cut just after its end-of-text token
    encodes to the same vector with a fraction of the work (the cloud does that); at the full
    length the graph computes what `encode_text` does.

    The attention is written out here: traced through `nn.MultiheadAttention`, the sequence
    length becomes a constant (77) in its reshapes. The positional embedding and the causal
    mask are gathered at positions 0..n rather than sliced, for the same reason."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @staticmethod
    def block(blk, x, mask):
        attn = blk.attn
        heads = attn.num_heads
        width = x.shape[-1]
        head_dim = attn.embed_dim // heads
        h = blk.ln_1(x)
        qkv = torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        q = q.reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)
        k = k.reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)
        v = v.reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)
        scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1) + mask
        a = torch.softmax(scores, dim=-1) @ v
        a = a.transpose(1, 2).reshape(x.shape[0], -1, width)
        a = attn.out_proj(a)
        x = x + blk.ls_1(a)
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def forward(self, text):
        from open_clip.transformer import text_global_pool

        m = self.model
        pos = torch.arange(text.shape[1], device=text.device)
        x = m.token_embedding(text)
        x = x + m.positional_embedding.index_select(0, pos)
        mask = m.attn_mask.index_select(0, pos).index_select(1, pos)
        for blk in m.transformer.resblocks:
            x = self.block(blk, x, mask)
        x = m.ln_final(x)
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if isinstance(m.text_projection, torch.nn.Linear):
            x = m.text_projection(x)
        elif m.text_projection is not None:
            x = x @ m.text_projection
        return torch.nn.functional.normalize(x, dim=-1)


def any_length_text(model) -> bool:
    """Whether the text tower can be exported for inputs cut after the end-of-text token: a
    plain open_clip `CLIP` whose batch-first text transformer has a causal mask, pools at the
    end-of-text token (argmax) and is made of `ResidualAttentionBlock`s with one packed
    in-projection (what `TextTowerAnyLength` writes out)."""
    import open_clip
    from open_clip.transformer import ResidualAttentionBlock

    if type(model) is not open_clip.CLIP or getattr(model, "attn_mask", None) is None:
        return False
    if getattr(model, "text_pool_type", None) != "argmax" or not getattr(model.transformer, "batch_first", False):
        return False
    return all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
               and getattr(b.attn, "in_proj_weight", None) is not None and b.attn.batch_first
               for b in model.transformer.resblocks)


def export_towers(model, out_dir: str, context_length: int = 77, image_size: int = 224):
    """Export both towers exactly as FEASIBILITY.md prescribes (TorchScript exporter, opset 17,
    constant folding, dynamic batch axis, traced with batch 2); the text tower with a dynamic
    sequence axis too where `any_length_text` holds."""
    torch.backends.mha.set_fastpath_enabled(False)
    model = model.eval()
    os.makedirs(os.path.join(out_dir, "visual"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "textual"), exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, image_size, image_size, generator=gen)
    text = sample_text(context_length)
    with torch.no_grad():
        torch.onnx.export(
            ImageTower(model), (image,), os.path.join(out_dir, "visual", "model.onnx"),
            dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[INPUT_IMAGE], output_names=[OUTPUT],
            dynamic_axes={INPUT_IMAGE: {0: "batch_size"}, OUTPUT: {0: "batch_size"}},
        )
        dim = int(model.encode_text(text[:1], normalize=True).shape[1])
    export_text(model, os.path.join(out_dir, "textual", "model.onnx"), text, any_length_text(model))
    fix_output_dim(os.path.join(out_dir, "visual", "model.onnx"), dim)


def sample_text(context_length: int = 77):
    """Two padded token rows of different lengths, the input the towers are traced with."""
    text = torch.zeros(2, context_length, dtype=torch.long)
    text[:, 0] = 49406
    text[0, 1:4] = torch.tensor([320, 736, 2138])
    text[0, 4] = 49407
    text[1, 1:3] = torch.tensor([320, 2368])
    text[1, 3] = 49407
    return text


def export_text(model, path: str, text, any_length: bool, check: bool = True) -> None:
    """Export the text tower to `path`: with a dynamic sequence axis (`TextTowerAnyLength`,
    checked with onnxruntime against `encode_text` unless `check` is false) or fixed at the
    traced length (`encode_text` itself, what every other exporter writes)."""
    torch.backends.mha.set_fastpath_enabled(False)
    text_axes = {0: "batch_size", 1: "sequence_length"} if any_length else {0: "batch_size"}
    with torch.no_grad():
        torch.onnx.export(
            TextTowerAnyLength(model) if any_length else TextTower(model), (text,), path,
            dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[INPUT_TEXT], output_names=[OUTPUT],
            dynamic_axes={INPUT_TEXT: text_axes, OUTPUT: {0: "batch_size"}},
        )
        dim = int(model.encode_text(text[:1], normalize=True).shape[1])
    fix_output_dim(path, dim)
    if any_length and check:
        check_any_length(model, path, text)


def check_any_length(model, path: str, text) -> None:
    """The exported text tower at the full length equals `encode_text`, and each text cut just
    after its end-of-text token encodes to the same vector."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.encode_text(text, normalize=True).numpy()
    full = sess.run(None, {INPUT_TEXT: text.numpy()})[0]
    assert np.abs(full - ref).max() < 1e-5, np.abs(full - ref).max()
    for row in range(text.shape[0]):
        end = int(text[row].argmax()) + 1
        cut = sess.run(None, {INPUT_TEXT: text[row:row + 1, :end].numpy()})[0]
        assert np.abs(cut[0] - ref[row]).max() < 1e-5, (row, end, np.abs(cut[0] - ref[row]).max())


def fix_output_dim(path: str, dim: int) -> None:
    """The TorchScript exporter leaves the embedding axis of the output symbolic
    ("Divembedding_dim_1", from F.normalize); pin it to the real width."""
    import onnx
    m = onnx.load(path)
    d = m.graph.output[0].type.tensor_type.shape.dim[1]
    d.Clear()
    d.dim_value = dim
    onnx.save(m, path)


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _bytes_to_unicode():
    from open_clip.tokenizer import bytes_to_unicode
    return bytes_to_unicode()


def write_tokenizer(textual_dir: str, context_length: int = 77) -> None:
    """tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) from open_clip's
    bundled bpe_simple_vocab_16e6.txt.gz, via vocab.json/merges.txt and CLIPTokenizerFast."""
    from open_clip.tokenizer import default_bpe
    from transformers import CLIPTokenizerFast

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # the same 48,894 merges open_clip uses
    assert len(merges) == 48894
    b2u = _bytes_to_unicode()
    vocab = list(b2u.values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m.split()))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.write("\n".join(merges) + "\n")
        tok = CLIPTokenizerFast.from_pretrained(tmp, model_max_length=context_length)
        save = os.path.join(tmp, "saved")
        tok.save_pretrained(save)
        os.makedirs(textual_dir, exist_ok=True)
        for name in sorted(os.listdir(save)):
            if name in ("tokenizer_config.json", "special_tokens_map.json"):
                with open(os.path.join(save, name), encoding="utf-8") as f:
                    cfg = json.load(f)
                # keys describing the temporary folder, not the tokenizer
                cfg.pop("is_local", None)
                cfg.pop("local_files_only", None)
                write_json(os.path.join(textual_dir, name), cfg)
        # tokenizer.json: compact, merges as "a b" strings (the format every tokenizers
        # version reads; byte-level symbols never contain a space)
        with open(os.path.join(save, "tokenizer.json"), encoding="utf-8") as f:
            tj = json.load(f)
        tj["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        assert all(len(m.split(" ")) == 2 for m in tj["model"]["merges"])
        with open(os.path.join(textual_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
    # sanity: same ids as open_clip for a plain caption
    from tokenizers import Tokenizer
    import open_clip
    t = Tokenizer.from_file(os.path.join(textual_dir, "tokenizer.json"))
    text = "a small red circle on the left"
    ids = t.encode(text).ids
    ref = open_clip.tokenize(text)[0].tolist()
    assert ids == ref[:len(ids)], (ids, ref)


def write_sha256sums(model_dir: str) -> None:
    entries = []
    for root, _, files in os.walk(model_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, model_dir)
            if rel == "SHA256SUMS" or rel.startswith("parity" + os.sep):
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            entries.append((rel, h.hexdigest()))
    entries.sort()
    with open(os.path.join(model_dir, "SHA256SUMS"), "w") as f:
        for rel, digest in entries:
            f.write(f"{digest}  {rel}\n")


def dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total
