#!/usr/bin/env python3
"""Make edgeclip's small test CLIP, `models/clip-shapes/`: generate synthetic shape scenes,
train an open_clip `CLIP` from scratch (two phases: the whole model, then the top of the image
tower and the text tower on the frozen trunk's features), export both towers to ONNX in the Immich layout,
evaluate the exported files with onnxruntime and write quality.json and SHA256SUMS.

    /work/pyenv/bin/python models/make_clip_shapes.py            # everything (~85 min on 2 cores)

Stages can be run alone (`--stage data|train|head|export|eval`; `head` reruns the second training
phase from the first phase's checkpoint); every stage reuses what an
earlier one left under models/.work/ (git-ignored). All randomness comes from --seed.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from multiprocessing import Pool

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes as S  # noqa: E402

# The image tower is open_clip's ModifiedResNet (the architecture of OpenAI's RN50 CLIP) at
# small scale: on this CPU budget a ViT does not learn shape kinds (see models/README.md).
CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
CHUNK = 1000
DATA_VERSION = 2  # bump when shapes.py rendering changes, to regenerate cached data


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------------------------------------
# data

def _train_chunk(job):
    seed, start, n = job
    S.clip_transform()
    xs = np.zeros((n, 224, 224, 3), np.uint8)
    sh = np.zeros((n, 2, 4), np.int16)
    bg = np.zeros((n,), np.int16)
    for j in range(n):
        scene, jpg = S.make_picture((seed, 0, start + j))
        xs[j] = S.preprocess_jpeg_bytes(jpg)
        sh[j], bg[j] = S.encode_label(S.scene_label(scene))
    return start, xs, sh, bg


def make_train_data(work, seed, n):
    d = os.path.join(work, f"train-v{DATA_VERSION}-s{seed}")
    os.makedirs(d, exist_ok=True)
    n_chunks = math.ceil(n / CHUNK)
    todo = [(seed, c * CHUNK, CHUNK) for c in range(n_chunks)
            if not os.path.exists(os.path.join(d, f"chunk{c:04d}.npz"))]
    if todo:
        log(f"rendering {len(todo) * CHUNK} training pictures into {d}")
        t0 = time.time()
        with Pool(2) as pool:
            for start, xs, sh, bg in pool.imap_unordered(_train_chunk, todo):
                tmp = os.path.join(d, f"chunk{start // CHUNK:04d}.tmp.npz")
                np.savez(tmp, x=xs, shapes=sh, bg=bg)
                os.replace(tmp, os.path.join(d, f"chunk{start // CHUNK:04d}.npz"))
                log(f"  chunk {start // CHUNK} done ({time.time() - t0:.0f}s)")
    xs, shs, bgs = [], [], []
    for c in range(n_chunks):
        z = np.load(os.path.join(d, f"chunk{c:04d}.npz"))
        xs.append(z["x"]), shs.append(z["shapes"]), bgs.append(z["bg"])
    return np.concatenate(xs)[:n], np.concatenate(shs)[:n], np.concatenate(bgs)[:n]


def _eval_one(job):
    seed, i, path = job
    scene, jpg = S.make_picture((seed, 1, i))
    with open(path, "wb") as f:
        f.write(jpg)
    return i, S.scene_label(scene)


def make_eval_data(work, seed, n):
    """Held-out pictures written as JPEG files (read back through preprocessing at eval)."""
    d = os.path.join(work, f"eval-v{DATA_VERSION}-s{seed}-n{n}")
    lab_path = os.path.join(d, "labels.json")
    if not os.path.exists(lab_path):
        os.makedirs(d, exist_ok=True)
        log(f"rendering {n} held-out pictures into {d}")
        jobs = [(seed, i, os.path.join(d, f"IMG_{i:05d}.jpg")) for i in range(n)]
        labels = {}
        with Pool(2) as pool:
            for i, lab in pool.imap_unordered(_eval_one, jobs, chunksize=50):
                labels[f"IMG_{i:05d}.jpg"] = lab
        S_ = dict(sorted(labels.items()))
        with open(lab_path + ".tmp", "w") as f:
            json.dump(S_, f)
        os.replace(lab_path + ".tmp", lab_path)
    with open(lab_path) as f:
        return d, json.load(f)


def _load_pre(path):
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        return S.preprocess_uint8(im)


def load_preprocessed(folder, names, cache=None):
    if cache and os.path.exists(cache):
        return np.load(cache)
    with Pool(2) as pool:
        arr = np.stack(pool.map(_load_pre, [os.path.join(folder, n) for n in names], chunksize=50))
    if cache:
        np.save(cache, arr)
    return arr


# ---------------------------------------------------------------------------------------------
# metrics (shared by torch monitoring and the final onnxruntime evaluation)

def metrics(img_emb, labels, text_embed_fn):
    """img_emb [N,D] normalised; labels list of label dicts; text_embed_fn(list[str]) -> [Q,D]."""
    out = {}
    # colour+shape queries
    qs = [(c, k) for c in S.COLOURS for k in S.KINDS]
    te = text_embed_fn([S.query_text(c, k) for c, k in qs])
    sims = te @ img_emb.T
    per = {}
    for (c, k), s in zip(qs, sims):
        top = np.argsort(-s, kind="stable")[:5]
        per[S.query_text(c, k)] = float(np.mean([S.label_has(labels[j], c, k) for j in top]))
    out["p_at_5_colour_shape"] = float(np.mean(list(per.values())))
    out["p_at_5_colour_shape_min"] = float(min(per.values()))
    out["colour_shape_queries"] = len(qs)
    # colour+shape+position queries
    qp = [(c, k, p) for c in S.COLOURS for k in S.KINDS for p in S.POSITIONS]
    te = text_embed_fn([S.query_text(c, k, p) for c, k, p in qp])
    sims = te @ img_emb.T
    vals, n_rel = [], []
    for (c, k, p), s in zip(qp, sims):
        top = np.argsort(-s, kind="stable")[:5]
        vals.append(np.mean([S.label_has(labels[j], c, k, position=p) for j in top]))
        n_rel.append(sum(S.label_has(l, c, k, position=p) for l in labels))
    out["p_at_5_colour_shape_position"] = float(np.mean(vals))
    out["colour_shape_position_queries"] = len(qp)
    out["min_relevant_per_position_query"] = int(min(n_rel))
    # image -> image nearest neighbour
    sim = img_emb @ img_emb.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(1)
    pairs = [{(s["colour"], s["shape"]) for s in l["shapes"]} for l in labels]
    out["image_to_image_nn_shares_pair"] = float(np.mean([bool(pairs[i] & pairs[j]) for i, j in enumerate(nn)]))
    out["per_query_colour_shape"] = per
    return out


# ---------------------------------------------------------------------------------------------
# training

def train(args, x, sh, bg, val=None, cfg=None):
    import torch
    import torch.nn.functional as F
    import open_clip

    torch.set_num_threads(getattr(args, "threads", 2))
    torch.manual_seed(args.seed)
    torch.backends.mha.set_fastpath_enabled(False)
    rng = np.random.default_rng((args.seed, 2))
    model = open_clip.CLIP(**(cfg or CONFIG))
    if getattr(args, "init", None):
        # warm restart: a further cosine cycle from an earlier run's weights
        model.load_state_dict(torch.load(args.init))
        log("initialised from", args.init)
    model.train()

    # optional auxiliary attribute heads on the image embedding (training only, not exported)
    aux = None
    if getattr(args, "aux", 0) > 0:
        D = (cfg or CONFIG)["embed_dim"]
        aux = torch.nn.ModuleDict({
            "pair": torch.nn.Linear(D, len(S.COLOURS) * len(S.KINDS)),
            "pair_pos": torch.nn.Linear(D, len(S.COLOURS) * len(S.KINDS) * len(S.POSITIONS)),
            "size": torch.nn.Linear(D, len(S.COLOURS) * len(S.KINDS) * len(S.SIZES)),
            "bg": torch.nn.Linear(D, len(S.COLOURS)),
        })
    # optional dense per-token supervision (training only, not exported): every patch token
    # predicts which colour+shape covers it (or background), from the nominal scene geometry
    dense = None
    tok_store = {}
    if getattr(args, "dense", 0) > 0:
        vw = model.visual.transformer.width
        dense = torch.nn.Linear(vw, 1 + len(S.COLOURS) * len(S.KINDS))
        model.visual.transformer.register_forward_hook(lambda m, i, o: tok_store.__setitem__("t", o))
        if aux is None:
            aux = torch.nn.ModuleDict()
        aux["dense"] = dense
    decay, no_decay = [], []
    named = list(model.named_parameters()) + ([("aux." + n, p) for n, p in aux.named_parameters()] if aux else [])
    for name, p in named:
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, int(0.05 * args.steps))

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        t = (step - warm) / max(1, args.steps - warm)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    mean = torch.tensor(S.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(S.STD).view(1, 3, 1, 1)

    def to_input(batch_u8):
        t = torch.from_numpy(batch_u8).permute(0, 3, 1, 2).float().div_(255.0)
        return (t - mean) / std

    def encode_text_train(tokens):
        # identical to CLIP.encode_text for argmax (EOT) pooling under the causal mask,
        # but only over the first L positions (everything after the EOT is masked anyway)
        L = int(tokens.argmax(-1).max()) + 1
        tok = tokens[:, :L]
        h = model.token_embedding(tok) + model.positional_embedding[:L]
        h = model.transformer(h, attn_mask=model.attn_mask[:L, :L])
        h = model.ln_final(h)
        h = h[torch.arange(h.shape[0]), tok.argmax(-1)]
        h = model.text_projection(h) if isinstance(model.text_projection, torch.nn.Linear) else h @ model.text_projection
        return F.normalize(h, dim=-1)

    # check the shortcut against the real encode_text once
    with torch.no_grad():
        t = open_clip.tokenize(["a red circle", "a photo of a big blue star on the left and a white square"])
        assert torch.allclose(encode_text_train(t), model.encode_text(t, normalize=True), atol=1e-6)

    n = len(x)
    B = args.batch
    perm = rng.permutation(n)
    pos = 0
    # Hard negatives: part of each batch comes in groups of 4 pictures that share a colour
    # but show 4 different kinds, so that "a red circle" must be told from "a red square".
    hard = getattr(args, "hard", 0.0)
    by_pair = {}
    if hard > 0:
        for i in range(n):
            for c, k, _, _ in sh[i]:
                if c != S.NO_SHAPE:
                    by_pair.setdefault((int(c), int(k)), []).append(i)

    def hard_indices(count):
        out = set()
        while len(out) < count:
            c = int(rng.integers(len(S.COLOURS)))
            for k in rng.permutation(len(S.KINDS)):
                pool = by_pair.get((c, int(k)))
                if pool:
                    out.add(pool[int(rng.integers(len(pool)))])
        return list(out)[:count]
    t0 = time.time()
    hist = []
    for step in range(args.steps):
        if pos + B > n:
            perm, pos = rng.permutation(n), 0
        n_hard = int(round(B * hard)) // 4 * 4
        chosen = hard_indices(n_hard) if n_hard else []
        rest = [int(i) for i in perm[pos:pos + B] if int(i) not in set(chosen)][:B - len(chosen)]
        idx = np.sort(np.array(chosen + rest, dtype=np.int64))
        pos += B
        xb = x[idx]
        shb = sh[idx].copy()
        flip = rng.random(B) < 0.5
        if flip.any():
            xb = xb.copy()
            xb[flip] = xb[flip][:, :, ::-1]
            shb[flip] = S.flip_label_arrays(shb[flip])
        caps = [S.make_caption(rng, shb[i], bg[idx[i]]) for i in range(B)]
        texts = [c[0] for c in caps]
        req = np.stack([c[1] for c in caps])
        bgr = np.array([c[2] for c in caps])
        M = S.match_matrix(req, bgr, shb, bg[idx])
        assert M.diagonal().all()
        Mt = torch.from_numpy(M.astype(np.float32))
        tokens = open_clip.tokenize(texts)

        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ie = model.encode_image(to_input(xb), normalize=True)
        te = encode_text_train(tokens)
        scale = model.logit_scale.exp()
        logits = scale * te @ ie.T  # [captions, images]
        lt = -(Mt / Mt.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
        li = -(Mt.T / Mt.T.sum(1, keepdim=True) * F.log_softmax(logits.T, 1)).sum(1).mean()
        loss = (lt + li) / 2
        if getattr(args, "aux", 0) > 0:
            loss = loss + args.aux * aux_loss(aux, ie, shb, bg[idx])
        if dense is not None:
            toks = tok_store["t"][:, 1:]  # [B, grid*grid, width]
            grid = int(round(math.sqrt(toks.shape[1])))
            tgt = torch.from_numpy(dense_targets(shb, grid))
            loss = loss + args.dense * F.cross_entropy(dense(toks).reshape(-1, dense.out_features), tgt.reshape(-1),
                                                       ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        hist.append(loss.item())
        if step % 20 == 0 or step == args.steps - 1:
            log(f"step {step}/{args.steps} loss {np.mean(hist[-20:]):.3f} scale {float(scale):.1f} "
                f"lr {lr_at(step):.2e} {(time.time() - t0) / (step + 1):.2f}s/step")
        ckpt_path = getattr(args, "ckpt_path", None)
        if ckpt_path and (step + 1) % 250 == 0:
            torch.save(model.state_dict(), ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
        if val is not None and args.val_every and (step + 1) % args.val_every == 0 and step + 1 < args.steps:
            log("val", {k: round(v, 3) for k, v in torch_metrics(model, val).items() if not isinstance(v, dict)})
            model.train()
    train_time = time.time() - t0
    model.eval()
    return model, train_time, hist


def train_head(args, model, x, sh, bg, val=None):
    """Second phase (locked-trunk tuning, as in LiT): the image tower's stem and first three
    stages are frozen; their output for every training picture (and its mirror image) is
    computed once, and the last stage, the attention pooling and the whole text tower are
    trained on it with large batches. Each step costs a fraction of a full step, so the
    tower's top and the text side see many more captions on the same CPU. Half of each batch
    comes in groups of four that share a colour and show different kinds, half in groups that
    share colour and kind at different positions; captions name positions more often."""
    import torch
    import torch.nn.functional as F
    import open_clip

    torch.manual_seed(args.seed + 1)
    rng = np.random.default_rng((args.seed, 3))
    V = model.visual
    model.eval()
    n = len(x)
    t0 = time.time()
    feats = None
    with torch.no_grad():
        for flip in (0, 1):
            for i in range(0, n, 128):
                xb = x[i:i + 128]
                if flip:
                    xb = np.ascontiguousarray(xb[:, :, ::-1])
                f = V.layer3(V.layer2(V.layer1(V.stem(torch.from_numpy(S.normalize_uint8(xb))))))
                if feats is None:
                    feats = np.zeros((2, n) + tuple(f.shape[1:]), np.float16)
                feats[flip, i:i + len(f)] = f.numpy().astype(np.float16)
    log(f"head: trunk features of {n} pictures x 2 orientations in {time.time() - t0:.0f}s, {feats.nbytes >> 20} MiB")
    shf = np.stack([sh, S.flip_label_arrays(sh)])

    for p in model.parameters():
        p.requires_grad_(False)
    for m in (V.layer4, V.attnpool, model.transformer, model.ln_final, model.token_embedding):
        for p in m.parameters():
            p.requires_grad_(True)
    for p in (model.positional_embedding, model.text_projection, model.logit_scale):
        p.requires_grad_(True)
    D = model.text_projection.shape[1]
    aux = torch.nn.ModuleDict({
        "pair": torch.nn.Linear(D, len(S.COLOURS) * len(S.KINDS)),
        "pair_pos": torch.nn.Linear(D, len(S.COLOURS) * len(S.KINDS) * len(S.POSITIONS)),
        "size": torch.nn.Linear(D, len(S.COLOURS) * len(S.KINDS) * len(S.SIZES)),
        "bg": torch.nn.Linear(D, len(S.COLOURS)),
    })
    params = [p for p in model.parameters() if p.requires_grad] + list(aux.parameters())
    no_decay_ids = {id(model.token_embedding.weight), id(model.positional_embedding)}
    decay = [p for p in params if p.ndim >= 2 and id(p) not in no_decay_ids]
    decay_ids = {id(p) for p in decay}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0}],
                            lr=args.head_lr, betas=(0.9, 0.98), eps=1e-6)
    steps, B = args.head_steps, args.head_batch
    warm = max(1, int(0.05 * steps))

    def lr_at(step):
        if step < warm:
            return args.head_lr * (step + 1) / warm
        return args.head_lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    def encode_text_train(tokens):
        L = int(tokens.argmax(-1).max()) + 1
        tok = tokens[:, :L]
        h = model.token_embedding(tok) + model.positional_embedding[:L]
        h = model.ln_final(model.transformer(h, attn_mask=model.attn_mask[:L, :L]))
        return F.normalize(h[torch.arange(h.shape[0]), tok.argmax(-1)] @ model.text_projection, dim=-1)

    by_pair, by_pair_pos = {}, {}
    for i in range(n):
        for c, k, _, p in sh[i]:
            if c != S.NO_SHAPE:
                by_pair.setdefault((int(c), int(k)), []).append(i)
                by_pair_pos.setdefault((int(c), int(k), int(p)), []).append(i)

    def group_kinds():
        c = int(rng.integers(len(S.COLOURS)))
        out = []
        for k in rng.permutation(len(S.KINDS)):
            pool = by_pair.get((c, int(k)))
            if pool:
                out.append((pool[int(rng.integers(len(pool)))], int(rng.integers(2))))
        return out

    def group_positions():
        c, k = int(rng.integers(len(S.COLOURS))), int(rng.integers(len(S.KINDS)))
        out = []
        for p in rng.permutation(len(S.POSITIONS))[:4]:
            pool = by_pair_pos.get((c, k, int(p)))
            if pool:
                # unflipped, so that the sampled position is the one shown
                out.append((pool[int(rng.integers(len(pool)))], 0))
        return out

    hist = []
    t0 = time.time()
    for step in range(steps):
        model.train()
        for m in (V.layer1, V.layer2, V.layer3):
            m.eval()  # frozen, with their running statistics
        chosen = {}
        n_hard = int(round(B * args.hard))
        while len(chosen) < n_hard:
            for i, f in (group_kinds() if len(chosen) < n_hard // 2 else group_positions()):
                chosen.setdefault(i, f)
        while len(chosen) < B:
            chosen.setdefault(int(rng.integers(n)), int(rng.integers(2)))
        idx = np.array(list(chosen.keys())[:B])
        flip = np.array([chosen[i] for i in idx])
        fb = torch.from_numpy(feats[flip, idx].astype(np.float32))
        shb, bgb = shf[flip, idx], bg[idx]
        caps = [S.make_caption(rng, shb[i], bgb[i], pos_p=args.head_pos) for i in range(len(idx))]
        req = np.stack([c[1] for c in caps])
        bgr = np.array([c[2] for c in caps])
        Mt = torch.from_numpy(S.match_matrix(req, bgr, shb, bgb).astype(np.float32))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ie = F.normalize(V.attnpool(V.layer4(fb)), dim=-1)
        te = encode_text_train(open_clip.tokenize([c[0] for c in caps]))
        logits = model.logit_scale.exp() * te @ ie.T
        lt = -(Mt / Mt.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
        li = -(Mt.T / Mt.T.sum(1, keepdim=True) * F.log_softmax(logits.T, 1)).sum(1).mean()
        loss = (lt + li) / 2 + args.aux * aux_loss(aux, ie, shb, bgb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        hist.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"head step {step}/{steps} loss {np.mean(hist[-50:]):.3f} lr {lr_at(step):.2e} {(time.time() - t0) / (step + 1):.2f}s/step")
        ckpt_path = getattr(args, "ckpt_path", None)
        if ckpt_path and (step + 1) % 250 == 0:
            torch.save(model.state_dict(), ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
        if val is not None and args.val_every and (step + 1) % (2 * args.val_every) == 0 and step + 1 < steps:
            log("head val", {k: round(v, 3) for k, v in torch_metrics(model, val).items() if not isinstance(v, dict)})
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model, time.time() - t0, hist


def dense_targets(shb, grid):
    """[B, grid*grid] int64: 0 background, 1 + colour*4 + kind inside a shape, -100 near edges."""
    c = (np.arange(grid) + 0.5) / grid
    yy, xx = np.meshgrid(c, c, indexing="ij")
    out = np.zeros((len(shb), grid, grid), np.int64)
    for b in range(len(shb)):
        for col, kind, size, pos in shb[b]:
            if col == S.NO_SHAPE:
                continue
            fx, fy = S.POS_XY[S.POSITIONS[pos]]
            r = sum(S.SIZE_FRAC[S.SIZES[size]]) / 4
            d = np.hypot(xx - fx, yy - fy)
            out[b][(d < r * 1.25 + 0.06) & (out[b] == 0)] = -100
            out[b][d < r * 0.6] = 1 + col * len(S.KINDS) + kind
    return out.reshape(len(shb), -1)


def aux_targets(shb, bgb):
    nK, nP, nS = len(S.KINDS), len(S.POSITIONS), len(S.SIZES)
    B = len(shb)
    pair = np.zeros((B, len(S.COLOURS) * nK), np.float32)
    pair_pos = np.zeros((B, len(S.COLOURS) * nK * nP), np.float32)
    size = np.zeros((B, len(S.COLOURS) * nK * nS), np.float32)
    for b in range(B):
        for c, k, z, p in shb[b]:
            if c == S.NO_SHAPE:
                continue
            pk = c * nK + k
            pair[b, pk] = 1
            pair_pos[b, pk * nP + p] = 1
            size[b, pk * nS + z] = 1
    return pair, pair_pos, size


def aux_loss(aux, ie, shb, bgb):
    import torch
    import torch.nn.functional as F
    pair, pair_pos, size = (torch.from_numpy(a) for a in aux_targets(shb, bgb))
    h = ie * 8.0  # embedding is unit-norm; give the linear heads some range
    l = F.binary_cross_entropy_with_logits(aux["pair"](h), pair)
    l = l + F.binary_cross_entropy_with_logits(aux["pair_pos"](h), pair_pos)
    l = l + F.binary_cross_entropy_with_logits(aux["size"](h), size)
    l = l + F.cross_entropy(aux["bg"](h), torch.from_numpy(bgb.astype(np.int64)))
    return l


def torch_metrics(model, val):
    import torch
    import open_clip
    xv, labels = val
    model.eval()
    with torch.no_grad():
        embs = []
        for i in range(0, len(xv), 128):
            embs.append(model.encode_image(torch.from_numpy(S.normalize_uint8(xv[i:i + 128])), normalize=True).numpy())
        ie = np.concatenate(embs)

        def tf(texts):
            return model.encode_text(open_clip.tokenize(texts), normalize=True).numpy()
        return metrics(ie, labels, tf)


# ---------------------------------------------------------------------------------------------
# onnxruntime evaluation of the exported folder

class OnnxClip:
    def __init__(self, model_dir):
        import onnxruntime as ort
        from tokenizers import Tokenizer
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        self.vis = ort.InferenceSession(os.path.join(model_dir, "visual", "model.onnx"), so,
                                        providers=["CPUExecutionProvider"])
        self.txt = ort.InferenceSession(os.path.join(model_dir, "textual", "model.onnx"), so,
                                        providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "textual", "tokenizer.json"))
        with open(os.path.join(model_dir, "config.json")) as f:
            self.ctx = json.load(f)["text_cfg"].get("context_length", 77)

    def tokenize(self, texts):
        """tokenizer.json ids, truncated and padded the way open_clip does:
        [SOT] + tokens[:ctx-2] + [EOT], padded with 0."""
        out = np.zeros((len(texts), self.ctx), np.int64)
        for i, t in enumerate(texts):
            ids = self.tok.encode(t).ids  # includes SOT ... EOT
            body = ids[1:-1][: self.ctx - 2]
            row = [ids[0]] + body + [ids[-1]]
            out[i, :len(row)] = row
        return out

    def embed_text(self, texts):
        return self.txt.run(None, {self.txt.get_inputs()[0].name: self.tokenize(texts)})[0]

    def embed_images(self, x_u8, batch=64):
        outs = []
        name = self.vis.get_inputs()[0].name
        for i in range(0, len(x_u8), batch):
            outs.append(self.vis.run(None, {name: S.normalize_uint8(x_u8[i:i + batch])})[0])
        return np.concatenate(outs)


def evaluate_onnx(model_dir, folder, labels_by_name, cache=None):
    names = sorted(labels_by_name)
    x = load_preprocessed(folder, names, cache)
    oc = OnnxClip(model_dir)
    t0 = time.time()
    emb = oc.embed_images(x)
    dt = time.time() - t0
    m = metrics(emb, [labels_by_name[n] for n in names], oc.embed_text)
    m["pictures"] = len(names)
    m["image_embed_ms_per_picture_onnxruntime"] = round(1000 * dt / len(names), 2)
    return m


# ---------------------------------------------------------------------------------------------

def export(model, out_dir, quick):
    import clip_export as E
    os.makedirs(out_dir, exist_ok=True)
    E.write_json(os.path.join(out_dir, "config.json"), CONFIG)
    E.export_towers(model, out_dir)
    E.write_json(os.path.join(out_dir, "visual", "preprocess_cfg.json"), S.PREPROCESS_CFG)
    E.write_tokenizer(os.path.join(out_dir, "textual"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--train-images", type=int, default=24000)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--aux", type=float, default=0.5, help="weight of auxiliary attribute heads on the image embedding (training only)")
    ap.add_argument("--dense", type=float, default=0.0, help="weight of per-token shape supervision (experimental, off)")
    ap.add_argument("--hard", type=float, default=0.5, help="fraction of each batch drawn as same-colour, different-kind groups of 4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None, help="start from this state dict (a further cosine cycle, warm restart)")
    ap.add_argument("--head-steps", type=int, default=3500, help="second phase: steps on the frozen trunk's features (0 = none)")
    ap.add_argument("--head-batch", type=int, default=256)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--head-pos", type=float, default=0.7, help="second phase: probability that a caption names a shape's position")
    ap.add_argument("--val-every", type=int, default=250, help="torch validation every N steps (0 = off)")
    ap.add_argument("--out", default=os.path.join(HERE, "clip-shapes"))
    ap.add_argument("--work", default=os.path.join(HERE, ".work"))
    ap.add_argument("--stage", default="all", choices=["all", "data", "train", "head", "export", "eval"])
    ap.add_argument("--quick", action="store_true", help="tiny data and few steps: a smoke-test model")
    args = ap.parse_args()
    if args.quick:
        args.train_images, args.steps, args.batch = min(args.train_images, 4000), min(args.steps, 120), 128
        args.head_steps = min(args.head_steps, 60)
    os.makedirs(args.work, exist_ok=True)
    import torch
    torch.set_num_threads(2)

    ckpt = os.path.join(args.work, "clip-shapes.pt")
    phase1 = os.path.join(args.work, "clip-shapes-phase1.pt")
    run_info_path = os.path.join(args.work, "train_info.json")
    if args.stage in ("all", "data", "train", "head"):
        x, sh, bg = make_train_data(args.work, args.seed, args.train_images)
        edir, elabels = make_eval_data(args.work, args.seed, args.eval_images)
    if args.stage in ("all", "train", "head"):
        names = sorted(elabels)[:1000]
        val = None
        if args.val_every:
            xv = load_preprocessed(edir, names, os.path.join(edir, "val1000.npy"))
            val = (xv, [elabels[n] for n in names])
        info = {}
        if args.stage != "head":
            model, train_time, hist = train(args, x, sh, bg, val)
            torch.save(model.state_dict(), phase1)
            info = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "train_images": args.train_images,
                    "init": args.init, "aux": args.aux, "hard": args.hard,
                    "seed": args.seed, "train_seconds": round(train_time, 1), "final_loss": float(np.mean(hist[-20:])),
                    "quick": args.quick, "torch_threads": torch.get_num_threads()}
        else:
            import open_clip
            model = open_clip.CLIP(**CONFIG)
            model.load_state_dict(torch.load(phase1))
            if os.path.exists(run_info_path):
                with open(run_info_path) as f:
                    info = {k: v for k, v in json.load(f).items() if not k.startswith("head_")}
        if args.head_steps:
            args.ckpt_path = os.path.join(args.work, "clip-shapes-head.running.pt")
            model, head_time, head_hist = train_head(args, model, x, sh, bg, val)
            info.update({"head_steps": args.head_steps, "head_batch": args.head_batch, "head_lr": args.head_lr,
                         "head_pos": args.head_pos, "head_seconds": round(head_time, 1),
                         "head_final_loss": float(np.mean(head_hist[-50:]))})
        torch.save(model.state_dict(), ckpt)
        with open(run_info_path, "w") as f:
            json.dump(info, f, indent=2)
        log("trained", info)
    if args.stage in ("all", "export"):
        import open_clip
        model = open_clip.CLIP(**CONFIG)
        model.load_state_dict(torch.load(ckpt))
        model.eval()
        export(model, args.out, args.quick)
        log("exported to", args.out)
    if args.stage in ("all", "eval"):
        import clip_export as E
        edir, elabels = make_eval_data(args.work, args.seed, args.eval_images)
        q = {"model": "clip-shapes", "config": CONFIG}
        if os.path.exists(run_info_path):
            with open(run_info_path) as f:
                q["training"] = json.load(f)
        m = evaluate_onnx(args.out, edir, elabels, os.path.join(edir, "all.npy"))
        q["held_out"] = m
        log("held-out (onnxruntime):", {k: v for k, v in m.items() if not isinstance(v, dict)})
        sdir = os.path.join(HERE, "samples")
        if os.path.exists(os.path.join(sdir, "labels.json")):
            with open(os.path.join(sdir, "labels.json")) as f:
                slabels = json.load(f)
            sm = evaluate_onnx(args.out, sdir, slabels)
            sm = {k: v for k, v in sm.items() if k in ("pictures", "p_at_5_colour_shape", "p_at_5_colour_shape_min")}
            q["samples"] = sm
            log("samples (onnxruntime):", sm)
        q["bars"] = {"p_at_5_colour_shape": 0.90, "p_at_5_colour_shape_position": 0.70,
                     "image_to_image_nn_shares_pair": 0.90, "samples_p_at_5_colour_shape": 0.90}
        q["bars_met"] = bool(m["p_at_5_colour_shape"] >= 0.90 and m["p_at_5_colour_shape_position"] >= 0.70
                             and m["image_to_image_nn_shares_pair"] >= 0.90
                             and ("samples" not in q or q["samples"]["p_at_5_colour_shape"] >= 0.90))
        E.write_json(os.path.join(args.out, "quality.json"), q)
        E.write_sha256sums(args.out)
        log("bars met:", q["bars_met"], "size", E.dir_size(args.out))


if __name__ == "__main__":
    main()
