#!/usr/bin/env python3
"""The peers of edgeclip's benchmark suite (examples/bench): onnxruntime on the same ONNX files
and inputs, NumPy and FAISS on the same vectors, the machine's peak matmul rate with NumPy's
BLAS, and the FLOPs of an ONNX model. The Rust driver runs this script as a child, once per
thread count, and merges what it prints (one JSON object on stdout) into
target/bench/results.json. It is not meant to be run by hand, but can be:

    python3 bench/reference.py --threads 2 SPEC.json

SPEC.json is a list of tasks, each an object with "task" and its arguments:
  {"task": "peak_matmul", "n": 2048}
  {"task": "flops", "onnx": PATH, "input_shape": [1, 3, 224, 224]}
  {"task": "onnx", "name": "...", "onnx": PATH, "input": RAW_FILE, "dtype": "float32"|"int64",
   "shape": [1, ...], "rows": R, "seconds": S}       (R different inputs of `shape` in RAW_FILE;
   "cut_after_argmax": true cuts each row just after its first largest value, the end token)
  {"task": "rank", "dir": DATA_DIR, "n": [100000, 1000000], "dim": 512, "k": 10,
   "queries": Q, "types": ["f32", "f16", "i8"]}
  {"task": "preprocess", "name": "...", "jpeg": PATH, "cfg": PREPROCESS_CFG_JSON, "seconds": S}
                                                       (Pillow, i.e. libjpeg-turbo; skipped without it)
Thread counts are fixed before NumPy is imported (OpenBLAS reads them at load time).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("spec")
    return p.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402


def timed(fn, seconds: float, min_runs: int = 3, warmup: int = 1):
    """Runs fn until `seconds` have passed (at least min_runs), returns per-run seconds."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def summary(times):
    a = np.array(times)
    return {"runs": len(times), "median_ms": float(np.median(a) * 1e3), "p10_ms": float(np.percentile(a, 10) * 1e3),
            "p90_ms": float(np.percentile(a, 90) * 1e3), "mean_ms": float(a.mean() * 1e3)}


def peak_matmul(task):
    n = task.get("n", 2048)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    times = timed(lambda: a @ b, task.get("seconds", 3.0), min_runs=5)
    best = min(times)
    return {"n": n, "gflops_best": 2 * n ** 3 / best / 1e9, "gflops_median": 2 * n ** 3 / float(np.median(times)) / 1e9,
            "blas": "numpy " + np.__version__}


