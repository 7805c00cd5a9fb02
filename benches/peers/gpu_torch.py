"""The GPU peer for retrieval: PyTorch's `topk(queries @ bank.T, k)` on the same shapes as
`cargo bench --bench retrieval` (random unit vectors, d = 384), plus the card's device-to-device
copy bandwidth (bytes read + written), the ceiling a bank scan is judged against.

usage: python3 gpu_torch.py --n 1000000,10000000 --batches 1,32,256 --dtypes f16,f32 --k 100
Prints one JSON line per measurement. Times are medians of CUDA-event timings after warm-up, and
include copying the k values and indices to the host, as memrl's retrieve returns them there.
"""
import argparse
import json

import torch


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.95) - 1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", default="1000000,10000000")
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--dtypes", default="f16,f32")
    p.add_argument("--k", type=int, default=100)
    a = p.parse_args()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    src = torch.randn(1 << 29, device=dev)  # 2 GiB
    dst = torch.empty_like(src)
    med, _ = timed(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() * 4 / (med / 1e3) / 1e9
    print(json.dumps({"peer": "d2d-copy", "device": name, "gb_per_s": round(copy_gbs, 1)}), flush=True)
    del src, dst
    for dtype_name in a.dtypes.split(","):
        dtype = {"f16": torch.float16, "f32": torch.float32}[dtype_name]
        for n in map(int, a.n.split(",")):
            torch.manual_seed(0)
            bank = torch.nn.functional.normalize(torch.randn(n, 384, device=dev), dim=1).to(dtype)
            for b in map(int, a.batches.split(",")):
                q = torch.nn.functional.normalize(torch.randn(b, 384, device=dev), dim=1).to(dtype)

                def run():
                    v, i = torch.topk(q @ bank.T, a.k, dim=1)
                    return v.float().cpu(), i.cpu()

                med, p95 = timed(run)
                print(json.dumps({
                    "peer": "torch", "device": name, "dtype": dtype_name, "n": n, "b": b, "k": a.k,
                    "median_ms": round(med, 4), "p95_ms": round(p95, 4),
                    "q_per_s": round(b / (med / 1e3), 1),
                    "bank_gb_per_s": round(bank.numel() * bank.element_size() / (med / 1e3) / 1e9, 1),
                }), flush=True)
            del bank
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
