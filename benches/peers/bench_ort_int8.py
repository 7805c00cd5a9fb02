"""The int8 peer: ONNX Runtime CPU throughput with its own dynamic int8 quantization.

The f32 graph is the one ../shared/peers/bench_ort.py exports (run it first; embed.sh does);
it is quantized here once with ``onnxruntime.quantization.quantize_dynamic`` (ONNX Runtime's
defaults: s8 weights, u8 activations with scales computed at run time, every MatMul), then
timed exactly as bench_ort.py times the f32 graph: length-sorted batches, mean pooling, L2
normalization, best of three passes over the corpus. Also prints the worst and mean cosine of
its vectors to sentence-transformers' reference vectors, for the quality side of the trade.

usage: .peers/venv/bin/python benches/peers/bench_ort_int8.py --model .peers/model
       --corpus ../shared/data/corpus.jsonl --fixtures ../shared/fixtures/minilm_reference.jsonl
       [--batch 32] [--threads 2] [--per-channel]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=".peers/model")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--fixtures", default="")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    a = ap.parse_args()

    f32_path = os.path.join(a.model + "-onnx", "model.onnx")
    if not os.path.exists(f32_path):
        raise SystemExit(f"{f32_path} is missing: run ../shared/peers/bench_ort.py once to export it")
    variant = "int8-per-channel" if a.per_channel else "int8"
    int8_path = os.path.join(a.model + "-onnx", f"model-{variant}.onnx")
    if not os.path.exists(int8_path):
        quantize_dynamic(f32_path, int8_path, weight_type=QuantType.QInt8, per_channel=a.per_channel)

    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    tok.enable_truncation(a.max_len)
    tok.enable_padding()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(int8_path, so, providers=["CPUExecutionProvider"])

    def encode(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), 384), np.float32)
        for s in range(0, len(order), a.batch):
            idx = order[s : s + a.batch]
            enc = tok.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            h = sess.run(None, feeds)[0]
            v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out

    with open(a.corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    encode(texts[:256])
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        encode(texts)
        times.append(time.perf_counter() - t0)

    cosine: dict[str, float] | None = None
    if a.fixtures:
        with open(a.fixtures, encoding="utf-8") as f:
            refs = [json.loads(line) for line in f]
        got = encode([r["text"] for r in refs])
        want = np.array([r["embedding"] for r in refs], np.float32)
        cos = (got * want).sum(1) / np.linalg.norm(want, axis=1)
        cosine = {"worst": float(cos.min()), "mean": float(cos.mean())}
    print(
        json.dumps(
            {
                "peer": f"onnxruntime-{variant}",
                "batch": a.batch,
                "n": len(texts),
                "threads": a.threads,
                "times_s": [round(t, 2) for t in times],
                "sent_per_s_best": round(len(texts) / min(times), 1),
                "fixture_cosine": cosine,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "ort": ort.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
