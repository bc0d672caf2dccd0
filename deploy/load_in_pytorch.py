#!/usr/bin/python3
"""Loads a mimicps MAE checkpoint into PyTorch and evaluates it.

    /usr/bin/python3 deploy/load_in_pytorch.py runs/mae-fmnist/checkpoint.safetensors

Strict load: the checkpoint's model tensors (everything but `optimizer.*`) must be
exactly the MAE's tensors (timm/facebookresearch-mae names) with the same shapes, as
torch's load_state_dict(strict=True) demands. Then the MAE loss on 256 Fashion-MNIST
test images (resized 28 -> 32 like the trainer's eval transform, same normalisation,
fixed masking noise) with the loaded weights vs a fresh random init of the same model.
The model is tests/golden/gen_golden.py's functional MAE, the one the C code is
checked against. Needs Debian's python3-torch; reads no network."""

import gzip
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests", "golden"))
import gen_golden as G  # noqa: E402
import safetensors_io  # noqa: E402


def fashion_test(n, size, mean, std):
    path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    with gzip.open(path) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    x = torch.from_numpy(raw[:n].astype(np.float32) / 255.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - mean) / std


def main():
    ckpt = sys.argv[1] if len(sys.argv) > 1 else "runs/mae-fmnist/checkpoint.safetensors"
    tensors, meta = safetensors_io.load(ckpt, framework="pt")
    for k in G.CFG:
        G.CFG[k] = float(meta[k]) if k in ("mask_ratio",) else int(float(meta[k]))
    expected = dict(G.param_shapes())
    model = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    missing = sorted(set(expected) - set(model))
    unexpected = sorted(set(model) - set(expected))
    wrong = sorted(k for k in expected if k in model and tuple(model[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        sys.exit(f"strict load failed: missing {missing}, unexpected {unexpected}, wrong shape {wrong}")
    print(f"{ckpt}: step {meta.get('step')}, {len(model)} model tensors, "
          f"{sum(v.numel() for v in model.values())} values: strict load ok")

    cfg = meta.get("config", "")
    mean = float(next((l.split("=")[1] for l in cfg.splitlines() if l.startswith("mean")), "0.286").split(",")[0])
    std = float(next((l.split("=")[1] for l in cfg.splitlines() if l.startswith("std")), "0.353").split(",")[0])
    imgs = fashion_test(256, G.CFG["img_size"], mean, std)
    L = (G.CFG["img_size"] // G.CFG["patch_size"]) ** 2
    noise = torch.rand(imgs.shape[0], L, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = G.mae_forward({k: v.float() for k, v in model.items()}, imgs, noise)[0].item()
        fresh_w = {k: torch.from_numpy(v) for k, v in G.make_weights(np.random.default_rng(0)).items()}
        fresh = G.mae_forward(fresh_w, imgs, noise)[0].item()
    print(f"MAE loss on 256 Fashion-MNIST test images: trained {trained:.4f}, random init {fresh:.4f}")


if __name__ == "__main__":
    main()
