#!/usr/bin/python3
"""The PyTorch peer of bench_moco: one MoCo v3 training step (two views through the
online encoder + projector + predictor, both through the momentum encoder + projector
without gradient, the symmetric contrastive loss, backward, AdamW, the momentum
update), images/s as the median of N windows, float32.

The encoder is tests/golden/gen_encoder.py's functional timm ViT (the one the C
encoder is checked against); heads are torch.nn as in facebookresearch/moco-v3's
_build_mlp. Thread settings are the caller's (bench/run.sh: OPENBLAS_NUM_THREADS=2,
OMP_NUM_THREADS=1, --torch-threads 1, ../shared/BENCH.md's fair peer). --autocast runs
the forward passes and the loss under torch.autocast("cpu", dtype=torch.bfloat16)."""

import contextlib

import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
import gen_encoder as E  # noqa: E402


def mlp(layers, din, hidden, dout):
    mods = []
    for i in range(layers):
        d1 = din if i == 0 else hidden
        d2 = dout if i == layers - 1 else hidden
        mods.append(nn.Linear(d1, d2, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        else:
            mods.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*mods)


def ctr(q, k, tau):
    logits = q @ k.t() / tau
    return F.cross_entropy(logits, torch.arange(q.shape[0])) * 2 * tau


def main():
    ap = argparse.ArgumentParser()
    for k in ("img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads",
              "mlp_dim", "dim"):
        ap.add_argument("--" + k, type=int, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--autocast", action="store_true")
    a = ap.parse_args()

    def autocast():
        if a.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    torch.set_num_threads(a.torch_threads)
    for k in ("img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads"):
        E.CFG[k] = getattr(a, k)
    E.CFG["mlp_ratio"] = 4
    P = {k: torch.from_numpy(v) for k, v in E.make_weights(np.random.default_rng(0)).items()}
    enc = {k: v.requires_grad_() for k, v in P.items() if k != "pos_embed"}
    enc["pos_embed"] = P["pos_embed"]
    proj, pred = mlp(3, a.embed_dim, a.mlp_dim, a.dim), mlp(2, a.dim, a.mlp_dim, a.dim)
    menc = {k: v.detach().clone() for k, v in enc.items()}
    mproj = copy.deepcopy(proj)
    params = [v for k, v in enc.items() if k != "pos_embed"] + list(proj.parameters()) + \
        list(pred.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1)
    B, S, C = a.batch, a.img_size, a.in_chans
    x1, x2 = torch.randn(B, C, S, S), torch.randn(B, C, S, S)
    ips = []
    for w in range(-1, a.windows):
        n = a.warmup if w < 0 else a.steps
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.no_grad():  # the momentum update
                for k in menc:
                    if k != "pos_embed":
                        menc[k].mul_(0.99).add_(enc[k].detach(), alpha=0.01)
                for pm, po in zip(mproj.parameters(), proj.parameters()):
                    pm.mul_(0.99).add_(po.detach(), alpha=0.01)
            with autocast():
                with torch.no_grad():  # the keys
                    k1 = F.normalize(mproj(E.encoder_forward(menc, x1)[:, 0]), dim=1)
                    k2 = F.normalize(mproj(E.encoder_forward(menc, x2)[:, 0]), dim=1)
                q1 = F.normalize(pred(proj(E.encoder_forward(enc, x1)[:, 0])), dim=1)
                q2 = F.normalize(pred(proj(E.encoder_forward(enc, x2)[:, 0])), dim=1)
                loss = ctr(q1, k2, 0.2) + ctr(q2, k1, 0.2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if w >= 0:
            ips.append(B * n / (time.perf_counter() - t0))
    print(f"torch_version={torch.__version__}")
    print(f"torch_img_per_s={statistics.median(ips):.2f}")
    print(f"torch_final_loss={loss.item():.4f}")


if __name__ == "__main__":
    main()