def flops(task):
    """Multiply-add FLOPs (2 per MAC) of MatMul, Gemm and Conv nodes at the given input shape."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(task["onnx"])
    inp = model.graph.input[0]
    for dim, value in zip(inp.type.tensor_type.shape.dim, task["input_shape"]):
        dim.ClearField("dim_param")
        dim.dim_value = value
    # Drop the symbolic output shape so inference recomputes it from the fixed input.
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total, by_op, unknown = 0, {}, 0

    def prod(xs):
        out = 1
        for x in xs:
            out *= x
        return out

    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1])
        if not out or any(d is None for d in out) or not a or not b or any(d is None for d in a + b):
            unknown += 1
            continue
        if node.op_type == "MatMul":
            k = a[-1]
            f = 2 * prod(out) * k
        elif node.op_type == "Gemm":
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            f = 2 * prod(out) * k
        else:
            group = next((at.i for at in node.attribute if at.name == "group"), 1)
            f = 2 * prod(out) * (b[1]) * prod(b[2:])
            del group  # b[1] is already C_in / group
        total += f
        by_op[node.op_type] = by_op.get(node.op_type, 0) + f
    return {"flops": total, "by_op": by_op, "nodes_without_shape": unknown}


def run_onnx(task):
    import onnxruntime as ort
    import threading

    threads = ARGS.threads
    dtype = np.dtype(task["dtype"])
    shape = task["shape"]
    rows = task.get("rows", 1)
    data = np.fromfile(task["input"], dtype=dtype).reshape([rows] + shape)
    if task.get("cut_after_argmax"):
        # each token row cut just after its end-of-text token (its first largest id), as
        # edgeclip's cloud feeds a text tower with a dynamic sequence axis
        data = [row[:, :int(row[0].argmax()) + 1] for row in data]
    if task.get("batch"):
        # the same picture `batch` times in one run, as edgeclip's device runs a batch
        data = np.repeat(data, task["batch"], axis=1)
    seconds = task.get("seconds", 5.0)

    def session(intra):
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(task["onnx"], so, providers=["CPUExecutionProvider"])

    out = {"onnxruntime": ort.__version__, "threads": threads, "batch": task.get("batch", 1)}
    # Latency: one session using all `threads` threads, inputs in turn.
    s = session(threads)
    name = s.get_inputs()[0].name
    i = [0]

    def one():
        s.run(None, {name: data[i[0] % rows]})
        i[0] += 1

    lat = timed(one, seconds)
    out["one_session"] = summary(lat)
    out["one_session"]["per_s"] = 1000.0 / out["one_session"]["median_ms"]
    reference = s.run(None, {name: data[0]})[0].reshape(-1)
    out["output_first_row"] = [float(x) for x in reference[:8]]
    out["output_norm"] = float(np.linalg.norm(reference))
    if threads > 1:
        # Throughput: `threads` sessions of one thread each, run concurrently (ort releases the GIL).
        sessions = [session(1) for _ in range(threads)]
        for ss in sessions:
            ss.run(None, {name: data[0]})
        counts = [0] * threads
        stop = time.perf_counter() + seconds

        def worker(w):
            j = w
            while time.perf_counter() < stop:
                sessions[w].run(None, {name: data[j % rows]})
                counts[w] += 1
                j += threads

        start = time.perf_counter()
        ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - start
        out["parallel_sessions"] = {"sessions": threads, "runs": sum(counts), "per_s": sum(counts) / elapsed}
    return out


def rank(task):
    import faiss

    faiss.omp_set_num_threads(ARGS.threads)
    d, k, nq = task["dim"], task["k"], task["queries"]
    data_dir = task["dir"]
    biggest = max(task["n"])
    all_f32 = np.fromfile(os.path.join(data_dir, f"vectors_{biggest}x{d}.f32"), dtype=np.float32).reshape(biggest, d)
    all_codes = np.fromfile(os.path.join(data_dir, f"vectors_{biggest}x{d}.i8"), dtype=np.int8).reshape(biggest, d)
    all_scales = np.fromfile(os.path.join(data_dir, f"vectors_{biggest}x{d}.scales"), dtype=np.float32)
    queries = np.fromfile(os.path.join(data_dir, f"queries_{d}.f32"), dtype=np.float32).reshape(-1, d)[:nq]
    results = []
    for n in task["n"]:
        f32 = all_f32[:n]
        q_budget = nq if n <= 200_000 else max(5, nq // 4)
        qs = queries[:q_budget]
        for typ in task["types"]:
            if typ == "f32":
                table = f32
                scan_bytes = n * d * 4

                def numpy_scores(q, table=table):
                    return table @ q
            elif typ == "f16":
                table = f32.astype(np.float16)
                scan_bytes = n * d * 2

                def numpy_scores(q, table=table):
                    # NumPy has no f16 BLAS: upcast in chunks of 65536 rows (faster than its
                    # generic f16 matmul loop) and use the f32 GEMV.
                    q32 = q.astype(np.float16).astype(np.float32)
                    return np.concatenate([table[i:i + 65536].astype(np.float32) @ q32 for i in range(0, len(table), 65536)])
            else:
                codes, scales = all_codes[:n], all_scales[:n]
                scan_bytes = n * (d + 4)

                def numpy_scores(q, codes=codes, scales=scales):
                    return np.concatenate([codes[i:i + 65536].astype(np.float32) @ q for i in range(0, len(codes), 65536)]) * scales

            def numpy_top(q):
                s = numpy_scores(q)
                top = np.argpartition(-s, k)[:k]
                return top[np.argsort(-s[top])]

            times, tops = [], []
            numpy_top(qs[0])
            for q in qs:
                t = time.perf_counter()
                tops.append(numpy_top(q))
                times.append(time.perf_counter() - t)
            results.append({"engine": "numpy", "n": n, "type": typ, "scan_bytes": scan_bytes, **summary(times),
                            "top": [[int(x) for x in t] for t in tops[:3]]})

            if typ == "f32":
                index = faiss.IndexFlatIP(d)
                index.add(f32)
                what = "IndexFlatIP"
            else:
                qt = faiss.ScalarQuantizer.QT_fp16 if typ == "f16" else faiss.ScalarQuantizer.QT_8bit
                index = faiss.IndexScalarQuantizer(d, qt, faiss.METRIC_INNER_PRODUCT)
                index.train(f32[:min(n, 100_000)])
                index.add(f32)
                what = "IndexScalarQuantizer(" + ("QT_fp16" if typ == "f16" else "QT_8bit") + ")"
            index.search(qs[:1], k)
            times, tops = [], []
            for q in qs:
                t = time.perf_counter()
                _, ids = index.search(q[None, :], k)
                times.append(time.perf_counter() - t)
                tops.append(ids[0])
            results.append({"engine": "faiss", "index": what, "n": n, "type": typ, "scan_bytes": scan_bytes, **summary(times),
                            "top": [[int(x) for x in t] for t in tops[:3]]})
            del index
            print(f"  rank n={n} {typ} threads={ARGS.threads} done", file=sys.stderr, flush=True)
    import faiss as _f
    return {"faiss": _f.__version__, "numpy": np.__version__, "results": results}


def preprocess(task):
    """A JPEG to the model's input as open_clip does it on PIL (decode, RGB, bicubic resize of the
    shortest side, centre crop, normalise), with Pillow's decoder (libjpeg-turbo): once from the
    full decode, once from libjpeg-turbo's DCT-scaled decode (`Image.draft`) at the reduction
    edgeclip picks (the largest of 1/8, 1/4, 1/2 that keeps the short side at least twice the
    target). Also the two decodes alone."""
    try:
        from PIL import Image, features
    except ImportError:
        return {"skipped": "Pillow is not installed"}
    with open(task["cfg"]) as f:
        cfg = json.load(f)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    if cfg.get("resize_mode", "shortest") != "shortest":
        return {"skipped": "only the shortest-side resize is reproduced here"}
    mean = np.array(cfg["mean"], np.float32).reshape(3, 1, 1)
    std = np.array(cfg["std"], np.float32).reshape(3, 1, 1)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}[cfg.get("interpolation", "bicubic")]
    with open(task["jpeg"], "rb") as f:
        data = f.read()
    w, h = Image.open(io.BytesIO(data)).size
    reduction = next((r for r in (8, 4, 2) if min(w, h) // r >= 2 * size), 1)

    def decode(scaled):
        im = Image.open(io.BytesIO(data))
        if scaled and reduction > 1:
            im.draft("RGB", (w // reduction, h // reduction))
        im.load()
        return im

    def tensor(scaled):
        im = decode(scaled).convert("RGB")
        # torchvision's Resize(size) (shortest side, the other truncated), then CenterCrop.
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        im = im.resize((nw, nh), resample)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
        return (np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0 - mean) / std

    seconds = task.get("seconds", 3.0)
    return {"pillow": Image.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"), "reduction": reduction,
            "decode_full": summary(timed(lambda: decode(False), seconds)),
            "decode_scaled": summary(timed(lambda: decode(True), seconds)),
            "decode_preprocess_full": summary(timed(lambda: tensor(False), seconds)),
            "decode_preprocess_scaled": summary(timed(lambda: tensor(True), seconds))}


def main():
    with open(ARGS.spec) as f:
        spec = json.load(f)
    out = {"threads": ARGS.threads, "python": sys.version.split()[0], "tasks": []}
    for task in spec:
        kind = task["task"]
        t0 = time.perf_counter()
        if kind == "peak_matmul":
            r = peak_matmul(task)
        elif kind == "flops":
            r = flops(task)
        elif kind == "onnx":
            r = run_onnx(task)
        elif kind == "rank":
            r = rank(task)
        elif kind == "preprocess":
            r = preprocess(task)
        else:
            raise SystemExit(f"unknown task {kind}")
        r = {"task": kind, "name": task.get("name", kind), **r, "took_s": time.perf_counter() - t0}
        print(f"  {kind} {task.get('name', '')} threads={ARGS.threads}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        out["tasks"].append(r)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
