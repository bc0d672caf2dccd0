#!/usr/bin/python3
"""The PyTorch peer of bench_mae: the same MAE training step (forward, backward, AdamW
with MAE's param groups) on synthetic data, images/s as the median of N windows.

The model is tests/golden/gen_golden.py's functional MAE (the one the C code is
checked against), set to the benchmark config, in float32. Thread settings are the
caller's: bench/run.sh uses OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=1 and
--torch-threads 1, the fair single-process peer of ../shared/BENCH.md. --autocast runs
the forward under torch.autocast("cpu", dtype=torch.bfloat16), what a PyTorch user does
on a CPU with AVX512_BF16 (GEMMs in oneDNN's bf16 kernels, fp32 weights and AdamW)."""

import contextlib

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
import gen_golden as G  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    for k in ("img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads",
              "decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
        ap.add_argument("--" + k, type=int, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--autocast", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.torch_threads)
    for k in G.CFG:
        if hasattr(a, k):
            G.CFG[k] = getattr(a, k)
    rng = np.random.default_rng(0)
    P = {k: torch.from_numpy(v) for k, v in G.make_weights(rng).items()}
    trainable = {k: v.requires_grad_() for k, v in P.items() if k not in G.FIXED}
    decay = [v for k, v in trainable.items() if v.ndim > 1 and not k.endswith(".bias")]
    no_decay = [v for k, v in trainable.items() if not (v.ndim > 1 and not k.endswith(".bias"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    B, L = a.batch, (a.img_size // a.patch_size) ** 2
    imgs = torch.randn(B, a.in_chans, a.img_size, a.img_size)
    ips = []

    def autocast():
        if a.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    for w in range(-1, a.windows):
        n = a.warmup if w < 0 else a.steps
        t0 = time.perf_counter()
        for _ in range(n):
            noise = torch.rand(B, L)
            with autocast():
                loss = G.mae_forward(P, imgs, noise)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if w >= 0:
            ips.append(B * n / (time.perf_counter() - t0))
    print(f"torch_version={torch.__version__}")
    print(f"torch_threads={torch.get_num_threads()}")
    print(f"torch_img_per_s={statistics.median(ips):.2f}")
    print(f"torch_final_loss={loss.item():.4f}")
    print(f"torch_precision={'bf16-autocast' if a.autocast else 'fp32'}")


if __name__ == "__main__":
    main()
