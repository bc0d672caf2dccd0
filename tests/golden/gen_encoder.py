#!/usr/bin/python3
"""Golden data for the C ViT encoder (models/encoder.c) on whole images, float64 PyTorch.

Run from the repository root with Debian's python3 (it has torch):

    /usr/bin/python3 tests/golden/gen_encoder.py

It rewrites tests/golden/encoder_tiny.safetensors byte-identically on every run (fixed
seed, one thread). The model is timm's VisionTransformer as MAE builds it (patch
embedding, fixed 2D sin-cos pos_embed, cls token, pre-LN blocks, final norm; timm
names), written with torch.nn.functional; the block, LayerNorm and sin-cos table are
gen_golden.py's, so the encoder here and the MAE encoder there are one specification.
The loss reads both feature kinds the C side offers:

    loss = sum(r_cls * out[:, 0]) + sum(r_avg * out[:, 1:].mean(1))

with out the final norm output, so every parameter gets a gradient through the cls row
and through every patch row. See tests/golden/README.md.
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
from gen_golden import block, f32, layer_norm, sincos_2d, LN_EPS  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "encoder_tiny.safetensors")

CFG = {"img_size": 12, "in_chans": 2, "patch_size": 3, "embed_dim": 24, "depth": 2,
       "num_heads": 3, "mlp_ratio": 2}
BATCH = 3
SEED = 31337


def param_shapes():
    """The encoder's tensors in timm's state_dict order (pos_embed fixed, not trained)."""
    c, p, d = CFG["in_chans"], CFG["patch_size"], CFG["embed_dim"]
    L = (CFG["img_size"] // p) ** 2
    h = CFG["mlp_ratio"] * d
    shapes = [("cls_token", (1, 1, d)), ("pos_embed", (1, L + 1, d)),
              ("patch_embed.proj.weight", (d, c, p, p)), ("patch_embed.proj.bias", (d,))]
    for i in range(CFG["depth"]):
        b = f"blocks.{i}"
        shapes += [(f"{b}.norm1.weight", (d,)), (f"{b}.norm1.bias", (d,)),
                   (f"{b}.attn.qkv.weight", (3 * d, d)), (f"{b}.attn.qkv.bias", (3 * d,)),
                   (f"{b}.attn.proj.weight", (d, d)), (f"{b}.attn.proj.bias", (d,)),
                   (f"{b}.norm2.weight", (d,)), (f"{b}.norm2.bias", (d,)),
                   (f"{b}.mlp.fc1.weight", (h, d)), (f"{b}.mlp.fc1.bias", (h,)),
                   (f"{b}.mlp.fc2.weight", (d, h)), (f"{b}.mlp.fc2.bias", (d,))]
    shapes += [("norm.weight", (d,)), ("norm.bias", (d,))]
    return shapes


def make_weights(rng):
    """Random weights as gen_golden.py draws them (every tensor matters)."""
    grid = CFG["img_size"] // CFG["patch_size"]
    w = {}
    for name, shape in param_shapes():
        if name == "pos_embed":
            v = sincos_2d(shape[-1], grid, cls_token=True).reshape(shape)
        elif name == "cls_token":
            v = rng.normal(0.0, 0.2, shape)
        elif name.startswith("norm.") or ".norm" in name:
            weight = name.endswith(".weight")
            v = (1.0 if weight else 0.0) + rng.normal(0.0, 0.1 if weight else 0.05, shape)
        elif name.endswith(".bias"):
            v = rng.normal(0.0, 0.05, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            v = rng.normal(0.0, min(0.2, max(0.02, 1.0 / math.sqrt(fan_in))), shape)
        w[name] = v.astype(np.float32)
    return w


def encoder_forward(P, imgs):
    """timm VisionTransformer.forward_features on whole images: (B, 1+L, D)."""
    p = CFG["patch_size"]
    x = F.conv2d(imgs, P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2) + P["pos_embed"][:, 1:, :]
    cls = (P["cls_token"] + P["pos_embed"][:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for i in range(CFG["depth"]):
        x = block(x, P, f"blocks.{i}", CFG["num_heads"])
    return layer_norm(x, P["norm.weight"], P["norm.bias"])


def self_check(P, imgs):
    """Cross-checks the pieces gen_golden.py does not (it checks the blocks against
    nn.TransformerEncoderLayer): the conv patch embedding against unfold + linear over
    the (c, i, j) patch vectors in row-major grid order, and the pos_embed row of patch
    (r, c) against the formula (first D/2 columns embed c, last D/2 embed r)."""
    p, d, grid = CFG["patch_size"], CFG["embed_dim"], CFG["img_size"] // CFG["patch_size"]
    w, b = P["patch_embed.proj.weight"], P["patch_embed.proj.bias"]
    with torch.no_grad():
        conv = F.conv2d(imgs, w, b, stride=p).flatten(2).transpose(1, 2)
        cols = F.unfold(imgs, kernel_size=p, stride=p).transpose(1, 2)  # (B, L, C*p*p)
        err = (conv - F.linear(cols, w.reshape(d, -1), b)).abs().max().item()
        assert err < 1e-12, f"conv patch embedding differs from unfold + linear by {err}"
        pe = P["pos_embed"][0]
        assert pe[0].abs().max().item() == 0.0
        for r, col in ((0, 1), (grid - 1, 2), (2, grid - 1)):
            row = pe[1 + r * grid + col]
            for half, pos in ((0, col), (1, r)):
                for k in range(d // 4):
                    omega = 1.0 / 10000 ** (k / (d / 4))
                    base = half * d // 2
                    assert abs(row[base + k].item() - math.sin(pos * omega)) < 1e-6
                    assert abs(row[base + d // 4 + k].item() - math.cos(pos * omega)) < 1e-6


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    weights = make_weights(rng)
    d = CFG["embed_dim"]
    imgs = rng.normal(0.0, 1.0, (BATCH, CFG["in_chans"], CFG["img_size"], CFG["img_size"]))
    imgs = imgs.astype(np.float32)
    r_cls = rng.normal(0.0, 1.0, (BATCH, d)).astype(np.float32)
    r_avg = rng.normal(0.0, 1.0, (BATCH, d)).astype(np.float32)

    P = {n: torch.tensor(w, dtype=torch.float64, requires_grad=n != "pos_embed")
         for n, w in weights.items()}
    x = torch.tensor(imgs, dtype=torch.float64)
    out = encoder_forward(P, x)
    feat_cls, feat_avg = out[:, 0], out[:, 1:].mean(dim=1)
    loss = (torch.tensor(r_cls, dtype=torch.float64) * feat_cls).sum() + \
        (torch.tensor(r_avg, dtype=torch.float64) * feat_avg).sum()
    loss.backward()

    self_check(P, x)

    tensors = dict(weights)
    tensors.update({"images": imgs, "r_cls": r_cls, "r_avg": r_avg, "loss": f32(loss.reshape(1)),
                    "out": f32(out), "feat_cls": f32(feat_cls), "feat_avg": f32(feat_avg)})
    ngrad = 0
    for name, t in P.items():
        if name != "pos_embed":
            tensors[f"grad.{name}"] = f32(t.grad)
            ngrad += 1
    meta = {k: str(v) for k, v in CFG.items()}
    meta.update(format="mimicps-golden-encoder", version="1", batch=str(BATCH), seed=str(SEED),
                reference="torch float64", ln_eps=str(LN_EPS),
                loss="sum(r_cls * out[:, 0]) + sum(r_avg * out[:, 1:].mean(1))")
    safetensors_io.save(OUT, tensors, meta)
    print(f"loss {loss.item():.6f}, {ngrad} gradients, written to {OUT}")


if __name__ == "__main__":
    main()
